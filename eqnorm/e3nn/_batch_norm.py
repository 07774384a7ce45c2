"""e3nn module: ``IrrepsBatchNorm``, equivariant batch normalization of e3nn features over the batch and its nodes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..batch_norm import BatchFieldNorm
from ..layout import FieldLayout
from ._irreps import check_features, parse_irreps

__all__ = ["IrrepsBatchNorm"]


class IrrepsBatchNorm(torch.nn.Module):
    r"""Equivariant batch normalization of e3nn features ``x`` ``(..., dim)``: statistics over every leading index
    (batch, nodes, points), every irrep copy a field, only ``0e`` centered and biased.

    .. math::

        y_{pc} = \frac{w_{i(c)}}{\sqrt{\sigma^2_\gamma + \epsilon}}\,(x_{pc} - \mu_c) + b_c,

    with :math:`\sigma^2_\gamma` the mean square, over all positions and the group's channels, after centering; with
    one copy per group (the default) this is e3nn's ``BatchNorm(normalization="component")`` in training. Running
    averages follow torch (unbiased variance) and are used in eval mode; :func:`eqnorm.convert_sync_batchnorm`
    synchronises the statistics across processes.
    """

    def __init__(
        self,
        irreps: Any,
        num_groups: int | None = None,
        *,
        group_by: str | Sequence[int] = "field",
        centering: str = "trivial",
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any = None,
        layout: str = "mul_ir",
    ) -> None:
        super().__init__()
        self.irreps_in = self.irreps_out = parse_irreps(irreps)
        self.dim = int(self.irreps_in.dim)
        fields = FieldLayout.from_irreps(self.irreps_in, num_groups, group_by, centering, layout)
        self.norm = BatchFieldNorm(fields, eps, momentum, affine, track_running_stats, process_group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_features(x, self.dim)
        return self.norm(x.reshape(-1, self.dim)).reshape(x.shape)
