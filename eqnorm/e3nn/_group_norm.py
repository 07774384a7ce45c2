"""e3nn modules: ``IrrepsGroupNorm`` and ``IrrepsLayerNorm`` per node, per point cloud and per graph."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from e3nn.util.jit import compile_mode

from .._pure_kernels import check_ptr, is_tracing
from ..layout import FieldLayout
from ..module import FieldNorm
from ._graph_index import GraphIndex
from ._irreps import IrrepsModule, check_features, parse_irreps

__all__ = ["IrrepsGroupNorm", "IrrepsLayerNorm"]

OVER = ("node", "points", "graph")


def segment_offsets(
    num_nodes: int,
    batch: torch.Tensor | None,
    ptr: torch.Tensor | None,
    device: torch.device,
    num_graphs: int | None = None,
) -> torch.Tensor:
    r"""``ptr`` (graph ``n`` owns nodes ``ptr[n]:ptr[n+1]``) from PyTorch Geometric's ``batch`` or ``ptr``:
    :math:`\mathrm{ptr}_n = |\{i : \mathrm{batch}_i < n\}|`.

    ``batch`` must be sorted (nodes grouped by graph, as PyTorch Geometric's loaders produce); an unsorted ``batch``
    is refused rather than silently regrouped. With ``num_graphs`` (PyTorch Geometric's ``num_graphs``/``dim_size``)
    the offsets have a size known in advance, so ``torch.compile(fullgraph=True)`` and ``torch.export`` need no
    data-dependent size, and the op ``eqnorm::segment_offsets`` checks ``batch`` when the code runs, eager, compiled
    or scripted (a ``RuntimeError``; the pure-PyTorch kernel where the compiled one is missing); without it, the
    check is a ``ValueError`` in eager code, and graphs with no node are skipped (they own no output), which costs
    memory in proportion to the nodes, never to the largest graph id. Neither given: one graph.
    """
    if batch is not None and ptr is not None:
        raise ValueError("give batch or ptr, not both")
    if num_graphs is not None:
        if isinstance(num_graphs, bool) or not isinstance(num_graphs, (int, torch.SymInt)):
            raise TypeError(f"num_graphs must be an int, got {type(num_graphs).__name__}")
        if num_graphs < 0:
            raise ValueError(f"num_graphs must be non-negative, got {num_graphs}")
    if ptr is None and batch is None:
        return torch.tensor([0, num_nodes], device=device)
    if ptr is not None:
        if num_graphs is not None and ptr.shape != (num_graphs + 1,):
            raise ValueError(f"ptr holds {ptr.shape[0] - 1} graphs but num_graphs is {num_graphs}")
        check_ptr(ptr, num_nodes)
        return ptr
    assert batch is not None
    if batch.shape != (num_nodes,) or batch.dtype != torch.long:
        raise ValueError(f"batch must be {num_nodes} int64 graph indices, got shape {tuple(batch.shape)} {batch.dtype}")
    if num_graphs is not None:
        return torch.ops.eqnorm.segment_offsets(batch, num_graphs)  # checks batch itself, compiled or not
    if not is_tracing(batch) and num_nodes:  # data checks need real values: not under compile, export or make_fx
        if bool((batch.diff() < 0).any()) or int(batch[0]) < 0:
            raise ValueError("batch must be sorted and non-negative (nodes grouped by graph); sort the nodes first")
    counts = torch.unique_consecutive(batch, return_counts=True)[1]
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


@compile_mode("script")  # e3nn.util.jit.compile scripts it; MACE's LAMMPS export goes through TorchScript
class IrrepsGroupNorm(IrrepsModule):
    r"""Equivariant group normalization of e3nn features: every irrep copy is a field, groups are made of copies.

    For a group :math:`\gamma` of copies, over the positions :math:`p` the statistics pool (the channels of one node,
    the points of one cloud, or the nodes of one graph):

    .. math::

        y_{pc} = \frac{w_{i(c)}}{\sqrt{\sigma^2_\gamma + \epsilon}}\,(x_{pc} - \mu_c) + b_c, \qquad
        \sigma^2_\gamma = \frac{1}{P D_\gamma} \sum_{c\in\gamma}\sum_p (x_{pc} - \mu_c)^2,

    with :math:`\mu` the mean of the group's ``0e`` channels (``centering="trivial"``; ``"all"`` also averages the
    copies of every other irrep type, ``"none"`` does not center), one weight per copy and a bias on ``0e`` only.
    Rotations and inversion act on each copy by an orthogonal Wigner matrix (a sign for ``0o``), which leaves
    :math:`\sigma^2` unchanged and commutes with the averaging of copies, so the layer is O(3)-equivariant.

    Parameters
    ----------
    irreps
        The e3nn irreps of the input (and output).
    num_groups
        Number of groups with ``group_by="contiguous"``; must divide the number of copies. ``None``: whole copies with
        about 16 channels per group, at most 32 groups (:func:`eqnorm.layout.default_num_groups`).
    group_by
        ``"contiguous"``, ``"irrep"`` (one group per irrep type: per-degree-and-parity statistics), ``"field"`` (one
        copy per group) or one group id per copy.
    over
        ``"node"``: ``x`` ``(..., dim)``, statistics per node. ``"points"``: ``x`` ``(B, points, dim)``, statistics per
        cloud. ``"graph"``: ``x`` ``(num_nodes, dim)`` with ``batch`` or ``ptr``, statistics per graph (ragged).
    layout
        ``"mul_ir"`` (e3nn) or ``"ir_mul"`` (cuEquivariance).
    normalization
        ``"component"`` (:math:`D_\gamma` channels, as above) or ``"norm"`` (divide by the group's copies instead, as
        e3nn's ``BatchNorm(normalization="norm")``).
    eps, affine, bias
        As ``torch.nn.GroupNorm``: ``weight`` one per copy, ``bias`` one per ``0e`` copy.
    graph_index
        With ``over="graph"``, a :class:`GraphIndex` to read ``batch`` and ``num_graphs`` from when the call gives
        neither ``batch`` nor ``ptr``: for blocks that never see the graph index (MACE's product blocks).

    Examples
    --------
    >>> norm = IrrepsGroupNorm("8x0e+4x1o", num_groups=4, over="graph")
    >>> x = torch.randn(10, norm.irreps_in.dim)
    >>> norm(x, batch=torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])).shape
    torch.Size([10, 20])
    """

    def __init__(
        self,
        irreps: Any,
        num_groups: int | None = None,
        *,
        group_by: str | Sequence[int] = "contiguous",
        over: str = "node",
        centering: str = "trivial",
        eps: float = 1e-5,
        affine: bool = True,
        layout: str = "mul_ir",
        normalization: str = "component",
        bias: bool = True,
        graph_index: GraphIndex | None = None,
    ) -> None:
        super().__init__()
        self.irreps_in = self.irreps_out = parse_irreps(irreps)
        if over not in OVER:
            raise ValueError(f"over must be one of {OVER}, got {over!r}")
        if graph_index is not None and (over != "graph" or not isinstance(graph_index, GraphIndex)):
            raise ValueError("graph_index is a GraphIndex, for over='graph'")
        self.over = over
        self.graph_index = graph_index
        self.dim = int(self.irreps_in.dim)  # a plain int: compiled code should not trace into Irreps
        fields = FieldLayout.from_irreps(
            self.irreps_in, num_groups, group_by, layout, centering=centering, normalization=normalization
        )
        self.norm = FieldNorm(fields, eps, affine, bias)

    def forward(
        self,
        x: torch.Tensor,
        batch: torch.Tensor | None = None,
        ptr: torch.Tensor | None = None,
        num_graphs: int | None = None,
    ) -> torch.Tensor:
        """``x`` as ``over`` says; per graph, ``batch`` (with ``num_graphs`` for compiled code) or ``ptr``, or the
        ``graph_index`` the layer was built with."""
        if self.graph_index is not None and batch is None and ptr is None:  # TorchScript refines only self.<name>
            if self.graph_index.num_graphs > 0:
                batch, num_graphs = self.graph_index.batch, self.graph_index.num_graphs
        if torch.jit.is_scripting():
            ptr = self.scripted_offsets(x, batch, ptr, num_graphs)
        else:
            ptr = self.checked_offsets(x, batch, ptr, num_graphs)
        if self.over == "node":
            return self.norm(x.reshape(-1, self.dim)).reshape(x.shape)
        if self.over == "points":
            return self.norm(x.transpose(1, 2)).transpose(1, 2)
        return self.norm(x, ptr)

    @torch.jit.unused
    def checked_offsets(
        self, x: torch.Tensor, batch: torch.Tensor | None, ptr: torch.Tensor | None, num_graphs: int | None
    ) -> torch.Tensor | None:
        """The arguments checked in Python, with messages that show them; the graphs' offsets per graph."""
        dim = self.dim
        check_features(x, dim)
        if self.over != "graph" and (batch is not None or ptr is not None or num_graphs is not None):
            raise ValueError(f"batch and ptr are for over='graph'; this layer normalizes over={self.over!r}")
        if self.over == "points" and x.dim() != 3:
            raise ValueError(f"over='points' expects (batch, points, {dim}), got {tuple(x.shape)}")
        if self.over != "graph":
            return None
        if x.dim() != 2:
            raise ValueError(f"over='graph' expects (num_nodes, {dim}), got {tuple(x.shape)}")
        return segment_offsets(x.shape[0], batch, ptr, x.device, num_graphs)

    def scripted_offsets(
        self, x: torch.Tensor, batch: torch.Tensor | None, ptr: torch.Tensor | None, num_graphs: int | None
    ) -> torch.Tensor | None:
        """The same in TorchScript (MACE's LAMMPS export, ``e3nn.util.jit``): the checks the op cannot make, and
        the offsets from ``eqnorm::segment_offsets``, which checks the graph index itself."""
        dim = self.dim
        if x.dim() == 0 or x.shape[-1] != dim:
            raise ValueError("eqnorm: expected features (..., " + str(dim) + ") for these irreps")
        if self.over != "graph":
            if batch is not None or ptr is not None or num_graphs is not None:
                raise ValueError("eqnorm: batch and ptr are for over='graph'; this layer normalizes over=" + self.over)
            if self.over == "points" and x.dim() != 3:
                raise ValueError("eqnorm: over='points' expects (batch, points, " + str(dim) + ")")
            return None
        if x.dim() != 2:
            raise ValueError("eqnorm: over='graph' expects (num_nodes, " + str(dim) + ")")
        if batch is not None and ptr is not None:
            raise ValueError("eqnorm: give batch or ptr, not both")
        if ptr is not None:
            return ptr
        if batch is None:
            return torch.tensor([0, x.shape[0]], device=x.device)
        if num_graphs is not None:
            return torch.ops.eqnorm.segment_offsets(batch, num_graphs)
        if not bool((batch.diff() >= 0).all()):
            raise ValueError("eqnorm: batch must be sorted (nodes grouped by graph); sort the nodes first")
        counts = torch.unique_consecutive(batch, return_counts=True)[1]
        return torch.cat([counts.new_zeros(1), counts.cumsum(0)])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.irreps_in}, over={self.over!r}, {self.norm.settings_repr()})"


class IrrepsLayerNorm(IrrepsGroupNorm):
    r"""Equivariant layer normalization of e3nn features: :class:`IrrepsGroupNorm` with all copies in one group.

    .. math:: y_{pc} = \frac{w_{i(c)}}{\sqrt{\sigma^2 + \epsilon}}\,(x_{pc} - \mu_c) + b_c, \qquad
              \sigma^2 = \frac{1}{P D}\sum_{c,p} (x_{pc} - \mu_c)^2
    """

    def __init__(
        self,
        irreps: Any,
        *,
        over: str = "node",
        centering: str = "trivial",
        eps: float = 1e-5,
        affine: bool = True,
        layout: str = "mul_ir",
        normalization: str = "component",
        bias: bool = True,
    ) -> None:
        super().__init__(
            irreps,
            1,
            over=over,
            centering=centering,
            eps=eps,
            affine=affine,
            layout=layout,
            normalization=normalization,
            bias=bias,
        )
