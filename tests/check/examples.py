"""Models built the way escnn's own examples build theirs, for eqnorm-check's tests: the wide ResNet of e2wrn
(D4, InnerBatchNorm, residual blocks), the C8 CNN of escnn's model notebook (a MaskModule at the input, antialiased
pooling, group pooling), a plain torch.nn.Module around an escnn trunk with a torch head, and an SE(3) CNN."""

import torch
from escnn import gspaces, nn


class WideBasic(nn.EquivariantModule):
    """e2wrn's residual block: BN -> ReLU -> conv -> BN -> ReLU -> conv, plus a 1x1 shortcut where the type changes."""

    def __init__(self, in_type: nn.FieldType, inner: nn.FieldType, out_type: nn.FieldType, stride: int = 1) -> None:
        super().__init__()
        self.in_type, self.out_type = in_type, out_type
        self.bn1 = nn.InnerBatchNorm(in_type)
        self.relu1 = nn.ReLU(in_type, inplace=True)
        self.conv1 = nn.R2Conv(in_type, inner, 3, padding=1, bias=False)
        self.bn2 = nn.InnerBatchNorm(inner)
        self.relu2 = nn.ReLU(inner, inplace=True)
        self.conv2 = nn.R2Conv(inner, out_type, 3, padding=1, stride=stride, bias=False)
        self.shortcut = None
        if stride != 1 or in_type != out_type:
            self.shortcut = nn.R2Conv(in_type, out_type, 1, stride=stride, bias=False)

    def forward(self, x: nn.GeometricTensor) -> nn.GeometricTensor:
        h = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(h))))
        return out + (x if self.shortcut is None else self.shortcut(h))

    def evaluate_output_shape(self, shape):
        return self.conv2.evaluate_output_shape(self.conv1.evaluate_output_shape(shape))


def e2wrn_trunk(width: int = 2, order: int = 4, stages: tuple[int, ...] = (1, 2), first: int | None = None):
    """A D<order> wide ResNet trunk in the structure of escnn's e2wrn example: a conv, then per stage two residual
    blocks of ``width * k`` regular fields (the first strided from the second stage on), a last norm and ReLU; seeded,
    with running statistics as after training. The default is small; :func:`e2wrn16_d8` is of a real trunk's size."""
    torch.manual_seed(0)
    gs = gspaces.flipRot2dOnR2(order)
    image = nn.FieldType(gs, 3 * [gs.trivial_repr])
    types = [nn.FieldType(gs, width * k * [gs.regular_repr]) for k in stages]
    current = types[0] if first is None else nn.FieldType(gs, first * [gs.regular_repr])
    layers = [nn.R2Conv(image, current, 3, padding=1, bias=False)]
    for i, stage in enumerate(types):
        layers += [WideBasic(current, stage, stage, 1 if i == 0 else 2), WideBasic(stage, stage, stage)]
        current = stage
    layers += [nn.InnerBatchNorm(current), nn.ReLU(current, inplace=True)]
    model = nn.SequentialModule(*layers)
    _settle_running_statistics(model, torch.randn(8, 3, 17, 17))
    return model


def e2wrn16_d8():
    """e2wrn's WRN-16-4 trunk on D8 (regular fields of 16 channels: 64, 128 and 256 channels per stage), 115k
    parameters: the size benchmarks/RESULTS.md times eqnorm-check on."""
    return e2wrn_trunk(width=4, order=8, stages=(1, 2, 4), first=1)


def _settle_running_statistics(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Running statistics as after training, so that eval mode is not the identity of fresh statistics."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(nn.GeometricTensor(x, model.in_type))
    model.eval()


def c8_notebook_cnn() -> tuple[nn.SequentialModule, torch.Tensor]:
    """The C8 CNN of escnn's model notebook, shortened: a MaskModule for 29x29 inputs, conv/InnerBatchNorm/ReLU
    blocks, antialiased pooling and group pooling; returned with an input of the size the mask needs."""
    torch.manual_seed(0)
    gs = gspaces.rot2dOnR2(8)
    image = nn.FieldType(gs, [gs.trivial_repr])
    hidden = nn.FieldType(gs, 4 * [gs.regular_repr])
    model = nn.SequentialModule(
        nn.MaskModule(image, 29, margin=1),
        nn.R2Conv(image, hidden, 7, padding=1, bias=False),
        nn.InnerBatchNorm(hidden),
        nn.ReLU(hidden, inplace=True),
        nn.PointwiseAvgPoolAntialiased(hidden, sigma=0.66, stride=2),
        nn.R2Conv(hidden, hidden, 5, padding=2, bias=False),
        nn.InnerBatchNorm(hidden),
        nn.ReLU(hidden, inplace=True),
        nn.GroupPooling(hidden),
    )
    x = torch.randn(4, 1, 29, 29)
    _settle_running_statistics(model, x)
    return model, nn.GeometricTensor(x, image)


class InvariantClassifier(torch.nn.Module):
    """A torch.nn.Module around an escnn trunk: plain tensors in, class scores out (invariant), as escnn's example
    classifiers are written."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk, _ = c8_notebook_cnn()
        self.input_type = self.trunk.in_type
        self.head = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ELU(), torch.nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.trunk(nn.GeometricTensor(x, self.input_type)).tensor
        return self.head(features.mean((2, 3)))


def se3_cnn() -> nn.SequentialModule:
    """An SE(3) steerable CNN as escnn's 3D examples build one: R3Conv, IIDBatchNorm3d, NormNonLinearity-free
    gated blocks kept to ELU on scalars and norm ReLU on vectors."""
    torch.manual_seed(0)
    gs = gspaces.rot3dOnR3()
    scalars = nn.FieldType(gs, [gs.trivial_repr])
    hidden = nn.FieldType(gs, 4 * [gs.trivial_repr] + 2 * [gs.irrep(1)])
    model = nn.SequentialModule(
        nn.R3Conv(scalars, hidden, 3, padding=1),
        nn.IIDBatchNorm3d(hidden),
        nn.NormNonLinearity(hidden, "n_relu"),
        nn.R3Conv(hidden, hidden, 3, padding=1),
    )
    _settle_running_statistics(model, torch.randn(4, 1, 9, 9, 9))
    return model


def octahedral_cnn() -> nn.SequentialModule:
    """An octahedral CNN as escnn's 3D examples build one: R3Conv to regular fields of the octahedral group (24
    channels each), InnerBatchNorm, ReLU, a second convolution, group pooling; every element is a grid symmetry."""
    torch.manual_seed(0)
    gs = gspaces.octaOnR3()
    scalars = nn.FieldType(gs, [gs.trivial_repr])
    hidden = nn.FieldType(gs, 2 * [gs.regular_repr])
    model = nn.SequentialModule(
        nn.R3Conv(scalars, hidden, 3, padding=1, bias=False),
        nn.InnerBatchNorm(hidden),
        nn.ReLU(hidden, inplace=True),
        nn.R3Conv(hidden, hidden, 3, padding=1, bias=False),
        nn.GroupPooling(hidden),
    )
    _settle_running_statistics(model, torch.randn(4, 1, 7, 7, 7))
    return model


def octahedral_converted():
    return _converted(octahedral_cnn())


def invariant_classifier():
    """The classifier as a whole, for eqnorm-check: its input's field type, invariant class scores out."""
    from eqnorm.check import WholeModel

    model = InvariantClassifier()
    return WholeModel(model, in_type=model.input_type, out_type="invariant", input=torch.randn(4, 1, 29, 29))


def e2wrn_with_splitting_group_norm():
    """The trunk with one norm replaced by torch's GroupNorm in groups of 2 channels, on D4's regular fields of 8: a
    turn by 90 degrees maps the channels {e, r} to {r, r^2}, across groups, which breaks equivariance in that layer
    only. (Groups of 4 would hold the rotations and the reflections apart, which D4 permutes as whole groups: those
    are equivariant.)"""
    from factories import Wrapped

    model = e2wrn_trunk()
    block = model[2]  # the second block of the first stage
    block.bn2 = Wrapped(block.bn2.in_type, torch.nn.GroupNorm(block.bn2.in_type.size // 2, block.bn2.in_type.size))
    return model


def _converted(model, **options):
    from eqnorm import convert_norms

    return convert_norms(model, **options)[0]


def e2wrn_converted():
    return _converted(e2wrn_trunk())


def c8_notebook_converted():
    model, x = c8_notebook_cnn()
    return _converted(model, norm="batch"), x


def se3_converted():
    return _converted(se3_cnn(), norm="layer")


class GraphEnergy(torch.nn.Module):
    """An e3nn model on graphs: Linear, a per-graph eqnorm group norm, a tensor product of the features with
    themselves to scalars (so that the vectors count), summed per graph to one energy per graph; plain tensors in
    (node features and the graph index), plain tensors out."""

    def __init__(self) -> None:
        super().__init__()
        from e3nn import o3

        from eqnorm.e3nn import IrrepsGroupNorm

        torch.manual_seed(0)
        self.first = o3.Linear("4x0e+2x1o", "4x0e+4x1o")
        self.norm = IrrepsGroupNorm("4x0e+4x1o", group_by="irrep", over="graph")
        self.last = o3.FullyConnectedTensorProduct("4x0e+4x1o", "4x0e+4x1o", "2x0e")

    def forward(self, x: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        num_graphs = int(batch.max()) + 1
        h = self.norm(self.first(x), batch=batch, num_graphs=num_graphs)
        h = self.last(h, h)
        return torch.zeros(num_graphs, h.shape[1], dtype=h.dtype).index_add_(0, batch, h)


def graph_energy(broken: bool = False):
    """GraphEnergy as a whole: node features of 4x0e+2x1o in, invariant energies per graph out, three graphs."""
    from eqnorm.check import WholeModel

    model = GraphEnergy()
    if broken:
        model.first = _VectorShift(model.first)
    batch = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    return WholeModel(
        model, irreps_in="4x0e+2x1o", irreps_out="invariant", input=torch.randn(9, 10), inputs={"batch": batch}
    )


class _VectorShift(torch.nn.Module):
    """A layer followed by a constant shift of its first vector: breaks rotation equivariance."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.irreps_in, self.irreps_out = inner.irreps_in, inner.irreps_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        return torch.cat([y[:, :4], y[:, 4:7] + 1.0, y[:, 7:]], dim=1)


def graph_energy_broken():
    return graph_energy(broken=True)
