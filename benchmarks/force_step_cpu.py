"""One force-training step of a small e3nn model with eqnorm's per-graph group norm against the same model with
e3nn's BatchNorm, on the CPU: energy, forces by autograd with create_graph=True, a loss on both, backward.

Each round times one step of every candidate in turn (interleaved); the table reports medians. Usage:
``python benchmarks/force_step_cpu.py [--rounds N] [--atoms N] [--graphs N]``.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from _timing import seconds_per_call
from e3nn import o3
from e3nn.nn import BatchNorm

from eqnorm.e3nn import IrrepsGroupNorm

HIDDEN = o3.Irreps("32x0e+16x1o+8x2e")
SH = o3.Irreps("1x0e+1x1o+1x2e")


class Model(torch.nn.Module):
    """Spherical harmonics of relative positions, a tensor product with node features, a norm, an energy head."""

    def __init__(self, norm: str) -> None:
        super().__init__()
        self.embed = o3.Linear(SH, HIDDEN)
        self.tp = o3.FullyConnectedTensorProduct(HIDDEN, SH, HIDDEN)
        self.norm_kind = norm
        self.norm = IrrepsGroupNorm(HIDDEN, 8, over="graph") if norm == "eqnorm" else BatchNorm(HIDDEN)
        self.head = o3.Linear(HIDDEN, "1x0e")

    def forward(self, pos: torch.Tensor, batch: torch.Tensor, edges: torch.Tensor, graphs: int) -> torch.Tensor:
        src, dst = edges
        sh = o3.spherical_harmonics(SH, pos[dst] - pos[src], normalize=True, normalization="component")
        h = self.embed(o3.spherical_harmonics(SH, pos - pos.mean(0), True, normalization="component"))
        h = h + torch.zeros_like(h).index_add(0, dst, self.tp(h[src], sh))
        h = self.norm(h, batch=batch, num_graphs=graphs) if self.norm_kind == "eqnorm" else self.norm(h)
        return torch.zeros(graphs).index_add(0, batch, self.head(h).squeeze(-1))


def data(atoms: int, graphs: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    pos = torch.randn(atoms * graphs, 3, generator=gen)
    batch = torch.arange(graphs).repeat_interleave(atoms)
    local = torch.combinations(torch.arange(atoms)).T
    edges = torch.cat([local + g * atoms for g in range(graphs)], 1)
    edges = torch.cat([edges, edges.flip(0)], 1)
    return pos, batch, edges, torch.randn(graphs, generator=gen), torch.randn(atoms * graphs, 3, generator=gen)


def step(
    model: Model,
    pos: torch.Tensor,
    batch: torch.Tensor,
    edges: torch.Tensor,
    energy: torch.Tensor,
    forces: torch.Tensor,
) -> Callable[[], None]:
    graphs = energy.shape[0]

    def run() -> None:
        p = pos.clone().requires_grad_()
        e = model(p, batch, edges, graphs)
        f = -torch.autograd.grad(e.sum(), p, create_graph=True)[0]
        loss = (e - energy).square().mean() + (f - forces).square().mean()
        model.zero_grad()
        loss.backward()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--atoms", type=int, default=16)
    parser.add_argument("--graphs", type=int, default=8)
    args = parser.parse_args()
    inputs = data(args.atoms, args.graphs)
    runs = {name: step(Model(name), *inputs) for name in ("eqnorm", "e3nn BatchNorm")}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):  # interleaved rounds; the timer warms each candidate up itself
        for name, run in runs.items():
            times[name].append(seconds_per_call(run))
    base = statistics.median(times["e3nn BatchNorm"])
    print(
        f"{args.graphs} graphs x {args.atoms} atoms, hidden {HIDDEN}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds"
    )
    print("| model norm | ms per force-training step | vs e3nn BatchNorm |\n|---|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median * 1e3:.2f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
