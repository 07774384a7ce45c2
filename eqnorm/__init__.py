"""eqnorm: equivariant normalization layers (group, layer, instance norm) for escnn and e3nn networks.

Importing ``eqnorm`` imports neither escnn nor e3nn: the escnn layers (``eqnorm.FieldGroupNorm`` and friends) import
escnn the first time they are used.
"""

from typing import TYPE_CHECKING, Any

from . import functional
from ._ops import kernel_backend
from .batch_norm import convert_sync_batchnorm
from .convert import Replacement, convert_norms
from .layout import FieldLayout
from .module import FieldNorm

if TYPE_CHECKING:
    from .escnn import FieldBatchNorm, FieldGroupNorm, FieldInstanceNorm, FieldLayerNorm

__version__ = "0.1.0"

__all__ = [
    "FieldBatchNorm",
    "FieldGroupNorm",
    "FieldInstanceNorm",
    "FieldLayerNorm",
    "FieldLayout",
    "FieldNorm",
    "Replacement",
    "__version__",
    "convert_norms",
    "convert_sync_batchnorm",
    "functional",
    "kernel_backend",
]

_ESCNN_LAYERS = ("FieldBatchNorm", "FieldGroupNorm", "FieldInstanceNorm", "FieldLayerNorm")


def __getattr__(name: str) -> Any:
    if name in _ESCNN_LAYERS:
        from . import escnn

        return getattr(escnn, name)
    raise AttributeError(f"module 'eqnorm' has no attribute {name!r}")
