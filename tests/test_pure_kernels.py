"""The pure-PyTorch kernels in the dispatcher (eqnorm/_pure_kernels.py): the op exists without the compiled
extension, on every device, and computes the reference; where the extension is loaded its schemas are the same."""

import subprocess
import sys

import pytest
import torch

import eqnorm
from eqnorm import _pure_kernels

pytestmark = pytest.mark.skipif(eqnorm.kernel_backend("cpu") == "torch", reason="the compiled extension is not built")


@pytest.mark.parametrize("name", ["field_norm", "field_norm_backward", "segment_offsets"])
def test_the_schemas_are_those_the_extension_defines(name):
    schema = next(s for s in _pure_kernels.SCHEMAS if s.startswith(name + "("))
    assert str(getattr(torch.ops.eqnorm, name).default._schema) == "eqnorm::" + schema


# Run where the extension cannot be imported (as on an installation without compiled kernels): the op is defined by
# the pure kernels, computes what the compiled op computes here, is differentiable twice, and a module scripts.
WITHOUT_EXTENSION = """
import sys, warnings
sys.modules["eqnorm._C"] = None  # import eqnorm._C raises ImportError
warnings.simplefilter("ignore", RuntimeWarning)
import torch, eqnorm
from eqnorm import FieldLayout, FieldNorm
assert eqnorm.kernel_backend("cpu") == "torch"
layout = FieldLayout([["s", "v"], ["s"], ["v"], ["s", "s"]], {"s": 1, "v": 2}, {"s"}, [0, 1, 0, 1])
x = torch.load(sys.argv[1]).requires_grad_()
w = torch.linspace(0.5, 1.5, layout.num_fields, dtype=torch.float64).requires_grad_()
y, mean, m2 = torch.ops.eqnorm.field_norm(x, w, None, list(layout.tensors), None, False, False, 1e-5)
dy = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).reshape(y.shape)
dx, dw = torch.autograd.grad(y, (x, w), dy, create_graph=True)
ddx = torch.autograd.grad(dx.square().sum(), x)[0]
back = torch.ops.eqnorm.field_norm_backward(dy, x.detach(), mean, m2, w.detach(), None, list(layout.tensors), None,
                                            False, False, 1e-5, [True, True, True])
assert back[2] is None
norm = FieldNorm(layout).double()
scripted = torch.jit.script(norm)
torch.save([y.detach(), dx.detach(), dw.detach(), ddx, back[0], back[1], scripted(x.detach()), norm(x.detach())],
           sys.argv[2])
"""


def test_without_the_extension_the_op_is_the_pure_kernels(tmp_path):
    layout = eqnorm.FieldLayout([["s", "v"], ["s"], ["v"], ["s", "s"]], {"s": 1, "v": 2}, {"s"}, [0, 1, 0, 1])
    x = torch.randn(3, 8, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTENSION, str(tmp_path / "x.pt"), str(tmp_path / "out.pt")], check=True
    )
    y, dx, dw, ddx, back_dx, back_dw, scripted, eager = torch.load(tmp_path / "out.pt")
    x.requires_grad_()
    w = torch.linspace(0.5, 1.5, layout.num_fields, dtype=torch.float64).requires_grad_()
    want = torch.ops.eqnorm.field_norm(x, w, None, list(layout.tensors), None, False, False, 1e-5)[0]
    dy = torch.linspace(-1, 1, want.numel(), dtype=torch.float64).reshape(want.shape)
    want_dx, want_dw = torch.autograd.grad(want, (x, w), dy, create_graph=True)
    want_ddx = torch.autograd.grad(want_dx.square().sum(), x)[0]
    for got, expected in ((y, want), (dx, want_dx), (dw, want_dw), (ddx, want_ddx), (back_dx, want_dx),
                          (back_dw, want_dw)):  # fmt: skip
        torch.testing.assert_close(got, expected.detach(), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(scripted, eager, atol=0, rtol=0)
    assert ddx.abs().max() > 0


# The graph offsets where the extension cannot be imported: eqnorm::segment_offsets is the pure kernel, which checks
# the graph index when eager, compiled and scripted code runs (a traced Python check would be skipped).
GRAPHS_WITHOUT_EXTENSION = """
import sys, warnings
sys.modules["eqnorm._C"] = None
warnings.simplefilter("ignore", RuntimeWarning)
import torch
from eqnorm.e3nn import IrrepsGroupNorm, segment_offsets
offsets = segment_offsets(5, torch.tensor([0, 0, 2, 2, 2]), None, torch.device("cpu"), 4)
assert offsets.tolist() == [0, 2, 2, 5, 5], offsets
norm = IrrepsGroupNorm("4x0e+2x1o", 2, over="graph")
def eager(x, batch):
    return norm(x, batch=batch, num_graphs=2)
compiled = torch.compile(eager, fullgraph=True, dynamic=True)
script = torch.jit.script(norm)
def scripted(x, batch):
    return script(x, batch, None, 2)
x, good = torch.randn(5, 10), torch.tensor([0, 0, 1, 1, 1])
for run in (compiled, scripted):
    torch.testing.assert_close(run(x, good), eager(x, good))
for bad, message in (([0, 1, 0, 1, 1], "must be sorted"), ([0, 0, 1, 1, 2], "outside 0 .. num_graphs - 1")):
    for run in (eager, compiled, scripted):
        try:
            run(x, torch.tensor(bad))
        except RuntimeError as error:
            assert message in str(error), error
        else:
            raise AssertionError(f"{run.__name__} took the graph index {bad}")
"""


def test_without_the_extension_graph_offsets_check_the_index_eager_compiled_and_scripted():
    subprocess.run([sys.executable, "-c", GRAPHS_WITHOUT_EXTENSION], check=True)
