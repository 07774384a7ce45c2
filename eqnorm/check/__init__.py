"""Equivariance checking of escnn and e3nn modules: the library behind the ``eqnorm-check`` command."""

from ._checks import CheckResult, CheckSettings, Measurement, Tolerance, check_e3nn, check_escnn
from ._whole import WholeModel

__all__ = ["CheckResult", "CheckSettings", "Measurement", "Tolerance", "WholeModel", "check_e3nn", "check_escnn"]
