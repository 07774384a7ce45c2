"""Equivariance checking of escnn and e3nn modules: the library behind the ``eqnorm-check`` command."""

from ._checks import CheckResult, Measurement, Tolerance, check_e3nn, check_escnn

__all__ = ["CheckResult", "Measurement", "Tolerance", "check_e3nn", "check_escnn"]
