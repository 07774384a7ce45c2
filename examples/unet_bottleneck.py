"""A rotation-equivariant U-Net with a 4x4 bottleneck at batch sizes 1 and 2: group norm against batch norm.

The tiny-batch regime of 3D medical segmentation, in 2D: 32x32 images of 1 to 3 shapes (ellipses, rectangles,
triangles) at random positions and angles, with noise, a random per-image contrast (x0.3 to x3) and offset; the
target is the shapes' mask. The network is a C8-equivariant U-Net in escnn (regular fields, 3x3 convolutions, 2x2
average pooling 32 -> 16 -> 8 -> 4, nearest upsampling, skip connections); every convolution is followed by eqnorm's
``FieldGroupNorm`` or ``FieldBatchNorm``. Both are trained for the same number of steps with the same data order.

Reported: the test IoU of the predicted mask (batch norm in eval mode, with its running statistics, as deployed) and
how equivariant the masks are: the fraction of pixels whose predicted class changes when the input is rotated by
90 degrees (an exact grid symmetry: the pooling tiles rotate into each other on an even grid) or by 45 degrees
(interpolated input; counted inside the inscribed disc).

    python examples/unet_bottleneck.py            # full run (about 2.5 minutes on 2 cores)
    python examples/unet_bottleneck.py --quick
"""

from __future__ import annotations

import argparse
import math
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from _cli import finish, parse_args, progress, save_figure, write_csv
from _digits import rotate
from _steerable import GSPACE, norm_layer, regular
from escnn import nn

SIZE = 32
NORMS = ("group", "batch")


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-images", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=3)


def shapes(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (n, 1, 32, 32) and their masks: shapes, noise, a per-image contrast and offset."""
    coords = torch.linspace(-1, 1, SIZE)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    for i in range(n):
        for _ in range(int(torch.randint(1, 4, (1,), generator=gen))):
            cx, cy = (torch.rand(2, generator=gen) * 1.2 - 0.6).tolist()
            a, b = (torch.rand(2, generator=gen) * 0.25 + 0.12).tolist()
            t = float(torch.rand(1, generator=gen)) * 2 * math.pi
            u = math.cos(t) * (xx - cx) + math.sin(t) * (yy - cy)
            v = -math.sin(t) * (xx - cx) + math.cos(t) * (yy - cy)
            kind = int(torch.randint(0, 3, (1,), generator=gen))
            if kind == 0:
                inside = (u / a) ** 2 + (v / b) ** 2 <= 1
            elif kind == 1:
                inside = (u.abs() <= a) & (v.abs() <= b)
            else:
                inside = (v >= -b) & (v <= b - 2 * b * u.abs() / a)
            masks[i] |= inside
    contrast = torch.exp(torch.empty(n, 1, 1).uniform_(math.log(0.3), math.log(3.0), generator=gen))
    offset = torch.empty(n, 1, 1).uniform_(-0.5, 0.5, generator=gen)
    images = contrast * (masks.float() + offset + 0.35 * torch.randn(n, SIZE, SIZE, generator=gen))
    return images.unsqueeze(1), masks.unsqueeze(1).float()


class EquivariantUNet(torch.nn.Module):
    """C8 U-Net: 4, 8, 8 regular fields at 32, 16, 8 pixels, 16 at the 4x4 bottleneck, skips by concatenation."""

    def __init__(self, norm: str, widths: tuple[int, ...] = (4, 8, 8)) -> None:
        super().__init__()
        self.input_type = nn.FieldType(GSPACE, [GSPACE.trivial_repr])

        def block(in_type: nn.FieldType, fields: int) -> nn.SequentialModule:
            out = regular(fields)
            conv = nn.R2Conv(in_type, out, 3, padding=1, bias=False)
            return nn.SequentialModule(conv, norm_layer(norm, out, num_groups=2), nn.ReLU(out, inplace=True))

        self.down, self.pools, self.up, self.merge = (torch.nn.ModuleList() for _ in range(4))
        field_type = self.input_type
        for w in widths:
            self.down.append(block(field_type, w))
            field_type = self.down[-1].out_type
            self.pools.append(nn.PointwiseAvgPool2D(field_type, 2))
        self.bottleneck = block(field_type, 16)
        field_type = self.bottleneck.out_type
        for w in reversed(widths):
            self.up.append(nn.R2Upsampling(field_type, 2, mode="nearest"))
            skip = regular(w)
            self.merge.append(block(field_type + skip, w))
            field_type = self.merge[-1].out_type
        self.head = nn.R2Conv(field_type, nn.FieldType(GSPACE, [GSPACE.trivial_repr]), 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = nn.GeometricTensor(images, self.input_type)
        skips = []
        for down, pool in zip(self.down, self.pools, strict=True):
            h = down(h)
            skips.append(h)
            h = pool(h)
        h = self.bottleneck(h)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips), strict=True):
            h = merge(nn.tensor_directsum([up(h), skip]))
        return self.head(h).tensor


def iou(logits: torch.Tensor, masks: torch.Tensor) -> float:
    pred, truth = logits > 0, masks > 0.5
    return float((pred & truth).sum() / (pred | truth).sum().clamp(min=1))


@torch.no_grad()
def mask_changes(model: EquivariantUNet, images: torch.Tensor, logits: torch.Tensor) -> tuple[float, float]:
    """Fraction of pixels whose predicted class changes under a 90- and a 45-degree rotation of the input, given the
    model's ``logits`` on ``images``."""
    pred = logits > 0
    turned = torch.rot90(model(torch.rot90(images, 1, (2, 3))) > 0, -1, (2, 3))
    right = float((turned != pred).float().mean())
    angle = torch.full((len(images),), math.pi / 4)
    pred_45 = rotate(model(rotate(images, angle)), -angle) > 0
    r = torch.arange(SIZE) - (SIZE - 1) / 2
    disc = (r[:, None] ** 2 + r[None, :] ** 2) <= (SIZE / 2 - 3) ** 2
    diagonal = float((pred_45 != pred)[..., disc].float().mean())
    return right, diagonal


def main() -> None:
    args = parse_args("unet_bottleneck", __doc__, options)
    n_train = 64 if args.quick else args.train_images
    epochs = 1 if args.quick else args.epochs
    gen = torch.Generator().manual_seed(0)
    train_x, train_y = shapes(n_train, gen)
    test_x, test_y = shapes(32 if args.quick else 200, gen)
    rows = []
    curves = {}
    for batch_size in (1, 2):
        for norm in NORMS:
            torch.manual_seed(0)
            model = EquivariantUNet(norm)
            opt = torch.optim.AdamW(model.parameters(), lr=2e-3 * math.sqrt(batch_size / 2))
            order_gen = torch.Generator().manual_seed(1)
            steps = n_train // batch_size
            start = time.perf_counter()
            losses = []
            bar = progress(range(epochs * steps), desc=f"{norm} norm, batch {batch_size}", total=epochs * steps)
            model.train()
            for _ in range(epochs):
                order = torch.randperm(n_train, generator=order_gen)
                for step in range(steps):
                    next(bar, None)
                    idx = order[step * batch_size : (step + 1) * batch_size]
                    loss = F.binary_cross_entropy_with_logits(model(train_x[idx]), train_y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    losses.append(loss.item())
            model.eval()
            with torch.no_grad():
                logits = model(test_x)
            test_iou = iou(logits, test_y)
            right, diagonal = mask_changes(model, test_x, logits)
            curves[f"{norm} norm, batch {batch_size}"] = losses
            rows.append(
                {
                    "norm": norm,
                    "batch_size": batch_size,
                    "steps": epochs * steps,
                    "test_iou": test_iou,
                    "mask_change_90deg": right,
                    "mask_change_45deg": diagonal,
                    "seconds": time.perf_counter() - start,
                }
            )
            print(
                f"{norm} norm, batch {batch_size}: IoU {test_iou:.3f}, mask changes {right:.2e} (90), "
                f"{diagonal:.2e} (45)",
                flush=True,
            )
    write_csv(args.out / "unet.csv", rows)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, losses in curves.items():
        window = max(1, len(losses) // 30)
        smooth = torch.tensor(losses).unfold(0, window, window).mean(1)
        axes[0].plot((torch.arange(len(smooth)) + 1) * window, smooth, label=label)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("training loss (binary cross-entropy)")
    axes[0].legend(fontsize=8)
    labels = [f"{r['norm']}\nbatch {r['batch_size']}" for r in rows]
    axes[1].bar(labels, [r["test_iou"] for r in rows], color=["C0", "C1"] * 2)
    axes[1].set_ylabel("test IoU (eval mode)")
    axes[1].set_ylim(0, 1)
    save_figure(fig, args.out / "unet_bottleneck.png")

    print("\n| norm | batch | test IoU | pixels changed by a 90-degree turn | by a 45-degree turn |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['norm']} | {r['batch_size']} | {r['test_iou']:.3f} | {r['mask_change_90deg']:.2e} | "
            f"{r['mask_change_45deg']:.2e} |"
        )
    finish(args)


if __name__ == "__main__":
    main()
