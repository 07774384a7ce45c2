"""``FieldLayout``: how the channels of a feature tensor split into fields, irreducible components and normalization
groups. The layout is the only object built from representations; its operators (:mod:`eqnorm.operators`) are what
the functional code and the op read, its groups come from :mod:`eqnorm.groups`, and :mod:`eqnorm.readers` builds it
from escnn field types and e3nn irreps.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .groups import check_num_groups, contiguous_groups, default_num_groups, dense_group_ids, resolve_groups
from .operators import DenseOperators, IndexTensors, build_index, dense_operators, tensors_on
from .readers import field_type_fields, irreps_fields

__all__ = [
    "CENTERINGS",
    "NORMALIZATIONS",
    "DenseOperators",
    "FieldLayout",
    "IndexTensors",
    "check_num_groups",
    "contiguous_groups",
    "default_num_groups",
    "resolve_groups",
]

CENTERINGS = ("trivial", "all", "none")
NORMALIZATIONS = ("component", "norm")

#: Largest ``max |Q Q^T - I|`` accepted for a change of basis; escnn's bases are orthogonal to ~1e-15.
ORTHOGONALITY_TOLERANCE = 1e-8


class FieldLayout:
    r"""Fields, their irreducible components and their normalization groups, precomputed once.

    Channel ``c`` of the input belongs to field ``i``, whose representation is
    :math:`\rho_i(g) = Q_i \left(\bigoplus_k \psi_k(g)\right) Q_i^\top` with orthogonal :math:`Q_i`. Every field belongs
    to exactly one group :math:`\gamma`. The layout precomputes the linear centering operator
    :math:`\mathrm{cen} = K m` (docs/theory.rst):

    - ``"trivial"``: :math:`K` averages, within each group, the coordinates of :math:`Q_i^\top m_i` on trivial irreps
      and maps the mean back with :math:`Q_i`;
    - ``"all"``: the same for every irrep type, coordinate by coordinate (copies of one irrep share one basis);
    - ``"none"``: :math:`K = 0`.

    :math:`K` commutes with :math:`\bigoplus_i \rho_i(g)`, which is what makes the normalization equivariant.

    Parameters
    ----------
    field_irreps
        For each field, the irrep type (any hashable id) of each irreducible component, in the order of the irrep basis.
    irrep_dims
        Dimension of each irrep type.
    trivial
        The irrep types that are trivial (invariant): the only ones centered by ``"trivial"`` and given a bias.
    groups
        Group id of each field (any integers; relabelled ``0..G-1`` in order of first appearance).
    change_of_basis
        For each field, its orthogonal :math:`Q_i` (``None`` for the identity). Non-orthogonal matrices are refused.
    channel_order
        Where the fields' channels sit in the tensor when they are not consecutive: tensor channel
        ``channel_order[c]`` holds channel ``c`` of the fields laid end to end (e.g. cuEquivariance's ``ir_mul``).
    centering
        ``"trivial"``, ``"all"`` or ``"none"``.
    normalization
        ``"component"``: :math:`\sigma^2` is the mean square per channel (divided by :math:`D_\gamma`, the group's
        channels); ``"norm"``: per field (divided by :math:`F_\gamma`, the group's fields), as e3nn's
        ``BatchNorm(normalization="norm")``, so a field of dimension :math:`d` has :math:`d` times the variance.
    field_names
        Optional names used in error messages.

    Examples
    --------
    Two 2-dimensional vector fields and one scalar in one group:

    >>> layout = FieldLayout([["vec"], ["vec"], ["s"]], {"vec": 2, "s": 1}, trivial={"s"}, groups=[0, 0, 0])
    >>> layout.num_channels, layout.num_fields, layout.num_groups, layout.num_trivial
    (5, 3, 1, 1)
    """

    def __init__(
        self,
        field_irreps: Sequence[Sequence[Hashable]],
        irrep_dims: Mapping[Hashable, int],
        trivial: Collection[Hashable],
        groups: Sequence[int],
        change_of_basis: Sequence[Any | None] | None = None,
        centering: str = "trivial",
        field_names: Sequence[str] | None = None,
        channel_order: Sequence[int] | None = None,
        normalization: str = "component",
    ) -> None:
        self.centering = check_choice("centering", centering, CENTERINGS)
        self.normalization = check_choice("normalization", normalization, NORMALIZATIONS)
        if len(field_irreps) == 0:
            raise ValueError("a layout needs at least one field")
        self.field_irreps = [tuple(irreps) for irreps in field_irreps]
        self.field_names = (
            list(field_names) if field_names is not None else [f"field {i}" for i in range(self.num_fields)]
        )
        self.irrep_dims = dict(irrep_dims)
        self.trivial = frozenset(trivial)
        check_irreps(self.field_names, self.field_irreps, self.irrep_dims, self.trivial)
        self.field_sizes = [sum(self.irrep_dims[k] for k in irreps) for irreps in self.field_irreps]
        self.num_channels = sum(self.field_sizes)
        self.groups = dense_group_ids(groups, self.num_fields)
        self.bases = orthogonal_bases(self.field_names, self.field_sizes, change_of_basis)
        self.channel_order = None if channel_order is None else permutation(channel_order, self.num_channels)
        self._float64 = dense_operators(self)
        self._operators: dict[tuple[torch.dtype, torch.device], DenseOperators] = {}
        # built eagerly, on the CPU: modules register them as buffers, and nothing traced ever fills a cache
        self.tensors = build_index(self)
        self._device_tensors: dict[torch.device, IndexTensors] = {}

    @property
    def num_fields(self) -> int:
        return len(self.field_irreps)

    @property
    def num_groups(self) -> int:
        return max(self.groups) + 1

    @property
    def num_trivial(self) -> int:
        """Number of trivial irrep copies, i.e. of bias parameters."""
        return sum(key in self.trivial for irreps in self.field_irreps for key in irreps)

    @classmethod
    def from_field_type(
        cls,
        field_type: Any,
        num_groups: int | None = None,
        group_by: str | Sequence[int] = "contiguous",
        **options: Any,
    ) -> FieldLayout:
        """Layout of an escnn ``FieldType`` (:func:`eqnorm.readers.field_type_fields`); ``options`` (``centering``,
        ``normalization``) as the constructor takes them."""
        return cls(**field_type_fields(field_type, num_groups, group_by), **options)

    @classmethod
    def from_irreps(
        cls,
        irreps: Any,
        num_groups: int | None = None,
        group_by: str | Sequence[int] = "contiguous",
        layout: str = "mul_ir",
        **options: Any,
    ) -> FieldLayout:
        """Layout of e3nn (or cuEquivariance, ``layout="ir_mul"``) irreps (:func:`eqnorm.readers.irreps_fields`);
        ``options`` (``centering``, ``normalization``) as the constructor takes them."""
        return cls(**irreps_fields(irreps, num_groups, group_by, layout), **options)

    @classmethod
    def scalars(cls, num_channels: int, num_groups: int, centering: str = "trivial") -> FieldLayout:
        """``num_channels`` trivial fields in ``num_groups`` contiguous groups: ``torch.nn.GroupNorm``'s layout."""
        return cls([[0]] * num_channels, {0: 1}, {0}, contiguous_groups(num_channels, num_groups), centering=centering)

    def tensors_on(self, device: torch.device | str) -> IndexTensors:
        """:attr:`tensors` on ``device``, copied once per device (modules hold them as buffers instead)."""
        return tensors_on(self.tensors, torch.device(device), self._device_tensors)

    def operators(self, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> DenseOperators:
        """The dense operators of this layout (see :class:`DenseOperators`), built once per dtype and device."""
        key = (dtype, torch.device(device))
        if key not in self._operators:
            self._operators[key] = self._float64.to(*key)
        return self._operators[key]

    def __repr__(self) -> str:
        norm = "" if self.normalization == "component" else f", normalization={self.normalization!r}"
        return (
            f"FieldLayout(channels={self.num_channels}, fields={self.num_fields}, groups={self.num_groups}, "
            f"centering={self.centering!r}{norm})"
        )


def check_choice(name: str, value: str, allowed: Sequence[str]) -> str:
    """``value``, or ``ValueError`` naming the option unless it is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_irreps(
    names: Sequence[str],
    field_irreps: Sequence[Sequence[Hashable]],
    irrep_dims: Mapping[Hashable, int],
    trivial: Collection[Hashable],
) -> None:
    """``ValueError`` naming the field or irrep unless every field has components, every irrep a positive integer
    dimension, and every trivial irrep dimension 1."""
    for name, irreps in zip(names, field_irreps, strict=False):
        if not irreps:
            raise ValueError(f"{name} has no irreducible component; every field needs at least one")
        for key in irreps:
            if key not in irrep_dims:
                raise ValueError(f"irrep {key!r} has no entry in irrep_dims")
    for key, dim in irrep_dims.items():
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"irrep {key!r} must have a positive integer dimension, got {dim!r}")
    for key in trivial:
        if key in irrep_dims and irrep_dims[key] != 1:
            raise ValueError(f"trivial irrep {key!r} must have dimension 1, got {irrep_dims[key]}")


def permutation(order: Sequence[int], size: int) -> np.ndarray:
    """``order`` as an int64 array, or ``ValueError`` unless it is a permutation of ``range(size)``."""
    array = np.asarray(order, dtype=np.int64)
    if sorted(array.tolist()) != list(range(size)):
        raise ValueError(f"channel_order must be a permutation of range({size})")
    return array


def orthogonal_bases(
    names: Sequence[str], sizes: Sequence[int], change_of_basis: Sequence[Any | None] | None
) -> list[np.ndarray]:
    r"""Each field's change of basis :math:`Q_i` as a float64 array (the identity for ``None``), or ``ValueError``
    naming the field unless :math:`\max|Q_i Q_i^\top - I| \le` ``ORTHOGONALITY_TOLERANCE``."""
    if change_of_basis is None:
        change_of_basis = [None] * len(names)
    if len(change_of_basis) != len(names):
        raise ValueError(f"{len(change_of_basis)} change-of-basis matrices given for {len(names)} fields")
    bases = []
    for name, size, q in zip(names, sizes, change_of_basis, strict=True):
        q = np.eye(size) if q is None else np.asarray(q, dtype=np.float64)
        if q.shape != (size, size):
            raise ValueError(f"{name}: change of basis has shape {q.shape}, expected {(size, size)}")
        err = float(np.abs(q @ q.T - np.eye(size)).max())
        if not err <= ORTHOGONALITY_TOLERANCE:
            raise ValueError(
                f"{name}: its change of basis is not orthogonal (max |Q Q^T - I| = {err:.2e}); eqnorm needs an "
                "orthogonal representation so that the norm of a field is invariant"
            )
        bases.append(q)
    return bases
