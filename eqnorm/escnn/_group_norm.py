"""escnn modules: ``FieldGroupNorm`` and its two special cases, ``FieldLayerNorm`` and ``FieldInstanceNorm``."""

from __future__ import annotations

from collections.abc import Sequence

from escnn.nn import FieldType

from ..layout import FieldLayout
from ..module import FieldNorm
from ._field_module import FieldModule, check_field_type

__all__ = ["FieldGroupNorm", "FieldInstanceNorm", "FieldLayerNorm"]


class FieldGroupNorm(FieldModule):
    r"""Equivariant group normalization of an escnn field type: statistics per sample over groups of whole fields.

    For sample :math:`n`, group :math:`\gamma` of fields and channel :math:`c` of field :math:`i` in :math:`\gamma`,
    over all :math:`P` positions:

    .. math::

        y_{ncp} = \frac{w_i}{\sqrt{\sigma^2_{n\gamma} + \epsilon}}\,(x_{ncp} - \mathrm{cen}_{nc}) + b_c, \qquad
        \sigma^2_{n\gamma} = \frac{1}{P D_\gamma} \sum_{c\in\gamma}\sum_p (x_{ncp} - \mathrm{cen}_{nc})^2 .

    With ``centering="trivial"``, :math:`\mathrm{cen}` is the mean, over the group's fields and positions, of the
    components of :math:`Q_i^\top x_i` on trivial irreps, mapped back with :math:`Q_i` (``"all"`` averages the copies of
    every irrep type; ``"none"`` does not center). :math:`w_i` is one weight per field and :math:`b` lives on the
    trivial irreps only.

    **Why it is equivariant.** Under :math:`x_i \mapsto \rho_i(g) x_i` the centering, a projection onto isotypic
    components averaged over copies, commutes with :math:`\rho(g)`, so :math:`x_i - \mathrm{cen}_i` transforms by the
    orthogonal :math:`\rho_i(g)` and its squared norm, hence :math:`\sigma^2`, is invariant. Any permutation of the
    positions (a 90-degree rotation of the grid) leaves the spatial sums unchanged. So :math:`y` transforms like
    :math:`x`. Gradients flow through the statistics.

    Parameters
    ----------
    in_type
        The field type of the input (and output).
    num_groups
        Number of groups with ``group_by="contiguous"``; must divide the number of fields. ``None``: whole fields with
        about 16 channels per group, at most 32 groups (:func:`eqnorm.layout.default_num_groups`).
    group_by
        ``"contiguous"``, ``"representation"`` (one group per distinct representation), or one group id per field.
    centering
        ``"trivial"``, ``"all"`` or ``"none"``.
    eps
        Added to the variance.
    affine
        Learn a weight per field (init 1) and a bias per trivial irrep copy (init 0).
    bias
        With ``affine``, learn the bias too.

    Examples
    --------
    >>> import torch
    >>> from escnn import gspaces, nn
    >>> gs = gspaces.rot2dOnR2(8)
    >>> ft = nn.FieldType(gs, 4 * [gs.regular_repr] + 2 * [gs.trivial_repr])
    >>> norm = FieldGroupNorm(ft, num_groups=3)
    >>> norm(nn.GeometricTensor(torch.randn(2, ft.size, 7, 7), ft)).shape
    torch.Size([2, 34, 7, 7])
    """

    norm: FieldNorm

    def __init__(
        self,
        in_type: FieldType,
        num_groups: int | None = None,
        *,
        group_by: str | Sequence[int] = "contiguous",
        centering: str = "trivial",
        eps: float = 1e-5,
        affine: bool = True,
        bias: bool = True,
    ) -> None:
        check_field_type(in_type)
        super().__init__()
        self.in_type = in_type
        self.out_type = in_type
        layout = FieldLayout.from_field_type(in_type, num_groups, group_by, centering=centering)
        self.norm = FieldNorm(layout, eps, affine, bias)


class FixedGroupsNorm(FieldGroupNorm):
    """A :class:`FieldGroupNorm` whose class fixes the groups (``grouping``: ``num_groups`` and ``group_by``)."""

    grouping: tuple[int | None, str]

    def __init__(
        self,
        in_type: FieldType,
        *,
        centering: str = "trivial",
        eps: float = 1e-5,
        affine: bool = True,
        bias: bool = True,
    ) -> None:
        num_groups, group_by = self.grouping
        super().__init__(in_type, num_groups, group_by=group_by, centering=centering, eps=eps, affine=affine, bias=bias)


class FieldLayerNorm(FixedGroupsNorm):
    r"""Equivariant layer normalization: :class:`FieldGroupNorm` with all fields in one group.

    .. math:: y_{ncp} = \frac{w_i}{\sqrt{\sigma^2_n + \epsilon}}\,(x_{ncp} - \mathrm{cen}_{nc}) + b_c,
              \qquad \sigma^2_n = \frac{1}{PC}\sum_{c,p} (x_{ncp} - \mathrm{cen}_{nc})^2
    """

    grouping = (1, "contiguous")


class FieldInstanceNorm(FixedGroupsNorm):
    r"""Equivariant instance normalization: :class:`FieldGroupNorm` with one field per group.

    .. math:: y_{ncp} = \frac{w_i}{\sqrt{\sigma^2_{ni} + \epsilon}}\,(x_{ncp} - \mathrm{cen}_{nc}) + b_c,
              \qquad \sigma^2_{ni} = \frac{1}{P d_i}\sum_{c \in i,\,p} (x_{ncp} - \mathrm{cen}_{nc})^2
    """

    grouping = (None, "field")
