"""eqnorm's layers for e3nn: equivariant group and layer normalization per node, per point cloud and per graph."""

from ._group_norm import IrrepsGroupNorm, IrrepsLayerNorm, segment_offsets

__all__ = ["IrrepsGroupNorm", "IrrepsLayerNorm", "segment_offsets"]
