"""Atomic writes: data goes to a temporary file beside the target, then is renamed over it.

A reader never sees a half-written file, and a crash leaves at worst a stray
temporary file (named ``.<name>.tmp-*``), never a damaged target.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import WriteError


def write_atomic(
    path: str | Path, chunks: Iterable[bytes], *, durable: bool = True, patch: Callable[[], tuple[int, bytes]] | None = None,
) -> None:
    """Write ``chunks`` to ``path`` atomically (temp file in the same directory + rename).

    Args:
        path: the target file; its directory is created if missing.
        chunks: the bytes to write, in order (any bytes-like objects, e.g. memoryviews).
        durable: fsync the data before the rename, so that after a crash the target holds the
            old or the new bytes, never an empty file.  ``False`` skips the fsync (still atomic
            for other readers, not across a power loss): for scratch output and benchmarks.
        patch: called once all chunks are written; returns (offset, bytes) to write over what
            is there (the same length), e.g. a header that holds a digest of the data after it.

    Raises:
        WriteError: the directory cannot be created or the file cannot be written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    except OSError as exc:
        raise WriteError(f"cannot create output: {exc.strerror}", path=path) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            if patch is not None:
                f.flush()
                if durable:  # the data goes to disk while the patch is prepared (e.g. the last tensors hashed)
                    with ThreadPoolExecutor(max_workers=1) as pool:
                        early = pool.submit(os.fsync, f.fileno())
                        offset, data = patch()
                        early.result()
                else:
                    offset, data = patch()
                f.seek(offset)
                f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise WriteError(f"cannot write output: {exc.strerror}", path=path) from exc
        raise


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when both paths name the same existing file (or the same path)."""
    a, b = Path(a), Path(b)
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()
