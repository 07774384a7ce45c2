"""escnn module: ``FieldBatchNorm``, equivariant batch normalization with running statistics, optionally synchronised
across processes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from escnn.nn import FieldType

from ..batch_norm import BatchNormAttributes, PlainBatchNorm, batch_grouping
from ..layout import FieldLayout
from ._field_module import FieldModule, check_field_type

__all__ = ["FieldBatchNorm"]


class FieldBatchNorm(BatchNormAttributes, FieldModule):
    r"""Equivariant batch normalization: the statistics of :class:`FieldGroupNorm`, pooled over the batch too.

    In training, per group :math:`\gamma` (default: one field per group) over all samples :math:`n` and positions
    :math:`p` (and all processes when synchronised):

    .. math::

        y_{ncp} = \frac{w_i}{\sqrt{\sigma^2_\gamma + \epsilon}}\,(x_{ncp} - \mathrm{cen}_c) + b_c, \qquad
        \sigma^2_\gamma = \frac{1}{N P D_\gamma}\sum_{n, p}\sum_{c\in\gamma} (x_{ncp} - \mathrm{cen}_c)^2,

    with the centering of the trivial (``"trivial"``), all (``"all"``) or no (``"none"``) irrep components, and
    gradients through the statistics. Running averages (``momentum``; ``None`` for a cumulative average) keep the
    centering vector and the unbiased group variances, as ``torch.nn.BatchNorm2d`` does, and are used in eval mode.
    In training the centering vector transforms like the input and the variances are invariant, so the layer is
    equivariant for the whole batch transformed together; the running centering vector lies on the trivial irreps
    (invariant), so eval mode is equivariant sample by sample. ``centering="all"`` would keep a running mean of
    non-trivial irreps, which does not rotate with the input: it is allowed only with ``track_running_stats=False``.

    Parameters
    ----------
    in_type
        The field type of the input (and output).
    num_groups, group_by, centering
        As :class:`FieldGroupNorm`; by default one field per group (``group_by="field"``), or ``num_groups`` groups of
        consecutive fields when ``num_groups`` is given.
    momentum
        Running-average factor, or ``None`` for the cumulative average.
    track_running_stats
        Keep running statistics and use them in eval mode; if False, batch statistics are always used.
    process_group
        Synchronise the statistics over this ``torch.distributed`` group (see :func:`convert_sync_batchnorm`).
    affine, bias, eps
        As :class:`FieldGroupNorm`.
    """

    norm: PlainBatchNorm
    checked_modes = (True, False)

    def __init__(
        self,
        in_type: FieldType,
        num_groups: int | None = None,
        *,
        group_by: str | Sequence[int] | None = None,
        centering: str = "trivial",
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any = None,
        bias: bool = True,
    ) -> None:
        check_field_type(in_type)
        super().__init__()
        self.in_type = self.out_type = in_type
        layout = FieldLayout.from_field_type(
            in_type, num_groups, batch_grouping(num_groups, group_by), centering=centering
        )
        self.norm = PlainBatchNorm(layout, eps, momentum, affine, track_running_stats, process_group, bias)

    @property
    def running_cen(self) -> torch.Tensor | None:
        """Running centering vector ``(C,)``: nonzero on trivial irreps only."""
        return self.norm.running_cen
