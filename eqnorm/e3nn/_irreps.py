"""The checks every e3nn layer makes: irreps that e3nn understands, features whose last axis matches them."""

from __future__ import annotations

from typing import Any

import torch
from e3nn import o3

__all__ = ["check_features", "parse_irreps"]


def parse_irreps(irreps: Any) -> o3.Irreps:
    """``o3.Irreps(irreps)``, or a ``ValueError`` that shows what was given."""
    try:
        return o3.Irreps(irreps)
    except (ValueError, TypeError, AssertionError) as error:
        raise ValueError(f"irreps must be e3nn Irreps, got {irreps!r}: {error}") from None


def check_features(x: Any, dim: int) -> None:
    """``ValueError`` unless ``x`` is a tensor ``(..., dim)``."""
    if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[-1] != dim:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected features (..., {dim}) for these irreps, got {shape}")
