"""Rotated digits: scikit-learn's bundled 8x8 digits, upsampled and rotated by random angles (a small rotated MNIST).

Each 8x8 image is upsampled bilinearly to ``inner`` pixels, padded to ``size`` (so that a rotation never cuts a
stroke: ``size >= inner * sqrt(2)``) and rotated by an angle drawn uniformly from [0, 2 pi). Train and test images are
both rotated, so a model must be invariant to do well. Pixel values are scaled to [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits


@dataclass
class Split:
    """Images ``x`` of shape (N, 1, size, size) and integer labels ``y``."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


def rotate(images: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate each image counter-clockwise by its angle (radians) about the centre, bilinear, zeros outside."""
    c, s = torch.cos(angles), torch.sin(angles)
    zero = torch.zeros_like(c)
    # affine_grid maps output coordinates to input coordinates, so it takes the inverse rotation.
    theta = torch.stack([torch.stack([c, -s, zero], -1), torch.stack([s, c, zero], -1)], 1).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rotated_digits(
    size: int = 29,
    inner: int = 20,
    test_size: int = 497,
    seed: int = 0,
    limit: int | None = None,
    rotated: bool = True,
) -> tuple[Split, Split]:
    """The 1797 digits split into train and test (``test_size`` images), each rotated by a random angle.

    ``limit`` keeps only the first ``limit`` training images (quick runs); ``rotated=False`` leaves every digit
    upright. The split and the angles depend on ``seed`` only.
    """
    if size < math.ceil(inner * math.sqrt(2)):
        raise ValueError(f"size {size} is too small to rotate a {inner}x{inner} digit without cropping it")
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=gen)
    x, y = x[order], y[order]
    x = F.interpolate(x, size=(inner, inner), mode="bilinear", align_corners=False)
    pad = size - inner
    x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    angles = torch.rand(len(y), generator=gen) * 2 * math.pi
    if rotated:
        x = rotate(x, angles).clamp_(0, 1)
    train, test = Split(x[test_size:], y[test_size:]), Split(x[:test_size], y[:test_size])
    if limit is not None:
        train = Split(train.x[:limit], train.y[:limit])
    return train, test
