/* intq_exec: run an artifact's plan (runtime/plan.py) without any TVM runtime.
 *
 *   intq_exec kernels.so plan.txt weights.bin IN0.bin [IN1.bin ...] -- OUT0.bin [OUT1.bin ...]
 *
 * Loads the kernels with dlopen, allocates every buffer of the plan (constants filled from
 * weights.bin, inputs from the IN files as raw little-endian arrays), calls the kernels in
 * order through the tvm-ffi C ABI and writes the outputs raw. An IN file may hold k samples
 * (k times the plan's input, the same k for every input): the plan then runs once per sample
 * and each OUT file gets the k outputs one after another (a batch of any size, each sample
 * computed exactly as alone). `--time N W` after the output files then runs the inputs (every
 * sample, one after the other) W more times untimed and N times timed, printing each run's
 * milliseconds (a monotonic clock around the kernel calls) on stdout: the latency of a call of
 * that batch on the board, without this process's start.
 * The few runtime symbols the kernels import are defined here and exported with -rdynamic.
 * Build: CC -O2 -rdynamic -I<tvm_ffi/include> intq_exec.c -o intq_exec -ldl */
#include <dlfcn.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <tvm/ffi/c_api.h>

void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t n) {
  fprintf(stderr, "kernel error %s:", kind);
  for (int i = 0; i < n; ++i)
    if (parts[i]) fprintf(stderr, " %s", parts[i]);
  fprintf(stderr, "\n");
}
void TVMFFIErrorSetRaisedFromCStr(const char* kind, const char* message) {
  fprintf(stderr, "kernel error %s: %s\n", kind, message);
}
void* TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t size, int code, int bits) {
  (void)device_type; (void)device_id; (void)code; (void)bits;
  return aligned_alloc(64, (size + 63) / 64 * 64);
}
int TVMBackendFreeWorkspace(int device_type, int device_id, void* ptr) {
  (void)device_type; (void)device_id;
  free(ptr);
  return 0;
}

/* Parallel loops run their tasks one after another: the executor is single-threaded. */
typedef struct { void* sync_handle; int32_t num_task; } TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);
int TVMBackendParallelLaunch(FTVMParallelLambda flambda, void* cdata, int num_task) {
  (void)num_task;
  TVMParallelGroupEnv env = {NULL, 1};
  return flambda(0, &env, cdata);
}
int TVMBackendParallelBarrier(int task_id, TVMParallelGroupEnv* penv) {
  (void)task_id; (void)penv;
  return 0;
}

static void die(const char* what, const char* detail) {
  fprintf(stderr, "intq_exec: %s %s\n", what, detail ? detail : "");
  exit(2);
}

/* A RISC-V build whose kernels assume vector registers of at least INTQ_MIN_VLEN bits (the target's
   zvl<N>b: riscv/licheepi3a's 256) computes wrong integers on shorter ones, without a fault: refuse
   such a CPU. Reading vlenb on a CPU without the vector unit is SIGILL, which the caller explains. */
static void check_vector_length(void) {
#if defined(__riscv) && defined(INTQ_MIN_VLEN)
  unsigned long vlenb;
  __asm__ volatile("csrr %0, 0xc22" : "=r"(vlenb)); /* vlenb: the vector register length in bytes */
  if (vlenb * 8 < INTQ_MIN_VLEN) {
    fprintf(stderr, "intq_exec: this CPU's vector registers are %lu bits; the kernels were built for at least %d "
            "(zvl%db) and would compute wrong results here\n", vlenb * 8, INTQ_MIN_VLEN, INTQ_MIN_VLEN);
    exit(3);
  }
#endif
}

typedef struct { DLTensor t; int64_t shape[8]; size_t bytes; } Buffer;

static unsigned char* read_all(const char* path, size_t* bytes) {
  FILE* f = fopen(path, "rb");
  if (!f) die("cannot open", path);
  if (fseek(f, 0, SEEK_END) != 0) die("cannot seek", path);
  long size = ftell(f);
  if (size < 0 || fseek(f, 0, SEEK_SET) != 0) die("cannot size", path);
  unsigned char* data = malloc(size ? (size_t)size : 1);
  if (!data || fread(data, 1, (size_t)size, f) != (size_t)size) die("cannot read", path);
  fclose(f);
  *bytes = (size_t)size;
  return data;
}

/* One run of the plan: every kernel in order, on the buffers as they are. */
static void run_steps(TVMFFISafeCallType* fns, char** names, int** args, const int* nargs, int nsteps, Buffer* bufs,
                      TVMFFIAny* packed, int max_args) {
  for (int s = 0; s < nsteps; ++s) {
    TVMFFIAny ret;
    memset(packed, 0, max_args * sizeof(TVMFFIAny));
    memset(&ret, 0, sizeof ret);
    for (int a = 0; a < nargs[s]; ++a) {
      packed[a].type_index = kTVMFFIDLTensorPtr;
      packed[a].v_ptr = &bufs[args[s][a]].t;
    }
    if (fns[s](NULL, packed, nargs[s], &ret) != 0) die("kernel failed:", names[s]);
  }
}

int main(int argc, char** argv) {
  if (argc < 5) die("usage: intq_exec kernels.so plan.txt weights.bin IN... -- OUT...", NULL);
  check_vector_length();
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!lib) die("dlopen failed:", dlerror());
  /* The kernels reach the runtime through function-pointer variables that a TVM runtime
     fills in when it loads a library; fill in ours. */
  void** slot;
  if ((slot = dlsym(lib, "__TVMBackendAllocWorkspace"))) *slot = (void*)TVMBackendAllocWorkspace;
  if ((slot = dlsym(lib, "__TVMBackendFreeWorkspace"))) *slot = (void*)TVMBackendFreeWorkspace;
  if ((slot = dlsym(lib, "__TVMBackendParallelLaunch"))) *slot = (void*)TVMBackendParallelLaunch;
  if ((slot = dlsym(lib, "__TVMBackendParallelBarrier"))) *slot = (void*)TVMBackendParallelBarrier;
  FILE* plan = fopen(argv[2], "r");
  if (!plan) die("cannot open", argv[2]);
  FILE* wf = fopen(argv[3], "rb");
  if (!wf) die("cannot open", argv[3]);
  int nbuf;
  if (fscanf(plan, " buffers %d", &nbuf) != 1) die("bad plan header", argv[2]);
  Buffer* bufs = calloc(nbuf, sizeof(Buffer));
  for (int i = 0; i < nbuf; ++i) {
    int id, code, bits, ndim;
    long long offset;
    if (fscanf(plan, " %d %d %d %d", &id, &code, &bits, &ndim) != 4 || id != i || ndim > 8) die("bad buffer", NULL);
    Buffer* b = &bufs[i];
    size_t count = 1;
    for (int d = 0; d < ndim; ++d) {
      long long dim;
      if (fscanf(plan, " %lld", &dim) != 1) die("bad dims", NULL);
      b->shape[d] = dim;
      count *= (size_t)dim;
    }
    if (fscanf(plan, " %lld", &offset) != 1) die("bad offset", NULL);
    b->bytes = count * (size_t)(bits / 8);
    b->t.data = aligned_alloc(64, (b->bytes + 63) / 64 * 64 + 64);
    b->t.device.device_type = kDLCPU;
    b->t.ndim = ndim;
    b->t.dtype.code = (uint8_t)code;
    b->t.dtype.bits = (uint8_t)bits;
    b->t.dtype.lanes = 1;
    b->t.shape = b->shape;
    if (offset >= 0) {
      if (fseek(wf, offset, SEEK_SET) != 0 || fread(b->t.data, 1, b->bytes, wf) != b->bytes) die("short weights", NULL);
    }
  }
  int nsteps;
  if (fscanf(plan, " steps %d", &nsteps) != 1) die("bad steps header", NULL);
  /* fused kernels have long names (one part per fused op) and many arguments (lifted constants) */
  char** names = calloc(nsteps, sizeof(char*));
  int** args = calloc(nsteps, sizeof(int*));
  int* nargs = calloc(nsteps, sizeof(int));
  int max_args = 1;
  static char name[1 << 16];
  for (int s = 0; s < nsteps; ++s) {
    if (fscanf(plan, " %65535s %d", name, &nargs[s]) != 2 || nargs[s] < 0 || nargs[s] > 4096) die("bad step", name);
    names[s] = strdup(name);
    args[s] = calloc(nargs[s] ? nargs[s] : 1, sizeof(int));
    if (nargs[s] > max_args) max_args = nargs[s];
    for (int a = 0; a < nargs[s]; ++a)
      if (fscanf(plan, " %d", &args[s][a]) != 1) die("bad step argument", names[s]);
  }
  int nin, nout, ids[64], outs[64];
  if (fscanf(plan, " inputs %d", &nin) != 1 || nin > 64) die("bad inputs", NULL);
  for (int i = 0; i < nin; ++i)
    if (fscanf(plan, " %d", &ids[i]) != 1) die("bad input id", NULL);
  if (fscanf(plan, " outputs %d", &nout) != 1 || nout > 64) die("bad outputs", NULL);
  for (int i = 0; i < nout; ++i)
    if (fscanf(plan, " %d", &outs[i]) != 1) die("bad output id", NULL);
  unsigned char* in_data[64];
  size_t samples = 0;
  int arg = 4;
  for (int i = 0; i < nin; ++i, ++arg) {
    if (arg >= argc || !strcmp(argv[arg], "--")) die("missing input file", NULL);
    size_t bytes, one = bufs[ids[i]].bytes;
    in_data[i] = read_all(argv[arg], &bytes);
    if (bytes == 0 || (one && bytes % one) || (i > 0 && one && bytes / one != samples))
      die("input has the wrong size (a whole number of samples, the same for every input):", argv[arg]);
    if (one) samples = bytes / one;
  }
  if (samples == 0) samples = 1;
  if (arg >= argc || strcmp(argv[arg], "--")) die("expected -- before the output files", NULL);
  ++arg;
  if (argc - arg < nout) die("missing output file", NULL);
  FILE* out_files[64];
  for (int i = 0; i < nout; ++i)
    if (!(out_files[i] = fopen(argv[arg + i], "wb"))) die("cannot write", argv[arg + i]);
  TVMFFISafeCallType* fns = calloc(nsteps, sizeof(TVMFFISafeCallType));
  for (int s = 0; s < nsteps; ++s) {
    snprintf(name, sizeof name, "__tvm_ffi_%s", names[s]);
    if (!(fns[s] = (TVMFFISafeCallType)dlsym(lib, name))) die("missing kernel", name);
  }
  long timed = 0, warmup = 0;
  if (argc - arg > nout) {
    if (argc - arg != nout + 3 || strcmp(argv[arg + nout], "--time")) die("expected --time N W after the outputs", NULL);
    timed = atol(argv[arg + nout + 1]);
    warmup = atol(argv[arg + nout + 2]);
    if (timed < 1 || warmup < 0) die("--time needs N >= 1 and W >= 0", NULL);
  }
  TVMFFIAny* packed = calloc(max_args, sizeof(TVMFFIAny));
  for (size_t k = 0; k < samples; ++k) {
    for (int i = 0; i < nin; ++i)
      memcpy(bufs[ids[i]].t.data, in_data[i] + k * bufs[ids[i]].bytes, bufs[ids[i]].bytes);
    run_steps(fns, names, args, nargs, nsteps, bufs, packed, max_args);
    for (int i = 0; i < nout; ++i)
      if (fwrite(bufs[outs[i]].t.data, 1, bufs[outs[i]].bytes, out_files[i]) != bufs[outs[i]].bytes)
        die("cannot write", argv[arg + i]);
  }
  for (int i = 0; i < nout; ++i) fclose(out_files[i]);
  for (long r = 0; timed && r < warmup + timed; ++r) { /* a timed run: every sample, as a call of the batch */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (size_t k = 0; k < samples; ++k) {
      for (int i = 0; i < nin; ++i)
        memcpy(bufs[ids[i]].t.data, in_data[i] + k * bufs[ids[i]].bytes, bufs[ids[i]].bytes);
      run_steps(fns, names, args, nargs, nsteps, bufs, packed, max_args);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (r >= warmup) printf("%.6f\n", (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6);
  }
  return 0;
}
