#!/usr/bin/env bash
# eqnorm's one entry point: sets up .venv on first use (and whenever the build inputs change), then runs a job.
#   scripts/dev.sh check   eqnorm-check on its built-in default model (the main job); arguments go to eqnorm-check
#   scripts/dev.sh test    the test suite
#   scripts/dev.sh bench   the CPU benchmarks (escnn shapes, then the e3nn layers)
#   scripts/dev.sh lint    ruff and mypy
#   scripts/dev.sh cuda-check   compile every CUDA source with nvcc for sm_80 and sm_90 (no GPU needed)
#   scripts/dev.sh clients      the tests inside real client packages: mace-torch (which pins e3nn 0.4.4) in
#                               .venv-clients, nequip in .venv-nequip, both beside .venv, with the kernels .venv built
#   scripts/dev.sh docs    build the documentation site into docs/_build/html (warnings are errors)
#   scripts/dev.sh wheel   an sdist (built without torch) and a wheel from it into dist/, compiled against .venv's
#                          torch (CUDA kernels too where nvcc and a CUDA torch are present); the wheel pins that torch
#   scripts/dev.sh install-check   the README's install commands for each kind of user, each in a throw-away
#                          virtualenv: e3nn and escnn users from the sdist, everything from the wheel; smoke tests
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv="$root/.venv"
py="$venv/bin/python"
torch_pin="${EQNORM_TORCH_PIN:-torch==2.13.0}"  # an unpinned torch pulls a multi-GB CUDA build

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

have_gfortran_or_py3nj() {
  command -v gfortran >/dev/null 2>&1 || { [ -x "$py" ] && "$py" -c "import py3nj" 2>/dev/null; }
}

setup() {
  # escnn needs py3nj, whose sdist compiles Fortran with meson-python.
  if ! have_gfortran_or_py3nj; then
    echo "eqnorm setup: installing gfortran (needed to build escnn's py3nj)" >&2
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gfortran >/dev/null
  fi
  if [ ! -x "$py" ]; then
    "$(command -v python3.11 || command -v python3)" -m venv "$venv"
  fi
  local stamp
  stamp=$(cat pyproject.toml setup.py MANIFEST.in scripts/dev.sh $(find csrc -type f 2>/dev/null | sort) | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$venv/.eqnorm-setup-stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "eqnorm setup: installing dependencies into .venv (log: .venv/setup.log)" >&2
    local pip=("$py" -m pip install --disable-pip-version-check)
    {
      "${pip[@]}" --upgrade pip setuptools wheel &&
        "${pip[@]}" "$torch_pin" "numpy<2" &&
        # py3nj and lie_learn are sdists that build with their own backends (meson-python, Cython): they need pip's
        # build isolation, which the last call turns off.
        "${pip[@]}" py3nj lie_learn "numpy<2" &&
        # eqnorm's extension must compile against the torch installed above, hence no build isolation here.
        "${pip[@]}" --no-build-isolation -e ".[all]" "numpy<2"
    } >"$venv/setup.log" 2>&1 || { tail -n 40 "$venv/setup.log" >&2; exit 1; }
    echo "$stamp" >"$venv/.eqnorm-setup-stamp"
  fi
}

job="${1:-check}"
shift || true
setup
case "$job" in
  setup) ;;
  check) exec "$venv/bin/eqnorm-check" "$@" ;;
  test) exec "$py" -m pytest -q "$@" ;;
  bench) "$py" benchmarks/cpu.py "$@" && "$py" benchmarks/e3nn_cpu.py ;;
  lint) "$venv/bin/ruff" check . && "$venv/bin/ruff" format --check . && "$venv/bin/mypy" ;;
  docs) exec "$venv/bin/sphinx-build" -W --keep-going -q -b html docs docs/_build/html "$@" ;;
  clients)
    # mace-torch pins e3nn 0.4.4 and nequip needs e3nn >= 0.6: one environment each, beside .venv, both with the
    # torch .venv has, so that they load the kernels .venv built (eqnorm comes from this checkout)
    make_client_env() {
      local env="$1"
      shift
      [ -x "$env/bin/python" ] || "$(command -v python3.11 || command -v python3)" -m venv "$env"
      echo "eqnorm clients: installing $* into $env (log: $env/setup.log)" >&2
      "$env/bin/python" -m pip install --disable-pip-version-check "$torch_pin" "numpy<2" "$@" ase pytest hypothesis \
        >"$env/setup.log" 2>&1 || { tail -n 40 "$env/setup.log" >&2; exit 1; }
    }
    make_client_env "$root/.venv-clients" "mace-torch==0.3.16"
    make_client_env "$root/.venv-nequip" "nequip==0.19.1"
    # e3nn 0.4 loads its constants with torch.load, which torch >= 2.6 refuses without this (mace-torch sets it too)
    PYTHONPATH="$root" TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 "$root/.venv-clients/bin/python" -m pytest -q \
      -p no:cacheprovider tests/clients/test_mace.py tests/e3nn tests/test_transforms.py "$@"
    PYTHONPATH="$root" exec "$root/.venv-nequip/bin/python" -m pytest -q -p no:cacheprovider tests/clients/test_nequip.py "$@" ;;
  wheel)
    rm -rf dist
    "$py" -m build --sdist --outdir dist . >/dev/null
    "$py" -m pip wheel --disable-pip-version-check --no-build-isolation --no-deps -q -w dist dist/eqnorm_layers-*.tar.gz
    ls dist ;;
  install-check)
    "$0" wheel >/dev/null
    sdist=$(ls "$root"/dist/eqnorm_layers-*.tar.gz)
    wheel=$(ls "$root"/dist/eqnorm_layers-*.whl)
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    fresh() {  # a virtualenv with torch and numpy, as the README's first command leaves it
      "$(command -v python3.11 || command -v python3)" -m venv "$tmp/$1"
      "$tmp/$1/bin/pip" install -q --disable-pip-version-check "$torch_pin" numpy
    }
    smoke() {  # the installed eqnorm (not this checkout's): compiled kernels that match the pure-PyTorch ones, and
      # the extras of its kind; escnn kinds run the checker on its default model
      (cd "$tmp" && "$tmp/$1/bin/python" - "$1" <<'PY'
import sys, torch, eqnorm
from eqnorm import FieldLayout, FieldNorm, _pure_kernels
kind = sys.argv[1]
assert "site-packages" in eqnorm.__file__, eqnorm.__file__  # the installed package, not a checkout
assert eqnorm.kernel_backend("cpu") == "cpp", "the compiled kernels did not load"
norm = FieldNorm(FieldLayout.scalars(8, 2)).double()
x = torch.randn(2, 8, 5, dtype=torch.float64, requires_grad=True)
want = _pure_kernels.torch_field_norm(x.flatten(2), norm.weight, norm.bias, norm.index_tensors, None, False, False, 1e-5)
torch.testing.assert_close(norm(x), want[0].view_as(x))
if kind in ("escnn", "all"):
    from escnn import gspaces, nn
    gs = gspaces.rot2dOnR2(4)
    eqnorm.FieldGroupNorm(nn.FieldType(gs, 2 * [gs.regular_repr]), 2)
if kind in ("e3nn", "all"):
    from eqnorm.e3nn import IrrepsGroupNorm
    IrrepsGroupNorm("4x0e+2x1o", 2)(torch.randn(3, 10)).sum().backward()
print(f"install-check {kind}: eqnorm from {eqnorm.__file__}, kernels {eqnorm.kernel_backend('cpu')}, torch {torch.__version__}")
PY
      )
      if [ "$1" != e3nn ]; then (cd "$tmp" && "$tmp/$1/bin/eqnorm-check" --samples 2 --mode eval | tail -n 1); fi
      rm -rf "${tmp:?}/$1"
    }
    # One statement per step (not an && chain, whose failures `set -e` lets pass) and one environment at a time: each
    # holds a torch, and CI's disk is not ours to fill.
    echo "install-check: e3nn users, from the sdist as the README writes it" >&2
    fresh e3nn
    "$tmp/e3nn/bin/pip" install -q --no-build-isolation "$sdist[e3nn]"
    smoke e3nn
    echo "install-check: escnn users, from the sdist as the README writes it" >&2
    fresh escnn
    "$tmp/escnn/bin/pip" install -q "escnn>=1.0.11" "numpy<2"
    "$tmp/escnn/bin/pip" install -q --no-build-isolation "$sdist[escnn]"
    smoke escnn
    echo "install-check: everything, from the wheel (no compiler: seconds)" >&2
    fresh all
    start=$(date +%s)
    "$tmp/all/bin/pip" install -q "$wheel[all]"
    echo "wheel installed with everything in $(($(date +%s) - start)) s"
    smoke all ;;
  cuda-check)
    tmp=$(mktemp -d)
    for source in csrc/cuda/*.cu; do
      nvcc -std=c++17 -O3 -Icsrc -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90,code=sm_90 \
        -c "$source" -o "$tmp/$(basename "$source").o"
      echo "nvcc: $source compiles for sm_80 and sm_90"
    done
    # The binding needs torch's CUDA headers; a CPU build of torch lacks only the generated cuda_cmake_macros.h, so an
    # empty stand-in lets the compiler check it against the CUDA toolkit's runtime headers.
    mkdir -p "$tmp/stub/c10/cuda/impl" && : >"$tmp/stub/c10/cuda/impl/cuda_cmake_macros.h"
    torch_include=$("$py" -c "from torch.utils.cpp_extension import include_paths; print(' '.join(include_paths()))")
    cuda_include=$(nvcc --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ INCLUDES="-I\([^"]*\)".*/\1/p')
    # shellcheck disable=SC2046
    g++ -std=c++17 -fsyntax-only -w -Icsrc -I"$tmp/stub" $(printf -- '-I%s ' $torch_include) -I"$cuda_include" \
      -I"$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" csrc/cuda_binding.cpp
    echo "g++: csrc/cuda_binding.cpp compiles against torch's and the toolkit's headers"
    rm -rf "$tmp" ;;
  *) echo "usage: scripts/dev.sh [check|test|bench|lint|docs|wheel|install-check|cuda-check|clients|setup] [args...]" >&2
     exit 2 ;;
esac
