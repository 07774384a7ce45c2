r"""The four passes over the feature tensor, and which implementation runs them.

Every pass sees a contiguous 3D tensor, channels-first ``(N, C, P)`` or channels-last ``(N, P, C)``, and reduces or
maps along the positions ``P`` of each (sample, channel) row:

- ``moments(x)``: :math:`m = \frac1P\sum_p x_p`, :math:`M_2 = \sum_p (x_p - m)^2`;
- ``affine(x, a, beta)``: :math:`y = a x + \beta`;
- ``moments_backward(dy, x)``: :math:`\sum_p dy_p` and :math:`\sum_p dy_p x_p`;
- ``affine_backward(dy, x, a, u, v)``: :math:`dx = a\,dy + u\,x + v`.

Statistics and the per-row coefficients are float32 for float16/bfloat16/float32 inputs and float64 for float64.
This module holds the pure-PyTorch implementation used where no compiled kernel is available.
"""

from __future__ import annotations

import torch

__all__ = ["accumulation_dtype", "affine", "affine_backward", "kernel_backend", "moments", "moments_backward"]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, float32 for every other floating dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def kernel_backend(device: torch.device | str = "cpu") -> str:
    """Which implementation of the four passes runs on ``device``: ``"torch"`` (pure PyTorch)."""
    torch.device(device)  # validates the name
    return "torch"


def _row_dim(channels_last: bool) -> int:
    return 1 if channels_last else 2


def _coeff(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """An ``(N, C)`` coefficient shaped to broadcast against a row layout."""
    return t.unsqueeze(1) if channels_last else t.unsqueeze(2)


def moments(x: torch.Tensor, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean and sum of squared deviations (two passes, never sum-of-squares minus square)."""
    dim = _row_dim(channels_last)
    xf = x.to(accumulation_dtype(x.dtype))
    mean = xf.mean(dim)
    m2 = (xf - _coeff(mean, channels_last)).square().sum(dim)
    return mean, m2


def affine(x: torch.Tensor, a: torch.Tensor, beta: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``y = a * x + beta`` per row, computed in the coefficients' dtype, returned in ``x``'s dtype."""
    y = x.to(a.dtype) * _coeff(a, channels_last) + _coeff(beta, channels_last)
    return y.to(x.dtype)


def moments_backward(dy: torch.Tensor, x: torch.Tensor, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``sum_p dy`` and ``sum_p dy * x``."""
    dim = _row_dim(channels_last)
    acc = accumulation_dtype(x.dtype)
    dyf = dy.to(acc)
    return dyf.sum(dim), (dyf * x.to(acc)).sum(dim)


def affine_backward(
    dy: torch.Tensor, x: torch.Tensor, a: torch.Tensor, u: torch.Tensor, v: torch.Tensor, channels_last: bool
) -> torch.Tensor:
    """``dx = a * dy + u * x + v`` per row, returned in ``x``'s dtype."""
    acc = a.dtype
    dx = dy.to(acc) * _coeff(a, channels_last) + x.to(acc) * _coeff(u, channels_last) + _coeff(v, channels_last)
    return dx.to(x.dtype)
