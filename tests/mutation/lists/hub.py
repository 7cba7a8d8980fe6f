"""Mutation check of Hub publishing and fetching: does tests/test_hub.py catch plausible bugs?

Usage: python tests/mutation/run.py hub [--only SUBSTRING]

Each mutant is one textual patch (a plausible bug) applied to a temporary copy of the
repository (never the real files); tests/test_hub.py then runs against the copy, talking to
its fake Hub on loopback.  A mutant is killed when a test fails.  Prints one line per mutant
and the score.
"""

from __future__ import annotations

TESTS = ["tests/test_hub.py", "tests/test_paths.py"]
REPO_ID = "adapterkit/hub/repo_id.py"
REMOTE = "adapterkit/hub/remote.py"
PUSH = "adapterkit/hub/publish.py"
PULL = "adapterkit/hub/download.py"
CARD = "adapterkit/hub/card.py"
CLI = "adapterkit/cli/checkpoints.py"

# (name, file, old text, new text)
MUTANTS = [
    ("repo id: a local path no longer wins", REPO_ID, "    if os.path.lexists(Path(path)) or local_reason(path) is not None:\n        return None",
     "    if False:\n        return None"),
    ("repo id: ./ and an existing first part no longer mean a path", REPO_ID,
     "    if os.path.lexists(Path(path)) or local_reason(path) is not None:", "    if os.path.lexists(Path(path)):"),
    ("repo id: an existing first part no longer means a path", REPO_ID, "    if first and os.path.lexists(first):", "    if False:"),
    ("repo id: @revision dropped", REPO_ID, 'return RepoRef(m["repo"], m["rev"])', 'return RepoRef(m["repo"], None)'),
    ("names: '..' allowed", REMOTE, 'any(p in ("", ".", "..") for p in parts)', 'any(p in ("", ".") for p in parts)'),
    ("names: backslash allowed", REMOTE, '"\\\\" in name or ', ""),
    ("names: drive letter allowed", REMOTE, "_DRIVE.match(name)", "False"),
    ("names: not checked before downloading", REMOTE, "    for name in names:\n        check_name(name, ref)\n", ""),
    ("names: control characters above 31 (DEL, C1) allowed", REMOTE, 'any(unicodedata.category(c) == "Cc" for c in name)', "any(ord(c) < 32 for c in name)", ["tests/test_hub.py", "tests/test_hub_names.py"]),
    ("names: control characters allowed", REMOTE, 'or any(unicodedata.category(c) == "Cc" for c in name))', ")", ["tests/test_hub.py", "tests/test_hub_names.py"]),
    ("names: hidden only at the top level", REMOTE, 'return any(p.startswith(".") for p in name.split("/"))', 'return name.startswith(".")', ["tests/test_hub.py", "tests/test_hub_names.py"]),
    ("names: empty components allowed", REMOTE, 'any(p in ("", ".", "..") for p in parts)', 'any(p in (".", "..") for p in parts)', ["tests/test_hub.py", "tests/test_hub_names.py"]),
    ("names: '.' components allowed", REMOTE, 'any(p in ("", ".", "..") for p in parts)', 'any(p in ("", "..") for p in parts)', ["tests/test_hub.py", "tests/test_hub_names.py"]),
    ("names: shard names of the index not checked", REMOTE, "        check_name(str(shard), ref)\n", "", ["tests/test_hub.py", "tests/test_hub_names.py"]),
    ("fetch: a hidden top-level single file taken for the adapter", REMOTE, 'not n.startswith(("model", "."))', 'not n.startswith("model")', ["tests/test_hub.py", "tests/test_hub_names.py"]),
    ("checkpoint: hidden files below the top level fetched", REMOTE, "not _hidden(n) and not n.endswith(OTHER_WEIGHTS)", 'not n.startswith(".") and not n.endswith(OTHER_WEIGHTS)', ["tests/test_hub.py", "tests/test_hub_names.py"]),
    ("repo id: '..' and '--' inside allowed", REPO_ID, '_PART = r"(?!.*(?:--|\\.\\.))', '_PART = r"', ["tests/test_hub.py", "tests/test_hub_names.py"]),
    ("repo id: a name ending in .git accepted", REPO_ID, "(?<!\\.git)", "", ["tests/test_hub.py", "tests/test_hub_names.py"]),
    ("repo id: an absolute revision accepted", REPO_ID, "(?!/)(?!.*//)[^@", "[^@", ["tests/test_hub.py", "tests/test_hub_names.py"]),
    ("repo id: control characters in the revision", REPO_ID, "[^@\\s\\x00-\\x1f\\x7f\\\\]", "[^@\\s\\x00\\\\]", ["tests/test_hub.py", "tests/test_hub_names.py"]),
    ("repo id: '_' at either end refused (huggingface_hub accepts it)", REPO_ID, "[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?",
     "[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?", ["tests/test_hub.py", "tests/test_hub_names.py"]),
    ("errors: 403 not unauthorized", REMOTE, "if status in (401, 403):", "if status == 401:"),
    ("errors: 500 not unavailable", REMOTE, "(status >= 500 or status == 429)", "(status > 500 or status == 429)"),
    ("errors: connection refused not unavailable", REMOTE, "if status is None and _is_transport(exc):", "if False:"),
    ("errors: a missing revision called a missing repo", REMOTE, '("revision" if isinstance(exc, hf.RevisionNotFoundError) else', '("repo" if isinstance(exc, hf.RevisionNotFoundError) else'),
    ("errors: a failed download called offline", REMOTE, "if isinstance(exc, hf.LocalEntryNotFoundError) and cause is not None and cause is not exc:", "if False:"),
    ("settings: HF_HUB_OFFLINE ignored", REMOTE, 'offline = (env.get("HF_HUB_OFFLINE") or env.get("TRANSFORMERS_OFFLINE") or "").upper() in _TRUE', "offline = False"),
    ("settings: endpoint read at import time", REMOTE, 'endpoint = (env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")',
     "from huggingface_hub import constants as hf_constants\n    endpoint = hf_constants.ENDPOINT"),
    ("settings: HF_HUB_CACHE ignored", REMOTE, 'cache = Path(expand(env.get("HF_HUB_CACHE", env.get("HUGGINGFACE_HUB_CACHE", os.path.join(home, "hub")))))',
     'cache = Path(expand(env.get("HUGGINGFACE_HUB_CACHE", os.path.join(home, "hub"))))'),
    ("fetch: every file of the repo", REMOTE, "found = [n for n in names if PurePosixPath(n).name in ADAPTER_FILES and not _hidden(n)]",
     "found = [n for n in names if not _hidden(n)]"),
    ("fetch: other weights of a checkpoint too", REMOTE, "not n.endswith(OTHER_WEIGHTS)", "True"),
    ("fetch: shards of the index not fetched", REMOTE, "weights = [INDEX_NAME, *shards_of(INDEX_NAME)]", "weights = [INDEX_NAME]"),
    ("fetch: a shard the repo lacks not noticed", REMOTE, "        if shard not in names:", "        if False:"),
    ("fetch: token not passed to the listing", REMOTE, "api = HfApi(endpoint=s.endpoint, token=token)\n    with", "api = HfApi(endpoint=s.endpoint, token=None)\n    with"),
    ("fetch: token not passed to the download", REMOTE, "endpoint=s.endpoint, token=token))", "endpoint=s.endpoint, token=None))"),
    ("fetch: files downloaded from main, whatever the revision", REMOTE, 'revision=ref.revision or "main", cache_dir', 'revision="main", cache_dir'),
    ("offline: the revision's ref not read", REMOTE, "if commit is None and ref_file.is_file():", "if False:"),
    ("pull: links into the cache instead of files", PULL, "shutil.copyfile(got.root / name, target)", "os.symlink(os.path.realpath(got.root / name), target)"),
    ("pull: not checked before writing", PULL, "    _check(got.root, got.kind)\n", ""),
    ("pull: an existing output replaced without --overwrite", PULL, "if os.path.lexists(out) and not overwrite:", "if False:"),
    ("pull: checkpoint index not checked", PULL, "        open_checkpoint(root)", "        pass"),
    ("push: an Adapter in memory not validated", PUSH, "raise_first_error(structural_problems(adapter_or_path) + value_problems(adapter_or_path))", "pass"),
    ("push: a PEFT folder rewritten, not uploaded as is", PUSH, "if src is not None and src.name == WEIGHTS_NAME and (src.parent / CONFIG_NAME).is_file():", "if False:"),
    ("push: token not passed", PUSH, "api = api_for(token)", "api = api_for(None)"),
    ("push: --create-pr ignored", PUSH, "                                 create_pr=create_pr)", "                                 create_pr=False)"),
    ("push: branch not created", PUSH, '        if branch != "main":', "        if False:"),
    ("push: --private ignored", PUSH, "api.create_repo(repo_id, private=private, exist_ok=True)", "api.create_repo(repo_id, exist_ok=True)"),
    ("push --push-to: the merged README overwritten by the card", PUSH, "if p.is_file() and p.name != CARD_NAME:", "if p.is_file():"),
    ("card: relation merge for an adapter", CARD, 'front_matter(base_model=base, relation="adapter", tags=tags)', 'front_matter(base_model=base, relation="merge", tags=tags)'),
    ("card: library_name not peft", CARD, '"library_name: peft"', '"library_name: adapterkit"'),
    ("card: no kind tag", CARD, "tags = [kind.lower(), *", "tags = [*"),
    ("card: tensors counted, not parameters", CARD, "{adapter.parameter_count():,}", "{len(adapter.tensors):,}"),
    ("card: merge card marked adapter", CARD, 'front_matter(base_model=base_model, relation="merge"', 'front_matter(base_model=base_model, relation="adapter"'),
    ("cli: a repo id refused as a missing path", REPO_ID, "    if os.path.lexists(s) or as_repo(s) is not None:", "    if os.path.lexists(s):"),
    ("cli --push-to: base_model from the adapter even for a Hub base", PUSH,
     "base_model = ref.repo_id if ref is not None else (trained_on[0] if trained_on else None)", "base_model = trained_on[0] if trained_on else None"),
    ("cli --push-to: checked only after the merge", CLI, '        _check_push_to(push["repo_id"], out)\n', "        pass\n"),
]

DEFAULT_TESTS = TESTS
