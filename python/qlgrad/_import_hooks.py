"""Changing libraries qlgrad does not import (torchao, transformers) once they have been.

Both are optional and take seconds to import, so qlgrad imports neither: ``when_imported(name,
hook)`` calls ``hook(module)`` at once if the module ``name`` has been imported, and otherwise
right after the import system has executed it, whichever of qlgrad and the library is imported
first. A finder at the front of ``sys.meta_path`` finds the module as the other finders do and
gives it a loader that runs the hook; it stays there, as a module may be imported at any time
(torchao's prototypes and transformers' quantizers are imported on first use).

Hooks are called one at a time and may be called more than once for a module: each leaves a
module it has changed already as it is.
"""

import importlib
import importlib.abc
import importlib.metadata
import sys
import threading
import warnings
from collections.abc import Callable
from types import ModuleType

Hook = Callable[[ModuleType], None]

# Guards _HOOKS and the finder's insertion into sys.meta_path.
_lock = threading.Lock()
# Held while a hook runs; reentrant, as a hook may import a module that has a hook too.
_running = threading.RLock()
_HOOKS: dict[str, Hook] = {}


def installed_version(distribution: str) -> str | None:
    """The version of the installed ``distribution``, None if it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def is_supported(version: str, supported: tuple[str, ...]) -> bool:
    """Whether ``version`` is one of the ``supported`` releases.

    Local builds carry a suffix (0.18.0+cpu, 5.24.0+git...): the release number decides.
    """
    return version.split("+")[0] in supported


def check_supported(distribution: str, version: str, supported: tuple[str, ...], not_covered: str, remedy: str) -> bool:
    """Whether ``version`` of ``distribution`` is one of the ``supported`` releases; if not, warns what is not covered.

    Called by the ``install`` functions that ``import qlgrad`` calls: the warning names the
    importing line.
    """
    if is_supported(version, supported):
        return True
    warnings.warn(
        f"qlgrad: {distribution} {version} is installed, but qlgrad supports {distribution} "
        f"{', '.join(supported)} only; {not_covered}. {remedy}",
        stacklevel=4,
    )
    return False


def _run(hook: Hook, module: ModuleType) -> None:
    with _running:
        hook(module)


class _LoaderThenHook(importlib.abc.Loader):
    """Executes a module with its own loader, then runs its hook."""

    def __init__(self, loader, hook: Hook):
        self._loader = loader
        self._hook = hook

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _run(self._hook, module)

    def __getattr__(self, name):
        # get_source, get_code, is_package...: inspect and torch.compile read sources through them.
        return getattr(self._loader, name)


class _HookWhenImported(importlib.abc.MetaPathFinder):
    """Finds the hooked modules like the other finders would, with a loader that runs the hook."""

    def find_spec(self, fullname, path, target=None):
        hook = _HOOKS.get(fullname)
        if hook is None:
            return None
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _LoaderThenHook(spec.loader, hook)
                return spec
        return None


def when_imported(name: str, hook: Hook) -> None:
    """``hook(module)`` for the module ``name``: now if it has been imported, else once it has been executed."""
    with _lock:
        _HOOKS[name] = hook
        if not any(isinstance(finder, _HookWhenImported) for finder in sys.meta_path):
            sys.meta_path.insert(0, _HookWhenImported())
    if name in sys.modules:
        # import_module waits for an import of the module under way in another thread to finish.
        _run(hook, importlib.import_module(name))
