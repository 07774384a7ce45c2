"""The checker's cached group actions are escnn's own: fiber matrices and grid permutations against
``GeometricTensor.transform`` on every kind of group."""

import pytest
import torch
from escnn import gspaces, nn

from eqnorm.check._actions import act
from eqnorm.escnn import grid_elements, sample_elements

SPACES = {
    "C8": lambda: gspaces.rot2dOnR2(8),
    "D4": lambda: gspaces.flipRot2dOnR2(4),
    "SO2": lambda: gspaces.rot2dOnR2(-1, maximum_frequency=3),
    "O2": lambda: gspaces.flipRot2dOnR2(-1, maximum_frequency=3),
    "SO3": lambda: gspaces.rot3dOnR3(maximum_frequency=2),
    "O3": lambda: gspaces.flipRot3dOnR3(maximum_frequency=2),
}


def field_type(gs):
    irreps = [rep for rep in gs.irreps if rep.size > 1][:2]
    return nn.FieldType(gs, [gs.trivial_repr, *irreps])


@pytest.mark.parametrize("name", list(SPACES))
def test_grid_permutations_and_fiber_matrices_are_escnns_transform(name):
    gs = SPACES[name]()
    ft = field_type(gs)
    x = torch.randn(2, ft.size, *([5] * gs.dimensionality), dtype=torch.float64)
    for g in grid_elements(gs):
        want = nn.GeometricTensor(x, ft).transform(g).tensor
        torch.testing.assert_close(act(x, ft, g, whole=True), want, atol=1e-10, rtol=0)
    for g in sample_elements(gs, 4):
        want = nn.GeometricTensor(x, ft).transform_fibers(g).tensor
        torch.testing.assert_close(act(x, ft, g, whole=False), want, atol=1e-10, rtol=0)
        # an element off the grid interpolates as escnn does
        torch.testing.assert_close(
            act(x, ft, g, whole=True, exact=False), nn.GeometricTensor(x, ft).transform(g).tensor, atol=1e-8, rtol=0
        )
