import copy

import numpy as np
import pytest
import torch
from escnn import group, gspaces, nn

import eqnorm
from eqnorm import FieldBatchNorm, FieldGroupNorm, FieldInstanceNorm, FieldLayerNorm
from eqnorm.escnn import equivariance_errors, grid_elements, random_input, sample_elements


def c8():
    gs = gspaces.rot2dOnR2(8)
    G = gs.fibergroup
    return gs, [
        gs.regular_repr,
        gs.trivial_repr,
        G.irrep(1),
        G.irrep(4),
        gs.quotient_repr(2),
        group.directsum([G.irrep(0), G.irrep(3)]),
    ]


def d4():
    gs = gspaces.flipRot2dOnR2(4)
    G = gs.fibergroup
    rot = G.subgroup((None, 4))[0]
    return gs, [
        gs.regular_repr,
        gs.trivial_repr,
        G.irrep(1, 0),
        G.irrep(1, 1),
        gs.quotient_repr((None, 2)),
        G.induced_representation((None, 4), rot.irrep(1)),
        G.irrep(1, 2),
    ]


def flip():
    gs = gspaces.flip2dOnR2()
    return gs, [gs.regular_repr, gs.trivial_repr, gs.fibergroup.irrep(1)]


def so2():
    gs = gspaces.rot2dOnR2(-1, maximum_frequency=4)
    G = gs.fibergroup
    return gs, [gs.trivial_repr, G.irrep(1), G.irrep(3), G.bl_regular_representation(3)]


def o2():
    gs = gspaces.flipRot2dOnR2(-1, maximum_frequency=4)
    G = gs.fibergroup
    return gs, [gs.trivial_repr, G.irrep(1, 0), G.irrep(1, 2), G.bl_regular_representation(2)]


def so3():
    gs = gspaces.rot3dOnR3(maximum_frequency=2)
    G = gs.fibergroup
    return gs, [
        gs.trivial_repr,
        G.irrep(1),
        G.irrep(2),
        G.bl_regular_representation(1),
        G.bl_quotient_representation(1, (False, -1)),
    ]


def o3():
    gs = gspaces.flipRot3dOnR3(maximum_frequency=2)
    G = gs.fibergroup
    return gs, [gs.trivial_repr, G.irrep(0, 1), G.irrep(1, 1), G.irrep(1, 2), G.bl_regular_representation(1)]


def octa():
    gs = gspaces.octaOnR3()
    G = gs.fibergroup
    return gs, [gs.trivial_repr, G.irrep(1), G.standard_representation, gs.regular_repr]


def cyl():
    gs = gspaces.fullCylindricalOnR3(4)
    G = gs.fibergroup
    return gs, [gs.trivial_repr, gs.regular_repr, G.irrep((1,), (1, 1), 0), G.irrep((1,), (0, 0), 0)]


def point_so3():
    gs = gspaces.no_base_space(group.so3_group(maximum_frequency=2))
    G = gs.fibergroup
    return gs, [gs.trivial_repr, G.irrep(1), G.irrep(2)]


def point_c8():
    gs = gspaces.no_base_space(group.cyclic_group(8))
    return gs, [gs.regular_repr, gs.trivial_repr]


GSPACES = {
    "C8": c8,
    "D4": d4,
    "flip": flip,
    "SO2": so2,
    "O2": o2,
    "SO3": so3,
    "O3": o3,
    "octa": octa,
    "cylinder": cyl,
    "R0-SO3": point_so3,
    "R0-C8": point_c8,
}


def field_type(name: str, copies: int = 2) -> nn.FieldType:
    gs, reps = GSPACES[name]()
    return nn.FieldType(gs, [r for r in reps for _ in range(copies)])


@pytest.mark.parametrize("name", sorted(GSPACES))
@pytest.mark.parametrize("centering", ["trivial", "all", "none"])
def test_fiber_and_grid_equivariance(name, centering):
    ft = field_type(name)
    for layer in (
        FieldGroupNorm(ft, 2, centering=centering),
        FieldGroupNorm(ft, group_by="representation", centering=centering),
        FieldLayerNorm(ft, centering=centering),
        FieldInstanceNorm(ft, centering=centering),
    ):
        with torch.no_grad():
            layer.norm.weight.uniform_(0.5, 1.5)
            layer.norm.bias.normal_()
        errors = layer.equivariance_errors()
        assert len(errors["fiber"]) >= 2
        for what, results in errors.items():
            worst = max((err for _, err, _ in results), default=0.0)
            assert worst < 1e-10, (what, worst)


def test_check_equivariance_checks_and_catches_a_broken_layer():
    ft = field_type("C8")
    layer = FieldGroupNorm(ft, 4)
    results = layer.check_equivariance()
    assert len(results) == 8 + 4  # every element of C8 on the fibers, the four 90-degree turns on the grid
    assert layer.training  # left as it was
    with torch.no_grad():
        layer.norm.bias.normal_()
    # the layout's operators with each entry scaled at random (the bias off the trivial vectors, the centering and the
    # variance weighted per channel), in the compiled and the dense form alike (whichever the kernels read), break
    # equivariance: check_equivariance must notice
    broken = copy.deepcopy(layer)
    gen = torch.Generator().manual_seed(0)
    for name, values in broken.norm.named_buffers():
        if name.startswith("index_") and values.is_floating_point():
            values.mul_(torch.rand(values.shape, generator=gen, dtype=values.dtype) + 0.5)
    with pytest.raises(AssertionError, match="equivariance fails"):
        broken.check_equivariance()


def test_grid_elements_are_the_exact_symmetries():
    assert len(grid_elements(gspaces.rot2dOnR2(8))) == 4
    assert len(grid_elements(gspaces.flipRot2dOnR2(4))) == 8
    assert len(grid_elements(gspaces.octaOnR3())) == 24
    assert len(sample_elements(gspaces.rot2dOnR2(8), samples=3)) == 3


@pytest.mark.parametrize("name", ["C8", "D4"])
def test_regular_fields_equal_torch_group_norm(name):
    gs, _reps = GSPACES[name]()
    ft = nn.FieldType(gs, 6 * [gs.regular_repr])
    layer = FieldGroupNorm(ft, 3).double()
    with torch.no_grad():
        layer.norm.weight.uniform_(0.5, 1.5)
        layer.norm.bias.normal_()
    x = random_input(ft, batch=2, size=5).tensor.requires_grad_()
    y = layer(nn.GeometricTensor(x, ft)).tensor
    size = gs.regular_repr.size
    w = layer.norm.weight.repeat_interleave(size)
    # the bias of a regular field's trivial component is spread evenly over its channels
    b = layer.norm.bias.repeat_interleave(size) / np.sqrt(size)
    ref = torch.nn.functional.group_norm(x, 3, w, b)
    torch.testing.assert_close(y, ref, atol=1e-12, rtol=1e-12)
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, layer.norm.weight, layer.norm.bias), dy)
    want = torch.autograd.grad(ref, (x, layer.norm.weight, layer.norm.bias), dy)
    for g, w in zip(got, want, strict=False):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-12)


def test_trivial_fields_equal_torch_group_norm_with_affine():
    gs = gspaces.rot2dOnR2(4)
    ft = nn.FieldType(gs, 8 * [gs.trivial_repr])
    layer = FieldGroupNorm(ft, 4).double()
    with torch.no_grad():
        layer.norm.weight.normal_()
        layer.norm.bias.normal_()
    ref = torch.nn.GroupNorm(4, 8).double()
    ref.load_state_dict({"weight": layer.norm.weight.detach(), "bias": layer.norm.bias.detach()})
    x = random_input(ft, size=6)
    torch.testing.assert_close(layer(x).tensor, ref(x.tensor), atol=1e-12, rtol=1e-12)


def test_layer_and_instance_norm_are_special_cases():
    ft = field_type("D4")
    x = random_input(ft)
    fields = len(ft.representations)
    torch.testing.assert_close(FieldGroupNorm(ft, 1)(x).tensor, FieldLayerNorm(ft)(x).tensor, atol=0, rtol=0)
    torch.testing.assert_close(FieldGroupNorm(ft, fields)(x).tensor, FieldInstanceNorm(ft)(x).tensor, atol=0, rtol=0)
    assert not torch.allclose(FieldLayerNorm(ft)(x).tensor, FieldInstanceNorm(ft)(x).tensor)


def test_batch_independence():
    ft = field_type("SO3")
    layer = FieldGroupNorm(ft, group_by="representation")
    x = random_input(ft, batch=4, dtype=torch.float32)
    y = layer(x).tensor
    other = x.tensor.clone()
    other[1:] = torch.randn_like(other[1:]) * 50 + 7
    assert torch.equal(layer(nn.GeometricTensor(other, ft)).tensor[0], y[0])


def test_sequential_with_convolutions_and_export():
    gs = gspaces.rot2dOnR2(8)
    t_in = nn.FieldType(gs, [gs.trivial_repr])
    hid = nn.FieldType(gs, 4 * [gs.regular_repr] + 2 * [gs.trivial_repr])
    model = nn.SequentialModule(nn.R2Conv(t_in, hid, 3, padding=1), FieldGroupNorm(hid, 2), nn.ReLU(hid))
    x = nn.GeometricTensor(torch.randn(2, 1, 11, 11), t_in)
    assert model.evaluate_output_shape(x.shape) == model(x).shape
    model.eval()
    plain = model.export()
    torch.testing.assert_close(plain(x.tensor), model(x).tensor)
    assert "escnn" not in repr(type(model[1].export()))


def test_inside_3d_network():
    gs = gspaces.rot3dOnR3(maximum_frequency=1)
    t_in = nn.FieldType(gs, [gs.trivial_repr])
    hid = nn.FieldType(gs, 2 * [gs.trivial_repr] + 2 * [gs.irrep(1)])
    model = nn.SequentialModule(nn.R3Conv(t_in, hid, 3, padding=1), FieldGroupNorm(hid, 2))
    y = model(nn.GeometricTensor(torch.randn(1, 1, 5, 5, 5), t_in))
    assert y.type == hid and y.shape == (1, 8, 5, 5, 5) and torch.isfinite(y.tensor).all()


def test_layer_in_relu_network_is_exactly_equivariant_on_the_grid():
    gs = gspaces.rot2dOnR2(4)
    ft = nn.FieldType(gs, 3 * [gs.regular_repr])
    model = nn.SequentialModule(FieldGroupNorm(ft, 3), nn.ReLU(ft), FieldLayerNorm(ft)).double()
    x = random_input(ft)
    errors = equivariance_errors(model, x, grid_elements(gs), fibers_only=False)
    assert len(errors) == 4 and max(e for _, e, _ in errors) < 1e-12


def test_dtypes_and_channels_last():
    ft = field_type("C8")
    layer = FieldGroupNorm(ft, 4)
    x = random_input(ft, dtype=torch.float32).tensor
    ref = layer(nn.GeometricTensor(x, ft)).tensor
    for dtype, tol in ((torch.float16, 2e-2), (torch.bfloat16, 1e-1)):
        y = layer(nn.GeometricTensor(x.to(dtype), ft)).tensor
        assert y.dtype == dtype
        torch.testing.assert_close(y.float(), ref, atol=tol, rtol=tol)
    y = layer(nn.GeometricTensor(x.to(memory_format=torch.channels_last), ft)).tensor
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, ref)


def test_parameters_and_initialisation():
    ft = field_type("C8")
    layer = FieldGroupNorm(ft, 4)
    fields = len(ft.representations)
    trivial = sum(ft.fibergroup.irrep(*k).is_trivial() for r in ft.representations for k in r.irreps)
    assert layer.weight.shape == (fields,) and torch.equal(layer.weight, torch.ones(fields))
    assert layer.bias.shape == (trivial,) and torch.equal(layer.bias, torch.zeros(trivial))
    assert FieldGroupNorm(ft, 4, affine=False).weight is None
    assert len(list(FieldGroupNorm(ft, 4, affine=False).parameters())) == 0


def test_non_orthogonal_representation_is_refused():
    G = group.cyclic_group(4)
    q = np.array([[1.0, 0.5], [0.0, 1.0]])
    rep = group.Representation(G, "skewed", [G.irrep(0).id, G.irrep(2).id], q)
    gs = gspaces.no_base_space(G)
    with pytest.raises(ValueError, match="not orthogonal"):
        FieldGroupNorm(nn.FieldType(gs, [rep]), 1)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda ft: FieldGroupNorm("not a field type", 1), TypeError, "FieldType"),
        (lambda ft: FieldGroupNorm(ft, 5), ValueError, "does not divide"),
        (lambda ft: FieldGroupNorm(ft, 2.0), ValueError, "num_groups must be a positive integer"),
        (lambda ft: FieldBatchNorm(ft, 1e-3), ValueError, "num_groups must be a positive integer.*0.001"),
        (lambda ft: FieldGroupNorm(ft, 3, group_by="field"), ValueError, "one group per field"),
        (lambda ft: FieldGroupNorm(ft, 2, centering="mean"), ValueError, "centering"),
        (lambda ft: FieldGroupNorm(ft, 2, group_by="channel"), ValueError, "group_by"),
        (lambda ft: FieldGroupNorm(ft, group_by=[0, 1]), ValueError, "group ids"),
        (lambda ft: FieldGroupNorm(ft, 2, eps=0), ValueError, "eps"),
        (lambda ft: FieldGroupNorm(ft, 2, eps=-1e-5), ValueError, "eps"),
        (lambda ft: FieldGroupNorm(ft, 3, group_by="representation"), ValueError, "leave num_groups"),
    ],
)
def test_construction_errors(make, error, match):
    with pytest.raises(error, match=match):
        make(field_type("C8"))


def test_input_errors():
    ft = field_type("C8")
    layer = FieldGroupNorm(ft, 4)
    with pytest.raises(TypeError, match="GeometricTensor"):
        layer(torch.randn(2, ft.size, 3, 3))
    other = nn.FieldType(ft.gspace, ft.size * [ft.gspace.trivial_repr])
    with pytest.raises(ValueError, match="field type"):
        layer(nn.GeometricTensor(torch.randn(2, ft.size, 3, 3), other))
    with pytest.raises(ValueError, match="expected a shape"):
        layer.evaluate_output_shape((2, ft.size + 1, 3, 3))


def test_import_does_not_pull_escnn_or_e3nn():
    import subprocess
    import sys

    code = (
        "import sys, eqnorm; eqnorm.FieldLayout, eqnorm.convert_sync_batchnorm; "
        "assert 'escnn' not in sys.modules and 'e3nn' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert eqnorm.FieldGroupNorm is FieldGroupNorm
