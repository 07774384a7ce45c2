"""Test error against the number of groups, from one group (layer norm) to one field per group (instance norm).

Wu & He 2018 (Table 3) find group norm between its two extremes, best at 32 groups (or 16 channels per group) in
ResNet-50. Here every normalization layer of the C8 CNN of ``_steerable.py`` uses G contiguous groups of whole regular
fields (G = 1, 2, 4, 8; the first layer has 8 fields, the others 16), and "F" is one field per group everywhere.

Before training, the script checks the exact identities in float64 on random regular-field features, against
PyTorch's own layers, which know nothing of fields:

* ``FieldGroupNorm(G=1)`` equals ``FieldLayerNorm``, and both equal ``torch.nn.functional.layer_norm`` over
  (C, H, W): a regular field's only trivial component is its channel mean, so centering is the mean over everything.
* ``FieldGroupNorm(G=F)`` equals ``FieldInstanceNorm`` and ``torch.nn.functional.group_norm`` with one group per
  field.

    python examples/num_groups.py            # full run (about 2 minutes on 2 cores)
    python examples/num_groups.py --quick    # smoke run
"""

from __future__ import annotations

import argparse

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from _cli import finish, mean_std, parse_args, save_figure, write_csv
from _digits import rotated_digits
from _steerable import SteerableCNN, regular
from _training import train_and_test

import eqnorm

GROUPS: tuple[int | str, ...] = (1, 2, 4, 8, "F")
SIZE, INNER = 17, 12


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.005)


def identities(fields: int = 16) -> list[dict[str, object]]:
    """Max absolute differences between eqnorm's layers and PyTorch's, float64, random input (N, 8F, 9, 9)."""
    field_type = regular(fields)
    x = torch.randn(4, field_type.size, 9, 9, dtype=torch.float64) * 3 + 1
    gn1 = eqnorm.FieldGroupNorm(field_type, 1).export().double()
    ln = eqnorm.FieldLayerNorm(field_type).export().double()
    gnf = eqnorm.FieldGroupNorm(field_type, fields).export().double()
    inorm = eqnorm.FieldInstanceNorm(field_type).export().double()
    with torch.no_grad():
        pairs = {
            "|GN(G=1) - FieldLayerNorm|": (gn1(x), ln(x)),
            "|FieldLayerNorm - torch layer_norm|": (ln(x), F.layer_norm(x, x.shape[1:], eps=1e-5)),
            "|GN(G=F) - FieldInstanceNorm|": (gnf(x), inorm(x)),
            "|FieldInstanceNorm - torch group_norm(F)|": (inorm(x), F.group_norm(x, fields, eps=1e-5)),
        }
    return [{"identity": name, "max_abs_difference": float((a - b).abs().max())} for name, (a, b) in pairs.items()]


def main() -> None:
    args = parse_args("num_groups", __doc__, options, seeds=2)
    epochs = 1 if args.quick else args.epochs
    checks = identities()
    for check in checks:
        print(f"float64 {check['identity']}: {check['max_abs_difference']:.2e}")
    write_csv(args.out / "identities.csv", checks)

    rows = []
    for seed in range(args.seeds):
        train_set, test_set = rotated_digits(SIZE, INNER, seed=seed, limit=64 if args.quick else None)
        for groups in GROUPS:
            torch.manual_seed(seed)
            model = SteerableCNN("instance") if groups == "F" else SteerableCNN("group", num_groups=int(groups))
            desc = f"seed {seed}, G={groups}"
            common = {"epochs": epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": seed}
            rows.append({"groups": groups, "seed": seed, **train_and_test(model, train_set, test_set, desc, **common)})
    write_csv(args.out / "runs.csv", rows)

    summary = []
    for groups in GROUPS:
        mean, std = mean_std([100 * r["test_error"] for r in rows if r["groups"] == groups])
        summary.append({"groups": groups, "error_mean_pct": mean, "error_std_pct": std})
    write_csv(args.out / "summary.csv", summary)
    fig, ax = plt.subplots(figsize=(6, 4))
    positions = range(len(GROUPS))
    ax.errorbar(
        positions, [s["error_mean_pct"] for s in summary], yerr=[s["error_std_pct"] for s in summary], marker="o"
    )
    ax.set_xticks(positions, ["1 (LN)", "2", "4", "8", "F (IN)"])
    ax.set_xlabel("groups per layer")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"Group count, batch {args.batch_size}, {epochs} epochs, {args.seeds} seed(s)")
    save_figure(fig, args.out / "num_groups.png")
    print("\n| groups | " + " | ".join(str(g) for g in GROUPS) + " |")
    print("|---|" + "---:|" * len(GROUPS))
    print(
        "| test error (%) | "
        + " | ".join(f"{s['error_mean_pct']:.1f} ± {s['error_std_pct']:.1f}" for s in summary)
        + " |"
    )
    finish(args)


if __name__ == "__main__":
    main()
