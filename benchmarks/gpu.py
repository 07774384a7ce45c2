"""GPU timings of eqnorm's op and layer against torch.nn.functional.group_norm (no escnn needed).

For each shape: the median time of forward and of backward (CUDA events, inputs rotated so that no pass is served
from L2), the achieved bandwidth as a fraction of the measured device-to-device copy bandwidth under the traffic model
(forward: 2 reads + 1 write of x; backward: 3 reads + 1 write), and the ratio to PyTorch's GroupNorm. Run by
benchmarks/gpu.sh.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import numpy as np
import torch

import eqnorm
from eqnorm.functional import field_group_norm
from eqnorm.layout import FieldLayout

L2_BYTES = 64 << 20


def regular_like_layout(channels: int, num_groups: int) -> FieldLayout:
    """Fields of size 8 with the irreps of C8's regular representation (1+2+2+2+1) and random orthogonal bases."""
    rng = np.random.default_rng(0)
    dims = {"0": 1, "1": 2, "2": 2, "3": 2, "4": 1}
    fields = channels // 8
    bases = [np.linalg.qr(rng.standard_normal((8, 8)))[0] for _ in range(fields)]
    return FieldLayout([list(dims)] * fields, dims, {"0"}, [i * num_groups // fields for i in range(fields)], bases)


def timed(fn: Callable[[int], object], sets: int, repeats: int = 30, inner: int = 10) -> float:
    """Median over repeats of the mean time of `inner` calls, in seconds, cycling through `sets` inputs."""
    for i in range(3):
        fn(i % sets)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(inner):
            fn(i % sets)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / inner)
    return statistics.median(times)


def copy_bandwidth() -> float:
    """Bytes per second of a large device-to-device copy, counting bytes read plus bytes written."""
    src = torch.randn(256 << 20, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    t = timed(lambda i: dst.copy_(src), 1, repeats=10, inner=5)
    return 2 * src.numel() * src.element_size() / t


def bench(shape: tuple[int, ...], dtype: torch.dtype, groups: int, bandwidth: float) -> list[str]:
    n, c = shape[:2]
    groups = min(groups, c // 8)  # whole fields of 8 channels
    layout = regular_like_layout(c, groups)
    elem = torch.empty((), dtype=dtype).element_size()
    numel = int(np.prod(shape))
    sets = min(64, max(1, -(-3 * L2_BYTES // (numel * elem))))  # tiny shapes are host-bound: 64 sets suffice
    xs = [torch.randn(shape, device="cuda", dtype=dtype).mul_(2).add_(1).requires_grad_() for _ in range(sets)]
    dys = [torch.randn(shape, device="cuda", dtype=dtype) for _ in range(sets)]
    w_ours = torch.ones(layout.num_fields, device="cuda", requires_grad=True)
    b_ours = torch.zeros(layout.num_trivial, device="cuda", requires_grad=True)
    w_gn = torch.ones(c, device="cuda", dtype=dtype, requires_grad=True)
    b_gn = torch.zeros(c, device="cuda", dtype=dtype, requires_grad=True)
    candidates = {
        "eqnorm": lambda x: field_group_norm(x, layout, w_ours, b_ours),
        "torch GroupNorm": lambda x: torch.nn.functional.group_norm(x, groups, w_gn, b_gn),
    }
    rows = []
    results: dict[str, tuple[float, float | None]] = {}
    for name, fn in candidates.items():
        with torch.no_grad():
            fwd = timed(lambda i, fn=fn: fn(xs[i]), sets)
        outs = [fn(x) for x in xs]
        bwd = timed(lambda i, outs=outs: torch.autograd.backward(outs[i], dys[i], retain_graph=True), sets)
        results[name] = (fwd, bwd)
    # the op alone, without the module's and the functional layer's Python
    rows3 = [x.detach().reshape(n, c, -1) for x in xs]
    dys3 = [dy.reshape(n, c, -1) for dy in dys]
    t = list(layout.tensors_on("cuda"))
    w, b = w_ours.detach(), b_ours.detach()
    stats = [torch.ops.eqnorm.field_norm(r, w, b, t, None, False, False, 1e-5) for r in rows3]
    fwd = timed(lambda i: torch.ops.eqnorm.field_norm(rows3[i], w, b, t, None, False, False, 1e-5), sets)
    bwd = timed(
        lambda i: torch.ops.eqnorm.field_norm_backward(
            dys3[i], rows3[i], stats[i][1], stats[i][2], w, b, t, None, False, False, 1e-5, [True, True, True]
        ),
        sets,
    )
    results["eqnorm op only"] = (fwd, bwd)
    # forward replayed from a CUDA graph: what the layers cost once host-side Python is out of the way (one static
    # input, so shapes that fit in L2 are served from it)
    for name in ("eqnorm", "torch GroupNorm"):
        results[f"{name} (CUDA graph, fwd)"] = (graphed(candidates[name], xs[0]), None)
    for name, (fwd, bwd) in results.items():
        base_f, base_b = results["torch GroupNorm"]
        frac_f = 3 * numel * elem / fwd / bandwidth
        back = (
            "- | - | -"
            if bwd is None
            else f"{bwd * 1e6:.1f} | {4 * numel * elem / bwd / bandwidth:.0%} | {base_b / bwd:.2f}x"
        )
        rows.append(
            f"| {shape} | {str(dtype).removeprefix('torch.')} | {name} | {fwd * 1e6:.1f} | {frac_f:.0%} | "
            f"{base_f / fwd:.2f}x | {back} |"
        )
    return rows


def map_bound(shape: tuple[int, ...], dtype: torch.dtype, groups: int) -> str:
    """The op on one position per row, (N, C, 1): its passes touch only N C values, so its time bounds the
    coefficient map's from above (forward, backward, and forward replayed from a CUDA graph)."""
    n, c = shape[:2]
    layout = regular_like_layout(c, min(groups, c // 8))
    t = list(layout.tensors_on("cuda"))
    w = torch.ones(layout.num_fields, device="cuda")
    b = torch.zeros(layout.num_trivial, device="cuda")
    sets = 16
    xs = [torch.randn(n, c, 1, device="cuda", dtype=dtype) for _ in range(sets)]
    dys = [torch.randn_like(x) for x in xs]

    def op(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.ops.eqnorm.field_norm(x, w, b, t, None, False, False, 1e-5)

    stats = [op(x) for x in xs]
    fwd = timed(lambda i: op(xs[i]), sets)
    bwd = timed(
        lambda i: torch.ops.eqnorm.field_norm_backward(
            dys[i], xs[i], stats[i][1], stats[i][2], w, b, t, None, False, False, 1e-5, [True, True, True]
        ),
        sets,
    )
    graph = graphed(lambda x: op(x)[0], xs[0])
    name = str(dtype).removeprefix("torch.")
    return f"| ({n}, {c}, 1) | {name} | {fwd * 1e6:.1f} | {bwd * 1e6:.1f} | {graph * 1e6:.1f} |"


def graphed(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    """Median time of a forward replayed from a captured CUDA graph."""
    static = x.detach().clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(3):
            fn(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        fn(static)
    return timed(lambda i: graph.replay(), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--groups", type=int, default=32)
    args = parser.parse_args()
    assert eqnorm.kernel_backend("cuda") == "cuda", "the CUDA extension is not built"
    bandwidth = copy_bandwidth()
    print(
        f"{torch.cuda.get_device_name()}, torch {torch.version.__version__}, copy bandwidth {bandwidth / 1e12:.2f} TB/s"
    )
    print(f"{args.groups} groups of regular-like fields (size 8); speed-up is torch time / eqnorm time\n")
    print(
        "| shape | dtype | candidate | fwd us | fwd % copy bw | fwd speed-up | bwd us | bwd % copy bw | bwd speed-up |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for shape, dtype in (
        ((32, 256, 64, 64), torch.float32),
        ((32, 256, 64, 64), torch.bfloat16),
        ((1, 512, 64, 64), torch.float32),
        ((64, 256, 8, 8), torch.float32),
        ((1, 16, 2, 2), torch.float32),  # the per-call cost: launches and host-side work only
    ):
        for row in bench(shape, dtype, args.groups, bandwidth):
            print(row, flush=True)
    print("\nThe coefficient map bounded from above: the op on one position per row (target: under 10 us)\n")
    print("| rows | dtype | fwd us | bwd us | fwd us, CUDA graph |\n|---|---|---:|---:|---:|")
    for shape, dtype in (((32, 256), torch.float32), ((1, 512), torch.float32), ((64, 256), torch.bfloat16)):
        print(map_bound(shape, dtype, args.groups), flush=True)


if __name__ == "__main__":
    main()
