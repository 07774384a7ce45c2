"""Every layer under torch.func's transforms and torch.autograd.forward_ad gives the pure-PyTorch reference's numbers
(never zeros), with the compiled kernels installed; energy -> forces compiles (fullgraph, dynamic shapes, with and
without MACE's Dynamo settings) and exports through the C++ op."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch.autograd.forward_ad as fwAD
from torch import func

import eqnorm
from eqnorm import FieldLayout, FieldNorm, _ops, _pure_kernels
from eqnorm.batch_norm import PlainBatchNorm
from eqnorm.functional import field_group_norm

pytestmark = pytest.mark.skipif(eqnorm.kernel_backend("cpu") == "torch", reason="the compiled extension is not built")

LAYOUT = FieldLayout([["s", "v"], ["s"], ["v"], ["s", "s"]], {"s": 1, "v": 2}, {"s"}, [0, 1, 0, 1])
PTR = torch.tensor([0, 2, 2, 5])


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 + 1


def layers():
    """(name, module or function of x, x): every route to the op."""
    norm = FieldNorm(LAYOUT).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    # as torch.func asks of torch's batch norms (replace_all_batch_norm_modules_): no running statistics to mutate
    bn_train = PlainBatchNorm(LAYOUT, track_running_stats=False).double()
    bn_eval = PlainBatchNorm(LAYOUT).double()
    bn_eval.running_var.uniform_(0.5, 2)
    bn_eval.eval()
    cases = [
        ("dense", norm, rand(2, 8, 3)),
        ("channels-last", lambda x: norm(x.permute(0, 3, 1, 2)), rand(2, 3, 1, 8)),  # (N, H, W, C) memory
        ("ragged", lambda x: field_group_norm(x, LAYOUT, norm.weight, norm.bias, ptr=PTR), rand(5, 8)),
        ("batch norm, train", bn_train, rand(3, 8, 2)),
        ("batch norm, eval", bn_eval, rand(3, 8, 2)),
    ]
    o3 = pytest.importorskip("e3nn.o3")
    from eqnorm.e3nn import IrrepsGroupNorm

    irreps = o3.Irreps("3x0e+2x1o")
    node = IrrepsGroupNorm(irreps, group_by="irrep").double()
    graph = IrrepsGroupNorm(irreps, group_by="irrep", over="graph").double()
    points = IrrepsGroupNorm(irreps, group_by="irrep", over="points").double()
    batch = torch.tensor([0, 0, 1, 1, 1])
    cases += [
        ("e3nn per node", node, rand(5, 9)),
        ("e3nn per graph", lambda x: graph(x, batch=batch, num_graphs=2), rand(5, 9)),
        ("e3nn per point cloud", points, rand(2, 4, 9)),
    ]
    return cases


CASES = {name: (fn, x) for name, fn, x in layers()}


def reference(monkeypatch, transform):
    """transform() with the pure-PyTorch kernels."""
    with monkeypatch.context() as m:
        m.setattr(_ops, "_COMPILED", {})
        return transform()


def scalar(fn):
    return lambda x: (fn(x) * torch.linspace(-1, 1, fn(x).numel(), dtype=x.dtype).reshape(fn(x).shape)).square().sum()


TRANSFORMS = {
    "grad": lambda fn, x: func.grad(scalar(fn))(x),
    "jacrev": lambda fn, x: func.jacrev(fn)(x),
    "jacfwd": lambda fn, x: func.jacfwd(fn)(x),
    "jvp": lambda fn, x: func.jvp(fn, (x,), (torch.ones_like(x),))[1],
    "hessian": lambda fn, x: func.hessian(scalar(fn))(x),
    "vmap": lambda fn, x: func.vmap(fn)(torch.stack([x, x * 2 - 1])),
    "vmap, inner dim": lambda fn, x: func.vmap(fn, in_dims=1, out_dims=1)(torch.stack([x, x * 2 - 1], 1)),
}


@pytest.mark.parametrize("transform", TRANSFORMS, ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_torch_func_transforms_match_the_reference(monkeypatch, case, transform):
    fn, x = CASES[case]
    run = lambda: TRANSFORMS[transform](fn, x.clone())  # noqa: E731
    got, want = run(), reference(monkeypatch, run)
    assert want.abs().max() > 1e-3, "the reference itself must not vanish"
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_ad_matches_the_reference(monkeypatch, case):
    fn, x = CASES[case]

    def tangent():
        with fwAD.dual_level():
            y = fn(fwAD.make_dual(x.clone(), torch.linspace(-1, 1, x.numel(), dtype=x.dtype).reshape(x.shape)))
            return fwAD.unpack_dual(y).tangent

    got, want = tangent(), reference(monkeypatch, tangent)
    assert got is not None and want.abs().max() > 1e-3
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_the_op_called_directly_carries_forward_tangents():
    """Forward-mode tangents through torch.ops.eqnorm.field_norm itself: the op takes its composite form."""
    w, b = torch.rand(4, dtype=torch.float64) + 0.5, torch.randn(4, dtype=torch.float64)
    x, t = rand(2, 8, 3), torch.linspace(-1, 1, 48, dtype=torch.float64).reshape(2, 8, 3)
    with fwAD.dual_level():
        y = torch.ops.eqnorm.field_norm(fwAD.make_dual(x, t), w, b, list(LAYOUT.tensors), None, False, False, 1e-5)[0]
        got = fwAD.unpack_dual(y).tangent
    want = func.jvp(
        lambda x: _pure_kernels.torch_field_norm(x, w, b, LAYOUT.tensors, None, False, False, 1e-5)[0], (x,), (t,)
    )
    torch.testing.assert_close(got, want[1], atol=1e-12, rtol=1e-12)


def energy_forces_model(over: str):
    """A small e3nn potential: positions -> irreps features -> eqnorm -> energy; forces by autograd."""
    o3 = pytest.importorskip("e3nn.o3")
    from eqnorm.e3nn import IrrepsGroupNorm, IrrepsLayerNorm

    irreps = o3.Irreps("4x0e+2x1o")

    def lin(pos: torch.Tensor) -> torch.Tensor:  # plain torch (e3nn 0.4's Linear is a ScriptModule Dynamo refuses)
        r = pos.norm(dim=1, keepdim=True)
        scalars = torch.cat([r, r.square(), r.cos(), (r * 0.5).sin()], 1)
        return torch.cat([scalars, pos, pos * r], 1)

    # a layer norm has one group and one centering class: scatters into a dimension of size 1 in its derivatives
    norm = IrrepsLayerNorm(irreps).double() if over == "node" else IrrepsGroupNorm(irreps, 2, over=over).double()

    def energy_forces(pos: torch.Tensor, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = lin(pos)
        h = norm(h, batch=batch, num_graphs=2) if over == "graph" else norm(h)
        energy = (h[:, :4] ** 2).sum() + (h[:, 4:] ** 3).sum()
        return energy, -torch.autograd.grad(energy, pos, create_graph=True)[0]

    return energy_forces


@pytest.mark.parametrize("over", ["node", "graph"])
def test_compiled_force_training_matches_eager(monkeypatch, over):
    """energy -> forces (create_graph=True, as force training needs) compiled with fullgraph and dynamic shapes, the
    C++ op and its differentiable backward traced, at two sizes; the same numbers as eager and as the pure-PyTorch
    kernels, and the force loss's parameter gradients too."""
    fn = energy_forces_model(over)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        compiled = torch.compile(fn, fullgraph=True, dynamic=True)
        for n, split in ((7, 3), (10, 6)):
            pos = rand(n, 3, seed=n).requires_grad_()
            batch = (torch.arange(n) >= split).long()
            e, f = compiled(pos, batch)
            e0, f0 = fn(pos, batch)
            e1, f1 = reference(monkeypatch, lambda pos=pos, batch=batch: fn(pos, batch))
            for got, want in ((e, e0), (f, f0), (e, e1), (f, f1)):
                torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
            grads = torch.autograd.grad(f.square().sum(), pos)[0]
            torch.testing.assert_close(grads, torch.autograd.grad(f0.square().sum(), pos)[0], atol=1e-11, rtol=1e-11)


MACE_SETTINGS = """
import sys, torch, torch._dynamo
sys.path.insert(0, "tests")
from test_transforms import energy_forces_model, rand
torch._dynamo.allow_in_graph(torch.autograd.grad)  # as mace.tools.compile.prepare sets Dynamo up
torch._dynamo.config.trace_autograd_ops = True
fn = energy_forces_model("graph")
compiled = torch.compile(fn, fullgraph=True, dynamic=True)
pos, batch = rand(7, 3).requires_grad_(), torch.tensor([0, 0, 0, 1, 1, 1, 1])
(e, f), (e0, f0) = compiled(pos, batch), fn(pos, batch)
torch.testing.assert_close(e, e0, atol=1e-12, rtol=1e-12)
torch.testing.assert_close(f, f0, atol=1e-12, rtol=1e-12)
print("forces match")
"""


def test_compiled_force_training_with_mace_dynamo_settings():
    """MACE's compile helper lets autograd.grad into the graph (a process-wide setting: run in a process of its own)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", MACE_SETTINGS], cwd=root, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0 and "forces match" in done.stdout, done.stderr[-3000:]
