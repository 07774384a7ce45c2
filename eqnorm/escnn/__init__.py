"""eqnorm's layers for escnn: equivariant group, layer and instance normalization of ``GeometricTensor`` inputs."""

from .._optional import ESCNN_EXTRA, escnn_available

if not escnn_available():
    raise ImportError(f"eqnorm's escnn layers need escnn, which is not installed: {ESCNN_EXTRA}")

from ..batch_norm import convert_sync_batchnorm
from ._batch_norm import FieldBatchNorm
from ._equivariance import equivariance_errors, grid_elements, is_grid_symmetry, random_input, sample_elements
from ._group_norm import FieldGroupNorm, FieldInstanceNorm, FieldLayerNorm
from ._sklearn_compat import patch_randomized_svd

patch_randomized_svd()  # escnn's null spaces fail with scikit-learn >= 1.2 otherwise (see _sklearn_compat)

__all__ = [
    "FieldBatchNorm",
    "FieldGroupNorm",
    "FieldInstanceNorm",
    "FieldLayerNorm",
    "convert_sync_batchnorm",
    "equivariance_errors",
    "grid_elements",
    "is_grid_symmetry",
    "random_input",
    "sample_elements",
]
