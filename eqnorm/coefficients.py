r"""The small map from per-channel statistics to the per-channel affine coefficients, in plain PyTorch.

For one row (a sample, or the whole batch) with :math:`P` values per channel, :math:`K` the centering operator
(:class:`~eqnorm.layout.IndexTensors`), :math:`\gamma(c)` the group of channel :math:`c` and :math:`D_\gamma` its
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

from .layout import IndexTensors

__all__ = ["affine_coefficients", "center", "channel_bias", "group_variance"]


def scatter_sum(src: torch.Tensor, index: torch.Tensor, size: int, dim: int = -1) -> torch.Tensor:
    r"""The sums of ``src``'s slices along ``dim`` by ``index`` into ``size`` outputs:
    :math:`\mathrm{out}_i = \sum_{k: \mathrm{index}_k = i} \mathrm{src}_k`. The sum runs into one output more, left
    empty: Inductor's vectorized CPU code fails on a scatter into a dimension of size 1 (torch 2.13), which a layer
    norm's one group, a single centering class or a batch of one graph would be. (Symbolic sizes pass for ``size``
    under tracing; TorchScript compiles it too.)"""
    shape = list(src.shape)
    shape[dim] = size + 1
    return src.new_zeros(shape).index_add(dim, index, src).narrow(dim, 0, size)


def gather(t: torch.Tensor, index: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``t.index_select(dim, index)``, from ``t`` with one more slice (zero, never selected), so that the scatter of its
    backward, too, never targets a dimension of size 1 (see :func:`scatter_sum`)."""
    dim = dim % t.dim()
    return torch.nn.functional.pad(t, [0, 0] * (t.dim() - 1 - dim) + [0, 1]).index_select(dim, index)


def center(m: torch.Tensor, t: IndexTensors) -> torch.Tensor:
    r""":math:`\mathrm{cen} = K m` for ``(S, C)`` rows: :math:`z_l = s_l \sum_{k: l_k = l} v_k m_{c_k}`, then
    :math:`\mathrm{cen}_c = \sum_{k: c_k = c} v_k z_{l_k}`."""
    value = t.center_value.to(m.dtype)
    z = scatter_sum(gather(m, t.center_channel) * value, t.center_class, t.class_scale.shape[0])
    z = z * t.class_scale.to(m.dtype)
    return scatter_sum(gather(z, t.center_class) * value, t.center_channel, m.shape[1])


def group_variance(
    mean: torch.Tensor, m2: torch.Tensor, cen: torch.Tensor, positions: torch.Tensor | float, t: IndexTensors
) -> torch.Tensor:
    r""":math:`\sigma^2_\gamma = \sum_{c\in\gamma} (M_{2,c} + P (m_c - \mathrm{cen}_c)^2) / (P D_\gamma)`,
    ``(S, G)``."""
    spread = m2 + positions * (mean - cen).square()
    total = scatter_sum(spread, t.group_of_channel, t.group_size.shape[0])
    return total / (positions * t.group_size.to(mean.dtype))


def inverse_root(var: torch.Tensor, eps: float) -> torch.Tensor:
    r""":math:`1/\sqrt{\sigma^2 + \epsilon}`, NaN where :math:`\sigma^2` overflowed to infinity (float32 squares do
    from :math:`|x| \approx 10^{19}` on): the coefficient would otherwise be 0 and the output the bias, finite and
    wrong."""
    return torch.rsqrt(var + eps).masked_fill(var.isinf(), float("nan"))


def channel_bias(bias: torch.Tensor, t: IndexTensors, num_channels: int) -> torch.Tensor:
    r""":math:`b_c = \sum_{j: c_j = c} v_j\,\mathrm{bias}_{t_j}`: the bias on the trivial basis vectors, ``(C,)``."""
    contributions = gather(bias, t.bias_index) * t.bias_value.to(bias.dtype)
    return scatter_sum(contributions, t.bias_channel, num_channels)


def affine_coefficients(
    mean: torch.Tensor,
    m2: torch.Tensor,
    positions: torch.Tensor | float,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    t: IndexTensors,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The per-row affine map :math:`(a, \beta)`, each ``(S, C)``, in the dtype of ``mean``.

    Parameters
    ----------
    mean, m2
        ``(S, C)`` per-channel mean and sum of squared deviations over ``positions`` values (a number, or an
        ``(S, 1)`` tensor of per-row counts).
    weight, bias
        ``(F,)`` weight per field and ``(T,)`` bias per trivial irrep copy; ``None`` for a weight of 1, a bias of 0.
    t
        The layout's tensors.
    """
    acc = mean.dtype
    cen = center(mean, t)
    rstd = inverse_root(group_variance(mean, m2, cen, positions, t), eps)
    a = gather(rstd, t.group_of_channel)
    if weight is not None:
        a = gather(weight.to(acc), t.field_of_channel) * a
    if bias is None:
        return a, -a * cen
    return a, channel_bias(bias.to(acc), t, mean.shape[1]) - a * cen
