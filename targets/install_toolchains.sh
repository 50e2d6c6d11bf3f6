#!/usr/bin/env bash
# Install what the cross targets need, from Debian, every package named (the cross C
# libraries are only "recommended" by the cross compilers, and we install without
# recommends): cross gcc and C libraries for aarch64, armv7 and riscv64 (linking artifacts
# and the plan executor), qemu-user (running them on x86-64 in tests) and llvm-16 (its
# objdump decodes RISC-V vector instructions; binutils 2.40 does not). Also the one data
# set that comes from Debian, not PyPI: Fashion-MNIST (the DINOv2 linear probe and test).
# Ends with a smoke test that links and runs a tiny program for each cross target, so a
# missing piece fails here, naming its package, on any machine. Run as root.
set -euo pipefail
packages=(
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross
  gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
  gcc-riscv64-linux-gnu libc6-dev-riscv64-cross
  qemu-user llvm-16 dataset-fashion-mnist
)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Smoke test: per cross target, a shared library (what an artifact is) and an executable
# (what the plan executor is) must link, and the executable must run under qemu-user.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/t.c" <<'EOF'
#include <stdio.h>
int twice(int x) { return 2 * x; }
int main(void) { printf("%d\n", twice(21)); return 0; }
EOF
fail() { echo "install_toolchains.sh: smoke test failed: $1" >&2; exit 1; }
# compiler | C library package | qemu | qemu sysroot | extra link flags
while IFS='|' read -r cc libc qemu sysroot extra; do
  $cc -shared -fPIC "$tmp/t.c" -o "$tmp/$cc.so" $extra 2>"$tmp/err" ||
    fail "$cc cannot link a shared library ($(grep -m1 -i error "$tmp/err")); apt-get install $libc"
  $cc "$tmp/t.c" -o "$tmp/$cc.bin" $extra 2>"$tmp/err" ||
    fail "$cc cannot link a program ($(grep -m1 -i error "$tmp/err")); apt-get install $libc"
  out=$($qemu -L "$sysroot" "$tmp/$cc.bin" 2>&1) || fail "$qemu cannot run a $cc program: $out; apt-get install qemu-user $libc"
  [ "$out" = 42 ] || fail "$qemu ran a $cc program and got '$out', expected 42"
done <<'EOF'
aarch64-linux-gnu-gcc|libc6-dev-arm64-cross|qemu-aarch64|/usr/aarch64-linux-gnu|
arm-linux-gnueabihf-gcc|libc6-dev-armhf-cross|qemu-arm|/usr/arm-linux-gnueabihf|
riscv64-linux-gnu-gcc|libc6-dev-riscv64-cross|qemu-riscv64|/usr/riscv64-linux-gnu|-latomic
EOF
command -v llvm-objdump-16 >/dev/null || fail "llvm-objdump-16 missing; apt-get install llvm-16"
[ -d /usr/share/datasets/fashion-mnist ] ||
  fail "Fashion-MNIST data missing; apt-get install dataset-fashion-mnist"
echo "toolchains and data installed and checked (linked and ran a program for aarch64, armv7, riscv64): ${packages[*]}"
