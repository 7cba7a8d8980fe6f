"""Repo ids given where a path is accepted: ``org/name`` or ``org/name@revision``.

An existing local path always wins; anything else of that shape names a model repo on the
Hub.  Pure string work: no network, no torch, no huggingface_hub.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

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


def as_repo(path: str | os.PathLike[str]) -> RepoRef | None:
    """The repo that ``path`` names, or None when it is a local path: an existing file or
    folder (or a dangling link) always wins over a repo id of the same spelling."""
    if isinstance(path, RepoRef):
        return path
    if os.path.lexists(Path(path)):
        return None
    return parse_repo_id(path)
