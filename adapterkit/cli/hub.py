"""The commands of the Hugging Face Hub: ``push`` and ``pull`` (``merge --push-to`` is in checkpoints)."""

from __future__ import annotations

from pathlib import Path

import click

from .conventions import INPUT, _plural, _require, adapter_name_option, handles_errors, print_json


@click.command(short_help="Publish an adapter to the Hugging Face Hub: validate, write a card, upload.")
@click.argument("adapter", type=INPUT)
@click.argument("repo_id")
@adapter_name_option
@click.option("--private", is_flag=True, help="Create the repo private (an existing repo keeps its visibility).")
@click.option("--revision", default=None, metavar="BRANCH", help="Commit to this branch (created from main if missing).")
@click.option("--commit-message", default=None, help="The commit message (default: Upload <KIND> adapter with adapterkit).")
@click.option("--create-pr", is_flag=True, help="Open a pull request instead of committing to the branch.")
@click.option("--token", default=None, help="Hub token (default: HF_TOKEN or the stored login); never printed.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handles_errors
def push(adapter: Path, repo_id: str, adapter_name: str | None, private: bool, revision: str | None, commit_message: str | None,
         create_pr: bool, token: str | None, as_json: bool) -> None:
    """Validate the adapter at ADAPTER (a path, or a repo id to copy), write a model card
    (README.md: library_name peft, base_model, base_model_relation adapter, tags; kind, targets,
    ranks, parameters) and upload both to the Hub repo REPO_ID in one commit, creating the repo
    if needed.  An invalid adapter uploads nothing.  HF_ENDPOINT selects the server.

    \b
    Examples:
      adapterkit push my-lora me/my-lora
      adapterkit push my-lora.safetensors me/my-lora --private --revision dev
      adapterkit push my-lora me/my-lora --create-pr --commit-message "rank 16" --json
    """
    adapter = _require(adapter)
    from ..hub.publish import push as run
    from ..hub.publish import target_repo

    target_repo(repo_id)  # a bad repo id is refused before the adapter is read
    result = run(adapter, repo_id, private=private, revision=revision, commit_message=commit_message, create_pr=create_pr,
                 token=token, adapter_name=adapter_name)
    if as_json:
        print_json(result.to_dict())
    else:
        where = f"pull request {result.pr_url}" if result.pr_url else result.url
        click.echo(f"pushed {adapter} to {result.repo_id}@{result.revision} ({_plural(len(result.files), 'file')}, "
                   f"commit {result.commit[:12]}): {where}")


@click.command(short_help="Download an adapter or checkpoint from the Hub into a plain folder, checked.")
@click.argument("repo")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace OUT whole if it exists.")
@click.option("--token", default=None, help="Hub token (default: HF_TOKEN or the stored login); never printed.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handles_errors
def pull(repo: str, out: Path, overwrite: bool, token: str | None, as_json: bool) -> None:
    """Download the adapter (or model checkpoint) of the Hub repo REPO (org/name or
    org/name@revision) into the folder OUT: only the files needed (adapter files; or the index,
    its shards and the non-weight files), as plain files, validated before OUT appears.
    HF_HUB_OFFLINE=1 reads the standard cache only.

    \b
    Examples:
      adapterkit pull org/my-lora my-lora
      adapterkit pull org/my-lora@v2 my-lora --overwrite --json
      adapterkit pull org/merged-model merged
    """
    from ..hub.repo_id import parse_repo_id

    if parse_repo_id(repo) is None:
        raise click.BadParameter(f"{repo!r} is not a repo id such as org/name or org/name@revision", param_hint="REPO")
    from ..hub.download import pull as run

    result = run(repo, out, overwrite=overwrite, token=token)
    if as_json:
        print_json(result.to_dict())
    else:
        click.echo(f"pulled {result.repo} (commit {result.commit[:12]}, {result.kind}) into {result.out}: "
                   f"{_plural(len(result.files), 'file')}")
