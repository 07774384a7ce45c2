"""Lottery tickets in the digits network: magnitude pruning to 80% and 95% sparsity, retrained from the original
initialisation, with group norm and with batch norm at batch size 4.

The procedure of Frankle & Carbin (2019): train the dense network from its initialisation ``theta_0``; in each
layer keep the largest-magnitude ``1 - s`` of the weights (R2Conv's basis coefficients and the classifier's
matrices; normalization parameters and biases are not pruned); reset the survivors to their values in ``theta_0``
and retrain with the mask held fixed, for the same number of epochs. Small batches make batch norm's statistics
noisy, and a sparse network has fewer weights to absorb that noise.

    python examples/pruned_network.py            # full run (about 4 minutes on 2 cores)
    python examples/pruned_network.py --quick
"""

from __future__ import annotations

import argparse
import copy

import matplotlib.pyplot as plt
import torch
from _cli import finish, mean_std, parse_args, save_figure, write_csv
from _digits import rotated_digits
from _steerable import SteerableCNN
from _training import error_rate, train

SPARSITIES = (0.0, 0.8, 0.95)
NORMS = ("group", "batch")
SIZE, INNER = 17, 12


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.005)


def prunable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Convolution coefficients (escnn names them ``weights``) and the classifier's weight matrices."""
    return {
        n: p for n, p in model.named_parameters() if n.endswith(".weights") or (n.startswith("head") and p.dim() == 2)
    }


def magnitude_masks(model: torch.nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    """Per layer, True for the ``1 - sparsity`` fraction of weights with the largest magnitude."""
    masks = {}
    for name, p in prunable(model).items():
        keep = max(1, round((1 - sparsity) * p.numel()))
        threshold = p.detach().abs().flatten().kthvalue(p.numel() - keep + 1).values
        masks[name] = p.detach().abs() >= threshold
    return masks


def main() -> None:
    args = parse_args("pruned_network", __doc__, options, seeds=2)
    epochs = 1 if args.quick else args.epochs
    rows = []
    for seed in range(args.seeds):
        train_set, test_set = rotated_digits(SIZE, INNER, seed=seed, limit=64 if args.quick else None)
        for norm in NORMS:
            torch.manual_seed(seed)
            initial = SteerableCNN(norm)
            dense = copy.deepcopy(initial)
            common = {"epochs": epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": seed}
            train(dense, train_set, desc=f"seed {seed}, {norm} norm, dense", **common)
            for sparsity in SPARSITIES:
                if sparsity == 0.0:
                    model = dense
                else:
                    masks = magnitude_masks(dense, sparsity)
                    model = copy.deepcopy(initial)
                    params = prunable(model)

                    @torch.no_grad()
                    def apply_masks(params: dict = params, masks: dict = masks) -> None:
                        for name, mask in masks.items():
                            params[name].mul_(mask)

                    apply_masks()
                    desc = f"seed {seed}, {norm} norm, {100 * sparsity:.0f}% sparse"
                    train(model, train_set, desc=desc, after_step=apply_masks, **common)
                weights = prunable(model).values()
                zeros = sum(int((p == 0).sum()) for p in weights) / sum(p.numel() for p in weights)
                error = error_rate(model, test_set)
                rows.append(
                    {"norm": norm, "seed": seed, "sparsity": sparsity, "measured_sparsity": zeros, "test_error": error}
                )
                print(f"seed {seed}, {norm} norm, sparsity {zeros:.3f}: test error {100 * error:.1f}%", flush=True)
    write_csv(args.out / "pruning.csv", rows)

    fig, ax = plt.subplots(figsize=(6, 4))
    summary = []
    for norm in NORMS:
        stats = [
            mean_std([100 * r["test_error"] for r in rows if r["norm"] == norm and r["sparsity"] == s])
            for s in SPARSITIES
        ]
        summary.append((norm, stats))
        ax.errorbar(
            [100 * s for s in SPARSITIES],
            [m for m, _ in stats],
            yerr=[e for _, e in stats],
            marker="o",
            capsize=3,
            label=f"{norm} norm",
        )
    ax.set_xlabel("sparsity (% of weights pruned)")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"Lottery-ticket retraining, batch {args.batch_size}, {epochs} epochs")
    ax.legend()
    save_figure(fig, args.out / "pruned_network.png")

    print("\n| norm | " + " | ".join(f"{100 * s:.0f}% sparse" for s in SPARSITIES) + " |")
    print("|---|" + "---:|" * len(SPARSITIES))
    for norm, stats in summary:
        print(f"| {norm} | " + " | ".join(f"{m:.1f} ± {e:.1f}" for m, e in stats) + " |")
    finish(args)


if __name__ == "__main__":
    main()
