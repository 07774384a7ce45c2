"""Per-sample contrast: group norm's output ignores it, batch norm's does not.

Multiply each image by its own contrast factor ``c > 0``. A bias-free convolution passes ``c`` through, and group
norm divides it out: ``GN(c f) = (c f - c mu) / sqrt(c^2 sigma^2 + eps)``, equal to ``GN(f)`` up to the ``eps`` term.
Batch norm in eval mode uses fixed running statistics, so its output scales with ``c``; in training mode every
sample's output depends on the other samples' contrasts.

Two measurements:

1. Layer level: the relative change ``max |N(c f) - N(f)| / max |N(f)|`` of the first layer's normalized features
   against ``c``, for eqnorm's ``FieldGroupNorm``, ``FieldBatchNorm`` in eval mode and in training mode (batch of 8,
   each sample with its own factor).
2. Network level: C8 CNNs with group norm and with batch norm, trained on contrast-1 digits, tested on the test set
   at contrasts 0.25 to 4.

    python examples/contrast.py            # full run (under a minute on 2 cores)
    python examples/contrast.py --quick
"""

from __future__ import annotations

import argparse
import copy
import math

import matplotlib.pyplot as plt
import torch
from _cli import finish, parse_args, save_figure, write_csv
from _digits import Split, rotated_digits
from _steerable import SteerableCNN
from _training import error_rate, train
from escnn import nn

FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
SIZE, INNER = 17, 12


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)


def layer_changes(model: SteerableCNN, images: torch.Tensor, factors: torch.Tensor) -> list[float]:
    """Relative change of the first convolution + normalization's output for each sample's contrast factor."""
    conv, norm = model.features[0], model.features[1]

    def first(x: torch.Tensor) -> torch.Tensor:
        return norm(conv(nn.GeometricTensor(x, model.input_type))).tensor

    with torch.no_grad():
        base, scaled = first(images), first(images * factors.view(-1, 1, 1, 1))
    return [float((s - b).abs().max() / b.abs().max()) for s, b in zip(scaled, base, strict=True)]


def main() -> None:
    args = parse_args("contrast", __doc__, options)
    epochs = 1 if args.quick else args.epochs
    train_set, test_set = rotated_digits(SIZE, INNER, seed=0, limit=64 if args.quick else None)
    models = {}
    for norm in ("group", "batch"):
        torch.manual_seed(0)
        models[norm] = SteerableCNN(norm)
        train(models[norm], train_set, epochs=epochs, batch_size=args.batch_size, lr=0.005, seed=0, desc=norm)

    gen = torch.Generator().manual_seed(1)
    images = test_set.x[:8]
    factors = torch.exp(torch.empty(8).uniform_(math.log(0.25), math.log(4.0), generator=gen))
    layer_rows = []
    for label, norm, mode in (
        ("FieldGroupNorm", "group", "eval"),
        ("FieldBatchNorm, eval", "batch", "eval"),
        ("FieldBatchNorm, training (batch of 8)", "batch", "train"),
    ):
        # A copy, so that training mode's update of the running statistics does not reach the test below.
        changes = layer_changes(copy.deepcopy(models[norm]).train(mode == "train"), images, factors)
        for c, change in zip(factors.tolist(), changes, strict=True):
            layer_rows.append({"layer": label, "contrast": c, "relative_change": change})
    write_csv(args.out / "layer_change.csv", layer_rows)

    net_rows = []
    for norm, model in models.items():
        for c in FACTORS:
            error = error_rate(model, Split(test_set.x * c, test_set.y))
            net_rows.append({"norm": norm, "contrast": c, "test_error": error})
            print(f"{norm} norm, contrast {c}: test error {100 * error:.1f}%")
    write_csv(args.out / "test_error.csv", net_rows)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label in dict.fromkeys(r["layer"] for r in layer_rows):
        pts = sorted((r["contrast"], max(r["relative_change"], 1e-12)) for r in layer_rows if r["layer"] == label)
        axes[0].plot(*zip(*pts, strict=True), marker="o", label=label)
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("contrast factor of the sample")
    axes[0].set_ylabel("relative change of the normalized features")
    axes[0].legend(fontsize=8)
    for norm in models:
        pts = [(r["contrast"], 100 * r["test_error"]) for r in net_rows if r["norm"] == norm]
        axes[1].plot(*zip(*pts, strict=True), marker="o", label=f"{norm} norm")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("test-time contrast factor (trained at 1)")
    axes[1].set_ylabel("test error (%)")
    axes[1].legend()
    save_figure(fig, args.out / "contrast.png")

    print("\n| norm | " + " | ".join(f"contrast {c}" for c in FACTORS) + " |")
    print("|---|" + "---:|" * len(FACTORS))
    for norm in models:
        print(f"| {norm} | " + " | ".join(f"{100 * r['test_error']:.1f}" for r in net_rows if r["norm"] == norm) + " |")
    for label in dict.fromkeys(r["layer"] for r in layer_rows):
        worst = max(r["relative_change"] for r in layer_rows if r["layer"] == label)
        print(f"{label}: largest relative change of the first layer's output {worst:.2e}")
    finish(args)


if __name__ == "__main__":
    main()
