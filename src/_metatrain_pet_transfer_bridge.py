"""Entry-point discovery of metatrain architectures, for an unmodified metatrain.

Why this exists: metatrain 2026.4 finds architectures only as folders inside its own
package (``metatrain/<name>/``) and has no entry-point discovery yet (upstream issue
metatensor/metatrain#879). Packages declare architectures in the entry-point group
``metatrain.architectures`` (``pet_transfer = "metatrain_pet_transfer"``); this module
makes metatrain see every architecture declared there, without touching its files.

What it touches, all in memory:

- ``sys.meta_path``. The ``.pth`` file installed beside this module adds, at start-up,
  one tiny front finder (:data:`TRIGGER`) that ignores every name not starting with
  ``metatrain.`` and imports nothing: this module is imported only by the first
  ``metatrain.*`` import, so an interpreter that never imports metatrain pays for one
  class creation. From then on, :func:`find_spec` maps ``metatrain.<name>.<sub>`` to
  the plugin's ``<sub>`` once ``metatrain.<name>`` is an alias, and wraps
  ``metatrain.utils.architectures`` when it is imported; and ``_AliasFinder``
  (appended, so it is only asked after the normal finders failed: a real
  ``metatrain.<name>`` always wins) resolves ``metatrain.<name>`` to the declared
  module object itself, so ``import_architecture(name)`` returns the plugin and
  classes are never duplicated.
- In ``metatrain.utils.architectures`` only: ``find_all_architectures`` (adds declared
  names: the checkpoint gate of ``mtt eval/export/--restart`` and the "did you mean"
  suggestion use it), ``get_architecture_path`` and ``get_architecture_name`` (point at
  the plugin's folder, so ``preload_documentation_module`` works).
- In ``metatrain.utils.distributed.logging`` only: ``is_main_process``, for
  ``pet_transfer`` runs under torchrun only. metatrain knows one multi-process
  launcher, SLURM; under torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``, ``MASTER_PORT`` all set) every process thinks it is the main
  one, and each creates its own run folder, log file and exported model.
  ``pet_transfer`` trains under torchrun (``metatrain_pet_transfer.parallel``), so
  for an ``mtt train`` whose options select it the wrapper answers ``RANK == 0``:
  one run folder, one log, one export, written by rank 0, as under ``srun``.
  metatrain asks before it reads the options (its first question picks the run
  folder), so the wrapper reads the architecture from the command line itself
  (:func:`command_line_architecture`, once per process). Every other process gets
  the host's answer: outside torchrun, and under torchrun for any other
  architecture (a native ``name: pet`` run behaves as without the plugin).
- Entry points are read only when metatrain asks for a name it does not have.

How it steps aside: the wrappers only add what the host does not already return, and
the alias finder only answers names no other finder resolves. If metatrain learns to
read this entry-point group itself, both become no-ops. Several plugins may ship this
file under different names: each wrapper is applied once, and the first alias finder
answers.

For interpreters that do not read ``.pth`` files (``python -S``, site-packages on
``PYTHONPATH``), call :func:`install`; ``python -m metatrain_pet_transfer`` does.
"""

import sys


GROUP = "metatrain.architectures"
_HOST = "metatrain"
_WRAPPED_MODULE = "metatrain.utils.architectures"
_MAIN_PROCESS_MODULE = "metatrain.utils.distributed.logging"
#: set by torchrun for each worker
_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: the architecture of this package that trains under torchrun: only its runs get
#: ``RANK == 0`` from ``is_main_process``
_TORCHRUN_ARCHITECTURE = "pet_transfer"

_declared = None  # name -> module path, read lazily from the entry points
_aliases = {}  # "metatrain.<name>" -> "<plugin module>", for names already resolved


def declared_architectures():
    """Architectures declared in the ``metatrain.architectures`` entry-point group.

    :return: a dict from architecture name to the import path of its module
    """
    global _declared
    if _declared is None:
        from importlib.metadata import entry_points

        _declared = {}
        for entry_point in entry_points(group=GROUP):
            # the first distribution declaring a name wins, like on PATH
            _declared.setdefault(entry_point.name, entry_point.value)
    return _declared


class _AliasLoader:
    """Loader returning the already-imported plugin module under the host's name."""

    def __init__(self, target):
        self.target = target
        self._target_spec = None

    def create_module(self, spec):
        import importlib

        module = importlib.import_module(self.target)
        self._target_spec = module.__spec__
        return module

    def exec_module(self, module):
        # the import system stamped the alias spec on the module: give it its own back
        module.__spec__ = self._target_spec


def _alias_spec(fullname, target):
    from importlib.machinery import ModuleSpec

    return ModuleSpec(fullname, _AliasLoader(target), is_package=True)


class _AliasFinder:
    """Resolves ``metatrain.<name>`` for declared names no real module has."""

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith(_HOST + ".") or fullname.count(".") != 1:
            return None
        name = fullname[len(_HOST) + 1 :]
        module_path = declared_architectures().get(name)
        if module_path is None:
            return None
        _aliases[fullname] = module_path
        return _alias_spec(fullname, module_path)


def find_spec(fullname, path=None, target=None):
    """Front finder for ``metatrain.*`` names, called by :data:`TRIGGER`.

    Wraps ``metatrain.utils.architectures`` as it is imported and maps submodules of
    aliased architectures; answers ``None`` (next finder) for everything else.
    """
    _append_alias_finder()
    if fullname == _WRAPPED_MODULE:
        return _wrapping_spec(fullname, path, target, wrap_architecture_lookup)
    if fullname == _MAIN_PROCESS_MODULE:
        return _wrapping_spec(fullname, path, target, wrap_main_process)
    parent, _, child = fullname.rpartition(".")
    if parent in _aliases:
        submodule = f"{_aliases[parent]}.{child}"
        _aliases[fullname] = submodule
        return _alias_spec(fullname, submodule)
    return None


def _append_alias_finder():
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.append(_AliasFinder())


def _wrapping_spec(fullname, path, target, wrap):
    for finder in sys.meta_path:
        if _is_trigger(finder) or not hasattr(finder, "find_spec"):
            continue
        spec = finder.find_spec(fullname, path, target)
        if spec is not None:
            spec.loader = _WrappingLoader(spec.loader, wrap)
            return spec
    return None


class _WrappingLoader:
    """Runs the host's loader, then wraps functions of the module with ``wrap``."""

    def __init__(self, loader, wrap):
        self.loader = loader
        self.wrap = wrap

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        module.__spec__.loader = self.loader
        module.__loader__ = self.loader
        self.wrap(module)


def _plugin_directory(name):
    from importlib.util import find_spec
    from pathlib import Path

    spec = find_spec(declared_architectures()[name])
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"architecture {name!r} is not a package")
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def wrap_architecture_lookup(module):
    """Teach ``metatrain.utils.architectures`` about declared architectures.

    :param module: the imported ``metatrain.utils.architectures`` module
    """
    if getattr(module.find_all_architectures, "__entry_point_bridge__", False):
        return

    host_find_all = module.find_all_architectures
    host_get_path = module.get_architecture_path
    host_get_name = module.get_architecture_name

    def find_all_architectures():
        names = host_find_all()
        return names + [n for n in declared_architectures() if n not in names]

    def get_architecture_path(name):
        path = host_get_path(name)
        if not path.exists() and name in declared_architectures():
            return _plugin_directory(name)
        return path

    def get_architecture_name(path):
        try:
            return host_get_name(path)
        except ValueError:  # outside metatrain's folder: maybe a plugin's
            from pathlib import Path

            resolved = Path(path).resolve()
            directory = resolved if resolved.is_dir() else resolved.parent
            for name in declared_architectures():
                if directory == _plugin_directory(name):
                    return name
            raise

    for wrapper, host in [
        (find_all_architectures, host_find_all),
        (get_architecture_path, host_get_path),
        (get_architecture_name, host_get_name),
    ]:
        wrapper.__doc__ = host.__doc__
        wrapper.__wrapped__ = host
        wrapper.__entry_point_bridge__ = True
        setattr(module, host.__name__, wrapper)


def wrap_main_process(module):
    """Make ``is_main_process`` answer ``RANK == 0`` for a ``pet_transfer`` run
    under torchrun (module docstring).

    :param module: the imported ``metatrain.utils.distributed.logging`` module
    """
    host = module.is_main_process
    if getattr(host, "__torchrun_bridge__", False):
        return

    def is_main_process():
        import os

        if (
            all(name in os.environ for name in _TORCHRUN_VARIABLES)
            and command_line_architecture() == _TORCHRUN_ARCHITECTURE
        ):
            return os.environ["RANK"] == "0"
        return host()

    is_main_process.__doc__ = host.__doc__
    is_main_process.__wrapped__ = host
    is_main_process.__torchrun_bridge__ = True
    module.is_main_process = is_main_process


_architectures = {}  # command line -> architecture.name of its options


def command_line_architecture(argv=None):
    """``architecture.name`` of the options of this process's ``mtt train`` command
    line (``-r`` overrides included), or ``None``.

    ``None`` also for options metatrain cannot read: it reports those itself.

    :param argv: the command line (``sys.argv`` by default)
    """
    argv = tuple(sys.argv if argv is None else argv)
    if argv not in _architectures:
        arguments = mtt_train_arguments(argv)
        name = None
        if arguments is not None:
            from metatrain.cli.train import _prepare_train_model_args

            try:
                _prepare_train_model_args(arguments)  # file + overrides, as metatrain
                name = str(arguments.options["architecture"]["name"])
            except Exception:
                pass
        _architectures[argv] = name
    return _architectures[argv]


class _Unparsable(Exception):
    pass


def mtt_train_arguments(argv=None):
    """The arguments of ``mtt train`` in ``argv``, parsed by metatrain's own parser
    of the sub-command, or ``None`` if ``argv`` is not an ``mtt train`` call.

    :param argv: the command line (``sys.argv`` by default)
    :return: an ``argparse.Namespace`` (``options``, ``output``, ``restart_from``,
        ``override_options``, ...), or ``None``
    """
    from metatrain.cli.train import _add_train_model_parser

    return mtt_arguments(argv, _add_train_model_parser, "train_model")


def mtt_arguments(argv, add_parser, command):
    """The arguments of the ``mtt`` sub-command that ``add_parser`` (metatrain's
    own) adds, or ``None`` if ``argv`` (``sys.argv`` by default) is another call.

    :param command: the sub-command's ``callable`` (``train_model``, ``eval_model``)
    """
    import argparse
    from pathlib import Path

    argv = list(sys.argv if argv is None else argv)
    if not argv or Path(argv[0]).name not in ("mtt", "mtt.exe", "__main__.py"):
        return None

    class SilentParser(argparse.ArgumentParser):
        # argparse prints usage and exits on an error: a command line that is not
        # this sub-command is no error here, just "not this call"
        def error(self, message):
            raise _Unparsable(message)

    parser = SilentParser(add_help=False)
    parser.add_argument("--debug", action="store_true")  # metatrain's global flag
    add_parser(parser.add_subparsers())
    try:
        arguments, _ = parser.parse_known_args(argv[1:])
    except (_Unparsable, SystemExit):
        return None
    if getattr(arguments, "callable", None) != command:
        return None
    return arguments


#: class name of the start-up finder added by the ``.pth`` file (or by :func:`install`)
TRIGGER = "_metatrain_pet_transfer_trigger"


def _is_trigger(finder):
    return type(finder).__name__ == TRIGGER


def install():
    """Add the start-up finder by hand (what the ``.pth`` line does); idempotent."""
    if not any(_is_trigger(finder) for finder in sys.meta_path):
        trigger = type(TRIGGER, (), {"find_spec": staticmethod(_trigger_find_spec)})
        sys.meta_path.insert(0, trigger())
    host_module = sys.modules.get(_WRAPPED_MODULE)
    if host_module is not None:  # imported before we were installed
        _append_alias_finder()
        host_find_all = host_module.find_all_architectures
        wrap_architecture_lookup(host_module)
        # modules that did `from .architectures import find_all_architectures`
        for name, module in list(sys.modules.items()):
            if name.startswith(_HOST + ".") and module is not host_module:
                if getattr(module, "find_all_architectures", None) is host_find_all:
                    module.find_all_architectures = host_module.find_all_architectures
    main_module = sys.modules.get(_MAIN_PROCESS_MODULE)
    if main_module is not None:  # imported before we were installed
        host_is_main = main_module.is_main_process
        wrap_main_process(main_module)
        for name, module in list(sys.modules.items()):
            if name.startswith(_HOST + ".") and module is not main_module:
                if getattr(module, "is_main_process", None) is host_is_main:
                    module.is_main_process = main_module.is_main_process


def _trigger_find_spec(fullname, path=None, target=None):
    if fullname.startswith(_HOST + "."):
        return find_spec(fullname, path, target)
    return None
