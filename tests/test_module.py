"""The conventions users bring from torch.nn.GroupNorm, escnn and e3nn, on every layer."""

import copy

import pytest
import torch
from e3nn import o3
from e3nn.nn import BatchNorm
from escnn import gspaces, nn

from eqnorm import (
    FieldBatchNorm,
    FieldGroupNorm,
    FieldInstanceNorm,
    FieldLayerNorm,
    FieldLayout,
    FieldNorm,
    kernel_backend,
)
from eqnorm.e3nn import IrrepsBatchNorm, IrrepsGroupNorm, IrrepsLayerNorm

C8 = gspaces.rot2dOnR2(8)
FT = nn.FieldType(C8, 16 * [C8.regular_repr])
IRREPS = "8x0e+4x1o+2x2e"

LAYERS = {
    "FieldGroupNorm": lambda **kw: FieldGroupNorm(FT, 4, **kw),
    "FieldLayerNorm": lambda **kw: FieldLayerNorm(FT, **kw),
    "FieldInstanceNorm": lambda **kw: FieldInstanceNorm(FT, **kw),
    "FieldBatchNorm": lambda **kw: FieldBatchNorm(FT, **kw),
    "IrrepsGroupNorm": lambda **kw: IrrepsGroupNorm(IRREPS, 2, **kw),
    "IrrepsLayerNorm": lambda **kw: IrrepsLayerNorm(IRREPS, **kw),
    "IrrepsBatchNorm": lambda **kw: IrrepsBatchNorm(IRREPS, **kw),
    "FieldNorm": lambda **kw: FieldNorm(FieldLayout.scalars(8, 2), **kw),
}


def sample_input(layer):
    if hasattr(layer, "in_type"):
        return nn.GeometricTensor(torch.randn(3, layer.in_type.size, 4, 4) * 2 + 1, layer.in_type)
    if hasattr(layer, "irreps_in"):
        return torch.randn(5, layer.irreps_in.dim) * 2 + 1
    return torch.randn(3, 8, 4, 4) * 2 + 1


def run(layer, x):
    y = layer(x)
    return y.tensor if isinstance(y, nn.GeometricTensor) else y


@pytest.mark.parametrize("kind", list(LAYERS))
def test_group_norm_attributes_and_reset_parameters(kind):
    layer = LAYERS[kind](eps=1e-3)
    assert layer.eps == 1e-3 and layer.affine is True
    assert layer.num_channels == layer.layout.num_channels if hasattr(layer, "layout") else True
    assert layer.num_groups == layer.norm.layout.num_groups if hasattr(layer, "norm") else layer.num_groups == 2
    with torch.no_grad():
        layer.weight.mul_(3)
        layer.bias.add_(1)
    layer.reset_parameters()
    assert torch.equal(layer.weight, torch.ones_like(layer.weight))
    assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


@pytest.mark.parametrize("kind", list(LAYERS))
def test_affine_false_registers_none_and_bias_false_drops_only_the_bias(kind):
    layer = LAYERS[kind](affine=False)
    assert layer.weight is None and layer.bias is None
    assert not any(name.endswith(("weight", "bias")) for name, _ in layer.named_parameters())
    assert not any(key.endswith(("weight", "bias")) for key in layer.state_dict())
    inner = getattr(layer, "norm", layer)
    assert "weight" in inner._parameters and inner._parameters["weight"] is None  # registered, as torch does

    no_bias = LAYERS[kind](bias=False)
    assert no_bias.weight is not None and no_bias.bias is None
    assert [name.rsplit(".", 1)[-1] for name, _ in no_bias.named_parameters()] == ["weight"]
    assert "bias=False" in repr(no_bias)
    with torch.no_grad():
        no_bias.weight.fill_(2)
    plain = LAYERS[kind](affine=False)
    x = sample_input(no_bias)
    torch.testing.assert_close(run(no_bias, x), 2 * run(plain, x))


@pytest.mark.parametrize("kind", ["FieldBatchNorm", "IrrepsBatchNorm"])
def test_batch_norm_attributes_running_statistics_and_resets(kind):
    layer = LAYERS[kind](momentum=0.3)
    assert layer.momentum == 0.3 and layer.track_running_stats is True
    run(layer, sample_input(layer))
    assert layer.norm.num_batches_tracked == 1 and not torch.equal(
        layer.running_var, torch.ones_like(layer.running_var)
    )
    layer.reset_running_stats()
    assert layer.norm.num_batches_tracked == 0
    assert torch.equal(layer.running_var, torch.ones_like(layer.running_var))
    assert not layer.norm.running_cen.any()

    untracked = LAYERS[kind](track_running_stats=False)
    assert untracked.running_var is None and untracked.norm.running_cen is None
    assert not any("running" in key or "tracked" in key for key in untracked.state_dict())


def test_one_line_repr_like_torch():
    assert repr(FieldGroupNorm(FT, 4)) == "FieldGroupNorm(16 C8 regular fields, num_groups=4, eps=1e-05, affine=True)"
    assert repr(FieldBatchNorm(FT, eps=1e-3)) == (
        "FieldBatchNorm(16 C8 regular fields, num_groups=16, eps=0.001, affine=True, momentum=0.1, "
        "track_running_stats=True)"
    )
    mixed = nn.FieldType(C8, 2 * [C8.regular_repr] + [C8.trivial_repr])
    assert repr(FieldLayerNorm(mixed, centering="none")) == (
        "FieldLayerNorm(2 C8 regular + 1 C8 irrep_0 fields, num_groups=1, centering='none', eps=1e-05, affine=True)"
    )
    text = repr(IrrepsGroupNorm(IRREPS, 2, over="graph", normalization="norm"))
    assert text == (
        "IrrepsGroupNorm(8x0e+4x1o+2x2e, over='graph', num_groups=2, normalization='norm', eps=1e-05, affine=True)"
    )
    for layer in (FieldGroupNorm(FT, 4), IrrepsLayerNorm(IRREPS), IrrepsBatchNorm(IRREPS), torch.nn.GroupNorm(2, 4)):
        assert "\n" not in repr(layer)


def test_export_returns_the_module_in_eval_mode_as_escnn_does():
    layer = FieldBatchNorm(FT).train()
    layer(sample_input(layer))  # running statistics away from their start
    exported = layer.export()
    assert not exported.training and not layer.training  # escnn: "export ... and set to 'eval' mode"
    x = sample_input(layer)
    torch.testing.assert_close(exported(x.tensor), layer.eval()(x).tensor)
    # and the exported module scripts, for deployment (the op exists without the compiled kernels too)
    torch.testing.assert_close(torch.jit.script(exported)(x.tensor), exported(x.tensor))


def test_arguments_after_in_type_mean_the_same_in_every_layer():
    assert FieldBatchNorm(FT, 4).num_groups == 4  # num_groups alone: contiguous groups, as FieldGroupNorm(FT, 4)
    assert FieldBatchNorm(FT).num_groups == 16  # default: one field per group
    assert IrrepsBatchNorm(IRREPS, 2).num_groups == 2
    with pytest.raises(ValueError, match=r"num_groups must be a positive integer.*0\.001"):
        FieldBatchNorm(FT, 1e-3)
    with pytest.raises(TypeError, match="positional"):
        FieldGroupNorm(FT, 4, 1e-3)  # type: ignore[misc]
    with pytest.raises(ValueError, match="one group per field"):
        FieldInstanceNorm(FT).layout.__class__.from_field_type(FT, 4, "field")


def test_num_groups_none_picks_whole_fields_of_about_16_channels():
    assert FieldGroupNorm(FT).num_groups == 8  # 128 channels: 8 groups of 2 fields
    assert IrrepsGroupNorm("64x0e+16x1o").num_groups == 5  # 80 copies, 112 channels: target 7; 5 divides 80
    big = nn.FieldType(C8, 128 * [C8.regular_repr])
    assert FieldGroupNorm(big).num_groups == 32


@pytest.mark.parametrize(("normalization", "norm"), [("component", 3**0.5), ("norm", 1.0)])
def test_normalization_component_or_norm(normalization, norm):
    layer = IrrepsGroupNorm("2x1o", group_by="field", normalization=normalization, affine=False, eps=1e-12).double()
    y = layer(torch.randn(4, 6, dtype=torch.float64)).reshape(4, 2, 3)
    torch.testing.assert_close(y.norm(dim=-1), torch.full((4, 2), norm, dtype=torch.float64))


def test_irreps_batch_norm_running_mean_and_var_like_e3nn():
    torch.manual_seed(0)
    ours, theirs = IrrepsBatchNorm(IRREPS), BatchNorm(IRREPS)
    assert ours.running_mean.shape == theirs.running_mean.shape
    assert ours.running_var.shape == theirs.running_var.shape
    assert ours.weight.shape == theirs.weight.shape and ours.bias.shape == theirs.bias.shape
    for _ in range(3):
        x = torch.randn(64, o3.Irreps(IRREPS).dim) * 2 + 1
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    # ours is unbiased (torch's convention), e3nn's biased: they differ by about 1/n
    torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=0.05, atol=0)


def test_deepcopy_and_state_dict_round_trip_with_none_parameters():
    layer = FieldGroupNorm(FT, 4, affine=False)
    clone = copy.deepcopy(layer)
    clone.load_state_dict(layer.state_dict())
    x = sample_input(layer)
    torch.testing.assert_close(clone(x).tensor, layer(x).tensor)


@pytest.mark.skipif(kernel_backend("cpu") == "torch", reason="the compiled extension is not built")
def test_field_norm_scripts_and_equals_eager():
    """FieldNorm (what the escnn layers' export() returns) under TorchScript: the compiled op, eager's numbers."""
    layout = FieldLayout([["s", "v"], ["s"], ["v"], ["s", "s"]], {"s": 1, "v": 2}, {"s"}, [0, 1, 0, 1])
    norm = FieldNorm(layout).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    scripted = torch.jit.script(norm)
    x = torch.randn(2, 8, 3, 5, dtype=torch.float64) + 1
    for memory in (torch.contiguous_format, torch.channels_last):
        xm = x.contiguous(memory_format=memory)
        torch.testing.assert_close(scripted(xm), norm(xm), atol=1e-13, rtol=1e-13)
    nodes, ptr = torch.randn(5, 8, dtype=torch.float64), torch.tensor([0, 2, 5])
    torch.testing.assert_close(scripted(nodes, ptr), norm(nodes, ptr), atol=1e-13, rtol=1e-13)
    with pytest.raises(RuntimeError, match="describes 8 channels but x has 7"):
        scripted(torch.randn(2, 7, 3, dtype=torch.float64))


@pytest.mark.parametrize("eps", [float("nan"), 0.0, -1e-5, float("inf")])
def test_eps_set_after_construction_is_checked(eps):
    norm = FieldNorm(FieldLayout.scalars(4, 2))
    with pytest.raises(ValueError, match="eps must be positive and finite"):
        norm.eps = eps
    assert norm.eps == 1e-5
