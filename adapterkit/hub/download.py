"""``pull``: an adapter or a checkpoint from the Hub into a plain folder, checked.

Only the files needed are downloaded (through the standard cache); they are copied (never
linked) into a folder built beside the target and renamed into place, so the target appears
whole or not at all.  An adapter must validate and a checkpoint's index and shards must
agree before anything is installed.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ArgumentError, WriteError
from ..io.outputs import check_output
from .remote import check_name, fetch, settings
from .repo_id import parse_repo_id


@dataclass
class PullResult:
    repo: str
    commit: str
    kind: str  # "adapter" | "checkpoint"
    out: Path
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"repo": self.repo, "commit": self.commit, "kind": self.kind, "out": str(self.out), "files": self.files}


def _check(root: Path, kind: str) -> None:
    """Raise the first error of the fetched adapter, or of the checkpoint's index and shards."""
    if kind == "adapter":
        from ..io.checks import raise_first_error
        from ..validation import validate

        raise_first_error(validate(root))
    else:
        from ..checkpoint import open_checkpoint

        open_checkpoint(root)


def pull(repo: str, out: str | Path, *, overwrite: bool = False, token: str | None = None) -> PullResult:
    """Download the adapter (or model checkpoint) ``repo`` (``org/name[@revision]``) into the
    folder ``out``: plain files, validated first.  ``out`` is refused if it exists unless
    ``overwrite``, which replaces it whole.

    Raises:
        ArgumentError: ``repo`` is not a repo id.  WriteError: output-exists, write-failed,
        overwrite-input (``out`` is, holds or lies inside the cache folder the files come from).
        HubError: see ``hub.remote.fetch``.  The adapter's first validation error, or the
        checkpoint's (checkpoint-invalid, ...), with nothing written.
    """
    ref = parse_repo_id(repo)
    if ref is None:
        raise ArgumentError("not a repo id", key="repo", expected="org/name or org/name@revision", actual=repr(str(repo)))
    out = Path(out)
    check_output(out, [("Hugging Face cache", settings(token).cache_dir)])  # what pull reads from; never written over
    if os.path.lexists(out) and not overwrite:
        raise WriteError("output exists; pass overwrite=True (--overwrite) to replace it whole", code="output-exists",
                         path=out, expected="a path that does not exist", actual="existing " + ("directory" if out.is_dir() else "file"))
    got = fetch(ref, "any", token=token)
    check_output(out, [(f"Hub cache of {ref}", got.root), *((f"Hub cache of {ref}", got.root / n) for n in got.files)])
    _check(got.root, got.kind)
    from ..io.atomic import discard, install, staging_folder

    staging = staging_folder(out)  # .<name>.tmp-*/<name>: a killed pull leaves nothing that looks like an output
    try:
        staging.mkdir()
        for name in got.files:
            target = staging / check_name(name, ref)
            if not target.resolve().is_relative_to(staging.resolve()):  # pragma: no cover - check_name refuses these
                raise WriteError("refusing a file outside the output", path=out, key=name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(got.root / name, target)  # follows the cache's links: a plain file
        os.chmod(staging, 0o755)
        install(staging, out, overwrite=overwrite)
    except OSError as exc:
        raise WriteError(f"cannot write output: {exc.strerror}", path=out) from exc
    finally:
        discard(staging.parent)
    return PullResult(str(ref), got.commit, got.kind, out, list(got.files))
