"""Print-tip normalization of two-colour microarrays, the bioinformatics ancestor of group normalization.

Yang et al. (Nucleic Acids Research 30(4):e15, 2002) normalize the log-ratio ``M = log2(R/G)`` of each spot against
its mean log-intensity ``A = (log2 R + log2 G)/2`` with a loess curve, and found that a curve per print-tip group
(the spots printed by one pin of the arrayer) removes spatial and pin effects that one global curve leaves; scaling
each group by its spread (median absolute deviation) then evens out pin-to-pin differences in scale. Statistics per
group of related measurements instead of over everything: the idea group normalization applies to channels.

Simulation: arrays with a 4x4 layout of print tips (``--spots`` x ``--spots`` spots per tip); true log-ratios
``M_true`` zero for 90% of genes and +-N(1.5, 0.5) for the rest; observed
``M = bias(A) + offset_t + slope_t (A - 10) + s_t (M_true + noise)`` with a curved dye bias, a per-tip offset and
slope, and per-tip scales ``s_t`` (log-normal, geometric mean 1, so that the true log-ratios are identifiable).
Methods: none, global loess, print-tip loess, print-tip loess + scale (statsmodels' ``lowess``, span 0.3). Error:
the root mean square of ``M_hat - M_true`` over all spots, and over the differentially expressed ones.

    python examples/printtip_microarray.py            # full run (seconds)
    python examples/printtip_microarray.py --quick
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
from _cli import finish, mean_std, parse_args, progress, save_figure, write_csv
from matplotlib.lines import Line2D
from statsmodels.nonparametric.smoothers_lowess import lowess

TIPS = 16  # a 4x4 grid of print tips
SPAN = 0.3
METHODS = ("none", "global loess", "print-tip loess", "print-tip scaled loess")


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spots", type=int, default=20, help="spots per tip along each side (default: %(default)s)")
    parser.add_argument("--arrays", type=int, default=8, help="simulated arrays (default: %(default)s)")


@dataclass
class Array:
    """One simulated array: log-ratio ``m``, log-intensity ``a``, print tip ``tip`` and truth ``m_true``."""

    m: np.ndarray
    a: np.ndarray
    tip: np.ndarray
    m_true: np.ndarray


def simulate(spots_per_tip: int, rng: np.random.Generator) -> Array:
    n = TIPS * spots_per_tip
    tip = np.repeat(np.arange(TIPS), spots_per_tip)
    a = np.clip(rng.normal(10.0, 1.8, n), 6.0, 15.0)
    de = rng.random(n) < 0.1
    m_true = np.where(de, rng.choice([-1.0, 1.0], n) * rng.normal(1.5, 0.5, n), 0.0)
    dye_bias = 0.8 * np.tanh((a - 9.0) / 1.5) - 0.05 * (a - 10.0) ** 2 + 0.3
    offset, slope = rng.normal(0, 0.3, TIPS), rng.normal(0, 0.08, TIPS)
    log_scale = rng.normal(0, 0.35, TIPS)
    scale = np.exp(log_scale - log_scale.mean())
    m = dye_bias + offset[tip] + slope[tip] * (a - 10.0) + scale[tip] * (m_true + rng.normal(0, 0.25, n))
    return Array(m, a, tip, m_true)


def loess_residual(m: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``m`` minus its lowess curve against ``a`` (span 0.3, robust iterations)."""
    fit = lowess(m, a, frac=SPAN, it=3, delta=0.01 * float(np.ptp(a)), return_sorted=False)
    return m - fit


def normalize(array: Array, method: str) -> np.ndarray:
    if method == "none":
        return array.m.copy()
    if method == "global loess":
        return loess_residual(array.m, array.a)
    out = np.empty_like(array.m)
    for t in range(TIPS):
        inside = array.tip == t
        out[inside] = loess_residual(array.m[inside], array.a[inside])
    if method == "print-tip scaled loess":
        mad = np.array([np.median(np.abs(out[array.tip == t] - np.median(out[array.tip == t]))) for t in range(TIPS)])
        out /= (mad / np.exp(np.log(mad).mean()))[array.tip]
    return out


def main() -> None:
    args = parse_args("printtip_microarray", __doc__, options)
    spots = 8 if args.quick else args.spots
    arrays = 2 if args.quick else args.arrays
    rng = np.random.default_rng(0)
    rows = []
    first: dict[str, np.ndarray] = {}
    sample = simulate(spots * spots, np.random.default_rng(0))
    for index in progress(range(arrays), desc="arrays", total=arrays):
        array = sample if index == 0 else simulate(spots * spots, rng)
        de = array.m_true != 0
        for method in METHODS:
            m_hat = normalize(array, method)
            if index == 0:
                first[method] = m_hat
            err = m_hat - array.m_true
            rows.append(
                {
                    "array": index,
                    "method": method,
                    "rmse_all": float(np.sqrt(np.mean(err**2))),
                    "rmse_null": float(np.sqrt(np.mean(err[~de] ** 2))),
                    "rmse_de": float(np.sqrt(np.mean(err[de] ** 2))),
                }
            )
    write_csv(args.out / "printtip_errors.csv", rows)

    fig, axes = plt.subplots(2, 4, figsize=(16, 7), sharey="row")
    colors = plt.get_cmap("tab20")(np.arange(TIPS) % 20)
    tips = [Line2D([], [], ls="", marker="o", ms=4, color=colors[t], label=f"tip {t + 1}") for t in range(TIPS)]
    for col, method in enumerate(METHODS):
        ax = axes[0, col]
        ax.scatter(sample.a, first[method], c=colors[sample.tip], s=3, alpha=0.6)
        zero = ax.axhline(0, color="k", lw=0.8, label="M = 0")
        ax.set_title(method)
        ax.set_xlabel("A = mean log2 intensity")
        ax.legend(handles=[*tips, zero], fontsize=5, ncol=3, loc="lower right")
        axes[1, col].boxplot([first[method][sample.tip == t] for t in range(TIPS)], showfliers=False)
        axes[1, col].axhline(0, color="k", lw=0.8, label="M = 0")
        axes[1, col].set_xlabel("print tip")
        axes[1, col].legend(fontsize=7, loc="upper right")
    axes[0, 0].set_ylabel("M = log2 ratio (colour: print tip)")
    axes[1, 0].set_ylabel("M by print tip")
    save_figure(fig, args.out / "printtip_ma_plots.png")

    print(f"\n{arrays} arrays of {TIPS} tips x {spots * spots} spots; RMSE of M_hat - M_true (mean ± std over arrays)")
    print("| method | all spots | unchanged genes | differentially expressed |")
    print("|---|---:|---:|---:|")
    for method in METHODS:
        cells = []
        for key in ("rmse_all", "rmse_null", "rmse_de"):
            mean, std = mean_std([r[key] for r in rows if r["method"] == method])
            cells.append(f"{mean:.3f} ± {std:.3f}")
        print(f"| {method} | " + " | ".join(cells) + " |")
    finish(args)


if __name__ == "__main__":
    main()
