"""Writing adapters: the directory form (PEFT's layout) and the single-file form.

Both are deterministic (same adapter -> same bytes, whatever the tensor order) and
atomic: the output is built beside its target and renamed into place, so it appears
whole or not at all.  An existing output is refused unless ``overwrite``, which
replaces it whole; the file or folder an adapter was read from is never replaced.
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
from .forms import resolve_form
from .reader import CONFIG_KEY, CONFIG_NAME, VERSION_KEY, WEIGHTS_NAME
from .recipe import RECIPE_KEY
from .recipe import encode as encode_recipe
from .safetensors_file import encode


def config_json(adapter: Adapter) -> str:
    """``adapter_config.json`` text exactly as PEFT writes it (indent 2, sorted keys)."""
    return json.dumps(adapter.config.to_dict(), indent=2, sort_keys=True)


def _contains(outer: Path, inner: Path) -> bool:
    """True when ``inner`` is ``outer`` or lies inside it (after resolving links)."""
    try:
        return inner.resolve().is_relative_to(outer.resolve())
    except OSError:
        return False


def _check_target(path: Path, form: str, source: Path | None, overwrite: bool) -> None:
    """Refuse a target that would destroy the input, clash with the form, or replace
    something that exists without ``overwrite``."""
    if source is not None:
        if form == "dir":
            targets = [path / WEIGHTS_NAME, path / CONFIG_NAME]
            if same_file(path, source.parent) or any(same_file(t, source) for t in targets):
                raise WriteError("refusing to write into the directory the adapter was read from", code="overwrite-input", path=path, expected="a different directory", actual=str(source.parent))
        elif same_file(path, source):
            raise WriteError("refusing to overwrite the input", code="overwrite-input", path=path, expected="a different file", actual=str(source))
        if os.path.lexists(path) and path.is_dir() and _contains(path, source):
            raise WriteError("refusing to replace a directory that holds the input", code="overwrite-input", path=path, expected="a path outside the input's folders", actual=str(source))
    if os.path.lexists(path):
        if not overwrite:
            kind = "directory" if path.is_dir() else "file"
            raise WriteError(f"output exists ({kind}); pass overwrite=True (--overwrite) to replace it whole", code="output-exists", path=path, expected="a path that does not exist", actual=f"existing {kind}")


def _install(staged: Path, path: Path) -> None:
    """Move ``staged`` to ``path``; whatever was at ``path`` is replaced whole (renamed aside,
    then deleted), so no file from before remains."""
    if not os.path.lexists(path):
        os.rename(staged, path)
        return
    if staged.is_file() and path.is_file() and not path.is_symlink():
        os.replace(staged, path)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent)) / "old"
    os.rename(path, aside)
    try:
        os.rename(staged, path)
    except OSError:
        os.rename(aside, path)
        raise
    finally:
        shutil.rmtree(aside.parent, ignore_errors=True)


def _write(path: Path, files: dict[str, object], form: str, durable: bool) -> None:
    """Write the output beside ``path`` (a staging file or directory), then install it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if form == "file":
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
            os.close(fd)
            staging = Path(name)
        else:
            staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as exc:
        raise WriteError(f"cannot create output: {exc.strerror}", path=path) from exc
    try:
        for name, chunks in files.items():
            target = staging if form == "file" else staging / name
            try:
                write_atomic(target, chunks, durable=durable)
            except AdapterkitError as exc:  # name the real target, not the staging path
                exc.path = str(path if form == "file" else path / name)
                exc.args = (str(exc),)
                raise
        os.chmod(staging, 0o644 if form == "file" else 0o755)
        _install(staging, path)
    except OSError as exc:
        raise WriteError(f"cannot write output: {exc.strerror}", path=path) from exc
    finally:
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
        elif os.path.lexists(staging):
            staging.unlink()


def save(adapter: Adapter, path: str | Path, *, form: str | None = None, overwrite: bool = False, durable: bool = True) -> Path:
    """Write ``adapter`` to ``path``: PEFT's directory layout, or one ``.safetensors`` file.

    The form follows the name unless given: ``*.safetensors`` is the single-file form,
    anything else the directory form; an explicit ``form`` that contradicts the name is
    refused.  An existing ``path`` is refused unless ``overwrite``, which replaces it
    whole (no file from before remains).  The adapter is checked first; an invalid
    adapter is not written.  ``durable=False`` skips the fsync of each file (still atomic;
    see ``write_atomic``).  Returns the path written.

    Raises:
        WriteError: ``overwrite-input`` when the target is (or holds) the adapter's source,
            ``output-exists``, ``form-mismatch``, or ``write-failed``; other
            AdapterkitErrors for an invalid adapter.
    """
    from ..validate import raise_first_error, structural_problems

    path = Path(path)
    form = resolve_form(path, form)
    raise_first_error(structural_problems(adapter))
    _check_target(path, form, adapter.source, overwrite)
    try:
        tensors = {k: adapter.tensors[k] for k in adapter.tensors}
    except AdapterkitError as exc:
        exc.with_path(adapter.source or path)
        raise
    metadata = {"format": "pt", VERSION_KEY: FORMAT_VERSION}
    if adapter.recipe:  # provenance (spec §5.5), in both forms
        metadata[RECIPE_KEY] = encode_recipe(adapter.recipe)
    if form == "dir":
        files = {WEIGHTS_NAME: encode(tensors, metadata), CONFIG_NAME: [config_json(adapter).encode("utf-8")]}
    else:
        metadata[CONFIG_KEY] = json.dumps(adapter.config.to_dict(), sort_keys=True, separators=(",", ":"))
        files = {path.name: encode(tensors, metadata)}
    try:
        _write(path, files, form, durable)
    except AdapterkitError as exc:
        exc.with_path(path)
        raise
    return path
