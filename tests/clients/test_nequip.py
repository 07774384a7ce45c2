"""eqnorm inside a real NequIP model (nequip, built with its own builder): a per-graph group norm after every
convolution but the last, given nequip's graph index; energies and forces of Cu/Au cells. The model is exported
through nequip's AOTInductor path (its own make_fx tracing at two batch shapes, torch.export with dynamic batch
dimensions, AOTInductor), calls the compiled op from the package, and matches eager on a batch of another size. Needs
nequip (its own environment: it needs e3nn >= 0.6, mace-torch pins 0.4.4): `scripts/dev.sh clients`."""

from __future__ import annotations

import zipfile

import pytest
import torch

nequip = pytest.importorskip("nequip")
ase_build = pytest.importorskip("ase.build")

from e3nn import o3  # noqa: E402
from nequip.data import AtomicDataDict, from_ase  # noqa: E402
from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform  # noqa: E402
from nequip.model import NequIPGNNModel  # noqa: E402
from nequip.nn import GraphModuleMixin  # noqa: E402
from nequip.utils.aot import aot_export_model  # noqa: E402
from nequip.utils.global_state import set_global_state  # noqa: E402

import eqnorm  # noqa: E402
from eqnorm import _ops  # noqa: E402
from eqnorm.e3nn import IrrepsGroupNorm  # noqa: E402

pytestmark = pytest.mark.skipif(eqnorm.kernel_backend("cpu") == "torch", reason="the compiled extension is not built")

TYPES = ["Cu", "Au"]
INPUTS = [
    AtomicDataDict.POSITIONS_KEY,
    AtomicDataDict.EDGE_INDEX_KEY,
    AtomicDataDict.ATOM_TYPE_KEY,
    AtomicDataDict.EDGE_CELL_SHIFT_KEY,
    AtomicDataDict.CELL_KEY,
    AtomicDataDict.BATCH_KEY,
    AtomicDataDict.NUM_NODES_KEY,
]
OUTPUTS = [AtomicDataDict.TOTAL_ENERGY_KEY, AtomicDataDict.FORCE_KEY]


class GraphNorm(GraphModuleMixin, torch.nn.Module):
    """An eqnorm group norm of the node features, per graph, as a nequip graph module."""

    def __init__(self, irreps_in: dict) -> None:
        super().__init__()
        self._init_irreps(irreps_in=irreps_in)
        self.norm = IrrepsGroupNorm(irreps_in[AtomicDataDict.NODE_FEATURES_KEY], group_by="irrep", over="graph")

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        num_graphs = data[AtomicDataDict.NUM_NODES_KEY].size(0)
        x = data[AtomicDataDict.NODE_FEATURES_KEY]
        data[AtomicDataDict.NODE_FEATURES_KEY] = self.norm(
            x, batch=data[AtomicDataDict.BATCH_KEY], num_graphs=num_graphs
        )
        return data


def make_model() -> torch.nn.Module:
    set_global_state()
    model = NequIPGNNModel(
        seed=0,
        model_dtype="float64",
        r_max=4.0,
        type_names=TYPES,
        num_layers=3,
        l_max=1,
        num_features=4,
        radial_mlp_width=8,
        avg_num_neighbors=20.0,
        per_type_energy_shifts=dict.fromkeys(TYPES, 0.0),
        per_type_energy_scales=dict.fromkeys(TYPES, 1.0),
    )
    net = model.model.func  # GraphModel -> ForceStressOutput -> SequentialGraphNetwork
    convolutions = [name for name in net._modules if name.endswith("_convnet")]
    for name in convolutions[:-1]:  # the last one's output is the scalars the readout takes
        net.insert(f"{name}_norm", GraphNorm(net._modules[name].irreps_out), after=name)
    return model


def frames(*sizes: int, seed: int = 0) -> AtomicDataDict.Type:
    out = []
    for i, size in enumerate(sizes):
        atoms = ase_build.bulk("Cu", "fcc", a=3.6, cubic=True).repeat((size, 1, 1))
        atoms.symbols[[1, 2]] = "Au"
        atoms.rattle(0.1, seed=seed + i)
        data = ChemicalSpeciesToAtomTypeMapper(
            model_type_names=TYPES, chemical_species_to_atom_type_map={t: t for t in TYPES}
        )(from_ase(atoms))
        out.append(NeighborListTransform(r_max=4.0)(data))
    return AtomicDataDict.batched_from_list(out)


def energy_and_forces(model: torch.nn.Module, data: AtomicDataDict.Type) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(dict(data))
    return out[AtomicDataDict.TOTAL_ENERGY_KEY].detach(), out[AtomicDataDict.FORCE_KEY].detach()


def test_forces_match_the_pure_pytorch_kernels_and_graphs_stay_apart(monkeypatch):
    model, data = make_model(), frames(2, 1, 1)
    energy, forces = energy_and_forces(model, data)
    with monkeypatch.context() as patch:
        patch.setattr(_ops, "_COMPILED", {})
        pure = energy_and_forces(model, data)
    torch.testing.assert_close((energy, forces), pure, atol=1e-10, rtol=1e-10)
    alone = energy_and_forces(model, frames(1, seed=1))  # the second frame by itself
    torch.testing.assert_close(energy[1], alone[0][0], atol=1e-10, rtol=1e-10)
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), data[AtomicDataDict.NUM_NODES_KEY].cumsum(0)])
    torch.testing.assert_close(forces[ptr[1] : ptr[2]], alone[1], atol=1e-10, rtol=1e-10)
    assert forces.abs().max() > 1e-3


def test_forces_are_equivariant():
    model, data = make_model(), frames(2)
    rotation = o3.rand_matrix(dtype=torch.float64)
    turned = dict(data)
    turned[AtomicDataDict.POSITIONS_KEY] = data[AtomicDataDict.POSITIONS_KEY] @ rotation.T
    turned[AtomicDataDict.CELL_KEY] = data[AtomicDataDict.CELL_KEY] @ rotation.T
    energy, forces = energy_and_forces(model, data)
    energy_turned, forces_turned = energy_and_forces(model, turned)
    torch.testing.assert_close(energy_turned, energy, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(forces_turned, forces @ rotation.T, atol=1e-10, rtol=1e-10)


def test_aotinductor_export_calls_the_op_and_matches_eager(tmp_path):
    model, data = make_model(), frames(2, 1)
    path = str(tmp_path / "model.nequip.pt2")
    dims = {
        "graph": torch.export.Dim("graph", min=1, max=64),
        "node": torch.export.Dim("node", min=2, max=4096),
        "edge": torch.export.Dim("edge", min=2, max=1 << 20),
    }
    # nequip's own export: make_fx at two batch shapes (it refuses graphs that differ), export, AOTInductor, and its
    # check of the package against the eager model
    aot_export_model(model, "cpu", INPUTS, OUTPUTS, dict(data), dims, path)
    with zipfile.ZipFile(path) as package:
        wrapper = next(package.read(n).decode() for n in package.namelist() if n.endswith("wrapper.cpp"))
    assert "eqnorm.field_norm" in wrapper and "eqnorm.field_norm_backward" in wrapper  # forces through the C++ op
    loaded = torch._inductor.aoti_load_package(path)
    other = frames(1, 3, 2, seed=5)  # another number of frames, nodes and edges
    energy, forces = loaded([other[key] for key in INPUTS])
    want = energy_and_forces(model, other)
    torch.testing.assert_close((energy, forces), want, atol=1e-10, rtol=1e-10)
