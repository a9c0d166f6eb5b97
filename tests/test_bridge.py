"""The entry-point bridge: unmodified metatrain resolves declared architectures."""

import subprocess
import sys
import sysconfig
import textwrap
import types
from pathlib import Path

import pytest

import _metatrain_pet_transfer_bridge as bridge


def run_python(code, *flags, env_path=None):
    env = None
    if env_path is not None:
        import os

        env = dict(os.environ, PYTHONPATH=str(env_path))
    result = subprocess.run(
        [sys.executable, *flags, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_installed_and_lazy_at_startup():
    # the .pth added only its trigger: the bridge is imported by the first metatrain
    # submodule import, and entry points are read only for an unknown name
    out = run_python(
        """
        import sys
        print([type(f).__name__ for f in sys.meta_path][0])
        print("_metatrain_pet_transfer_bridge" in sys.modules,
              "metatrain" in sys.modules)
        import metatrain, _metatrain_pet_transfer_bridge as b
        print(b._declared is None)
        """
    )
    assert out.splitlines() == [
        "_metatrain_pet_transfer_trigger",
        "False False",
        "True",
    ]


def test_metatrain_resolves_the_plugin():
    from metatrain.utils.architectures import (
        check_architecture_name,
        find_all_architectures,
        get_architecture_name,
        get_architecture_path,
        import_architecture,
    )
    from metatrain.utils.io import find_all_architectures as gate_of_checkpoints

    import metatrain_pet_transfer

    assert find_all_architectures().count("pet_transfer") == 1
    assert "pet_transfer" in gate_of_checkpoints()
    assert import_architecture("pet_transfer") is metatrain_pet_transfer
    check_architecture_name("pet_transfer")

    import metatrain.pet_transfer.documentation as aliased

    import metatrain_pet_transfer.documentation as real

    assert aliased is real
    assert metatrain_pet_transfer.__spec__.name == "metatrain_pet_transfer"

    folder = Path(metatrain_pet_transfer.__file__).parent.resolve()
    assert get_architecture_path("pet_transfer") == folder
    assert get_architecture_name(metatrain_pet_transfer.__file__) == "pet_transfer"


def test_typo_suggests_the_plugin():
    from metatrain.utils.architectures import check_architecture_name

    with pytest.raises(ValueError, match="Did you mean 'pet_transfer'"):
        check_architecture_name("pet_transfr")


def test_never_shadows_real_modules_and_serves_any_declared_name(tmp_path):
    # a second distribution declares a clash with the real `pet` and a new name
    site = tmp_path / "site"
    (site / "other_arch").mkdir(parents=True)
    (site / "other_arch" / "__init__.py").write_text(
        "from metatrain_pet_transfer import *  # noqa\n"
        "from metatrain_pet_transfer import __model__, __trainer__\n"
    )
    info = site / "other_arch-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: other-arch\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[metatrain.architectures]\npet = other_arch\nother_arch = other_arch\n"
    )
    out = run_python(
        """
        from metatrain.utils.architectures import (
            find_all_architectures, import_architecture
        )
        import metatrain.pet
        print(metatrain.pet.__file__.endswith("metatrain/pet/__init__.py"))
        print(import_architecture("other_arch").__name__)
        names = find_all_architectures()
        print(names.count("pet"), names.count("other_arch"))
        """,
        env_path=site,
    )
    assert out.splitlines() == ["True", "other_arch", "1 1"]


def test_steps_aside_when_the_host_knows_the_name(tmp_path):
    # a future metatrain that discovers entry points itself: nothing is added twice,
    # and its own path for the architecture wins
    own_folder = tmp_path / "pet_transfer"
    own_folder.mkdir()
    host = types.SimpleNamespace(
        find_all_architectures=lambda: ["pet", "pet_transfer"],
        get_architecture_path=lambda name: own_folder,
        get_architecture_name=lambda path: "pet_transfer",
    )
    bridge.wrap_architecture_lookup(host)
    assert host.find_all_architectures() == ["pet", "pet_transfer"]
    assert host.get_architecture_path("pet_transfer") == own_folder
    wrapped = host.find_all_architectures
    bridge.wrap_architecture_lookup(host)  # idempotent
    assert host.find_all_architectures is wrapped


def test_without_pth_files_the_launcher_installs_it():
    # `python -S` skips site-packages and .pth files; PYTHONPATH brings the packages
    # back, but not the .pth: plain metatrain then cannot see the plugin
    site_packages = sysconfig.get_paths()["purelib"]
    out = run_python(
        """
        import sys
        print(any("trigger" in type(f).__name__ for f in sys.meta_path))
        import metatrain.utils.io as io
        print("pet_transfer" in io.find_all_architectures())
        import _metatrain_pet_transfer_bridge as b
        b.install()  # what `python -m metatrain_pet_transfer` does first
        import metatrain.utils.architectures as host
        print("pet_transfer" in host.find_all_architectures(),
              "pet_transfer" in io.find_all_architectures())
        """,
        "-S",
        env_path=site_packages,
    )
    assert out.splitlines() == ["False", "False", "True True"]
