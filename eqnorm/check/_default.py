"""The model ``eqnorm-check`` checks when given no target: a small C8 steerable CNN with FieldGroupNorm."""

from __future__ import annotations

from typing import Any

__all__ = ["default_model"]


def default_model() -> Any:
    """Two ``R2Conv -> FieldGroupNorm -> ReLU`` blocks on 8 regular + 4 trivial C8 fields, seeded."""
    import torch
    from escnn import gspaces, nn

    from ..escnn import FieldGroupNorm

    torch.manual_seed(0)
    gs = gspaces.rot2dOnR2(8)
    image = nn.FieldType(gs, [gs.trivial_repr])
    hidden = nn.FieldType(gs, 8 * [gs.regular_repr] + 4 * [gs.trivial_repr])
    return nn.SequentialModule(
        nn.R2Conv(image, hidden, kernel_size=5, padding=2),
        FieldGroupNorm(hidden, num_groups=4),
        nn.ReLU(hidden),
        nn.R2Conv(hidden, hidden, kernel_size=5, padding=2),
        FieldGroupNorm(hidden, num_groups=4),
        nn.ReLU(hidden),
    )
