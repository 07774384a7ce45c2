"""The compiled layout (eqnorm/compiled.py): its operators equal the layout's dense operators, its cuts split the
map into parts that read nothing outside themselves, and bad entry lists are refused when it is built."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import layout_of, specs

from eqnorm.compiled import OPERATORS, compile_layout
from eqnorm.layout import FieldLayout


def decode(layout: FieldLayout) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The compiled operators as dense ``(outputs, sources)`` matrices, and the ``(Q, 3)`` cuts."""
    t = layout.tensors
    C, G, L, T, F = layout.num_channels, layout.num_groups, t.class_scale.numel(), layout.num_trivial, layout.num_fields
    shapes = {"class_sum": (L, C), "center": (C, L), "group_mean": (G, C), "channel_bias": (C, T),
              "bias_grad": (T, C), "field_sum": (F, C)}  # fmt: skip
    index, value = t.compiled_index.numpy(), t.compiled_value.numpy()
    own = {"bias_grad": t.compiled_bias_grad.numpy(), "field_sum": t.compiled_field_sum.numpy()}
    dense = {}
    for name in OPERATORS:
        outputs, sources = shapes[name]
        array = own.get(name, index)
        ptr = array[: outputs + 1]
        entries = ptr[-1]
        source, rest = array[outputs + 1 : outputs + 1 + entries], array[outputs + 1 + entries :]
        if name in own:
            assert rest.size == 0, f"{name}: its tensor holds exactly its offsets and sources"
        else:
            index = rest
        vals, value = value[:entries], value[entries:]
        assert (np.diff(ptr) >= 0).all() and ptr[0] == 0
        matrix = np.zeros((outputs, sources))
        for o in range(outputs):
            assert (np.diff(source[ptr[o] : ptr[o + 1]]) > 0).all(), f"{name}: sources must ascend"
            matrix[o, source[ptr[o] : ptr[o + 1]]] = vals[ptr[o] : ptr[o + 1]]
        dense[name] = matrix
    C = layout.num_channels
    runs, index = index[:C], index[C:]
    assert value.size == 0 and index.size % 3 == 0
    dense["center runs"] = runs
    return dense, index.reshape(-1, 3)


@given(spec=specs(max_fields=5), centering=st.sampled_from(["trivial", "all", "none"]))
def test_operators_equal_the_dense_operators(spec, centering):
    layout = layout_of(spec, centering)
    ops = layout.operators()
    dense, _ = decode(layout)
    K = (ops.center_in @ ops.center_out).numpy().T  # cen = K m
    np.testing.assert_allclose(dense["center"] @ dense["class_sum"], K, atol=1e-12)
    member = ops.group_member.numpy()
    np.testing.assert_allclose(dense["group_mean"], member.T / member.sum(0)[:, None], atol=1e-15)
    np.testing.assert_allclose(dense["channel_bias"], ops.bias_basis.numpy(), atol=1e-15)
    np.testing.assert_allclose(dense["bias_grad"], ops.bias_basis.numpy().T, atol=1e-15)
    fields = np.zeros((layout.num_fields, layout.num_channels))
    fields[ops.field_of_channel.numpy(), np.arange(layout.num_channels)] = 1
    np.testing.assert_array_equal(dense["field_sum"], fields)


@given(spec=specs(max_fields=5), centering=st.sampled_from(["trivial", "all"]))
def test_center_runs_are_channels_that_read_nothing_or_one_class_each(spec, centering):
    layout = layout_of(spec, centering)
    dense, _ = decode(layout)
    V, runs = dense["center"], dense["center runs"]
    reads = [tuple(np.flatnonzero(row)) for row in V]
    for c, n in enumerate(runs):
        if len(reads[c]) > 1:
            assert n == 0
            continue
        assert n >= 1 and all(reads[k] == reads[c] for k in range(c, c + n))
        assert c + n == len(reads) or reads[c + n] != reads[c], "a run must be maximal"


def test_norm_normalization_divides_by_the_fields_of_a_group():
    layout = FieldLayout([["v"], ["v"], ["s"]], {"v": 3, "s": 1}, {"s"}, [0, 0, 1], normalization="norm")
    dense, _ = decode(layout)
    np.testing.assert_allclose(dense["group_mean"], [[0.5] * 6 + [0], [0] * 6 + [1]])


@given(spec=specs(max_fields=6), centering=st.sampled_from(["trivial", "all"]))
def test_every_part_between_two_cuts_reads_only_itself(spec, centering):
    layout = layout_of(spec, centering)
    dense, cuts = decode(layout)
    assert tuple(cuts[0]) == (0, 0, 0)
    assert tuple(cuts[-1]) == (layout.num_channels, layout.tensors.class_scale.numel(), layout.num_groups)
    steps = np.diff(cuts, axis=0)
    assert (steps[:, 0] > 0).all() and (steps[:, 1] >= 0).all() and (steps[:, 2] > 0).all()
    for (c0, l0, g0), (c1, l1, g1) in itertools.pairwise(cuts):
        channels, classes, groups = slice(c0, c1), slice(l0, l1), slice(g0, g1)
        outside = np.ones(layout.num_channels, dtype=bool)
        outside[channels] = False
        assert not dense["class_sum"][classes][:, outside].any()
        assert not dense["group_mean"][groups][:, outside].any()
        outside_classes = np.ones(dense["center"].shape[1], dtype=bool)
        outside_classes[classes] = False
        assert not dense["center"][channels][:, outside_classes].any()


def test_contiguous_groups_cut_at_every_group():
    layout = FieldLayout(16 * [["s", "v"]], {"s": 1, "v": 2}, {"s"}, [g for g in range(4) for _ in range(4)])
    _, cuts = decode(layout)
    np.testing.assert_array_equal(cuts, [[0, 0, 0], [12, 1, 1], [24, 2, 2], [36, 3, 3], [48, 4, 4]])


def test_interleaved_groups_are_one_part():
    _, cuts = decode(FieldLayout([["s"], ["s"], ["s"]], {"s": 1}, {"s"}, [0, 1, 0]))
    np.testing.assert_array_equal(cuts, [[0, 0, 0], [3, 2, 2]])


def entry_lists(layout: FieldLayout) -> dict:
    t = layout.tensors
    return {
        "field_of_channel": t.field_of_channel.numpy(),
        "group_of_channel": t.group_of_channel.numpy(),
        "group_divisor": t.group_size.numpy(),
        "center": (t.center_channel.numpy(), t.center_class.numpy(), t.center_value.numpy(), t.class_scale.numpy()),
        "bias": (t.bias_channel.numpy(), t.bias_index.numpy(), t.bias_value.numpy()),
        "num_fields": layout.num_fields,
        "num_trivial": layout.num_trivial,
    }


def test_compiling_reproduces_the_layout():
    layout = FieldLayout([["s", "v"], ["s"], ["v"], ["s", "s"]], {"s": 1, "v": 2}, {"s"}, [0, 1, 0, 1])
    compiled = compile_layout(**entry_lists(layout))
    assert torch.equal(compiled.indices, layout.tensors.compiled_index)
    assert torch.equal(compiled.field_sum, layout.tensors.compiled_field_sum)
    assert torch.equal(compiled.bias_grad, layout.tensors.compiled_bias_grad)
    assert torch.equal(compiled.values, layout.tensors.compiled_value)


def repeat_first_center_entry(arrays: dict) -> None:
    for a in arrays["center"][:3]:
        a[1] = a[0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a["bias"][1].__setitem__(0, 7), "outside range\\(4\\)"),
        (lambda a: a["center"][0].__setitem__(0, -1), "outside range\\(8\\)"),
        (lambda a: a.__setitem__("num_trivial", 2), "outside range\\(2\\)"),
        (repeat_first_center_entry, "ascend within each output"),
    ],
    ids=["bias index", "center channel", "too few biases", "a repeated entry"],
)
def test_bad_entry_lists_are_refused_once_when_compiled(change, message):
    layout = FieldLayout([["s", "v"], ["s"], ["v"], ["s", "s"]], {"s": 1, "v": 2}, {"s"}, [0, 0, 0, 0])
    arrays = entry_lists(layout)
    arrays["center"] = tuple(a.copy() for a in arrays["center"])
    arrays["bias"] = tuple(a.copy() for a in arrays["bias"])
    change(arrays)
    with pytest.raises(ValueError, match=message):
        compile_layout(**arrays)
