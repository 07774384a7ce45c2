"""Derivatives of every order through every path: gradgradcheck in float64 (dense, channels-last, ragged, batch norm
in train and eval, the escnn-free e3nn layers), a Hessian equal to torch's group norm, and a force-training step."""

import pytest
import torch

from eqnorm import FieldLayout, FieldNorm
from eqnorm.batch_norm import PlainBatchNorm
from eqnorm.functional import field_group_norm

LAYOUT = FieldLayout([["s", "v"], ["s"], ["v"], ["p", "s"]], {"s": 1, "v": 2, "p": 1}, {"s"}, [0, 1, 0, 1])


def double_parameters(module: torch.nn.Module) -> torch.nn.Module:
    module = module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.rand_like(p) * 0.5)
    return module


def check_all_orders(fn, *inputs):
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("centering", ["trivial", "all", "none"])
@pytest.mark.parametrize("memory", ["contiguous", "channels_last"])
def test_gradgradcheck_dense(centering, memory):
    layout = FieldLayout(LAYOUT.field_irreps, LAYOUT.irrep_dims, LAYOUT.trivial, LAYOUT.groups, centering=centering)
    x = torch.randn(2, 8, 3, 2, dtype=torch.float64) * 2 + 1
    if memory == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    w = torch.rand(4, dtype=torch.float64) + 0.5
    b = torch.randn(layout.num_trivial, dtype=torch.float64)
    check_all_orders(
        lambda x, w, b: field_group_norm(x, layout, w, b), x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    )


def test_gradgradcheck_ragged():
    x = torch.randn(7, 8, dtype=torch.float64).requires_grad_()
    w = (torch.rand(4, dtype=torch.float64) + 0.5).requires_grad_()
    ptr = torch.tensor([0, 3, 3, 6, 7])
    check_all_orders(lambda x, w: field_group_norm(x, LAYOUT, w, ptr=ptr), x, w)


@pytest.mark.parametrize("training", [True, False])
def test_gradgradcheck_batch_norm(training):
    norm = double_parameters(PlainBatchNorm(LAYOUT))
    norm(torch.randn(4, 8, 3, dtype=torch.float64))  # some running statistics
    norm.train(training)
    x = (torch.randn(3, 8, 2, dtype=torch.float64) * 2 + 1).requires_grad_()
    check_all_orders(
        lambda x, w, b: torch.func.functional_call(norm, {"weight": w, "bias": b}, (x,)),
        x,
        norm.weight.detach().clone().requires_grad_(),
        norm.bias.detach().clone().requires_grad_(),
    )


def test_gradgradcheck_module_and_e3nn_layers():
    pytest.importorskip("e3nn")
    from eqnorm.e3nn import IrrepsBatchNorm, IrrepsGroupNorm, IrrepsLayerNorm

    irreps = "2x0e+1x1o+1x0o"
    nodes = (torch.randn(6, 6, dtype=torch.float64) + 1).requires_grad_()
    batch = torch.tensor([0, 0, 1, 1, 1, 2])
    for module, call in (
        (IrrepsGroupNorm(irreps, 2, over="graph"), lambda m, x: m(x, batch=batch, num_graphs=3)),
        (IrrepsLayerNorm(irreps), lambda m, x: m(x)),
        (IrrepsGroupNorm(irreps, 4, over="points"), lambda m, x: m(x.reshape(2, 3, 6))),
        (IrrepsBatchNorm(irreps), lambda m, x: m(x)),
        (FieldNorm(LAYOUT), lambda m, x: m(torch.cat([x, x[:, :2]], 1).reshape(3, 8, 2))),
    ):
        module = double_parameters(module)
        check_all_orders(lambda x, module=module, call=call: call(module, x), nodes)


def test_hessian_equals_torch_group_norm():
    layout = FieldLayout.scalars(6, 3)
    x = torch.randn(2, 6, 4, dtype=torch.float64)
    ours = torch.autograd.functional.hessian(lambda x: field_group_norm(x, layout).pow(3).sum(), x)
    theirs = torch.autograd.functional.hessian(lambda x: torch.nn.functional.group_norm(x, 3).pow(3).sum(), x)
    assert theirs.abs().max() > 1
    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=1e-10)


def test_force_training_step_matches_the_pure_pytorch_reference():
    """energy -> forces (create_graph) -> loss on forces -> parameter gradients, compiled op against torch path."""
    e3nn = pytest.importorskip("e3nn")
    import subprocess
    import sys

    script = (
        "import torch, sys\n"
        "from e3nn import o3\n"
        "from eqnorm.e3nn import IrrepsGroupNorm\n"
        "torch.manual_seed(0)\n"
        "pos = torch.randn(9, 3, dtype=torch.float64, requires_grad=True)\n"
        "batch = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1])\n"
        "sh = o3.SphericalHarmonics('1x0e+1x1o+1x2e', True, 'component')\n"
        "lin = o3.Linear('1x0e+1x1o+1x2e', '4x0e+2x1o+1x2e').double()\n"
        "norm = IrrepsGroupNorm('4x0e+2x1o+1x2e', 7, over='graph').double()\n"
        "out = o3.Linear('4x0e+2x1o+1x2e', '1x0e').double()\n"
        "center = pos - pos.mean(0)\n"
        "h = norm(lin(sh(center) * center.norm(dim=1, keepdim=True)), batch=batch, num_graphs=2)\n"
        "energy = (out(h) ** 2).sum()\n"
        "forces = -torch.autograd.grad(energy, pos, create_graph=True)[0]\n"
        "loss = forces.square().mean()\n"
        "params = [*lin.parameters(), *norm.parameters(), *out.parameters()]\n"
        "grads = torch.autograd.grad(loss, params)\n"
        "torch.save([forces.detach(), *grads], sys.argv[1])\n"
    )
    results = []
    import os
    import tempfile

    for backend in ("", "torch"):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "out.pt")
            env = {**os.environ, "EQNORM_BACKEND": backend}
            subprocess.run([sys.executable, "-c", script, path], check=True, env=env)
            results.append(torch.load(path))
    assert e3nn is not None and all(g.abs().max() > 0 for g in results[0][1:])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
