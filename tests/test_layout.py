import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import layout_of, specs

from eqnorm import FieldLayout
from eqnorm.layout import contiguous_groups, default_num_groups, resolve_groups


@given(spec=specs(), centering=st.sampled_from(["trivial", "all", "none"]))
def test_centering_is_an_orthogonal_projection(spec, centering):
    """K = center_in @ center_out is idempotent and symmetric: it projects onto the group means."""
    ops = layout_of(spec, centering).operators()
    K = ops.center_in @ ops.center_out
    torch.testing.assert_close(K @ K, K, atol=1e-12, rtol=0)
    torch.testing.assert_close(K, K.T, atol=1e-12, rtol=0)
    trivial = sum(k in spec.trivial for f in spec.field_irreps for k in f)
    assert ops.bias_basis.shape == (sum(spec.sizes), trivial)
    torch.testing.assert_close(ops.bias_basis.T @ ops.bias_basis, torch.eye(trivial, dtype=torch.float64))
    if centering == "none":
        assert K.abs().max() == 0


def test_operators_of_a_small_layout():
    # one 2D vector field and two scalars in one group: the scalars are centered together, the vector is not
    layout = FieldLayout([["v"], ["s"], ["s"]], {"v": 2, "s": 1}, {"s"}, [0, 0, 0])
    ops = layout.operators()
    K = ops.center_in @ ops.center_out
    expected = torch.zeros(4, 4, dtype=torch.float64)
    expected[2:, 2:] = 0.5
    torch.testing.assert_close(K, expected)
    assert ops.group_size.tolist() == [4.0] and ops.field_of_channel.tolist() == [0, 0, 1, 2]


def test_trivial_basis_vectors_are_oriented():
    q = np.array([[-1.0, 1.0], [-1.0, -1.0]]) / np.sqrt(2)  # trivial column pointing to -(1, 1)
    layout = FieldLayout([["s", "p"]], {"s": 1, "p": 1}, {"s"}, [0], [q])
    assert (layout.operators().bias_basis > 0).all()


def test_operators_are_cached_per_dtype_and_device():
    layout = FieldLayout.scalars(4, 2)
    assert layout.operators(torch.float32) is layout.operators(torch.float32)
    assert layout.operators(torch.float32).center_in.dtype == torch.float32
    assert layout.operators(torch.float64).group_of_channel.dtype == torch.long


def test_groups():
    assert contiguous_groups(6, 2) == [0, 0, 0, 1, 1, 1]
    assert resolve_groups([1] * 4, None, [7, 3, 7, 3]) == [0, 1, 0, 1]
    assert resolve_groups([1] * 3, None, "field") == [0, 1, 2]
    assert resolve_groups([1] * 3, 3, "field") == [0, 1, 2]
    with pytest.raises(ValueError, match="does not divide"):
        contiguous_groups(6, 4)
    with pytest.raises(ValueError, match="positive integer"):
        contiguous_groups(6, 0)
    with pytest.raises(ValueError, match="names 2 distinct groups"):
        resolve_groups([1] * 4, 3, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="integers"):
        resolve_groups([1] * 2, None, [0.5, 1])
    with pytest.raises(ValueError, match="group_by='field' makes one group per field"):
        resolve_groups([1] * 3, 2, "field")
    with pytest.raises(ValueError, match=r"num_groups must be a positive integer.*got 0\.001"):
        resolve_groups([1] * 3, 1e-3, "field")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field_sizes", "expected"),
    [
        ([8] * 16, 8),  # 128 channels: 8 groups of 16 channels
        ([8] * 128, 32),  # 1024 channels: capped at 32 groups
        ([3] * 10, 2),  # 30 channels: round(30 / 16) = 2 groups of 5 vectors
        ([4] * 7, 1),  # 7 fields, target 2: no divisor but 1, a field is never split
        ([1] * 8, 1),  # few channels: one group
        ([8] * 12 + [1] * 12, 6),  # 108 channels: target 7, largest divisor of 24 fields not above it
    ],
)
def test_default_num_groups_follows_wu_and_he_and_never_splits_a_field(field_sizes, expected):
    groups = default_num_groups(field_sizes)
    assert groups == expected
    assert len(field_sizes) % groups == 0
    assert resolve_groups(field_sizes, None, "contiguous") == contiguous_groups(len(field_sizes), expected)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"change_of_basis": [np.array([[1.0, 1.0], [0.0, 1.0]])]}, "not orthogonal"),
        ({"change_of_basis": [np.eye(3)]}, "shape"),
        ({"centering": "mean"}, "centering"),
        ({"groups": [0, 1]}, "2 group ids"),
        ({"field_irreps": [[]]}, "field 0 has no irreducible component"),
        ({"irrep_dims": {"v": 0}}, "irrep 'v' must have a positive integer dimension, got 0"),
        ({"irrep_dims": {"v": 2.0}}, "positive integer dimension"),
    ],
)
def test_layout_errors(kwargs, match):
    args = {"field_irreps": [["v"]], "irrep_dims": {"v": 2}, "trivial": set(), "groups": [0]} | kwargs
    with pytest.raises(ValueError, match=match):
        FieldLayout(**args)


def test_unknown_irrep_and_non_scalar_trivial():
    with pytest.raises(ValueError, match="no entry in irrep_dims"):
        FieldLayout([["x"]], {}, set(), [0])
    with pytest.raises(ValueError, match="dimension 1"):
        FieldLayout([["v"]], {"v": 2}, {"v"}, [0])


def test_operators_are_contiguous():
    ops = FieldLayout([["s", "v"], ["s"]], {"s": 1, "v": 2}, {"s"}, [0, 0], centering="all").operators(torch.float32)
    assert all(t.is_contiguous() for t in ops)
