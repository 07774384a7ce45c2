"""escnn with scikit-learn 1.2 or later: pass escnn's null-space SVD an array, not an ``np.matrix``.

When scikit-learn is installed, escnn computes null spaces (restrictions of irreps of groups such as
``fullCylindricalOnR3``) with ``sklearn.utils.extmath.randomized_svd`` on an ``np.matrix``, which scikit-learn 1.2 and
later refuse with ``TypeError: np.matrix is not supported`` (escnn issue #112). The same SVD of ``np.asarray(M)`` is
what escnn computes with older scikit-learn, so wrapping the call changes nothing else.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from escnn.group import _numerical


def patch_randomized_svd() -> None:
    """Make escnn convert its matrix to an array before scikit-learn's ``randomized_svd`` (idempotent)."""
    svd = getattr(_numerical, "randomized_svd", None)
    if svd is None or getattr(svd, "eqnorm_asarray", False):
        return

    def randomized_svd(matrix: Any, *args: Any, **kwargs: Any) -> Any:
        return svd(np.asarray(matrix), *args, **kwargs)

    randomized_svd.eqnorm_asarray = True  # type: ignore[attr-defined]
    _numerical.randomized_svd = randomized_svd
