"""Test error against batch size for batch norm and eqnorm's group, layer and instance norm (Wu & He 2018, Fig. 1).

The claim: with ResNet-50 on ImageNet, batch norm's error rises from 23.6% at batch 32 to 34.7% at batch 2 while
group norm's stays at about 24.1%. Here: the C8 steerable CNN of ``_steerable.py`` on rotated digits, every
normalization trained for the same number of epochs at batch sizes 2, 4, 8, 16 and 32, with AdamW's learning rate
scaled by the square root of the batch size (the scaling rule for adaptive optimizers; SGD's would be linear), several
seeds. Batch norm is evaluated with its running statistics, as it would be deployed.

    python examples/batch_size_sweep.py            # full run (about 9 minutes on 2 cores)
    python examples/batch_size_sweep.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import math

import matplotlib.pyplot as plt
import torch
from _cli import finish, mean_std, parse_args, save_figure, write_csv
from _digits import rotated_digits
from _steerable import SteerableCNN
from _training import train_and_test

BATCH_SIZES = (2, 4, 8, 16, 32)
NORMS = ("batch", "group", "layer", "instance")
SIZE, INNER = 17, 12  # 12x12 digits on a 17x17 canvas: the smallest that rotates without cropping


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.01, help="AdamW learning rate at batch size 32")


def main() -> None:
    args = parse_args("batch_size_sweep", __doc__, options, seeds=2)
    epochs = 1 if args.quick else args.epochs
    rows = []
    for seed in range(args.seeds):
        train_set, test_set = rotated_digits(SIZE, INNER, seed=seed, limit=128 if args.quick else None)
        for norm in NORMS:
            for batch_size in BATCH_SIZES:
                torch.manual_seed(seed)
                model = SteerableCNN(norm)
                lr = args.lr * math.sqrt(batch_size / 32)
                desc = f"seed {seed} {norm} norm, batch {batch_size}"
                result = train_and_test(
                    model, train_set, test_set, desc, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed
                )
                rows.append(
                    {"norm": norm, "batch_size": batch_size, "seed": seed, "lr": lr, "epochs": epochs, **result}
                )
    write_csv(args.out / "runs.csv", rows)

    summary = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for norm in NORMS:
        means, stds = [], []
        for batch_size in BATCH_SIZES:
            errors = [100 * r["test_error"] for r in rows if r["norm"] == norm and r["batch_size"] == batch_size]
            mean, std = mean_std(errors)
            means.append(mean)
            stds.append(std)
            summary.append({"norm": norm, "batch_size": batch_size, "error_mean_pct": mean, "error_std_pct": std})
        ax.errorbar(BATCH_SIZES, means, yerr=stds, marker="o", capsize=3, label=f"{norm} norm")
    write_csv(args.out / "summary.csv", summary)
    ax.set_xscale("log", base=2)
    ax.set_xticks(BATCH_SIZES, [str(b) for b in BATCH_SIZES])
    ax.invert_xaxis()
    ax.set_xlabel("batch size (images per step)")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"Rotated digits, C8 CNN, {epochs} epochs, {args.seeds} seed(s)")
    ax.legend()
    save_figure(fig, args.out / "batch_size_sweep.png")

    print("\n| norm | " + " | ".join(f"batch {b}" for b in BATCH_SIZES) + " |")
    print("|---|" + "---:|" * len(BATCH_SIZES))
    for norm in NORMS:
        cells = [f"{s['error_mean_pct']:.1f} ± {s['error_std_pct']:.1f}" for s in summary if s["norm"] == norm]
        print(f"| {norm} | " + " | ".join(cells) + " |")
    finish(args)


if __name__ == "__main__":
    main()
