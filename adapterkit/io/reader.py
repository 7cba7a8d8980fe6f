"""Finding and opening adapters: adapterkit files in both forms and PEFT directories.

Resolution of a path:
  * a directory with ``adapter_config.json`` -> directory form (weights:
    ``adapter_model.safetensors``, else ``adapter_model.bin``);
  * a directory without one -> the named ``adapter_name`` subfolder, or the single
    subfolder that holds an adapter (PEFT saves non-default adapters there);
  * a ``.safetensors`` file whose ``__metadata__`` holds ``adapterkit.config`` ->
    single-file form; any other weights file -> its directory's config.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..adapter import Adapter, LazyStore, MemoryStore
from ..devices import resolve_device
from ..errors import ConfigError, FormatError, NotFoundError, VersionError
from ..kinds import config_from_dict
from .bin_file import read_bin
from .safetensors_file import read_all, read_header

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
BIN_NAME = "adapter_model.bin"
VERSION_KEY = "adapterkit.version"
CONFIG_KEY = "adapterkit.config"
SUPPORTED_MAJOR = 1


def format_version(metadata: dict[str, str], path: Path) -> str | None:
    """The adapterkit version in ``metadata`` (None: a PEFT-profile file).

    Raises:
        VersionError: unknown major version (``version-unsupported``).
        FormatError: malformed version or ``format`` other than ``pt`` (``metadata-invalid``).
    """
    version = metadata.get(VERSION_KEY)
    fmt = metadata.get("format")
    if version is None:
        if fmt not in (None, "pt"):
            raise FormatError("__metadata__ format must be 'pt'", code="metadata-invalid", path=path, key="__metadata__.format", expected="pt", actual=fmt)
        return None
    m = re.fullmatch(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)", version)
    if not m:
        raise FormatError("format version must be MAJOR.MINOR", code="metadata-invalid", path=path, key=f"__metadata__.{VERSION_KEY}", expected="e.g. 1.0", actual=version)
    if int(m[1]) != SUPPORTED_MAJOR:
        raise VersionError(
            "unsupported adapterkit format major version", path=path, key=f"__metadata__.{VERSION_KEY}",
            expected=f"{SUPPORTED_MAJOR}.x", actual=version,
        )
    if fmt != "pt":
        raise FormatError("__metadata__ format must be 'pt'", code="metadata-invalid", path=path, key="__metadata__.format", expected="pt", actual=fmt)
    return version


def _parse_json(text: str | bytes, *, path: Path, key: str | None = None) -> Any:
    """JSON of a config.  Raises ConfigError (``config-invalid``) for bad UTF-8, bad JSON,
    over-long integers or excessive nesting."""
    try:
        return json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"adapter config is not valid JSON ({exc})", path=path, key=key) from exc


def _read_config_file(path: Path) -> Any:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError("no adapter config", code="config-missing", path=path) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read adapter config: {exc.strerror}", path=path) from exc
    return _parse_json(raw, path=path)


def _adapter_dir(path: Path, adapter_name: str | None) -> Path:
    if adapter_name:
        sub = path / adapter_name
        if not (sub / CONFIG_NAME).is_file():
            raise NotFoundError(f"no adapter named {adapter_name!r}", code="not-an-adapter", path=sub, expected=f"{sub / CONFIG_NAME}", actual="absent")
        return sub
    if (path / CONFIG_NAME).is_file():
        return path
    try:
        subs = sorted(p for p in path.iterdir() if p.is_dir() and (p / CONFIG_NAME).is_file())
    except OSError as exc:
        raise NotFoundError(f"cannot list directory: {exc.strerror}", code="not-an-adapter", path=path) from exc
    if len(subs) == 1:
        return subs[0]
    if subs:
        raise NotFoundError(
            "several adapters in this directory; choose one with adapter_name", code="ambiguous-adapter", path=path,
            expected="one of " + ", ".join(p.name for p in subs), actual="no adapter_name",
        )
    if (path / WEIGHTS_NAME).exists() or (path / BIN_NAME).exists():
        raise ConfigError("weights found but no adapter_config.json", code="config-missing", path=path / CONFIG_NAME)
    raise NotFoundError("not an adapter directory", code="not-an-adapter", path=path, expected=f"{CONFIG_NAME} and {WEIGHTS_NAME}", actual="neither")


def _from_weights(weights: Path, config_data: Any, config_path: Path) -> Adapter:
    if weights.suffix == ".bin":
        config = config_from_dict(config_data, path=config_path)
        return Adapter(config, MemoryStore(read_bin(weights)), weights, None)
    header = read_header(weights)
    version = format_version(header.metadata, weights)
    config = config_from_dict(config_data, path=config_path)
    embedded = header.metadata.get(CONFIG_KEY)
    if embedded is not None and not _same_json(embedded, config_data):
        raise FormatError(
            "weights carry an adapterkit.config that differs from adapter_config.json; one file, two configs",
            code="metadata-invalid", path=weights, key=f"__metadata__.{CONFIG_KEY}",
            expected=f"absent or equal to {config_path.name}", actual="a different config",
        )
    return Adapter(config, LazyStore(header), weights, version)


def _same_json(text: str, data: Any) -> bool:
    try:
        return json.loads(text) == data
    except (ValueError, RecursionError):
        return False


def open_adapter(path: str | Path, *, adapter_name: str | None = None, strict: bool = True) -> Adapter:
    """Open an adapter lazily: headers and config are read and checked, tensors on access.

    Args:
        path: a directory (PEFT layout), a weights file, or a single-file adapter.
        adapter_name: a PEFT subfolder to read (non-default adapters are saved there).
        strict: raise the first structural error (shapes, partners, dtypes); ``validate``
            passes False to collect them all instead.

    Raises:
        AdapterkitError subclasses, each with a code from ``adapterkit.errors.CODES``.
    """
    from ..validate import raise_first_error, structural_problems

    path = Path(path)
    if not path.exists():
        raise NotFoundError("no such file or directory", path=path)
    if path.is_dir():
        folder = _adapter_dir(path, adapter_name)
        config_path = folder / CONFIG_NAME
        weights = folder / WEIGHTS_NAME
        if not weights.exists():
            weights = folder / BIN_NAME
        if not weights.exists():
            raise NotFoundError("no adapter weights", code="weights-missing", path=folder, expected=f"{WEIGHTS_NAME} or {BIN_NAME}", actual="absent")
        adapter = _from_weights(weights, _read_config_file(config_path), config_path)
    elif path.suffix == ".safetensors":
        header = read_header(path)
        if CONFIG_KEY in header.metadata:
            version = format_version(header.metadata, path)
            if version is None:
                raise FormatError("single-file adapters must carry adapterkit.version", code="metadata-invalid", path=path, key=f"__metadata__.{VERSION_KEY}", expected="MAJOR.MINOR", actual="absent")
            data = _parse_json(header.metadata[CONFIG_KEY], path=path, key=f"__metadata__.{CONFIG_KEY}")
            adapter = Adapter(config_from_dict(data, path=path), LazyStore(header), path, version)
        else:
            config_path = path.parent / CONFIG_NAME
            if not config_path.is_file():
                raise ConfigError(
                    "no config: neither __metadata__ adapterkit.config nor adapter_config.json beside the file",
                    code="config-missing", path=path,
                )
            adapter = _from_weights(path, _read_config_file(config_path), config_path)
    elif path.suffix == ".bin":
        config_path = path.parent / CONFIG_NAME
        adapter = _from_weights(path, _read_config_file(config_path), config_path)
    else:
        raise NotFoundError("not an adapter file", code="not-an-adapter", path=path, expected=".safetensors, .bin or a directory", actual=path.suffix or "no suffix")
    if strict:
        raise_first_error(structural_problems(adapter))
    return adapter


def load(path: str | Path, *, adapter_name: str | None = None, device: Any = None) -> Adapter:
    """Read an adapter fully into memory, checking every rule including finite values.

    Raises:
        AdapterkitError subclasses (see ``open_adapter``); ``non-finite`` for NaN/Inf.
    """
    from ..validate import raise_first_error, value_problems

    adapter = open_adapter(path, adapter_name=adapter_name)
    store = adapter.tensors
    tensors = read_all(store.header) if isinstance(store, LazyStore) else dict(store)
    device = resolve_device(device)
    loaded = Adapter(adapter.config, MemoryStore(tensors), adapter.source, adapter.format_version)
    raise_first_error(value_problems(loaded))  # on the CPU buffer as read: one pass per dtype run
    if device is not None:
        loaded = Adapter(adapter.config, MemoryStore({k: v.to(device) for k, v in tensors.items()}), adapter.source, adapter.format_version)
    return loaded
