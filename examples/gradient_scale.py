"""Gradients under group norm: they scale with 1/sigma of the group, and deep steerable CNNs train stably.

Group norm's output does not change when its input is scaled by ``s > 0`` (up to ``eps``), so by the chain rule its
Jacobian scales by ``1/s``: ``d GN(s x) / d(s x) = (1/s) d GN(x) / dx``. A network whose first normalization follows
a bias-free convolution therefore sees input gradients that fall as ``1/s`` while its loss stays the same. Without
normalization, a ReLU network with (almost) no biases is positively homogeneous of degree 1: its logits grow with
``s`` and its input gradient does not change until the softmax saturates.

1. Gradient norm ``||dL/dx||`` against the input scale ``s`` (10^-2 to 10^2), for one ``FieldGroupNorm`` layer
   (``L = <r, GN(s x)>`` with a fixed random ``r``) and for whole C8 CNNs with group norm, batch norm (training mode)
   and none (``L`` = cross-entropy on digits), at initialisation.
2. Stability: a 12-block C8 CNN (12 convolution + normalization + ReLU blocks) trained with AdamW at two learning
   rates with each normalization; the loss after every epoch and the final test error.

    python examples/gradient_scale.py            # full run (about 1.5 minutes on 2 cores)
    python examples/gradient_scale.py --quick
"""

from __future__ import annotations

import argparse

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from _cli import finish, parse_args, save_figure, write_csv
from _digits import rotated_digits
from _steerable import SteerableCNN, regular
from _training import error_rate, train
from escnn import nn

import eqnorm

SIZE, INNER = 17, 12
SCALES = [10.0**e for e in (-2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2)]
DEEP_NORMS = ("group", "batch", "none")


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)


def label_of(norm: str) -> str:
    return "no norm" if norm == "none" else f"{norm} norm"


def deep_cnn(norm: str) -> SteerableCNN:
    """Two strided blocks and ten more: 12 normalized blocks of 4 regular fields, then the invariant head."""
    return SteerableCNN(norm, widths=(4, 4), extra_blocks=10, num_groups=2)


def gradient_norms(images: torch.Tensor, labels: torch.Tensor) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    hidden = regular(8)
    layer = eqnorm.FieldGroupNorm(hidden, 4).double()
    x = torch.randn(4, hidden.size, 9, 9, dtype=torch.float64)
    r = torch.randn_like(x)
    for s in SCALES:
        xs = (s * x).requires_grad_()
        (layer(nn.GeometricTensor(xs, hidden)).tensor * r).sum().backward()
        assert xs.grad is not None
        rows.append({"model": "one FieldGroupNorm layer", "scale": s, "grad_norm": float(xs.grad.norm())})
    for norm in ("group", "batch", "none"):
        torch.manual_seed(0)
        model = SteerableCNN(norm).train()
        for s in SCALES:
            xs = (s * images).requires_grad_()
            loss = F.cross_entropy(model(xs), labels)
            (grad,) = torch.autograd.grad(loss, xs)
            rows.append({"model": f"C8 CNN, {label_of(norm)}", "scale": s, "grad_norm": float(grad.norm())})
    return rows


def main() -> None:
    args = parse_args("gradient_scale", __doc__, options)
    epochs = 1 if args.quick else args.epochs
    train_set, test_set = rotated_digits(SIZE, INNER, seed=0, limit=64 if args.quick else None)
    grads = gradient_norms(test_set.x[:16], test_set.y[:16])
    write_csv(args.out / "gradient_norms.csv", grads)

    runs = []
    rates = (0.003,) if args.quick else (0.003, 0.03)
    for lr in rates:
        for norm in DEEP_NORMS:
            torch.manual_seed(0)
            model = deep_cnn(norm)
            desc = f"12 blocks, {norm} norm, lr {lr}"
            losses = train(model, train_set, epochs=epochs, batch_size=args.batch_size, lr=lr, seed=0, desc=desc)
            error = error_rate(model, test_set)
            print(f"{desc}: losses {[round(v, 3) for v in losses]}, test error {100 * error:.1f}%", flush=True)
            for epoch, loss in enumerate(losses, 1):
                runs.append({"norm": norm, "lr": lr, "epoch": epoch, "train_loss": loss, "test_error": error})
    write_csv(args.out / "deep_training.csv", runs)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for model in dict.fromkeys(r["model"] for r in grads):
        pts = [(r["scale"], r["grad_norm"]) for r in grads if r["model"] == model]
        axes[0].plot(*zip(*pts, strict=True), marker="o", label=model)
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("input scale s")
    axes[0].set_ylabel("||dL/dx|| at scale s")
    axes[0].legend(fontsize=8)
    for lr, style in zip(rates, ("-", "--"), strict=False):
        for color, norm in enumerate(DEEP_NORMS):
            pts = [(r["epoch"], r["train_loss"]) for r in runs if r["norm"] == norm and r["lr"] == lr]
            label = f"{label_of(norm)}, lr {lr}"
            axes[1].plot(*zip(*pts, strict=True), style, color=f"C{color}", marker="o", label=label)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("training loss (12-block C8 CNN)")
    axes[1].legend(fontsize=8)
    save_figure(fig, args.out / "gradient_scale.png")

    print("\n| model | slope of log ||dL/dx|| against log s |")
    print("|---|---:|")
    for model in dict.fromkeys(r["model"] for r in grads):
        g = [r["grad_norm"] for r in grads if r["model"] == model]
        slope = float(torch.tensor(g[-1] / g[0]).log10()) / 4.0
        print(f"| {model} | {slope:+.2f} |")
    print("\n| 12 blocks | " + " | ".join(f"lr {lr}: final loss, test error" for lr in rates) + " |")
    print("|---|" + "---:|" * len(rates))
    for norm in DEEP_NORMS:
        cells = []
        for lr in rates:
            last = [r for r in runs if r["norm"] == norm and r["lr"] == lr][-1]
            cells.append(f"{last['train_loss']:.3f}, {100 * last['test_error']:.1f}%")
        print(f"| {label_of(norm)} | " + " | ".join(cells) + " |")
    finish(args)


if __name__ == "__main__":
    main()
