"""Random elements of O(3) for the e3nn examples' invariance and equivariance checks."""

from __future__ import annotations

import torch


def random_orthogonal(n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` random rotations (Haar measure, via QR with the signs of ``R``'s diagonal), every other one composed with
    the inversion ``-I``: proper and improper elements alike."""
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=gen))
    q = q * torch.sign(torch.diagonal(r, dim1=1, dim2=2)).unsqueeze(1)
    q = q * torch.linalg.det(q).sign().view(-1, 1, 1)  # proper rotations
    return q * torch.where(torch.arange(n) % 2 == 1, -1.0, 1.0).view(-1, 1, 1)
