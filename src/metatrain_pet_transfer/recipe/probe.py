"""Probe start: a new property head begins as a linear probe of the pretrained
features, the analogue of the energy alignment.

A new head starts random, and at the learning rate that suits an aligned energy
head it barely moves: a dipole model trained 80 epochs at 1e-4 from random heads
ended worse than scratch (the issue that started this). Here, before the first
step:

1. (:func:`start_hidden_layers`, before PET's loop) the new head's hidden layers
   start as copies of the pretrained energy head's: features the pretrained model
   already computes, rather than random ones;
2. (:class:`ProbeStart`, once PET has fitted its composition model and scaler and
   built the optimizer) the head's last layer is fitted in closed form: ridge
   regression of the labels on the last-layer features, through the target's
   readout (:mod:`.readouts`: a sum, a mean, or the charges' dipole), with the
   penalty chosen on the validation set among :data:`PENALTIES`.

Epoch 0 is then the linear probe, and training refines it; the probe's validation
errors are logged next to those of predicting the training mean. The fit works in
the labels' own unit: the model's prediction at evaluation is ``y0 + s * readout(F
w + b)``, with ``y0`` what the model gives with the last layer at zero (its
composition baseline), ``s`` the scaler's scale and ``F`` the features, so ``(y -
y0) / s`` is linear in ``(w, b)``.
"""

import logging
from typing import Dict, List, Optional

import numpy as np
import torch
from metatensor.torch import TensorBlock, TensorMap
from metatomic.torch import ModelOutput

from ..parallel import on_rank_zero
from .datasets import evaluation_batches, trained_targets
from .readouts import atom_positions
from .strategies.loop_events import Strategy


logger = logging.getLogger(__name__)

#: ridge penalties tried, relative to the mean squared standardized feature
PENALTIES = [1e-8, 1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0]


def pretrained_targets(read_from: str) -> List[str]:
    """The targets of the checkpoint ``training.finetune.read_from`` names."""
    from ..checkpoints import load_checkpoint_safely

    checkpoint = load_checkpoint_safely(read_from)
    return list(checkpoint["model_data"]["dataset_info"].targets)


def probe_targets(
    model, hypers: dict, train_datasets, pretrained: List[str]
) -> List[str]:
    """The targets the probe starts: new heads (not among the checkpoint's
    ``pretrained`` targets) of non-energy targets without gradients, per structure
    (per atom too with ``probe_start: true``), not inherited from a pretrained
    head."""
    setting = hypers.get("probe_start")
    if setting is False:
        return []
    inherited = (hypers.get("finetune") or {}).get("inherit_heads") or {}
    added = [name for name in model.dataset_info.targets if name not in pretrained]
    chosen = []
    for name, target in trained_targets(model, train_datasets).items():
        if name not in added or name in inherited:
            continue
        if target.quantity == "energy" or target.gradients:
            continue
        if target.per_atom and setting is not True:
            continue
        if len(target.layout.keys) != 1:
            continue  # one block: one last layer per readout layer
        chosen.append(name)
    return chosen


def _pretrained_energy_head(model, pretrained_names: List[str]) -> Optional[str]:
    heads = model.backend.node_heads
    targets = model.dataset_info.targets
    pretrained = [
        name
        for name in pretrained_names
        if name in heads and name in targets and targets[name].quantity == "energy"
    ]
    if "energy" in pretrained:
        return "energy"
    return pretrained[0] if pretrained else None


def start_hidden_layers(
    model, targets: List[str], pretrained: List[str]
) -> Optional[str]:
    """Copy the pretrained energy head's hidden layers into the heads of
    ``targets``; returns the head copied (``None``: none, heads stay random)."""
    source = _pretrained_energy_head(model, pretrained)
    if source is None:
        return None
    backend = model.backend
    with torch.no_grad():
        for target in targets:
            for heads in (backend.node_heads, backend.edge_heads):
                heads[target].load_state_dict(heads[source].state_dict())
    return source


def _feature_output(name: str) -> str:
    base = name[len("mtt::") :] if name.startswith("mtt::") else name
    return f"mtt::aux::{base}_last_layer_features"


def _last_layers(model, name: str):
    backend = model.backend
    layers = []
    for node, edge in zip(
        backend.node_last_layers[name], backend.edge_last_layers[name], strict=True
    ):
        (node_layer,) = list(node.values())
        (edge_layer,) = list(edge.values())
        layers += [node_layer, edge_layer]  # the features' order: node, edge, ...
    return layers


class _Design:
    """Rows of the ridge problem of one target and one split."""

    def __init__(self):
        self.rows: List[np.ndarray] = []
        self.labels: List[np.ndarray] = []  # in the labels' unit
        self.baseline: List[np.ndarray] = []  # y0
        self.scale: Optional[np.ndarray] = None

    def arrays(self):
        return (
            np.concatenate(self.rows),
            np.concatenate(self.labels),
            np.concatenate(self.baseline),
        )


def _collect(model, name, info, readout, datasets, batch_size, dtype) -> _Design:
    design = _Design()
    kind = "atom" if info.per_atom else "system"
    requested = {
        name: ModelOutput(unit=info.unit, sample_kind=kind),
        _feature_output(name): ModelOutput(sample_kind="atom"),
    }
    for systems, targets, _ in evaluation_batches(
        model, datasets, batch_size, dtype, [name]
    ):
        with torch.no_grad():
            results = model(systems, requested)
        features = results[_feature_output(name)].block()
        prediction = results[name]
        structure = features.samples.column("system").cpu().numpy()
        values = features.values.detach().cpu().double().numpy()
        n_structures = len(systems)
        labels = targets[name].block().values.detach().cpu().double().numpy()
        baseline = prediction.block().values.detach().cpu().double().numpy()
        if design.scale is None:
            design.scale = _scale(model, name, prediction, systems)
            if readout == "charges" and not info.per_atom:
                design.scale = design.scale.reshape(3, -1)[0]  # per property
        if info.per_atom:
            rows = np.hstack([values, np.ones((len(values), 1))])
            design.rows.append(rows)
            design.labels.append(labels.reshape(len(labels), -1))
            design.baseline.append(baseline.reshape(len(baseline), -1))
            continue
        counts = np.bincount(structure, minlength=n_structures).astype(float)
        sums = np.zeros((n_structures, values.shape[1]))
        np.add.at(sums, structure, values)
        if readout == "charges":
            samples = features.samples
            positions = atom_positions(
                systems, samples.column("system"), samples.column("atom")
            )
            positions = positions.detach().cpu().double().numpy()
            centers = np.zeros((n_structures, 3))
            np.add.at(centers, structure, positions)
            relative = positions - (centers / counts[:, None])[structure]
            # mu_alpha = sum_i relative_i,alpha * (F_i . w): 3 rows per structure
            rows = np.zeros((n_structures, 3, values.shape[1]))
            np.add.at(rows, structure, relative[:, :, None] * values[:, None, :])
            design.rows.append(rows.reshape(n_structures * 3, -1))
            # [n, 3, P] -> rows (structure, component), columns P
            design.labels.append(labels.reshape(n_structures * 3, -1))
            design.baseline.append(baseline.reshape(n_structures * 3, -1))
            continue
        if readout == "mean":
            rows = np.hstack([sums / counts[:, None], np.ones((n_structures, 1))])
        else:
            rows = np.hstack([sums, counts[:, None]])
        design.rows.append(rows)
        design.labels.append(labels.reshape(n_structures, -1))
        design.baseline.append(baseline.reshape(n_structures, -1))
    return design


def _scale(model, name: str, prediction: TensorMap, systems) -> np.ndarray:
    """The scaler's factor of each output column of ``name`` (PET multiplies its
    raw predictions by it at evaluation), from metatrain's own scaler."""
    ones = TensorMap(
        prediction.keys,
        [
            TensorBlock(
                values=torch.ones_like(block.values),
                samples=block.samples,
                components=block.components,
                properties=block.properties,
            )
            for block in prediction.blocks()
        ],
    )
    scaled = model.scaler.apply_scales(systems, {name: ones})[name]
    values = scaled.block().values.detach().cpu().double().numpy()
    values = values.reshape(len(values), -1)
    if not np.allclose(values, values[:1], rtol=1e-6):
        raise ValueError(f"'{name}' has a scale that varies between samples")
    return values[0]


def _fit(rows, labels, baseline, scale, intercept: bool, penalty: float):
    target = (labels - baseline) / scale
    norms = np.sqrt((rows**2).mean(axis=0))
    norms[norms == 0] = 1.0
    standard = rows / norms
    gram = standard.T @ standard
    regular = np.full(len(gram), penalty * len(standard))
    if intercept:
        regular[-1] = 1e-12 * len(standard)
    solution = np.linalg.solve(gram + np.diag(regular), standard.T @ target)
    return solution / norms[:, None]


def fit_probe(model, name, info, readout, train, val, batch_size, dtype) -> dict:
    """The probe of one target: its last-layer weights and what it gives."""
    train_design = _collect(model, name, info, readout, train, batch_size, dtype)
    val_design = _collect(model, name, info, readout, val, batch_size, dtype)
    rows, labels, baseline = train_design.arrays()
    scale = train_design.scale
    intercept = readout != "charges" or info.per_atom
    if val_design.rows:
        val_rows, val_labels, val_baseline = val_design.arrays()
    else:  # no validation structure: choose on the training set
        val_rows, val_labels, val_baseline = rows, labels, baseline
    best = None
    for penalty in PENALTIES:
        weights = _fit(rows, labels, baseline, scale, intercept, penalty)
        predicted = val_baseline + scale * (val_rows @ weights)
        rmse = float(np.sqrt(((predicted - val_labels) ** 2).mean()))
        if best is None or rmse < best["rmse"]:
            mae = float(np.abs(predicted - val_labels).mean())
            best = {"penalty": penalty, "weights": weights, "rmse": rmse, "mae": mae}
    mean = labels.mean(axis=0)
    best["mean_mae"] = float(np.abs(val_labels - mean).mean())
    per_structure = readout == "charges" and not info.per_atom
    best["n_train"] = len(rows) // 3 if per_structure else len(rows)
    return best


def _set_last_layers(model, name: str, weights: np.ndarray, readout: str, info):
    # weights: [features (+ intercept), columns]
    layers = _last_layers(model, name)
    width = layers[0].weight.shape[1]
    features = weights[: width * len(layers)]
    intercept = weights[width * len(layers) :]
    with torch.no_grad():
        for index, layer in enumerate(layers):
            block = features[index * width : (index + 1) * width].T  # [columns, d]
            if readout == "charges" and not info.per_atom:
                # the three channels of each property carry its charge weights
                block = np.concatenate([block] * 3)
            layer.weight.copy_(torch.as_tensor(block, dtype=layer.weight.dtype))
            layer.bias.zero_()
        if len(intercept):
            first = layers[0]
            first.bias.copy_(torch.as_tensor(intercept[0], dtype=first.bias.dtype))


class ProbeStart(Strategy):
    """Fits the last layers of new property heads when PET's optimizer exists (its
    composition model and scaler are fitted by then), on a fresh start."""

    def __init__(self, model, targets, readouts, train, val, batch_size, dtype):
        self.model = model
        self.targets = targets
        self.readouts = readouts
        self.train, self.val = train, val
        self.batch_size = batch_size
        self.dtype = dtype

    def starts(self, optimizer, start_epoch):
        if start_epoch != 0 or not self.targets:
            return
        fitted = on_rank_zero(self._fit_all)
        for name, (weights, readout) in fitted.items():
            info = self.model.dataset_info.targets[name]
            _set_last_layers(self.model, name, weights, readout, info)

    def _fit_all(self) -> Dict[str, tuple]:
        model = self.model
        was_training = model.training
        model.eval()
        fitted = {}
        try:
            for name in self.targets:
                info = model.dataset_info.targets[name]
                readout = self.readouts.get(name, "sum")
                for layer in _last_layers(model, name):
                    with torch.no_grad():
                        layer.weight.zero_()
                        layer.bias.zero_()
                result = fit_probe(
                    model,
                    name,
                    info,
                    readout,
                    self.train,
                    self.val,
                    self.batch_size,
                    self.dtype,
                )
                fitted[name] = (result["weights"], readout)
                unit = f" {info.unit}" if info.unit else ""
                logger.info(
                    f"Probe start: '{name}' last layer fitted on the pretrained "
                    f"features ({result['n_train']} training samples, ridge penalty "
                    f"{result['penalty']:g} chosen on validation); validation MAE "
                    f"{result['mae']:.4g}{unit}, RMSE {result['rmse']:.4g}{unit} "
                    f"(predicting the training mean: MAE {result['mean_mae']:.4g}"
                    f"{unit}; training.probe_start)"
                )
        finally:
            model.train(was_training)
        return fitted
