r"""The small map from per-channel statistics to the per-channel affine coefficients, and its vector-Jacobian product.

For one sample, with :math:`K = A_{\mathrm{in}} A_{\mathrm{out}}` the centering operator, :math:`M` the one-hot
channel-to-group matrix, :math:`D_\gamma` the channels per group and :math:`P` the positions:

.. math::

    \mathrm{cen} = m K, \quad d = m - \mathrm{cen}, \quad
    \sigma^2 = \frac{(M_2 + P d^2) M}{P D}, \quad r = (\sigma^2 + \epsilon)^{-1/2}, \quad
    a = w \odot r M^\top, \quad \beta = b - a \odot \mathrm{cen}.

Its vector-Jacobian product, for cotangents :math:`g_a, g_\beta`:

.. math::

    \bar a &= g_a - g_\beta \odot \mathrm{cen}, \quad
    \bar w = \textstyle\sum_n \bar a \odot r M^\top, \quad \bar b = \textstyle\sum_n g_\beta, \\
    \bar\sigma^2 &= -\tfrac12 r^3 \odot (\bar a \odot w) M, \quad
    \bar M_2 = \frac{\bar\sigma^2}{P D} M^\top, \quad
    \bar m = 2 P\, \bar M_2 \odot d + \left(-a \odot g_\beta - 2 P\, \bar M_2 \odot d\right) K^\top.

It works on ``(N, C)`` tensors and costs nothing next to the passes over ``x``; writing the product in closed form
keeps the backward pass free of nested autograd (and so friendly to ``torch.compile``). ``tests/test_coefficients.py``
checks it against autograd.
"""

from __future__ import annotations

import torch

from .layout import LayoutOperators

__all__ = ["affine_coefficients", "affine_coefficients_backward"]


def _statistics(
    mean: torch.Tensor, m2: torch.Tensor, ops: LayoutOperators, positions: int | torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``cen``, ``d``, ``r`` per group ``(N, G)`` and ``r`` per channel ``(N, C)``."""
    cen = (mean @ ops.center_in) @ ops.center_out
    dev = mean - cen
    var = ((m2 + positions * dev.square()) @ ops.group_member) / (positions * ops.group_size)
    rstd = torch.rsqrt(var + eps)
    return cen, dev, rstd, rstd.index_select(1, ops.group_of_channel)


def affine_coefficients(
    mean: torch.Tensor,
    m2: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    ops: LayoutOperators,
    positions: int | torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The per-(sample, channel) affine map :math:`(a, \beta)` of the normalization.

    Parameters
    ----------
    mean, m2
        ``(N, C)`` per-channel mean and sum of squared deviations over ``positions`` positions (an int, or an
        ``(N, 1)`` tensor of per-sample counts for ragged inputs).
    weight, bias
        ``(C,)`` channel-expanded weight :math:`w_{\mathrm{field}(c)}` and bias :math:`b_c` (zero off trivial irreps).
    ops
        The layout's operators, in the dtype of ``mean``.
    """
    cen, _, _, rstd_c = _statistics(mean, m2, ops, positions, eps)
    a = weight * rstd_c
    return a, bias - a * cen


def affine_coefficients_backward(
    grad_a: torch.Tensor,
    grad_beta: torch.Tensor,
    mean: torch.Tensor,
    m2: torch.Tensor,
    weight: torch.Tensor,
    ops: LayoutOperators,
    positions: int | torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(a, grad_mean, grad_m2, grad_weight, grad_bias)``: the coefficient ``a`` and the product of the module doc."""
    cen, dev, rstd, rstd_c = _statistics(mean, m2, ops, positions, eps)
    a = weight * rstd_c
    grad_a = grad_a - grad_beta * cen
    grad_weight = (grad_a * rstd_c).sum(0)
    grad_var = -0.5 * rstd.pow(3) * ((grad_a * weight) @ ops.group_member)
    grad_m2 = (grad_var / (positions * ops.group_size)) @ ops.group_member.T
    grad_dev = 2 * positions * grad_m2 * dev
    grad_cen = -a * grad_beta - grad_dev
    grad_mean = grad_dev + (grad_cen @ ops.center_out.T) @ ops.center_in.T
    return a, grad_mean, grad_m2, grad_weight, grad_beta.sum(0)
