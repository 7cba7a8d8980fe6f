"""A package's public names imported on first use (PEP 562), so that importing the package — or
one module of it — does not import every module behind those names (torch among them).

``__getattr__, __dir__ = lazy_names(__name__, {"name": "submodule", ...})`` in a package's
``__init__``: the first ``package.name`` imports ``package.submodule``, takes its ``name`` and
keeps it in the package's namespace, so later look-ups cost nothing.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(package: str, names: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package`` for ``names`` (public name -> the
    submodule, relative to the package, that defines it)."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        vars(sys.modules[package])[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
