"""``PlainBatchNorm``: equivariant batch normalization with running statistics on plain tensors, shared by the escnn
and e3nn batch-norm layers; and ``convert_sync_batchnorm``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from .batch_statistics import running_statistics, sync_pool
from .coefficients import gather, inverse_root, scatter_sum
from .functional import check_input, field_norm
from .layout import FieldLayout
from .module import NormAttributes, PlainNorm

__all__ = ["BatchNormAttributes", "PlainBatchNorm", "batch_grouping", "convert_sync_batchnorm"]


def batch_grouping(num_groups: int | None, group_by: str | Sequence[int] | None) -> str | Sequence[int]:
    """The batch norms' ``group_by``: as given, else one field per group, or contiguous groups if ``num_groups``."""
    if group_by is not None:
        return group_by
    return "field" if num_groups is None else "contiguous"


class PlainBatchNorm(PlainNorm):
    r"""Batch normalization over the fields of a :class:`~eqnorm.FieldLayout`, on ``(N, C, *spatial)`` tensors.

    Training: the coefficients of :mod:`eqnorm.coefficients` computed on the statistics of the whole batch (and of
    every process when ``sync``), gradients through them. Running averages of the centering vector (on trivial irreps:
    invariant) and of the unbiased group variances, as ``torch.nn.BatchNorm2d`` keeps them, are used in eval mode:
    :math:`y = w (x - \bar{\mathrm{cen}}) / \sqrt{\bar\sigma^2 + \epsilon} + b`.

    As ``torch.nn.BatchNorm2d``: ``momentum``, ``track_running_stats`` (if False, the ``running_*`` buffers and
    ``num_batches_tracked`` are registered as ``None``), ``reset_running_stats()`` and ``reset_parameters()``.
    """

    if TYPE_CHECKING:  # for mypy only: TorchScript cannot read these annotations, and infers them from the values
        running_cen: torch.Tensor | None
        running_var: torch.Tensor | None
        num_batches_tracked: torch.Tensor | None

    def __init__(
        self,
        layout: FieldLayout,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any = None,
        bias: bool = True,
    ) -> None:
        if layout.centering == "all" and track_running_stats:
            raise ValueError(
                "centering='all' needs track_running_stats=False: a running mean of non-trivial irreps is a fixed "
                "vector that does not rotate with the input, so eval mode would not be equivariant"
            )
        if momentum is not None and not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1] or None, got {momentum}")
        super().__init__(layout, eps, affine, bias)
        self.momentum = momentum
        self.sync = process_group is not None  # as torch.nn.SyncBatchNorm: a group given is a group synchronised
        self.process_group = process_group
        self.track_running_stats = track_running_stats
        tracked = track_running_stats
        self.register_buffer("running_cen", torch.zeros(layout.num_channels) if tracked else None)
        self.register_buffer("running_var", torch.ones(layout.num_groups) if tracked else None)
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long) if tracked else None)

    def reset_running_stats(self) -> None:
        """Running centering vector to zeros, running variances to ones, ``num_batches_tracked`` to 0."""
        if self.track_running_stats:
            assert self.running_cen is not None and self.running_var is not None
            assert self.num_batches_tracked is not None
            self.running_cen.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """The running statistics and the affine parameters as at construction."""
        self.reset_running_stats()
        super().reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self.scripted_forward(x)
        return self.eager_forward(x)

    def scripted_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` as TorchScript runs it, for deployment: with running statistics in eval mode, batch statistics
        otherwise; updating running statistics (training) is left to Python."""
        running_cen, running_var = self.running_cen, self.running_var
        if running_cen is None or running_var is None:
            return self.scripted_op(x, None, True)
        if self.training:
            raise RuntimeError(
                "eqnorm: a scripted batch norm does not update running statistics; script it in eval mode"
            )
        return self.normalize_with_running_statistics(x, running_cen, running_var)

    def normalize_with_running_statistics(
        self, x: torch.Tensor, running_cen: torch.Tensor, running_var: torch.Tensor
    ) -> torch.Tensor:
        r"""Eval mode: :math:`y = a x + \beta` per channel, :math:`a = w / \sqrt{\bar\sigma^2 + \epsilon}`,
        :math:`\beta = b - a\,\bar{\mathrm{cen}}`, in the accumulation dtype (Python and TorchScript alike)."""
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        weight, bias = self.weight, self.bias
        a = gather(inverse_root(running_var.to(acc), self.eps), self.index_group_of_channel)
        if weight is not None:
            a = gather(weight.to(acc), self.index_field_of_channel) * a
        beta = -a * running_cen.to(acc)
        if bias is not None:
            contributions = gather(bias.to(acc), self.index_bias_index) * self.index_bias_value.to(acc)
            beta = beta + scatter_sum(contributions, self.index_bias_channel, a.shape[0])
        shape = [1, -1] + [1] * (x.dim() - 2)
        return (x.to(acc) * a.view(shape) + beta.view(shape)).to(x.dtype)

    @torch.jit.unused
    def eager_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` in Python: checks, batch statistics (synchronised across processes when ``sync``) and their
        running averages in training, the running statistics in eval."""
        check_input(x, self.layout)
        if not self.training and self.running_cen is not None and self.running_var is not None:
            return self.normalize_with_running_statistics(x, self.running_cen, self.running_var)
        weight, bias = self.weight, self.bias
        t = self.index_tensors
        values = x.numel() // x.shape[1]
        if 0 < values <= 1 and not self.sync:  # synchronised, the count over every process decides (sync_pool)
            raise ValueError(
                "batch normalization in training needs more than one value per channel, got 1 (a batch of one "
                "sample with no spatial extent); use eval mode or a per-sample norm such as FieldGroupNorm"
            )
        if self.sync:
            if not torch.distributed.is_initialized():
                raise RuntimeError("FieldBatchNorm is synchronised but torch.distributed is not initialised")
            y, mean, m2 = field_norm(x, weight, bias, t, self.eps, batch=True, pool=sync_pool(self.process_group))
        else:
            y, mean, m2 = field_norm(x, weight, bias, t, self.eps, batch=True)
        # synchronised, every process joins the statistics' all-gather, one without samples too
        if self.training and self.track_running_stats and (x.numel() > 0 or self.sync):
            self._update_running_statistics(mean, m2, values // max(x.shape[0], 1))
        return y

    @torch.jit.unused
    @torch.no_grad()
    def _update_running_statistics(self, mean: torch.Tensor, m2: torch.Tensor, positions: int) -> None:
        cen, var = running_statistics(mean, m2, self.index_tensors, positions, self.sync, self.process_group)
        assert self.running_cen is not None and self.running_var is not None
        assert self.num_batches_tracked is not None
        self.num_batches_tracked += 1
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_cen.lerp_(cen.to(self.running_cen.dtype), factor)
        self.running_var.lerp_(var.to(self.running_var.dtype), factor)

    def settings_repr(self) -> str:
        sync = ", sync=True" if self.sync else ""
        tracked = f"track_running_stats={self.track_running_stats}"
        return f"{super().settings_repr()}, momentum={self.momentum}, {tracked}{sync}"


class BatchNormAttributes(NormAttributes):
    """What the escnn and e3nn batch norms show of the :class:`PlainBatchNorm` they hold as ``norm``, besides
    :class:`~eqnorm.module.NormAttributes`: ``torch.nn.BatchNorm2d``'s ``momentum``, ``track_running_stats``,
    ``running_var`` and ``reset_running_stats()``."""

    __jit_unused_properties__: tuple[str, ...] = (
        *NormAttributes.__jit_unused_properties__,
        "momentum",
        "track_running_stats",
        "running_var",
    )

    if TYPE_CHECKING:
        norm: PlainBatchNorm

    @property
    def momentum(self) -> float | None:
        return self.norm.momentum

    @momentum.setter
    def momentum(self, value: float | None) -> None:
        self.norm.momentum = value

    @property
    def track_running_stats(self) -> bool:
        return self.norm.track_running_stats

    @property
    def running_var(self) -> torch.Tensor | None:
        """Running unbiased variance per group ``(G,)`` (per field, or irrep copy, by default)."""
        return self.norm.running_var

    def reset_running_stats(self) -> None:
        """As ``torch.nn.BatchNorm2d.reset_running_stats``."""
        self.norm.reset_running_stats()


def convert_sync_batchnorm(module: torch.nn.Module, process_group: Any = None) -> torch.nn.Module:
    r"""Make every eqnorm batch norm in ``module`` (``FieldBatchNorm``, ``IrrepsBatchNorm``) all-gather its statistics
    over ``process_group`` (the default group when None) in training, like
    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``. Returns ``module``.

    Process :math:`r` holding :math:`N_r` samples contributes its per-channel moments; they are combined exactly,
    :math:`\bar m = \sum_r N_r \bar m_r / \sum_r N_r` and
    :math:`M2 = \sum_r \left(M2_r + N_r P\,(\bar m_r - \bar m)^2\right)`, so the result equals one process
    normalizing the whole batch; gradients flow back through the gather.
    """
    for m in module.modules():
        if isinstance(m, PlainBatchNorm):
            m.sync = True
            m.process_group = process_group
    return module
