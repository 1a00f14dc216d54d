#!/usr/bin/env bash
# One lent-GPU session (the `device` tool's H200), prepared to run once inside its 15 minutes:
#   - the project's CUDA paths (`benchmarks/gpu_check.py --size small`, i.e. `make gpu-check`), niced, in the
#     background (its timings are disturbed by the training beside it: a correctness check here);
#   - a reference-model candidate trained until a deadline (`benchmarks/gpu_reference.py`).
# The machine has torch but not smplx / torch-pruning: carry their wheels in .whl/ and the synthetic root without
# its .pkl SMPL files and HDF5 cache in .gpu/synthetic (run from the repository root; what comes back is in $OUT).
# Prepare them here once (both folders ignored through .git/info/exclude):
#   .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl smplx==0.1.28 torch-pruning==1.6.1
#   cp -al data/synthetic .gpu/synthetic && rm -rf .gpu/synthetic/cache .gpu/synthetic/smpl/*.pkl
# then give the device tool the command `bash benchmarks/gpu_session.sh`, carry [".gpu", ".whl"], timeout ~545 s.
# Session 7 measured there: ~50 ms per step at batch 32 and 64 alike (host-bound); batch 64 at lr 5e-4 diverged.
# Session 10 shipped a model trained in three stages (H200 8,600 steps; CPU 28,000 more on the default root; CPU
# 20,000 more on the large root: docs/benchmark.md). Next lease: one run from scratch on the large root, so that the
# reference is one command (`compress data synth --size large` first: 423 MB, too big to carry, about 6 min of one
# core to generate there), e.g. DATA=.gpu/synthetic_large; or a further warm restart of the shipped model with
# REF_ARGS="--set model.checkpoint=checkpoints/mbv2_reference.pt --lr 2.5e-4" (checkpoints/ is tracked).
set -u
OUT=${OUT:-/tmp/gpu_out}
DEADLINE=${DEADLINE:-470}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
df -h /dev/shm | tail -1
python3 -c "import torch, torchvision, onnxruntime as ort; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'ORT', ort.__version__, ort.get_available_providers())"
# shellcheck disable=SC2086 - REF_ARGS are more options for gpu_reference.py (e.g. --batch 48 --lr 3e-4)
python3 benchmarks/gpu_reference.py --data "${DATA:-.gpu/synthetic}" --out "$OUT" --deadline-s "$DEADLINE" ${REF_ARGS:-} &
ref=$!
if [ "${GPU_CHECK:-1}" = 1 ]; then
  sleep 45  # the calibration run first, on a quiet machine
  nice -n 19 timeout $((DEADLINE - 50)) python3 benchmarks/gpu_check.py --size small > "$OUT/gpu_check.log" 2>&1
  echo "gpu-check exit $?"
  cat "$OUT/gpu_check.log"
fi
wait $ref
code=$?
echo "reference run exit $code"
exit $code
