"""Peak memory and time of the plugin's passes over a disk-backed data set
(metatrain's ``DiskDataset`` zip), against native metatrain on the same file.

The zip: ``--n`` structures (the 2990 GFN2-xTB frames of
``bench/data/pretrain_xtb.xyz``, repeated), energies and forces stored under the
field ``energy_new``, written with metatrain's ``DiskDatasetWriter``. The runs:
the shared xTB-pretrained PET fine-tuned on it to the target ``mtt::energy_new``
(``full``), once with ``name: pet`` (native) and once with ``name:
pet_transfer``, 1 process, ``OMP_NUM_THREADS=1``. Both stop before their first
epoch, because what differs is before it: each run is timed from its ``Calling
trainer`` log line to its ``Starting training`` line (native: composition fit and
data loaders; the plugin: the same plus its input checks and the alignment
pass), and its peak RSS (``VmHWM``) is read from ``/proc`` when ``Starting
training`` arrives; then the process is stopped.

    python bench/disk_dataset.py --out /tmp/disk --n 10000
    python bench/disk_dataset.py --out /tmp/disk --n 10000 --plugin-src SRC
        (SRC: another checkout's ``src/``, put first on PYTHONPATH: e.g. main's)
"""

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml


ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT.parent / "shared" / "checkpoints" / "pet_xtb.ckpt"
FRAMES = ROOT / "bench" / "data" / "pretrain_xtb.xyz"
FIELD = "energy_new"  # the labels' name inside the zip


def build_zip(path: Path, n: int) -> None:
    """``n`` structures with energies and forces, as a DiskDataset zip."""
    from metatrain.utils.data import get_dataset
    from metatrain.utils.data.writers import DiskDatasetWriter
    from metatrain.utils.omegaconf import expand_dataset_config
    from omegaconf import OmegaConf

    options = expand_dataset_config(
        OmegaConf.create(
            {
                "systems": {"read_from": str(FRAMES), "length_unit": "angstrom"},
                "targets": {
                    "mtt::energy_new": {
                        "key": "energy_xtb",
                        "unit": "eV",
                        "forces": {"key": "forces_xtb"},
                        "stress": False,
                    }
                },
            }
        )
    )[0]
    dataset, _, _ = get_dataset(options)
    partial = path.with_suffix(".partial")
    writer = DiskDatasetWriter(partial)
    for index in range(n):
        sample = dataset[index % len(dataset)]._asdict()
        labels = _disk_gradient_samples(sample["mtt::energy_new"])
        writer.write([sample["system"]], {FIELD: labels})
    writer.finish()
    partial.rename(path)


def _disk_gradient_samples(tensor_map):
    """The ASE reader's force block has samples (sample, system, atom); a
    DiskDataset stores (sample, atom), as ``mtt eval`` writes them."""
    import metatensor.torch as mts

    block = tensor_map.block()
    new = mts.TensorBlock(
        block.values, block.samples, block.components, block.properties
    )
    gradient = block.gradient("positions")
    names = gradient.samples.names
    keep = [names.index("sample"), names.index("atom")]
    new.add_gradient(
        "positions",
        mts.TensorBlock(
            gradient.values,
            mts.Labels(["sample", "atom"], gradient.samples.values[:, keep]),
            gradient.components,
            gradient.properties,
        ),
    )
    return mts.TensorMap(tensor_map.keys, [new])


def options(architecture: str, checkpoint: Path) -> dict:
    return {
        "seed": 0,
        "architecture": {
            "name": architecture,
            "training": {
                "batch_size": 16,
                "num_epochs": 1,
                "num_workers": 0,
                "finetune": {"method": "full", "read_from": str(checkpoint)},
            },
        },
        "training_set": {
            "systems": {"read_from": "../data.zip", "length_unit": "angstrom"},
            "targets": {
                "mtt::energy_new": {
                    "quantity": "energy",
                    "key": FIELD,
                    "unit": "eV",
                    "forces": True,
                    "stress": False,
                }
            },
        },
        "validation_set": 0.05,
        "test_set": 0.0,
    }


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def run(workdir: Path, config: dict, plugin_src) -> dict:
    workdir.mkdir(parents=True, exist_ok=False)
    (workdir / "options.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    if plugin_src:
        env["PYTHONPATH"] = str(plugin_src)
    mtt = str(Path(sys.executable).parent / "mtt")
    begin = time.perf_counter()
    process = subprocess.Popen(
        [mtt, "train", "options.yaml"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    marks, tail = {}, []
    for line in process.stdout:
        tail = (tail + [line])[-40:]
        if "Calling trainer" in line:
            marks["trainer"] = time.perf_counter()
        if "Starting training" in line:
            marks["training"] = time.perf_counter()
            marks["rss"] = peak_rss_mb(process.pid)
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    if "training" not in marks:
        raise RuntimeError(f"no 'Starting training' in {workdir}: {''.join(tail)}")
    return {
        "before_first_epoch_s": marks["training"] - marks["trainer"],
        "to_first_epoch_s": marks["training"] - begin,
        "peak_rss_mb": marks["rss"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--plugin-src", type=Path, default=None)
    parser.add_argument("--only", choices=["pet", "pet_transfer"], default=None)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "data.zip"
    if not data.exists():
        begin = time.perf_counter()
        build_zip(data, args.n)
        print(
            f"wrote {data} ({args.n} structures) in {time.perf_counter() - begin:.0f} s"
        )
    rows = [args.only] if args.only else ["pet", "pet_transfer"]
    for architecture in rows:
        tag = architecture + (
            "-" + args.plugin_src.parent.name if args.plugin_src else ""
        )
        folder = args.out / f"{tag}-{time.strftime('%H%M%S')}"
        result = run(folder, options(architecture, args.checkpoint), args.plugin_src)
        print(
            f"| {tag} | {result['before_first_epoch_s']:.0f} | "
            f"{result['to_first_epoch_s']:.0f} | {result['peak_rss_mb']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
