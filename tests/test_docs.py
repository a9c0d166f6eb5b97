"""The docs build without warnings, and their YAML snippets are valid options."""

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf


ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


def yaml_snippets():
    for page in PAGES:
        for index, block in enumerate(
            re.findall(r"```yaml\n(.*?)```", page.read_text(), flags=re.DOTALL)
        ):
            yield pytest.param(block, id=f"{page.name}-{index}")


def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "-q",
            "-b",
            "html",
            "docs",
            str(tmp_path / "html"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "html" / "_generated" / "options.html").exists()


@pytest.mark.parametrize("snippet", yaml_snippets())
def test_yaml_snippets_are_valid_options(snippet, pretrained_checkpoint):
    from metatrain.utils.architectures import (
        check_architecture_options,
        get_default_hypers,
    )
    from metatrain.utils.omegaconf import expand_dataset_config

    content = yaml.safe_load(snippet)
    if "targets" in content and "training_set" not in content:
        # a fragment of a dataset section
        content = {"training_set": {"systems": "dataset.xyz", **content}}

    if "architecture" in content:
        architecture = copy.deepcopy(content["architecture"])
        name = architecture["name"]
        finetune = architecture.get("training", {}).get("finetune", {})
        if finetune.get("read_from"):
            # the snippets' placeholder paths: validate with a real checkpoint
            finetune["read_from"] = str(pretrained_checkpoint)
        merged = OmegaConf.merge(
            {"architecture": get_default_hypers(name)}, {"architecture": architecture}
        )
        check_architecture_options(
            name=name, options=OmegaConf.to_container(merged["architecture"])
        )
    if "training_set" in content:
        expanded = expand_dataset_config(OmegaConf.create(content["training_set"]))
        assert expanded[0]["targets"]
