"""Per-call cost of the one-op layer against torch.nn.GroupNorm on the same input, on the CPU.

Each round times both candidates in turn (interleaved), each for at least 20 ms of calls (``torch.utils.benchmark``'s
``blocked_autorange``, benchmarks/_timing.py), so both see the same machine
state; the table reports the median time of each over the rounds and the median over rounds of the ratio of the two
times taken side by side (on a shared machine the load drifts between rounds; within a round it mostly cancels).
Usage: ``python benchmarks/one_op_cpu.py [--rounds N] [--only TEXT]`` (``--only``: the cases whose name contains it).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from _timing import seconds_per_call

from eqnorm import FieldLayout, FieldNorm, kernel_backend


def c8_regular(fields: int, groups: int) -> FieldLayout:
    from escnn import gspaces, nn

    gs = gspaces.rot2dOnR2(8)
    return FieldLayout.from_field_type(nn.FieldType(gs, fields * [gs.regular_repr]), groups)


def e3nn_layout() -> FieldLayout:
    from e3nn import o3

    return FieldLayout.from_irreps(o3.Irreps("128x0e+32x1o+8x2e"), 8)


def cases() -> list[tuple[str, tuple[int, ...], Callable[[], FieldLayout], int, int, bool]]:
    """(name, shape, layout, torch's num_groups, threads, backward)."""
    return [
        ("(1, 16, 2, 2) scalars, 1 thread, forward", (1, 16, 2, 2), lambda: FieldLayout.scalars(16, 4), 4, 1, False),
        ("(1, 16, 2, 2) scalars, 1 thread, fwd+bwd", (1, 16, 2, 2), lambda: FieldLayout.scalars(16, 4), 4, 1, True),
        ("(32, 64, 8, 8) C8 regular, fwd+bwd", (32, 64, 8, 8), lambda: c8_regular(8, 4), 4, 2, True),
        ("(4096, 264) e3nn 128x0e+32x1o+8x2e, fwd+bwd", (4096, 264), e3nn_layout, 8, 2, True),
        ("(8, 128, 64, 64) C8 regular, fwd+bwd", (8, 128, 64, 64), lambda: c8_regular(16, 8), 8, 2, True),
    ]


def call(module: torch.nn.Module, x: torch.Tensor, backward: bool) -> Callable[[], None]:
    def run() -> None:
        y = module(x)
        if backward:
            y.backward(torch.ones_like(y))

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--only", default="", help="run only the cases whose name contains this text")
    args = parser.parse_args()
    print(f"kernels: {kernel_backend()}; torch {torch.__version__}")
    print("| case | eqnorm | torch.nn.GroupNorm | ratio |\n|---|---:|---:|---:|")
    for name, shape, layout, groups, threads, backward in cases():
        if args.only not in name:
            continue
        torch.set_num_threads(threads)
        lay = layout()
        x = torch.randn(shape).requires_grad_(backward)
        ours, theirs = FieldNorm(lay), torch.nn.GroupNorm(groups, lay.num_channels)
        if len(shape) == 2:  # point features: torch's GroupNorm wants (N, C, ...) too
            x = x.reshape(*shape)
        runs = {"ours": call(ours, x, backward), "theirs": call(theirs, x, backward)}
        times: dict[str, list[float]] = {"ours": [], "theirs": []}
        for _ in range(args.rounds):  # interleaved: each round's ratio sees the same machine state
            for key, run in runs.items():
                times[key].append(seconds_per_call(run))
        a, b = statistics.median(times["ours"]), statistics.median(times["theirs"])
        ratio = statistics.median(o / t for o, t in zip(times["ours"], times["theirs"], strict=True))
        unit, scale = ("us", 1e6) if a < 1e-3 else ("ms", 1e3)
        print(f"| {name} | {a * scale:.1f} {unit} | {b * scale:.1f} {unit} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
