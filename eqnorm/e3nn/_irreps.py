"""What every e3nn layer shares: irreps that e3nn understands, features whose last axis matches them, and the
attributes of ``torch.nn.GroupNorm`` read from the plain module inside."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from e3nn import o3

from ..module import NormAttributes

__all__ = ["IrrepsModule", "check_features", "parse_irreps"]


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


class IrrepsModule(NormAttributes, torch.nn.Module):
    """An e3nn layer over ``irreps_in`` (= ``irreps_out``) holding ``norm``, a plain
    :class:`~eqnorm.module.PlainNorm`, with its attributes (:class:`~eqnorm.module.NormAttributes`) and the
    ``normalization`` of e3nn's ``BatchNorm``."""

    if TYPE_CHECKING:  # for mypy only: TorchScript cannot read these annotations
        irreps_in: o3.Irreps
        irreps_out: o3.Irreps

    __jit_unused_properties__ = (*NormAttributes.__jit_unused_properties__, "normalization")

    @property
    def normalization(self) -> str:
        """``"component"`` or ``"norm"``: the variance per channel or per irrep copy."""
        return self.norm.layout.normalization
