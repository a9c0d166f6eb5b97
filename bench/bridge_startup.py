"""Start-up cost of the entry-point bridge (the ``.pth`` file), measured side by side.

Alternates interpreter starts with and without the bridge's ``.pth`` file (renamed
aside for the "without" runs, restored at the end) and prints medians and ratios for
``python -c pass`` and ``python -c "import metatrain"``, plus the bridge's own line
from ``python -X importtime``. Usage: ``python bench/bridge_startup.py [--pairs 30]``.
"""

import argparse
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path


PTH = Path(sysconfig.get_paths()["purelib"]) / "_metatrain_pet_transfer_bridge.pth"


def start_time(code):
    begin = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - begin


def measure(code, pairs):
    with_bridge, without_bridge = [], []
    aside = PTH.with_suffix(".pth-aside")
    for _ in range(pairs):
        with_bridge.append(start_time(code))
        PTH.rename(aside)
        try:
            without_bridge.append(start_time(code))
        finally:
            aside.rename(PTH)
    return statistics.median(with_bridge), statistics.median(without_bridge)


def bridge_importtime(code):
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = [line for line in result.stderr.splitlines() if "_metatrain_pet" in line]
    return lines[0] if lines else "(not imported)"


def pth_processing_time(repeats=200):
    """What ``site`` does with the file at start-up, timed in-process (median)."""
    import site

    times = []
    for _ in range(repeats):
        meta_path = list(sys.meta_path)
        begin = time.perf_counter()
        site.addpackage(str(PTH.parent), PTH.name, set())
        times.append(time.perf_counter() - begin)
        sys.meta_path[:] = meta_path
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=30)
    args = parser.parse_args()
    if not PTH.exists():
        sys.exit(f"{PTH} not found: install the package first (pip install .)")

    print("python -X importtime, the bridge's line (self us | cumulative us | name):")
    for code in ["pass", "import metatrain"]:
        print(f"    -c {code!r:20s}", bridge_importtime(code))
    print(f"site processing of the .pth file: {pth_processing_time() * 1e6:.0f} us")
    for label, code, pairs in [
        ("python -c pass", "pass", args.pairs),
        ("python -c 'import metatrain'", "import metatrain", max(5, args.pairs // 3)),
    ]:
        on, off = measure(code, pairs)
        print(
            f"{label:32s} with bridge {on * 1e3:8.1f} ms | without {off * 1e3:8.1f} ms"
            f" | ratio {on / off:.3f} (median of {pairs} alternating pairs)"
        )


if __name__ == "__main__":
    main()
