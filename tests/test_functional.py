import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from reference import reference_norm
from strategies import layout_of, random_irrep_matrices, specs

from eqnorm import FieldLayout, _ops, _pure_kernels
from eqnorm.functional import field_group_norm

CENTERINGS = st.sampled_from(["trivial", "all", "none"])
SPATIAL = st.lists(st.integers(1, 4), min_size=0, max_size=3)


def parameters(layout: FieldLayout, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w = torch.rand(layout.num_fields, generator=gen, dtype=torch.float64) + 0.5
    b = torch.randn(layout.num_trivial, generator=gen, dtype=torch.float64)
    return w, b


def offset_input(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Random data with a per-channel offset, so that a missing or wrong centering shows."""
    gen = torch.Generator().manual_seed(seed)
    offset = torch.randn(shape[:2] + (1,) * (len(shape) - 2), generator=gen, dtype=torch.float64) * 3
    return torch.randn(shape, generator=gen, dtype=torch.float64) + offset


@given(spec=specs(), centering=CENTERINGS, n=st.integers(1, 3), spatial=SPATIAL, seed=st.integers(0, 1000))
def test_matches_reference_float64(spec, centering, n, spatial, seed):
    layout = layout_of(spec, centering)
    x = offset_input((n, layout.num_channels, *spatial), seed)
    w, b = parameters(layout, seed)
    got = field_group_norm(x, layout, w, b).numpy()
    np.testing.assert_allclose(got, reference_norm(x, spec, centering, w.numpy(), b.numpy()), atol=1e-10, rtol=1e-10)


@given(
    spec=specs(),
    centering=CENTERINGS,
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    channels_last=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_matches_reference_low_precision(spec, centering, dtype, channels_last, seed):
    layout = layout_of(spec, centering)
    x = offset_input((2, layout.num_channels, 3, 5), seed).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w, b = parameters(layout, seed)
    got = field_group_norm(x, layout, w.float(), b.float())
    assert got.dtype == dtype and got.shape == x.shape
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last or layout.num_channels == 1
    ref = reference_norm(x.double(), spec, centering, w.numpy(), b.numpy())
    tol = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    np.testing.assert_allclose(got.double().numpy(), ref, atol=tol, rtol=tol)


@given(spec=specs(), centering=CENTERINGS, seed=st.integers(0, 1000))
def test_equivariant_under_every_orthogonal_irrep_action(spec, centering, seed):
    """Any choice of orthogonal psi_k(g), shared by the copies of irrep k, is a symmetry of the layer."""
    layout = layout_of(spec, centering)
    rho = torch.from_numpy(spec.representation(random_irrep_matrices(np.random.default_rng(seed))))
    x = offset_input((2, layout.num_channels, 4, 3), seed)
    w, b = parameters(layout, seed)
    act = lambda t: torch.einsum("dc,nc...->nd...", rho, t)  # noqa: E731
    err = (field_group_norm(act(x), layout, w, b) - act(field_group_norm(x, layout, w, b))).abs().max()
    assert err < 1e-10


@given(spec=specs(max_fields=4), centering=CENTERINGS, seed=st.integers(0, 1000))
def test_gradcheck(spec, centering, seed):
    layout = layout_of(spec, centering)
    x = offset_input((2, layout.num_channels, 3), seed).requires_grad_()
    w, b = parameters(layout, seed)
    w.requires_grad_()
    b.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w, b: field_group_norm(x, layout, w, b), (x, w, b))


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_equals_torch_group_norm_on_scalars(memory_format):
    x = offset_input((3, 12, 5, 7), 0).to(memory_format=memory_format).requires_grad_()
    w = torch.randn(12, dtype=torch.float64, requires_grad=True)
    b = torch.randn(12, dtype=torch.float64, requires_grad=True)
    y = field_group_norm(x, FieldLayout.scalars(12, 4), w, b)
    ref = torch.nn.functional.group_norm(x, 4, w, b)
    torch.testing.assert_close(y, ref, atol=1e-12, rtol=1e-12)
    dy = torch.randn_like(y)
    for got, want in zip(torch.autograd.grad(y, (x, w, b), dy), torch.autograd.grad(ref, (x, w, b), dy), strict=False):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def test_batch_independence():
    layout = FieldLayout([["s", "v"], ["v"], ["s"]], {"s": 1, "v": 2}, {"s"}, [0, 0, 1])
    x = offset_input((4, 6, 5), 1)
    y = field_group_norm(x, layout)
    x2 = x.clone()
    x2[1:] = 100 * torch.randn_like(x2[1:])
    assert torch.equal(field_group_norm(x2, layout)[0], y[0])


def test_constant_input_is_finite_and_bias_only():
    layout = FieldLayout([["s"], ["s"]], {"s": 1}, {"s"}, [0, 0])
    y = field_group_norm(torch.full((2, 2, 4, 4), 3.0), layout, bias=torch.tensor([0.5, -1.0]))
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[:, 0], torch.full((2, 4, 4), 0.5))


@pytest.mark.parametrize("shape", [(0, 4, 3, 3), (2, 4, 0), (0, 4)])
def test_empty_input(shape):
    y = field_group_norm(torch.randn(shape), FieldLayout.scalars(4, 2))
    assert y.shape == shape


def test_statistics_are_differentiated():
    """The gradient flows through mean and variance: the output of a per-sample norm sums to a constant."""
    layout = FieldLayout.scalars(4, 1)
    x = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(field_group_norm(x, layout).sum(), x)
    assert g.abs().max() < 1e-10


@pytest.mark.parametrize(
    ("x", "kwargs", "error", "match"),
    [
        ([1.0], {}, TypeError, "torch.Tensor"),
        (torch.ones(2, 4, dtype=torch.long), {}, TypeError, "floating-point"),
        (torch.ones(4), {}, ValueError, "shape"),
        (torch.ones(2, 5, 3), {}, ValueError, "5 channels"),
        (torch.ones(2, 4, 3), {"eps": 0.0}, ValueError, "eps"),
        (torch.ones(2, 4, 3), {"weight": torch.ones(3)}, ValueError, "weight must have shape"),
        (torch.ones(2, 4, 3), {"bias": torch.ones(5)}, ValueError, "bias must have shape"),
    ],
)
def test_errors(x, kwargs, error, match):
    with pytest.raises(error, match=match):
        field_group_norm(x, FieldLayout.scalars(4, 2), **kwargs)


@pytest.mark.parametrize(
    ("weight", "error", "match"),
    [
        ([1.0, 1.0, 1.0, 1.0], TypeError, "weight must be a torch.Tensor, got list"),
        (torch.ones(4, dtype=torch.complex64), TypeError, "real floating-point tensor, got dtype torch.complex64"),
        (torch.ones(4, dtype=torch.long), TypeError, "real floating-point tensor, got dtype torch.int64"),
        (torch.ones(3), ValueError, r"weight must have shape \(4,\), got \(3,\)"),
        (torch.ones(4, device="meta"), ValueError, "weight is on meta but the input is on cpu"),
    ],
)
def test_bad_weights_are_refused_by_name(weight, error, match):
    with pytest.raises(error, match=match):
        field_group_norm(torch.randn(2, 4, 3), FieldLayout.scalars(4, 2), weight)


def test_a_layout_of_the_wrong_type_is_refused():
    with pytest.raises(TypeError, match="layout must be a FieldLayout, got str"):
        field_group_norm(torch.randn(2, 4, 3), "scalars")


@pytest.mark.parametrize("shape", [(2, 6, 3, 2, 2), (0, 6, 4, 4), (3, 6, 0)])
def test_eager_dense_call_equals_the_traced_form(shape):
    """Eager calls view a contiguous input as rows inside the bound C++ call; traced code views it in Python. Both give
    the same output shape, values and gradients."""
    from eqnorm import kernel_backend

    if kernel_backend() != "cpp":
        pytest.skip("the dense call is the compiled extension's")
    layout = FieldLayout.scalars(6, 3)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(6, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64)
    dense = _ops.field_norm_dense(x, weight, bias, layout.tensors, False, 1e-5)[0]
    traced = _ops.field_norm(x.flatten(2), weight, bias, layout.tensors, None, False, False, 1e-5)[0].reshape(shape)
    assert dense.shape == x.shape
    torch.testing.assert_close(dense, traced, rtol=0, atol=0)
    if x.numel():
        dy = torch.randn(shape, dtype=torch.float64)
        got = torch.autograd.grad(dense, (x, weight), dy)
        want = torch.autograd.grad(traced, (x, weight), dy)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=0, atol=0)


@pytest.mark.parametrize(
    "shape, ptr, batch",
    [
        ((1, 8, 256, 256), None, False),
        ((20001, 8), torch.tensor([0, 7, 15000, 20001]), False),
        ((4, 8, 64, 64), None, True),
    ],
    ids=["dense", "ragged", "batch"],
)
def test_pure_pytorch_kernels_give_the_same_bits_at_every_thread_count(shape, ptr, batch):
    layout = FieldLayout([["s", "v"], ["s"], ["v"], ["s", "s"]], {"s": 1, "v": 2}, {"s"}, [0, 1, 0, 1])
    w, b = (p.float() for p in parameters(layout, 0))
    x = offset_input(shape, 1).float()
    x = x if ptr is not None else x.flatten(2)  # the op takes rows: (N, C, P)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3, 8):
            torch.set_num_threads(threads)
            xg = x.clone().requires_grad_()
            y = _pure_kernels.torch_field_norm(xg, w, b, layout.tensors, ptr, ptr is not None, batch, 1e-5)[0]
            results.append((y.detach(), *torch.autograd.grad((y * y.detach().cos()).sum(), xg)))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for r in results[1:] for a, b in zip(results[0], r, strict=True))
