"""CPU timings of eqnorm's FieldGroupNorm against torch.nn.GroupNorm, escnn's batch norms and e3nn's instance norm.

Every candidate runs once per round, rounds interleaved, and the median over rounds is reported, so that drifts of
the machine hit every candidate alike. Ratios are against ``torch.nn.GroupNorm`` measured in the same run.

    scripts/dev.sh bench [--rounds 15] [--cases c8,small,3d,points] [--out benchmarks/cpu.md]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from _timing import seconds_per_call
from e3nn import nn as e3nn_nn
from e3nn import o3
from escnn import group, gspaces
from escnn import nn as escnn_nn
from escnn.nn import FieldType

import eqnorm
from eqnorm import FieldGroupNorm


@dataclass
class Case:
    name: str
    shape: tuple[int, ...]
    field_type: escnn_nn.FieldType
    num_groups: int
    irreps: str  # an e3nn layout with as many channels, for e3nn's BatchNorm(instance=True)


def cases() -> dict[str, Case]:
    c8 = gspaces.rot2dOnR2(8)
    so3 = gspaces.rot3dOnR3(maximum_frequency=1)
    points = gspaces.no_base_space(group.so3_group(maximum_frequency=1))
    return {
        "c8": Case("C8 regular 2D", (8, 128, 64, 64), FieldType(c8, 16 * [c8.regular_repr]), 16, "32x0e+32x1o"),
        "small": Case("C8 regular 2D", (32, 64, 8, 8), FieldType(c8, 8 * [c8.regular_repr]), 8, "16x0e+16x1o"),
        "3d": Case(
            "SO(3) scalars+vectors 3D",
            (2, 64, 16, 16, 16),
            FieldType(so3, 16 * [so3.trivial_repr] + 16 * [so3.irrep(1)]),
            16,
            "16x0e+16x1o",
        ),
        "points": Case(
            "SO(3) point features",
            (4096, 256),
            FieldType(points, 64 * [points.trivial_repr] + 64 * [points.irrep(1)]),
            16,
            "64x0e+64x1o",
        ),
    }


def candidates(case: Case) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    ft = case.field_type
    ours = FieldGroupNorm(ft, case.num_groups)
    torch_gn = torch.nn.GroupNorm(case.num_groups, ft.size)
    out: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "eqnorm FieldGroupNorm": lambda x: ours(escnn_nn.GeometricTensor(x, ft)).tensor,
        "torch GroupNorm": torch_gn,
    }
    spatial = len(case.shape) - 2
    if spatial in (2, 3):
        iid = (escnn_nn.IIDBatchNorm2d if spatial == 2 else escnn_nn.IIDBatchNorm3d)(ft)
        out["escnn IIDBatchNorm"] = lambda x: iid(escnn_nn.GeometricTensor(x, ft)).tensor
    if all(rep.name == "regular" for rep in ft.representations):
        inner = escnn_nn.InnerBatchNorm(ft)
        out["escnn InnerBatchNorm"] = lambda x: inner(escnn_nn.GeometricTensor(x, ft)).tensor
    e3 = e3nn_nn.BatchNorm(o3.Irreps(case.irreps), instance=True)
    # e3nn wants (batch, points, dim); the transpose is part of what a user pays
    out["e3nn BatchNorm(instance)"] = lambda x: e3(x.reshape(x.shape[0], x.shape[1], -1).transpose(1, 2))
    return out


def time_once(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, backward: bool) -> float:
    def run() -> None:
        y = fn(x)
        if backward:
            y.backward(torch.ones_like(y))

    return seconds_per_call(run, min_run_time=0.0)  # one block: the large cases run for milliseconds a call


def measure(case: Case, rounds: int, backward: bool) -> dict[str, float]:
    x = torch.randn(case.shape) * 2 + 1
    x.requires_grad_(backward)
    fns = candidates(case)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(2):  # warm-up
        for fn in fns.values():
            time_once(fn, x, backward)
    for _ in range(rounds):
        for name, fn in fns.items():
            with torch.set_grad_enabled(backward):
                times[name].append(time_once(fn, x, backward))
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--cases", default="c8,small,3d,points")
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    args = parser.parse_args()
    lines = [
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, backend {eqnorm.kernel_backend('cpu')!r}, "
        f"median of {args.rounds} interleaved rounds",
        "",
        "| case | shape | pass | candidate | ms | vs torch GroupNorm |",
        "|---|---|---|---|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for key in args.cases.split(","):
        case = cases()[key]
        for backward in (False, True):
            result = measure(case, args.rounds, backward)
            base = result["torch GroupNorm"]
            for name, t in result.items():
                row = (
                    f"| {case.name} | {tuple(case.shape)} | {'fwd+bwd' if backward else 'fwd'} | {name} | "
                    f"{t * 1e3:.2f} | {t / base:.2f}x |"
                )
                print(row, flush=True)
                lines.append(row)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
