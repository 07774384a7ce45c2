"""CPU timings of eqnorm's e3nn layers: per graph against a scatter-based PyTorch layer, per point cloud against
e3nn's BatchNorm(instance=True). Forward+backward, median of interleaved rounds, one run.

    .venv/bin/python benchmarks/e3nn_cpu.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from _timing import seconds_per_call
from e3nn import o3
from e3nn.nn import BatchNorm

import eqnorm
from eqnorm.e3nn import IrrepsGroupNorm

IRREPS = o3.Irreps("64x0e+32x1o+16x2e")


class ScatterIrrepsNorm(torch.nn.Module):
    """Per-graph norm with one group per irrep type, written the usual way with index_add (the same math)."""

    def __init__(self, irreps: o3.Irreps, eps: float = 1e-5) -> None:
        super().__init__()
        self.irreps, self.eps = irreps, eps
        self.weight = torch.nn.Parameter(torch.ones(irreps.num_irreps))
        self.bias = torch.nn.Parameter(torch.zeros(sum(mul for mul, ir in irreps if ir.l == 0 and ir.p == 1)))

    def forward(self, x: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
        counts = torch.bincount(batch, minlength=num_graphs).clamp(min=1).to(x.dtype)
        out, w_start, b_start, start = [], 0, 0, 0
        for mul, ir in self.irreps:
            block = x[:, start : start + mul * ir.dim].reshape(-1, mul, ir.dim)
            start += mul * ir.dim
            if ir.l == 0 and ir.p == 1:
                per_graph = x.new_zeros(num_graphs, 1, 1).index_add_(0, batch, block.mean((1, 2), keepdim=True))
                block = block - (per_graph / counts.view(-1, 1, 1))[batch]
            sq = x.new_zeros(num_graphs).index_add_(0, batch, block.square().mean((1, 2)))
            block = block * (sq / counts + self.eps).rsqrt()[batch].view(-1, 1, 1)
            block = block * self.weight[w_start : w_start + mul].view(1, -1, 1)
            w_start += mul
            if ir.l == 0 and ir.p == 1:
                block = block + self.bias[b_start : b_start + mul].view(1, -1, 1)
                b_start += mul
            out.append(block.reshape(-1, mul * ir.dim))
        return torch.cat(out, dim=1)


def timed(fns: dict[str, Callable[[], torch.Tensor]], rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):  # interleaved rounds; the timer warms each candidate up itself
        for name, fn in fns.items():
            times[name].append(seconds_per_call(lambda fn=fn: fn().sum().backward()))
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    sizes = torch.randint(9, 30, (128,), generator=gen)
    batch = torch.repeat_interleave(torch.arange(128), sizes)
    x_graph = torch.randn(int(sizes.sum()), IRREPS.dim, generator=gen).requires_grad_()
    ours_graph = IrrepsGroupNorm(IRREPS, group_by="irrep", over="graph")
    scatter = ScatterIrrepsNorm(IRREPS)
    x_points = torch.randn(16, 1024, IRREPS.dim, generator=gen).requires_grad_()
    ours_points = IrrepsGroupNorm(IRREPS, group_by="field", over="points")
    e3nn_points = BatchNorm(IRREPS, instance=True)
    graph = timed(
        {
            "eqnorm IrrepsGroupNorm(over='graph')": lambda: ours_graph(x_graph, batch=batch),
            "scatter-based PyTorch": lambda: scatter(x_graph, batch, 128),
        },
        args.rounds,
    )
    points = timed(
        {
            "eqnorm IrrepsGroupNorm(over='points')": lambda: ours_points(x_points),
            "e3nn BatchNorm(instance=True)": lambda: e3nn_points(x_points),
        },
        args.rounds,
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, backend {eqnorm.kernel_backend('cpu')!r}, "
        f"forward+backward, median of {args.rounds} interleaved rounds\n"
    )
    print("| case | candidate | ms | speed-up of eqnorm |\n|---|---|---:|---:|")
    for case, result in (
        (f"QM9-sized batch: 128 graphs, {x_graph.shape[0]} nodes, {IRREPS}", graph),
        (f"point clouds (16, 1024), {IRREPS}", points),
    ):
        ours = next(t for name, t in result.items() if name.startswith("eqnorm"))
        for name, t in result.items():
            print(f"| {case} | {name} | {t * 1e3:.2f} | {t / ours:.2f}x |")


if __name__ == "__main__":
    main()
