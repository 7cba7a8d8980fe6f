"""Publishing to and fetching from the Hub, against a real HTTP server on loopback (tests/fake_hub.py).

huggingface_hub talks HTTP to the fake Hub exactly as it would to huggingface.co; nothing in
huggingface_hub or adapterkit is mocked.  Expected values come from first principles: the
bytes that were written, ΔW = (alpha / r)·B·A computed here, YAML parsed by PyYAML.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from fake_hub import FakeHub
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import adapterkit
from adapterkit import Adapter, IA3Config, LoraConfig
from adapterkit.cli import main
from adapterkit.errors import AdapterkitError

TOKEN = "hf_TopSecretToken0123456789"
Q_A, Q_B, V_A, V_B = (f"base_model.model.model.layers.0.{m}_proj.lora_{f}.weight" for m, f in
                      (("q", "A"), ("q", "B"), ("v", "A"), ("v", "B")))


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A fake Hub on 127.0.0.1, with huggingface_hub's environment pointed at it and at a cache in tmp_path."""
    from huggingface_hub import constants

    server = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))  # not HF_HOME/hub: the variable itself must be read
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # read at import; the env var is for a fresh process
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))  # no stored login of this machine
    yield server
    server.stop()


def run(*args, **env):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, env=env or None)


def lora_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {Q_A: torch.randn(2, 8, generator=g), Q_B: torch.randn(6, 2, generator=g),
            V_A: torch.randn(1, 8, generator=g), V_B: torch.randn(4, 1, generator=g)}


def make_lora(path: Path, base: str | None = "org/base") -> Path:
    """A LoRA of r=2 (v_proj r=1), alpha 4, in PEFT's directory layout."""
    config = LoraConfig(r=2, lora_alpha=4, target_modules=("q_proj", "v_proj"), rank_pattern={"v_proj": 1},
                        base_model_name_or_path=base)
    adapterkit.save(Adapter.from_tensors(config, lora_tensors()), path)
    return path


def base_weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"model.layers.0.q_proj.weight": torch.randn(6, 8, generator=g),
            "model.layers.0.v_proj.weight": torch.randn(4, 8, generator=g),
            "model.norm.weight": torch.randn(8, generator=g)}


def checkpoint_files(tmp_path: Path) -> dict[str, bytes]:
    """A two-shard checkpoint (index + shards + config) and weights a fetch must leave alone."""
    w = base_weights()
    parts = {"model-00001-of-00002.safetensors": ["model.layers.0.q_proj.weight"],
             "model-00002-of-00002.safetensors": ["model.layers.0.v_proj.weight", "model.norm.weight"]}
    files = {}
    for name, keys in parts.items():
        save_file({k: w[k] for k in keys}, tmp_path / name, metadata={"format": "pt"})
        files[name] = (tmp_path / name).read_bytes()
    index = {"metadata": {"total_size": sum(t.numel() * 4 for t in w.values())},
             "weight_map": {k: name for name, keys in parts.items() for k in keys}}
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    files["config.json"] = json.dumps({"model_type": "llama", "tie_word_embeddings": False}).encode()
    files["pytorch_model.bin"] = b"\0" * 4096  # other weights: never fetched
    files["model.gguf"] = b"\0" * 4096
    return files


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text[4:text.index("\n---\n", 4)])


def all_text(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def one_line_error(res, code: str) -> str:
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("adapterkit: error: ") and lines[0].endswith(f"[{code}]"), res.output
    return lines[0]


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# ----------------------------------------------------------------------------- push, pull, the card


def test_push_then_pull_gives_the_same_files_and_never_shows_the_token(hub, tmp_path):
    src = make_lora(tmp_path / "lora")
    hub.token = TOKEN  # the server refuses any request without it
    res = run("push", src, "org/lora", "--token", TOKEN, "--json")
    assert res.exit_code == 0, res.output
    pushed = json.loads(res.output)
    assert pushed["repo_id"] == "org/lora" and pushed["revision"] == "main"
    assert pushed["files"] == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert [c["repo"] for c in hub.commits] == ["org/lora"]  # one commit
    assert hub.files("org/lora")["adapter_model.safetensors"] == (src / "adapter_model.safetensors").read_bytes()

    res2 = run("pull", "org/lora", tmp_path / "out", "--token", TOKEN)
    assert res2.exit_code == 0, res2.output
    assert run("validate", "org/lora", HF_TOKEN=TOKEN).exit_code == 0  # the usual resolution: HF_TOKEN
    assert (tmp_path / "cache" / "models--org--lora" / "snapshots").is_dir()
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert not (out / name).is_symlink()
        assert (out / name).read_bytes() == (src / name).read_bytes()
    assert (out / "README.md").read_bytes() == hub.files("org/lora")["README.md"]
    assert adapterkit.validate(out) == []
    # the token went to the server, and nowhere else
    assert f"Bearer {TOKEN}" in hub.auth_seen
    for text in (res.output, res2.output):
        assert TOKEN not in text
    assert TOKEN.encode() not in all_text(tmp_path)
    assert all(TOKEN.encode() not in b for b in hub.files("org/lora").values())


def test_card_front_matter_and_body(hub, tmp_path):
    adapterkit.push(make_lora(tmp_path / "lora"), "org/lora")
    card = hub.files("org/lora")["README.md"].decode()
    meta = front_matter(card)
    assert meta["library_name"] == "peft"
    assert meta["base_model"] == "org/base"
    assert meta["base_model_relation"] == "adapter"
    assert {"lora", "adapterkit", "base_model:adapter:org/base"} <= set(meta["tags"])
    body = card[card.index("\n---\n", 4):]
    assert "LORA" in body and "`q_proj`, `v_proj`" in body
    assert "| ranks | 1 (1 module), 2 (1 module) |" in body
    assert f"| parameters | {2 * 8 + 6 * 2 + 1 * 8 + 4 * 1} |" in body  # r·(in + out) per module
    assert "| modules | 2 |" in body
    assert "How it was made: not recorded" in body  # made by PEFT (here: saved directly), no recipe


def test_card_of_a_combined_then_resized_adapter_says_how_it_was_made(hub, tmp_path):
    """The recipe records the inputs as given (a repo id stays a repo id, the token appears nowhere)."""
    hub.token = TOKEN
    make_lora(tmp_path / "lora")
    assert run("push", tmp_path / "lora", "org/lora", "--token", TOKEN).exit_code == 0
    res = run("combine", "org/lora", tmp_path / "lora", "--weights", "0.5,0.25", "--method", "cat", "-o", tmp_path / "c", HF_TOKEN=TOKEN)
    assert res.exit_code == 0, res.output
    assert run("resize", tmp_path / "c", tmp_path / "r", "--rank", "1").exit_code == 0
    assert run("push", tmp_path / "r", "org/r", "--token", TOKEN).exit_code == 0
    card = hub.files("org/r")["README.md"].decode()
    assert front_matter(card)["base_model"] == "org/base"
    section = card[card.index("## How it was made"):]
    steps = re.findall(r"^(\d+)\. (.*)$", section, re.M)
    assert [n for n, _ in steps] == ["1", "2"]
    assert steps[0][1].startswith("combine by cat of `org/lora` ×0.5, `" + str(tmp_path / "lora") + "` ×0.25")
    assert steps[1][1].startswith("resize to rank 1")
    with safe_open(str(tmp_path / "r" / "adapter_model.safetensors"), "pt") as f:
        recipe = json.loads(f.metadata()["adapterkit.recipe"])
    assert recipe[0]["inputs"] == ["org/lora", str(tmp_path / "lora")]
    assert TOKEN.encode() not in all_text(tmp_path)
    assert all(TOKEN.encode() not in b for b in hub.files("org/r").values())


def test_card_of_an_ia3_adapter_without_base_model(hub, tmp_path):
    ia3 = Adapter.from_tensors(IA3Config(target_modules=("k", "ff"), feedforward_modules=("ff",)), {
        "base_model.model.m.k.ia3_l": torch.ones(3, 1), "base_model.model.m.ff.ia3_l": torch.full((1, 5), 2.0)})
    result = adapterkit.push(ia3, "org/ia3", commit_message="first")
    files = hub.files("org/ia3")
    meta = front_matter(files["README.md"].decode())
    assert meta["library_name"] == "peft" and meta["base_model_relation"] == "adapter"
    assert "base_model" not in meta and {"ia3", "adapterkit"} <= set(meta["tags"])
    assert "| parameters | 8 |" in files["README.md"].decode()
    assert hub.commits[-1]["summary"] == "first" and result.commit == hub.repos["org/ia3"].branches["main"]
    # an Adapter in memory is published in PEFT's layout
    assert adapterkit.load("org/ia3") == ia3


def test_single_file_adapter_is_published_in_peft_layout(hub, tmp_path):
    make_lora(tmp_path / "lora")
    single = tmp_path / "lora.safetensors"
    run("convert", tmp_path / "lora", single)
    assert run("push", single, "org/single").exit_code == 0
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(hub.files("org/single"))
    assert adapterkit.load("org/single") == adapterkit.load(single)


def test_a_peft_written_folder_is_uploaded_bit_for_bit(hub, tmp_path):
    """Files as PEFT writes them (no adapterkit metadata) are uploaded as they are, not rewritten."""
    src = tmp_path / "peft"
    src.mkdir()
    save_file(lora_tensors(), src / "adapter_model.safetensors", metadata={"format": "pt"})
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"], "rank_pattern": {"v_proj": 1},
              "base_model_name_or_path": "org/base", "task_type": None}
    (src / "adapter_config.json").write_text(json.dumps(config, indent=3))
    assert run("push", src, "org/peft").exit_code == 0
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert hub.files("org/peft")[name] == (src / name).read_bytes()


def test_push_of_an_invalid_adapter_in_memory_uploads_nothing(hub):
    bad = Adapter.from_tensors(LoraConfig(r=2, lora_alpha=4, target_modules=("q_proj", "v_proj"), rank_pattern={"v_proj": 1}),
                               {**lora_tensors(), Q_A: torch.full((2, 8), float("inf"))})
    with pytest.raises(AdapterkitError) as info:
        adapterkit.push(bad, "org/bad")
    assert info.value.code == "non-finite" and hub.log == []


@pytest.mark.parametrize("breakage", ["nan", "shape"])
def test_push_of_an_invalid_adapter_uploads_nothing(hub, tmp_path, breakage):
    src = make_lora(tmp_path / "lora")
    tensors = load_file(src / "adapter_model.safetensors")
    if breakage == "nan":
        tensors[Q_A][0, 0] = float("nan")
    else:
        tensors[Q_B] = torch.zeros(6, 3)
    save_file(tensors, src / "adapter_model.safetensors", metadata={"format": "pt"})
    res = run("push", src, "org/bad")
    one_line_error(res, "non-finite" if breakage == "nan" else "shape-mismatch")
    assert hub.commits == [] and hub.log == []  # not even the repo was created
    with pytest.raises(AdapterkitError):
        adapterkit.push(src, "org/bad")
    assert hub.log == []


def test_push_to_a_branch_and_as_a_pull_request(hub, tmp_path):
    src = make_lora(tmp_path / "lora")
    assert run("push", src, "org/lora").exit_code == 0
    main_sha = hub.repos["org/lora"].branches["main"]
    tensors = lora_tensors()
    tensors[Q_A] = tensors[Q_A] * 2
    adapterkit.save(Adapter.from_tensors(adapterkit.load(src).config, tensors), tmp_path / "v2")
    res = run("push", tmp_path / "v2", "org/lora", "--revision", "dev", "--json")
    assert res.exit_code == 0 and json.loads(res.output)["revision"] == "dev"
    assert hub.repos["org/lora"].branches["main"] == main_sha  # main untouched
    assert hub.files("org/lora", "dev")["adapter_model.safetensors"] == (tmp_path / "v2" / "adapter_model.safetensors").read_bytes()
    res = run("push", tmp_path / "v2", "org/lora", "--create-pr", "--json")
    pr = json.loads(res.output)
    assert pr["revision"] == "refs/pr/1" and pr["pr_url"].endswith("/discussions/1")
    assert hub.repos["org/lora"].branches["main"] == main_sha
    assert adapterkit.load("org/lora@refs/pr/1") == adapterkit.load(tmp_path / "v2")
    assert adapterkit.load("org/lora") == adapterkit.load(src)


def test_push_refuses_a_bad_repo_id_before_reading(hub, tmp_path):
    src = make_lora(tmp_path / "lora")
    for bad in ("not a repo", "org/lora@main", "a/b/c"):
        one_line_error(run("push", src, bad), "argument-invalid")
    assert hub.log == []


# ----------------------------------------------------------------------------- errors from the server


@pytest.mark.parametrize(("status", "code"), [(401, "hub-unauthorized"), (403, "hub-unauthorized"), (404, "hub-not-found"),
                                              (500, "hub-unavailable")])
def test_server_errors_on_download_are_one_line(hub, tmp_path, status, code):
    hub.add("org/lora", {p.name: p.read_bytes() for p in make_lora(tmp_path / "lora").iterdir()})
    hub.fail(status, "revision")
    for args in (("info", "org/lora"), ("validate", "org/lora@main"), ("pull", "org/lora", tmp_path / "out")):
        line = one_line_error(run(*args, "--token", TOKEN) if args[0] == "pull" else run(*args), code)
        assert "org/lora" in line and TOKEN not in line
    assert not (tmp_path / "out").exists()
    with pytest.raises(AdapterkitError) as info:
        adapterkit.load("org/lora")
    assert info.value.code == code


def test_a_file_gone_while_downloading_is_not_called_offline(hub, tmp_path):
    """huggingface_hub reports a failed download as "not in the cache"; the Hub's answer is what is said."""
    hub.add("org/lora", {p.name: p.read_bytes() for p in make_lora(tmp_path / "lora").iterdir()})
    hub.fail(404, "resolve")
    line = one_line_error(run("validate", "org/lora"), "hub-not-found")
    assert "(404)" in line and "downloading" in line and "offline" not in line


@pytest.mark.parametrize(("status", "route", "code"), [(401, "create", "hub-unauthorized"), (500, "create", "hub-unavailable"),
                                                       (404, "preupload", "hub-not-found"), (401, "commit", "hub-unauthorized")])
def test_server_errors_on_upload_are_one_line(hub, tmp_path, status, route, code):
    src = make_lora(tmp_path / "lora")
    hub.fail(status, route)
    line = one_line_error(run("push", src, "org/lora", "--token", TOKEN), code)
    assert "org/lora" in line and TOKEN not in line
    assert hub.commits == []


def test_missing_repo_revision_and_connection_refused(hub, tmp_path, monkeypatch):
    hub.add("org/lora", {p.name: p.read_bytes() for p in make_lora(tmp_path / "lora").iterdir()})
    assert "no such repo" in one_line_error(run("info", "org/nothing"), "hub-not-found")
    assert "no such revision" in one_line_error(run("validate", "org/lora@v9"), "hub-not-found")
    monkeypatch.setenv("HF_ENDPOINT", closed_port())
    line = one_line_error(run("validate", "org/lora"), "hub-unavailable")
    assert "cannot reach the Hub" in line and "org/lora" in line
    one_line_error(run("push", tmp_path / "lora", "org/lora"), "hub-unavailable")


def test_a_repo_without_an_adapter(hub, tmp_path):
    hub.add("org/empty", {"notes.txt": b"hello"})
    one_line_error(run("validate", "org/empty"), "not-an-adapter")
    one_line_error(run("pull", "org/empty", tmp_path / "out"), "not-an-adapter")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- offline, hostile names, local paths


def test_offline_reads_the_cache_and_fails_clearly_without_it(hub, tmp_path, monkeypatch):
    src = make_lora(tmp_path / "lora")
    hub.add("org/lora", {p.name: p.read_bytes() for p in src.iterdir()})
    hub.add("org/other", {p.name: p.read_bytes() for p in src.iterdir()})
    assert run("validate", "org/lora").exit_code == 0  # online: fills the cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", closed_port())  # nothing may be asked of a server
    seen = len(hub.log)
    assert run("validate", "org/lora").exit_code == 0
    assert run("validate", "org/lora@main").exit_code == 0
    assert run("pull", "org/lora", tmp_path / "out").exit_code == 0
    assert (tmp_path / "out" / "adapter_model.safetensors").read_bytes() == (src / "adapter_model.safetensors").read_bytes()
    assert adapterkit.load("org/lora") == adapterkit.load(src)
    line = one_line_error(run("validate", "org/other"), "hub-offline")
    assert "org/other" in line and "HF_HUB_OFFLINE" in line
    one_line_error(run("validate", "org/lora@dev"), "hub-offline")
    one_line_error(run("push", src, "org/lora"), "hub-offline")
    assert len(hub.log) == seen


def test_an_adapter_in_a_subfolder_is_fetched_from_its_commit(hub, tmp_path):
    # the cache keeps one/adapter_config.json at snapshots/<commit>/one/: the commit is not the file's parent folder
    src = make_lora(tmp_path / "lora")
    hub.add("org/nested", {f"one/{p.name}": p.read_bytes() for p in src.iterdir()})
    assert run("validate", "org/nested").exit_code == 0
    res = run("pull", "org/nested", tmp_path / "out")
    assert res.exit_code == 0, res.output
    for p in src.iterdir():
        assert (tmp_path / "out" / "one" / p.name).read_bytes() == p.read_bytes()
    assert adapterkit.load("org/nested") == adapterkit.load(src)


@pytest.mark.parametrize("value", ["0", "false", "FALSE", "no", "off", ""])
def test_hf_hub_offline_set_to_a_false_value_still_fetches(hub, tmp_path, monkeypatch, value):
    # huggingface_hub reads HF_HUB_OFFLINE as true only for 1/ON/YES/TRUE (constants._is_true)
    src = make_lora(tmp_path / "lora")
    hub.add("org/lora", {p.name: p.read_bytes() for p in src.iterdir()})
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert adapterkit.load("org/lora") == adapterkit.load(src)  # the cache is empty: only the Hub can answer
    assert "adapter_model.safetensors" in hub.fetched()


def test_offline_a_commit_sha_revision_is_read_from_the_cache(hub, tmp_path, monkeypatch):
    src = make_lora(tmp_path / "lora")
    sha = hub.add("org/lora", {p.name: p.read_bytes() for p in src.iterdir()})
    assert run("validate", "org/lora").exit_code == 0  # online: fills snapshots/<sha>/ and refs/main
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", closed_port())
    seen = len(hub.log)
    assert adapterkit.load(f"org/lora@{sha}") == adapterkit.load(src)  # no refs/<sha> file: the sha is the snapshot
    assert run("validate", f"org/lora@{sha}").exit_code == 0
    one_line_error(run("validate", f"org/lora@{'0' * 40}"), "hub-offline")  # a sha the cache does not hold
    assert len(hub.log) == seen


@pytest.mark.parametrize("name", ["../evil", "/etc/evil", "a/../../evil", "dir\\..\\evil", "C:/evil", "a//evil", "./evil", "evil\x00.txt"])
def test_a_hostile_file_name_is_refused_before_anything_is_written(hub, tmp_path, monkeypatch, name):
    hub.add("org/lora", {p.name: p.read_bytes() for p in make_lora(tmp_path / "lora").iterdir()})
    hub.hostile["org/lora"] = [name]
    monkeypatch.chdir(tmp_path / "lora")
    before = sorted(p for p in tmp_path.rglob("*"))
    for args in (("pull", "org/lora", tmp_path / "out"), ("validate", "org/lora"), ("info", "org/lora")):
        one_line_error(run(*args), "hub-unsafe-path")
    assert sorted(p for p in tmp_path.rglob("*") if "hub" not in p.relative_to(tmp_path).parts[:2]) == \
        [p for p in before if "hub" not in p.relative_to(tmp_path).parts[:2]]
    assert hub.fetched() == []  # no file was downloaded at all
    assert not any("evil" in p.name for p in tmp_path.rglob("*"))


def test_an_existing_local_path_wins_over_a_repo_id(hub, tmp_path, monkeypatch):
    make_lora(tmp_path / "org" / "lora")
    monkeypatch.chdir(tmp_path)
    assert run("validate", "org/lora").exit_code == 0
    assert adapterkit.validate("org/lora") == []
    assert hub.log == []
    one_line_error(run("validate", "no-such-dir"), "file-not-found")
    assert hub.log == []


def test_pull_refuses_an_existing_folder_unless_overwrite(hub, tmp_path):
    hub.add("org/lora", {p.name: p.read_bytes() for p in make_lora(tmp_path / "lora").iterdir()})
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    one_line_error(run("pull", "org/lora", out), "output-exists")
    assert hub.log == [] and (out / "old.txt").exists()
    res = run("pull", "org/lora", out, "--overwrite", "--json")
    assert res.exit_code == 0 and json.loads(res.output)["kind"] == "adapter"
    assert sorted(os.listdir(out)) == ["adapter_config.json", "adapter_model.safetensors"]  # replaced whole
    one_line_error(run("pull", "not-a-repo", tmp_path / "x"), "usage")


def test_pull_validates_before_writing(hub, tmp_path):
    src = make_lora(tmp_path / "lora")
    files = {p.name: p.read_bytes() for p in src.iterdir()}
    tensors = load_file(src / "adapter_model.safetensors")
    tensors[V_B] = torch.zeros(4, 2)
    save_file(tensors, tmp_path / "bad.safetensors", metadata={"format": "pt"})
    files["adapter_model.safetensors"] = (tmp_path / "bad.safetensors").read_bytes()
    hub.add("org/bad", files)
    one_line_error(run("pull", "org/bad", tmp_path / "out"), "shape-mismatch")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- checkpoints: info, merge, pull, --push-to


def test_info_validate_and_merge_fetch_only_the_files_needed(hub, tmp_path):
    ckpt = checkpoint_files(tmp_path)
    hub.add("org/base", ckpt)
    adapter_files = {p.name: p.read_bytes() for p in make_lora(tmp_path / "lora").iterdir()}
    hub.add("org/lora", {**adapter_files, "optimizer.pt": b"\0" * 4096, "training_args.bin": b"\0" * 64})

    res = run("info", "org/base", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["kind"] == "model checkpoint" and data["tensors"] == 3 and data["parameters"] == 6 * 8 + 4 * 8 + 8
    assert run("validate", "org/lora@main").exit_code == 0
    res = run("merge", "org/base", "org/lora", tmp_path / "merged")
    assert res.exit_code == 0, res.output
    fetched = set(hub.fetched())
    assert fetched == {"model.safetensors.index.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                       "config.json", "adapter_config.json", "adapter_model.safetensors"}
    # the merge itself, from first principles: W + (alpha / r)·B·A
    t, w = lora_tensors(), base_weights()
    merged = {}
    for shard in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        merged.update(load_file(tmp_path / "merged" / shard))
    torch.testing.assert_close(merged["model.layers.0.q_proj.weight"], w["model.layers.0.q_proj.weight"] + (4 / 2) * t[Q_B] @ t[Q_A])
    torch.testing.assert_close(merged["model.layers.0.v_proj.weight"], w["model.layers.0.v_proj.weight"] + (4 / 1) * t[V_B] @ t[V_A])
    assert torch.equal(merged["model.norm.weight"], w["model.norm.weight"])


def test_pull_a_checkpoint_and_refuse_a_broken_index(hub, tmp_path):
    ckpt = checkpoint_files(tmp_path)
    hub.add("org/base", ckpt)
    res = run("pull", "org/base", tmp_path / "base", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["kind"] == "checkpoint"
    wanted = ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"]
    assert sorted(os.listdir(tmp_path / "base")) == wanted
    for name in wanted:
        assert (tmp_path / "base" / name).read_bytes() == ckpt[name]
    index = json.loads(ckpt["model.safetensors.index.json"])
    index["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors"  # disagrees with the shards
    hub.add("org/broken", {**ckpt, "model.safetensors.index.json": json.dumps(index).encode()})
    one_line_error(run("pull", "org/broken", tmp_path / "broken"), "checkpoint-invalid")
    assert not (tmp_path / "broken").exists()
    index["weight_map"]["model.norm.weight"] = "model-00003-of-00002.safetensors"  # a shard the repo lacks
    hub.add("org/broken", {**ckpt, "model.safetensors.index.json": json.dumps(index).encode()})
    line = one_line_error(run("pull", "org/broken", tmp_path / "broken"), "hub-not-found")
    assert "model-00003-of-00002.safetensors" in line and "does not hold" in line


@pytest.mark.parametrize("base_from_hub", [True, False])
def test_merge_push_to_publishes_with_a_merge_card(hub, tmp_path, base_from_hub):
    ckpt = checkpoint_files(tmp_path)
    hub.add("org/base", ckpt)
    local_base = tmp_path / "base"
    local_base.mkdir()
    for name, data in ckpt.items():
        if name not in ("pytorch_model.bin", "model.gguf"):
            (local_base / name).write_bytes(data)
    lora = make_lora(tmp_path / "lora", base="org/trained-on")
    base = "org/base" if base_from_hub else local_base
    res = run("merge", base, lora, tmp_path / "merged", "--push-to", "org/merged", "--token", TOKEN)
    assert res.exit_code == 0, res.output
    assert "pushed" in res.output and TOKEN not in res.output
    files = hub.files("org/merged")
    for p in (tmp_path / "merged").iterdir():
        if p.name != "README.md":
            assert files[p.name] == p.read_bytes(), p.name
    meta = front_matter(files["README.md"].decode())
    assert meta["base_model_relation"] == "merge" and meta["library_name"] == "peft"
    assert meta["base_model"] == ("org/base" if base_from_hub else "org/trained-on")
    assert "lora" in meta["tags"] and "adapterkit" in meta["tags"]
    # the Hub's model tree reads base_model:<relation>:<id>; a merged model's relation is merge, not adapter
    assert f"base_model:merge:{meta['base_model']}" in meta["tags"]
    assert not [t for t in meta["tags"] if t.startswith("base_model:adapter:")]
    assert "weight 1" in files["README.md"].decode()
    local_card = (tmp_path / "merged" / "README.md").read_text()  # OUT is not modified by the push
    assert "Merged with adapterkit" in local_card and "base_model_relation" not in local_card
    assert TOKEN.encode() not in all_text(tmp_path)


def test_merge_push_to_refusals_come_before_the_merge(hub, tmp_path):
    lora = make_lora(tmp_path / "lora")
    hub.add("org/base", checkpoint_files(tmp_path))
    one_line_error(run("merge", "org/base", lora, tmp_path / "m.safetensors", "--push-to", "org/merged"), "usage")
    one_line_error(run("merge", "org/base", lora, tmp_path / "m", "--push-to", "bad id"), "usage")
    assert hub.log == [] and not (tmp_path / "m").exists()


def test_python_api_accepts_repo_ids(hub, tmp_path):
    src = make_lora(tmp_path / "lora")
    result = adapterkit.push(src, "org/lora", private=True)
    assert hub.repos["org/lora"].private
    assert result.files == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert adapterkit.validate("org/lora@main") == []
    assert adapterkit.open_adapter("org/lora") == adapterkit.load(src)
    pulled = adapterkit.pull("org/lora", tmp_path / "out")
    assert pulled.kind == "adapter" and pulled.commit == result.commit
    hub.add("org/base", checkpoint_files(tmp_path))
    assert adapterkit.info("org/base")["tensors"] == 3
    report = adapterkit.merge("org/base", ["org/lora"], tmp_path / "merged")
    assert report.changed == 2
    back = adapterkit.unmerge(tmp_path / "merged", ["org/lora"], tmp_path / "back")
    assert back.changed == 2
    with pytest.raises(AdapterkitError) as info:
        adapterkit.pull("nonsense", tmp_path / "x")
    assert info.value.code == "argument-invalid"


def test_commands_accept_repo_ids(hub, tmp_path):
    src = make_lora(tmp_path / "lora")
    hub.add("org/lora", {p.name: p.read_bytes() for p in src.iterdir()})
    assert run("convert", "org/lora", tmp_path / "c.safetensors").exit_code == 0
    assert adapterkit.load(tmp_path / "c.safetensors") == adapterkit.load(src)
    assert run("check", "org/lora", "--for", "peft").exit_code == 0
    assert run("resize", "org/lora", tmp_path / "r", "--rank", "1").exit_code == 0
    assert run("combine", "org/lora", src, "--method", "cat", "-o", tmp_path / "cat").exit_code == 0
    assert run("push", "org/lora", "org/copy").exit_code == 0  # from one repo to another
    assert hub.files("org/copy")["adapter_model.safetensors"] == (src / "adapter_model.safetensors").read_bytes()


def test_help_of_push_and_pull_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from adapterkit.cli import main\n"
            "for cmd in ('push', 'pull'):\n"
            "    try: main([cmd, '--help'])\n"
            "    except SystemExit: pass\n"
            "assert 'torch' not in sys.modules and 'huggingface_hub' not in sys.modules, 'heavy import'\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert res.returncode == 0, res.stderr
    assert "adapterkit push my-lora me/my-lora" in res.stdout and "adapterkit pull org/my-lora my-lora" in res.stdout


HUB_ENVS = [
    {"HF_HOME": "{tmp}/home"},
    {"HF_HOME": "{tmp}/home", "HF_HUB_CACHE": "{tmp}/cache"},
    {"HUGGINGFACE_HUB_CACHE": "{tmp}/legacy"},
    {"HUGGINGFACE_HUB_CACHE": "{tmp}/legacy", "HF_HUB_CACHE": "{tmp}/cache"},
    {"XDG_CACHE_HOME": "{tmp}/xdg"},
    {"XDG_CACHE_HOME": "{tmp}/xdg", "HF_HOME": "$ADAPTERKIT_T/h"},
    {"HF_HUB_OFFLINE": "1"}, {"HF_HUB_OFFLINE": "true"}, {"HF_HUB_OFFLINE": "On"}, {"HF_HUB_OFFLINE": "YES"},
    {"HF_HUB_OFFLINE": "0"}, {"HF_HUB_OFFLINE": "no"}, {"HF_HUB_OFFLINE": ""},
    {"TRANSFORMERS_OFFLINE": "1"}, {"TRANSFORMERS_OFFLINE": "1", "HF_HUB_OFFLINE": "0"}, {"TRANSFORMERS_OFFLINE": "1", "HF_HUB_OFFLINE": ""},
]


@pytest.mark.parametrize("env", HUB_ENVS, ids=lambda e: ",".join(f"{k}={v.rsplit('/', 1)[-1]}" for k, v in e.items()))
def test_cache_and_offline_settings_are_huggingface_hubs(env, tmp_path, monkeypatch):
    """The cache folder and offline mode are what huggingface_hub itself computes from the same
    environment (its constants, read in a fresh interpreter since it reads them at import)."""
    import subprocess
    import sys

    from adapterkit.hub.remote import settings

    clean = {k: v for k, v in os.environ.items() if k not in (
        "HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    given = {k: v.replace("{tmp}", str(tmp_path)) for k, v in env.items()}
    full = {**clean, **given, "ADAPTERKIT_T": str(tmp_path / "t")}
    probe = "from huggingface_hub import constants as c; print(c.HF_HUB_CACHE); print(c.HF_HUB_OFFLINE)"
    cache, offline = subprocess.run([sys.executable, "-c", probe], env=full, capture_output=True, text=True, check=True).stdout.splitlines()
    for key in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {**given, "ADAPTERKIT_T": str(tmp_path / "t")}.items():
        monkeypatch.setenv(key, value)
    ours = settings()
    assert (str(ours.cache_dir), ours.offline) == (cache, offline == "True")


@pytest.mark.parametrize("kind", ["LOHA", "LOKR"])
def test_push_and_pull_loha_and_lokr(hub, tmp_path, kind):
    """LoHa and LoKr adapters (PEFT 0.22.0's files) push and pull byte for byte; the pulled
    adapter is the same kind, valid, with the same ΔW."""
    from peft import LoHaConfig, LoKrConfig, get_peft_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 20))
    config = (LoHaConfig(r=2, target_modules=["0"], init_weights=False) if kind == "LOHA"
              else LoKrConfig(r=1, decompose_both=True, target_modules=["0"], init_weights=False))
    get_peft_model(model, config).save_pretrained(tmp_path / "src")
    res = run("push", tmp_path / "src", f"org/{kind.lower()}", "--json")
    assert res.exit_code == 0, res.output
    assert run("pull", f"org/{kind.lower()}", tmp_path / "out").exit_code == 0
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "src" / name).read_bytes()
    pulled, source = adapterkit.load(tmp_path / "out"), adapterkit.load(tmp_path / "src")
    assert pulled.peft_type == kind and adapterkit.validate(tmp_path / "out") == []
    assert torch.equal(pulled.kind.delta(pulled, "0"), source.kind.delta(source, "0"))
