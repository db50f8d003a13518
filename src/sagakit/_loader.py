"""Finding what a command names as ``MODULE:ATTR``, the way uvicorn and ``faststream run``
do: the current directory (or ``--app-dir``) is importable, ``MODULE`` is a dotted module
path, ``ATTR`` an attribute of it (dotted for nested ones)."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any, TypeVar

from ._errors import SagaError

T = TypeVar("T")

#: Environment variable naming the directory `MODULE` is imported from (`--app-dir`).
APP_DIR_ENV = "SAGAKIT_APP_DIR"


class LoadError(SagaError):
    """``MODULE:ATTR`` could not be imported, or is not what the command needs."""


def app_dir(path: str | Path | None = None) -> Path:
    """The directory modules are imported from: `path`, SAGAKIT_APP_DIR, or the cwd."""
    return Path(path or os.environ.get(APP_DIR_ENV) or ".").resolve()


def load_object(
    spec: str, *, directory: str | Path | None = None, default_attr: str = "app"
) -> Any:
    """The object ``MODULE:ATTR`` names (``ATTR`` defaults to `default_attr`)."""
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise LoadError(f"{spec!r} names no module: write MODULE:ATTR, e.g. myapp:app")
    where = str(app_dir(directory))
    if where not in sys.path:
        sys.path.insert(0, where)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise LoadError(
                f"cannot import {module_name!r}: no module {exc.name!r} in {where} or on the "
                "Python path (run from the directory that holds it, or pass --app-dir)"
            ) from exc
        raise LoadError(f"importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:  # a DefinitionError of a saga in it, say
        raise LoadError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    found: Any = module
    for part in (attr or default_attr).split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            names = sorted(n for n in vars(module) if not n.startswith("_"))
            raise LoadError(
                f"module {module_name!r} has no attribute {attr or default_attr!r} "
                f"(it has: {', '.join(names[:20]) or 'nothing public'})"
            ) from None
    return found


def load_as(
    spec: str, kind: type[T], *, directory: str | Path | None = None, default_attr: str = "app"
) -> T:
    """``MODULE:ATTR``, checked to be a `kind`."""
    found = load_object(spec, directory=directory, default_attr=default_attr)
    if not isinstance(found, kind):
        raise LoadError(f"{spec!r} is a {type(found).__name__}, not a {kind.__name__}")
    return found


def load_scenario(
    spec: str, options: dict[str, str] | None = None, *, directory: str | Path | None = None
) -> Any:
    """A `Scenario` named by ``MODULE:ATTR``: an instance, or a factory (a class or a
    function) called with `options` (``--option KEY=VALUE``)."""
    from .scenario import Scenario

    found = load_object(spec, directory=directory, default_attr="scenario")
    if isinstance(found, Scenario):
        if options:
            raise LoadError(
                f"{spec!r} is a scenario, not a factory: it takes no options "
                f"({', '.join(options)}); name a function or class that makes one"
            )
        return _complete(spec, found)
    if callable(found):
        try:
            made = found(**(options or {}))
        except TypeError as exc:
            raise LoadError(f"{spec!r} does not take those options: {exc}") from exc
        if isinstance(made, Scenario):
            return _complete(spec, made)
        raise LoadError(f"{spec!r} made a {type(made).__name__}, not a Scenario")
    raise LoadError(f"{spec!r} is a {type(found).__name__}, not a Scenario")


def _complete(spec: str, scenario: Any) -> Any:
    """The scenario, if it defines what every run needs (before a run, not after it)."""
    from .scenario import Scenario

    if type(scenario).check is Scenario.check:
        raise LoadError(
            f"{spec!r}: {type(scenario).__name__} defines no check(world, starts), which "
            "returns the business invariants that do not hold after a run (return [] to "
            "check only what sagakit checks itself)"
        )
    return scenario


def spec_of(obj: object, near: str = "") -> str:
    """A ``MODULE:ATTR`` another process can import `obj` by (a module attribute that is
    `obj` itself), preferring modules of the package `near` names."""
    top = near.partition(":")[0].split(".")[0]
    candidates = sorted(
        ((name, module) for name, module in list(sys.modules.items()) if module is not None),
        key=lambda item: (
            not item[0].startswith(top) if top else False,
            item[0].count("."),
            item[0],
        ),
    )
    for name, module in candidates:
        if name == "__main__":
            continue
        for attr, value in list(vars(module).items()):
            if value is obj and not attr.startswith("_"):
                return f"{name}:{attr}"
    raise LoadError(
        f"{obj!r} is not an attribute of any module: make it one (e.g. `app = App(...)` "
        "in your module) so other processes can import it"
    )
