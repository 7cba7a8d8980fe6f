"""Repo ids given where a path is accepted: ``org/name`` or ``org/name@revision``.

Paths come first.  Text is a local path, never a repo id, when it exists, when it starts with
``./``, ``../``, ``/`` or ``~`` (or is ``.``/``..``), or when its first component exists here
(``runs/lorra`` beside a folder ``runs``: a typo, not a Hub repo).  Only the rest, when it has
the shape, names a model repo on the Hub.  A missing local path is ``file-not-found``
(:func:`missing_path`), mentioning the repo-id reading where the text also parses as one, and
is never looked up on the Hub.  Pure string work and ``lstat``: no network, no torch, no
huggingface_hub.

A ``pathlib.Path`` forgets a leading ``./`` (``Path("./org/name")`` is ``org/name``): callers
that hold the user's text (the CLI) decide on the text, before making it a ``Path``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import NotFoundError

# the Hub's rule for a namespace and a repo name: letters, digits, '-', '_', '.'; no '--' or '..',
# not starting or ending with '-' or '.', not ending with '.git'; at most 96 characters each
# (huggingface_hub.utils.validate_repo_id).  A revision is a git ref: no control character, no
# '/' first, last or doubled (an absolute revision would name a file outside the cache offline).
_PART = r"(?!.*(?:--|\.\.))[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"(?P<repo>{_PART}/{_PART})(?<!\.git)(?:@(?P<rev>(?!/)(?!.*//)[^@\s\x00-\x1f\x7f\\]+(?<!/)))?")


@dataclass(frozen=True)
class RepoRef:
    """A model repo on the Hub and the revision asked for (None: the default branch)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo_id if self.revision is None else f"{self.repo_id}@{self.revision}"


def parse_repo_id(text: str | os.PathLike[str]) -> RepoRef | None:
    """``RepoRef`` when ``text`` has the shape of a repo id, else None (no look-up is made).

    ``org/name@refs/pr/1`` keeps the slashes of the revision; an empty revision is not a repo id."""
    m = _REPO_ID.fullmatch(os.fspath(text))
    if m is None:
        return None
    return RepoRef(m["repo"], m["rev"])


def local_reason(text: str | os.PathLike[str]) -> str | None:
    """Why ``text`` is a local path whatever its shape (see the module doc), or None when it
    may name a repo.  An existing path is local too, but is not reported here."""
    s = os.fspath(text)
    for prefix in ("./", "../", "/", "~"):
        if s.startswith(prefix):
            return f"it starts with {prefix!r}"
    if s in (".", ".."):
        return "it is a folder"
    first = s.split("/", 1)[0]
    if first and os.path.lexists(first):
        return f"{first!r} exists here"
    return None


def as_repo(path: str | os.PathLike[str]) -> RepoRef | None:
    """The repo that ``path`` names, or None when it is a local path: an existing file or
    folder (or a dangling link) always wins over a repo id of the same spelling, and so does
    text that :func:`local_reason` reads as a path."""
    if isinstance(path, RepoRef):
        return path
    if os.path.lexists(Path(path)) or local_reason(path) is not None:
        return None
    return parse_repo_id(path)


def missing_path(text: str | os.PathLike[str]) -> NotFoundError | None:
    """``file-not-found`` for ``text`` when it is a local path that does not exist (None when it
    exists or is a repo id to look up); the message says why it was not read as a repo id
    where it also has that shape."""
    s = os.fspath(text)
    if os.path.lexists(s) or as_repo(s) is not None:
        return None
    if s.startswith("./") and parse_repo_id(s[2:]) is not None:
        return NotFoundError(f"no such file or directory (a local path: it starts with './'; to fetch the Hub repo {s[2:]}, drop the './')",
                             path=s)
    if parse_repo_id(s) is not None:
        return NotFoundError(f"no such file or directory (a local path, not the Hub repo id {s}: {local_reason(s)})", path=s)
    return NotFoundError("no such file or directory", path=s)
