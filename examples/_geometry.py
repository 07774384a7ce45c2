"""Random elements of O(3) for the e3nn examples' invariance and equivariance checks."""

from __future__ import annotations

import torch
from e3nn import o3


def random_orthogonal(n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` random rotations (e3nn's ``o3.rand_matrix``: Haar measure), every other one composed with the inversion
    ``-I``: proper and improper elements alike. Drawn from ``gen``'s stream, leaving the global one as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(1 << 62, (1,), generator=gen)))
        rotations = o3.rand_matrix(n)
    return rotations * torch.where(torch.arange(n) % 2 == 1, -1.0, 1.0).view(-1, 1, 1)
