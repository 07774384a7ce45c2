"""convert_norms: every escnn and e3nn batch norm becomes the eqnorm layer over the same fields, with what it learnt."""

import copy

import pytest
import torch
from e3nn import o3
from e3nn.nn import BatchNorm
from escnn import gspaces, nn
from escnn.group import directsum

import eqnorm
from eqnorm import FieldBatchNorm, FieldGroupNorm, FieldInstanceNorm, FieldLayerNorm, convert_norms
from eqnorm.e3nn import IrrepsBatchNorm, IrrepsGroupNorm, IrrepsLayerNorm
from eqnorm.escnn import equivariance_errors, grid_elements

D4 = gspaces.flipRot2dOnR2(4)
C4 = gspaces.rot2dOnR2(4)
SO3 = gspaces.rot3dOnR3(maximum_frequency=2)


def mixed_type():
    """Regular, quotient and trivial fields of D4, not grouped by kind (so escnn's per-kind indexing is exercised)."""
    q = D4.quotient_repr((None, 4))
    return nn.FieldType(D4, [D4.regular_repr, q, D4.trivial_repr, D4.regular_repr, q, D4.trivial_repr])


def irreps_type():
    """Fields made of several D4 irreps in their own basis: escnn's GNormBatchNorm fails on any other change of
    basis (its output view needs a contiguous tensor)."""
    g = D4.fibergroup
    mixed = directsum([g.trivial_representation, g.irrep(1, 1), g.irrep(1, 0)], name="mixed")
    return nn.FieldType(D4, [mixed, mixed, D4.irrep(1, 1), D4.trivial_repr])


def induced_type():
    gs = gspaces.flipRot2dOnR2(-1, maximum_frequency=3)
    so2 = gs.fibergroup.subgroup((None, -1))[0]
    rep = gs.fibergroup.induced_representation((None, -1), so2.irrep(1))
    return nn.FieldType(gs, [rep] * 3)


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Random affine parameters (weights positive) and running statistics from a few training batches with a mean."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.named_parameters():
            t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "weight" in name else torch.randn(t.shape, generator=g))
        mode = module.training
        module.train()
        for _ in range(3):
            if hasattr(module, "in_type"):
                ft = module.in_type
                x = torch.randn(4, ft.size, *([4] * ft.gspace.dimensionality), generator=g) * 2 + 1
                module(nn.GeometricTensor(x, ft))
            else:
                module(torch.randn(4, 3, module.irreps.dim, generator=g) * 2 + 1)
        module.train(mode)


ESCNN_SOURCES = {
    "InnerBatchNorm": (lambda: nn.InnerBatchNorm(mixed_type()), 2),
    "IIDBatchNorm2d": (lambda: nn.IIDBatchNorm2d(mixed_type()), 2),
    "GNormBatchNorm": (lambda: nn.GNormBatchNorm(irreps_type()), 2),
    "NormBatchNorm": (lambda: nn.NormBatchNorm(nn.FieldType(C4, [C4.irrep(1), C4.irrep(2), C4.irrep(1)])), 2),
    "InducedNormBatchNorm": (lambda: nn.InducedNormBatchNorm(induced_type()), 2),
    "IIDBatchNorm3d": (lambda: nn.IIDBatchNorm3d(nn.FieldType(SO3, [SO3.irrep(1), SO3.trivial_repr, SO3.irrep(2)])), 3),
}


def equal_gnorm_weights(old: nn.GNormBatchNorm) -> None:
    """One weight and one running variance per field, the parametrisation eqnorm holds."""
    with torch.no_grad():
        for name, t in old.named_parameters():
            if name.endswith("_weight"):
                t.copy_(t[:, :1].expand_as(t))
        for name, t in old.named_buffers():
            if name.endswith("_running_var"):
                t.copy_(t[:, :1].expand_as(t))


@pytest.mark.parametrize("kind", list(ESCNN_SOURCES))
def test_escnn_batch_norm_to_eqnorm_batch_norm_computes_the_same_eval_function(kind):
    make, dims = ESCNN_SOURCES[kind]
    old = make()
    randomize(old)
    if kind == "GNormBatchNorm":
        equal_gnorm_weights(old)
    old.eval()
    x = nn.GeometricTensor(torch.randn(3, old.in_type.size, *([5] * dims)), old.in_type)
    expected = old(x).tensor
    new, done = convert_norms(old, "batch")
    assert isinstance(new, FieldBatchNorm) and not new.training
    assert [r.old for r in done] == [kind] and done[0].name == ""
    assert "weight" in done[0].carried and "running_var" in done[0].carried
    group = old.in_type.fibergroup
    if any(group.irrep(*i).is_trivial() for r in old.in_type.representations for i in r.irreps):
        assert {"bias", "running_cen"} <= set(done[0].carried)
    torch.testing.assert_close(new(x).tensor, expected, atol=1e-5, rtol=1e-5)


def test_inner_batch_norm_in_training_gives_the_same_output_and_input_gradient():
    old = nn.InnerBatchNorm(mixed_type())
    randomize(old)
    new, _ = convert_norms(copy.deepcopy(old).train(), "batch")
    x = torch.randn(4, old.in_type.size, 6, 6, requires_grad=True)
    cotangent = torch.randn(4, old.in_type.size, 6, 6)
    grads = []
    for layer in (old, new):
        (y,) = [layer(nn.GeometricTensor(x, old.in_type)).tensor]
        grads.append(torch.autograd.grad(y, x, cotangent)[0])
        if layer is old:
            expected = y
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    # both differentiate through the batch statistics
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)


def test_gnorm_weights_that_differ_within_a_field_are_reported_not_carried():
    old = nn.GNormBatchNorm(irreps_type())
    randomize(old)
    new, done = convert_norms(old, "batch", approximate_running_var=True)
    assert "weight" not in done[0].carried
    assert any("weight not carried" in note for note in done[0].notes)
    assert any("dimension-weighted mean" in note for note in done[0].notes)
    assert torch.equal(new.weight, torch.ones_like(new.weight))


def test_gnorm_running_variances_per_irrep_are_not_averaged_silently():
    """One running variance per irrep cannot become one per field without changing the eval function."""
    old = nn.GNormBatchNorm(irreps_type())
    randomize(old)
    with pytest.raises(ValueError, match=r"different running variance per irrep.*approximate_running_var=True"):
        convert_norms(old, "batch")
    _, done = convert_norms(old, "group")  # nothing running is carried, and no note says it is
    assert not any("running variance" in note for note in done[0].notes)


@pytest.mark.parametrize("normalization", ["component", "norm"])
def test_e3nn_batch_norm_converts_exactly_in_training_and_in_eval(normalization):
    irreps = o3.Irreps("3x0e+2x1o+1x2e+2x0e")
    old = BatchNorm(irreps, normalization=normalization)
    randomize(old)
    x = torch.randn(7, 5, irreps.dim)
    train_expected = old(x)
    old.eval()
    eval_expected = old(x)
    new, done = convert_norms(torch.nn.Sequential(old), "batch")
    layer = new[0]
    assert isinstance(layer, IrrepsBatchNorm) and layer.normalization == normalization
    assert set(done[0].carried) == {"weight", "bias", "running_cen", "running_var"}
    torch.testing.assert_close(layer.running_mean, old.running_mean)
    torch.testing.assert_close(layer(x), eval_expected, atol=1e-5, rtol=1e-5)
    layer.train()
    # e3nn does not center 0e in the mean square it reports as running_var, but normalizes by the same batch statistics
    torch.testing.assert_close(layer(x), train_expected, atol=1e-5, rtol=1e-5)


def test_e3nn_without_bias_or_with_max_reduce():
    old = BatchNorm("2x0e+1x1o", include_bias=False, reduce="max")
    new, done = convert_norms(old, "group")
    assert isinstance(new, IrrepsGroupNorm) and new.bias is None and new.weight is not None
    assert any("reduce='max'" in note for note in done[0].notes)


@pytest.mark.parametrize(
    ("norm", "escnn_cls", "e3nn_cls"),
    [
        ("group", FieldGroupNorm, IrrepsGroupNorm),
        ("layer", FieldLayerNorm, IrrepsLayerNorm),
        ("instance", FieldInstanceNorm, IrrepsGroupNorm),
        ("batch", FieldBatchNorm, IrrepsBatchNorm),
    ],
)
def test_every_norm_kind_and_options_reach_the_new_layers(norm, escnn_cls, e3nn_cls):
    ft = nn.FieldType(C4, 8 * [C4.regular_repr])
    model = torch.nn.ModuleDict({"a": nn.InnerBatchNorm(ft, eps=1e-3), "b": BatchNorm("4x0e+4x1o")})
    _, done = convert_norms(model, norm, centering="none")
    assert type(model["a"]) is escnn_cls and type(model["b"]) is e3nn_cls
    assert model["a"].eps == 1e-3 and model["a"].layout.centering == "none"
    assert [r.name for r in done] == ["a", "b"]
    if norm == "instance":
        assert model["a"].num_groups == 8 and model["b"].num_groups == 8
    if norm == "group":
        assert model["a"].num_groups == 2  # 32 channels: 2 groups of 4 regular fields (16 channels)


def test_bad_norm_or_contradicting_groups_are_refused():
    with pytest.raises(ValueError, match="norm must be one of"):
        convert_norms(torch.nn.Linear(2, 2), "weight")
    with pytest.raises(ValueError, match="leave num_groups as None"):
        convert_norms(torch.nn.Linear(2, 2), "layer", num_groups=2)


class WideBasic(nn.EquivariantModule):
    """A pre-activation wide-ResNet block, as in escnn's e2wrn example: bn, relu, conv, bn, relu, conv, shortcut."""

    def __init__(self, in_type: nn.FieldType, out_type: nn.FieldType, stride: int = 1) -> None:
        super().__init__()
        self.in_type, self.out_type = in_type, out_type
        self.bn1 = nn.InnerBatchNorm(in_type)
        self.relu1 = nn.ReLU(in_type)
        self.conv1 = nn.R2Conv(in_type, out_type, 3, padding=1)
        self.bn2 = nn.InnerBatchNorm(out_type)
        self.relu2 = nn.ReLU(out_type)
        self.conv2 = nn.R2Conv(out_type, out_type, 3, padding=1, stride=stride)
        self.shortcut = nn.R2Conv(in_type, out_type, 1, stride=stride) if stride != 1 or in_type != out_type else None

    def forward(self, x: nn.GeometricTensor) -> nn.GeometricTensor:
        y = self.conv1(self.relu1(self.bn1(x)))
        y = self.conv2(self.relu2(self.bn2(y)))
        return y + (x if self.shortcut is None else self.shortcut(x))

    def evaluate_output_shape(self, input_shape):
        return self.conv2.evaluate_output_shape(self.conv1.evaluate_output_shape(input_shape))


def wide_resnet() -> nn.SequentialModule:
    trivial = nn.FieldType(D4, [D4.trivial_repr])
    a, b = nn.FieldType(D4, 2 * [D4.regular_repr]), nn.FieldType(D4, 4 * [D4.regular_repr])
    iid = nn.FieldType(D4, 4 * [D4.regular_repr] + 2 * [D4.trivial_repr])
    return nn.SequentialModule(
        nn.R2Conv(trivial, a, 3, padding=1),
        nn.SequentialModule(WideBasic(a, a), WideBasic(a, b)),
        nn.R2Conv(b, iid, 1),
        nn.IIDBatchNorm2d(iid),
        nn.ReLU(iid),
        nn.GroupPooling(iid),
    )


def test_wide_resnet_converts_stays_exactly_equivariant_on_the_grid_and_trains():
    torch.manual_seed(0)
    model = wide_resnet()
    model, done = convert_norms(model, "group")
    assert [r.name for r in done] == ["1.0.bn1", "1.0.bn2", "1.1.bn1", "1.1.bn2", "3"]
    assert not any(isinstance(m, (nn.InnerBatchNorm, nn.IIDBatchNorm2d)) for m in model.modules())
    assert isinstance(model[1][0].bn1, FieldGroupNorm) and isinstance(model[3], FieldGroupNorm)
    x = nn.GeometricTensor(torch.randn(2, 1, 9, 9), model[0].in_type)
    errors = equivariance_errors(model.eval(), x, grid_elements(D4), fibers_only=False)
    scale = model(x).tensor.abs().max().item()
    assert len(errors) == 8  # every element of D4 is a grid symmetry
    assert max(err for _, err, _ in errors) < 1e-5 * scale

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    norm_weight = model[1][0].bn1.weight.detach().clone()
    loss = model(x).tensor.square().mean()
    loss.backward()
    assert model[1][0].bn1.weight.grad is not None and torch.isfinite(model[1][0].bn1.weight.grad).all()
    optimizer.step()
    assert not torch.equal(model[1][0].bn1.weight, norm_weight)
    assert torch.isfinite(model(x).tensor).all()


def test_old_checkpoint_loads_into_the_original_model_then_converts():
    source = wide_resnet()
    for m in source.modules():
        if isinstance(m, (nn.InnerBatchNorm, nn.IIDBatchNorm2d)):
            randomize(m)
    checkpoint = source.state_dict()
    x = nn.GeometricTensor(torch.randn(2, 1, 9, 9), source[0].in_type)
    expected = source.eval()(x).tensor

    model = wide_resnet()
    model.load_state_dict(checkpoint)
    model.eval()
    model, done = convert_norms(model, "batch")
    assert all("running_var" in r.carried for r in done)
    torch.testing.assert_close(model(x).tensor, expected, atol=1e-4, rtol=1e-4)


def test_e3nn_model_converts_stays_equivariant_and_trains():
    torch.manual_seed(0)
    irreps = o3.Irreps("4x0e+2x1o+1x2e")
    model = torch.nn.Sequential(
        o3.Linear("2x0e+1x1o", irreps), torch.nn.Sequential(BatchNorm(irreps)), o3.Linear(irreps, "1x0e+1x1o")
    )
    model, done = convert_norms(model, "layer")
    assert [r.name for r in done] == ["1.0"] and isinstance(model[1][0], IrrepsLayerNorm)
    x = torch.randn(6, 5)
    rotation = o3.rand_matrix()
    d_in, d_out = o3.Irreps("2x0e+1x1o").D_from_matrix(rotation), o3.Irreps("1x0e+1x1o").D_from_matrix(rotation)
    torch.testing.assert_close(model(x @ d_in.T), model(x) @ d_out.T, atol=1e-5, rtol=1e-4)
    model(x).square().sum().backward()
    assert model[1][0].weight.grad is not None and model[1][0].weight.grad.abs().sum() > 0


def test_converted_layers_keep_device_dtype_and_mode():
    old = nn.InnerBatchNorm(nn.FieldType(C4, 2 * [C4.regular_repr])).double().eval()
    new, _ = convert_norms(old, "group")
    assert new.weight.dtype == torch.float64 and not new.training


def test_top_level_export():
    assert eqnorm.convert_norms is convert_norms


@pytest.mark.parametrize(
    ("make", "through_statistics"),
    [
        (lambda: nn.InnerBatchNorm(mixed_type()), True),
        (lambda: nn.IIDBatchNorm2d(mixed_type()), False),
        (lambda: nn.GNormBatchNorm(irreps_type()), False),
        (lambda: nn.NormBatchNorm(nn.FieldType(C4, [C4.irrep(1), C4.irrep(1)])), False),
    ],
)
def test_which_escnn_batch_norms_differentiate_through_their_statistics(make, through_statistics):
    """What the README says of escnn's batch norms. Through the statistics, the sum of a field's outputs over the batch
    is a constant (the bias times the count), so its gradient vanishes; with the statistics detached it is the
    positive scale ``w / sqrt(var + eps)``."""
    layer = make().train()
    x = torch.randn(4, layer.in_type.size, 5, 5, requires_grad=True)
    y = layer(nn.GeometricTensor(x, layer.in_type)).tensor
    (grad,) = torch.autograd.grad(y.sum(), x)
    if through_statistics:
        assert grad.abs().max() < 1e-4
    else:
        assert grad.min() > 0.1


def _two_blocks(norm: torch.nn.Module, other: torch.nn.Module | None = None) -> nn.SequentialModule:
    ft = norm.in_type
    return nn.SequentialModule(nn.R2Conv(ft, ft, 3, padding=1), norm, nn.R2Conv(ft, ft, 3, padding=1), other or norm)


def test_a_layer_used_at_two_places_gets_one_replacement():
    shared = nn.InnerBatchNorm(mixed_type())
    model, replacements = convert_norms(_two_blocks(shared), "group", 1)
    assert len(replacements) == 1 and model[1] is model[3] and isinstance(model[1], FieldGroupNorm)
    assert any("one replacement serves every place" in n for n in replacements[0].notes)


def test_a_failing_layer_leaves_the_model_untouched_and_is_named():
    ft = mixed_type()
    bigger = nn.FieldType(ft.gspace, list(ft.representations) + list(ft.representations)[:3])  # 9 fields
    model = nn.SequentialModule(nn.InnerBatchNorm(ft), nn.R2Conv(ft, bigger, 3), nn.InnerBatchNorm(bigger))
    before = [type(m) for m in model]
    with pytest.raises(ValueError, match=r"layer '2' \(InnerBatchNorm\): num_groups=6 does not divide the 9"):
        convert_norms(model, "group", 6)  # the first layer's 6 fields it divides
    assert [type(m) for m in model] == before


def test_a_model_inside_distributed_data_parallel_is_refused():
    class Wrapped(torch.nn.Module):  # stands for DistributedDataParallel, which needs a process group to build
        pass

    Wrapped.__name__ = "DistributedDataParallel"
    wrapper = Wrapped()
    wrapper.module = nn.SequentialModule(nn.InnerBatchNorm(mixed_type()))
    with pytest.raises(ValueError, match="convert the plain model first, then wrap it"):
        convert_norms(wrapper)


def test_a_parametrized_layer_is_refused_by_name():
    class Scale(torch.nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return 2 * w

    norm = BatchNorm(o3.Irreps("2x0e+1x1o"))
    torch.nn.utils.parametrize.register_parametrization(norm, "weight", Scale())
    model = torch.nn.Sequential(norm)
    with pytest.raises(ValueError, match=r"layer '0' \(ParametrizedBatchNorm\) is parametrized"):
        convert_norms(model)


def test_hooks_training_mode_and_frozen_parameters_carry_over():
    old = nn.InnerBatchNorm(mixed_type()).eval()
    seen = []
    old.register_forward_hook(lambda module, inputs, output: seen.append(type(module).__name__))
    for p in old.parameters():
        p.requires_grad_(False)
    new, (replacement,) = convert_norms(old)
    x = nn.GeometricTensor(torch.randn(2, old.in_type.size, 4, 4), old.in_type)
    new(x)
    assert seen == ["FieldGroupNorm"] and not new.training
    assert not any(p.requires_grad for p in new.parameters())
    assert any("frozen" in n for n in replacement.notes)


def test_plain_torch_batch_norms_left_in_the_model_are_reported():
    model = torch.nn.Sequential(nn.InnerBatchNorm(mixed_type()), torch.nn.BatchNorm1d(4))
    with pytest.warns(UserWarning, match="leaves plain torch batch norms at 1"):
        convert_norms(model)


class InvariantHead(torch.nn.Module):
    """An escnn trunk ending in invariant fields, then a torch head with a BatchNorm1d, as escnn's example CNNs."""

    def __init__(self) -> None:
        super().__init__()
        g = gspaces.rot2dOnR2(4)
        regular = nn.FieldType(g, 4 * [g.regular_repr])
        self.input_type = nn.FieldType(g, [g.trivial_repr])
        self.trunk = nn.SequentialModule(
            nn.R2Conv(self.input_type, regular, 3),
            nn.InnerBatchNorm(regular),
            nn.ReLU(regular),
            nn.GroupPooling(regular),
        )
        self.head = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.ELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.trunk(nn.GeometricTensor(x, self.input_type)).tensor
        return self.head(features.mean((2, 3)))


def test_torch_batch_norms_on_invariant_features_become_group_norms_on_request():
    model = InvariantHead()
    with torch.no_grad():
        model.head[1].weight.uniform_(0.5, 2)
        model.head[1].bias.normal_()
    weight, bias = model.head[1].weight.clone(), model.head[1].bias.clone()
    _, replacements = convert_norms(model, torch_batch_norms=True, num_groups=2)
    # InnerBatchNorm's own BatchNorm3d goes with it, not on its own
    assert [(r.name, r.old) for r in replacements] == [("trunk.1", "InnerBatchNorm"), ("head.1", "BatchNorm1d")]
    head = model.head[1]
    assert isinstance(head, torch.nn.GroupNorm) and (head.num_groups, head.num_channels) == (2, 6)
    assert torch.equal(head.weight, weight) and torch.equal(head.bias, bias)
    assert replacements[1].carried == ["weight", "bias"]
    model.train()
    y = model(torch.randn(1, 1, 9, 9))  # batch size 1 in training: a batch norm would raise
    features = model.trunk(nn.GeometricTensor(torch.randn(1, 1, 9, 9), model.input_type)).tensor.mean((2, 3))
    want = torch.nn.functional.elu(torch.nn.functional.group_norm(model.head[0](features), 2, weight, bias))
    torch.testing.assert_close(model.head(features), want)
    assert y.shape == (1, 6)


def test_torch_batch_norm_conversion_refuses_what_it_cannot_do():
    model = InvariantHead()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"layer 'head.1' \(BatchNorm1d\): num_groups=4 does not divide its 6"):
        convert_norms(model, torch_batch_norms=True, num_groups=4)
    assert isinstance(model.head[1], torch.nn.BatchNorm1d) and isinstance(model.trunk[1], nn.InnerBatchNorm)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="needs a per-sample norm"):
        convert_norms(model, "batch", torch_batch_norms=True)
