"""GraphIndex: per-graph norms inside blocks that are not given the graph index read it from a shared holder."""

import pytest
import torch

from eqnorm.e3nn import GraphIndex, IrrepsGroupNorm

IRREPS = "4x0e+2x1o+1x2e"


def graph_batch():
    x = torch.randn(9, 15, dtype=torch.float64) * 2 + 1
    return x, torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2])


class Block(torch.nn.Module):
    """A block whose forward takes node features only, as MACE's product blocks."""

    def __init__(self, index: GraphIndex) -> None:
        super().__init__()
        self.norm = IrrepsGroupNorm(IRREPS, group_by="irrep", over="graph", graph_index=index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x) + x


def test_norms_read_the_shared_index_as_if_given_the_batch():
    index = GraphIndex()
    model = torch.nn.Sequential(Block(index), Block(index)).double()
    x, batch = graph_batch()
    index.set(batch, 3)
    y = model(x)
    h = model[0].norm(x, batch=batch, num_graphs=3) + x
    torch.testing.assert_close(y, model[1].norm(h, batch=batch, num_graphs=3) + h, atol=0, rtol=0)
    # per graph: the last graph's output does not depend on the other graphs
    index.set(torch.zeros(2, dtype=torch.long), 1)
    torch.testing.assert_close(model(x[7:]), y[7:], atol=1e-12, rtol=0)
    index.clear()  # not set: the whole input is one graph
    torch.testing.assert_close(model[0].norm(x), model[0].norm(x, ptr=torch.tensor([0, 9])), atol=0, rtol=0)


def test_scripted_model_keeps_the_shared_index():
    index = GraphIndex()
    block = Block(index)
    scripted = torch.jit.script(block)
    x, batch = graph_batch()
    scripted.norm.graph_index.set(batch, 3)
    index.set(batch, 3)
    torch.testing.assert_close(scripted(x), block(x), atol=1e-12, rtol=0)
    scripted.norm.graph_index.clear()
    index.clear()
    torch.testing.assert_close(scripted(x), block(x), atol=1e-12, rtol=0)


def test_index_that_does_not_fit_is_refused():
    index = GraphIndex()
    with pytest.raises(ValueError, match="graph_index is a GraphIndex, for over='graph'"):
        IrrepsGroupNorm(IRREPS, group_by="irrep", graph_index=index)
    with pytest.raises(ValueError, match="1D int64"):
        index.set(torch.zeros(3), 1)
    with pytest.raises(ValueError, match="num_graphs >= 1"):
        index.set(torch.zeros(3, dtype=torch.long), 0)
    norm = IrrepsGroupNorm(IRREPS, group_by="irrep", over="graph", graph_index=index)
    index.set(torch.tensor([1, 0, 0]), 2)
    with pytest.raises((ValueError, RuntimeError), match="batch must be sorted"):
        norm(torch.randn(3, 15))
    index.set(torch.zeros(4, dtype=torch.long), 1)
    with pytest.raises((ValueError, RuntimeError), match="batch must be 3 int64 graph indices"):
        norm(torch.randn(3, 15))
