"""``FieldNorm``: equivariant group normalization as a plain ``torch.nn.Module`` on ``(N, C, *spatial)`` tensors."""

from __future__ import annotations

import torch

from .functional import check_eps, field_group_norm
from .layout import FieldLayout

__all__ = ["FieldNorm"]


class FieldNorm(torch.nn.Module):
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
        super().__init__()
        if not isinstance(layout, FieldLayout):
            raise TypeError(f"expected a FieldLayout, got {type(layout).__name__}")
        self.layout = layout
        self.eps = check_eps(eps)
        self.weight: torch.nn.Parameter | None = None
        self.bias: torch.nn.Parameter | None = None
        if affine:
            self.weight = torch.nn.Parameter(torch.ones(layout.num_fields))
            self.bias = torch.nn.Parameter(torch.zeros(layout.num_trivial))

    def forward(self, x: torch.Tensor, ptr: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(N, C, *spatial)``, or ``(positions, C)`` with segment offsets ``ptr``."""
        return field_group_norm(x, self.layout, self.weight, self.bias, self.eps, ptr=ptr)

    def extra_repr(self) -> str:
        return f"{self.layout}, eps={self.eps}, affine={self.weight is not None}"
