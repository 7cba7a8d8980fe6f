"""Talking to the Hub through ``huggingface_hub``: settings read at call time, the file
names of a repo checked before anything is written, only the files needed downloaded into
the standard cache, and huggingface_hub's exceptions turned into one-line adapterkit errors.

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and the cache location when it is
imported; adapterkit reads them from the environment at every call and passes them on.
"""

from __future__ import annotations

import errno
import json
import os
import re
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import AdapterkitError, HubError, NotFoundError, WriteError
from .repo_id import RepoRef

DEFAULT_ENDPOINT = "https://huggingface.co"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
CARD_NAME = "README.md"
SINGLE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
# weights a checkpoint fetch leaves on the Hub (the checkpoint reader's WEIGHT_SUFFIXES; not imported: no torch here)
OTHER_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx", ".index.json")
_DRIVE = re.compile(r"[A-Za-z]:")
_TRUE = {"1", "ON", "YES", "TRUE"}
# a download failing with these wrote into a full, read-only or unwritable cache: not the Hub's fault
_LOCAL_WRITE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


@dataclass(frozen=True)
class Settings:
    """Where and how to reach the Hub, from the environment at the time of the call."""

    endpoint: str
    cache_dir: Path
    offline: bool
    token: str | None = field(default=None, repr=False)


def settings(token: str | None = None) -> Settings:
    """``HF_ENDPOINT``, the cache and offline mode read now, by huggingface_hub's own rules
    (its ``constants``, which it reads once at import): the cache is ``HF_HUB_CACHE``, else
    the legacy ``HUGGINGFACE_HUB_CACHE``, else ``HF_HOME``/hub (``HF_HOME`` defaulting to
    ``$XDG_CACHE_HOME/huggingface``, then ``~/.cache/huggingface``), ``~`` and ``$VARS``
    expanded; offline when ``HF_HUB_OFFLINE`` (or, unset or empty, ``TRANSFORMERS_OFFLINE``)
    is 1/ON/YES/TRUE in any case.  ``token`` None leaves huggingface_hub's usual resolution
    (HF_TOKEN, the stored login)."""
    env = os.environ

    def expand(path: str) -> str:
        return os.path.expandvars(os.path.expanduser(path))

    home = expand(env.get("HF_HOME", os.path.join(env.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "huggingface")))
    cache = Path(expand(env.get("HF_HUB_CACHE", env.get("HUGGINGFACE_HUB_CACHE", os.path.join(home, "hub")))))
    offline = (env.get("HF_HUB_OFFLINE") or env.get("TRANSFORMERS_OFFLINE") or "").upper() in _TRUE
    endpoint = (env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    return Settings(endpoint, cache, offline, token)


def check_name(name: str, ref: RepoRef | str) -> str:
    """``name`` if it is a safe relative POSIX path inside the repo; else ``hub-unsafe-path``:
    empty, absolute, a drive, a backslash, an empty, ``.`` or ``..`` component, or a control
    character (Unicode category Cc: C0, DEL and C1, which a terminal may act on)."""
    parts = name.split("/")
    bad = (not name or "\\" in name or "\x00" in name or name.startswith("/") or _DRIVE.match(name)
           or any(p in ("", ".", "..") for p in parts) or any(unicodedata.category(c) == "Cc" for c in name))
    if bad:
        raise HubError("the Hub listed a file name that could write outside the download folder; nothing was written",
                       code="hub-unsafe-path", path=str(ref), key=repr(name)[1:-1][:200],
                       expected="a relative path without '..', '\\\\', control characters or a drive", actual="a hostile name")
    return name


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def hub_error(exc: BaseException, ref: RepoRef | str, what: str = "") -> AdapterkitError:
    """The adapterkit error for an exception of huggingface_hub (or its HTTP client)."""
    from huggingface_hub import errors as hf

    where = f" ({what})" if what else ""
    status = _status(exc)
    cause = exc.__cause__
    if isinstance(exc, hf.LocalEntryNotFoundError) and cause is not None and cause is not exc:
        return hub_error(cause, ref, what)  # "not in the cache" after the Hub failed: the failure is the news
    if isinstance(exc, (hf.LocalEntryNotFoundError, hf.OfflineModeIsEnabled)) and status is None:
        if not isinstance(exc, hf.OfflineModeIsEnabled) and not settings().offline:
            return HubError(f"cannot reach the Hub and the cache does not hold the files{where}", code="hub-unavailable", path=str(ref))
        return HubError(f"offline (HF_HUB_OFFLINE) and the cache does not hold the files{where}; "
                        "download them once online", code="hub-offline", path=str(ref))
    if status in (401, 403):
        return HubError(f"the Hub refused access ({status}){where}: pass --token, set HF_TOKEN or log in "
                        "with a token that may read/write this repo", code="hub-unauthorized", path=str(ref))
    if status == 404:
        thing = ("revision" if isinstance(exc, hf.RevisionNotFoundError) else
                 "file" if isinstance(exc, hf.RemoteEntryNotFoundError) else "repo")
        return HubError(f"no such {thing} on the Hub (404){where}", code="hub-not-found", path=str(ref))
    if status is not None and (status >= 500 or status == 429):
        return HubError(f"the Hub failed ({status}){where}; try again later", code="hub-unavailable", path=str(ref))
    if status is None and _is_transport(exc):
        return HubError(f"cannot reach the Hub ({type(exc).__name__}){where}", code="hub-unavailable", path=str(ref))
    text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return HubError(f"{type(exc).__name__}: {text}{where}" if status is None else f"the Hub answered {status}{where}",
                    code="hub-error", path=str(ref))


def _is_transport(exc: BaseException) -> bool:
    try:
        import httpx2

        if isinstance(exc, httpx2.TransportError):
            return True
    except ImportError:  # pragma: no cover - an older huggingface_hub on httpx/requests
        pass
    return isinstance(exc, (ConnectionError, TimeoutError)) or type(exc).__name__ in {"ConnectError", "ConnectTimeout", "ReadTimeout"}


@contextmanager
def translated(ref: RepoRef | str, what: str = "") -> Iterator[None]:
    """Run a huggingface_hub call; its exceptions come out as :class:`HubError`."""
    try:
        yield
    except AdapterkitError:
        raise
    except Exception as exc:
        from huggingface_hub import errors as hf

        if isinstance(exc, (hf.HfHubHTTPError, hf.LocalEntryNotFoundError, hf.OfflineModeIsEnabled, hf.HFValidationError,
                            OSError, ValueError)) or _is_transport(exc):
            raise hub_error(exc, ref, what) from None
        raise


@contextmanager
def into_cache(s: Settings, what: str) -> Iterator[None]:
    """A download whose local write fails (a full disk, a read-only or unwritable cache) ends
    in ``write-failed`` naming the cache, not in a Hub error: the Hub did nothing wrong."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _LOCAL_WRITE or _is_transport(exc):
            raise
        raise WriteError(f"cannot write the Hub cache: {exc.strerror} ({what})", path=s.cache_dir) from exc


# ----------------------------------------------------------------------------- choosing files


def _top(name: str) -> bool:
    return "/" not in name


def _hidden(name: str) -> bool:
    return any(p.startswith(".") for p in name.split("/"))


def adapter_files(names: list[str]) -> list[str]:
    """An adapter's files: adapter_config.json and its weights at any depth (named adapters
    live in subfolders), the card; else top-level ``*.safetensors`` (adapterkit's single file)
    that are not a model's."""
    found = [n for n in names if PurePosixPath(n).name in ADAPTER_FILES and not _hidden(n)]
    if not found:
        found = [n for n in names if _top(n) and n.endswith(".safetensors") and not n.startswith(("model", "."))]
    if found and CARD_NAME in names:
        found.append(CARD_NAME)
    return sorted(found)


def checkpoint_files(names: list[str], shards_of: Callable[[str], list[str]]) -> list[str]:
    """A checkpoint's files: ``model.safetensors``, or the index plus the shards its weight_map
    names (``shards_of(index)`` reads it), plus the files that are not weights (config,
    tokenizer, card).  Other weights (``*.bin``, ``*.gguf``, other safetensors) are left."""
    if INDEX_NAME in names:
        weights = [INDEX_NAME, *shards_of(INDEX_NAME)]
    elif SINGLE_NAME in names:
        weights = [SINGLE_NAME]
    else:
        return []
    extras = [n for n in names if not _hidden(n) and not n.endswith(OTHER_WEIGHTS) and n not in weights]
    return sorted(set(weights) | set(extras))


def index_shards(index: Path, ref: RepoRef | str, names: list[str]) -> list[str]:
    """The shard names of a ``model.safetensors.index.json``, each checked and listed by the repo."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise HubError(f"{INDEX_NAME} is not a JSON object with a weight_map ({type(exc).__name__})",
                       code="checkpoint-invalid", path=str(ref), key=INDEX_NAME) from None
    for shard in shards:
        check_name(str(shard), ref)
        if shard not in names:
            raise HubError("the index names a shard that the repo does not hold", code="hub-not-found",
                           path=str(ref), key=str(shard))
    return shards


def choose(names: list[str], want: str, shards_of: Callable[[str], list[str]], ref: RepoRef | str) -> tuple[str, list[str]]:
    """(``"adapter"`` or ``"checkpoint"``, the files to fetch) for ``want`` (adapter, checkpoint, any)."""
    if want in ("adapter", "any"):
        found = adapter_files(names)
        if found:
            return "adapter", found
    if want in ("checkpoint", "any"):
        found = checkpoint_files(names, shards_of)
        if found:
            return "checkpoint", found
    what = {"adapter": "an adapter (adapter_config.json, adapter_model.safetensors)",
            "checkpoint": f"a model checkpoint ({SINGLE_NAME} or {INDEX_NAME})"}
    code = "not-a-checkpoint" if want == "checkpoint" else "not-an-adapter"
    expected = what.get(want, f"{what['adapter']} or {what['checkpoint']}")
    raise NotFoundError("the Hub repo holds no files of the kind asked for", code=code, path=str(ref),
                        expected=expected, actual=", ".join(names[:8]) + (" ..." if len(names) > 8 else "") or "no files")


# ----------------------------------------------------------------------------- fetching


@dataclass
class Fetched:
    """What :func:`fetch` got: the snapshot folder in the cache, the commit, the files."""

    ref: RepoRef
    root: Path
    commit: str
    kind: str
    files: list[str]


def fetch(ref: RepoRef, want: str = "any", *, token: str | None = None) -> Fetched:
    """Download the files of ``ref`` that ``want`` needs into the cache (or, offline, find them
    there) and return where they are.  Every remote file name is checked before any download.

    Raises:
        HubError: hub-unauthorized, hub-not-found, hub-unavailable, hub-offline, hub-unsafe-path, hub-error.
        NotFoundError: not-an-adapter / not-a-checkpoint when the repo holds no such files.
        WriteError: write-failed naming the cache when a download cannot be written there.
    """
    s = settings(token)
    if s.offline:
        return _from_cache(ref, want, s)
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=s.endpoint, token=token)
    with translated(ref, "listing the repo"):
        info = api.repo_info(ref.repo_id, revision=ref.revision)
        commit = info.sha
        names = [f.path for f in api.list_repo_tree(ref.repo_id, revision=commit, recursive=True) if isinstance(f, RepoFile)]
    for name in names:
        check_name(name, ref)
    got: dict[str, Path] = {}

    def download(name: str) -> Path:
        if name not in got:
            with translated(ref, f"downloading {name}"), into_cache(s, f"downloading {name}"):
                path = Path(hf_hub_download(ref.repo_id, name, revision=ref.revision or "main", cache_dir=s.cache_dir,
                                            endpoint=s.endpoint, token=token))
            if path.parent.parts[-(name.count("/") + 1)] != commit:
                raise HubError("the revision moved while downloading; try again", code="hub-error", path=str(ref), key=name)
            got[name] = path
        return got[name]

    kind, files = choose(names, want, lambda index: index_shards(download(index), ref, names), ref)
    for name in files:
        download(name)
    root = _snapshot(s, ref, commit)
    return Fetched(ref, root, commit, kind, files)


def _snapshot(s: Settings, ref: RepoRef, commit: str) -> Path:
    return s.cache_dir / ("models--" + ref.repo_id.replace("/", "--")) / "snapshots" / commit


def _from_cache(ref: RepoRef, want: str, s: Settings) -> Fetched:
    """Offline: the snapshot the revision's ref points at, and the files it holds."""
    folder = s.cache_dir / ("models--" + ref.repo_id.replace("/", "--"))
    revision = ref.revision or "main"
    commit = revision if re.fullmatch(r"[0-9a-f]{40}", revision) else None
    ref_file = folder / "refs" / revision
    if commit is None and ref_file.is_file():
        commit = ref_file.read_text(encoding="utf-8").strip()
    root = folder / "snapshots" / (commit or "")
    if commit is None or not root.is_dir():
        raise HubError(f"offline (HF_HUB_OFFLINE) and the cache ({s.cache_dir}) holds no snapshot of this revision; "
                       "download it once online", code="hub-offline", path=str(ref))
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    def shards_of(index: str) -> list[str]:
        shards = index_shards(root / index, ref, names)
        return shards

    try:
        kind, files = choose(names, want, shards_of, ref)
    except HubError as exc:
        if exc.code != "hub-not-found":
            raise
        raise HubError(f"offline (HF_HUB_OFFLINE) and the cached snapshot lacks {exc.key}", code="hub-offline", path=str(ref)) from None
    except NotFoundError as exc:
        raise HubError(f"offline (HF_HUB_OFFLINE) and the cached snapshot lacks the files needed ({exc.expected})",
                       code="hub-offline", path=str(ref)) from None
    return Fetched(ref, root, commit, kind, files)


def api_for(token: str | None = None) -> Any:
    """An ``HfApi`` on the endpoint of the environment now; refuses to run offline."""
    s = settings(token)
    if s.offline:
        raise HubError("offline (HF_HUB_OFFLINE): cannot upload", code="hub-offline")
    from huggingface_hub import HfApi

    return HfApi(endpoint=s.endpoint, token=token)
