"""The CUDA kernels where the CPU tests cannot reach them: rows long enough to be split across blocks (the workspace
and merge kernels), every dtype against a float64 reference with the output memory poisoned first, derivatives of
any order, modules moved with ``.to()``, compilation with dynamic shapes, CUDA graph capture (no host
synchronization) and refusal of tensors on mixed devices. Skipped without a CUDA device; run by benchmarks/gpu.sh."""

import os

import pytest
import torch
import torch._dynamo.testing
from test_ops import LAYOUT, parameters

import eqnorm
from eqnorm import FieldNorm, _pure_kernels
from eqnorm.batch_norm import PlainBatchNorm
from eqnorm.functional import field_group_norm
from eqnorm.layout import FieldLayout

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}


def poison_allocator() -> None:
    """Fill free cached blocks with NaN so that an output element the kernels never write shows up as NaN."""
    junk = torch.full((64 << 20,), float("nan"), device="cuda")
    del junk


def long_rows():
    """(name, x in float64, channels_last, ptr, batch): rows of 10^5 positions and more, which the reductions split."""
    gen = torch.Generator(device="cuda").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, device="cuda", dtype=torch.float64) * 3 + 2

    yield "first", rand(2, 8, 300_001), False, None, False
    yield "last", rand(3, 100_003, 8), True, None, False
    yield "ragged", rand(200_010, 8), True, torch.tensor([0, 5, 200_005, 200_005, 200_010], device="cuda"), False
    yield "batch first", rand(64, 8, 4099), False, None, True
    yield "batch last", rand(64, 4099, 8), True, None, True


def test_extension_has_cuda_kernels():
    if os.environ.get("EQNORM_EXPECT_CUDA") != "1":
        pytest.skip("set EQNORM_EXPECT_CUDA=1 where the extension was built with CUDA")
    assert eqnorm.kernel_backend("cuda") == "cuda"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_long_rows_match_the_float64_reference(dtype):
    w64, b64 = parameters("cuda")
    t = list(LAYOUT.tensors_on("cuda"))
    for name, x64, last, ptr, batch in long_rows():
        x = x64.to(dtype).requires_grad_()
        w, b = w64.clone().requires_grad_(), b64.clone().requires_grad_()
        poison_allocator()
        y, mean, m2 = torch.ops.eqnorm.field_norm(x, w, b, t, ptr, last, batch, 1e-5)
        xr = x.detach().double().requires_grad_()
        wr, br = w64.clone().requires_grad_(), b64.clone().requires_grad_()
        yr, mean_r, m2_r = _pure_kernels.torch_field_norm(xr, wr, br, LAYOUT.tensors_on("cuda"), ptr, last, batch, 1e-5)
        tol = TOL[dtype]
        assert torch.isfinite(y).all(), name
        torch.testing.assert_close(y.double(), yr.detach(), atol=4 * tol, rtol=tol, msg=name)
        torch.testing.assert_close(mean.double(), mean_r.detach(), atol=tol, rtol=tol, msg=name)
        torch.testing.assert_close(m2.double(), m2_r.detach(), atol=tol, rtol=tol, msg=name)
        dy = torch.randn_like(yr)
        poison_allocator()
        got = torch.autograd.grad(y, (x, w, b), dy.to(dtype))
        want = torch.autograd.grad(yr, (xr, wr, br), dy)
        for g, r, what in zip(got, want, ("dx", "dweight", "dbias"), strict=True):
            assert torch.isfinite(g).all(), f"{name} {what}"
            # parameter gradients are sums over 10^5-10^6 values: compare relative to their size
            scale = 1 + r.abs().max().item()
            torch.testing.assert_close(g.double(), r, atol=20 * tol * scale, rtol=10 * tol, msg=f"{name} {what}")


@pytest.mark.parametrize(
    ("layout", "rows"),
    [
        # scratch of a row in shared memory; one row fills one block, N = 1 included
        (FieldLayout([["s", "v", "s"]] * 6, {"s": 1, "v": 2}, {"s"}, [0, 1, 2, 0, 1, 2], centering="all"), 1),
        (FieldLayout([["s", "v", "s"]] * 6, {"s": 1, "v": 2}, {"s"}, [0, 1, 2, 0, 1, 2], centering="all"), 5000),
        # 6000 channels: a row's scratch outgrows shared memory and lives in global memory
        (FieldLayout([["s", "v"]] * 2000, {"s": 1, "v": 2}, {"s"}, [f % 7 for f in range(2000)]), 3),
    ],
    ids=["one row", "more rows than blocks", "global scratch"],
)
def test_coefficient_map_matches_the_float64_reference(layout, rows):
    gen = torch.Generator(device="cuda").manual_seed(4)
    x = torch.randn(rows, layout.num_channels, 3, generator=gen, device="cuda", dtype=torch.float64) * 2 + 1
    w = torch.rand(layout.num_fields, generator=gen, device="cuda", dtype=torch.float64) + 0.5
    b = torch.randn(layout.num_trivial, generator=gen, device="cuda", dtype=torch.float64)
    t = layout.tensors_on("cuda")
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        args = [a.to(dtype).requires_grad_() for a in (x, w, b)]
        ref = [a.clone().requires_grad_() for a in (x, w, b)]
        y = torch.ops.eqnorm.field_norm(*args, list(t), None, False, False, 1e-5)[0]
        yr = _pure_kernels.torch_field_norm(*ref, t, None, False, False, 1e-5)[0]
        torch.testing.assert_close(y.double(), yr, atol=tol, rtol=tol)
        dy = torch.randn_like(yr)
        for g, r in zip(torch.autograd.grad(y, args, dy.to(dtype)), torch.autograd.grad(yr, ref, dy), strict=True):
            torch.testing.assert_close(g.double(), r, atol=tol * (1 + r.abs().max().item()), rtol=tol)


def test_results_do_not_depend_on_scheduling():
    """No atomics: the same input gives bit-identical statistics and gradients on every run."""
    x = (torch.randn(2, 8, 300_001, device="cuda") * 3 + 2).requires_grad_()
    w, b = (p.float().requires_grad_() for p in parameters("cuda"))
    runs = []
    for _ in range(3):
        y = field_group_norm(x, LAYOUT, w, b)
        runs.append((y, *torch.autograd.grad(y, (x, w, b), torch.ones_like(y))))
    for run in runs[1:]:
        for a, b_ in zip(runs[0], run, strict=True):
            assert torch.equal(a, b_)


def test_gradgradcheck_on_cuda():
    w, b = (p.requires_grad_() for p in parameters("cuda"))
    x = (torch.randn(2, 8, 3, 2, device="cuda", dtype=torch.float64) * 2 + 1).requires_grad_()
    for memory in (torch.contiguous_format, torch.channels_last):
        xm = x.detach().to(memory_format=memory).requires_grad_()
        fn = lambda x, w, b: field_group_norm(x, LAYOUT, w, b)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (xm, w, b))
        assert torch.autograd.gradgradcheck(fn, (xm, w, b))
    ptr = torch.tensor([0, 3, 3, 6, 7], device="cuda")
    nodes = torch.randn(7, 8, device="cuda", dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda x, w: field_group_norm(x, LAYOUT, w, ptr=ptr), (nodes, w))
    norm = PlainBatchNorm(LAYOUT).double().cuda()
    xb = (torch.randn(3, 8, 2, device="cuda", dtype=torch.float64) + 1).requires_grad_()
    assert torch.autograd.gradgradcheck(norm, (xb,))


def test_modules_moved_to_cuda_match_the_cpu():
    cpu = FieldNorm(LAYOUT).double()
    with torch.no_grad():
        cpu.weight.uniform_(0.5, 1.5)
        cpu.bias.normal_()
    gpu = FieldNorm(LAYOUT).double()
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda()
    assert {t.device.type for t in gpu.buffers()} == {"cuda"}
    x = torch.randn(4, 8, 5, 3, dtype=torch.float64) * 2 + 1
    torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), atol=1e-12, rtol=1e-12)
    batch_cpu, batch_gpu = PlainBatchNorm(LAYOUT).double(), PlainBatchNorm(LAYOUT).double().cuda()
    for _ in range(3):
        xb = torch.randn(6, 8, 4, dtype=torch.float64) * 2 + 1
        torch.testing.assert_close(batch_gpu(xb.cuda()).cpu(), batch_cpu(xb), atol=1e-12, rtol=1e-12)
    for name, buffer in batch_cpu.named_buffers():
        torch.testing.assert_close(dict(batch_gpu.named_buffers())[name].cpu(), buffer, atol=1e-12, rtol=1e-12)


def test_e3nn_per_graph_norm_on_cuda_compiles_fullgraph():
    pytest.importorskip("e3nn")
    from eqnorm.e3nn import IrrepsGroupNorm

    norm = IrrepsGroupNorm("4x0e+2x1o+2x2e", 2, over="graph").cuda()
    compiled = torch.compile(norm, fullgraph=True, dynamic=True)
    for sizes in ([3, 5, 1], [7, 2, 2, 9]):
        batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)).cuda()
        x = torch.randn(batch.numel(), 20, device="cuda")
        want = norm(x, batch=batch, num_graphs=len(sizes))
        torch.testing.assert_close(compiled(x, batch=batch, num_graphs=len(sizes)), want, atol=1e-5, rtol=1e-5)


def test_one_compiled_graph_for_several_sizes():
    torch._dynamo.reset()
    norm = FieldNorm(LAYOUT).cuda()
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    compiled = torch.compile(norm, backend=counter, dynamic=True, fullgraph=True)
    frames = []
    for h in (3, 5, 9, 13):  # no size equal to another dim: duck sizing would tie them
        x = torch.randn(2, 8, h, h + 1, device="cuda").requires_grad_()
        y = compiled(x)
        torch.testing.assert_close(y, norm(x), atol=1e-5, rtol=1e-5)
        (g,) = torch.autograd.grad((y * y).sum(), x)
        (g_ref,) = torch.autograd.grad((norm(x) ** 2).sum(), x)
        torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=1e-4)
        frames.append(counter.frame_count)
    assert frames == frames[:1] * 4, f"recompiled for a new size: {frames}"


def test_forward_and_backward_capture_in_a_cuda_graph():
    """Capture fails on any host synchronization, so this proves the layer never waits for the GPU."""
    norm = FieldNorm(LAYOUT).cuda()
    static_x = torch.randn(4, 8, 16, 16, device="cuda", requires_grad=True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            norm(static_x).square().sum().backward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    norm.zero_grad(set_to_none=True)
    static_x.grad = None
    with torch.cuda.graph(graph):
        static_y = norm(static_x)
        static_y.square().sum().backward()
    new = torch.randn(4, 8, 16, 16, device="cuda") * 2 + 1
    with torch.no_grad():
        static_x.copy_(new)
    graph.replay()
    x = new.clone().requires_grad_()
    y = norm(x)
    (gx,) = torch.autograd.grad(y.square().sum(), x)
    torch.testing.assert_close(static_y, y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(static_x.grad, gx, atol=1e-4, rtol=1e-4)


def test_tensors_on_mixed_devices_are_refused():
    x = torch.randn(2, 8, 5, device="cuda")
    w, b = parameters("cuda", torch.float32)
    with pytest.raises(RuntimeError, match=r"layout .* is on cpu but x is on cuda"):
        torch.ops.eqnorm.field_norm(x, w, b, list(LAYOUT.tensors), None, False, False, 1e-5)
    with pytest.raises(RuntimeError, match="weight is on cpu but x is on cuda"):
        torch.ops.eqnorm.field_norm(x, w.cpu(), b, list(LAYOUT.tensors_on("cuda")), None, False, False, 1e-5)
    with pytest.raises(ValueError, match="ptr is on cpu but the input is on cuda"):
        field_group_norm(torch.randn(7, 8, device="cuda"), LAYOUT, ptr=torch.tensor([0, 7]))
