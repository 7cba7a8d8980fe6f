"""``validate``: every rule of the spec checked on an adapter file, every problem reported at once.

The checks themselves are the readers' (``adapterkit.io.checks``: ``structural_problems``
from headers and config, ``value_problems`` for NaN/Inf); ``validate`` runs them all without
stopping at the first, the content digest (§5.5) included.  Local paths only: the public
``adapterkit.validate`` resolves a Hub repo id first (``adapterkit.api``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import AdapterkitError, Problem
from .io.checks import non_finite, structural_problems, value_problems


def validate(path: str | Path, *, adapter_name: str | None = None) -> list[Problem]:
    """All problems of the adapter at the local ``path``: errors (MUST violations) and warnings.
    A problem that stops the checks (the path is not an adapter, its config is not JSON, ...)
    is the last one reported."""
    from .io.lazy_store import LazyStore
    from .io.reader import open_with_config

    config_problems: list[Problem] = []
    try:
        adapter, config_data = open_with_config(path, adapter_name=adapter_name, strict=False, config_problems=config_problems)
    except AdapterkitError as exc:
        return [*config_problems, Problem(exc.code, exc.message, "error", exc.path, exc.key, exc.expected, exc.actual)]
    problems = config_problems + structural_problems(adapter)
    try:
        if isinstance(adapter.tensors, LazyStore):
            problems += _streamed_checks(adapter, config_data)
        else:  # a .bin read into memory: no recorded digest
            problems += value_problems(adapter)
    except AdapterkitError as exc:
        problems.append(Problem(exc.code, exc.message, "error", exc.path, exc.key, exc.expected, exc.actual))
    return problems


def _streamed_checks(adapter: Any, config_data: Any) -> list[Problem]:
    """The content digest (§5.5) and NaN/Inf of a file-backed adapter in one read of its data,
    one tensor at a time, so that validating holds a tensor or two, never the whole adapter:
    ``digest-mismatch`` (first differing part) before the ``non-finite`` problems."""
    from .io.digest import config_digest, mismatch, recorded, tensor_digest
    from .io.safetensors_file import DTYPE_NAMES, tensor_bytes

    store = adapter.tensors
    entries = recorded(store.header.metadata, store.header.path)
    now: dict[str, bytes] = {}
    values: list[Problem] = []
    for key in store:
        t = store[key]
        if entries is not None:
            now[key] = tensor_digest(key, DTYPE_NAMES[t.dtype], tuple(t.shape), tensor_bytes(t))
        if (problem := non_finite(key, t, str(adapter.source))) is not None:
            values.append(problem)
        del t
    found = mismatch(entries, config_digest(config_data, adapter.format_version), now, str(adapter.source)) if entries is not None else None
    return ([found] if found else []) + values
