"""QM9 with a small e3nn network: per-graph IrrepsGroupNorm against e3nn's BatchNorm and no normalization.

Molecules from the ``qm9pack`` package (QM9 with 3D coordinates, bundled in its wheel); target: the HOMO-LUMO gap
in eV, an invariant. The network: atom types -> 3 equivariant convolutions over the bonds (tensor products of
neighbour features with spherical harmonics (l <= 1) of the bond direction, radial weights from an MLP, atoms
closer than 2 A) with features
``24x0e + 8x1o`` normalized after each convolution, then a gated nonlinearity; the mean of the scalar channels over
the atoms is the prediction. Normalizations:

* ``group``: eqnorm's ``IrrepsGroupNorm(over="graph")`` with 4 groups: statistics per molecule, so a molecule's
  prediction does not depend on the rest of its batch;
* ``batch``: ``e3nn.nn.BatchNorm``, statistics over all atoms of the batch (running averages in eval mode);
* ``none``.

Each is trained at a small (4) and a large (32) batch size for the same number of epochs (AdamW, learning rate scaled
with the square root of the batch size). The test MAE is reported, and every trained model is checked for invariance:
predictions on randomly rotated and reflected copies of the test molecules must agree.

    python examples/qm9_e3nn.py            # full run (about 3.5 minutes on 2 cores)
    python examples/qm9_e3nn.py --quick    # 700 molecules

``qm9pack`` is an optional extra (``pip install eqnorm[examples]``).
"""

from __future__ import annotations

import argparse
import ast
import csv
import importlib.util
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from _cli import finish, parse_args, progress, save_figure, write_csv
from _geometry import random_orthogonal
from e3nn import o3
from e3nn.math import soft_one_hot_linspace
from e3nn.nn import BatchNorm, FullyConnectedNet, Gate

from eqnorm.e3nn import IrrepsGroupNorm

ELEMENTS = {"H": 0, "C": 1, "N": 2, "O": 3, "F": 4}
HARTREE_EV = 27.211386
CUTOFF = 2.0
HIDDEN = o3.Irreps("24x0e + 8x1o")  # 16 scalars, 8 gates, 8 vectors
NORMS = ("group", "batch", "none")


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--molecules", type=int, default=3000, help="training molecules (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 32])


def qm9_csv() -> Path:
    """The first of qm9pack's CSV files, found without importing qm9pack (its __init__ needs pkg_resources, which
    recent setuptools no longer ship)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("qm9_e3nn.py needs the qm9pack package: pip install 'eqnorm[examples]'")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "qm9_part1.csv"


@dataclass
class Molecule:
    species: torch.Tensor  # (atoms,) element index
    pos: torch.Tensor  # (atoms, 3) in Angstrom
    edges: torch.Tensor  # (2, edges) source, destination within the molecule
    gap: float  # eV


def load(count: int, seed: int) -> list[Molecule]:
    """``count`` molecules drawn at random from the first part of QM9 (43,610 molecules).

    A few rows hold coordinates written as ``0.`` or ``1.`` where QM9's files have tiny numbers in Mathematica
    notation (``1.2*^-6``); they are not valid JSON, and are skipped rather than read with wrong coordinates.
    """
    with qm9_csv().open(newline="") as f:
        table = list(csv.DictReader(f))
    order = torch.randperm(len(table), generator=torch.Generator().manual_seed(seed)).tolist()
    molecules: list[Molecule] = []
    for i in order:
        if len(molecules) == count:
            break
        row = table[i]
        try:
            pos = torch.tensor(json.loads(row["XYZ_Ang"]), dtype=torch.float32)
        except json.JSONDecodeError:
            continue
        species = torch.tensor([ELEMENTS[e] for e in ast.literal_eval(row["Elements"])])
        dist = torch.cdist(pos, pos)
        src, dst = torch.nonzero((dist < CUTOFF) & (dist > 0), as_tuple=True)
        molecules.append(Molecule(species, pos, torch.stack([src, dst]), float(row["HOMO_LUMO_gap_au"]) * HARTREE_EV))
    return molecules


@dataclass
class Batch:
    species: torch.Tensor
    pos: torch.Tensor
    edges: torch.Tensor
    ptr: torch.Tensor  # molecule n owns atoms ptr[n]:ptr[n+1]
    gap: torch.Tensor


def collate(molecules: list[Molecule], rotations: torch.Tensor | None = None) -> Batch:
    """Concatenate molecules into one graph; ``rotations`` (n, 3, 3) moves each molecule's atoms first."""
    sizes = torch.tensor([len(m.species) for m in molecules])
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
    pos = [m.pos if rotations is None else m.pos @ rotations[i].T for i, m in enumerate(molecules)]
    return Batch(
        torch.cat([m.species for m in molecules]),
        torch.cat(pos),
        torch.cat([m.edges + ptr[i] for i, m in enumerate(molecules)], 1),
        ptr,
        torch.tensor([m.gap for m in molecules]),
    )


class Convolution(torch.nn.Module):
    """``h_i' = sum_j TP(h_j, Y(r_ij); w(|r_ij|)) / sqrt(neighbours)``, radial weights from a small MLP."""

    def __init__(self, irreps_in: o3.Irreps, irreps_out: o3.Irreps, sh: o3.Irreps) -> None:
        super().__init__()
        self.sh = sh
        self.tp = o3.FullyConnectedTensorProduct(irreps_in, sh, irreps_out, shared_weights=False)
        self.radial = FullyConnectedNet([8, 32, self.tp.weight_numel], torch.nn.functional.silu)
        self.self_connection = o3.Linear(irreps_in, irreps_out)

    def forward(self, h: torch.Tensor, pos: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        src, dst = edges
        vec = pos[src] - pos[dst]
        length = vec.norm(dim=1)
        basis = soft_one_hot_linspace(length, 0.0, CUTOFF, 8, basis="smooth_finite", cutoff=True) * math.sqrt(8)
        y = o3.spherical_harmonics(self.sh, vec, normalize=True, normalization="component")
        messages = self.tp(h[src], y, self.radial(basis))
        out = torch.zeros(h.shape[0], messages.shape[1], dtype=h.dtype).index_add_(0, dst, messages)
        return self.self_connection(h) + out / math.sqrt(3.0)  # about 3 bonded neighbours within 2 A


class GapModel(torch.nn.Module):
    def __init__(self, norm: str, layers: int = 3) -> None:
        super().__init__()
        sh = o3.Irreps.spherical_harmonics(1)
        self.embed = torch.nn.Embedding(len(ELEMENTS), 16)
        irreps = o3.Irreps("16x0e")
        self.convs, self.norms, self.gates = torch.nn.ModuleList(), torch.nn.ModuleList(), torch.nn.ModuleList()
        for _ in range(layers):
            self.convs.append(Convolution(irreps, HIDDEN, sh))
            if norm == "group":
                self.norms.append(IrrepsGroupNorm(HIDDEN, 4, over="graph"))
            elif norm == "batch":
                self.norms.append(BatchNorm(HIDDEN))
            else:
                self.norms.append(torch.nn.Identity())
            self.gates.append(Gate("16x0e", [F.silu], "8x0e", [torch.sigmoid], "8x1o"))
            irreps = self.gates[-1].irreps_out
        self.head = o3.Linear(irreps, "1x0e")
        self.norm = norm

    def forward(self, batch: Batch) -> torch.Tensor:
        h = self.embed(batch.species)
        for conv, norm, gate in zip(self.convs, self.norms, self.gates, strict=True):
            h = conv(h, batch.pos, batch.edges)
            h = norm(h, ptr=batch.ptr) if self.norm == "group" else norm(h)
            h = gate(h)
        per_atom = self.head(h).squeeze(1)
        counts = batch.ptr.diff()
        graph = torch.repeat_interleave(torch.arange(len(counts)), counts)
        return torch.zeros(len(counts)).index_add_(0, graph, per_atom) / counts


@torch.no_grad()
def evaluate(model: GapModel, molecules: list[Molecule], mean: float, std: float) -> tuple[float, float]:
    """Test MAE in eV, and the largest change of a prediction (eV) under random rotations and reflections."""
    model.eval()
    errors, changes = [], []
    gen = torch.Generator().manual_seed(7)
    for start in range(0, len(molecules), 64):
        chunk = molecules[start : start + 64]
        batch = collate(chunk)
        pred = model(batch) * std + mean
        moved = model(collate(chunk, random_orthogonal(len(chunk), gen))) * std + mean
        errors.append((pred - batch.gap).abs())
        changes.append((moved - pred).abs())
    return float(torch.cat(errors).mean()), float(torch.cat(changes).max())


def main() -> None:
    args = parse_args("qm9_e3nn", __doc__, options)
    count = 500 if args.quick else args.molecules
    epochs = 1 if args.quick else args.epochs
    test_count = 200 if args.quick else 1000
    start = time.perf_counter()
    molecules = load(count + test_count, seed=0)
    train_set, test_set = molecules[test_count:], molecules[:test_count]
    gaps = torch.tensor([m.gap for m in train_set])
    mean, std = float(gaps.mean()), float(gaps.std())
    print(f"loaded {len(molecules)} molecules in {time.perf_counter() - start:.1f} s; gap {mean:.2f} ± {std:.2f} eV")

    rows = []
    curves: dict[str, list[float]] = {}
    for batch_size in args.batch_sizes:
        for norm in NORMS:
            torch.manual_seed(0)
            model = GapModel(norm)
            opt = torch.optim.AdamW(model.parameters(), lr=5e-3 * math.sqrt(batch_size / 32))
            gen = torch.Generator().manual_seed(0)
            steps = len(train_set) // batch_size
            t0 = time.perf_counter()
            curve = []
            bar = progress(range(epochs * steps), desc=f"{norm} norm, batch {batch_size}", total=epochs * steps)
            for _ in range(epochs):
                model.train()
                order = torch.randperm(len(train_set), generator=gen).tolist()
                for step in range(steps):
                    next(bar, None)
                    batch = collate([train_set[i] for i in order[step * batch_size : (step + 1) * batch_size]])
                    loss = F.mse_loss(model(batch), (batch.gap - mean) / std)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                mae, change = evaluate(model, test_set, mean, std)
                curve.append(mae)
            curves[f"{norm} norm, batch {batch_size}"] = curve
            rows.append(
                {
                    "norm": norm,
                    "batch_size": batch_size,
                    "epochs": epochs,
                    "test_mae_ev": mae,
                    "max_rotation_change_ev": change,
                    "seconds": time.perf_counter() - t0,
                }
            )
            print(f"{norm} norm, batch {batch_size}: MAE {mae:.3f} eV, O(3) change {change:.1e} eV", flush=True)
    write_csv(args.out / "qm9_gap.csv", rows)

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve, marker="o", ls="-" if "batch 4" in label else "--", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test MAE of the HOMO-LUMO gap (eV)")
    ax.set_title(f"QM9, {len(train_set)} training molecules")
    ax.legend(fontsize=8)
    save_figure(fig, args.out / "qm9_gap.png")

    header = " | ".join(f"batch {b}: MAE (eV)" for b in args.batch_sizes)
    print(f"\n| norm | {header} | max change under O(3) (eV) |")
    print("|---|" + "---:|" * (len(args.batch_sizes) + 1))
    for norm in NORMS:
        mine = [r for r in rows if r["norm"] == norm]
        cells = [f"{r['test_mae_ev']:.3f}" for r in mine]
        print(f"| {norm} | " + " | ".join(cells) + f" | {max(r['max_rotation_change_ev'] for r in mine):.1e} |")
    finish(args)


if __name__ == "__main__":
    main()
