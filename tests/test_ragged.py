"""Ragged (per-graph) statistics: random valid offsets match the pure-PyTorch reference, eager and compiled; every
invalid offset is refused with an error, never a crash or garbage; graph ids cost memory by nodes, not by id."""

import itertools
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import eqnorm
from eqnorm import FieldLayout, FieldNorm, _pure_kernels

LAYOUT = FieldLayout([["s", "v"], ["s"], ["v"]], {"s": 1, "v": 2}, {"s"}, [0, 1, 0])
compiled_only = pytest.mark.skipif(
    eqnorm.kernel_backend("cpu") == "torch", reason="the compiled extension is not built"
)


@st.composite
def offsets(draw: st.DrawFn) -> list[int]:
    counts = draw(st.lists(st.integers(0, 5), min_size=1, max_size=6))
    return [0] + [sum(counts[: i + 1]) for i in range(len(counts))]


def reference(x: torch.Tensor, ptr: torch.Tensor, norm: FieldNorm) -> torch.Tensor:
    return _pure_kernels.torch_field_norm(x, norm.weight, norm.bias, norm.index_tensors, ptr, True, False, norm.eps)[0]


@compiled_only
@given(ptr=offsets(), seed=st.integers(0, 999))
def test_valid_offsets_match_the_reference(ptr, seed):
    gen = torch.Generator().manual_seed(seed)
    norm = FieldNorm(LAYOUT).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    x = torch.randn(ptr[-1], LAYOUT.num_channels, generator=gen, dtype=torch.float64) * 2 + 1
    offsets_ = torch.tensor(ptr)
    torch.testing.assert_close(norm(x, ptr=offsets_), reference(x, offsets_, norm), atol=1e-12, rtol=1e-12)


@compiled_only
def test_compiled_valid_and_invalid_offsets():
    torch._dynamo.reset()
    norm = FieldNorm(LAYOUT)
    compiled = torch.compile(norm, fullgraph=True, dynamic=True)
    x = torch.randn(9, LAYOUT.num_channels)
    for ptr in ([0, 4, 4, 9], [0, 1, 9], [0, 9]):
        offsets_ = torch.tensor(ptr)
        torch.testing.assert_close(compiled(x, offsets_), reference(x, offsets_, norm), atol=1e-5, rtol=1e-5)
    for bad in ([0, 4, 7], [2, 4, 9], [0, 6, 4, 9]):
        with pytest.raises(RuntimeError, match="ptr must"):
            compiled(x, torch.tensor(bad))


@given(
    ptr=st.lists(st.integers(-3, 12), min_size=0, max_size=5).filter(
        lambda p: not (len(p) >= 1 and p[0] == 0 and p[-1] == 9 and all(a <= b for a, b in itertools.pairwise(p)))
    )
)
def test_invalid_offsets_are_refused(ptr):
    x = torch.randn(9, LAYOUT.num_channels)
    with pytest.raises((ValueError, RuntimeError), match="ptr must"):
        FieldNorm(LAYOUT)(x, torch.tensor(ptr, dtype=torch.long))


def test_bad_offsets_never_crash_the_process():
    """The inputs that once read out of bounds or segfaulted, each in a fresh process: an error, not a crash."""
    code = (
        "import torch\n"
        "from eqnorm import FieldLayout, FieldNorm\n"
        "from eqnorm.functional import field_group_norm\n"
        "x, lay = torch.randn(6, 4), FieldLayout.scalars(4, 2)\n"
        "for ptr in ([0, 2, 4], [2, 4, 6], [0]):\n"
        "    for call in (lambda p: field_group_norm(x, lay, ptr=p), lambda p: FieldNorm(lay)(x, p)):\n"
        "        try:\n"
        "            call(torch.tensor(ptr))\n"
        "        except (ValueError, RuntimeError) as error:\n"
        "            assert 'ptr must' in str(error), error\n"
        "        else:\n"
        "            raise SystemExit(f'no error for {ptr}')\n"
        "print('refused')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "refused" in out.stdout, out.stderr[-2000:]


def test_graph_ids_cost_memory_by_nodes_not_by_id():
    pytest.importorskip("e3nn")
    from eqnorm.e3nn import IrrepsGroupNorm

    norm = IrrepsGroupNorm("2x0e+1x1o", 1, over="graph")
    x = torch.randn(5, 5)
    far = torch.tensor([0, 0, 7, 10**9, 10**9])  # an id of 1e9 must not allocate a billion offsets
    near = torch.tensor([0, 0, 1, 2, 2])
    torch.testing.assert_close(norm(x, batch=far), norm(x, batch=near))
    with pytest.raises(RuntimeError, match=r"graph id outside 0 \.\. num_graphs - 1"):  # checked by the op
        norm(x, batch=far, num_graphs=3)
