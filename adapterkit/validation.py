"""``validate``: every rule of the spec checked on an adapter file, every problem reported at once.

The checks themselves are the readers' (``adapterkit.io.checks``: ``structural_problems``
from headers and config, ``value_problems`` for NaN/Inf); ``validate`` runs them all without
stopping at the first, the content digest (§5.5) included.  Local paths only: the public
``adapterkit.validate`` resolves a Hub repo id first (``adapterkit.api``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import AdapterkitError, Problem
from .io.checks import structural_problems, value_problems


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
    one tensor at a time from the raw bytes (no torch), so that validating holds a few tensors,
    never the whole adapter: ``digest-mismatch`` (first differing part) before the ``non-finite``
    problems.  Tensors are hashed on the digest's threads while the next ones are read."""
    from .arrays import nonfinite_count
    from .io.checks import nonfinite_problem
    from .io.digest import config_digest, mismatch, recorded, tensor_entries_streamed

    header = adapter.tensors.header
    source = str(adapter.source)
    entries = recorded(header.metadata, header.path)
    values: list[Problem] = []

    def each() -> Any:
        for key, raw in _raw_tensors(header):
            info = header.tensors[key]
            if (problem := nonfinite_problem(key, nonfinite_count(info.dtype, raw), info.numel, source)) is not None:
                values.append(problem)
            yield key, info.dtype, info.shape, raw

    found = None
    if entries is None:
        for _ in each():
            pass
    else:
        now = tensor_entries_streamed(each(), sum(i.nbytes for i in header.tensors.values()))
        found = mismatch(entries, config_digest(config_data, adapter.format_version), now, source)
    place = {key: i for i, key in enumerate(header.tensors)}  # reported in the header's order
    return ([found] if found else []) + sorted(values, key=lambda p: place[p.key])


def _raw_tensors(header: Any) -> Any:
    """(key, raw bytes) of each tensor of ``header``'s file in file order, one read each."""
    from .errors import FormatError

    try:
        with open(header.path, "rb", buffering=0) as f:
            for info in sorted(header.tensors.values(), key=lambda i: i.begin):
                raw = os.pread(f.fileno(), info.nbytes, header.data_start + info.begin) if info.nbytes else b""
                if len(raw) != info.nbytes:
                    raise FormatError("file changed while reading", code="truncated-file", path=header.path, key=info.key)
                yield info.key, raw
    except OSError as exc:
        raise FormatError(f"cannot read tensors: {exc.strerror}", path=header.path) from exc
