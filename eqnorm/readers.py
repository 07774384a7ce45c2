"""Readers: the fields of an escnn ``FieldType`` and of e3nn (or cuEquivariance) irreps, as the arguments of
:class:`~eqnorm.FieldLayout`. Both read the objects by their attributes only, so neither library is imported here."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from .groups import check_num_groups, resolve_groups

__all__ = ["field_type_fields", "irreps_fields"]


def field_type_fields(field_type: Any, num_groups: int | None, group_by: str | Sequence[int]) -> dict[str, Any]:
    """An escnn ``FieldType``'s fields: one per representation, components from ``rep.irreps``, the change of basis of
    each representation, names for messages.

    ``group_by`` is ``"contiguous"`` (``num_groups`` groups of consecutive fields; ``None``:
    :func:`eqnorm.groups.default_num_groups`), ``"representation"`` (one group per distinct representation),
    ``"field"`` (one field per group) or a sequence of group ids, one per field.
    """
    reps = getattr(field_type, "representations", None)
    if reps is None:
        raise TypeError(f"expected an escnn FieldType, got {type(field_type).__name__}")
    group = field_type.fibergroup
    irreps = [list(rep.irreps) for rep in reps]
    dims = {key: group.irrep(*key).size for field in irreps for key in field}
    trivial = {key for key in dims if group.irrep(*key).is_trivial()}
    names = [f"field {i} ({rep.name})" for i, rep in enumerate(reps)]
    check_num_groups(num_groups)
    if group_by == "representation":
        if num_groups is not None:
            raise ValueError("group_by='representation' sets the groups itself; leave num_groups as None")
        groups = [rep.name for rep in reps]
        ids: list[int] = [groups.index(name) for name in groups]
    else:
        ids = resolve_groups([rep.size for rep in reps], num_groups, group_by)
    bases = [rep.change_of_basis for rep in reps]
    return {
        "field_irreps": irreps,
        "irrep_dims": dims,
        "trivial": trivial,
        "groups": ids,
        "change_of_basis": bases,
        "field_names": names,
    }


def irreps_fields(irreps: Any, num_groups: int | None, group_by: str | Sequence[int], layout: str) -> dict[str, Any]:
    """e3nn irreps' fields: every irrep copy is a field; only ``0e`` is trivial.

    ``group_by`` is ``"contiguous"``, ``"field"``, ``"irrep"`` (one group per irrep type, i.e. per degree and
    parity) or one group id per copy. ``layout`` is ``"mul_ir"`` (e3nn) or ``"ir_mul"`` (cuEquivariance: the
    copies of a ``mul x ir`` block interleaved component by component).
    """
    try:
        blocks = [(int(mul), int(ir.l), int(ir.p)) for mul, ir in irreps]
    except (TypeError, AttributeError, ValueError):
        raise TypeError(f"expected e3nn Irreps, got {type(irreps).__name__}") from None
    if layout not in ("mul_ir", "ir_mul"):
        raise ValueError(f"layout must be 'mul_ir' or 'ir_mul', got {layout!r}")
    copies = [(l, p) for mul, l, p in blocks for _ in range(mul)]
    if not copies:
        raise ValueError("irreps must hold at least one irrep copy")
    dims: dict[Hashable, int] = {key: 2 * key[0] + 1 for key in copies}
    names = [f"copy {i} ({l}{'e' if p == 1 else 'o'})" for i, (l, p) in enumerate(copies)]
    check_num_groups(num_groups)
    if group_by == "irrep":
        if num_groups is not None:
            raise ValueError("group_by='irrep' sets the groups itself; leave num_groups as None")
        ids = [sorted(set(copies)).index(key) for key in copies]
    else:
        ids = resolve_groups([dims[key] for key in copies], num_groups, group_by)
    order = None
    if layout == "ir_mul":
        order, offset = [], 0
        for mul, l, _ in blocks:
            d = 2 * l + 1
            order += [offset + m * mul + u for u in range(mul) for m in range(d)]
            offset += mul * d
    return {
        "field_irreps": [[key] for key in copies],
        "irrep_dims": dims,
        "trivial": {(0, 1)},
        "groups": ids,
        "field_names": names,
        "channel_order": order,
    }
