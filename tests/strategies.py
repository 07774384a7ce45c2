"""Random field layouts for property tests: irreps of dims 1-3, random orthogonal bases, random groupings."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from reference import Spec, random_orthogonal

from eqnorm import FieldLayout

#: irrep type -> dimension; "s" is the trivial irrep, "p" a non-trivial 1D irrep (a sign), "v"/"t" 2D/3D irreps.
IRREP_DIMS = {"s": 1, "p": 1, "v": 2, "t": 3}


@st.composite
def specs(draw: st.DrawFn, max_fields: int = 6) -> Spec:
    num_fields = draw(st.integers(1, max_fields))
    field_irreps = [
        draw(st.lists(st.sampled_from(sorted(IRREP_DIMS)), min_size=1, max_size=3)) for _ in range(num_fields)
    ]
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    bases = [random_orthogonal(sum(IRREP_DIMS[k] for k in f), rng) for f in field_irreps]
    num_groups = draw(st.integers(1, num_fields))
    groups = [draw(st.integers(0, num_groups - 1)) for _ in range(num_fields)]
    return Spec(field_irreps, dict(IRREP_DIMS), {"s"}, groups, bases)


def layout_of(spec: Spec, centering: str) -> FieldLayout:
    return FieldLayout(spec.field_irreps, spec.irrep_dims, spec.trivial, spec.groups, spec.bases, centering)


def random_irrep_matrices(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """psi_k(g) for a random element of the largest group these irreps could come from (any orthogonal matrices)."""
    return {"p": -np.eye(1), "v": random_orthogonal(2, rng), "t": random_orthogonal(3, rng)}
