#!/usr/bin/env bash
# The GPU check (docs/gpu.md): the plugin installed from carried wheels,
# every path run on one device and compared with the CPU's numbers
# (bench/gpu_check.py), then the foundation-sized PET benchmark
# (bench/foundation_pet.py), within a deadline.
#
#   bash bench/gpu_check.sh prepare         # here, once: .whl/ and .gpu_inputs/
#   bash bench/gpu_check.sh run cuda        # on the GPU machine (installs first)
#   bash bench/gpu_check.sh install         # the install alone
#   SKIP_INSTALL=1 bash bench/gpu_check.sh run cpu        # here, in the project's venv
#   SKIP_INSTALL=1 bash bench/gpu_check.sh reference      # bench/gpu_check_reference.json
#
# Environment: OUT (results, default /tmp/gpu_check_out: gpu_check.md/.json,
# foundation.md/.json, logs.tar.gz), PYTHON (the interpreter whose torch is used,
# default python3), VENV (default /tmp/gpu_check_venv), WHEELS (default .whl),
# INPUTS (default .gpu_inputs), DEADLINE_S (seconds from the start after which the
# foundation benchmark starts nothing new, default 300), JOBS (checks at a time,
# default 6 on cuda, 1 on cpu), SKIP_CHECKS=1, SKIP_FOUNDATION=1, FOUNDATION_ARGS
# (extra arguments of foundation_pet.py), PY_VERSION (prepare: the wheels' Python,
# default 3.12).
set -uo pipefail
START=$(date +%s)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-/tmp/gpu_check_out}
PYTHON=${PYTHON:-python3}
VENV=${VENV:-/tmp/gpu_check_venv}
WHEELS=${WHEELS:-$ROOT/.whl}
INPUTS=${INPUTS:-$ROOT/.gpu_inputs}
DEADLINE_S=${DEADLINE_S:-300}
WORK=${WORK:-/tmp/gpu_check_work}

# what the GPU machine lacks (its image has torch, numpy, scipy, matplotlib, pyyaml,
# huggingface_hub, tqdm, attrs, packaging, pathspec, pluggy): metatrain 2026.4.1 and
# its compiled and pure-Python needs, and hatchling to build this project there
PINNED=(
  metatrain==2026.4.1 metatensor-core==0.2.6 metatensor-torch==0.10.8
  metatensor-operations==0.5.0 metatensor-learn==0.5.0 metatomic-torch==0.1.19
  metatomic-ase==0.1.4 vesin==0.6.2 ase==3.29.0 ctypes-dlpack==0.1.1 wigners==0.4.1
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0
  rpds-py==2026.9.1 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0
  typing-inspection==0.4.5 typing_extensions==4.16.0 omegaconf==2.4.0
  hatchling==1.33.0 tomlkit==0.15.3 trove-classifiers==2026.9.21.13 packaging==25.0
  pathspec==0.12.1
  pluggy==1.6.0
)

prepare() {
  local version=${PY_VERSION:-3.12}
  mkdir -p "$WHEELS" "$INPUTS"
  local platforms=()
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
           manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
  done
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: \
    --python-version "$version" --implementation cp "${platforms[@]}" \
    -d "$WHEELS" "${PINNED[@]}" || exit 1
  # python-hostlist (metatrain's SLURM helper) is published as a source archive only
  "$PYTHON" -m pip wheel -q --no-deps -w "$WHEELS" python-hostlist==2.3.0 || exit 1
  # the two reference checkpoints without their optimizer states (fine-tuning reads
  # the weights only): 3 MB each instead of 18
  "$PYTHON" - "$ROOT/../shared/checkpoints" "$INPUTS" <<'EOF' || exit 1
import sys
from pathlib import Path
import metatomic.torch  # noqa: F401 (classes stored in the checkpoints)
import torch
source, target = map(Path, sys.argv[1:])
for name in ["pet_xtb.ckpt", "pet_xtb_hco.ckpt"]:
    checkpoint = torch.load(source / name, weights_only=False, map_location="cpu")
    checkpoint["model_state_dict"] = checkpoint["best_model_state_dict"]
    checkpoint["optimizer_state_dict"] = None
    checkpoint["best_optimizer_state_dict"] = None
    torch.save(checkpoint, target / name)
EOF
  du -sh "$WHEELS" "$INPUTS"
}

install_with() {
  # the build backend first (the project is built with the environment's hatchling),
  # then the project and what it needs: pip takes from the wheels only what the
  # environment does not already satisfy
  "$@" hatchling && "$@" --no-build-isolation "$ROOT"
}

install() {
  # A venv whose packages come first, then the interpreter's own (torch with CUDA):
  # the image's python3 is itself a venv, and a venv made from inside one would see
  # the *base* interpreter's site-packages, not the parent's, so the parent's are
  # added by a .pth file (after the venv's own). No pip in the venv (the base may
  # lack ensurepip): the interpreter's pip installs into it (--python). Where this
  # does not work out, the packages go into the interpreter's own environment
  # (the GPU machine is thrown away after the call).
  local flags=(install -q --no-index --find-links "$WHEELS" --no-cache-dir
               --disable-pip-version-check)
  local parent site
  parent=$("$PYTHON" -c 'import site; print(repr(site.getsitepackages()))')
  if "$PYTHON" -m venv --without-pip "$VENV" \
      && site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
      && echo "import site; list(map(site.addsitedir, $parent))" > "$site/zz_parent_packages.pth" \
      && install_with "$PYTHON" -m pip --python "$VENV/bin/python" "${flags[@]}"; then
    VPY=$VENV/bin/python
  else
    echo "the venv did not work out: installing into $PYTHON's own environment"
    install_with "$PYTHON" -m pip "${flags[@]}" || return 1
    VPY=$(command -v "$PYTHON")
  fi
  # the bridge's .pth was processed: metatrain finds the architecture
  "$VPY" -c 'import torch; from metatrain.utils.architectures import find_all_architectures as found; assert "pet_transfer" in found(); print("installed: pet_transfer with torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")'
}

checks() {
  local device=$1 jobs threads
  jobs=${JOBS:-$([ "$device" = cuda ] && echo 6 || echo 1)}
  threads=$([ "$device" = cuda ] && echo 2 || echo 1)
  "$VPY" "$ROOT/bench/gpu_check.py" --device "$device" --out "$OUT" \
    --workdir "$WORK/checks" --inputs "$INPUTS" --jobs "$jobs" --threads "$threads" \
    "${@:2}"
}

finish() {
  # every log in one file (what comes back from the machine is limited to 8 files)
  tar -czf "$OUT/logs.tar.gz" -C "$WORK" --exclude='*.pt' --exclude='*.ckpt' \
    --exclude='*.xyz' --exclude='*.zip' . 2>/dev/null
  ls -la "$OUT"
  echo "total: $(( $(date +%s) - START )) s"
}

command=${1:-}
case "$command" in
  prepare) prepare ;;
  install) install && echo "mtt: $(dirname "$VPY")/mtt" ;;
  run|reference)
    device=${2:-cpu}
    [ "$command" = reference ] && device=cpu
    mkdir -p "$OUT" "$WORK"
    if [ "${SKIP_INSTALL:-0}" = 1 ]; then
      VPY=$(command -v "$PYTHON")
    else
      install > "$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
      tail -1 "$OUT/install.log"
    fi
    # the venv's scripts (mtt, mtt-transfer) first on the PATH
    export PATH="$(dirname "$VPY"):$PATH"
    if [ "$command" = reference ]; then
      checks cpu --write-reference
      status=$?
    else
      status=0
      if [ "${SKIP_CHECKS:-0}" != 1 ]; then
        checks "$device"
        status=$?
        echo "checks done after $(( $(date +%s) - START )) s"
      fi
      if [ "${SKIP_FOUNDATION:-0}" != 1 ]; then
        remaining=$(( DEADLINE_S - ($(date +%s) - START) ))
        # shellcheck disable=SC2086
        "$VPY" "$ROOT/bench/foundation_pet.py" all --device "$device" \
          --out "$OUT" --workdir "$WORK/foundation" --budget "$remaining" \
          ${FOUNDATION_ARGS:-} || status=1
      fi
    fi
    finish
    exit $status
    ;;
  *)
    sed -n '2,20p' "$0"
    exit 2
    ;;
esac
