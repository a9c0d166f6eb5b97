"""Several processes for one run: torchrun and SLURM on CPU (gloo).

The ``mtt train`` tests launch two CPU ranks under ``torchrun --standalone`` on
the periodic cells (every structure has 8 atoms, so a batch's mean loss is the
mean of its halves' losses) and compare with one process seeing the same global
batches in the same order (``--nproc_per_node=1`` with twice the batch size). The
small tests start a few bare Python processes with the variables torchrun or
``srun`` would set, to check the launcher detection, the process group and the
rank-0 passes without paying for a whole training.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import periodic_transfer, run_mtt, transfer_options, write_yaml


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(script: str, envs, cwd, timeout=120):
    """Start one ``python -c script`` per environment; their exit codes and output."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=cwd,
            env={**without_launchers(), "OMP_NUM_THREADS": "1", **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for env in envs
    ]
    results = []
    for process in processes:
        out, _ = process.communicate(timeout=timeout)
        results.append((process.returncode, out))
    return results


def torchrun_env(rank, world_size, port):
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": str(rank),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def slurm_env(rank, world_size):
    return {
        "SLURM_JOB_ID": "1234",
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank),
        "SLURM_NTASKS": str(world_size),
        "SLURM_JOB_NODELIST": "localhost",
    }


def without_launchers() -> dict:
    """This environment without torchrun's or SLURM's variables (a CI job may run
    inside either)."""
    names = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}
    return {k: v for k, v in os.environ.items() if k not in names and "SLURM" not in k}


# -- the plugin's passes: rank 0 computes, every rank gets the result or the error

RANK_ZERO_SCRIPT = """
import os, time, torch
from metatrain_pet_transfer.parallel import on_rank_zero, start_distributed_run
from metatrain_pet_transfer.checks.run_inputs import RunInputError

hypers = {"distributed_port": int(os.environ["TEST_PORT"]), "distributed_timeout": 30}
begin = time.monotonic()
try:
    run = start_distributed_run(hypers, [torch.device("cpu")])
except Exception:
    print(f"gave up after {time.monotonic() - begin:.1f} s")
    raise
calls = []
def fit():
    calls.append(run.rank)
    return {"shift": torch.tensor([run.rank + 1.5])}
result = on_rank_zero(fit)
print(f"rank {run.rank} of {run.world_size} {run.launcher} {run.backend} "
      f"calls={calls} shift={result['shift'].item()}")
def check():
    raise RunInputError("training_set: the energy is NaN in structure 5")
try:
    on_rank_zero(check)
except RunInputError as error:
    print(f"rank {run.rank} stopped: {error}")
# leave the group together, as PET's trainer does after its last epoch: a rank that
# exits while the other still talks to it aborts in gloo's teardown
torch.distributed.barrier()
torch.distributed.destroy_process_group()
"""


def test_slurm_cpu_allocation_runs_rank_zero_passes_once_for_every_rank(tmp_path):
    """Two tasks with the variables ``srun`` sets in a CPU-only allocation (no GPU,
    and no srun here: the variables are set by hand): gloo, one computation on
    rank 0, its result and its error on both ranks."""
    port = free_port()
    envs = [{**slurm_env(rank, 2), "TEST_PORT": str(port)} for rank in range(2)]
    results = launch(RANK_ZERO_SCRIPT, envs, tmp_path)
    for rank, (code, out) in enumerate(results):
        assert code == 0, out
        assert f"rank {rank} of 2 slurm gloo" in out, out
        # computed once, on rank 0 (shift 1.5), and received by rank 1
        assert f"calls={[0] if rank == 0 else []} shift=1.5" in out, out
        assert (
            f"rank {rank} stopped: training_set: the energy is NaN in structure 5"
            in out
        ), out


def test_a_rank_that_never_comes_stops_the_others_in_bounded_time(tmp_path):
    script = RANK_ZERO_SCRIPT.replace(
        '"distributed_timeout": 30', '"distributed_timeout": 5'
    )
    port = free_port()
    # rank 1 of 2 never starts: rank 0 must give up after the timeout (5 s here)
    [(code, out)] = launch(
        script, [{**torchrun_env(0, 2, port), "TEST_PORT": str(port)}], tmp_path
    )
    assert code != 0, out
    waited = float(out.split("gave up after ")[1].split()[0])
    assert 4 < waited < 20, out


def test_main_process_under_torchrun_is_rank_zero_for_pet_transfer_only(
    tmp_path, monkeypatch
):
    """metatrain's ``is_main_process`` answers ``RANK == 0`` under torchrun for an
    ``mtt train`` whose options select ``pet_transfer`` (one run folder, written by
    rank 0), and metatrain's own answer (every process) for any other run."""
    from metatrain.utils.distributed.logging import is_main_process

    transfer = write_yaml(tmp_path / "transfer.yaml", transfer_options())
    native = {**transfer_options(), "architecture": {"name": "pet"}}
    native = write_yaml(tmp_path / "native.yaml", native)
    mtt = str(Path(sys.executable).parent / "mtt")
    for name, value in torchrun_env(1, 2, 29500).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "argv", [mtt, "train", str(transfer)])
    assert not is_main_process()
    monkeypatch.setenv("RANK", "0")
    assert is_main_process()
    monkeypatch.setenv("RANK", "1")
    # a native run: every process is a main one, as metatrain decides without us
    monkeypatch.setattr(sys, "argv", [mtt, "train", str(native)])
    assert is_main_process()
    # the architecture the command line's overrides select counts
    monkeypatch.setattr(
        sys, "argv", [mtt, "train", str(native), "-r", "architecture.name=pet_transfer"]
    )
    assert not is_main_process()
    for argv in (["python", "-c", "pass"], [mtt, "eval", "model.pt", "eval.yaml"]):
        monkeypatch.setattr(sys, "argv", argv)  # not `mtt train`
        assert is_main_process()
    monkeypatch.setattr(sys, "argv", [mtt, "train", str(transfer)])
    monkeypatch.delenv("RANK")  # not torchrun any more: metatrain's own answer
    assert is_main_process()


# -- mtt train under torchrun

#: a test instrument, not part of the plugin: PET's trainer rotates every structure
#: at random in its collate function, from each process's own torch generator, so
#: two ranks rotate their halves of a batch unlike one process rotating the whole
#: batch. Without the rotations, the runs can be compared weight by weight.
NO_ROTATIONS = """
from metatrain.utils.augmentation import O3Augmenter


def _identity(self, systems, targets, extra_data=None):
    return systems, targets, {} if extra_data is None else extra_data


O3Augmenter.apply_random_augmentations = _identity
"""


def torchrun(nproc: int, *extra):
    return (
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "--tee=3",  # every line prefixed with its rank: [default0]:, [default1]:
        *extra,
        str(Path(sys.executable).parent / "mtt"),
    )


def periodic_options(folder: Path, pretrained_bulk: Path, batch_size: int) -> dict:
    """18 training cells of 8 atoms (so the mean loss of a batch is the mean of its
    halves' losses), 6 validation cells, forces; 2 epochs."""
    options = periodic_transfer(folder, pretrained_bulk, "stress")
    options["training_set"]["targets"]["energy/gfn2"]["stress"] = False
    training = options["architecture"]["training"]
    training.update(batch_size=batch_size, num_epochs=2, checkpoint_interval=100)
    options["validation_set"] = 0.25
    options["test_set"] = 0.0
    return options


def weights(path: Path, entry: str = "model_state_dict") -> dict:
    import metatomic.torch  # noqa: F401  (classes stored in the checkpoint)

    state = torch.load(path, weights_only=False, map_location="cpu")
    return {
        name: value.double()
        for name, value in state[entry].items()
        if torch.is_tensor(value) and value.is_floating_point()
    }


@pytest.fixture(scope="module")
def torchrun_runs(tmp_path_factory, pretrained_bulk_checkpoint):
    """``torchrun --nproc_per_node=2`` with 4 structures per process, and
    ``--nproc_per_node=1`` with 8: the same global batches in the same order
    (DistributedSampler with seed 0 deals batch k's 8 structures out 4 and 4)."""
    instrument = tmp_path_factory.mktemp("instrument")
    (instrument / "sitecustomize.py").write_text(NO_ROTATIONS)
    runs = {}
    for nproc, batch_size in [(2, 4), (1, 8)]:
        folder = tmp_path_factory.mktemp(f"torchrun-{nproc}")
        options = periodic_options(folder, pretrained_bulk_checkpoint, batch_size)
        write_yaml(folder / "options.yaml", options)
        result = run_mtt(
            ["train", "options.yaml"],
            folder,
            launcher=("env", f"PYTHONPATH={instrument}", *torchrun(nproc)),
        )
        runs[nproc] = (folder, result)
    return runs


def test_two_ranks_write_one_run_folder(torchrun_runs):
    folder, result = torchrun_runs[2]
    run_folders = list((folder / "outputs").glob("*/*"))
    assert len(run_folders) == 1, run_folders
    log = (run_folders[0] / "train.log").read_text()
    assert "Process 0 of 2 (torchrun, gloo on cpu)" in log
    assert "Training on 2 devices" in log
    assert "Process 1 of 2" not in log
    # rank 1 logs errors only: no INFO line of its own on the console either
    assert "[default0]:" in result.stdout
    assert not [
        line for line in result.stdout.splitlines() if line.startswith("[default1]:[")
    ]
    assert (folder / "model.ckpt").is_file() and (folder / "model.pt").is_file()
    # the same files as the one-process run, not one set per rank
    [single] = list((torchrun_runs[1][0] / "outputs").glob("*/*"))

    def files(run_folder):
        return sorted(str(p.relative_to(run_folder)) for p in run_folder.rglob("*"))

    assert files(run_folders[0]) == files(single)


def test_two_ranks_end_with_the_weights_of_one_process(
    torchrun_runs, pretrained_bulk_checkpoint
):
    two = weights(torchrun_runs[2][0] / "model.ckpt")
    one = weights(torchrun_runs[1][0] / "model.ckpt")
    # the fine-tuning starts from the checkpoint's best model
    start = weights(pretrained_bulk_checkpoint, "best_model_state_dict")
    assert two.keys() == one.keys()
    largest = max(float((two[k] - one[k]).abs().max()) for k in two)
    moved = max(float((one[k] - start[k]).abs().max()) for k in start if k in one)
    # equal within float tolerance (float32 sums in another order, carried on by
    # Adam), after the weights moved: measured 6e-5 against 5e-3 over 3 epochs;
    # with the random rotations on, the same runs differ by 7e-3
    assert moved > 1e-3, moved
    assert largest < 0.1 * moved, (largest, moved)


def test_bad_input_stops_every_rank_with_the_message(workdir):
    import ase.io

    from conftest import transfer_options

    frames = ase.io.read(workdir / "pbe0_small.xyz", ":")
    frames[5].info["energy_pbe0"] = float("nan")
    ase.io.write(workdir / "pbe0_small.xyz", frames)
    write_yaml(workdir / "options.yaml", transfer_options())
    # a slow monitor: each rank exits on its own before torchrun stops the others
    result = run_mtt(
        ["train", "options.yaml"],
        workdir,
        launcher=torchrun(2, "--monitor-interval=15"),
        check=False,
    )
    assert result.returncode != 0
    message = "the energy is NaN in structure"
    for rank in range(2):
        lines = [
            line
            for line in result.stdout.splitlines()
            if line.startswith(f"[default{rank}]:") and message in line
        ]
        assert lines, (rank, result.stdout[-3000:])
    summary = result.stderr
    assert summary.count("exitcode  : 1 ") == 2, summary[-3000:]
    assert not (workdir / "model.pt").exists()


def test_heads_and_restart_under_torchrun(workdir):
    """``heads`` freezes the backbone (DDP must only synchronise what trains), and
    ``--restart auto`` continues a two-rank run on two ranks."""
    from conftest import transfer_options

    options = transfer_options(method="heads", epochs=1)
    options["architecture"]["training"]["finetune"]["config"] = {
        "head_modules": ["node_heads", "edge_heads"],
        "last_layer_modules": ["node_last_layers", "edge_last_layers"],
    }
    write_yaml(workdir / "options.yaml", options)
    run_mtt(["train", "options.yaml"], workdir, launcher=torchrun(2))
    options["architecture"]["training"]["num_epochs"] = 2
    write_yaml(workdir / "options.yaml", options)
    result = run_mtt(
        ["train", "options.yaml", "--restart", "auto"], workdir, launcher=torchrun(2)
    )
    assert "Restarting training from" in result.stdout
    assert "Epoch:    1" in result.stdout and "Epoch:    0" not in result.stdout
    assert len(list((workdir / "outputs").glob("*/*"))) == 2  # one per launch

    trained = weights(workdir / "model.ckpt")
    # the fine-tuning starts from the checkpoint's best model
    pretrained = weights(workdir / "pretrained.ckpt", "best_model_state_dict")
    backbone = [
        k
        for k in pretrained
        if k.startswith("backend.") and "heads" not in k and "last_layers" not in k
    ]
    assert len(backbone) > 10
    for key in backbone:  # frozen, on both ranks
        assert torch.equal(trained[key], pretrained[key]), key
    new_head = [k for k in trained if "node_heads.mtt::energy_pbe0" in k]
    old_head = [k.replace("mtt::energy_pbe0", "energy") for k in new_head]
    assert new_head  # inherited from the pretrained head, then trained
    assert any(
        not torch.equal(trained[k], pretrained[o])
        for k, o in zip(new_head, old_head, strict=True)
    )
