"""A package people can install: the e3nn side without escnn, the README's code as written, the sdist carrying every
kernel source and a wheel built from it carrying the compiled extension."""

import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: makes every ``import escnn`` fail, as on a machine without escnn
BLOCK_ESCNN = """
import sys
class _NoEscnn:
    def find_spec(self, name, path=None, target=None):
        if name == "escnn" or name.startswith("escnn."):
            raise ImportError("escnn is blocked for this test")
sys.meta_path.insert(0, _NoEscnn())
"""


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)


def test_e3nn_side_works_without_escnn():
    pytest.importorskip("e3nn")
    code = BLOCK_ESCNN + (
        "import torch, eqnorm, eqnorm.functional\n"
        "from eqnorm.e3nn import IrrepsGroupNorm\n"
        "norm = IrrepsGroupNorm('4x0e+2x1o', 2, over='graph')\n"
        "y = norm(torch.randn(5, 10), batch=torch.tensor([0, 0, 1, 1, 1]))\n"
        "assert y.shape == (5, 10) and 'escnn' not in sys.modules\n"
        "try:\n"
        "    eqnorm.FieldGroupNorm\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert "pip install 'eqnorm-layers[escnn]'" in out.stdout


def test_check_command_without_escnn_helps_and_names_the_extra_for_escnn_jobs():
    run = BLOCK_ESCNN + "from eqnorm.check._cli import main\nraise SystemExit(main(sys.argv[1:]))"
    out = run_python(run, "--help")
    assert out.returncode == 0 and "usage: eqnorm-check" in out.stdout
    out = run_python(run)  # the default model is an escnn CNN
    assert out.returncode == 2
    assert "eqnorm-layers[escnn]" in out.stderr and "Traceback" not in out.stderr


def readme_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(readme_blocks())))
def test_readme_python_block_runs_as_written(index):
    pytest.importorskip("escnn")
    pytest.importorskip("e3nn")
    out = run_python(readme_blocks()[index])
    assert out.returncode == 0, out.stderr[-3000:]


def test_sdist_builds_without_torch_and_carries_the_kernels_and_the_tests(tmp_path):
    """Built in pip's isolated environment (setuptools and wheel only, no torch), as `python -m build --sdist` does;
    then a wheel from it, against this environment's torch."""
    pytest.importorskip("build")
    sdist = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert sdist.returncode == 0, sdist.stderr[-3000:]
    (archive,) = tmp_path.glob("eqnorm_layers-*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    sources = {str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*") if p.is_file()}
    assert sources and sources <= names, sorted(sources - names)
    assert {"LICENSE", "setup.py", "pyproject.toml", "MANIFEST.in", "conftest.py"} <= names
    tests = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*.py") if "__pycache__" not in p.parts}
    assert tests <= names, sorted(tests - names)  # helpers and adapter folders: the suite runs from the sdist
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)
    wheel = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w", str(tmp_path), str(archive)],
        capture_output=True,
        text=True,
    )
    assert wheel.returncode == 0, wheel.stdout[-3000:] + wheel.stderr[-3000:]
    (built,) = tmp_path.glob("eqnorm_layers-*.whl")
    with zipfile.ZipFile(built) as zf:
        members = zf.namelist()
    assert any(re.fullmatch(r"eqnorm/_C(\..*)?\.so", m) for m in members), members
    assert "eqnorm/_extension_missing.txt" not in members
    with zipfile.ZipFile(built) as zf:
        (library,) = (m for m in members if re.fullmatch(r"eqnorm/_C(\..*)?\.so", m))
        assert zf.getinfo(library).file_size < 4 << 20  # a release build: no debug information (21 MB with it)
        metadata = zf.read(next(m for m in members if m.endswith(".dist-info/METADATA"))).decode()
        built_with = zf.read("eqnorm/_built_with.txt").decode().strip()
    # the wheel states the torch it works with: the minor release its kernels were compiled against
    major, minor = (int(part) for part in torch_version().split(".")[:2])
    assert f"Requires-Dist: torch<{major}.{minor + 1},>={major}.{minor}" in metadata, metadata
    assert built_with == __import__("torch").__version__


def test_isolated_build_stops_at_once_with_the_command_to_use(tmp_path):
    """pip's default, build isolation, would compile against a torch it downloads: the build stops before that,
    naming the torch installed here and the command that builds against it."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = done.stdout + done.stderr
    assert done.returncode != 0 and not list(tmp_path.glob("*.whl")), out[-3000:]
    assert f"without the torch {torch_version()} you have" in out and "pip install --no-build-isolation" in out


def torch_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("torch")
