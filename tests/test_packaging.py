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


def test_check_command_without_escnn_names_the_extra_and_exits_2():
    out = run_python(BLOCK_ESCNN + "from eqnorm._cli_entry import main\nraise SystemExit(main())")
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


def test_sdist_carries_every_kernel_source_and_its_wheel_the_extension(tmp_path):
    pytest.importorskip("build")
    sdist = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert sdist.returncode == 0, sdist.stderr[-3000:]
    (archive,) = tmp_path.glob("eqnorm_layers-*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    sources = {str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*") if p.is_file()}
    assert sources and sources <= names, sorted(sources - names)
    assert {"LICENSE", "setup.py", "pyproject.toml", "MANIFEST.in"} <= names
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
