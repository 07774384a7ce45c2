r"""Equivariant group normalization on plain tensors: the small per-(sample, channel) function and the passes.

For a sample ``n`` and channel ``c`` with ``P`` positions, from :math:`m_{nc}` and :math:`M_{2,nc}`:

.. math::

    \mathrm{cen}_n = K m_n, \qquad
    \sigma^2_{n\gamma} = \frac{\sum_{c\in\gamma} M_{2,nc} + P \sum_{c\in\gamma} (m_{nc} - \mathrm{cen}_{nc})^2}
                              {P\,D_\gamma}, \\
    y_{ncp} = a_{nc}\,x_{ncp} + \beta_{nc}, \qquad
    a_{nc} = \frac{w_{\mathrm{field}(c)}}{\sqrt{\sigma^2_{n\gamma(c)} + \epsilon}}, \qquad
    \beta_{nc} = b_c - a_{nc}\,\mathrm{cen}_{nc}.

The heavy work is two passes over ``x`` forward and two backward (:mod:`eqnorm._ops`); the map
:math:`(m, M_2, w, b) \mapsto (a, \beta)` is ordinary PyTorch on ``(N, C)`` tensors with its vector-Jacobian product
in closed form (:mod:`eqnorm.coefficients`), so only ``x`` and the ``(N, C)`` statistics are saved for backward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import _ops
from .batch_statistics import batch_coefficients
from .layout import FieldLayout, LayoutOperators

__all__ = ["field_batch_norm", "field_group_norm", "field_norm", "field_norm_segments"]


class _FieldNorm(torch.autograd.Function):
    """``y = a(x) * x + beta(x)`` with the two-pass forward and the fused two-pass backward of DESIGN section 2."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        ops: LayoutOperators,
        eps: float,
        channels_last: bool,
        ptr: torch.Tensor | None,
    ) -> torch.Tensor:
        mean, m2 = _ops.moments(x, channels_last, ptr)
        positions = _positions(x, channels_last, ptr, mean.dtype)
        acc = mean.dtype
        a, beta = _ops.coefficients(mean, m2, weight.to(acc), bias.to(acc), ops, positions, eps)
        ctx.save_for_backward(x, mean, m2, weight, ptr)
        ctx.ops, ctx.eps, ctx.channels_last, ctx.bias_dtype = ops, eps, channels_last, bias.dtype
        return _ops.affine(x, a, beta, channels_last, ptr)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, mean, m2, weight, ptr = ctx.saved_tensors
        channels_last = ctx.channels_last
        acc = mean.dtype
        positions = _positions(x, channels_last, ptr, acc)
        dy = dy.contiguous()
        sum_dy, sum_dy_x = _ops.moments_backward(dy, x, channels_last, ptr)
        a, u, v, grad_weight, grad_bias = _ops.coefficients_backward(
            sum_dy_x, sum_dy, mean, m2, weight.to(acc), ctx.ops, positions, ctx.eps
        )
        dx = _ops.affine_backward(dy, x, a, u, v, channels_last, ptr)
        return dx, grad_weight.to(weight.dtype), grad_bias.to(ctx.bias_dtype), None, None, None, None


def _positions(
    x: torch.Tensor, channels_last: bool, ptr: torch.Tensor | None, dtype: torch.dtype
) -> int | torch.Tensor:
    """Positions per sample: an int, or ``(N, 1)`` counts of a ragged input (at least 1: an empty segment has zero
    statistics and no output, and must not divide by zero)."""
    if ptr is None:
        return x.shape[1 if channels_last else 2]
    return ptr.diff().clamp(min=1).to(dtype).unsqueeze(1)


class _BatchFieldNorm(torch.autograd.Function):
    """Batch normalization through the same passes: statistics combined over the batch (and processes), gradients
    through them by autograd on the small ``(N, C)`` map, recomputed in backward."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        ops: LayoutOperators,
        eps: float,
        channels_last: bool,
        sync: bool,
        process_group: Any,
    ) -> torch.Tensor:
        mean, m2 = _ops.moments(x, channels_last)
        positions = x.shape[1 if channels_last else 2]
        acc = mean.dtype
        a, beta = batch_coefficients(mean, m2, weight.to(acc), bias.to(acc), ops, positions, eps, sync, process_group)
        ctx.save_for_backward(x, mean, m2, weight, bias)
        ctx.args = (ops, positions, eps, sync, process_group, channels_last)
        return _ops.affine(x, a.contiguous(), beta.contiguous(), channels_last)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, mean, m2, weight, bias = ctx.saved_tensors
        ops, positions, eps, sync, process_group, channels_last = ctx.args
        acc = mean.dtype
        dy = dy.contiguous()
        sum_dy, sum_dy_x = _ops.moments_backward(dy, x, channels_last)
        leaves = [t.detach().to(acc).requires_grad_() for t in (mean, m2, weight, bias)]
        mean_, m2_, weight_, bias_ = leaves
        with torch.enable_grad():
            a, beta = batch_coefficients(mean_, m2_, weight_, bias_, ops, positions, eps, sync, process_group)
            grad_mean, grad_m2, grad_weight, grad_bias = torch.autograd.grad((a, beta), leaves, (sum_dy_x, sum_dy))
        u = 2 * grad_m2
        v = grad_mean / positions - u * mean
        dx = _ops.affine_backward(dy, x, a.detach().contiguous(), u, v, channels_last)
        return dx, grad_weight.to(weight.dtype), grad_bias.to(bias.dtype), None, None, None, None, None


def _rows(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """View ``(N, C, *spatial)`` as ``(N, C, P)``, or ``(N, P, C)`` for channels-last memory; copy only if neither."""
    n, c = x.shape[:2]
    if x.is_contiguous():
        if x[0, 0].numel() == 1:  # point features: (N, C) is also (N, 1, C), which the passes walk far faster
            return x.reshape(n, 1, c), True
        return x.reshape(n, c, -1), False
    last = x.movedim(1, -1)
    if last.is_contiguous():
        return last.reshape(n, -1, c), True
    return x.contiguous().reshape(n, c, -1), False


def _on_rows(x: torch.Tensor, apply: Callable[[torch.Tensor, bool], torch.Tensor]) -> torch.Tensor:
    """``apply(rows, channels_last)`` on the row view of ``x`` (see :func:`_rows`), reshaped back like ``x``."""
    if x.numel() == 0:
        return x.clone()
    rows, channels_last = _rows(x)
    y = apply(rows, channels_last)
    if channels_last:
        return y.reshape(x.shape[0], *x.shape[2:], x.shape[1]).movedim(-1, 1)
    return y.reshape(x.shape)


def field_norm(
    x: torch.Tensor, ops: LayoutOperators, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    r"""Normalize ``x`` of shape ``(N, C, *spatial)`` with precomputed operators:
    :math:`y_{ncp} = a_{nc}\,x_{ncp} + \beta_{nc}` with :math:`a = w / \sqrt{\sigma^2 + \epsilon}` and
    :math:`\beta = b - a\,\mathrm{cen}` from the per-sample statistics (see :func:`field_group_norm`).

    ``weight`` ``(C,)`` and ``bias`` ``(C,)`` are already expanded to channels and ``ops`` is in the accumulation dtype
    of ``x`` (float64 for float64, else float32). This is the unchecked fast path behind :func:`field_group_norm`.
    """
    return _on_rows(x, lambda rows, last: _FieldNorm.apply(rows, weight, bias, ops, eps, last, None))


def field_batch_norm(
    x: torch.Tensor,
    ops: LayoutOperators,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    sync: bool = False,
    process_group: Any = None,
) -> torch.Tensor:
    r"""Batch-statistics normalization of ``x`` ``(N, C, *spatial)`` (channel-expanded parameters, operators in the
    accumulation dtype), synchronised over ``process_group`` when ``sync``.

    The per-sample moments are pooled with Chan's formula,
    :math:`\bar m_c = \frac{1}{N}\sum_n m_{nc}`, :math:`M2_c = \sum_n M2_{nc} + P \sum_n (m_{nc} - \bar m_c)^2`,
    and then centered, grouped and applied as in :func:`field_norm`, gradients through the statistics.
    """
    return _on_rows(
        x, lambda rows, last: _BatchFieldNorm.apply(rows, weight, bias, ops, eps, last, sync, process_group)
    )


def field_norm_segments(
    x: torch.Tensor, ptr: torch.Tensor, ops: LayoutOperators, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    r""":func:`field_norm` with statistics per segment: ``x`` ``(positions, C)``, segment ``n`` owning rows
    ``ptr[n]:ptr[n+1]`` (graph nodes sorted by graph), so that
    :math:`m_{nc} = \frac{1}{P_n}\sum_{p=\mathrm{ptr}_n}^{\mathrm{ptr}_{n+1}-1} x_{pc}` with
    :math:`P_n = \mathrm{ptr}_{n+1} - \mathrm{ptr}_n`."""
    if x.numel() == 0:
        return x.clone()
    return _FieldNorm.apply(x.contiguous(), weight, bias, ops, eps, True, ptr.contiguous())


def check_input(x: Any, layout: FieldLayout) -> None:
    """Raise ``TypeError``/``ValueError`` naming the problem if ``x`` cannot be normalized with ``layout``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"expected a tensor of shape (N, C, *spatial), got shape {tuple(x.shape)}")
    if x.shape[1] != layout.num_channels:
        raise ValueError(
            f"input has {x.shape[1]} channels (shape {tuple(x.shape)}) but the layout has {layout.num_channels}"
        )


def check_eps(eps: float) -> float:
    """``eps`` as a float, or ``ValueError`` unless it is positive and finite."""
    eps = float(eps)
    if not 0 < eps < float("inf"):
        raise ValueError(f"eps must be positive and finite, got {eps}")
    return eps


def expand_parameters(
    ops: LayoutOperators, weight: torch.Tensor | None, bias: torch.Tensor | None, num_channels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Channel vectors :math:`w_{\mathrm{field}(c)}` and :math:`b = \sum_t b_t e_t` over trivial basis vectors."""
    w = ops.bias_basis.new_ones(num_channels) if weight is None else weight.index_select(0, ops.field_of_channel)
    if bias is None:
        b = ops.bias_basis.new_zeros(num_channels)
    else:
        b = ops.bias_basis.to(bias.dtype) @ bias
    return w, b


def field_group_norm(
    x: torch.Tensor,
    layout: FieldLayout,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    ptr: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Equivariant group normalization of ``x`` ``(N, C, *spatial)`` following ``layout``.

    Parameters
    ----------
    x
        Input of shape ``(N, C, *spatial)`` with ``C = layout.num_channels``; contiguous or channels-last.
    layout
        Fields, irreps and groups (:class:`~eqnorm.FieldLayout`).
    weight
        ``(layout.num_fields,)`` scale per field, or ``None`` for ones.
    bias
        ``(layout.num_trivial,)`` bias per trivial irrep copy, or ``None`` for zeros.
    eps
        Added to the variance, :math:`a = w / \sqrt{\sigma^2 + \epsilon}`.
    ptr
        Ragged samples instead of a batch axis: ``x`` is ``(positions, C)`` and sample ``n`` owns rows
        ``ptr[n]:ptr[n+1]`` (``N + 1`` int64 offsets, e.g. graph nodes sorted by graph).

    Returns
    -------
    torch.Tensor
        The normalized tensor, same shape, dtype and memory format as ``x``.

    Examples
    --------
    >>> layout = FieldLayout.scalars(num_channels=4, num_groups=2)
    >>> x = torch.randn(3, 4, 5, 5)
    >>> torch.allclose(field_group_norm(x, layout), torch.nn.functional.group_norm(x, 2), atol=1e-5)
    True
    """
    check_input(x, layout)
    eps = check_eps(eps)
    if ptr is not None and (x.dim() != 2 or ptr.dim() != 1 or ptr.dtype != torch.long):
        raise ValueError(
            f"with ptr, x must be (positions, C) and ptr 1D int64 offsets; got x {tuple(x.shape)}, ptr "
            f"{tuple(ptr.shape)} {ptr.dtype}"
        )
    for name, param, size in (("weight", weight, layout.num_fields), ("bias", bias, layout.num_trivial)):
        if param is not None and tuple(param.shape) != (size,):
            raise ValueError(f"{name} must have shape ({size},), got {tuple(param.shape)}")
    ops = layout.operators(_ops.accumulation_dtype(x.dtype), x.device)
    w, b = expand_parameters(ops, weight, bias, layout.num_channels)
    if ptr is not None:
        return field_norm_segments(x, ptr, ops, w, b, eps)
    return field_norm(x, ops, w, b, eps)
