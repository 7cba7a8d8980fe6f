"""``push``: validate an adapter, write its model card, create the repo and upload, in one step.

Nothing is uploaded unless the adapter validates.  A PEFT directory is uploaded as its files
are (bit for bit); any other form (one .safetensors file, legacy .bin weights, an Adapter in
memory) is written in PEFT's directory layout first, so the repo loads with
``PeftModel.from_pretrained``.  A token is passed to huggingface_hub and never printed or
written.  ``push_merged`` publishes the checkpoint folder a merge wrote (``merge --push-to``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..adapter import Adapter
from ..errors import ArgumentError
from .card import adapter_card, merged_card
from .remote import CARD_NAME, api_for, translated
from .repo_id import as_repo, parse_repo_id


@dataclass
class PushResult:
    """What was published: the repo, the branch or PR revision, the commit and the files."""

    repo_id: str
    revision: str
    commit: str
    url: str
    pr_url: str | None = None
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"repo_id": self.repo_id, "revision": self.revision, "commit": self.commit, "url": self.url,
                "pr_url": self.pr_url, "files": self.files}


def target_repo(repo_id: str) -> str:
    """``repo_id`` if it names a repo (``org/name``, no ``@revision``: that is ``revision=``)."""
    ref = parse_repo_id(repo_id)
    if ref is None or ref.revision is not None:
        raise ArgumentError("not a repo id to publish to", key="repo_id", expected="org/name (the branch goes in --revision)",
                            actual=repr(str(repo_id)))
    return ref.repo_id


def _checked(adapter_or_path: Adapter | str | Path, adapter_name: str | None, token: str | None) -> Adapter:
    """The adapter, after every check of ``validate`` (values too); raises the first error."""
    from ..io.checks import raise_first_error, structural_problems, value_problems
    from ..validation import validate
    from .paths import load, local_path

    if isinstance(adapter_or_path, Adapter):
        raise_first_error(structural_problems(adapter_or_path) + value_problems(adapter_or_path))
        return adapter_or_path
    local = local_path(adapter_or_path, "adapter", token=token)
    raise_first_error(validate(local, adapter_name=adapter_name))
    return load(local, adapter_name=adapter_name)


def _stage(adapter: Adapter, folder: Path) -> None:
    """The adapter's files in PEFT's layout under ``folder``: copied when it is one already."""
    from ..io.reader import CONFIG_NAME, WEIGHTS_NAME
    from ..io.writer import save

    src = adapter.source
    if src is not None and src.name == WEIGHTS_NAME and (src.parent / CONFIG_NAME).is_file():
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            shutil.copyfile(src.parent / name, folder / name)
    else:
        save(adapter, folder / "adapter", form="dir", durable=False)
        for p in (folder / "adapter").iterdir():
            p.rename(folder / p.name)
        (folder / "adapter").rmdir()


def upload(folder: Path, repo_id: str, *, private: bool = False, revision: str | None = None, commit_message: str,
           create_pr: bool = False, token: str | None = None) -> PushResult:
    """Create ``repo_id`` (kept if it exists) and the branch ``revision``, then commit every
    file of ``folder`` in one commit (or one pull request)."""
    repo_id = target_repo(repo_id)
    api = api_for(token)
    branch = revision or "main"
    with translated(repo_id, "creating the repo"):
        api.create_repo(repo_id, private=private, exist_ok=True)
        if branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True)
    with translated(f"{repo_id}@{branch}", "uploading"):
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=branch, commit_message=commit_message,
                                 create_pr=create_pr)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return PushResult(repo_id, info.pr_revision or branch, info.oid, info.commit_url, info.pr_url, files)


def push(adapter_or_path: Adapter | str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
         commit_message: str | None = None, create_pr: bool = False, token: str | None = None,
         adapter_name: str | None = None) -> PushResult:
    """Publish an adapter to the Hub: validate it (an invalid adapter uploads nothing), write a
    model card (``README.md``), create ``repo_id`` if needed and upload in one commit.

    Args:
        adapter_or_path: an :class:`Adapter`, a path, or a repo id to copy from.
        repo_id: ``org/name`` to publish to.
        private: create the repo private (an existing repo keeps its visibility).
        revision: the branch to commit to (created from main if missing); default main.
        commit_message: default "Upload <kind> adapter with adapterkit".
        create_pr: open a pull request instead of committing to the branch.
        token: a Hub token; default huggingface_hub's (HF_TOKEN, the stored login).  Never printed.
        adapter_name: the subfolder of a folder holding several adapters.

    Raises:
        AdapterkitError: the adapter's first validation error; ArgumentError for a bad repo id;
        HubError (hub-unauthorized, hub-not-found, hub-unavailable, hub-offline, hub-error).
    """
    target = target_repo(repo_id)
    adapter = _checked(adapter_or_path, adapter_name, token)
    with tempfile.TemporaryDirectory(prefix="adapterkit-push-") as tmp:
        folder = Path(tmp)
        _stage(adapter, folder)
        (folder / CARD_NAME).write_text(adapter_card(adapter, target), encoding="utf-8")
        return upload(folder, target, private=private, revision=revision, create_pr=create_pr, token=token,
                      commit_message=commit_message or f"Upload {adapter.peft_type} adapter with adapterkit")


def upload_merged(folder: Path, repo_id: str, card: str, *, token: str | None = None, private: bool = False,
                  revision: str | None = None, commit_message: str = "Upload merged checkpoint with adapterkit") -> PushResult:
    """Publish a merged checkpoint folder (what ``merge_checkpoint`` wrote) with ``card`` as its
    README.md; the folder itself is not modified (its files are uploaded from a staged copy of links)."""
    target = target_repo(repo_id)
    with tempfile.TemporaryDirectory(prefix="adapterkit-push-") as tmp:
        staged = Path(tmp)
        for p in sorted(folder.rglob("*")):
            if p.is_file() and p.name != CARD_NAME:
                dest = staged / p.relative_to(folder)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(p.resolve(), dest)
        (staged / CARD_NAME).write_text(card, encoding="utf-8")
        return upload(staged, target, private=private, revision=revision, commit_message=commit_message, token=token)


def push_merged(base: str | Path, report: Any, repo_id: str, *, token: str | None = None, private: bool = False) -> PushResult:
    """Publish the checkpoint folder a merge wrote (``report``: what ``merge_checkpoint`` returned
    for ``base``) to ``repo_id`` with a card marked ``base_model_relation: merge`` (``merged_card``),
    the README.md the merge wrote after it.  The card's base_model is the base's repo id when the
    base is one, else the base model the first adapter records (None when none does).

    Raises:
        ArgumentError: ``repo_id`` is not a repo id (see ``target_repo``).
        HubError: the Hub refused or failed.
    """
    ref = as_repo(base)
    trained_on = [a["base_model"] for a in report.adapters if a.get("base_model")]
    base_model = ref.repo_id if ref is not None else (trained_on[0] if trained_on else None)
    readme = Path(report.out) / CARD_NAME
    card = merged_card(base_model, report.adapters, repo_id, readme.read_text(encoding="utf-8") if readme.is_file() else "")
    return upload_merged(Path(report.out), repo_id, card, token=token, private=private)
