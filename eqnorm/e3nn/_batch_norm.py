"""e3nn module: ``IrrepsBatchNorm``, equivariant batch normalization of e3nn features over the batch and its nodes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from e3nn.util.jit import compile_mode

from ..batch_norm import BatchNormAttributes, PlainBatchNorm, batch_grouping
from ..layout import FieldLayout
from ._irreps import IrrepsModule, check_features, parse_irreps

__all__ = ["IrrepsBatchNorm"]


@compile_mode("script")  # e3nn.util.jit.compile scripts it (deployment, in eval mode)
class IrrepsBatchNorm(BatchNormAttributes, IrrepsModule):
    r"""Equivariant batch normalization of e3nn features ``x`` ``(..., dim)``: statistics over every leading index
    (batch, nodes, points), every irrep copy a field, only ``0e`` centered and biased.

    .. math::

        y_{pc} = \frac{w_{i(c)}}{\sqrt{\sigma^2_\gamma + \epsilon}}\,(x_{pc} - \mu_c) + b_c,

    with :math:`\sigma^2_\gamma` the mean square, over all positions and the group's channels, after centering; with
    one copy per group (the default) this is e3nn's ``BatchNorm`` in training, with the same ``normalization``
    (``"component"``: :math:`\sigma^2` a mean over the group's channels; ``"norm"``: over its copies). Running
    averages follow torch (unbiased variance) and are used in eval mode; :func:`eqnorm.convert_sync_batchnorm`
    synchronises the statistics across processes.

    As e3nn's ``BatchNorm``: ``weight`` ``(num_irreps,)``, ``bias`` (one per ``0e`` copy), ``running_mean`` (one per
    ``0e`` copy) and ``running_var`` (one per group: per copy by default), and ``eps``, ``momentum``, ``affine``,
    ``normalization``; as ``torch.nn.BatchNorm1d``: ``track_running_stats``, ``reset_running_stats()``,
    ``reset_parameters()``. ``num_groups`` alone gives contiguous groups of copies.
    """

    __jit_unused_properties__ = (*BatchNormAttributes.__jit_unused_properties__, "normalization", "running_mean")

    if TYPE_CHECKING:  # for mypy only: TorchScript cannot read these annotations
        norm: PlainBatchNorm
        scalar_channels: torch.Tensor

    def __init__(
        self,
        irreps: Any,
        num_groups: int | None = None,
        *,
        group_by: str | Sequence[int] | None = None,
        centering: str = "trivial",
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any = None,
        layout: str = "mul_ir",
        normalization: str = "component",
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.irreps_in = self.irreps_out = parse_irreps(irreps)
        self.dim = int(self.irreps_in.dim)
        grouping = batch_grouping(num_groups, group_by)
        fields = FieldLayout.from_irreps(
            self.irreps_in, num_groups, grouping, layout, centering=centering, normalization=normalization
        )
        self.norm = PlainBatchNorm(fields, eps, momentum, affine, track_running_stats, process_group, bias)
        self.register_buffer(
            "scalar_channels", torch.tensor(_scalar_channels(fields), dtype=torch.long), persistent=False
        )

    @property
    def running_mean(self) -> torch.Tensor | None:
        """Running mean of each ``0e`` copy, as e3nn's ``BatchNorm.running_mean`` (a copy: ``running_cen`` holds it)."""
        cen = self.norm.running_cen
        return None if cen is None else cen[self.scalar_channels]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self.check(x)
        return self.norm(x.reshape(-1, self.dim)).reshape(x.shape)

    @torch.jit.unused
    def check(self, x: torch.Tensor) -> None:
        """``ValueError`` unless ``x`` is ``(..., dim)`` (in Python; scripted, the op checks the channels)."""
        check_features(x, self.dim)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.irreps_in}, {self.norm.settings_repr()})"


def _scalar_channels(layout: FieldLayout) -> list[int]:
    """The tensor channel of each ``0e`` copy, in order of copies."""
    order = layout.channel_order
    starts = np.cumsum([0, *layout.field_sizes[:-1]])
    channels = [int(start) for start, irreps in zip(starts, layout.field_irreps, strict=True) if irreps[0] == (0, 1)]
    return channels if order is None else [int(order[c]) for c in channels]
