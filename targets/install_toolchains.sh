#!/usr/bin/env bash
# Install what the cross targets need, from Debian: cross gcc for aarch64, armv7 and riscv64
# (linking artifacts), qemu-user (running them on x86-64 in tests) and llvm-16 (its objdump
# decodes RISC-V vector instructions; binutils 2.40 does not). Also the one data set that
# comes from Debian, not PyPI: Fashion-MNIST, which the DINOv2 linear probe and test use. Run as root.
set -euo pipefail
packages=(gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf gcc-riscv64-linux-gnu qemu-user llvm-16 dataset-fashion-mnist)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "toolchains and data: ${packages[*]} installed"
