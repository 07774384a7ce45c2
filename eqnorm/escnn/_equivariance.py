"""Equivariance errors of escnn modules: the fiber action, and the grid symmetries that move no point off the grid."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from escnn.group import GroupElement
from escnn.gspaces import GSpace
from escnn.nn import GeometricTensor

__all__ = ["Measurement", "equivariance_errors", "grid_elements", "is_grid_symmetry", "random_input", "sample_elements"]

#: (element, max |f(g x) - g f(x)|, that error over max |g f(x)|)
Measurement = tuple[GroupElement, float, float]


def is_grid_symmetry(gspace: GSpace, element: GroupElement) -> bool:
    r"""Whether ``element`` acts on the base space by a signed permutation of the axes (90-degree turns, flips):
    :math:`|A(g)|` is a permutation matrix, for the base-space action :math:`A(g)`.

    Such an element permutes the points of a centred square or cubic grid exactly; any other rotation interpolates.
    """
    if gspace.dimensionality == 0:
        return True
    action = np.abs(np.asarray(gspace.basespace_action(element)))
    ones = np.isclose(action, 1.0)
    return bool((ones | np.isclose(action, 0.0)).all() and (ones.sum(0) == 1).all() and (ones.sum(1) == 1).all())


def sample_elements(gspace: GSpace, samples: int | None = None) -> list[GroupElement]:
    """escnn's testing elements of the fiber group (all elements of a finite group), at most ``samples`` of them."""
    elements = list(gspace.fibergroup.testing_elements())
    if samples is not None and samples < len(elements):
        picks = np.linspace(0, len(elements) - 1, samples).round().astype(int)
        elements = [elements[i] for i in sorted(set(picks.tolist()))]
    return elements


def grid_elements(gspace: GSpace) -> list[GroupElement]:
    """Every element whose base-space action is exact on a grid (see :func:`is_grid_symmetry`): of a finite group,
    its elements that turn or flip the grid; of a continuous one, the rotations by multiples of 90 degrees (2D) or
    the 24 rotations of the cube (3D), with the axis reflections of O(2) and the inversion of O(3)."""
    group = gspace.fibergroup
    if not group.continuous or gspace.dimensionality == 0:
        return [g for g in group.testing_elements() if is_grid_symmetry(gspace, g)]
    if gspace.dimensionality == 2:
        turns = [k * np.pi / 2 for k in range(4)]
        flips = (0, 1) if group.name == "O(2)" else None
        return (
            [group.element(t, "radians") for t in turns]
            if flips is None
            else [group.element((f, t), "radians") for f in flips for t in turns]
        )
    cube = [m for m in _signed_permutations(gspace.dimensionality) if np.linalg.det(m) > 0]
    if group.name == "O(3)":
        return [group.element((inversion, m), "MAT") for inversion in (0, 1) for m in cube]
    return [group.element(m, "MAT") for m in cube]


def _signed_permutations(n: int) -> list[np.ndarray]:
    """The n x n signed permutation matrices."""
    out = []
    for perm in itertools.permutations(range(n)):
        for signs in itertools.product((1.0, -1.0), repeat=n):
            m = np.zeros((n, n))
            m[np.arange(n), perm] = signs
            out.append(m)
    return out


def random_input(
    in_type: Any, batch: int = 3, size: int = 9, dtype: torch.dtype = torch.float64, seed: int = 0
) -> GeometricTensor:
    """A random ``GeometricTensor`` ``(batch, C, size, ..., size)`` with non-zero means, so centering matters."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, in_type.size) + (size,) * in_type.gspace.dimensionality
    x = (
        torch.randn(shape, generator=gen, dtype=torch.float64) * 2
        + torch.randn(shape[:2] + (1,) * (len(shape) - 2), generator=gen, dtype=torch.float64) * 3
    )
    return GeometricTensor(x.to(dtype), in_type)


def equivariance_errors(
    module: Callable[[GeometricTensor], GeometricTensor],
    x: GeometricTensor,
    elements: Iterable[GroupElement],
    fibers_only: bool,
) -> list[Measurement]:
    r"""For each element :math:`g`, :math:`\max|f(g x) - g f(x)|` and that over :math:`\max|g f(x)|`, where
    :math:`g` moves the fibers only (:math:`x_i(p) \mapsto \rho_i(g) x_i(p)`) or the whole field
    (:math:`x_i(p) \mapsto \rho_i(g) x_i(g^{-1} p)`, fibers and grid), by the group actions of ``eqnorm-check``
    (:mod:`eqnorm.check`: escnn's own, computed once per element)."""
    from ..check._actions import act

    y = module(x)
    results = []
    for g in elements:
        moved = GeometricTensor(act(x.tensor, x.type, g, not fibers_only), x.type)
        expected = act(y.tensor, y.type, g, not fibers_only)
        err = (module(moved).tensor - expected).abs().max().item()
        results.append((g, err, err / max(expected.abs().max().item(), 1e-300)))
    return results
