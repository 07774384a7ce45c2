"""Modules for eqnorm-check's tests: escnn layers that are equivariant, and layers broken in the usual ways."""

import torch
from escnn import gspaces, nn


def _regular_type(fields=4):
    gs = gspaces.rot2dOnR2(8)
    return nn.FieldType(gs, fields * [gs.regular_repr])


class Wrapped(nn.EquivariantModule):
    """A plain torch module applied to the tensor of a GeometricTensor, claiming to be equivariant."""

    def __init__(self, in_type, inner):
        super().__init__()
        self.in_type = self.out_type = in_type
        self.inner = inner

    def forward(self, x):
        return nn.GeometricTensor(self.inner(x.tensor), self.out_type)

    def evaluate_output_shape(self, shape):
        return shape


class AddBias(torch.nn.Module):
    def __init__(self, bias):
        super().__init__()
        self.bias = torch.nn.Parameter(bias)

    def forward(self, x):
        return x + self.bias.view(1, -1, *([1] * (x.dim() - 2)))


def r2conv():
    ft = _regular_type(2)
    gs = ft.gspace
    return nn.R2Conv(nn.FieldType(gs, [gs.trivial_repr]), ft, kernel_size=3, padding=1)


def relu():
    return nn.ReLU(_regular_type())


def channel_batchnorm():
    """Per-channel batch norm on regular fields: in eval, channels of one field get different statistics."""
    ft = _regular_type()
    bn = torch.nn.BatchNorm2d(ft.size)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return Wrapped(ft, bn)


def splitting_group_norm():
    """torch GroupNorm with groups of 4 channels on fields of 8: the groups split fields."""
    ft = _regular_type()
    return Wrapped(ft, torch.nn.GroupNorm(ft.size // 4, ft.size))


def vector_bias():
    """A bias on a vector (irrep 1) field."""
    gs = gspaces.rot2dOnR2(8)
    ft = nn.FieldType(gs, [gs.trivial_repr, gs.irrep(1)])
    return Wrapped(ft, AddBias(torch.tensor([0.5, 1.0, -1.0])))


def raises():
    raise RuntimeError("no model today")


def not_a_module():
    return 42


def e3nn_linear():
    from e3nn import o3

    torch.manual_seed(0)
    return o3.Linear("2x0e+1x1o", "1x0e+2x1o")


class _E3nnShift(torch.nn.Module):
    """Adds a constant to the first vector component: not equivariant."""

    irreps_in = irreps_out = "1x0e+1x1o"

    def forward(self, x):
        return x + torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=x.dtype)


def e3nn_shift():
    return _E3nnShift()


def conv_with_splitting_group_norm():
    """A C8 conv model whose torch GroupNorm(8, 32) splits each of 4 regular fields in half."""
    torch.manual_seed(0)
    ft = _regular_type()
    gs = ft.gspace
    return nn.SequentialModule(
        nn.R2Conv(nn.FieldType(gs, [gs.trivial_repr]), ft, kernel_size=5, padding=2),
        Wrapped(ft, torch.nn.GroupNorm(8, ft.size)),
        nn.ReLU(ft),
        nn.R2Conv(ft, ft, kernel_size=3, padding=1),
    )


class E3nnModel(torch.nn.Module):
    """Linear -> a bias on the 1o block -> Linear: the middle layer breaks equivariance."""

    irreps_in, irreps_out = "2x0e+1x1o", "1x0e+1x1o"

    def __init__(self):
        super().__init__()
        from e3nn import o3

        torch.manual_seed(0)
        self.first = o3.Linear(self.irreps_in, "1x0e+1x1o")
        self.shift = _E3nnShift()
        self.last = o3.Linear("1x0e+1x1o", self.irreps_out)

    def forward(self, x):
        return self.last(self.shift(self.first(x)))


def e3nn_model_with_vector_bias():
    return E3nnModel()


class _Raises(nn.EquivariantModule):
    def __init__(self):
        super().__init__()
        self.in_type = self.out_type = _regular_type(1)

    def forward(self, x):
        raise RuntimeError("forward is broken")

    def evaluate_output_shape(self, shape):
        return shape


def forward_raises():
    return _Raises()


def wrong_input_size():
    return relu(), torch.randn(2, 5, 8, 8)


def returns_nan():
    ft = _regular_type(1)
    return Wrapped(ft, lambda t: t * float("nan"))


def _graphs():
    batch = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    return torch.randn(batch.numel(), 7, generator=torch.Generator().manual_seed(0)) + 1, batch


def per_graph_group_norm():
    """eqnorm's per-graph group norm, with the batch vector as an extra input."""
    from eqnorm.e3nn import IrrepsGroupNorm

    x, batch = _graphs()
    return IrrepsGroupNorm("4x0e+1x1o", 5, over="graph"), x, {"batch": batch, "num_graphs": 3}


class _WholeBatchNorm(torch.nn.Module):
    """Scales every node by the norm over the whole batch: equivariant, but the graphs depend on each other."""

    irreps_in = irreps_out = "4x0e+1x1o"

    def forward(self, x, batch=None):
        return x / x.norm()


def whole_batch_norm():
    x, batch = _graphs()
    return _WholeBatchNorm(), x, {"batch": batch}
