"""The escnn side shared by eqnorm's escnn layers: a plain normalization module applied to a field type's channels."""

from __future__ import annotations

import torch
from escnn.nn import EquivariantModule, FieldType, GeometricTensor

__all__ = ["FieldModule"]


class FieldModule(EquivariantModule):
    r"""An escnn ``EquivariantModule`` wrapping ``self.norm``, a plain module on ``(N, C, *spatial)`` tensors.

    :math:`y = \mathrm{norm}(x)` on the tensor of a ``GeometricTensor`` of type ``in_type``; the output has the same
    field type. Subclasses set ``in_type``, ``out_type`` and ``norm``.
    """

    in_type: FieldType
    out_type: FieldType
    norm: torch.nn.Module

    def forward(self, input: GeometricTensor) -> GeometricTensor:
        """Normalize ``input``, which must be a ``GeometricTensor`` of type ``in_type``; returns the same type."""
        if not isinstance(input, GeometricTensor):
            raise TypeError(f"{type(self).__name__} expects an escnn GeometricTensor, got {type(input).__name__}")
        if input.type != self.in_type:
            raise ValueError(
                f"{type(self).__name__} was built for field type {self.in_type} but got a tensor of type {input.type}"
            )
        return GeometricTensor(self.norm(input.tensor), self.out_type, input.coords)

    def evaluate_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The output shape: the input shape, which must be ``(N, in_type.size, ...)``."""
        if len(input_shape) < 2 or input_shape[1] != self.in_type.size:
            raise ValueError(f"expected a shape (N, {self.in_type.size}, ...), got {tuple(input_shape)}")
        return tuple(input_shape)
