# The zoo's tasks. Install just with `cargo install just` (or `pip install rust-just`).

set shell := ["bash", "-euo", "pipefail", "-c"]

# Backends compiled into `zoo` (cargo features of zoo-infer): flex (default), ndarray, wgpu, tch;
# avx512 (default): the matrix kernels' AVX-512 versions, used where the CPU has them.
features := env_var_or_default("ZOO_FEATURES", "flex,avx512")
# The binary, wherever cargo puts it (CARGO_TARGET_DIR or ./target).
zoo := env_var_or_default("CARGO_TARGET_DIR", "target") + "/release/zoo"

# List the recipes.
default:
    @just --list

# Build the `zoo` binary (release) with the chosen backends.
build:
    cargo build --release -p zoo-infer --no-default-features --features {{features}}

# The main job on a fresh machine: generate a dataset, train a small ViT, evaluate, classify.
demo: build
    {{zoo}} demo

# Train a model: just train vit configs/vit_b16.toml [--resume] | just train detr configs/detr_r50.toml
train model config *args: build (_check-arch model config)
    {{zoo}} train --config {{config}} {{args}}

# Evaluate: just eval detr CONFIG W --annotations A.json --images DIR | just eval vit CONFIG W --data DIR
eval model config weights *args: build (_check-arch model config)
    {{zoo}} eval --config {{config}} --weights {{weights}} {{args}}

# Needs torch 2.9.0, timm, transformers and scipy on PATH's python3.
# Every model against PyTorch side by side, ratios to BENCHMARKS.md: just bench [--devices flex,wgpu] [--only TNT-S]
# One table as the CPU runs natively; on a CPU with AVX-512 a second with both sides restricted to
# AVX2 (a zoo built without its `avx512` feature, as `zoo-avx2` beside `zoo`).
bench *args: build
    #!/usr/bin/env bash
    set -euo pipefail
    python3 scripts/benchmarks.py --zoo {{zoo}} --section "CPU, native" {{args}}
    if grep -qw avx512f /proc/cpuinfo; then
        cargo build --release -p zoo-infer --no-default-features --features flex
        cp {{zoo}} {{zoo}}-avx2
        cargo build --release -p zoo-infer --no-default-features --features {{features}}
        python3 scripts/benchmarks.py --zoo {{zoo}}-avx2 --isa avx2 --section "CPU, restricted to AVX2" {{args}}
    fi

# Run every test on the default (flex) build.
test:
    cargo test --workspace

# The house rules, as CI checks them: rustfmt (rustfmt.toml) and clippy with warnings as errors.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings

# Needs PyTorch 2.9.0 on PATH's python3 (for libtorch) and a Vulkan driver (mesa's lavapipe will do).
# One build with every backend: each must run the tiny ViT, TNT and DETR as the references do
# (DETR on a padded batch), masked attention and the position embedding as the host computes them,
# and a training step of each model as flex does.
test-backends:
    #!/usr/bin/env bash
    set -euo pipefail
    torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
    export LIBTORCH_USE_PYTORCH=1 LD_LIBRARY_PATH="$torch_lib:${LD_LIBRARY_PATH:-}" XDG_RUNTIME_DIR=/tmp
    export ZOO_REQUIRE_BACKENDS=flex,ndarray,wgpu,tch
    cargo test --profile backends -p zoo-infer --features flex,ndarray,wgpu,tch --test backends --test precision -- --nocapture

# Classify images: just classify configs/vit_b16.toml weights.safetensors img1.jpg img2.png
classify config weights +images: build
    {{zoo}} classify --config {{config}} --weights {{weights}} --image {{images}}

# The Hub models the zoo runs by name (any command takes --model NAME instead of --config/--weights).
models: build
    {{zoo}} models

# Attention maps over a photo: just attention configs/vit_b16.toml weights.safetensors cat.jpg out/attention [--npy-out DIR]
attention config weights image out *args: build
    {{zoo}} attention --config {{config}} --weights {{weights}} --image {{image}} --out {{out}} {{args}}

# Training curves of several runs on one picture: just plot runs/a runs/b --out compare.png
plot +args: build
    {{zoo}} plot {{args}}

# Convert a checkpoint to burnpack: just convert configs/vit_b16.toml in.safetensors out.bpk
convert config weights out: build
    {{zoo}} convert --config {{config}} --weights {{weights}} --out {{out}}

# The config's model.arch must be the model named on the command line.
_check-arch model config:
    #!/usr/bin/env bash
    set -euo pipefail
    arch=$(sed -n 's/^arch *= *"\(.*\)".*/\1/p' {{config}} | head -1)
    if [ "$arch" != "{{model}}" ]; then echo "{{config}} is a $arch config, not {{model}}" >&2; exit 1; fi
