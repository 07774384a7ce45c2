#!/usr/bin/env bash
# On a machine with a CUDA GPU, torch and e3nn (no escnn needed): build the CUDA extension in place, run the kernel tests
# on CPU and GPU, then the GPU benchmark. Logs go to $OUT (default benchmarks/out).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
nvcc --version | tail -n 2
# Prefer the distribution's compiler: a toolchain whose libstdc++ differs from the one loaded at run time can break
# C++ exceptions thrown across the extension boundary (every failed argument check then crashes the process).
if [ -x /usr/bin/g++ ]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++; fi
rm -rf build eqnorm/_C*.so
start=$SECONDS
if ! EQNORM_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}" "$py" setup.py build_ext --inplace >"$out/build.log" 2>&1; then
  tail -n 60 "$out/build.log"
  exit 1
fi
echo "built in $((SECONDS - start)) s: $("$py" -c 'import eqnorm; print(eqnorm.kernel_backend("cpu"), eqnorm.kernel_backend("cuda"))')"
# Every test that touches the GPU (the CPU-only tests run in CI): tests/test_cuda.py and the [cuda] cases elsewhere.
# A failure still lets the benchmark run (device time is scarce); the script's exit status reports it at the end.
start=$SECONDS
tests=0
EQNORM_EXPECT_CUDA=1 "$py" -m pytest -q -p no:cacheprovider -n 4 -k cuda \
  tests/test_cuda.py tests/test_ops.py tests/e3nn/test_irreps_group_norm.py "$@" 2>&1 | tee "$out/tests.log" | tail -n 25 ||
  tests=$?
echo "tests took $((SECONDS - start)) s (exit status $tests)"
"$py" benchmarks/gpu.py 2>&1 | tee "$out/gpu.md"
exit "$tests"
