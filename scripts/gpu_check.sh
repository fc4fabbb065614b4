#!/usr/bin/env bash
# The zoo on this machine's GPUs, in one run (about 10 minutes on one modern GPU):
#  1. installs PyTorch 2.9.0 (the PyPI wheel is a CUDA build) with timm and transformers into
#     .venv-gpu (or ZOO_GPU_VENV), and builds `zoo` with flex, wgpu and tch (libtorch from that wheel);
#  2. `zoo devices`: every GPU device name (tch:cuda:N, wgpu:N, ...) found here;
#  3. full-size parity (scripts/parity.py vit, tnt, detr) on each of them in float32, and ViT-B/16
#     and DETR-R50 computed in f16 and bf16 against the float32 references;
#  4. `scripts/benchmarks.py` for the GPU devices against PyTorch CUDA, eager float32 and bf16
#     autocast beside the zoo's bf16, written as the GPU sections of BENCHMARKS.md with the GPU's
#     name, its driver and both sides' versions.
#
#     bash scripts/gpu_check.sh                # every GPU found
#     ZOO_GPU_DEVICES=tch:cuda:0 bash scripts/gpu_check.sh
#     bash scripts/gpu_check.sh --without-gpu  # what runs without one: CPU libtorch and wgpu:cpu
#                                              # (mesa's lavapipe), parity only, nothing written
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
stamp() { echo "[gpu_check] $(( SECONDS - start )) s: $*"; }
without_gpu=false
[ "${1:-}" = "--without-gpu" ] && without_gpu=true

venv=${ZOO_GPU_VENV:-.venv-gpu}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q torch==2.9.0 timm transformers scipy safetensors rust-just
export PATH="$PWD/$venv/bin:$PATH"
torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LIBTORCH_USE_PYTORCH=1 LD_LIBRARY_PATH="$torch_lib:${LD_LIBRARY_PATH:-}" XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
if ! ldconfig -p 2>/dev/null | grep -q libvulkan.so.1; then
    # wgpu needs the Vulkan loader (NVIDIA's driver brings its own ICD).
    if command -v apt-get > /dev/null; then
        apt-get install -y -qq libvulkan1 mesa-vulkan-drivers > /dev/null || true
    fi
fi
stamp "building zoo with flex, wgpu, tch"
ZOO_FEATURES=flex,avx512,wgpu,tch just build
zoo=${CARGO_TARGET_DIR:-target}/release/zoo
"$zoo" devices | tee /tmp/zoo-devices.txt

if $without_gpu; then
    devices=tch,wgpu:cpu
else
    devices=${ZOO_GPU_DEVICES:-$(awk '$1 ~ /^(tch:cuda|tch:mps|wgpu:[0-9]|wgpu:integrated)/ {print $1}' /tmp/zoo-devices.txt | paste -sd, -)}
    if [ -z "$devices" ]; then
        echo "[gpu_check] no GPU device found (see above); run with --without-gpu for the CPU parts" >&2
        exit 1
    fi
fi
stamp "devices: $devices"

# 3. Parity, float32, full size.
: > /tmp/zoo-gpu-parity.txt
for model in vit tnt detr; do
    stamp "parity $model"
    python3 scripts/parity.py "$model" --zoo "$zoo" --device "$devices" | tee -a /tmp/zoo-gpu-parity.txt
done
for precision in f16 bf16; do
    stamp "parity $precision against the float32 references"
    for model in vit detr; do
        python3 scripts/parity.py "$model" --zoo "$zoo" --device "$devices" --precision "$precision" \
            | tee -a /tmp/zoo-gpu-parity.txt || echo "(not every device passed in $precision: see above)"
    done
done

if $without_gpu; then
    stamp "done without a GPU: parity above; no benchmark written"
    exit 0
fi

# 4. Speed against PyTorch CUDA, one run, written into BENCHMARKS.md.
gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1 || echo "unknown GPU")
stamp "benchmarks on $gpu"
for precision in f32 bf16; do
    python3 scripts/benchmarks.py --zoo "$zoo" --devices "$devices" --torch-device cuda --precision "$precision" \
        --iters 20 --train-iters 5 --rounds 3 --section "GPU ($gpu), $precision"
done
{
    echo
    echo "## GPU parity ($gpu)"
    echo
    echo "From \`bash scripts/gpu_check.sh\` at $(git rev-parse --short HEAD), $(date -u +%Y-%m-%d):"
    echo
    echo '```'
    cat /tmp/zoo-gpu-parity.txt
    echo '```'
} >> BENCHMARKS.md
stamp "done: BENCHMARKS.md has the GPU sections"
