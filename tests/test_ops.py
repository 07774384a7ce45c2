"""The four compiled passes against a float64 reference, on every layout, dtype and awkward size, CPU and CUDA."""

import pytest
import torch

import eqnorm
from eqnorm import _ops
from eqnorm.functional import field_group_norm
from eqnorm.layout import FieldLayout

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}
OPS = ("moments", "affine", "moments_backward", "affine_backward")

pytestmark = pytest.mark.skipif(eqnorm.kernel_backend("cpu") == "torch", reason="the compiled extension is not built")


def layouts(device):
    """(name, x, channels_last, ptr) for every layout and awkward size."""
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device)

    yield "first", rand(2, 3, 17), False, None
    yield "first P=1", rand(3, 2, 1), False, None
    yield "first C=1 N=1", rand(1, 1, 64), False, None
    yield "first prime", rand(2, 5, 97), False, None
    yield "first N=0", rand(0, 4, 9), False, None
    yield "last", rand(2, 17, 3), True, None
    yield "last prime", rand(3, 97, 5), True, None
    yield "last P=1", rand(4, 1, 70), True, None
    yield "last N=0", rand(0, 6, 9), True, None
    ptr = torch.tensor([0, 3, 3, 10, 11], device=device)  # an empty graph and a one-node graph
    yield "ragged", rand(11, 6), True, ptr
    yield "ragged wide", rand(40, 67), True, torch.tensor([0, 1, 29, 40], device=device)
    yield "ragged none", rand(0, 4), True, torch.tensor([0], device=device)


def reference(name, *args):
    return getattr(_ops, f"torch_{name}")(*args)


def arguments(name, x, channels_last, ptr, gen_seed=1):
    gen = torch.Generator().manual_seed(gen_seed)
    n = ptr.numel() - 1 if ptr is not None else x.shape[0]
    c = x.shape[1] if ptr is not None else x.shape[2 if channels_last else 1]
    acc = _ops.accumulation_dtype(x.dtype)

    def stat():
        return torch.randn(n, c, generator=gen, dtype=torch.float64).to(device=x.device, dtype=acc)

    dy = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(device=x.device, dtype=x.dtype)
    return {
        "moments": (x,),
        "affine": (x, stat(), stat()),
        "moments_backward": (dy, x),
        "affine_backward": (dy, x, stat(), stat(), stat()),
    }[name] + (channels_last, ptr)


def as_float64(args):
    return tuple(a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", OPS)
def test_op_matches_float64_reference(device, dtype, name):
    for case, x, channels_last, ptr in layouts(device):
        args = arguments(name, x.to(dtype), channels_last, ptr)
        got = getattr(torch.ops.eqnorm, name)(*args)
        want = reference(name, *as_float64(args))
        for g, w in zip(
            got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,), strict=True
        ):
            stats = name in ("moments", "moments_backward")
            assert g.dtype == (_ops.accumulation_dtype(dtype) if stats else dtype), case
            assert g.shape == w.shape, case
            torch.testing.assert_close(g.double(), w.to(g.dtype).double(), atol=TOL[dtype], rtol=TOL[dtype], msg=case)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", OPS)
def test_opcheck(device, name):
    for _, x, channels_last, ptr in layouts(device):
        for dtype in (torch.float32, torch.float16):
            torch.library.opcheck(
                getattr(torch.ops.eqnorm, name).default, arguments(name, x.to(dtype), channels_last, ptr)
            )


@pytest.mark.parametrize("device", DEVICES)
def test_long_rows_and_huge_offsets(device):
    """Rows over 2^20 long, values near 1e4 with unit spread: sum-of-squares formulas lose everything in float32."""
    gen = torch.Generator().manual_seed(2)
    x64 = torch.randn(2, 2, 2**20 + 37, generator=gen, dtype=torch.float64) + 1e4
    x = x64.float().to(device)
    exact = _ops.torch_moments(x.double(), False)
    for layout, channels_last in ((x, False), (x.transpose(1, 2).contiguous(), True)):
        mean, m2 = torch.ops.eqnorm.moments(layout, channels_last)
        torch.testing.assert_close(mean.double(), exact[0], rtol=2e-6, atol=0)  # a few float32 ulps
        torch.testing.assert_close(m2.double(), exact[1], rtol=1e-4, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    base = torch.randn(3, 40, 6, dtype=torch.float64, device=device)
    x = base.transpose(1, 2)  # (3, 6, 40) channels-first view that is not contiguous
    got = torch.ops.eqnorm.moments(x, False)
    want = _ops.torch_moments(x.contiguous(), False)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic(device):
    layout = FieldLayout([["s", "v"]] * 8, {"s": 1, "v": 2}, {"s"}, [i // 2 for i in range(8)])
    x = torch.randn(4, 24, 33, 31, device=device) * 3 + 1
    w = torch.rand(8, device=device, requires_grad=True)
    b = torch.randn(8, device=device, requires_grad=True)

    def run():
        xx = x.clone().requires_grad_()
        y = field_group_norm(xx, layout, w, b)
        grads = torch.autograd.grad(
            y, (xx, w, b), torch.ones_like(y) * torch.linspace(-1, 1, y.shape[-1], device=device)
        )
        return (y, *grads)

    for first, second in zip(run(), run(), strict=True):
        assert torch.equal(first, second)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_layer_on_compiled_kernels_matches_pure_torch(device, memory_format, monkeypatch):
    layout = FieldLayout([["s", "v"], ["v"], ["s"], ["s", "s"]], {"s": 1, "v": 2}, {"s"}, [0, 0, 1, 1])
    x = (torch.randn(3, 8, 9, 7, dtype=torch.float64, device=device) + 2).to(memory_format=memory_format)
    x.requires_grad_()
    w = torch.rand(4, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)
    dy = torch.randn_like(x)
    y = field_group_norm(x, layout, w, b)
    grads = torch.autograd.grad(y, (x, w, b), dy)
    monkeypatch.setattr(_ops, "_COMPILED", {})
    y_ref = field_group_norm(x, layout, w, b)
    grads_ref = torch.autograd.grad(y_ref, (x, w, b), dy)
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
    for g, r in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, r, atol=1e-12, rtol=1e-12)


def test_error_messages_name_the_argument():
    x = torch.randn(2, 3, 5)
    with pytest.raises(RuntimeError, match="x must be 3D"):
        torch.ops.eqnorm.moments(torch.randn(2, 3), False)
    with pytest.raises(RuntimeError, match="float16, bfloat16, float32 or float64"):
        torch.ops.eqnorm.moments(x.long(), False)
    with pytest.raises(RuntimeError, match=r"a must have shape \(2, 3\)"):
        torch.ops.eqnorm.affine(x, torch.randn(3, 2), torch.randn(2, 3), False)
    with pytest.raises(RuntimeError, match="beta must be Float for Float x, got Double"):
        torch.ops.eqnorm.affine(x, torch.randn(2, 3), torch.randn(2, 3, dtype=torch.float64), False)
    with pytest.raises(RuntimeError, match="dy must have the shape of x"):
        torch.ops.eqnorm.moments_backward(torch.randn(2, 3, 4), x, False)
    with pytest.raises(RuntimeError, match="non-decreasing"):
        torch.ops.eqnorm.moments(torch.randn(5, 3), True, torch.tensor([0, 4, 2]))
    with pytest.raises(RuntimeError, match="must lie in"):
        torch.ops.eqnorm.moments(torch.randn(5, 3), True, torch.tensor([0, 9]))
    with pytest.raises(RuntimeError, match="channels_last=True"):
        torch.ops.eqnorm.moments(torch.randn(5, 3), False, torch.tensor([0, 5]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("centering", ["trivial", "all", "none"])
@pytest.mark.parametrize("ragged", [False, True])
def test_fused_coefficients_match_pytorch(device, dtype, centering, ragged):
    from eqnorm.coefficients import affine_coefficients, affine_coefficients_backward

    layout = FieldLayout(
        [["s", "v"], ["v"], ["s"], ["s", "s"], ["v", "v"]] * 7,
        {"s": 1, "v": 2},
        {"s"},
        [i % 5 for i in range(35)],
        centering=centering,
    )
    ops = layout.operators(dtype, device)
    n, c = 6, layout.num_channels
    gen = torch.Generator().manual_seed(3)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype).to(device)

    positions = torch.arange(1, n + 1, device=device, dtype=dtype).unsqueeze(1) if ragged else 11
    mean, m2, w, b, ga, gb = rand(n, c), rand(n, c).abs(), rand(c), rand(c), rand(n, c), rand(n, c)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    got = _ops.coefficients(mean, m2, w, b, ops, positions, 1e-5)
    want = affine_coefficients(mean, m2, w, b, ops, positions, 1e-5)
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r, atol=tol, rtol=tol)
    a, u, v, gw, gbias = _ops.coefficients_backward(ga, gb, mean, m2, w, ops, positions, 1e-5)
    a_ref, gmean, gm2, gw_ref, gb_ref = affine_coefficients_backward(ga, gb, mean, m2, w, ops, positions, 1e-5)
    u_ref = 2 * gm2
    for g, r in zip(
        (a, u, v, gw, gbias), (a_ref, u_ref, gmean / positions - u_ref * mean, gw_ref, gb_ref), strict=True
    ):
        torch.testing.assert_close(g, r, atol=tol, rtol=tol)
    p, counts = _ops._op_positions(positions)
    args = (mean, m2, w, b, *_ops._centering(ops), p, counts, 1e-5)
    torch.library.opcheck(torch.ops.eqnorm.coefficients.default, args)
    args = (ga, gb, mean, m2, w, *_ops._centering(ops), p, counts, 1e-5)
    torch.library.opcheck(torch.ops.eqnorm.coefficients_backward.default, args)
