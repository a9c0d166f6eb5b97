"""Generates ``_generated/options.md`` from ``documentation.py`` at each build.

The reference lists every option of ``architecture.model`` and
``architecture.training`` with its default and its docstring, read from the classes
themselves (the plugin's, then PET's it inherits), so it cannot drift from the code.
"""

import ast
import inspect
import json
import re
from pathlib import Path


def attribute_docstrings(cls) -> dict:
    """``{attribute: docstring}`` of a class body (the string after each field)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:] + [None], strict=True):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if (
                isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(following.value.value)
    return docs


def plain(text: str) -> str:
    """Sphinx roles of metatrain's docstrings as plain Markdown code."""
    text = re.sub(r":\w+:`([^`<]+?)\s*<[^`]+>`", r"`\1`", text)
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def hypers_classes(cls) -> list:
    """The class and the hypers classes it extends (TypedDicts keep their parents in
    ``__orig_bases__``, not in the MRO), nearest first."""
    classes = [cls]
    for base in getattr(cls, "__orig_bases__", ()):
        if isinstance(base, type) and base.__module__.endswith("documentation"):
            classes += hypers_classes(base)
    return classes


def render(title: str, cls, intro: str) -> str:
    from metatrain.utils.hypers import init_with_defaults

    defaults = init_with_defaults(cls)
    classes = hypers_classes(cls)
    docs = {}
    for base in reversed(classes):
        docs.update(attribute_docstrings(base))
    lines = [f"## {title}", "", intro, ""]
    for name, default in defaults.items():
        owner = next(base.__module__ for base in classes if name in vars(base))
        origin = "pet_transfer" if owner.startswith("metatrain_pet_transfer") else "PET"
        lines += [
            f"### `{name}`",
            "",
            f"default: `{json.dumps(default)}` ({origin})",
            "",
            plain(docs.get(name, "")),
            "",
        ]
    return "\n".join(lines)


def generate(app) -> None:
    from metatrain_pet_transfer.documentation import ModelHypers, TrainerHypers

    text = "\n".join(
        [
            "# Options reference",
            "",
            "Generated from `metatrain_pet_transfer/documentation.py` (and PET's "
            "`metatrain/pet/documentation.py`, whose options it inherits).",
            "",
            render(
                "architecture.model",
                ModelHypers,
                "PET's model hyperparameters. They come from the checkpoint: leave "
                "`architecture.model` out; a value that differs from the checkpoint "
                "stops the run with the list of differing keys.",
            ),
            render(
                "architecture.training",
                TrainerHypers,
                "PET's trainer options plus the transfer options "
                "(marked pet_transfer).",
            ),
        ]
    )
    target = Path(app.srcdir) / "_generated" / "options.md"
    target.parent.mkdir(exist_ok=True)
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


def setup(app):
    app.connect("builder-inited", generate)
    return {"parallel_read_safe": True}
