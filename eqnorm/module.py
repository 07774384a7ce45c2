"""``FieldNorm``: equivariant group normalization as a plain ``torch.nn.Module`` on ``(N, C, *spatial)`` tensors, and
``LayoutModule``, the base that holds a layout's tensors as buffers."""

from __future__ import annotations

from typing import Any

import torch

from .functional import check_eps, check_input, field_norm
from .layout import FieldLayout, LayoutTensors

__all__ = ["FieldNorm", "LayoutModule"]

_LAYOUT_KEYS = tuple(f"layout_{name}" for name in LayoutTensors._fields)


class LayoutModule(torch.nn.Module):
    r"""A module over the fields of a :class:`~eqnorm.FieldLayout`: its :class:`~eqnorm.layout.LayoutTensors` are
    non-persistent buffers (they move with ``.to()``, ``torch.export`` sees them as buffers, checkpoints do not carry
    them), and the parameters ``weight`` ``(F,)`` (init 1) and ``bias`` ``(T,)`` (init 0), or constant buffers of
    ones and zeros when not ``affine``.

    The floating layout entries stay float64 whatever ``.to(dtype)``, ``.half()`` or ``.double()`` do to the module:
    the ops read them in the accumulation dtype of the input.
    """

    weight: torch.nn.Parameter | None
    bias: torch.nn.Parameter | None
    unit_weight: torch.Tensor
    zero_bias: torch.Tensor

    def __init__(self, layout: FieldLayout, eps: float, affine: bool) -> None:
        super().__init__()
        if not isinstance(layout, FieldLayout):
            raise TypeError(f"expected a FieldLayout, got {type(layout).__name__}")
        self.layout = layout
        self.eps = check_eps(eps)
        for name, tensor in zip(LayoutTensors._fields, layout.tensors, strict=True):
            self.register_buffer(f"layout_{name}", tensor.clone(), persistent=False)
        if affine:
            self.weight = torch.nn.Parameter(torch.ones(layout.num_fields))
            self.bias = torch.nn.Parameter(torch.zeros(layout.num_trivial))
        else:
            self.weight = self.bias = None
            self.register_buffer("unit_weight", torch.ones(layout.num_fields), persistent=False)
            self.register_buffer("zero_bias", torch.zeros(layout.num_trivial), persistent=False)

    @property
    def layout_tensors(self) -> LayoutTensors:
        buffers = self._buffers  # straight from the dict: this runs on every call
        return LayoutTensors._make([buffers[key] for key in _LAYOUT_KEYS])

    def parameters_or_constants(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weight, bias)`` as the op takes them."""
        params = self._parameters  # straight from the dicts, as layout_tensors: this runs on every call
        weight, bias = params.get("weight"), params.get("bias")
        if weight is None or bias is None:
            return self._buffers["unit_weight"], self._buffers["zero_bias"]  # type: ignore[return-value]
        return weight, bias

    def _apply(self, fn: Any, recurse: bool = True) -> LayoutModule:
        super()._apply(fn, recurse)
        for name, master in zip(LayoutTensors._fields, self.layout.tensors, strict=True):
            current = getattr(self, f"layout_{name}")
            if current.dtype != master.dtype:
                setattr(self, f"layout_{name}", master.to(current.device))
        return self


class FieldNorm(LayoutModule):
    r"""Group normalization over the fields of a :class:`~eqnorm.FieldLayout`, on plain tensors.

    .. math::

        y_{ncp} = \frac{w_{\mathrm{field}(c)}}{\sqrt{\sigma^2_{n\gamma(c)} + \epsilon}}
                  \left(x_{ncp} - \mathrm{cen}_{nc}\right) + b_c

    with :math:`\mathrm{cen}` and :math:`\sigma^2` as in :func:`eqnorm.functional.field_group_norm`. This is what the
    escnn and e3nn layers compute and what their ``export()`` returns; it holds no escnn or e3nn object.

    Parameters
    ----------
    layout
        Fields, irreps and groups.
    eps
        Added to the variance.
    affine
        Learn ``weight`` ``(num_fields,)`` (init 1) and ``bias`` ``(num_trivial,)`` (init 0).

    Examples
    --------
    >>> norm = FieldNorm(FieldLayout.scalars(8, num_groups=2))
    >>> norm(torch.randn(2, 8, 4, 4)).shape
    torch.Size([2, 8, 4, 4])
    """

    def __init__(self, layout: FieldLayout, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(layout, eps, affine)

    def forward(self, x: torch.Tensor, ptr: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(N, C, *spatial)``, or ``(positions, C)`` with segment offsets ``ptr``."""
        check_input(x, self.layout)
        weight, bias = self.parameters_or_constants()
        return field_norm(x, weight, bias, self.layout_tensors, self.eps, ptr=ptr)[0]

    def extra_repr(self) -> str:
        return f"{self.layout}, eps={self.eps}, affine={self.weight is not None}"
