"""eqnorm::field_norm and its backward against the pure-PyTorch reference, on every layout, dtype and awkward size,
CPU and CUDA; opcheck; refusal of parameters and layouts that do not match."""

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import layout_of, specs

import eqnorm
from eqnorm import _pure_kernels
from eqnorm.layout import FieldLayout

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float64: 1e-11, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}

pytestmark = pytest.mark.skipif(eqnorm.kernel_backend("cpu") == "torch", reason="the compiled extension is not built")

LAYOUT = FieldLayout([["s", "v"], ["s"], ["v"], ["s", "s"]], {"s": 1, "v": 2}, {"s"}, [0, 1, 0, 1])


def cases(device):
    """(name, x, channels_last, ptr, batch) for every layout and awkward size; C = LAYOUT.num_channels = 8."""
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * 2 + 1).to(device)

    yield "first", rand(2, 8, 17), False, None, False
    yield "first P=1", rand(3, 8, 1), False, None, False
    yield "first N=1", rand(1, 8, 64), False, None, False
    yield "first prime", rand(2, 8, 97), False, None, False
    yield "first N=0", rand(0, 8, 9), False, None, False
    yield "last", rand(2, 17, 8), True, None, False
    yield "last P=1", rand(5, 1, 8), True, None, False
    yield "last N=0", rand(0, 6, 8), True, None, False
    yield "batch first", rand(3, 8, 10), False, None, True
    yield "batch last", rand(4, 3, 8), True, None, True
    yield "ragged", rand(11, 8), True, torch.tensor([0, 3, 3, 10, 11], device=device), False  # empty, 1-node graphs
    yield "ragged none", rand(0, 8), True, torch.tensor([0], device=device), False


def parameters(device, dtype=torch.float64):
    gen = torch.Generator().manual_seed(1)
    w = torch.rand(LAYOUT.num_fields, generator=gen, dtype=torch.float64) + 0.5
    b = torch.randn(LAYOUT.num_trivial, generator=gen, dtype=torch.float64)
    return w.to(device, dtype), b.to(device, dtype)


def run(fn, x, w, b, device, last, ptr, batch):
    return fn(x, w, b, _layout(device), ptr, last, batch, 1e-5)


def _layout(device):
    return LAYOUT.tensors_on(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_and_backward_match_reference(device, dtype):
    for name, x64, last, ptr, batch in cases(device):
        x = x64.to(dtype).requires_grad_()
        xr = x64.clone().requires_grad_()
        w, b = (p.requires_grad_() for p in parameters(device))
        wr, br = (p.detach().clone().requires_grad_() for p in (w, b))
        y, mean, m2 = torch.ops.eqnorm.field_norm(x, w, b, list(_layout(device)), ptr, last, batch, 1e-5)
        yr, mean_r, m2_r = _pure_kernels.torch_field_norm(xr, wr, br, _layout(device), ptr, last, batch, 1e-5)
        assert y.dtype == dtype and y.shape == x.shape, name
        assert mean.dtype == _pure_kernels.accumulation_dtype(dtype), name
        tol = TOL[dtype]
        torch.testing.assert_close(y.double(), yr.detach(), atol=tol * 4, rtol=tol, msg=name)
        torch.testing.assert_close(mean.double(), mean_r.detach(), atol=tol, rtol=tol, msg=name)
        torch.testing.assert_close(m2.double(), m2_r.detach(), atol=tol * 100, rtol=tol, msg=name)
        dy = torch.randn_like(yr)
        got = torch.autograd.grad(y, (x, w, b), dy.to(dtype))
        want = torch.autograd.grad(yr, (xr, wr, br), dy, allow_unused=True)
        for g, r, what in zip(got, want, ("dx", "dweight", "dbias"), strict=True):
            r = torch.zeros_like(g, dtype=torch.float64) if r is None else r
            scale = 1 + r.abs().max().item() if r.numel() else 1
            torch.testing.assert_close(g.double(), r, atol=tol * 20 * scale, rtol=tol * 10, msg=f"{name} {what}")


ABSENT = [(False, False), (True, False), (False, True)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("has_weight", "has_bias"), ABSENT, ids=["neither", "weight only", "bias only"])
def test_absent_parameters_are_a_weight_of_one_and_a_bias_of_zero(device, has_weight, has_bias):
    """None for weight or bias (torch's native_group_norm convention) computes what ones and zeros compute, in the
    compiled op and the pure-PyTorch form, and gives no gradient for the absent parameter."""
    w, b = parameters(device)
    ones, zeros = torch.ones_like(w), torch.zeros_like(b)
    for name, x64, last, ptr, batch in cases(device):
        x, xr = x64.clone().requires_grad_(), x64.clone().requires_grad_()
        weight = w.clone().requires_grad_() if has_weight else None
        bias = b.clone().requires_grad_() if has_bias else None
        layout = _layout(device)
        y = torch.ops.eqnorm.field_norm(x, weight, bias, list(layout), ptr, last, batch, 1e-5)[0]
        wr = ones if weight is None else weight.detach().clone().requires_grad_()
        br = zeros if bias is None else bias.detach().clone().requires_grad_()
        yr = torch.ops.eqnorm.field_norm(xr, wr, br, list(layout), ptr, last, batch, 1e-5)[0]
        pure = _pure_kernels.torch_field_norm(x64, weight, bias, layout, ptr, last, batch, 1e-5)[0]
        torch.testing.assert_close(y, yr, atol=0, rtol=0, msg=name)
        torch.testing.assert_close(pure, yr.detach(), atol=1e-12, rtol=1e-12, msg=name)
        dy = torch.randn_like(y)
        given = [t for t in (weight, bias) if t is not None]
        got = torch.autograd.grad(y, [x, *given], dy)
        want = torch.autograd.grad(yr, [xr, *(t for t in (wr, br) if t.requires_grad)], dy)
        for g, r in zip(got, want, strict=True):
            torch.testing.assert_close(g, r, atol=1e-12, rtol=1e-12, msg=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask", [m for m in itertools.product([False, True], repeat=3) if any(m)])
def test_backward_computes_what_its_output_mask_asks_for(device, mask):
    """Each of (dx, dweight, dbias) is None where the mask says False, and otherwise what the full backward gives;
    without weight or bias their gradient is None whatever the mask."""
    w, b = parameters(device)
    for name, x, last, ptr, batch in cases(device):
        layout = list(_layout(device))
        _, mean, m2 = torch.ops.eqnorm.field_norm(x, w, b, layout, ptr, last, batch, 1e-5)
        dy = torch.randn_like(x)
        full = torch.ops.eqnorm.field_norm_backward(dy, x, mean, m2, w, b, layout, ptr, last, batch, 1e-5, [True] * 3)
        part = torch.ops.eqnorm.field_norm_backward(dy, x, mean, m2, w, b, layout, ptr, last, batch, 1e-5, list(mask))
        for wanted, got, want, what in zip(mask, part, full, ("dx", "dweight", "dbias"), strict=True):
            if not wanted:
                assert got is None, f"{name}: {what} computed though the mask says no"
            else:
                torch.testing.assert_close(got, want, atol=0, rtol=0, msg=f"{name} {what}")
        _, mean, m2 = torch.ops.eqnorm.field_norm(x, None, None, layout, ptr, last, batch, 1e-5)
        none = torch.ops.eqnorm.field_norm_backward(
            dy, x, mean, m2, None, None, layout, ptr, last, batch, 1e-5, list(mask)
        )
        assert none[1] is None and none[2] is None, name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", [torch.ops.eqnorm.field_norm, _pure_kernels.torch_field_norm], ids=["compiled", "torch"])
def test_float32_variance_overflow_gives_nan_never_a_finite_wrong_output(device, op):
    # float32 squares overflow from |x| ~ 1.8e19 on; an infinite variance once gave a zero coefficient and the bias as
    # output, finite and wrong. float64 (no overflow) says what the output should be.
    w, b = parameters(device)
    for name, x64, last, ptr, batch in cases(device):
        for scale in (1e15, 1e19, 1e30):
            layout = list(_layout(device)) if op is torch.ops.eqnorm.field_norm else _layout(device)
            x = (x64 * scale).float().requires_grad_()
            y = op(x, w.float(), b.float(), layout, ptr, last, batch, 1e-5)[0]
            want = op(x.detach().double(), w, b, layout, ptr, last, batch, 1e-5)[0].float()
            right = torch.isclose(y, want, rtol=1e-3, atol=1e-3)
            assert (right | y.isnan()).all(), f"{name} at {scale:g}: finite and wrong"
            if scale == 1e15:
                assert right.all(), name
            (dx,) = torch.autograd.grad(y, x, torch.ones_like(y), allow_unused=True)
            if dx is not None and y.isnan().any():
                assert dx.isnan().any() or dx.numel() == 0, name


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    """Schema, fake kernel, autograd registration and dynamic shapes agree with the real kernels."""
    for _name, x, last, ptr, batch in cases(device):
        if x.numel() == 0:
            continue
        w, b = parameters(device)
        args = (x.requires_grad_(), w.requires_grad_(), b, list(_layout(device)), ptr, last, batch, 1e-5)
        torch.library.opcheck(torch.ops.eqnorm.field_norm.default, args)
        y, mean, m2 = torch.ops.eqnorm.field_norm(*args)
        mask = [True, True, True]
        back = (
            torch.randn_like(y),
            x.detach(),
            mean,
            m2,
            w.detach(),
            b,
            list(_layout(device)),
            ptr,
            last,
            batch,
            1e-5,
            mask,
        )
        torch.library.opcheck(
            torch.ops.eqnorm.field_norm_backward.default, back, test_utils=("test_schema", "test_faketensor")
        )
        bare = (x, None, None, list(_layout(device)), ptr, last, batch, 1e-5)
        torch.library.opcheck(torch.ops.eqnorm.field_norm.default, bare)
        y, mean, m2 = torch.ops.eqnorm.field_norm(*bare)
        back = (
            torch.randn_like(y),
            x.detach(),
            mean,
            m2,
            None,
            None,
            list(_layout(device)),
            ptr,
            last,
            batch,
            1e-5,
            [True, False, False],
        )
        torch.library.opcheck(
            torch.ops.eqnorm.field_norm_backward.default, back, test_utils=("test_schema", "test_faketensor")
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])  # the CPU's one-pass kernel, and the passes
@pytest.mark.parametrize("last", [False, True])
def test_point_rows_keep_no_statistics_and_their_backward_reads_x(device, dtype, last):
    """One position per sample (no ptr, not batch): mean and M2 would be x and 0, so the op returns them (N, 0), in
    every implementation and the fake kernel alike, and its backward, reading x, still equals the reference's.
    Pooled over the batch, the same rows keep their (N, C) statistics (batch norm's running statistics read them)."""
    x = torch.randn(5, 8, 1, dtype=torch.float64, device=device)
    x = (x.transpose(1, 2) if last else x).to(dtype).requires_grad_()
    w, b = parameters(device, dtype)
    index = list(_layout(device))
    y, mean, m2 = torch.ops.eqnorm.field_norm(x, w, b, index, None, last, False, 1e-5)
    acc = _pure_kernels.accumulation_dtype(dtype)
    assert mean.shape == m2.shape == (5, 0) and mean.dtype == m2.dtype == acc
    pure = _pure_kernels.torch_field_norm(x, w, b, _layout(device), None, last, False, 1e-5)
    assert pure[1].shape == pure[2].shape == (5, 0)
    tol = TOL[dtype]
    torch.testing.assert_close(y.double(), pure[0].double(), atol=tol * 4, rtol=tol)
    with torch._subclasses.FakeTensorMode() as mode:
        fx, fw, fb, *findex = (mode.from_tensor(t) for t in (x, w, b, *index))
        fake = torch.ops.eqnorm.field_norm(fx, fw, fb, findex, None, last, False, 1e-5)
    assert fake[1].shape == fake[2].shape == (5, 0)
    assert torch.ops.eqnorm.field_norm(x, w, b, index, None, last, True, 1e-5)[1].shape == (5, 8)
    dy = torch.randn_like(x)
    got = torch.ops.eqnorm.field_norm_backward(
        dy, x.detach(), mean, m2, w, b, index, None, last, False, 1e-5, [True] * 3
    )
    want = torch.autograd.grad(pure[0], (x,), dy)[0]
    torch.testing.assert_close(got[0].double(), want.double(), atol=tol * 4, rtol=tol)
    full = torch.zeros(5, 8, dtype=acc, device=device)
    with pytest.raises(RuntimeError, match=r"mean must have shape \(5, 0\), got \[5, 8\]"):
        torch.ops.eqnorm.field_norm_backward(
            dy, x.detach(), full, full, w, b, index, None, last, False, 1e-5, [True] * 3
        )


@given(spec=specs(max_fields=4), centering=st.sampled_from(["trivial", "all", "none"]), seed=st.integers(0, 99))
def test_random_layouts_match_reference(spec, centering, seed):
    layout = layout_of(spec, centering)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, layout.num_channels, 5, generator=gen, dtype=torch.float64).requires_grad_()
    w = (torch.rand(layout.num_fields, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(layout.num_trivial, generator=gen, dtype=torch.float64).requires_grad_()
    t = layout.tensors
    y = torch.ops.eqnorm.field_norm(x, w, b, list(t), None, False, False, 1e-5)[0]
    yr = _pure_kernels.torch_field_norm(x, w, b, t, None, False, False, 1e-5)[0]
    torch.testing.assert_close(y, yr, atol=1e-11, rtol=1e-11)
    dy = torch.randn_like(y)
    for g, r in zip(torch.autograd.grad(y, (x, w, b), dy), torch.autograd.grad(yr, (x, w, b), dy), strict=True):
        torch.testing.assert_close(g, r, atol=1e-10, rtol=1e-10)


# 16 fields of a scalar and a vector in 4 contiguous groups of 12 channels: a layout that the per-sample layer splits
# into parts of whole groups once a sample outgrows its cache budget of 256 KB (2049 values: 2 parts forward in
# float32, 4 backward and in float64; 600 values: one part, but 2 backward in float64)
CONTIGUOUS = FieldLayout(16 * [["s", "v"]], {"s": 1, "v": 2}, {"s"}, [g for g in range(4) for _ in range(4)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("layout", "positions"),
    [(LAYOUT, 1500), (LAYOUT, 2048), (LAYOUT, 2049), (LAYOUT, 4100), (CONTIGUOUS, 2049), (CONTIGUOUS, 600)],
    ids=["short-rows", "one-block", "two-blocks", "ragged-blocks", "parts", "few-parts"],
)
def test_per_sample_layer_equals_the_passes_bit_for_bit(dtype, layout, positions):
    """Channels-first calls with as many samples as threads run each sample's passes in one task (part by part when
    the sample is large); with fewer they run the passes over all rows. Both must give the same bits (outputs,
    statistics, every gradient), so no result depends on the number of threads."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, layout.num_channels, positions, generator=gen, dtype=torch.float64) * 3 + 2
    x = x.to(dtype).requires_grad_()
    dy = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype)
    w = (torch.rand(layout.num_fields, generator=gen, dtype=torch.float64) + 0.5).to(dtype).requires_grad_()
    b = torch.randn(layout.num_trivial, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 4):  # 3 samples: one task each on 1 thread; the passes on 4
            torch.set_num_threads(n)
            y, mean, m2 = torch.ops.eqnorm.field_norm(x, w, b, layout.tensors_on("cpu"), None, False, False, 1e-5)
            results.append((y, mean, m2, *torch.autograd.grad(y, (x, w, b), dy)))
    finally:
        torch.set_num_threads(threads)
    for one, other in zip(*results, strict=True):
        assert torch.equal(one, other)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("ptr", "positions"), [(None, 150), (torch.tensor([0, 70, 70, 200]), 200)], ids=["dense", "ragged"]
)
def test_wide_channels_last_rows_match_reference(dtype, ptr, positions):
    """Channels-last and ragged rows go in chunks of 64 channels (float chunks with their sums in registers); 80
    channels make one full chunk and a tail of 16, over blocks of 64 positions with a ragged last block."""
    layout = FieldLayout(16 * [["s", "v", "v"]], {"s": 1, "v": 2}, {"s"}, [g for g in range(4) for _ in range(4)])
    gen = torch.Generator().manual_seed(3)
    shape = (positions, layout.num_channels) if ptr is not None else (2, positions, layout.num_channels)
    x64 = torch.randn(*shape, generator=gen, dtype=torch.float64) * 3 + 2
    w64 = torch.rand(layout.num_fields, generator=gen, dtype=torch.float64) + 0.5
    b64 = torch.randn(layout.num_trivial, generator=gen, dtype=torch.float64)
    x, w, b = (t.to(dtype).requires_grad_() for t in (x64, w64, b64))
    xr, wr, br = (t.clone().requires_grad_() for t in (x64, w64, b64))
    t = layout.tensors_on("cpu")
    y, mean, m2 = torch.ops.eqnorm.field_norm(x, w, b, t, ptr, True, False, 1e-5)
    yr, mean_r, m2_r = _pure_kernels.torch_field_norm(xr, wr, br, t, ptr, True, False, 1e-5)
    tol = TOL[dtype]
    torch.testing.assert_close(mean.double(), mean_r.detach(), atol=tol, rtol=tol)
    torch.testing.assert_close(m2.double(), m2_r.detach(), atol=tol * 100, rtol=tol)
    torch.testing.assert_close(y.double(), yr.detach(), atol=tol * 4, rtol=tol)
    dy = torch.randn(yr.shape, generator=gen, dtype=torch.float64)
    for g, r in zip(
        torch.autograd.grad(y, (x, w, b), dy.to(dtype)), torch.autograd.grad(yr, (xr, wr, br), dy), strict=True
    ):
        torch.testing.assert_close(g.double(), r, atol=tol * 20 * (1 + r.abs().max().item()), rtol=tol * 10)


@pytest.mark.parametrize(
    ("weight", "bias", "message"),
    [
        (5, 4, r"weight must have shape \(4,\), one entry per field of the layout, got shape \[5\]"),
        (4, 3, r"bias must have shape \(4,\), one entry per trivial irrep copy of the layout, got shape \[3\]"),
        (None, 5, r"bias must have shape \(4,\)"),
        (3, None, r"weight must have shape \(4,\)"),
    ],
    ids=["weight too long", "bias too short", "bias too long without weight", "weight too short without bias"],
)
def test_parameters_that_do_not_match_the_layout_are_refused(weight, bias, message):
    x = torch.randn(2, 8, 3, dtype=torch.float64)
    w = None if weight is None else torch.ones(weight, dtype=torch.float64)
    b = None if bias is None else torch.zeros(bias, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.eqnorm.field_norm(x, w, b, list(LAYOUT.tensors), None, False, False, 1e-5)


def test_a_compiled_layout_of_another_layout_is_refused():
    other = FieldLayout([["s", "v"], ["s"], ["v"], ["s", "s"]], {"s": 1, "v": 2}, {"s"}, [0, 0, 0, 0], centering="all")
    t = list(LAYOUT.tensors)
    t[-2:] = other.tensors[-2:]
    w, b = parameters("cpu")
    with pytest.raises(RuntimeError, match=r"the compiled index .* does not match 8 channels"):
        torch.ops.eqnorm.field_norm(torch.randn(2, 8, 3, dtype=torch.float64), w, b, t, None, False, False, 1e-5)


@pytest.mark.parametrize(
    ("ptr", "message"),
    [
        ([0, 2, 4], "from 0 to the number of rows 6"),
        ([2, 4, 6], "from 0 to the number of rows 6"),
        ([0], "from 0 to the number of rows 6"),
        ([0, 4, 2, 6], "non-decreasing"),
    ],
)
def test_bad_offsets_are_refused(ptr, message):
    w, b = parameters("cpu")
    x = torch.randn(6, 8, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.eqnorm.field_norm(x, w, b, list(LAYOUT.tensors), torch.tensor(ptr), True, False, 1e-5)


def test_fused_backward_refuses_to_be_differentiated():
    x = torch.randn(2, 8, 3, dtype=torch.float64, requires_grad=True)
    w, b = parameters("cpu")
    _, mean, m2 = torch.ops.eqnorm.field_norm(x, w, b, list(LAYOUT.tensors), None, False, False, 1e-5)
    with pytest.raises(RuntimeError, match="not differentiable"):
        torch.ops.eqnorm.field_norm_backward(
            torch.ones_like(x), x, mean, m2, w, b, list(LAYOUT.tensors), None, False, False, 1e-5, [True, True, True]
        )


def test_parameters_on_another_device_are_refused():
    w, b = parameters("cpu")
    with pytest.raises(RuntimeError, match="weight is on meta but x is on cpu"):
        torch.ops.eqnorm.field_norm(
            torch.randn(2, 8, 3), w.to("meta"), b, list(LAYOUT.tensors), None, False, False, 1e-5
        )
