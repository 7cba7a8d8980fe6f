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

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..adapter import Adapter, MemoryStore
from ..devices import resolve_device
from ..errors import ConfigError, FormatError, NotFoundError
from ..kinds import config_from_dict
from .bin_file import read_bin
from .checks import raise_first_error, structural_problems, value_problems
from .digest import RegionHasher, config_digest, mismatch, recorded, tensor_entries
from .jsontext import json_equal, loads_strict
from .lazy_store import LazyStore
from .recipe import RECIPE_KEY, decode
from .safetensors_file import Header, read_all, read_header, tensor_bytes
from .version import SUPPORTED_MAJOR, VERSION_KEY, check_version

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
BIN_NAME = "adapter_model.bin"
CONFIG_KEY = "adapterkit.config"
MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
MODEL_SHARD_PREFIXES = ("model-0", "pytorch_model-0")
__all__ = [
    "BIN_NAME", "CONFIG_KEY", "CONFIG_NAME", "SUPPORTED_MAJOR", "VERSION_KEY", "WEIGHTS_NAME", "load", "open_adapter",
    "other_adapters",
]


def format_version(metadata: dict[str, str], path: Path) -> str | None:
    """The adapterkit version in ``metadata`` (None: a PEFT-profile file).

    Raises:
        VersionError: unknown major version (``version-unsupported``).
        FormatError: malformed version or ``format`` other than ``pt`` (``metadata-invalid``).
    """
    version = check_version(metadata, path)  # read_header has checked it already; the version comes first
    fmt = metadata.get("format")
    if fmt != "pt" and not (version is None and fmt is None):  # the PEFT profile may omit it
        raise FormatError("__metadata__ format must be 'pt'", code="metadata-invalid", path=path, key="__metadata__.format", expected="pt", actual=fmt)
    recorded(metadata, path)  # the content digest's syntax and self-consistency (§5.5), from the header alone
    return version


def _parse_json(text: str | bytes, *, path: Path, key: str | None = None) -> Any:
    """JSON of a config.  Raises ConfigError (``config-invalid``) for bad UTF-8, bad JSON,
    repeated member names, NaN/Infinity, over-long numbers or excessive nesting."""
    try:
        return loads_strict(text)
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
        if not sub.is_dir():
            raise NotFoundError(f"no adapter named {adapter_name!r}", code="adapter-not-found", path=sub, expected=f"a subfolder {adapter_name!r}", actual="absent")
        return _adapter_dir_no_search(sub)
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
    return _adapter_dir_no_search(path)


def _adapter_dir_no_search(path: Path) -> Path:
    """``path`` itself as the adapter directory (no subfolder search), or why it is not one."""
    if (path / CONFIG_NAME).is_file():
        return path
    if (path / WEIGHTS_NAME).exists() or (path / BIN_NAME).exists():
        raise ConfigError("weights found but no adapter_config.json", code="config-missing", path=path / CONFIG_NAME)
    model_files = sorted(p.name for p in path.glob("*") if p.name in MODEL_FILES or p.name.startswith(MODEL_SHARD_PREFIXES))
    if model_files:
        raise NotFoundError(
            f"this looks like a model checkpoint ({', '.join(model_files[:3])}), not an adapter", code="not-an-adapter",
            path=path, expected=f"an adapter directory ({CONFIG_NAME} + {WEIGHTS_NAME})", actual="a model checkpoint",
        )
    raise NotFoundError("not an adapter directory", code="not-an-adapter", path=path, expected=f"{CONFIG_NAME} and {WEIGHTS_NAME}", actual="neither")


def _looks_like_model(header: Header) -> bool:
    """A weights file without adapter keys: every key lacks PEFT's ``base_model.model.`` prefix
    (a model checkpoint's ``model.embed_tokens.weight``, ``lm_head.weight``, ...)."""
    keys = header.tensors
    return bool(keys) and not any(k.startswith("base_model.model.") or k == "prompt_embeddings" for k in keys)


def other_adapters(path: str | Path, adapter: Adapter) -> list[str]:
    """The adapters saved in the folder ``path`` names besides the one opened: PEFT puts the
    default adapter at the top (listed as ``"."``) and every other one in a subfolder."""
    if adapter.source is None or adapter.source.name not in (WEIGHTS_NAME, BIN_NAME):
        return []  # a single-file adapter stands alone
    root = Path(path)
    if not root.is_dir():
        root = root.parent
    opened = adapter.source.parent
    names = ["."] if (root / CONFIG_NAME).is_file() else []
    try:
        names += sorted(p.name for p in root.iterdir() if p.is_dir() and (p / CONFIG_NAME).is_file())
    except OSError:
        return []
    return [n for n in names if not (root / n).samefile(opened)]


def _from_weights(weights: Path, config_data: Any, config_path: Path, problems: list | None = None) -> Adapter:
    if weights.suffix == ".bin":
        config = config_from_dict(config_data, path=config_path, problems=problems)
        return Adapter(config, MemoryStore(read_bin(weights)), weights, None)
    header = read_header(weights)
    version = format_version(header.metadata, weights)
    config = config_from_dict(config_data, path=config_path, problems=problems)
    embedded = header.metadata.get(CONFIG_KEY)
    if embedded is not None and not _same_json(embedded, config_data):
        raise FormatError(
            "weights carry an adapterkit.config that differs from adapter_config.json; one file, two configs",
            code="metadata-invalid", path=weights, key=f"__metadata__.{CONFIG_KEY}",
            expected=f"absent or equal to {config_path.name}", actual="a different config",
        )
    return Adapter(config, LazyStore(header), weights, version, _recipe(header, weights))


def _recipe(header: Header, path: Path) -> tuple[dict[str, Any], ...]:
    """The ``adapterkit.recipe`` steps of a weights file, () without one (``metadata-invalid`` if malformed)."""
    text = header.metadata.get(RECIPE_KEY)
    return () if text is None else decode(text, path=path)


def _same_json(text: str, data: Any) -> bool:
    """Whether ``text`` parses (strictly) to a JSON value equal to ``data`` (spec §4.1)."""
    try:
        return json_equal(loads_strict(text), data)
    except (ValueError, RecursionError):
        return False


def open_adapter(
    path: str | Path, *, adapter_name: str | None = None, strict: bool = True, config_problems: list | None = None,
) -> Adapter:
    """Open an adapter lazily: headers and config are read and checked, tensors on access.

    Args:
        path: a directory (PEFT layout), a weights file, or a single-file adapter.
        adapter_name: a PEFT subfolder to read (non-default adapters are saved there).
        strict: raise the first structural error (shapes, partners, dtypes); ``validate``
            passes False to collect them all instead.
        config_problems: a list to collect invalid config fields in, instead of raising
            the first (``validate`` passes one, so tensors are checked despite them).

    Raises:
        AdapterkitError subclasses, each with a code from ``adapterkit.errors.CODES``.
    """
    return open_with_config(path, adapter_name=adapter_name, strict=strict, config_problems=config_problems)[0]


def open_with_config(
    path: str | Path, *, adapter_name: str | None = None, strict: bool = True, config_problems: list | None = None,
) -> tuple[Adapter, Any]:
    """:func:`open_adapter`, and the config as the file stores it (parsed JSON, before defaults
    are filled in): what the content digest covers (§5.5)."""
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
        data = _read_config_file(config_path)
        adapter = _from_weights(weights, data, config_path, config_problems)
        if folder != path:  # found in a subfolder: the folder named is an input too (adapterkit.io.outputs)
            adapter = replace(adapter, inputs=(("folder holding the adapter", str(path)),))
    elif path.suffix == ".safetensors":
        header = read_header(path)
        if CONFIG_KEY in header.metadata:
            version = format_version(header.metadata, path)
            if version is None:
                raise FormatError("single-file adapters must carry adapterkit.version", code="metadata-invalid", path=path, key=f"__metadata__.{VERSION_KEY}", expected="MAJOR.MINOR", actual="absent")
            data = _parse_json(header.metadata[CONFIG_KEY], path=path, key=f"__metadata__.{CONFIG_KEY}")
            config = config_from_dict(data, path=path, problems=config_problems)
            adapter = Adapter(config, LazyStore(header), path, version, _recipe(header, path))
        else:
            config_path = path.parent / CONFIG_NAME
            if not config_path.is_file() and _looks_like_model(header):
                raise NotFoundError(
                    f"this looks like a model checkpoint ({len(header.tensors)} tensors such as "
                    f"{next(iter(sorted(header.tensors)))!r}, none an adapter's), not an adapter", code="not-an-adapter",
                    path=path, expected="an adapter: PEFT keys (base_model.model.*) and a config", actual="model weights",
                )
            if not config_path.is_file():
                raise ConfigError(
                    "no config: neither __metadata__ adapterkit.config nor adapter_config.json beside the file",
                    code="config-missing", path=path,
                )
            data = _read_config_file(config_path)
            adapter = _from_weights(path, data, config_path, config_problems)
    elif path.suffix == ".bin":
        config_path = path.parent / CONFIG_NAME
        data = _read_config_file(config_path)
        adapter = _from_weights(path, data, config_path, config_problems)
    elif path.name == CONFIG_NAME:
        raise NotFoundError(
            f"this is an adapter's config; name its folder instead: {path.parent}", code="not-an-adapter", path=path,
            expected=str(path.parent), actual=CONFIG_NAME,
        )
    else:
        raise NotFoundError("not an adapter file", code="not-an-adapter", path=path, expected=".safetensors, .bin or a directory", actual=path.suffix or "no suffix")
    if strict:
        raise_first_error(structural_problems(adapter))
    return adapter, data


def digest_problems(adapter: Adapter, config_data: Any, entries_now: Mapping[str, bytes] | None = None) -> list:
    """``digest-mismatch`` for the first part (config, then tensors in sorted key order) that
    differs from the content digest the file records (§5.5); nothing when it records none.
    ``entries_now``: the tensors' entry digests, already hashed (else each tensor is read and
    hashed here)."""
    store = adapter.tensors
    if not isinstance(store, LazyStore):
        return []  # a .bin, or an adapter built in memory: no recorded digest
    entries = recorded(store.header.metadata, store.header.path)
    if entries is None:
        return []
    if entries_now is None:
        from ..dtypes import DTYPE_NAMES  # the tensors here are torch's

        entries_now = tensor_entries((key, DTYPE_NAMES[t.dtype], tuple(t.shape), tensor_bytes(t)) for key in store for t in (store[key],))
    problem = mismatch(entries, config_digest(config_data, adapter.format_version), entries_now, str(adapter.source))
    return [problem] if problem else []


def _region_entries(header: Header) -> list[tuple[str, str, tuple[int, ...], int, int]]:
    """Every tensor of ``header`` as ``RegionHasher`` takes it: key, dtype, shape, byte range in the data region."""
    return [(i.key, i.dtype, i.shape, i.begin, i.end) for i in header.tensors.values()]


def load(path: str | Path, *, adapter_name: str | None = None, device: Any = None, verify_digest: bool = True,
         finite: bool = True) -> Adapter:
    """Read an adapter fully into memory, checking every rule including finite values and the
    content digest the file records (§5.5).  The data is read once, in pieces in file order, and
    each tensor is hashed on worker threads as soon as its bytes are in (SHA-256 costs ~0.7-0.9
    ms per MB of CPU time, spread over ``digest.hash_threads`` threads), so where cores are free
    the check hides behind the read.  ``verify_digest=False`` skips that one check, for a file
    already verified (a server re-loading it per request); a malformed record is still refused.
    ``finite=False`` skips the NaN/Inf check (``merge --no-safe``, as PEFT's ``safe_merge=False``
    merges whatever the adapter holds).

    Raises:
        AdapterkitError subclasses (see ``open_adapter``); ``digest-mismatch`` when the file's
            content digest disagrees with its content (before any ``non-finite``: a flipped bit
            may also make a NaN); ``non-finite`` for NaN/Inf.
    """
    adapter, config_data = open_with_config(path, adapter_name=adapter_name)
    store = adapter.tensors

    def in_memory(tensors: dict) -> Adapter:
        return Adapter(adapter.config, MemoryStore(tensors), adapter.source, adapter.format_version, adapter.recipe, adapter.inputs)

    if verify_digest and isinstance(store, LazyStore) and recorded(store.header.metadata, store.header.path) is not None:
        with RegionHasher(_region_entries(store.header)) as hasher:  # hashes each tensor as read_all brings its bytes in
            tensors = read_all(store.header, on_read=hasher.filled)
            device = resolve_device(device)
            loaded = in_memory(tensors)
            values = value_problems(loaded) if finite else []  # while the last tensors are hashed
            digest = digest_problems(adapter, config_data, hasher.entries())
        raise_first_error(digest)  # the bytes first: a flipped bit may also make a NaN
    else:
        tensors = read_all(store.header) if isinstance(store, LazyStore) else dict(store)
        device = resolve_device(device)
        loaded = in_memory(tensors)
        values = value_problems(loaded) if finite else []
    raise_first_error(values)  # on the CPU buffer as read: one pass per dtype run
    if device is not None:
        loaded = in_memory({k: v.to(device) for k, v in tensors.items()})
    return loaded
