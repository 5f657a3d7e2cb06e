#!/usr/bin/env bash
# The GPU checks, prepared to run once on a lent GPU machine that has no network:
#   - the GPU tests (services sharing one GPU, the UQ pipeline packed onto it, cell painting
#     trials sharing it; vLLM is skipped there with its reason when it is not installed),
#   - experiment 3 (RT components) with a 150M-parameter Llama-shape model in bf16 on the GPU.
# Wheels the machine lacks (Ray and its Serve/Tune needs, hpcray itself) travel in .whl/:
#   benchmarks/gpu_wheels.sh builds that folder here. Output: $OUT (default ./gpu-out):
#   gpu_check.log, gpu_tests.xml, inference_gpu.{csv,png,txt}.
# GPU_TESTS="tests/..." runs only those test files; GPU_BENCH=0 leaves the benchmark out.
# With arguments, they are the command to run instead (e.g. python3 benchmarks/uq_memory.py);
# what it writes in benchmarks/results/ is copied to $OUT.
set -u -o pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=python3

if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site PATH="/tmp/site/bin:$PATH"
    # the source tree's hpcray/ would shadow the installed package (whose deployments and
    # job-script templates live elsewhere in the source tree)
    mv hpcray /tmp/hpcray-source-not-used
fi
nvidia-smi -L
$PY - <<'EOF' || exit 1
import ray, ray.serve, ray.tune, torch, transformers, hpcray, optuna
from ray.tune.search.optuna import OptunaSearch  # noqa: F401
print("python", __import__("sys").version.split()[0], "torch", torch.__version__, "cuda",
      torch.version.cuda, "ray", ray.__version__, "transformers", transformers.__version__,
      "hpcray", hpcray.__file__, "gpu", torch.cuda.get_device_name(0))
EOF

if [ $# -gt 0 ]; then
    touch /tmp/gpu-check-started
    status=0
    "$@" || status=$?
    find benchmarks/results -type f -newer /tmp/gpu-check-started -exec cp {} "$OUT"/ \;
    exit $status
fi

status=0
start=$(date +%s)
tests=${GPU_TESTS:-tests/services/test_gpu.py tests/pipelines/uq/test_gpu.py \
tests/pipelines/cellpainting/test_gpu.py}
# shellcheck disable=SC2086 # a list of paths
timeout 330 $PY -m pytest -p no:cacheprovider -rA --timeout 300 -m gpu $tests \
    --junitxml "$OUT/gpu_tests.xml" || status=$?
echo "GPU tests: exit $status after $(( $(date +%s) - start )) s"
[ "${GPU_BENCH:-1}" = 0 ] && exit $status

$PY - <<'EOF' || exit 1
from hpcray.models.tiny import build_tiny_decoder
path = build_tiny_decoder("/tmp/llama-150m", "llama", layers=16, dim=1024)
print("built", path)
EOF
start=$(date +%s)
timeout 180 $PY benchmarks/inference.py --model /tmp/llama-150m --gpus 0.5 --dtype bfloat16 \
    --requests 60 --max-tokens 16 --name inference_gpu || status=$?
echo "benchmark: after $(( $(date +%s) - start )) s"
cp benchmarks/results/inference_gpu.* "$OUT"/ 2>/dev/null
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
exit $status
