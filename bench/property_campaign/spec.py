"""The property campaign's committed spec, its rows, and its settings per property.

Part of ``bench/properties.py``. A spec (``bench/campaigns/properties.yaml``) holds
``data``, ``checkpoint``, ``splits`` (``from``: another campaign's ``splits.json``,
``data``: the file those splits were made on), ``batch_size``, ``epochs``,
``lr_search``, ``rotation`` (``count`` random rotations per test molecule, ``seed``),
``properties`` and ``runs`` (blocks ``{rows, n, seeds}``, every block for every
property). The energy campaign's reader helpers check the shared keys, so the same
mistakes get the same messages (file and key named, before anything runs).

Each property gets the energy campaign's ``Settings`` (``settings_for``) with its own
row table (``row_table``: the rows' ``architecture:`` sections are the energy
campaign's, only the target differs), its own run folders (``<runs>/<property>``)
and the validation MAE of the property as what the learning-rate search minimises.
"""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from transfer_campaign.settings import (
    Row,
    Settings,
    finetuned,
    plugin_defaults,
    scratch,
)
from transfer_campaign.spec import TOP_KEYS as ENERGY_KEYS
from transfer_campaign.spec import (
    SpecError,
    _keys,
    _number,
    _path,
    load_spec,
    settings_from,
)

from .targets import PROPERTIES, Property


def row_table(prop: Property) -> Dict[str, Row]:
    """The rows of one property, in table order.

    - ``mean``: no training, the training set's mean label (charges: also the
      per-element mean, as extra information);
    - ``scratch``: native PET with the checkpoint's hypers, random weights, the
      scratch epoch budget, learning rate searched;
    - ``native-full``, ``native-heads``: metatrain's fine-tuning (heads: PET's head
      and last-layer modules train), learning rate searched;
    - ``plugin-default``: ``pet_transfer`` with only ``read_from`` (whatever the
      installed plugin's defaults are, no learning rate given);
    - ``plugin-probe``: the same with ``num_epochs: 0``: the exported start.
    """
    target = prop.target
    return {
        "mean": Row(None, target=target, lr="default"),
        "scratch": Row(scratch, target=target, lr="search", budget="scratch"),
        "native-full": Row(finetuned("pet", "full"), target=target),
        "native-heads": Row(finetuned("pet", "heads"), target=target),
        "plugin-default": Row(plugin_defaults, target=target, lr="default"),
        "plugin-probe": Row(plugin_defaults, target=target, lr="default", budget=0),
    }


ROW_NAMES: List[str] = list(row_table(PROPERTIES["gap"]))
#: what a property's runs are selected on (validation MAE of the property)
SELECTION = ("val_mae",)

#: the energy specs' keys, less ``scratch_lr`` (scratch searches its learning rate
#: here), plus the rotation check and the properties
TOP_KEYS = (ENERGY_KEYS - {"scratch_lr"}) | {"rotation", "properties"}


@dataclass(frozen=True)
class PropertySettings:
    """One property campaign: the shared settings and what is particular to it."""

    base: Settings  # data, checkpoint, out, runs, blocks, search, epochs, batch
    properties: Sequence[str]
    splits_from: Path  # the splits.json whose splits are reused
    splits_data: Path  # the data file those splits were made on
    rotations: int  # random rotations per test molecule (dipole)
    rotation_seed: int

    def settings_for(self, name: str) -> Settings:
        """The energy campaign's settings, specialised to one property."""
        return dataclasses.replace(
            self.base,
            runs=self.base.runs / name,
            row_table=row_table(PROPERTIES[name]),
            selection=SELECTION,
        )


def read_property_spec(
    path: Path, out: Path, runs: Optional[Path] = None, threads: int = 1
) -> PropertySettings:
    """The settings of the property campaign ``path`` writing into ``out``."""
    path = Path(path)
    spec = load_spec(path, TOP_KEYS, TOP_KEYS - {"description"})
    splits = _keys("splits", spec["splits"], {"from", "data"}, {"from", "data"}, path)
    splits_from, splits_data = _path(splits["from"]), _path(splits["data"])
    if not splits_from.is_file():
        raise SpecError(f"{path}: splits.from: {splits_from}: no such file")
    record = json.loads(splits_from.read_text())
    rotation = _keys(
        "rotation", spec["rotation"], {"count", "seed"}, {"count", "seed"}, path
    )
    properties = list(spec["properties"] or [])
    unknown = [name for name in properties if name not in PROPERTIES]
    if unknown or not properties:
        raise SpecError(
            f"{path}: properties: unknown {unknown or 'none given'}; known: "
            f"{', '.join(PROPERTIES)}"
        )
    base = settings_from(
        path,
        spec,
        ROW_NAMES,
        out,
        runs,
        threads,
        scratch_lr=None,  # scratch searches its learning rate here
        # the splits are another campaign's: these only describe them
        test_fraction=record.get("test_fraction", 0.0),
        val_fraction=record.get("val_fraction", 0.0),
        split_seed=record.get("split_seed", 0),
        row_table=row_table(PROPERTIES["gap"]),  # the row names (the same for all)
    )
    missing = [s for s in base.seeds if str(s) not in record.get("train_order", {})]
    if missing:
        raise SpecError(
            f"{path}: seeds {missing} have no training order in {splits_from} "
            f"(it has {sorted(record.get('train_order', {}))})"
        )
    return PropertySettings(
        base=base,
        properties=properties,
        splits_from=splits_from,
        splits_data=splits_data,
        rotations=_number(path, "rotation.count", rotation["count"], int),
        rotation_seed=_number(path, "rotation.seed", rotation["seed"], int),
    )
