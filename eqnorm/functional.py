r"""Equivariant group normalization on plain tensors: argument checks, the row view of the input, and the one op.

Per sample, :math:`y_{ncp} = a_{nc}\,x_{ncp} + \beta_{nc}` with the coefficients :math:`(a, \beta)` of
:mod:`eqnorm.coefficients` (the formulas, stated there and in docs/theory.rst).

One call of ``torch.ops.eqnorm.field_norm`` (:mod:`eqnorm._ops`) computes it: two passes over ``x`` forward and two
backward, the small coefficient map in between, only ``x`` and the ``(N, C)`` statistics saved for backward (none
for point features, whose statistics are ``x`` itself).
"""

from __future__ import annotations

from typing import Any

import torch

from . import _ops, _pure_kernels
from .layout import FieldLayout, IndexTensors

__all__ = ["field_group_norm", "field_norm"]


def _rows(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """View ``(N, C, *spatial)`` as ``(N, C, P)``, or ``(N, P, C)`` for channels-last memory; copy only if neither."""
    if x.dim() == 2:  # point features: (N, C) is also (N, 1, C), which the passes walk far faster
        return x.contiguous().unsqueeze(1), True
    if x.is_contiguous():
        return x.flatten(2), False
    last = x.movedim(1, -1)
    if last.is_contiguous():
        return last.flatten(1, -2), True
    return x.contiguous().flatten(2), False


def field_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    t: IndexTensors,
    eps: float,
    *,
    ptr: torch.Tensor | None = None,
    batch: bool = False,
    pool: _pure_kernels.Pool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The unchecked fast path behind every layer: ``(y, mean, m2)`` for ``x`` ``(N, C, *spatial)`` (any memory
    format), or ragged ``(rows, C)`` with offsets ``ptr``, statistics pooled over the batch when ``batch``.

    ``weight`` ``(F,)`` and ``bias`` ``(T,)`` are per field and per trivial copy (``None``: a weight of 1, a bias of
    0); ``t`` is the layout's tensors on ``x``'s device. ``mean`` and ``m2`` are the per-sample statistics
    :math:`m`, :math:`M_2` ``(N, C)``; ``(N, 0)`` for point features (one position per sample, not ``batch``), whose
    statistics would be ``x`` itself and zeros. A ``pool`` (batch statistics combined across processes) runs the
    pure-PyTorch form, whose pooling it replaces.
    """
    if ptr is not None:
        return _ops.field_norm(x.contiguous(), weight, bias, t, ptr.contiguous(), True, False, eps)
    if pool is None and x.dim() > 2 and x.is_contiguous():
        return _ops.field_norm_dense(x, weight, bias, t, batch, eps)
    rows, channels_last = _rows(x)
    if pool is not None:
        y, mean, m2 = _pure_kernels.torch_field_norm(rows, weight, bias, t, None, channels_last, batch, eps, pool)
    else:
        y, mean, m2 = _ops.field_norm(rows, weight, bias, t, None, channels_last, batch, eps)
    if channels_last:
        return y.reshape(x.shape[0], *x.shape[2:], x.shape[1]).movedim(-1, 1), mean, m2
    return y.reshape(x.shape), mean, m2


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


def check_parameter(name: str, value: Any, size: int, x: torch.Tensor) -> None:
    """``TypeError``/``ValueError`` unless ``value`` is a real floating ``(size,)`` tensor on ``x``'s device."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a real floating-point tensor, got dtype {value.dtype}")
    if tuple(value.shape) != (size,):
        raise ValueError(f"{name} must have shape ({size},), got {tuple(value.shape)}")
    if value.device != x.device:
        raise ValueError(f"{name} is on {value.device} but the input is on {x.device}")


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
        ``ptr[n]:ptr[n+1]`` (``N + 1`` int64 offsets from 0 to ``positions``, e.g. graph nodes sorted by graph).

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
    if not isinstance(layout, FieldLayout):
        raise TypeError(f"layout must be a FieldLayout, got {type(layout).__name__}")
    check_input(x, layout)
    eps = check_eps(eps)
    if ptr is not None:
        if x.dim() != 2 or not isinstance(ptr, torch.Tensor) or ptr.dim() != 1 or ptr.dtype != torch.long:
            raise ValueError(
                f"with ptr, x must be (positions, C) and ptr 1D int64 offsets; got x {tuple(x.shape)}, ptr "
                f"{getattr(ptr, 'shape', ptr)} {getattr(ptr, 'dtype', '')}"
            )
        if ptr.device != x.device:
            raise ValueError(f"ptr is on {ptr.device} but the input is on {x.device}")
        _pure_kernels.check_ptr(ptr, x.shape[0])
    if weight is not None:
        check_parameter("weight", weight, layout.num_fields, x)
    if bias is not None:
        check_parameter("bias", bias, layout.num_trivial, x)
    return field_norm(x, weight, bias, layout.tensors_on(x.device), eps, ptr=ptr)[0]
