#!/usr/bin/env bash
# The GPU path, measured in one short script (issue 17): under 8 minutes of GPU time.
#
#   bash benchmarks/gpu.sh             # on the GPU machine, from the checkout's root
#   bash benchmarks/gpu.sh --wheels    # here, beforehand, for a GPU machine without internet
#
# Python: the machine's own `python3` when its JAX already sees a GPU (images with
# jax + the CUDA plugin preinstalled); else this project's environment with the CUDA
# wheel of the same JAX version installed into it (`uv pip install jax[cuda12]`, needs
# a package registry). bnlab's other dependencies that the machine's Python lacks
# come from .whl/ (made by --wheels here: pure-Python wheels, no dependencies
# resolved twice), installed into a target folder, never over the machine's packages.
#
# Runs (Fashion-MNIST prepared from the repo's test data when the Debian IDX files are
# absent): the Fig. 1 single run (benchmarks/train_speed.py), the 8-lr vectorized
# sweep (benchmarks/sweep.py, ways one and vectorized), and the CIFAR ResNet-20 preset
# (model=resnet, if the checkout has it) on synthetic CIFAR-shaped arrays (data=arrays;
# a speed figure, not an accuracy). Prints one Markdown table; every figure is also in $OUT (if set).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-20000}
OUT=${OUT:-/tmp/bnlab-gpu}
mkdir -p "$OUT"

# what bnlab imports that a JAX/Flax/pandas image may lack, at this checkout's uv.lock versions
NAMES="hydra-core omegaconf antlr4-python3-runtime hydra-joblib-launcher hydra-submitit-launcher
submitit tensorflow-datasets array-record importlib-resources promise dm-tree simple-parsing
docstring-parser immutabledict toml termcolor googleapis-common-protos"
EXTRA=$(for n in $NAMES; do
    echo "$n==$(grep -A1 "^name = \"$n\"$" uv.lock | sed -n 's/^version = "\(.*\)"/\1/p')"
done)

if [[ "${1:-}" == "--wheels" ]]; then
    mkdir -p .whl
    grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
    # shellcheck disable=SC2086
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d .whl $EXTRA
    du -sh .whl
    exit 0
fi

if python3 -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
    PY=python3
    if [[ -d .whl ]]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --upgrade --target /tmp/bnlab-site .whl/*.whl
    fi
    export PYTHONPATH="$PWD:/tmp/bnlab-site${PYTHONPATH:+:$PYTHONPATH}"
else
    export UV_PYTHON_DOWNLOADS=never
    uv sync -q
    JAXV=$(uv run python -c "import jax; print(jax.__version__)")
    uv pip install -q "jax[cuda12]==$JAXV"
    PY="uv run python"
fi
export XLA_PYTHON_CLIENT_PREALLOCATE=false
$PY -c "import jax; print('backend:', jax.default_backend(), jax.devices())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

# single run: bnlab's chunk with and without probes, the plain jit loop, the command
$PY benchmarks/train_speed.py --steps "$STEPS" | tee "$OUT/single.md"
# the 8-lr sweep, vectorized, against one run
$PY benchmarks/sweep.py --steps "$STEPS" --ways one,vectorized --json "$OUT/sweep.json" \
    | tee "$OUT/sweep.md"
# ResNet-20 on CIFAR-shaped arrays (the preset, when this checkout has it)
if [[ -f configs/model/resnet.yaml ]]; then
    $PY - "$OUT" <<'EOF'
import sys, numpy as np
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (10000, 32, 32, 3), dtype=np.uint8)
y = rng.integers(0, 10, 10000)
np.savez(f"{sys.argv[1]}/cifar_shaped.npz", x_train=x, y_train=y, x_test=x[:2000], y_test=y[:2000])
EOF
    t0=$(date +%s.%N)
    $PY -m bnlab.train model=resnet data=arrays "data.path=$OUT/cifar_shaped.npz" steps=2000 \
        batch_size=128 progress=false figure=false "hydra.run.dir=$OUT/resnet"
    t1=$(date +%s.%N)
    $PY - "$OUT" "$t0" "$t1" <<'EOF' | tee "$OUT/resnet.md"
import json, sys
s = json.load(open(f"{sys.argv[1]}/resnet/summary.json"))
wall = float(sys.argv[3]) - float(sys.argv[2])
print("| ResNet-20, batch 128, 2,000 steps | steady steps/s | wall (s) |")
print("|---|---|---|")
print(f"| model=resnet data=arrays | {s['steps_per_sec']:.0f} | {wall:.1f} |")
EOF
fi
echo
echo "## GPU figures ($(date -u +%Y-%m-%dT%H:%MZ))"
cat "$OUT"/*.md
