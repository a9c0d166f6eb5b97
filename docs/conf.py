"""Sphinx configuration: Markdown pages (MyST), options reference generated from the
code (``_ext/options_reference.py``), warnings are errors in CI."""

import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "metatrain-pet-transfer"
author = "metatrain-pet-transfer developers"
extensions = ["myst_parser", "options_reference"]
source_suffix = {".md": "markdown"}
master_doc = "index"
exclude_patterns = ["_build"]
myst_heading_anchors = 3
html_theme = "alabaster"
html_static_path = []
