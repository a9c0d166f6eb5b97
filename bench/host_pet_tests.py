"""metatrain's own PET tests, with and without the plugin: the same tests, the same
results.

metatrain ships its PET tests in the wheel (``metatrain/pet/tests``). They find their
data at ``Path(__file__).parents[4] / "tests/resources"``, a folder of metatrain's
source tree that a wheel install lacks. :func:`build_tree` gives them one without
writing into the environment: a temporary folder holding ``site/metatrain`` (a link
to the installed package, put first on ``PYTHONPATH`` so that the tests and
metatrain's testing helpers are imported through it) and ``tests/resources`` (the
three files they read, from ``tests/data``).

The tests then run in three environments (:data:`MODES`):

- ``absent``: ``python -S``, site-packages reached through ``PYTHONPATH``; no
  ``.pth`` file is read, so the bridge is never installed and nothing imports the
  plugin: metatrain as if the plugin were not installed;
- ``installed``: the plugin installed (its ``.pth`` bridge active) but not imported;
- ``imported``: the plugin imported before the tests are collected
  (``pytest -p metatrain_pet_transfer``).

A probe plugin (``pet_tests_probe.py``) reports, at the end of each session, whether
the plugin and the bridge were loaded and where metatrain was imported from, so the
environment is checked, not assumed. The PET-MAD tests download checkpoints from
the internet and are left out (:data:`EXCLUDE`). Every test id must have the same
outcome in every mode.

Usage: ``python bench/host_pet_tests.py [--modes absent imported] [-k EXPR]
[--files test_basic.py ...]``; exits 1 when the outcomes differ. The suite runs a
subset (``tests/test_host_pet_tests.py``).
"""

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
#: the files metatrain's PET tests read from ``tests/resources``
RESOURCES = {
    "qm9_reduced_100.xyz": DATA / "qm9_reduced_100.xyz",
    "carbon_reduced_100.xyz": DATA / "metatrain" / "carbon_reduced_100.xyz",
    "spherical_disk_dataset.zip": DATA / "metatrain" / "spherical_disk_dataset.zip",
}
#: downloads PET-MAD checkpoints from huggingface.co: no network here
EXCLUDE = ["test_pet_mad.py"]
MODES = ("absent", "installed", "imported")
PROBE = Path(__file__).resolve().parent / "pet_tests_probe.py"


def build_tree(root: Path) -> Path:
    """Lay out ``root`` so that metatrain's PET tests find their resources.

    :param root: an empty folder
    :return: the folder of metatrain's PET tests, as seen through ``root``
    """
    import metatrain

    package = Path(metatrain.__file__).resolve().parent
    site = root / "site"
    site.mkdir(parents=True)
    (site / "metatrain").symlink_to(package, target_is_directory=True)
    (site / PROBE.name).symlink_to(PROBE)
    resources = root / "tests" / "resources"
    resources.mkdir(parents=True)
    for name, source in RESOURCES.items():
        (resources / name).symlink_to(source)
    # `parents[4]` of site/metatrain/pet/tests/__init__.py (and of metatrain's
    # testing helpers, site/metatrain/utils/testing/*.py) is `root`
    (root / "pytest.ini").write_text("[pytest]\n")
    return site / "metatrain" / "pet" / "tests"


def command(mode: str, tests: Path, selection, junit: Path) -> tuple:
    """The pytest command line and environment of one mode."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")
    site = tests.parents[2]
    root = site.parent
    paths = [str(site)]
    python = [sys.executable]
    if mode == "absent":
        python.append("-S")  # no .pth file: no bridge, and the plugin is never loaded
        paths.append(sysconfig.get_paths()["purelib"])
    plugins = ["-p", "pet_tests_probe"]
    if mode == "imported":
        plugins = ["-p", "metatrain_pet_transfer", *plugins]
    files = [str(tests / name) for name in selection.files] or [str(tests)]
    args = [
        *python, "-m", "pytest", *files,
        "-c", str(root / "pytest.ini"), "--rootdir", str(root),
        "-p", "no:cacheprovider", "-p", "no:xdist", "-q", "-rfE",
        *plugins,
        *[f"--ignore={tests / name}" for name in EXCLUDE],
        f"--junitxml={junit}",
    ]  # fmt: skip
    if selection.keyword:
        args += ["-k", selection.keyword]
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(paths),
        OMP_NUM_THREADS="1",
        PET_TESTS_MODE=mode,
    )
    return args, env


def outcomes(junit: Path) -> dict:
    """``{test id: outcome}`` from a JUnit XML report (``passed``, ``failed``,
    ``error``, ``skipped``)."""
    results = {}
    for case in ElementTree.parse(junit).iter("testcase"):
        test = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        if "error" in kinds:
            outcome = "error"  # also a passed test whose teardown failed
        elif "failure" in kinds:
            outcome = "failed"
        elif "skipped" in kinds:
            outcome = "skipped"
        else:
            outcome = "passed"
        results[test] = outcome
    return results


class Selection:
    """Which of the PET tests to run: files (all when empty) and a ``-k`` expression."""

    def __init__(self, files=(), keyword=None):
        self.files = list(files)
        self.keyword = keyword


def run_mode(mode: str, tests: Path, selection: Selection, folder: Path) -> dict:
    """Run the selected PET tests in ``mode``.

    :return: ``outcomes``, ``probe`` (the probe's line), ``seconds``, ``output``
    """
    junit = folder / f"{mode}.xml"
    args, env = command(mode, tests, selection, junit)
    # metatrain runs them from their own folder (tox's changedir): the checkpoint
    # tests read `checkpoints/` there; here its link, so that what the tests write
    # lands in a folder of ours
    work = folder / f"work-{mode}"
    work.mkdir()
    (work / "checkpoints").symlink_to(tests / "checkpoints", target_is_directory=True)
    begin = time.perf_counter()
    result = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - begin
    output = result.stdout + result.stderr
    probe = [line for line in output.splitlines() if line.startswith("probe:")]
    if not junit.exists() or not probe:
        raise RuntimeError(f"pytest did not run in mode {mode}:\n{output[-3000:]}")
    return {
        "outcomes": outcomes(junit),
        "probe": probe[-1],
        "seconds": seconds,
        "output": output,
    }


def compare(runs: dict) -> list:
    """The test ids whose outcome differs between modes, or that some mode lacks."""
    tests = set().union(*(run["outcomes"] for run in runs.values()))
    differences = []
    for test in sorted(tests):
        seen = {
            mode: run["outcomes"].get(test, "missing") for mode, run in runs.items()
        }
        if len(set(seen.values())) > 1:
            differences.append((test, seen))
    return differences


def summary(outcomes: dict) -> str:
    counts = Counter(outcomes.values())
    return ", ".join(
        f"{counts[kind]} {kind}"
        for kind in ("passed", "skipped", "failed", "error")
        if counts[kind]
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--files", nargs="*", default=[], help="test files (all)")
    parser.add_argument("-k", dest="keyword", default=None, help="pytest -k")
    parser.add_argument("--reports", type=Path, help="keep the JUnit XML reports here")
    args = parser.parse_args(argv)
    selection = Selection(args.files, args.keyword)
    with tempfile.TemporaryDirectory(prefix="host-pet-tests-") as folder:
        folder = Path(folder)
        tests = build_tree(folder / "tree")
        runs = {}
        for mode in args.modes:
            runs[mode] = run_mode(mode, tests, selection, folder)
            run = runs[mode]
            print(f"{mode:>9}: {summary(run['outcomes'])} in {run['seconds']:.0f} s")
            print(f"{'':>11}{run['probe']}")
            for line in run["output"].splitlines():
                if line.startswith(("FAILED", "ERROR")):
                    print(f"{'':>11}{line}")
            if args.reports:
                args.reports.mkdir(parents=True, exist_ok=True)
                shutil.copy(folder / f"{mode}.xml", args.reports)
    differences = compare(runs)
    total = len(set().union(*(run["outcomes"] for run in runs.values())))
    print(f"{total} test ids, {len(differences)} with different outcomes")
    for test, seen in differences:
        print(f"  {test}: {seen}")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
