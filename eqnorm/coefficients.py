r"""The small map from per-channel statistics to the per-channel affine coefficients, in plain PyTorch.

For one row (a sample, or the whole batch) with :math:`P` values per channel, :math:`K` the centering operator
(:class:`~eqnorm.layout.LayoutTensors`), :math:`\gamma(c)` the group of channel :math:`c` and :math:`D_\gamma` its
channels:

.. math::

    \mathrm{cen} = K m, \quad d = m - \mathrm{cen}, \quad
    \sigma^2_\gamma = \frac{\sum_{c\in\gamma} M_{2,c} + P d_c^2}{P D_\gamma}, \quad
    a_c = \frac{w_{\mathrm{field}(c)}}{\sqrt{\sigma^2_{\gamma(c)} + \epsilon}}, \quad
    \beta_c = b_c - a_c\,\mathrm{cen}_c.

This is the pure-PyTorch reference of the compiled op's coefficient step (``csrc/field_norm.cpp`` has the same map
and its closed-form vector-Jacobian product); autograd differentiates it to any order.
"""

from __future__ import annotations

import torch

from .layout import LayoutTensors

__all__ = ["affine_coefficients", "center", "channel_bias", "group_variance"]


def center(m: torch.Tensor, t: LayoutTensors) -> torch.Tensor:
    r""":math:`\mathrm{cen} = K m` for ``(S, C)`` rows: :math:`z_l = s_l \sum_{k: l_k = l} v_k m_{c_k}`, then
    :math:`\mathrm{cen}_c = \sum_{k: c_k = c} v_k z_{l_k}`."""
    value = t.center_value.to(m.dtype)
    z = m.new_zeros(m.shape[0], t.class_scale.shape[0]).index_add(1, t.center_class, m[:, t.center_channel] * value)
    z = z * t.class_scale.to(m.dtype)
    return torch.zeros_like(m).index_add(1, t.center_channel, z[:, t.center_class] * value)


def group_variance(
    mean: torch.Tensor, m2: torch.Tensor, cen: torch.Tensor, positions: torch.Tensor | float, t: LayoutTensors
) -> torch.Tensor:
    r""":math:`\sigma^2_\gamma = \sum_{c\in\gamma} (M_{2,c} + P (m_c - \mathrm{cen}_c)^2) / (P D_\gamma)`,
    ``(S, G)``."""
    spread = m2 + positions * (mean - cen).square()
    total = mean.new_zeros(mean.shape[0], t.group_size.shape[0]).index_add(1, t.group_of_channel, spread)
    return total / (positions * t.group_size.to(mean.dtype))


def channel_bias(bias: torch.Tensor, t: LayoutTensors, num_channels: int) -> torch.Tensor:
    r""":math:`b_c = \sum_{j: c_j = c} v_j\,\mathrm{bias}_{t_j}`: the bias on the trivial basis vectors, ``(C,)``."""
    contributions = bias[t.bias_index] * t.bias_value.to(bias.dtype)
    return bias.new_zeros(num_channels).index_add(0, t.bias_channel, contributions)


def affine_coefficients(
    mean: torch.Tensor,
    m2: torch.Tensor,
    positions: torch.Tensor | float,
    weight: torch.Tensor,
    bias: torch.Tensor,
    t: LayoutTensors,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The per-row affine map :math:`(a, \beta)`, each ``(S, C)``, in the dtype of ``mean``.

    Parameters
    ----------
    mean, m2
        ``(S, C)`` per-channel mean and sum of squared deviations over ``positions`` values (a number, or an
        ``(S, 1)`` tensor of per-row counts).
    weight, bias
        ``(F,)`` weight per field and ``(T,)`` bias per trivial irrep copy.
    t
        The layout's tensors.
    """
    acc = mean.dtype
    cen = center(mean, t)
    rstd = torch.rsqrt(group_variance(mean, m2, cen, positions, t) + eps)
    a = weight.to(acc)[t.field_of_channel] * rstd[:, t.group_of_channel]
    return a, channel_bias(bias.to(acc), t, mean.shape[1]) - a * cen
