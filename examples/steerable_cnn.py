"""A small C8 steerable CNN with FieldGroupNorm: its equivariance errors and its batch independence.

Run with ``scripts/dev.sh check``. Rotations by multiples of 90 degrees permute the pixel grid and must be exact up
to float64 rounding; rotations by 45 degrees interpolate the image and are reported separately.
"""

from __future__ import annotations

import torch
from escnn import gspaces, nn

from eqnorm import FieldGroupNorm
from eqnorm.escnn import is_grid_symmetry


def build_model() -> nn.SequentialModule:
    """Two R2Conv + FieldGroupNorm + ReLU blocks on C8 regular fields."""
    gs = gspaces.rot2dOnR2(8)
    inp = nn.FieldType(gs, [gs.trivial_repr])
    hidden = nn.FieldType(gs, 8 * [gs.regular_repr] + 4 * [gs.trivial_repr])
    return nn.SequentialModule(
        nn.R2Conv(inp, hidden, kernel_size=5, padding=2),
        FieldGroupNorm(hidden, num_groups=4),
        nn.ReLU(hidden),
        nn.R2Conv(hidden, hidden, kernel_size=5, padding=2),
        FieldGroupNorm(hidden, num_groups=4),
        nn.ReLU(hidden),
    )


def main() -> None:
    torch.manual_seed(0)
    model = build_model().double().eval()
    gs = model.in_type.gspace
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 33), torch.linspace(-1, 1, 33), indexing="ij")
    mask = (xx**2 + yy**2 < 0.8).double()
    # a smooth image (blurred noise) inside a disc, so that interpolated rotations are meaningful
    noise = torch.randn(4, 1, 33, 33, dtype=torch.float64)
    smooth = torch.nn.functional.avg_pool2d(noise, 7, stride=1, padding=3, count_include_pad=False)
    x = nn.GeometricTensor(smooth * mask, model.in_type)
    with torch.no_grad():
        y = model(x)
        print(f"{'rotation':>10} {'kind':>14} {'max abs error':>14} {'relative':>10}")
        for g in gs.fibergroup.elements:
            err = (model(x.transform(g)).tensor - y.transform(g).tensor).abs().max().item()
            kind = "exact grid" if is_grid_symmetry(gs, g) else "interpolated"
            rel = err / y.tensor.abs().max().item()
            print(f"{g.to('radians') * 180 / torch.pi:>9.0f}° {kind:>14} {err:>14.3e} {rel:>10.2e}")
        other = nn.GeometricTensor(torch.randn_like(x.tensor) * 10, model.in_type)
        mixed = model(nn.GeometricTensor(torch.cat([x.tensor[:1], other.tensor[1:]]), model.in_type))
        batch_err = (mixed.tensor[:1] - y.tensor[:1]).abs().max().item()
        print(f"batch independence: max change of sample 0 when the rest of the batch changes = {batch_err:.3e}")


if __name__ == "__main__":
    main()
