"""What every e3nn layer shares: irreps that e3nn understands, features whose last axis matches them, and the
attributes of ``torch.nn.GroupNorm`` read from the plain module inside."""

from __future__ import annotations

from typing import Any

import torch
from e3nn import o3

from ..layout import FieldLayout
from ..module import LayoutModule

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


class IrrepsModule(torch.nn.Module):
    """An e3nn layer over ``irreps_in`` (= ``irreps_out``) holding ``norm``, a plain
    :class:`~eqnorm.module.LayoutModule`; ``num_groups``, ``num_channels``, ``eps``, ``affine``, ``weight``
    (one per irrep copy), ``bias`` (one per ``0e`` copy) and ``reset_parameters()`` as ``torch.nn.GroupNorm``."""

    irreps_in: o3.Irreps
    irreps_out: o3.Irreps
    norm: LayoutModule

    @property
    def layout(self) -> FieldLayout:
        """The :class:`~eqnorm.FieldLayout`: one field per irrep copy."""
        return self.norm.layout

    @property
    def weight(self) -> torch.nn.Parameter | None:
        """One scale per irrep copy; ``None`` unless ``affine``."""
        return self.norm.weight

    @property
    def bias(self) -> torch.nn.Parameter | None:
        """One bias per ``0e`` copy; ``None`` unless ``affine`` and ``bias``."""
        return self.norm.bias

    @property
    def num_groups(self) -> int:
        return self.norm.num_groups

    @property
    def num_channels(self) -> int:
        return self.norm.num_channels

    @property
    def affine(self) -> bool:
        return self.norm.affine

    @property
    def eps(self) -> float:
        return self.norm.eps

    @eps.setter
    def eps(self, value: float) -> None:
        self.norm.eps = value

    @property
    def normalization(self) -> str:
        return self.norm.layout.normalization

    def reset_parameters(self) -> None:
        """``weight`` to ones, ``bias`` to zeros (and the running statistics of a batch norm)."""
        self.norm.reset_parameters()
