r"""Batch statistics for equivariant batch normalization: per-sample moments combined over the batch (and across
processes), and the running averages used in evaluation.

Per channel, with :math:`n_r` values, mean :math:`\bar m_r` and :math:`M_{2,r}` from each part (sample or process),
Chan's formula gives the whole batch's:

.. math::

    n = \sum_r n_r, \quad \bar m = \frac{1}{n}\sum_r n_r \bar m_r, \quad
    M_2 = \sum_r M_{2,r} + \sum_r n_r (\bar m_r - \bar m)^2 .

The whole batch is then one "sample" of the coefficient map (:mod:`eqnorm.coefficients`), so the centering and the
group variances are those of group normalization and equivariance holds for the same reasons. The all-gather across
processes is differentiable, so gradients are those of batch normalization over the global batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .coefficients import center, group_variance
from .layout import IndexTensors

__all__ = ["combine", "global_moments", "running_statistics", "sync_pool"]


def combine(
    count: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chan's combination of parts ``(R,)`` counts, ``(R, C)`` means and ``(R, C)`` M2 into one ``(C,)`` each."""
    total = count.sum()
    mu = (count.unsqueeze(1) * mean).sum(0) / total.clamp(min=1)  # no part (a process without samples): zeros
    return total, mu, m2.sum(0) + (count.unsqueeze(1) * (mean - mu).square()).sum(0)


class _AllGather(torch.autograd.Function):
    """Stack ``t`` from every process; backward sums each process's cotangents and keeps this process's row."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, process_group: Any) -> torch.Tensor:
        dist = torch.distributed
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size(process_group))]
        dist.all_gather(parts, t.contiguous(), group=process_group)
        ctx.process_group = process_group
        return torch.stack(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        dist = torch.distributed
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.process_group)
        return grad[dist.get_rank(ctx.process_group)], None


def _gather(t: torch.Tensor, process_group: Any) -> torch.Tensor:
    """Stack ``t`` from every process of the group (differentiable)."""
    return _AllGather.apply(t, process_group)


def global_moments(
    mean: torch.Tensor, m2: torch.Tensor, positions: int, sync: bool, process_group: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(n, mean, M2)`` of each channel over the batch, and over all processes when ``sync``."""
    n_samples = mean.shape[0]
    count = mean.new_full((n_samples,), float(positions))
    total, mu, spread = combine(count, mean, m2)
    if sync:
        packed = torch.cat([total.reshape(1), mu, spread])
        parts = _gather(packed, process_group)
        total, mu, spread = combine(parts[:, 0], parts[:, 1 : 1 + mu.shape[0]], parts[:, 1 + mu.shape[0] :])
    return total, mu, spread


def sync_pool(
    process_group: Any,
) -> Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The ``pool`` of :func:`eqnorm._pure_kernels.torch_field_norm` that combines the batch over every process of
    the group."""

    def pool(mean: torch.Tensor, m2: torch.Tensor, positions: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        total, mu, spread = global_moments(mean, m2, positions, True, process_group)
        if float(total) <= 1:  # the same total on every process: all raise together
            raise ValueError(
                "batch normalization in training needs more than one value per channel over all processes, got "
                f"{int(total)}; use eval mode or a per-sample norm such as FieldGroupNorm"
            )
        return mu.unsqueeze(0), spread.unsqueeze(0), total

    return pool


def running_statistics(
    mean: torch.Tensor, m2: torch.Tensor, t: IndexTensors, positions: int, sync: bool, process_group: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The batch's centering vector ``(C,)`` and unbiased variance per group ``(G,)``, for the running averages:
    :math:`\sigma^2_{\mathrm{unbiased}} = \sigma^2 \, n D_\gamma / (n D_\gamma - 1)`, :math:`D_\gamma` the group's
    channels whatever the layout's normalization."""
    total, mu, spread = global_moments(mean, m2, positions, sync, process_group)
    cen = center(mu.unsqueeze(0), t)
    biased = group_variance(mu.unsqueeze(0), spread.unsqueeze(0), cen, total, t)[0]
    channels = torch.bincount(t.group_of_channel, minlength=t.group_size.shape[0]).to(mean.dtype)
    values = total * channels
    return cen[0], biased * values / (values - 1).clamp(min=1)
