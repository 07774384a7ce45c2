"""The escnn side shared by eqnorm's escnn layers: a plain normalization module applied to a field type's channels."""

from __future__ import annotations

import copy
from collections import Counter

import torch
from escnn.nn import EquivariantModule, FieldType, GeometricTensor

from ..module import NormAttributes, PlainNorm
from ._equivariance import Measurement, equivariance_errors, grid_elements, random_input, sample_elements

__all__ = ["FieldModule", "check_field_type", "describe_field_type"]


def describe_field_type(field_type: FieldType) -> str:
    """``"16 C8 regular fields"``, ``"4 D4 regular + 2 D4 irrep_0,0 fields"``: a field type in a few words."""
    group = field_type.fibergroup.name
    counts = Counter(rep.name for rep in field_type.representations)
    plural = "field" if len(field_type) == 1 else "fields"
    return " + ".join(f"{n} {group} {name}" for name, n in counts.items()) + f" {plural}"


def check_field_type(in_type: object) -> None:
    """``TypeError`` unless ``in_type`` is an escnn ``FieldType``: the one positional argument every layer shares."""
    if not isinstance(in_type, FieldType):
        raise TypeError(f"in_type must be an escnn FieldType, got {type(in_type).__name__}")


class FieldModule(NormAttributes, EquivariantModule):
    r"""An escnn ``EquivariantModule`` wrapping ``self.norm``, a plain :class:`~eqnorm.module.PlainNorm` on
    ``(N, C, *spatial)`` tensors.

    :math:`y = \mathrm{norm}(x)` on the tensor of a ``GeometricTensor`` of type ``in_type``; the output has the same
    field type. Subclasses set ``in_type``, ``out_type`` and ``norm``, whose attributes the layer shows
    (:class:`~eqnorm.module.NormAttributes`); ``repr`` is one line.
    """

    in_type: FieldType
    out_type: FieldType

    def extra_repr(self) -> str:
        return f"{describe_field_type(self.in_type)}, {self.norm.settings_repr()}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def export(self) -> PlainNorm:
        """A plain module computing the same function with no escnn object inside. As escnn defines ``export()``
        ("export this module to a normal PyTorch module and set to 'eval' mode"), this layer is set to eval mode too."""
        self.eval()
        return copy.deepcopy(self.norm)

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

    def equivariance_errors(
        self,
        samples: int | None = None,
        dtype: torch.dtype = torch.float64,
        seed: int = 0,
        training: bool | None = None,
    ) -> dict[str, list[Measurement]]:
        """Errors on a random input: ``"fiber"`` (sampled group elements) and ``"grid"`` (exact grid symmetries), with
        the layer in training mode or not (default: its current mode)."""
        norm = copy.deepcopy(self.norm).to(dtype).train(self.training if training is None else training)

        def module(t: GeometricTensor) -> GeometricTensor:
            return GeometricTensor(norm(t.tensor), t.type, t.coords)

        x = random_input(self.in_type, dtype=dtype, seed=seed)
        gspace = self.in_type.gspace
        with torch.no_grad():
            return {
                "fiber": equivariance_errors(module, x, sample_elements(gspace, samples), fibers_only=True),
                "grid": equivariance_errors(module, x, grid_elements(gspace), fibers_only=False),
            }

    #: the modes check_equivariance checks (None: the current one); layers with running statistics check both
    checked_modes: tuple[bool | None, ...] = (None,)

    def check_equivariance(self, atol: float = 1e-7, rtol: float = 1e-5) -> list[tuple[str, float]]:
        """Check, in float64, the fiber action of escnn's testing elements and every exact grid symmetry, with the
        checker ``eqnorm-check`` runs (:func:`eqnorm.check.check_escnn`); the layer is left as it was.

        Raises ``AssertionError`` naming the element where the error exceeds both ``atol`` and ``rtol`` times
        ``max |g f(x)|``; returns ``(element, max abs error)`` for every element checked.
        """
        from ..check import CheckSettings, Tolerance, check_escnn

        modes = ["train" if (self.training if t is None else t) else "eval" for t in self.checked_modes]
        every = len(list(self.in_type.fibergroup.testing_elements()))
        x = random_input(self.in_type, dtype=torch.float64).tensor
        results = check_escnn(self, CheckSettings(modes, torch.float64, Tolerance(atol, rtol), samples=every), x=x)
        checked = []
        for r in results:
            if r.name not in ("fiber equivariance", "grid symmetries (exact)"):
                continue  # the rest (interpolated rotations, batch independence) is eqnorm-check's report
            for m in r.measurements:
                if m.passed is False:
                    raise AssertionError(
                        f"{r.name} [{r.mode}]: equivariance fails for element {m.element}: max abs error "
                        f"{m.abs_error:.3e}, relative {m.rel_error:.3e}"
                    )
                checked.append((m.element, m.abs_error))
        return checked
