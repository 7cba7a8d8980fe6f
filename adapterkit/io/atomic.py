"""Atomic writes: data goes to a temporary file beside the target, then is renamed over it.

A reader never sees a half-written file, and a crash leaves at worst a stray temporary
entry (named ``.<name>.tmp-*``), never a damaged target.

Outputs of several files (an adapter directory, a sharded checkpoint) are staged inside a
hidden folder beside the target, ``.<name>.tmp-*/<name>``, and moved into place by
:func:`install` in one rename.  The staged output sits one level down on purpose: a process
killed before the rename leaves that hidden folder, and nothing that searches the target's
folder for adapters (one level deep) can mistake it for an output.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
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


def write_new(path: str | Path, chunks: Iterable[bytes], *, overwrite: bool, durable: bool = True) -> None:
    """Write the one-file output ``path`` as the many-file outputs are: staged one level down in
    a hidden folder beside it (:func:`staging_folder`), then :func:`install`-ed, so an existing
    ``path`` (even one another writer created after the caller checked) is refused unless
    ``overwrite``, and a killed writer leaves only the hidden folder.

    Raises:
        WriteError: ``output-exists``; ``write-failed`` naming ``path``.
    """
    path = Path(path)
    staging = staging_folder(path)
    try:
        try:
            write_atomic(staging, chunks, durable=durable)
        except WriteError as exc:  # name the real target, not the staging path
            exc.path = str(path)
            exc.args = (str(exc),)
            raise
        install(staging, path, overwrite=overwrite)
    except OSError as exc:
        raise WriteError(f"cannot write output: {exc.strerror}", path=path) from exc
    finally:
        discard(staging.parent)


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when both paths name the same existing file (or the same path)."""
    a, b = Path(a), Path(b)
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


# ---- staging and installing a whole output ---------------------------------------------------

def staging_folder(path: Path) -> Path:
    """Create the hidden folder ``.<name>.tmp-*`` beside ``path`` (its parents too) and return
    where the output is to be built inside it: ``.<name>.tmp-*/<name>`` (not created).  The
    caller removes the folder (:func:`discard`) when it is done, whatever happened.

    Raises:
        WriteError: ``write-failed`` when the folder cannot be created.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent)) / path.name
    except OSError as exc:
        raise WriteError(f"cannot create output: {exc.strerror}", path=path) from exc


def discard(path: Path) -> None:
    """Remove ``path`` (a file, a link or a folder tree) if it exists; errors are ignored."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass


_AT_FDCWD = -100
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_CANNOT = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM}


def _libc_renameat2():
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _libc_renameat2() if sys.platform.startswith("linux") else None


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux ``renameat2``: True when done, False when the system or file system cannot."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in _CANNOT:
        return False
    raise OSError(err, os.strerror(err), str(dst))


def _move_new(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, which must not exist: FileExistsError if it does, even when it
    appears between a check and the rename (one atomic step where the system allows)."""
    if _renameat2(src, dst, _RENAME_NOREPLACE):
        return
    if src.is_file():
        try:
            os.link(src, dst)  # fails if dst exists, atomically
        except FileExistsError:
            raise
        except OSError:
            pass  # no hard links here: check, then rename
        else:
            os.unlink(src)
            return
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst)) from exc
        raise


def _swap(staged: Path, path: Path) -> None:
    """Put ``staged`` at ``path`` and what was at ``path`` at ``staged``, in one step (renameat2's
    RENAME_EXCHANGE), or, where the system cannot, by renaming the old output aside first."""
    if _renameat2(staged, path, _RENAME_EXCHANGE):
        return
    aside = staged.with_name(staged.name + ".old")
    os.rename(path, aside)
    try:
        os.rename(staged, path)
    except OSError:
        os.rename(aside, path)
        raise
    os.rename(aside, staged)


def install(staged: str | Path, path: str | Path, *, overwrite: bool) -> None:
    """Move the finished output ``staged`` (a file or a folder) to ``path``.

    Without ``overwrite`` an existing ``path`` is never replaced, even one that another process
    created after the caller checked: ``output-exists``.  With ``overwrite`` the new output and
    the old one trade places in one step and the old one is deleted, so ``path`` holds one
    complete output at every moment; of several writers the last to install wins.

    Raises:
        WriteError: ``output-exists``; OSError when the file system refuses the rename.
    """
    staged, path = Path(staged), Path(path)
    for _ in range(100):
        if not overwrite or not os.path.lexists(path):
            try:
                _move_new(staged, path)
                return
            except FileExistsError:
                if not overwrite:
                    kind = "directory" if path.is_dir() else "file"
                    raise WriteError(
                        f"output exists ({kind}); pass overwrite=True (--overwrite) to replace it whole", code="output-exists",
                        path=path, expected="a path that does not exist", actual=f"another writer's {kind}",
                    ) from None
                continue  # it appeared meanwhile: replace it
        try:
            _swap(staged, path)
        except FileNotFoundError:
            continue  # it went away meanwhile: move in plainly
        discard(staged)  # the old output
        return
    raise WriteError("cannot install output: other processes keep replacing it", path=path)
