#!/usr/bin/env bash
# The GPU check (issue 13): on a fresh GPU machine with its own torch (CUDA), nvcc, cmake,
# ninja, scikit-build-core, pytest and hypothesis, and no network:
#   1. preflight  the device, torch, nvcc, compute-sanitizer                       budget  10 s
#   2. build      latentx with its CUDA kernels, sm_90 only, 16 jobs (pip -e)       budget 210 s
#   3. backend    latentx.backend('cuda') must say native, built for sm_90          budget  15 s
#   4. select     pytest --collect-only -m needs_cuda: the CUDA tests are selected  budget  15 s
#   5. tests      the needs_cuda tests (native vs reference on the GPU for every op,
#                 gradients, opcheck, torch.compile), pytest-xdist -n 8 if present  budget 120 s
#   6. memcheck   compute-sanitizer memcheck on benchmarks/gpu_smoke.py (one tiny
#                 forward + backward of every op), where the machine supports it    budget  55 s
#   7. floor      benchmarks/gpu_floor.py: each op's time against its memory or
#                 compute floor ("% of floor")                                      budget  55 s
# Each step runs under `timeout` (TERM at its budget, KILL 5 s later), and a budget shrinks
# (fit) when the time already spent would push the later steps past 470 s: a build that
# takes its whole 210 s leaves the tests 75 s. So the script ends inside 8 minutes even if
# every step hangs. A failed build or backend skips the steps after it.
#
# Estimates (issue 13). Measured on the 2-core CPU machine (nvcc 13, CPU torch 2.13, the
# compile check on, nothing else running): configure 6.7 s; a fresh build 186 s at -j2, the
# translation units taking ops/cpu/filtered_grid_sample_kernel.cpp 107 s, the .cu files
# 34-35 s (cma, ifgsm_step, lpips_head) and 59 s (filtered_grid_sample) for sm_90, the other
# nine .cpp 9-13 s: 365 s of compiling in all. With 16 jobs the build is its longest file
# (the CPU filtered_grid_sample kernel, not a CUDA one) plus configure and link: ~110-130 s
# on cores like these; one CUDA architecture instead of two keeps the .cu files off the
# critical path. GPU steps, from counts:
#   tests: 730 selected (523 ifgsm_step, 91 cma, 88 lpips_head, 26 filtered_grid_sample,
#     2 others); the same files' CPU tests (872) ran in 26 s here; all but the 4
#     torch.compile tests are a few small launches; each compile test is a cold inductor +
#     Triton compile (~10-30 s): ~40-60 s under xdist with 8 workers, ~110 s without.
#   memcheck: ~1,000 small launches (the references' included; each ~100x slower
#     instrumented, still ~1 ms) after torch's import and CUDA start under the sanitizer
#     (~20-40 s).
#   floor: 11 rows x 23 calls of 0.05-2 ms, the inputs (~3 GB; a batched QR for the CMA
#     eigenvectors) and the reference checks on slices: ~20-40 s.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]     (default OUT_DIR: $OUT, else ./gpu-results)
# Writes OUT_DIR/{device.txt, build.log, tests.log, memcheck.log, floor.log, floor.json,
# summary.txt} (7 files: the device tool brings back at most 8) and prints the floor table and
# the step summary (step, seconds, status) last. Exit status 0 only when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-results}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 MAX_JOBS=16 CMAKE_BUILD_PARALLEL_LEVEL=16
# torch's CMake config adds -gencode flags from TORCH_CUDA_ARCH_LIST (else the visible GPU's):
# one architecture, as CMAKE_CUDA_ARCHITECTURES below.
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
# One seed for every pytest process (xdist workers included), printed, so a failure replays.
export LATENTX_TEST_SEED=${LATENTX_TEST_SEED:-$((RANDOM * 32768 + RANDOM))}
echo "LATENTX_TEST_SEED=$LATENTX_TEST_SEED"
command -v nvcc >/dev/null || export PATH="$PATH:/usr/local/cuda/bin"

steps=() secs=() stats=()
failed=0
# Every step must end by TOTAL seconds from the start (its kill grace included).
TOTAL=470
# fit NOMINAL RESERVE: the step's budget: NOMINAL, or less if the steps after it (RESERVE
# seconds, their graces included) would otherwise run past TOTAL.
fit() {
  local b=$1 left=$((TOTAL - SECONDS - $2 - 5))
  [ "$left" -lt "$b" ] && b=$left
  echo "$b"
}
# run_step NAME BUDGET LOG CMD...: runs CMD under timeout, appending to LOG; records the result.
run_step() {
  local name=$1 budget=$2 log=$3
  shift 3
  if [ "$budget" -lt 5 ]; then skip_step "$name" "out of time"; return 1; fi
  echo "=== $name (budget ${budget}s): $*" >>"$log"
  local t0=$SECONDS rc
  timeout -k 5 "$budget" "$@" >>"$log" 2>&1
  rc=$?
  local status=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="TIMEOUT (${budget}s)"; elif [ $rc -ne 0 ]; then status="FAIL (rc $rc)"; fi
  steps+=("$name") secs+=($((SECONDS - t0))) stats+=("$status")
  echo "$name: $status in $((SECONDS - t0)) s" >&2
  [ "$status" = ok ]
}
skip_step() { steps+=("$1") secs+=(0) stats+=("skipped: $2"); }

preflight() {
  set -e  # no GPU, no torch with CUDA or no nvcc: the check cannot run
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  "$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(), torch.cuda.get_device_capability())"
  nvcc --version | tail -2
  command -v compute-sanitizer || echo "compute-sanitizer: not found"
  nproc
}
# Steps that are shell functions run under timeout through bash -c (timeout runs programs).
export python out
export -f preflight
run_step preflight "$(fit 10 455)" "$out/device.txt" bash -c preflight || failed=1

build_ok=0
if run_step build "$(fit 210 225)" "$out/build.log" "$python" -m pip install -v --no-index --no-build-isolation --no-deps \
    -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90 -C cmake.define.LATENTX_REQUIRE_NVCC=ON -e .; then
  build_ok=1
else
  failed=1
fi

cuda_ok=0
if [ $build_ok = 1 ]; then
  if run_step backend "$(fit 15 205)" "$out/device.txt" "$python" -c "
import json, latentx
info = latentx.backend('cuda')
print(json.dumps(info))
assert info['impl'] == 'native', info['reason']
assert '90' in str(info.get('cuda_archs')), info"; then cuda_ok=1; else failed=1; fi
else
  skip_step backend "no build"
fi

# Only the files that hold CUDA tests: collecting every file would import optional packages
# (pycma, ...) the GPU machine lacks.
test_files=$(grep -l "needs_cuda\|device_params" tests/test_*.py | tr '\n' ' ')
if [ $cuda_ok = 1 ]; then
  select_cuda() {
    "$python" -m pytest -q -p no:cacheprovider --collect-only -m needs_cuda $test_files |
      "$python" -c "import re, sys; m = re.search(r'(\d+)(?:/\d+)? tests? collected', sys.stdin.read()); n = int(m.group(1)) if m else 0; print('needs_cuda tests selected:', n); sys.exit(0 if n > 0 else 1)"
  }
  export test_files
  export -f select_cuda
  run_step select "$(fit 15 185)" "$out/tests.log" bash -c select_cuda || failed=1
  xdist=()
  "$python" -c "import xdist" 2>/dev/null && xdist=(-n 8)
  run_step tests "$(fit 120 120)" "$out/tests.log" "$python" -m pytest -q -rfEs -p no:cacheprovider "${xdist[@]}" \
    -m needs_cuda $test_files || failed=1
  if command -v compute-sanitizer >/dev/null; then
    # Every tensor its own cudaMalloc: memcheck sees an access past a tensor's end only then.
    memcheck() {
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --leak-check no \
        --report-api-errors no --print-limit 20 --error-exitcode 99 "$python" benchmarks/gpu_smoke.py
      local rc=$?
      if [ $rc -ne 0 ] && grep -q "Device not supported" "$out/memcheck.log"; then
        echo "compute-sanitizer does not support this device (gVisor?): memcheck not run"; return 0
      fi
      return $rc
    }
    export -f memcheck
    run_step memcheck "$(fit 55 60)" "$out/memcheck.log" bash -c memcheck || failed=1
  else
    skip_step memcheck "no compute-sanitizer"
    run_step smoke "$(fit 55 60)" "$out/memcheck.log" "$python" benchmarks/gpu_smoke.py || failed=1
  fi
  run_step floor "$(fit 55 0)" "$out/floor.log" "$python" benchmarks/gpu_floor.py --json "$out/floor.json" || failed=1
else
  for s in select tests memcheck floor; do skip_step $s "no native CUDA backend"; done
fi

{
  echo
  echo "--- floor table (floor.log) ---"
  sed -n '/^op /,$p' "$out/floor.log" 2>/dev/null
  echo "--- tests: $(grep -E '(passed|failed|error)' "$out/tests.log" 2>/dev/null | tail -1)"
  grep -h "Device not supported\|ERROR SUMMARY\|gpu_smoke:" "$out/memcheck.log" 2>/dev/null | tail -2
  echo
  printf '%-10s %8s  %s\n' step seconds status
  for i in "${!steps[@]}"; do printf '%-10s %8s  %s\n' "${steps[$i]}" "${secs[$i]}" "${stats[$i]}"; done
  printf '%-10s %8s  %s\n' total "$SECONDS" "$([ $failed = 0 ] && echo ok || echo FAILED)"
  echo "logs: $out"
} | tee "$out/summary.txt"
exit $failed
