"""escnn gspaces and field types from the command line's words: ``--group D4 --fields "8*regular+4*trivial"``."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["FIELD_NAMES", "UsageError", "field_type", "gspace"]

#: the representation names ``--fields`` accepts
FIELD_NAMES = "trivial, regular, standard, irrep<i>, irrep(<i>,<j>), quotient<k>, bl_regular<L>"


class UsageError(ValueError):
    """A bad command line or input: eqnorm-check exits with status 2 and this message."""


def gspace(group: str, spatial: int) -> Any:
    """The escnn gspace of ``group`` (``C<N>``, ``D<N>``, ``SO2``, ``O2``, ``SO3``, ``O3``) on ``spatial`` axes."""
    from escnn import group as groups
    from escnn import gspaces

    name = group.upper()
    match = re.fullmatch(r"([CD])(\d+)", name)
    if spatial not in (0, 2, 3):
        raise UsageError(f"--spatial must be 0 (point features), 2 or 3, got {spatial}")
    if match:
        n = int(match.group(2))
        if n < 1:
            raise UsageError(f"group order must be positive, got {group}")
        cyclic = match.group(1) == "C"
        builders = {
            0: lambda: gspaces.no_base_space(groups.cyclic_group(n) if cyclic else groups.dihedral_group(n)),
            2: lambda: gspaces.rot2dOnR2(n) if cyclic else gspaces.flipRot2dOnR2(n),
            3: lambda: gspaces.rot2dOnR3(n) if cyclic else gspaces.dihedralOnR3(n),
        }
        return builders[spatial]()
    continuous = {
        ("SO2", 0): lambda: gspaces.no_base_space(groups.so2_group()),
        ("SO2", 2): lambda: gspaces.rot2dOnR2(-1),
        ("SO2", 3): lambda: gspaces.rot2dOnR3(-1),
        ("O2", 0): lambda: gspaces.no_base_space(groups.o2_group()),
        ("O2", 2): lambda: gspaces.flipRot2dOnR2(-1),
        ("O2", 3): lambda: gspaces.dihedralOnR3(-1),
        ("SO3", 0): lambda: gspaces.no_base_space(groups.so3_group()),
        ("SO3", 3): lambda: gspaces.rot3dOnR3(),
        ("O3", 0): lambda: gspaces.no_base_space(groups.o3_group()),
        ("O3", 3): lambda: gspaces.flipRot3dOnR3(),
    }
    if (name, spatial) not in continuous:
        known = "C<N>, D<N>, SO2, O2 (spatial 0, 2, 3), SO3, O3 (spatial 0, 3)"
        raise UsageError(f"unknown group {group!r} on {spatial} spatial dimensions; known: {known}")
    return continuous[(name, spatial)]()


def _representation(gs: Any, name: str) -> Any:
    G = gs.fibergroup
    if name == "trivial":
        return gs.trivial_repr
    if name == "regular":
        if G.continuous:
            raise UsageError(f"{G.name} is continuous and has no finite regular representation; try bl_regular<L>")
        return gs.regular_repr
    if name == "standard":
        return G.standard_representation
    patterns = {
        r"irrep(\d+)": lambda m: G.irrep(int(m.group(1))),
        r"irrep\(([-\d, ]+)\)": lambda m: G.irrep(*(int(v) for v in m.group(1).split(","))),
        r"quotient(\d+)": lambda m: gs.quotient_repr(
            int(m.group(1)) if G.name.startswith("C") else (None, int(m.group(1)))
        ),
        r"bl_regular(\d+)": lambda m: G.bl_regular_representation(int(m.group(1))),
    }
    for pattern, build in patterns.items():
        match = re.fullmatch(pattern, name)
        if match:
            try:
                return build(match)
            except Exception as error:  # escnn raises assorted errors for ids the group lacks
                raise UsageError(f"{G.name} has no representation {name!r}: {error}") from None
    raise UsageError(f"unknown field name {name!r}; known: {FIELD_NAMES}")


def field_type(gs: Any, fields: str) -> Any:
    """The field type of ``"8*regular+4*trivial"``: a sum of ``k*name`` terms (``k*`` may be left out)."""
    from escnn import nn

    reps = []
    for term in fields.replace(" ", "").split("+"):
        match = re.fullmatch(r"(?:(\d+)\*)?(.+)", term)
        if not term or match is None:
            raise UsageError(f"bad --fields term {term!r} in {fields!r}; write e.g. '8*regular+4*trivial'")
        count = int(match.group(1) or 1)
        reps += count * [_representation(gs, match.group(2))]
    return nn.FieldType(gs, reps)
