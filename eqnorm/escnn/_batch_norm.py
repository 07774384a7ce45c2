"""escnn module: ``FieldBatchNorm``, equivariant batch normalization with running statistics, optionally synchronised
across processes; and ``convert_sync_batchnorm``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from escnn.nn import EquivariantModule, FieldType, GeometricTensor

from .. import _ops
from ..batch_statistics import running_statistics
from ..functional import check_eps, check_input, expand_parameters, field_batch_norm
from ..layout import FieldLayout

__all__ = ["FieldBatchNorm", "convert_sync_batchnorm"]


class FieldBatchNorm(EquivariantModule):
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
        As :class:`FieldGroupNorm`, with ``group_by="field"`` the default.
    momentum
        Running-average factor, or ``None`` for the cumulative average.
    track_running_stats
        Keep running statistics and use them in eval mode; if False, batch statistics are always used.
    process_group
        Synchronise the statistics over this ``torch.distributed`` group (see :func:`convert_sync_batchnorm`).
    """

    def __init__(
        self,
        in_type: FieldType,
        num_groups: int | None = None,
        *,
        group_by: str | Sequence[int] = "field",
        centering: str = "trivial",
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any = None,
    ) -> None:
        if not isinstance(in_type, FieldType):
            raise TypeError(f"in_type must be an escnn FieldType, got {type(in_type).__name__}")
        if centering == "all" and track_running_stats:
            raise ValueError(
                "centering='all' needs track_running_stats=False: a running mean of non-trivial irreps is a fixed "
                "vector that does not rotate with the input, so eval mode would not be equivariant"
            )
        super().__init__()
        self.in_type = self.out_type = in_type
        self.layout = FieldLayout.from_field_type(in_type, num_groups, group_by, centering)
        self.eps = check_eps(eps)
        if momentum is not None and not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1] or None, got {momentum}")
        self.momentum = momentum
        self.sync = False
        self.process_group = process_group
        self.weight = torch.nn.Parameter(torch.ones(self.layout.num_fields)) if affine else None
        self.bias = torch.nn.Parameter(torch.zeros(self.layout.num_trivial)) if affine else None
        self.track_running_stats = track_running_stats
        if track_running_stats:
            self.register_buffer("running_cen", torch.zeros(self.layout.num_channels))
            self.register_buffer("running_var", torch.ones(self.layout.num_groups))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, input: GeometricTensor) -> GeometricTensor:
        if not isinstance(input, GeometricTensor):
            raise TypeError(f"FieldBatchNorm expects an escnn GeometricTensor, got {type(input).__name__}")
        if input.type != self.in_type:
            raise ValueError(f"FieldBatchNorm was built for field type {self.in_type} but got {input.type}")
        x = input.tensor
        check_input(x, self.layout)
        ops = self.layout.operators(_ops.accumulation_dtype(x.dtype), x.device)
        weight, bias = expand_parameters(ops, self.weight, self.bias, self.layout.num_channels)
        if self.training or not self.track_running_stats:
            if self.sync and not torch.distributed.is_initialized():
                raise RuntimeError("FieldBatchNorm is synchronised but torch.distributed is not initialised")
            if self.training and self.track_running_stats:
                self._update_running_statistics(x, ops)
            y = field_batch_norm(x, ops, weight, bias, self.eps, self.sync, self.process_group)
        else:
            a = (
                weight.to(ops.center_in.dtype)
                * torch.rsqrt(self.running_var.to(ops.center_in.dtype) + self.eps)[ops.group_of_channel]
            )
            beta = bias.to(a.dtype) - a * self.running_cen.to(a.dtype)
            shape = (1, -1) + (1,) * (x.dim() - 2)
            y = (x.to(a.dtype) * a.view(shape) + beta.view(shape)).to(x.dtype)
        return GeometricTensor(y, self.out_type, input.coords)

    @torch.no_grad()
    def _update_running_statistics(self, x: torch.Tensor, ops: Any) -> None:
        rows = x.detach().reshape(x.shape[0], x.shape[1], -1)
        mean, m2 = _ops.moments(rows.contiguous(), False)
        cen, var = running_statistics(mean, m2, ops, rows.shape[2], self.sync, self.process_group)
        self.num_batches_tracked += 1
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_cen.lerp_(cen.to(self.running_cen.dtype), factor)
        self.running_var.lerp_(var.to(self.running_var.dtype), factor)

    def evaluate_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) < 2 or input_shape[1] != self.in_type.size:
            raise ValueError(f"expected a shape (N, {self.in_type.size}, ...), got {tuple(input_shape)}")
        return tuple(input_shape)

    def extra_repr(self) -> str:
        return f"{self.layout}, eps={self.eps}, momentum={self.momentum}, sync={self.sync}"


def convert_sync_batchnorm(module: torch.nn.Module, process_group: Any = None) -> torch.nn.Module:
    """Make every :class:`FieldBatchNorm` in ``module`` all-gather its statistics over ``process_group`` (the default
    group when None) in training, like ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``. Returns ``module``."""
    for m in module.modules():
        if isinstance(m, FieldBatchNorm):
            m.sync = True
            m.process_group = process_group
    return module
