"""metatrain's own PET tests give the same results with the plugin imported first as
without it installed (``bench/host_pet_tests.py``; the full comparison, all of
metatrain's PET tests, is in docs/benchmarks.md).

The suite runs the subset that goes through what the plugin changes in a process:
``PET.restart`` (replaced once the plugin is imported) and metatrain's checkpoint
loaders (which ask ``find_all_architectures``, extended by the bridge). That is
every test of ``test_finetuning.py`` but the three that train (~25 s), and the
``restart`` and checkpoint tests of ``test_basic.py`` but the two that train for
several epochs: 22 tests, run twice (24 s of CPU; 57 s of wall time on a 2-core
machine busy with other jobs).
"""

import importlib.util

from conftest import TESTS


HARNESS = TESTS.parent / "bench" / "host_pet_tests.py"
SUBSET = dict(
    files=["test_finetuning.py", "test_basic.py"],
    keyword=(
        "(restart or finetun or stale or inherit or Checkpoints) "
        "and not num_epochs and not fewer_targets and not test_finetuning_restart"
    ),
)


def load_harness():
    spec = importlib.util.spec_from_file_location("host_pet_tests", HARNESS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pet_tests_same_with_the_plugin_imported_as_without_it(tmp_path):
    harness = load_harness()
    tests = harness.build_tree(tmp_path / "tree")
    selection = harness.Selection(**SUBSET)
    runs = {
        mode: harness.run_mode(mode, tests, selection, tmp_path)
        for mode in ("absent", "imported")
    }
    # the environments are what they claim to be
    absent, imported = runs["absent"]["probe"], runs["imported"]["probe"]
    assert "plugin loaded=False bridge loaded=False" in absent, absent
    assert "PET.restart wrapped=False" in absent, absent
    assert "plugin imported first=True" in imported, imported
    assert "PET.restart wrapped=True" in imported, imported

    assert harness.compare(runs) == []
    outcomes = runs["imported"]["outcomes"]
    assert len(outcomes) == 22, runs["imported"]["output"][-3000:]
    assert set(outcomes.values()) <= {"passed", "skipped"}, runs["imported"]["output"]
    # the one skip: PET's LoRA on a CUDA device
    assert list(outcomes.values()).count("passed") == 21
