"""Command line, output folder, CSV and plot conventions shared by the research example scripts.

Every script takes ``--quick`` (a smoke run within a minute, used by CI) and ``--out`` (the output folder, printed at
the start), those that repeat runs ``--seeds``; each writes its tables as CSV and its figure as PNG into the folder.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # scripts run headless (CI, servers); no display is needed to write PNG files
import matplotlib.pyplot as plt
import torch
from tqdm import tqdm

HERE = Path(__file__).resolve().parent


def parse_args(
    name: str,
    doc: str | None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
    seeds: int | None = None,
) -> argparse.Namespace:
    """Parse the common flags (and the script's own, added by ``extra``; ``--seeds`` where ``seeds`` gives its
    default); set the thread count and create the output folder."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run of under a minute (fewer epochs and data)")
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default: examples/results/{name})")
    if seeds is not None:
        parser.add_argument("--seeds", type=int, default=seeds, help="number of random seeds (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    if args.quick and seeds is not None:
        args.seeds = 1
    if args.out is None:
        args.out = HERE / "results" / ("quick" if args.quick else "") / name
    args.out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_progress:
        os.environ["EQNORM_NO_PROGRESS"] = "1"
    args.started = time.perf_counter()
    print(f"{name}: writing to {args.out}" + (" (quick run)" if args.quick else ""), flush=True)
    return args


def progress(items: Iterable[Any], desc: str, total: int | None = None, **kwargs: Any) -> Iterator[Any]:
    """A tqdm progress bar on stderr, hidden by ``--no-progress`` or ``EQNORM_NO_PROGRESS`` (the tests set it)."""
    disable = bool(os.environ.get("EQNORM_NO_PROGRESS"))
    yield from tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True, disable=disable, **kwargs)


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` (dicts with the same keys) as CSV, floats with 6 significant digits."""
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    print(f"wrote {path}")


def distinct_style(i: int) -> dict[str, Any]:
    """Line style of the ``i``-th curve of a panel: markers that shrink and dashes that differ, so curves that coincide
    (equivariant layers at 1e-16, configurations that keep all of a signal) stay visible one under the other."""
    return {
        "marker": "osD^vx<>"[i % 8],
        "markersize": max(3.0, 10 - 1.3 * i),
        "linestyle": ("-", "--", ":", "-.")[i % 4],
        "alpha": 0.85,
    }


def save_figure(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def finish(args: argparse.Namespace) -> None:
    print(f"done in {time.perf_counter() - args.started:.1f} s; outputs in {args.out}")
