"""Publishing adapters to and fetching them from the Hugging Face Hub.

``push`` validates an adapter, writes a model card and uploads it; ``pull`` downloads an
adapter or a checkpoint into a plain folder and checks it; ``local_path`` turns a repo id
(``org/name[@revision]``) given where a path is accepted into a folder of the standard
cache, downloading only the files needed.  Network code lives here only (``io`` never
reaches the network); ``huggingface_hub`` is imported on first use.
"""

from __future__ import annotations

from .paths import local_path
from .repo_id import RepoRef, parse_repo_id

__all__ = ["RepoRef", "local_path", "parse_repo_id", "pull", "push"]


def __getattr__(name: str):
    if name == "push":
        from .publish import push

        return push
    if name == "pull":
        from .download import pull

        return pull
    raise AttributeError(f"module 'adapterkit.hub' has no attribute {name!r}")
