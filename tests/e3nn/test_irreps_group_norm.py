import pytest
import torch
from e3nn import o3
from e3nn.nn import BatchNorm
from e3nn.util.test import assert_equivariant

from eqnorm.e3nn import IrrepsGroupNorm, IrrepsLayerNorm

IRREPS = o3.Irreps("2x0e+1x0o+2x1o+1x1e+1x2e+1x3o")  # 8 copies, dim 2+1+6+3+5+7 = 24


def layer(over, group_by, centering="trivial", **kw):
    num_groups = 4 if group_by == "contiguous" else None
    norm = IrrepsGroupNorm(IRREPS, num_groups, group_by=group_by, over=over, centering=centering, **kw).double()
    with torch.no_grad():
        norm.norm.weight.uniform_(0.5, 1.5)
        norm.norm.bias.normal_()
    return norm


def inputs(over, gen):
    shift = torch.zeros(IRREPS.dim, dtype=torch.float64)
    shift[:2] = 3.0  # offsets on the 0e channels, so that centering matters
    if over == "node":
        return (torch.randn(5, 3, IRREPS.dim, generator=gen, dtype=torch.float64) + shift,)
    if over == "points":
        return (torch.randn(3, 7, IRREPS.dim, generator=gen, dtype=torch.float64) + shift,)
    batch = torch.tensor([0, 0, 0, 1, 2, 2, 2, 2, 2])
    return torch.randn(9, IRREPS.dim, generator=gen, dtype=torch.float64) + shift, batch


@pytest.mark.parametrize("over", ["node", "points", "graph"])
@pytest.mark.parametrize("group_by", ["contiguous", "irrep", "field"])
@pytest.mark.parametrize("centering", ["trivial", "all", "none"])
def test_rotation_and_parity_equivariance(over, group_by, centering):
    norm = layer(over, group_by, centering)
    args = inputs(over, torch.Generator().manual_seed(0))
    irreps_in = [IRREPS] + [None] * (len(args) - 1)
    errors = assert_equivariant(norm, args_in=list(args), irreps_in=irreps_in, irreps_out=[IRREPS], tolerance=1e-10)
    assert max(float(e.abs().max()) for e in errors.values()) < 1e-10


def test_ir_mul_layout_is_a_permutation_of_mul_ir():
    irreps = o3.Irreps("3x0e+2x1o+2x2e")
    perm = []  # ir_mul index of each mul_ir channel
    offset = 0
    for mul, ir in irreps:
        perm += [offset + m * mul + u for u in range(mul) for m in range(ir.dim)]
        offset += mul * ir.dim
    perm = torch.tensor(perm)
    x = torch.randn(4, irreps.dim, dtype=torch.float64) + 1
    x_ir_mul = torch.empty_like(x)
    x_ir_mul[:, perm] = x
    a = IrrepsGroupNorm(irreps, group_by="irrep", over="points").double()
    b = IrrepsGroupNorm(irreps, group_by="irrep", over="points", layout="ir_mul").double()
    torch.testing.assert_close(b(x_ir_mul[None])[0][:, perm], a(x[None])[0])


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_graph_independence_and_ragged_sizes(device):
    norm = layer("graph", "contiguous").to(device)
    gen = torch.Generator().manual_seed(1)
    sizes = [1, 0, 40, 3]  # a one-node graph, an empty one and a large one
    batch = torch.repeat_interleave(torch.arange(4), torch.tensor(sizes)).to(device)
    x = torch.randn(batch.numel(), IRREPS.dim, generator=gen, dtype=torch.float64).to(device)
    y = norm(x, batch=batch)
    assert torch.isfinite(y).all()
    for start, size in zip([0, 1, 1, 41], sizes, strict=True):
        alone = norm(x[start : start + size], ptr=torch.tensor([0, size], device=device))
        torch.testing.assert_close(y[start : start + size], alone, atol=1e-12, rtol=1e-12)
    x2 = x.clone()
    x2[1:] = torch.randn_like(x2[1:]) * 30
    assert torch.equal(norm(x2, batch=batch)[:1], y[:1])


def test_equals_e3nn_instance_norm_over_points():
    """One copy per group over points, component normalization: e3nn's BatchNorm(instance=True) computes the same."""
    irreps = o3.Irreps("4x0e+2x1o+1x2e")
    ours = IrrepsGroupNorm(irreps, group_by="field", over="points").double()
    theirs = BatchNorm(irreps, instance=True, normalization="component").double()
    with torch.no_grad():
        ours.norm.weight.uniform_(0.5, 1.5)
        ours.norm.bias.normal_()
        theirs.weight.copy_(ours.norm.weight)
        theirs.bias.copy_(ours.norm.bias)
    x = (torch.randn(3, 11, irreps.dim, dtype=torch.float64) + 2).requires_grad_()
    y, y_ref = ours(x), theirs(x)
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
    dy = torch.randn_like(y)
    params = (x, ours.norm.weight, ours.norm.bias)
    got = torch.autograd.grad(y, params, dy)
    want = torch.autograd.grad(y_ref, (x, theirs.weight, theirs.bias), dy)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)


def test_layer_norm_is_one_group():
    x = torch.randn(6, IRREPS.dim, dtype=torch.float64)
    torch.testing.assert_close(
        IrrepsLayerNorm(IRREPS).double()(x), IrrepsGroupNorm(IRREPS, 1).double()(x), atol=0, rtol=0
    )
    assert IrrepsLayerNorm(IRREPS).irreps_out == IRREPS


def test_parameters_follow_the_irreps():
    norm = IrrepsGroupNorm(IRREPS, 2)
    assert norm.weight.shape == (8,) and norm.bias.shape == (2,)  # a weight per copy, a bias per 0e copy


@pytest.mark.parametrize("over", ["node", "points"])
def test_torch_compile_matches_eager(over):
    torch._dynamo.reset()
    norm = IrrepsGroupNorm(IRREPS, 4, over=over)
    x = torch.randn(2, 5, IRREPS.dim)
    compiled = torch.compile(norm, fullgraph=True)
    torch.testing.assert_close(compiled(x), norm(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("make", "call", "match"),
    [
        (lambda: IrrepsGroupNorm(IRREPS, 3), None, "does not divide"),
        (lambda: IrrepsGroupNorm(IRREPS, over="edges"), None, "over must be"),
        (lambda: IrrepsGroupNorm("not irreps"), None, "irreps"),
        (lambda: IrrepsGroupNorm(IRREPS, 2), lambda n: n(torch.randn(4, 23)), r"\(\.\.\., 24\)"),
        (
            lambda: IrrepsGroupNorm(IRREPS, 2),
            lambda n: n(torch.randn(4, 24), batch=torch.zeros(4, dtype=torch.long)),
            "over='graph'",
        ),
        (
            lambda: IrrepsGroupNorm(IRREPS, 2, over="graph"),
            lambda n: n(torch.randn(4, 24), batch=torch.tensor([0, 1, 0, 1])),
            "sorted",
        ),
        (
            lambda: IrrepsGroupNorm(IRREPS, 2, over="graph"),
            lambda n: n(torch.randn(4, 24), ptr=torch.tensor([0, 3])),
            "run from 0 to the number of rows 4",
        ),
        (
            lambda: IrrepsGroupNorm(IRREPS, 2, over="graph"),
            lambda n: n(torch.randn(4, 24), batch=torch.zeros(3, dtype=torch.long)),
            "4 int64",
        ),
        (lambda: IrrepsGroupNorm(IRREPS, 2, over="points"), lambda n: n(torch.randn(4, 24)), "batch, points"),
    ],
)
def test_errors(make, call, match):
    with pytest.raises(ValueError, match=match):
        norm = make()
        call(norm)


GRAPH_ERRORS = {
    "negative num_graphs": (dict(batch=torch.tensor([0, 0, 1, 1]), num_graphs=-1), "non-negative, got -1"),
    "ptr against num_graphs": (dict(ptr=torch.tensor([0, 2, 4]), num_graphs=3), "ptr holds 2 graphs but num_graphs"),
}


@pytest.mark.parametrize("case", GRAPH_ERRORS, ids=str)
def test_graph_arguments_that_contradict_each_other_are_refused(case):
    kwargs, match = GRAPH_ERRORS[case]
    with pytest.raises(ValueError, match=match):
        IrrepsGroupNorm(IRREPS, 2, over="graph")(torch.randn(4, 24), **kwargs)


@pytest.mark.parametrize(
    ("batch", "match"),
    [([0, 1, 0, 1], "must be sorted"), ([0, 0, 1, 2], "outside 0 .. num_graphs - 1")],
    ids=["unsorted", "id past num_graphs"],
)
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_a_bad_graph_index_is_refused_eager_and_compiled(batch, match, compiled):
    """With num_graphs, the graph index is checked by an op when the code runs: a compiled graph cannot skip it."""
    norm = IrrepsGroupNorm(IRREPS, 2, over="graph")

    def fn(x, batch):
        return norm(x, batch=batch, num_graphs=2)

    if compiled:
        torch._dynamo.reset()
        fn = torch.compile(fn, fullgraph=True, dynamic=True)
        fn(torch.randn(5, 24), torch.tensor([0, 0, 1, 1, 1]))  # a good call first: the graph exists
    with pytest.raises((ValueError, RuntimeError), match=match):
        fn(torch.randn(4, 24), torch.tensor(batch))


def test_meta_tensors_trace_without_reading_values():
    norm = IrrepsGroupNorm(IRREPS, 2, over="graph").to("meta")
    x, batch = torch.randn(5, 24, device="meta"), torch.zeros(5, dtype=torch.long, device="meta")
    assert norm(x, batch=batch, num_graphs=2).shape == (5, 24)


def test_an_expanded_single_frame_index_warns_nothing():
    """nequip batches a single frame as zeros(1).expand(n): a non-contiguous index."""
    import warnings

    norm = IrrepsGroupNorm(IRREPS, 2, over="graph")
    x, batch = torch.randn(6, 24), torch.zeros(1, dtype=torch.long).expand(6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = norm(x, batch=batch, num_graphs=1)
    torch.testing.assert_close(y, norm(x, batch=torch.zeros(6, dtype=torch.long), num_graphs=1))
