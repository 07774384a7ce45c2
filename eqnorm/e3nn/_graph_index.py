"""``GraphIndex``: the graph index of a batch, shared with per-graph norms inside blocks that are not given it."""

from __future__ import annotations

import torch

__all__ = ["GraphIndex"]


class GraphIndex(torch.nn.Module):
    r"""The graph of each node of the batch a model is called on, for the per-graph norms of blocks whose forward
    does not receive it (MACE's product blocks see ``(node_feats, sc, node_attrs)`` only).

    Build one, give it to every such norm (``IrrepsGroupNorm(..., over="graph", graph_index=index)``), and call
    :meth:`set` with the batch's ``batch`` (sorted, as PyTorch Geometric makes it) and number of graphs before each
    call of the model; the norms then pool their statistics per graph,
    :math:`\sigma^2_{g\gamma} = \frac{1}{P_g D_\gamma}\sum_{p \in g} \dots`, exactly as if given ``batch`` themselves.
    Until :meth:`set` is called (or after :meth:`clear`) the norms treat their whole input as one graph, which is what
    a model handed one configuration (MACE's LAMMPS export) needs.

    The index is a non-persistent buffer: it moves with ``.to()`` and stays out of checkpoints.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("batch", torch.zeros(0, dtype=torch.long), persistent=False)
        self.num_graphs = 0  # 0: not set

    @torch.jit.export
    def set(self, batch: torch.Tensor, num_graphs: int) -> None:
        """The graph id of every node, ``(num_nodes,)`` int64 sorted, and the number of graphs."""
        if batch.dim() != 1 or batch.dtype != torch.long:
            raise ValueError("eqnorm: GraphIndex.set expects batch as a 1D int64 tensor of graph ids")
        if num_graphs < 1:
            raise ValueError("eqnorm: GraphIndex.set expects num_graphs >= 1")
        self.batch = batch
        self.num_graphs = num_graphs

    @torch.jit.export
    def clear(self) -> None:
        """Forget the index: the norms treat their whole input as one graph again."""
        self.batch = torch.zeros(0, dtype=torch.long, device=self.batch.device)
        self.num_graphs = 0

    def extra_repr(self) -> str:
        return f"num_graphs={self.num_graphs}" if self.num_graphs else "not set"
