"""How fields are put in normalization groups: the default count, contiguous groups, explicit group ids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["check_num_groups", "contiguous_groups", "default_num_groups", "dense_group_ids", "resolve_groups"]


def default_num_groups(field_sizes: Sequence[int]) -> int:
    r"""The number of groups ``num_groups=None`` picks: whole fields, about 16 channels per group, at most 32 groups.

    Wu & He found group normalization flat between about 8 and 32 groups, and 16 channels per group a good choice;
    here a group is made of whole fields, so this is the largest divisor of the number of fields :math:`F` not above
    :math:`\min(32, \operatorname{round}(C / 16))` (at least 1), with :math:`C` the channels.

    >>> default_num_groups([8] * 16)  # 16 C8 regular fields, 128 channels: 8 groups of 2 fields (16 channels)
    8
    >>> default_num_groups([3] * 10)  # 10 vectors, 30 channels: 2 groups of 5 (15 channels)
    2
    """
    target = max(1, min(32, round(sum(field_sizes) / 16)))
    return max(d for d in range(1, target + 1) if len(field_sizes) % d == 0)


def check_num_groups(num_groups: Any) -> None:
    """``ValueError`` unless ``num_groups`` is None or a positive integer."""
    if num_groups is None:
        return
    if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)) or num_groups <= 0:
        raise ValueError(
            f"num_groups must be a positive integer (a number of groups of whole fields), got {num_groups!r}"
        )


def contiguous_groups(num_fields: int, num_groups: int) -> list[int]:
    """Group index of each field when ``num_groups`` groups take consecutive, equally many fields.

    >>> contiguous_groups(6, 3)
    [0, 0, 1, 1, 2, 2]
    """
    check_num_groups(num_groups)
    if num_groups is None:
        raise ValueError("contiguous groups need num_groups")
    if num_fields % num_groups:
        raise ValueError(
            f"num_groups={num_groups} does not divide the {num_fields} fields; groups are made of whole fields, "
            "so choose a divisor of the number of fields, or group by 'representation' (escnn), 'irrep' (e3nn) or a "
            "list of group ids"
        )
    per_group = num_fields // num_groups
    return [i // per_group for i in range(num_fields)]


def dense_group_ids(groups: Sequence[int], num_fields: int) -> list[int]:
    """Relabel arbitrary integer group ids to ``0..G-1`` in order of first appearance."""
    ids = list(groups)
    if len(ids) != num_fields:
        raise ValueError(f"group_by lists {len(ids)} group ids but the layout has {num_fields} fields")
    if not all(isinstance(g, (int, np.integer)) and not isinstance(g, bool) for g in ids):
        raise ValueError(f"group ids must be integers, got {ids!r}")
    relabel: dict[int, int] = {}
    return [relabel.setdefault(int(g), len(relabel)) for g in ids]


def resolve_groups(field_sizes: Sequence[int], num_groups: int | None, group_by: str | Sequence[int]) -> list[int]:
    """Group id of each field for ``group_by`` in ``"contiguous"`` (``num_groups`` None: :func:`default_num_groups`),
    ``"field"`` or an explicit sequence of ids; a ``num_groups`` that contradicts ``group_by`` is refused."""
    check_num_groups(num_groups)
    num_fields = len(field_sizes)
    if isinstance(group_by, str):
        if group_by == "contiguous":
            return contiguous_groups(num_fields, default_num_groups(field_sizes) if num_groups is None else num_groups)
        if group_by == "field":
            if num_groups is not None and num_groups != num_fields:
                raise ValueError(
                    f"group_by='field' makes one group per field ({num_fields} groups) but num_groups={num_groups}; "
                    "leave num_groups as None or use group_by='contiguous'"
                )
            return list(range(num_fields))
        raise ValueError(
            f"group_by must be 'contiguous', 'representation', 'field' or a sequence of group ids, got {group_by!r}"
        )
    ids = dense_group_ids(group_by, num_fields)
    if num_groups is not None and num_groups != max(ids) + 1:
        raise ValueError(f"num_groups={num_groups} but group_by names {max(ids) + 1} distinct groups")
    return ids
