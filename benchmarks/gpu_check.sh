#!/usr/bin/env bash
# For whoever has a GPU: build latentx with its CUDA kernels against the installed CUDA torch,
# run the whole test suite (the needs_cuda tests included) and the benchmarks on the GPU,
# and write the tables. Needs torch with CUDA, nvcc, scikit-build-core, cmake, ninja, pytest
# and hypothesis in the current Python environment (no network needed).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      (default OUT_DIR: $OUT, else ./gpu-results)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-results}}
mkdir -p "$out"
python=${PYTHON:-python3}

"$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/device.txt"
"$python" -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tee "$out/build.log"
"$python" -c "import latentx, json; info = latentx.backend('cuda'); print(json.dumps(info)); assert info['impl'] == 'native', info" | tee "$out/backend.json"
set +e
"$python" -m pytest -q -rs tests 2>&1 | tee "$out/tests.log"
tests_rc=${PIPESTATUS[0]}
set -e
"$python" -m latentx.cli bench --device cuda --json "$out/bench_cuda.json" 2>&1 | tee "$out/bench_cuda.md"
"$python" -m latentx.cli bench --device cpu --json "$out/bench_cpu.json" 2>&1 | tee "$out/bench_cpu.md"
echo "tests exit code: $tests_rc; tables in $out/bench_cuda.md and $out/bench_cpu.md"
exit "$tests_rc"
