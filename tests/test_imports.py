"""Every module of the package imports on its own, and no two import each other.

An import circle works as long as the modules are imported in a lucky order (or one
side imports inside a function); it breaks as soon as a user, a test or a new module
imports the other side first. Two checks: a static one over the source (every
``import`` statement, those inside functions included, so a circle hidden in a
function counts), and each module imported alone, in one interpreter whose cache of
the package's modules is emptied before each import.
"""

import ast
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path


PACKAGE = "metatrain_pet_transfer"
# found, not imported: a circle must fail the tests, not their collection
SOURCE = Path(importlib.util.find_spec(PACKAGE).submodule_search_locations[0])
BRIDGE = "_metatrain_pet_transfer_bridge"


def module_files(source: Path = SOURCE, package: str = PACKAGE) -> dict:
    """``{module name: file}`` for every module of the package."""
    modules = {}
    for path in sorted(source.rglob("*.py")):
        parts = list(path.relative_to(source).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join([package, *parts])] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict) -> set:
    """The package's modules that ``path`` (module ``name``) imports, anywhere in it."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            # `from a import b`: the submodule a.b if there is one, else a
            targets = [
                f"{module}.{alias.name}"
                if f"{module}.{alias.name}" in modules
                else module
                for alias in node.names
            ]
        else:
            continue
        found.update(target for target in targets if target in modules)
    found.discard(name)
    return found


def import_circles(modules: dict) -> list:
    """Every circle of the import graph of ``modules``, as lists of module names."""
    graph = {
        name: imported_modules(name, path, modules) for name, path in modules.items()
    }
    circles, finished = [], set()

    def visit(name, path):
        if name in path:
            circles.append(path[path.index(name) :] + [name])
            return
        if name in finished:
            return
        for target in sorted(graph[name]):
            visit(target, path + [name])
        finished.add(name)

    for name in sorted(graph):
        visit(name, [])
    return circles


def test_no_import_circle():
    circles = import_circles(module_files())
    assert not circles, "import circles:\n" + "\n".join(
        " -> ".join(circle) for circle in circles
    )


def test_a_circle_is_found(tmp_path):
    """The check sees a circle hidden inside a function, as the package had one."""
    package = tmp_path / "circular"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "model.py").write_text("from .recipe import species\n")
    (package / "recipe").mkdir()
    (package / "recipe" / "__init__.py").write_text("")
    (package / "recipe" / "species.py").write_text(
        "def route():\n    from ..model import Model\n"
    )
    assert import_circles(module_files(package, "circular")) == [
        ["circular.model", "circular.recipe.species", "circular.model"]
    ]


IMPORT_EACH_ALONE = """
import importlib, sys, traceback

failures = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m.split(".")[0] in {PACKAGES}]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failures.append(name + ":\\n" + traceback.format_exc(limit=-3))
print("\\n".join(failures) or "all imported")
"""


def test_every_module_imports_alone():
    names = [BRIDGE, *module_files()]
    code = textwrap.dedent(IMPORT_EACH_ALONE).replace(
        "{PACKAGES}", repr({PACKAGE, BRIDGE})
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *names], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "all imported", result.stdout[-5000:]
