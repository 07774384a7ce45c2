"""A group that mixes a high-variance field with a low-variance one: how much of the quiet field survives.

Group norm divides every field of a group by the group's one standard deviation. If a group holds a loud field
(regular C8 features of scale ``sigma_A``) and a quiet one (vector features of scale ``sigma_B = 0.1``), the quiet
field leaves the layer at ``sigma_B / sigma_A`` of the loud one's scale; the next layer, which sees both at once, can
barely tell it from its own noise. The fix is to group fields that belong together: by representation
(``group_by="representation"``), or by ordering the channels so that contiguous groups do not mix them.

For ``sigma_A / sigma_B`` from 1 to 10^4 (``sigma_A = 100`` at 10^3, the "values near +-100 and +-0.1" case) the
script reports, for the quiet field B:

* ``b_scale``: the standard deviation of B's output (1 when B is normalized by its own statistics);
* ``b_r2``: the fraction of B's input variance that a linear read-out recovers from B's output after a downstream
  perturbation of standard deviation 0.01 is added (1 = all of B's signal survives, 0 = none).

    python examples/mixed_variance.py            # full run (seconds)
    python examples/mixed_variance.py --quick
"""

from __future__ import annotations

from collections.abc import Callable

import matplotlib.pyplot as plt
import torch
from _cli import distinct_style, finish, parse_args, save_figure, write_csv
from _steerable import GSPACE
from escnn import nn

import eqnorm

NOISE = 0.01
SIGMA_B = 0.1
RATIOS = (1.0, 10.0, 100.0, 1e3, 1e4)
LOUD, QUIET = GSPACE.regular_repr, GSPACE.irrep(1)
INTERLEAVED = nn.FieldType(GSPACE, [LOUD, QUIET, LOUD, QUIET])
SORTED = nn.FieldType(GSPACE, [LOUD, LOUD, QUIET, QUIET])

CONFIGS: dict[str, tuple[nn.FieldType, Callable[[nn.FieldType], nn.EquivariantModule]]] = {
    "interleaved [A,B,A,B], 2 contiguous groups": (INTERLEAVED, lambda t: eqnorm.FieldGroupNorm(t, 2)),
    "FieldLayerNorm (1 group)": (INTERLEAVED, eqnorm.FieldLayerNorm),
    "sorted [A,A,B,B], 2 contiguous groups": (SORTED, lambda t: eqnorm.FieldGroupNorm(t, 2)),
    "interleaved, group_by='representation'": (
        INTERLEAVED,
        lambda t: eqnorm.FieldGroupNorm(t, group_by="representation"),
    ),
    "FieldInstanceNorm (1 field per group)": (INTERLEAVED, eqnorm.FieldInstanceNorm),
}


def features(field_type: nn.FieldType, sigma_a: float, n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Loud regular fields (with a per-sample offset on their trivial part) and quiet vector fields."""
    parts = []
    for rep in field_type.representations:
        shape = (n, rep.size, size, size)
        if rep.name == LOUD.name:
            offset = torch.randn((n, 1, 1, 1), generator=gen, dtype=torch.float64)
            parts.append(sigma_a * (torch.randn(shape, generator=gen, dtype=torch.float64) + offset))
        else:
            parts.append(SIGMA_B * torch.randn(shape, generator=gen, dtype=torch.float64))
    return torch.cat(parts, 1)


def quiet_channels(field_type: nn.FieldType) -> torch.Tensor:
    mask = [rep.name == QUIET.name for rep in field_type.representations for _ in range(rep.size)]
    return torch.tensor(mask)


def main() -> None:
    args = parse_args("mixed_variance", __doc__)
    n, size = (4, 9) if args.quick else (32, 17)
    rows = []
    gen = torch.Generator().manual_seed(0)
    for name, (field_type, build) in CONFIGS.items():
        norm = build(field_type).double()
        quiet = quiet_channels(field_type)
        for ratio in RATIOS:
            x = features(field_type, SIGMA_B * ratio, n, size, gen)
            with torch.no_grad():
                y = norm(nn.GeometricTensor(x, field_type)).tensor
            b_in, b_out = x[:, quiet].flatten(), y[:, quiet].flatten()
            seen = b_out + NOISE * torch.randn(b_out.shape, generator=gen, dtype=torch.float64)
            r2 = float(torch.corrcoef(torch.stack([b_in, seen]))[0, 1] ** 2)
            a_scale = float(y[:, ~quiet].std())
            rows.append({"config": name, "ratio": ratio, "a_scale": a_scale, "b_scale": float(b_out.std()), "b_r2": r2})
    write_csv(args.out / "mixed_variance.csv", rows)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, name in enumerate(CONFIGS):
        mine = [r for r in rows if r["config"] == name]
        ratios = [r["ratio"] for r in mine]
        axes[0].plot(ratios, [r["b_scale"] for r in mine], label=name, **distinct_style(i))
        axes[1].plot(ratios, [r["b_r2"] for r in mine], label=name, **distinct_style(i))
    axes[0].set_yscale("log")
    axes[0].set_ylabel(r"$\sigma$ of the quiet field's output")
    axes[1].set_ylabel(rf"$R^2$ of the quiet field after noise $\sigma = {NOISE}$")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel(r"$\sigma_A / \sigma_B$ (loud / quiet field scale)")
        ax.legend(fontsize=8)
    save_figure(fig, args.out / "mixed_variance.png")

    print("\n| configuration | B output std at 10^3 | B signal kept (R^2) at 10 | at 10^2 | at 10^3 |")
    print("|---|---:|---:|---:|---:|")
    for name in CONFIGS:
        at = {r["ratio"]: r for r in rows if r["config"] == name}
        print(
            f"| {name} | {at[1e3]['b_scale']:.2g} | {at[10.0]['b_r2']:.3f} | {at[100.0]['b_r2']:.3f} | "
            f"{at[1e3]['b_r2']:.3f} |"
        )
    finish(args)


if __name__ == "__main__":
    main()
