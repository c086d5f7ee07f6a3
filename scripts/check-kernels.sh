#!/usr/bin/env bash
# Compiles every kernels/*.cu for sm_80 and sm_90 with `-Xptxas -v`, standalone and with no
# extra flags, and fails on any compile error or register spill. Prints registers per kernel.
# Needs no GPU: uses NVCC if set, else nvcc on PATH, else installs the pinned NVIDIA pip wheels
# (13.0.x: newer PTX is refused by the GPU machines' driver) into $ECAD_CUDA_WHEELS.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-}
if [ -z "$NVCC" ] && command -v nvcc >/dev/null 2>&1; then NVCC=$(command -v nvcc); fi
if [ -z "$NVCC" ]; then
    WHEELS=${ECAD_CUDA_WHEELS:-$HOME/.cache/ecad-native/cuda-wheels-13.0}
    if [ ! -x "$WHEELS/nvidia/cu13/bin/nvcc" ]; then
        echo "installing the pinned CUDA 13.0 compiler wheels into $WHEELS"
        python3 -m pip install -q --target "$WHEELS" \
            nvidia-cuda-nvcc==13.0.88 nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96 \
            nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85
    fi
    NVCC="$WHEELS/nvidia/cu13/bin/nvcc"
fi
"$NVCC" --version | tail -1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
for f in kernels/*.cu; do
    for arch in sm_80 sm_90; do
        log="$tmp/$(basename "$f").$arch.log"
        if ! "$NVCC" -arch="$arch" -cubin -Xptxas -v -o "$tmp/out.cubin" "$f" >"$log" 2>&1; then
            echo "FAILED: $f ($arch)"; cat "$log"; status=1; continue
        fi
        if grep -E "spill (stores|loads)" "$log" | grep -vq " 0 bytes spill stores, 0 bytes spill loads"; then
            echo "REGISTER SPILL: $f ($arch)"; grep -B2 -E "[1-9][0-9]* bytes spill" "$log"; status=1
        fi
        # One line per kernel: name, registers, shared memory.
        awk -v f="$(basename "$f")" -v a="$arch" '
            /Compiling entry function/ { match($0, /'"'"'[^'"'"']+'"'"'/); name=substr($0, RSTART+1, RLENGTH-2) }
            /Used [0-9]+ registers/ { match($0, /Used [0-9]+ registers/); r=substr($0, RSTART+5, RLENGTH-15);
                                      s="0"; if (match($0, /[0-9]+ bytes smem/)) s=substr($0, RSTART, RLENGTH-10);
                                      printf "  %-12s %-6s %-40s %3s regs %6s B smem\n", f, a, name, r, s }' "$log"
    done
done
[ $status -eq 0 ] && echo "all kernels compiled for sm_80 and sm_90 with no register spills"
exit $status
