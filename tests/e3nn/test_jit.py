"""TorchScript, as MACE's LAMMPS export and e3nn.util.jit use it: the e3nn layers script, pass e3nn's
assert_auto_jitable, compile inside a model with e3nn.util.jit.compile, call the compiled op and give the eager
numbers (and gradients)."""

import pytest
import torch
from e3nn import o3
from e3nn.util.jit import compile as e3nn_compile
from e3nn.util.test import assert_auto_jitable

import eqnorm
from eqnorm.e3nn import IrrepsGroupNorm, IrrepsLayerNorm

pytestmark = pytest.mark.skipif(eqnorm.kernel_backend("cpu") == "torch", reason="the compiled extension is not built")

IRREPS = o3.Irreps("3x0e+2x1o+1x2e")
GEN = torch.Generator().manual_seed(0)
X = torch.randn(6, IRREPS.dim, generator=GEN, dtype=torch.float64) + 1
BATCH = torch.tensor([0, 0, 0, 1, 1, 1])

CASES = {
    "layer norm per node": (lambda: IrrepsLayerNorm(IRREPS), (X,)),
    "per node, no affine": (lambda: IrrepsGroupNorm(IRREPS, group_by="irrep", affine=False), (X,)),
    "per graph, batch and num_graphs": (lambda: IrrepsGroupNorm(IRREPS, 2, over="graph"), (X, BATCH, None, 2)),
    "per graph, batch": (lambda: IrrepsGroupNorm(IRREPS, 2, over="graph"), (X, BATCH)),
    "per graph, ptr": (lambda: IrrepsGroupNorm(IRREPS, 2, over="graph"), (X, None, torch.tensor([0, 2, 6]))),
    "per point cloud": (lambda: IrrepsGroupNorm(IRREPS, 3, over="points"), (X.reshape(2, 3, -1),)),
}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_scripted_layer_equals_eager(case):
    make, args = CASES[case]
    norm = make().double()
    if norm.weight is not None:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(generator=GEN)
    scripted = torch.jit.script(norm)
    x = args[0].clone().requires_grad_()
    y, ys = norm(x, *args[1:]), scripted(x, *args[1:])
    torch.testing.assert_close(ys, y, atol=1e-13, rtol=1e-13)
    dy = torch.randn(y.shape, generator=GEN, dtype=y.dtype)
    torch.testing.assert_close(torch.autograd.grad(ys, x, dy)[0], torch.autograd.grad(y, x, dy)[0])
    assert "ops.eqnorm.field_norm" in scripted.norm.scripted_op.code  # the compiled op, not the Python route


def test_scripted_layer_refuses_a_bad_graph_index():
    scripted = torch.jit.script(IrrepsGroupNorm(IRREPS, 2, over="graph").double())
    with pytest.raises(RuntimeError, match="must be sorted"):
        scripted(X, torch.tensor([0, 1, 0, 1, 1, 1]), None, 2)
    with pytest.raises(torch.jit.Error, match="must be sorted"):
        scripted(X, torch.tensor([0, 1, 0, 1, 1, 1]))


def test_assert_auto_jitable():
    assert_auto_jitable(IrrepsLayerNorm(IRREPS))
    assert_auto_jitable(IrrepsGroupNorm(IRREPS, group_by="irrep"))


class Potential(torch.nn.Module):
    """Positions -> features -> per-graph norm -> energies, as an e3nn model holds a norm."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = o3.Linear("1x1o", IRREPS)
        self.norm = IrrepsGroupNorm(IRREPS, group_by="irrep", over="graph")
        self.readout = o3.Linear(IRREPS, "1x0e")

    def forward(self, pos: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        return self.readout(self.norm(self.embed(pos), batch, None, 2)).sum()


def test_e3nn_jit_compile_of_a_model_holding_the_norm():
    model = Potential().double()
    compiled = torch.jit.script(e3nn_compile(model))
    pos = torch.randn(6, 3, generator=GEN, dtype=torch.float64).requires_grad_()
    energy, scripted_energy = model(pos, BATCH), compiled(pos, BATCH)
    torch.testing.assert_close(scripted_energy, energy)
    forces = torch.autograd.grad(energy, pos)[0]
    torch.testing.assert_close(torch.autograd.grad(scripted_energy, pos)[0], forces)


def test_batch_norm_scripts_for_deployment():
    """Scripted in eval mode it normalizes with the running statistics; without them, with batch statistics; a
    scripted batch norm in training mode (which would have to update running statistics) is refused."""
    from eqnorm.e3nn import IrrepsBatchNorm

    norm = IrrepsBatchNorm(IRREPS).double()
    for scale in (1.0, 3.0):
        norm(X * scale)  # running statistics away from their start
    norm.eval()
    torch.testing.assert_close(torch.jit.script(norm)(X), norm(X), atol=1e-13, rtol=1e-13)
    assert_auto_jitable(norm)
    free = IrrepsBatchNorm(IRREPS, track_running_stats=False).double()
    torch.testing.assert_close(torch.jit.script(free)(X), free(X), atol=1e-13, rtol=1e-13)
    with pytest.raises(torch.jit.Error, match="does not update running statistics"):
        torch.jit.script(norm.train())(X)
