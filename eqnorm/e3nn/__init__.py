"""eqnorm's layers for e3nn: equivariant group and layer norm per node, point cloud or graph, and batch norm."""

from ._batch_norm import IrrepsBatchNorm
from ._graph_index import GraphIndex
from ._group_norm import IrrepsGroupNorm, IrrepsLayerNorm, segment_offsets

__all__ = ["GraphIndex", "IrrepsBatchNorm", "IrrepsGroupNorm", "IrrepsLayerNorm", "segment_offsets"]
