"""The equivariance checks as a library (eqnorm/check/_checks.py): they never change the model they check, and a
degenerate model (constant, zero or non-finite output) fails in every mode instead of passing with zero errors."""

import torch
from e3nn import o3
from e3nn.nn import BatchNorm
from escnn import gspaces, nn

from eqnorm import FieldBatchNorm
from eqnorm.check import CheckSettings, Tolerance, check_e3nn, check_escnn

GS = gspaces.rot2dOnR2(4)
FT = nn.FieldType(GS, 3 * [GS.regular_repr])
F64 = Tolerance.for_dtype(torch.float64)


def snapshot(model: torch.nn.Module) -> tuple[dict, list, torch.Tensor]:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return state, [m.training for m in model.modules()], torch.get_rng_state()


def assert_unchanged(model: torch.nn.Module, before: tuple[dict, list, torch.Tensor]) -> None:
    state, flags, rng = before
    after = model.state_dict()
    assert state.keys() == after.keys()
    for key, value in state.items():
        assert value.dtype == after[key].dtype and torch.equal(value, after[key]), key
    assert flags == [m.training for m in model.modules()]
    assert torch.equal(rng, torch.get_rng_state())


def test_an_escnn_model_is_bit_identical_after_its_checks():
    torch.manual_seed(0)
    model = nn.SequentialModule(nn.R2Conv(FT, FT, 3, padding=1), nn.InnerBatchNorm(FT), nn.ReLU(FT)).train()
    before = snapshot(model)
    results = check_escnn(model, CheckSettings(["train", "eval"], torch.float64, F64, samples=4))
    assert_unchanged(model, before)
    assert all(r.passed for r in results if r.mode == "eval")  # the eval checks saw the model's own statistics


def test_an_e3nn_model_is_bit_identical_after_its_checks():
    torch.manual_seed(0)
    irreps = o3.Irreps("2x0e+1x1o")
    model = torch.nn.Sequential(o3.Linear(irreps, irreps), BatchNorm(irreps)).train()
    model.irreps_in = model.irreps_out = irreps
    before = snapshot(model)
    check_e3nn(model, CheckSettings(["train", "eval"], torch.float64, F64, samples=4))
    assert_unchanged(model, before)


def test_a_dead_model_is_degenerate_in_every_mode():
    """A batch norm whose weight and bias are zero outputs zeros: equivariant to any tolerance, and dead."""
    dead = FieldBatchNorm(FT)
    with torch.no_grad():
        dead.norm.weight.zero_()
        dead.norm.bias.zero_()
    results = check_escnn(dead, CheckSettings(["train", "eval"], torch.float64, F64, samples=4))
    degenerate = [r for r in results if r.name == "non-degenerate output"]
    assert [r.mode for r in degenerate] == ["train", "eval"]
    assert all(r.status == "failed" and "constant output" in r.note for r in degenerate)
    alive = FieldBatchNorm(FT)
    assert all(r.passed for r in check_escnn(alive, CheckSettings(["train", "eval"], torch.float64, F64, samples=4)))


def test_continuous_groups_get_their_exact_grid_symmetries():
    """SO(2) and O(2) models: the turns by 90 degrees (and O(2)'s axis flips) are checked exactly, every one of them,
    however few elements are sampled for the interpolated rotations."""
    for gs, count in ((gspaces.rot2dOnR2(-1, maximum_frequency=2), 4), (gspaces.flipRot2dOnR2(-1, 2), 8)):
        ft = nn.FieldType(gs, [gs.irrep(*gs.fibergroup.bl_irreps(1)[-1]), gs.trivial_repr] * 2)
        model = nn.SequentialModule(nn.R2Conv(ft, ft, 3, padding=1), FieldBatchNorm(ft).eval())
        results = check_escnn(model, CheckSettings(["eval"], torch.float64, F64, samples=3))
        (grid,) = [r for r in results if r.name == "grid symmetries (exact)"]
        assert len(grid.measurements) == count and grid.status == "passed"
        broken = nn.SequentialModule(model, _Shift(ft))
        (grid,) = [
            r for r in check_escnn(broken, CheckSettings(["eval"], torch.float64, F64, samples=3)) if "grid" in r.name
        ]
        assert grid.status == "failed"


class _Shift(nn.EquivariantModule):
    """Adds a constant to the first channel of every field type: breaks equivariance where that channel rotates."""

    def __init__(self, ft: nn.FieldType) -> None:
        super().__init__()
        self.in_type = self.out_type = ft

    def forward(self, x: nn.GeometricTensor) -> nn.GeometricTensor:
        t = x.tensor.clone()
        t[:, 0] += 1.0
        return nn.GeometricTensor(t, self.out_type)

    def evaluate_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape
