"""A small C8 steerable CNN for the rotated digits, with the normalization layer as a flag.

    image (1 trivial field) -> [R2Conv (5x5, then 3x3) -> norm -> ReLU -> antialiased avg-pool /2] x 2
                            -> [R2Conv 3x3 -> norm -> ReLU] x ``extra_blocks``
                            -> R2Conv 3x3 -> GroupPooling (invariant) -> spatial mean -> MLP -> 10 classes

Hidden features are regular C8 fields (8 channels each, one per rotation). The convolutions followed by a
normalization have no bias: the normalization carries it (on the trivial irreps only).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from escnn import gspaces, nn

import eqnorm

NORMS = ("batch", "group", "layer", "instance", "none")
GSPACE = gspaces.rot2dOnR2(8)


def regular(fields: int) -> nn.FieldType:
    return nn.FieldType(GSPACE, fields * [GSPACE.regular_repr])


def norm_layer(kind: str, field_type: nn.FieldType, num_groups: int = 4) -> nn.EquivariantModule:
    """The normalization of ``field_type`` named by ``kind`` (one of ``NORMS``).

    ``"group"`` uses ``min(num_groups, fields)`` contiguous groups; ``"batch"`` is eqnorm's ``FieldBatchNorm`` (one
    field per group, running statistics in eval mode); ``"none"`` is the identity.
    """
    fields = len(field_type)
    if kind == "batch":
        return eqnorm.FieldBatchNorm(field_type)
    if kind == "group":
        return eqnorm.FieldGroupNorm(field_type, min(num_groups, fields))
    if kind == "layer":
        return eqnorm.FieldLayerNorm(field_type)
    if kind == "instance":
        return eqnorm.FieldInstanceNorm(field_type)
    if kind == "none":
        return nn.IdentityModule(field_type)
    raise ValueError(f"unknown normalization {kind!r}; expected one of {NORMS}")


class SteerableCNN(torch.nn.Module):
    """C8-invariant digit classifier; ``norm`` picks the normalization after every convolution."""

    def __init__(self, norm: str, widths: Sequence[int] = (8, 16), extra_blocks: int = 1, num_groups: int = 4) -> None:
        super().__init__()
        field_type = nn.FieldType(GSPACE, [GSPACE.trivial_repr])
        self.input_type = field_type
        layers: list[nn.EquivariantModule] = []
        for i, width in enumerate(widths):
            out, k = regular(width), 5 if i == 0 else 3
            layers += [nn.R2Conv(field_type, out, k, padding=k // 2, bias=False), norm_layer(norm, out, num_groups)]
            layers += [nn.ReLU(out, inplace=True), nn.PointwiseAvgPoolAntialiased(out, sigma=0.66, stride=2)]
            field_type = out
        for _ in range(extra_blocks):
            layers += [nn.R2Conv(field_type, field_type, 3, padding=1, bias=False)]
            layers += [norm_layer(norm, field_type, num_groups), nn.ReLU(field_type, inplace=True)]
        # The last conv has no normalization after it: per-sample statistics followed by a global average would
        # leave the classifier only the shape of each group's distribution, not how strongly a pattern is present.
        layers += [nn.R2Conv(field_type, field_type, 3, padding=1)]
        self.features = nn.SequentialModule(*layers)
        self.pool = nn.GroupPooling(field_type)
        self.head = torch.nn.Sequential(
            torch.nn.Linear(len(field_type), 64), torch.nn.ReLU(inplace=True), torch.nn.Linear(64, 10)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.features(nn.GeometricTensor(images, self.input_type))).tensor
        return self.head(features.mean(dim=(2, 3)))
