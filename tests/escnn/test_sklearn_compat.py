"""escnn's numerical null space works with scikit-learn 1.2+ once eqnorm.escnn is imported (escnn issue #112)."""

import numpy as np
import pytest

pytest.importorskip("sklearn")
from escnn.group import _numerical

import eqnorm.escnn  # noqa: F401  (applies the patch)


def test_null_space_of_a_matrix_goes_through_scikit_learn():
    assert _numerical.randomized_svd is not None  # escnn found scikit-learn, so this path is the one taken
    a = np.matrix([[1.0, 1.0], [1.0, 1.0], [2.0, 2.0]])  # rank 1; null space: (1, -1) / sqrt(2)
    basis = _numerical.null(a, use_sparse=False)
    assert basis.shape == (2, 1)
    assert np.allclose(np.asarray(a) @ basis, 0, atol=1e-12)
    assert np.allclose(np.abs(basis[:, 0]), [2**-0.5, 2**-0.5], atol=1e-12)


def test_the_patch_is_idempotent():
    from eqnorm.escnn._sklearn_compat import patch_randomized_svd

    first = _numerical.randomized_svd
    patch_randomized_svd()
    assert _numerical.randomized_svd is first
