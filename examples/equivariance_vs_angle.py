"""Equivariance error against rotation angle: eqnorm's layers and per-channel norms that ignore fields.

A random C8 steerable convolution (one trivial field in, 8 regular fields out) turns rotated digits into feature
maps ``f``; each normalization ``N`` acts on them. For every rotation ``g`` of C8 (multiples of 45 degrees):

* the fiber error ``max |N(rho(g) f) - rho(g) N(f)| / max |N(f)|`` moves the channels only (no interpolation):
  it is zero up to rounding exactly when ``N`` respects the fields;
* the full error rotates the image: ``max |N(conv(g x)) - g N(conv(x))| / max |g N(conv(x))|`` inside the inscribed
  disc. 90-degree turns permute pixels exactly; 45-degree turns interpolate, so even a perfectly equivariant network
  has an error there. The row "none (conv only)" measures that interpolation floor.

Per-channel layers: ``torch.nn.BatchNorm2d`` in eval mode with running statistics collected on upright digits (a
data set with a preferred orientation, as most are), and ``torch.nn.GroupNorm`` with 16 groups of 4 channels, which
cuts every 8-channel field in half. eqnorm's ``FieldBatchNorm`` gets its running statistics from the same upright
digits. Norms run in float64 on the float32 convolution's output.

    python examples/equivariance_vs_angle.py            # full run (about a minute)
    python examples/equivariance_vs_angle.py --quick
"""

from __future__ import annotations

from collections.abc import Callable

import matplotlib.pyplot as plt
import torch
from _cli import distinct_style, finish, parse_args, save_figure, write_csv
from _digits import rotated_digits
from _steerable import GSPACE, regular
from escnn import nn

import eqnorm

SIZE, INNER = 29, 20
Norm = Callable[[nn.GeometricTensor], nn.GeometricTensor]


def tensor_norm(module: torch.nn.Module) -> Norm:
    """A plain PyTorch layer applied to a GeometricTensor's channels, keeping the field type."""
    return lambda t: nn.GeometricTensor(module(t.tensor), t.type)


def disc(size: int) -> torch.Tensor:
    """Pixels inside the disc inscribed in the grid, two pixels in from the edge."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    return (r[:, None] ** 2 + r[None, :] ** 2) <= ((size - 1) / 2 - 2) ** 2


def norms(hidden: nn.FieldType, upright: torch.Tensor) -> dict[str, Norm]:
    """The normalizations compared; batch norms take running statistics from the upright features."""
    field_bn = eqnorm.FieldBatchNorm(hidden, momentum=None).double()
    torch_bn = torch.nn.BatchNorm2d(hidden.size, momentum=None).double()
    with torch.no_grad():
        field_bn(nn.GeometricTensor(upright, hidden))
        torch_bn(upright)
    field_bn.eval()
    torch_bn.eval()
    return {
        "none (conv only)": lambda t: t,
        "eqnorm FieldGroupNorm(4)": eqnorm.FieldGroupNorm(hidden, 4).double(),
        "eqnorm FieldInstanceNorm": eqnorm.FieldInstanceNorm(hidden).double(),
        "eqnorm FieldBatchNorm (eval)": field_bn,
        "torch BatchNorm2d (eval)": tensor_norm(torch_bn),
        "torch GroupNorm(16), splits fields": tensor_norm(torch.nn.GroupNorm(16, hidden.size).double()),
    }


def main() -> None:
    args = parse_args("equivariance_vs_angle", __doc__)
    count = 8 if args.quick else 64
    torch.manual_seed(0)
    image_type = nn.FieldType(GSPACE, [GSPACE.trivial_repr])
    hidden = regular(8)
    conv = nn.R2Conv(image_type, hidden, 5, padding=2).eval()
    _, test = rotated_digits(SIZE, INNER, test_size=count, seed=0)
    _, upright = rotated_digits(SIZE, INNER, test_size=4 * count, seed=1, rotated=False)
    mask = disc(SIZE)

    def features(images: nn.GeometricTensor) -> nn.GeometricTensor:
        return nn.GeometricTensor(conv(images).tensor.double(), hidden)

    rows = []
    with torch.no_grad():
        x = nn.GeometricTensor(test.x, image_type)
        f = features(x)
        for name, norm in norms(hidden, features(nn.GeometricTensor(upright.x, image_type)).tensor).items():
            y = norm(f)
            for k, g in enumerate(GSPACE.fibergroup.elements):
                moved = y.transform_fibers(g).tensor
                fiber = (norm(f.transform_fibers(g)).tensor - moved).abs().max() / moved.abs().max()
                expected = y.transform(g).tensor
                got = norm(features(x.transform(g))).tensor
                full = ((got - expected).abs() * mask).amax() / (expected.abs() * mask).amax()
                rows.append({"norm": name, "angle_deg": 45 * k, "fiber_error": float(fiber), "full_error": float(full)})
    write_csv(args.out / "errors.csv", rows)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    names = list(dict.fromkeys(r["norm"] for r in rows))
    for ax, kind, title in (
        (axes[0], "fiber_error", "fiber action only (no interpolation)"),
        (axes[1], "full_error", "rotated image, inside the disc"),
    ):
        for i, name in enumerate(names):
            pts = [(r["angle_deg"], max(r[kind], 1e-17)) for r in rows if r["norm"] == name]
            ax.plot(*zip(*pts, strict=True), label=name, **distinct_style(i))
        ax.set_yscale("log")
        ax.set_xticks(range(0, 360, 45))
        ax.set_xlabel("rotation angle (degrees)")
        ax.set_title(title)
        ax.legend(fontsize=7)
    for angle in range(45, 360, 90):
        axes[1].axvspan(angle - 8, angle + 8, color="0.9", zorder=0)
    axes[1].annotate(
        "shaded: off-grid angles,\nthe image is interpolated\n(error of the input itself)",
        xy=(135, 1e-3),
        ha="center",
        fontsize=7,
    )
    axes[0].set_ylabel("max relative error (floored at 1e-17)")
    save_figure(fig, args.out / "equivariance_vs_angle.png")

    print("\n| norm | fiber error, worst angle | full error, 90/180/270 deg | full error, 45/135/... deg |")
    print("|---|---:|---:|---:|")
    for name in names:
        mine = [r for r in rows if r["norm"] == name]
        fiber = max(r["fiber_error"] for r in mine)
        right = max(r["full_error"] for r in mine if r["angle_deg"] % 90 == 0)
        odd = max(r["full_error"] for r in mine if r["angle_deg"] % 90 != 0)
        print(f"| {name} | {fiber:.1e} | {right:.1e} | {odd:.1e} |")
    finish(args)


if __name__ == "__main__":
    main()
