"""A float64 reference for equivariant group normalization, written straight from "What a layer computes" in docs/theory.rst.

It works in the irrep basis: z_i = Q_i^T x_i, explicit per-group means of the centered irrep coordinates, the variance
as the mean square of the centered coordinates (Q_i orthogonal), then back with Q_i. It shares no code with eqnorm.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Spec:
    """Fields described by their irreps (type ids), orthogonal bases and groups."""

    field_irreps: list[list[Hashable]]
    irrep_dims: dict[Hashable, int]
    trivial: set[Hashable]
    groups: list[int]
    bases: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.bases:
            self.bases = [np.eye(sum(self.irrep_dims[k] for k in f)) for f in self.field_irreps]

    @property
    def sizes(self) -> list[int]:
        return [q.shape[0] for q in self.bases]

    def oriented_bases(self) -> list[np.ndarray]:
        """Each trivial basis vector oriented so that its entries sum to >= 0 (the convention eqnorm documents)."""
        out = []
        for irreps, q in zip(self.field_irreps, self.bases, strict=False):
            q = q.copy()
            start = 0
            for key in irreps:
                if key in self.trivial and q[:, start].sum() < 0:
                    q[:, start] *= -1
                start += self.irrep_dims[key]
            out.append(q)
        return out

    def representation(self, irrep_matrices: dict[Hashable, np.ndarray]) -> np.ndarray:
        """The block-diagonal rho(g) for given irrep matrices psi_k(g) (trivial irreps act as 1)."""
        blocks = []
        for irreps, q in zip(self.field_irreps, self.bases, strict=False):
            psi = [np.eye(1) if k in self.trivial else irrep_matrices[k] for k in irreps]
            d = sum(p.shape[0] for p in psi)
            inner = np.zeros((d, d))
            s = 0
            for p in psi:
                inner[s : s + p.shape[0], s : s + p.shape[0]] = p
                s += p.shape[0]
            blocks.append(q @ inner @ q.T)
        C = sum(self.sizes)
        rho = np.zeros((C, C))
        s = 0
        for b in blocks:
            rho[s : s + b.shape[0], s : s + b.shape[0]] = b
            s += b.shape[0]
        return rho


def reference_norm(
    x: torch.Tensor,
    spec: Spec,
    centering: str,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    eps: float = 1e-5,
) -> np.ndarray:
    """y for x of shape (N, C, *spatial), in float64 numpy."""
    xs = x.detach().double().reshape(x.shape[0], x.shape[1], -1).numpy()
    N, _, _P = xs.shape
    bases = spec.oriented_bases()
    offsets = np.cumsum([0, *spec.sizes])
    F = len(bases)
    weight = np.ones(F) if weight is None else weight
    y = np.zeros_like(xs)
    bias_iter = iter(np.zeros(10**6) if bias is None else bias)
    bias_coords = []  # per field, irrep-basis bias vector
    for irreps in spec.field_irreps:
        v = np.zeros(sum(spec.irrep_dims[k] for k in irreps))
        s = 0
        for k in irreps:
            if k in spec.trivial:
                v[s] = next(bias_iter)
            s += spec.irrep_dims[k]
        bias_coords.append(v)
    for n in range(N):
        z = [bases[i].T @ xs[n, offsets[i] : offsets[i + 1]] for i in range(F)]  # irrep coordinates, (d_i, P)
        zc = [zi.copy() for zi in z]
        for g in set(spec.groups):
            fields = [i for i in range(F) if spec.groups[i] == g]
            # explicit means: for each centered irrep type, the average over the group's copies and positions
            copies: dict[Hashable, list[tuple[int, int]]] = {}
            for i in fields:
                s = 0
                for k in spec.field_irreps[i]:
                    if centering == "all" or (centering == "trivial" and k in spec.trivial):
                        copies.setdefault(k, []).append((i, s))
                    s += spec.irrep_dims[k]
            for k, places in copies.items():
                d = spec.irrep_dims[k]
                mean = np.mean([z[i][s : s + d].mean(axis=1) for i, s in places], axis=0)
                for i, s in places:
                    zc[i][s : s + d] -= mean[:, None]
            var = np.mean(np.concatenate([zc[i].ravel() for i in fields]) ** 2)
            for i in fields:
                yi = weight[i] * zc[i] / np.sqrt(var + eps) + bias_coords[i][:, None]
                y[n, offsets[i] : offsets[i + 1]] = bases[i] @ yi
    return y.reshape(x.shape)


def random_orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))
