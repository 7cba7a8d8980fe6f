"""Paths or repo ids: the entry points that take a path accept ``org/name[@revision]`` too.

``local_path`` maps what the user named to a local path (a repo id to its snapshot folder in
the cache, after fetching only the files needed); ``load`` and ``open_adapter`` are
``adapterkit.io.reader``'s with that step first.  Local paths never import huggingface_hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .repo_id import as_repo, missing_path

if TYPE_CHECKING:
    from ..adapter import Adapter


def local_path(path: str | Path, want: str = "any", *, token: str | None = None) -> Path:
    """``path`` itself when it is local (an existing path always wins) or not a repo id; else
    the cache folder holding the repo's files of the kind ``want`` (adapter, checkpoint, any).

    Raises:
        HubError: the Hub refused, failed, or is offline without the files (see ``hub.remote.fetch``).
        NotFoundError: the repo holds no adapter / checkpoint; ``file-not-found`` for a local
            path that does not exist (see ``adapterkit.hub.repo_id``).
    """
    ref = as_repo(path)
    if ref is None:
        missing = missing_path(path)
        if missing is not None:  # never a Hub look-up (adapterkit.hub.repo_id: paths come first)
            raise missing
        return Path(path)
    from .remote import fetch

    return fetch(ref, want, token=token).root


def load(path: str | Path, *, adapter_name: str | None = None, device: Any = None, verify_digest: bool = True) -> Adapter:
    """``adapterkit.io.reader.load`` of a path or a repo id (``org/name[@revision]``)."""
    from ..io.reader import load as load_local

    return load_local(local_path(path, "adapter"), adapter_name=adapter_name, device=device, verify_digest=verify_digest)


def open_adapter(path: str | Path, **kwargs: Any) -> Adapter:
    """``adapterkit.io.reader.open_adapter`` of a path or a repo id (``org/name[@revision]``)."""
    from ..io.reader import open_adapter as open_local

    return open_local(local_path(path, "adapter"), **kwargs)
