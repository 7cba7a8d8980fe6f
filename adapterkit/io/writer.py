"""Writing adapters: the directory form (PEFT's layout) and the single-file form.

Both are deterministic (same adapter -> same bytes, whatever the tensor order),
atomic per file, and refuse to overwrite the file an adapter was read from.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..adapter import FORMAT_VERSION, Adapter
from ..errors import AdapterkitError, WriteError
from .atomic import same_file, write_atomic
from .reader import CONFIG_KEY, CONFIG_NAME, VERSION_KEY, WEIGHTS_NAME
from .safetensors_file import encode

FORMS = ("dir", "file")


def config_json(adapter: Adapter) -> str:
    """``adapter_config.json`` text exactly as PEFT writes it (indent 2, sorted keys)."""
    return json.dumps(adapter.config.to_dict(), indent=2, sort_keys=True)


def _write_dir(path: Path, tensors: dict, metadata: dict, config: bytes, durable: bool = True) -> None:
    """A new directory appears whole (built beside it, then renamed); in an existing one each
    file is replaced atomically, weights first."""
    if path.exists():
        write_atomic(path / WEIGHTS_NAME, encode(tensors, metadata), durable=durable)
        write_atomic(path / CONFIG_NAME, [config], durable=durable)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as exc:
        raise WriteError(f"cannot create output: {exc.strerror}", path=path) from exc
    try:
        for name, chunks in ((WEIGHTS_NAME, encode(tensors, metadata)), (CONFIG_NAME, [config])):
            try:
                write_atomic(staging / name, chunks, durable=durable)
            except AdapterkitError as exc:  # name the real target, not the staging folder
                exc.path = str(path / name)
                exc.args = (str(exc),)
                raise
        os.chmod(staging, 0o755)
        os.rename(staging, path)
    except OSError as exc:
        raise WriteError(f"cannot write output: {exc.strerror}", path=path) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save(adapter: Adapter, path: str | Path, *, form: str = "dir", durable: bool = True) -> Path:
    """Write ``adapter`` to ``path`` in ``form`` ("dir": PEFT layout; "file": one .safetensors).

    Returns the path written.  The adapter is checked first; an invalid adapter is
    not written.  ``durable=False`` skips the fsync of each file (see ``write_atomic``).

    Raises:
        WriteError: ``overwrite-input`` when the target is the adapter's source, or
            ``write-failed``; other AdapterkitErrors for an invalid adapter.
    """
    from ..validate import raise_first_error, structural_problems

    if form not in FORMS:
        raise WriteError("unknown form", code="write-failed", path=path, expected=" | ".join(FORMS), actual=form)
    raise_first_error(structural_problems(adapter))
    path = Path(path)
    source = adapter.source
    if form == "dir":
        if path.exists() and not path.is_dir():
            raise WriteError("directory form needs a directory", path=path, expected="directory", actual="file")
        targets = [path / WEIGHTS_NAME, path / CONFIG_NAME]
        if source is not None and (same_file(path, source.parent) or any(same_file(t, source) for t in targets)):
            raise WriteError("refusing to write into the directory the adapter was read from", code="overwrite-input", path=path, expected="a different directory", actual=str(source.parent))
    else:
        if path.is_dir():
            raise WriteError("file form needs a file path", path=path, expected="*.safetensors", actual="directory")
        if source is not None and same_file(path, source):
            raise WriteError("refusing to overwrite the input", code="overwrite-input", path=path, expected="a different file", actual=str(source))
    try:
        tensors = {k: adapter.tensors[k] for k in adapter.tensors}
    except AdapterkitError as exc:
        exc.with_path(source or path)
        raise
    metadata = {"format": "pt", VERSION_KEY: FORMAT_VERSION}
    try:
        if form == "dir":
            _write_dir(path, tensors, metadata, config_json(adapter).encode("utf-8"), durable)
        else:
            metadata[CONFIG_KEY] = json.dumps(adapter.config.to_dict(), sort_keys=True, separators=(",", ":"))
            write_atomic(path, encode(tensors, metadata), durable=durable)
    except AdapterkitError as exc:
        exc.with_path(path)
        raise
    return path
