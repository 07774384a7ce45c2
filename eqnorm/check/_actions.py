r"""How a group element acts on a tensor of an escnn field type, fast enough to check every layer of a model: the
fiber matrix :math:`\rho(g)` of each (field type, element) and the pixel permutation of each exact grid symmetry are
computed once, by escnn itself, and reused (escnn rebuilds the block-diagonal matrix through scipy on every call,
which made that most of a check's time)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["act"]

_fibers: dict[tuple[Any, Any], torch.Tensor] = {}
_permutations: dict[tuple[Any, tuple[int, ...], Any], torch.Tensor | None] = {}
_LIMIT = 4096  # entries kept per cache: a long session checking many models does not grow without bound


def _fiber(field_type: Any, g: Any) -> torch.Tensor:
    key = (field_type, g)
    if key not in _fibers:
        if len(_fibers) > _LIMIT:
            _fibers.clear()
        _fibers[key] = field_type.fiber_representation(g).to(torch.float64)
    return _fibers[key]


def _grid_permutation(gspace: Any, shape: tuple[int, ...], g: Any) -> torch.Tensor | None:
    """``perm`` with ``g x = x[..., perm]`` over the flattened grid, for an element that maps the grid onto itself;
    found by letting escnn move an image of pixel indices. ``None`` where the moved indices are not a permutation."""
    key = (gspace, shape, g)
    if key not in _permutations:
        from escnn.nn import FieldType

        if len(_permutations) > _LIMIT:
            _permutations.clear()
        pixels = int(torch.tensor(shape).prod())
        index = torch.arange(pixels, dtype=torch.float64).reshape(1, 1, *shape)
        moved = FieldType(gspace, [gspace.trivial_repr]).transform(index, g).flatten()
        perm = moved.round()
        exact = bool((moved - perm).abs().max() < 1e-6) and torch.equal(perm.sort().values, index.flatten())
        _permutations[key] = perm.long() if exact else None
    return _permutations[key]


def act(t: torch.Tensor, field_type: Any, g: Any, whole: bool, exact: bool = True) -> torch.Tensor:
    r""":math:`g` acting on ``t`` ``(N, C, *grid)`` of ``field_type``: on the fibers, :math:`\rho(g)\,t(x)`, and with
    ``whole`` on the grid too, :math:`\rho(g)\,t(g^{-1}x)` (by a pixel permutation where ``exact`` and ``g`` maps
    the grid onto itself, else by escnn's interpolation). ``field_type`` None: invariant outputs, left as they are."""
    if field_type is None:
        return t
    moved = torch.einsum("oi,bi...->bo...", _fiber(field_type, g).to(t), t)
    if not whole or t.dim() <= 2:
        return moved
    perm = _grid_permutation(field_type.gspace, tuple(t.shape[2:]), g) if exact else None
    if perm is None:
        from escnn.nn import FieldType

        space = field_type.gspace
        scalar = FieldType(space, [space.trivial_repr])  # the grid only, channel by channel
        return scalar.transform(moved.reshape(-1, 1, *t.shape[2:]), g).reshape(moved.shape)
    return moved.flatten(2)[:, :, perm.to(t.device)].reshape(moved.shape)
