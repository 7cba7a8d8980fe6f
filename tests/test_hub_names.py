"""The Hub's names off the common path: what counts as a repo id, and which remote file names
are refused before anything is downloaded or written.

Oracles: ``huggingface_hub.utils.validate_repo_id`` (what huggingface_hub itself accepts as a
repo id), git's rule that a ref holds no control character, and first principles for file
names (a name the Hub lists must stay a relative POSIX path inside the download folder, with
no control character a terminal could act on).  End-to-end cases talk to tests/fake_hub.py.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_hub import FakeHub
from hypothesis import example, given
from hypothesis import strategies as st

import adapterkit
from adapterkit import Adapter, LoraConfig
from adapterkit.cli import main
from adapterkit.errors import AdapterkitError
from adapterkit.hub.remote import adapter_files, check_name, checkpoint_files, index_shards
from adapterkit.hub.repo_id import as_repo, parse_repo_id


def hf_accepts(repo_id: str) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return False
    return True


# ----------------------------------------------------------------------------- repo ids


REPO_IDS = [
    "org/name", "org/a..b", "org/..", "../name", "a..b/name", "org/a--b", "org/name.git", "org/name.gi", "org/.git",
    "_org/name", "org/name_", "org/_", "org/-name", "org/name-", "org/.name", "org/name.", "org/n.a-m_e", "a" * 96 + "/b",
    "a" * 97 + "/b", "org/" + "b" * 96, "org/" + "b" * 97, "org/na me", "org/na\x01me", "org/name\x7f", "org/é", "org/",
    "/name", "org/na\\me", "org/na\x00me",
]


@pytest.mark.parametrize("text", REPO_IDS)
def test_a_repo_id_is_what_huggingface_hub_accepts(text):
    assert (parse_repo_id(text) is not None) == hf_accepts(text), repr(text)


@given(st.text(alphabet="ab9_-./\\é\x01 ", min_size=1, max_size=12).filter(lambda s: s.count("/") == 1))
@example("a/b.git")
@example("_/_")
@example("a./b")
@example("a/.b")
def test_repo_id_shapes_agree_with_huggingface_hub(text):
    """Every ``namespace/name`` (no revision): ours exactly when huggingface_hub's validator passes."""
    assert (parse_repo_id(text) is not None) == hf_accepts(text), repr(text)


@pytest.mark.parametrize("c", ["\x01", "\x08", "\x0e", "\x1b", "\x1f", "\x7f", "\t", "\n"])
def test_a_revision_with_a_control_character_is_not_a_repo_id(c, tmp_path, monkeypatch):
    """git refuses control characters in a ref name, so no Hub revision holds one."""
    monkeypatch.chdir(tmp_path)
    for text in (f"org/name@main{c}", f"org/name@{c}main", f"org/name@refs/pr/{c}1"):
        assert parse_repo_id(text) is None and as_repo(text) is None, repr(text)
    assert parse_repo_id("org/name@refs/pr/1").revision == "refs/pr/1"


@pytest.mark.parametrize("text", ["org/name@/etc/passwd", "org/name@main/", "org/name@refs//pr/1", "org/name@/"])
def test_a_revision_is_a_relative_ref(text, tmp_path, monkeypatch):
    """git refuses a ref starting or ending with '/' or holding '//'; offline, the revision names a
    file under the cache's refs/ folder, so an absolute one must never get there."""
    monkeypatch.chdir(tmp_path)
    assert parse_repo_id(text) is None and as_repo(text) is None
    assert parse_repo_id("org/name@refs/pr/1").revision == "refs/pr/1"
    assert parse_repo_id("org/name@v1.0-rc_2").revision == "v1.0-rc_2"


@pytest.mark.parametrize("text", ["org/a..b", "org/name@v..1", "org/name@a/../b", "org/name@../x", "org/..@main"])
def test_dotdot_anywhere_is_not_a_repo_id(text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_repo_id(text) is None and as_repo(text) is None


# ----------------------------------------------------------------------------- remote file names


def _refused(name: str) -> AdapterkitError:
    with pytest.raises(AdapterkitError) as err:
        check_name(name, "org/x")
    assert err.value.code == "hub-unsafe-path" and err.value.path == "org/x"
    return err.value


CONTROL = [chr(i) for i in (*range(0, 32), 127, 0x85, 0x9B)]


@pytest.mark.parametrize("c", CONTROL, ids=[f"U+{ord(c):04X}" for c in CONTROL])
def test_a_control_character_anywhere_in_a_name_is_refused(c):
    assert unicodedata.category(c) == "Cc"
    for name in (f"adapter{c}.json", f"sub{c}/adapter_config.json", f"sub/x{c}", c):
        err = _refused(name)
        assert c not in str(err)  # the key shows the name escaped: nothing reaches the terminal raw


HOSTILE = {
    "empty": "", "absolute": "/etc/passwd", "absolute nested": "/sub/adapter_config.json", "drive": "C:evil",
    "drive with slash": "c:/evil", "backslash": "sub\\adapter_config.json", "backslash traversal": "..\\evil",
    "dotdot": "..", "dotdot first": "../evil", "dotdot inside": "sub/../../evil", "dotdot last": "sub/..",
    "dot": ".", "dot first": "./evil", "dot inside": "sub/./evil", "empty inside": "sub//evil",
    "empty last": "sub/", "only slashes": "//",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_name_leaving_the_folder_is_refused(case):
    _refused(HOSTILE[case])


@pytest.mark.parametrize("name", ["adapter_config.json", "sub/adapter_model.safetensors", "a.b/c..d", "x/.hidden",
                                  ".gitattributes", "データ/adapter_config.json", "a b/c", "..x", "x..", "C/evil"])
def test_ordinary_names_pass(name):
    assert check_name(name, "org/x") == name


def test_hidden_folders_below_the_top_level_are_never_fetched():
    """A component starting with '.' at any depth hides the file (notebook checkpoints, caches)."""
    top = ["adapter_config.json", "adapter_model.safetensors"]
    hidden = ["runs/.ipynb_checkpoints/adapter_config.json", "runs/.ipynb_checkpoints/adapter_model.safetensors",
              "a/b/.cache/adapter_model.bin", ".git/adapter_config.json"]
    assert adapter_files([*top, *hidden, "README.md"]) == sorted([*top, "README.md"])
    assert adapter_files(hidden) == []
    assert adapter_files([".trash.safetensors", "mine.safetensors", "sub/other.safetensors"]) == ["mine.safetensors"]  # single files
    named = ["second/adapter_config.json", "second/adapter_model.safetensors"]
    assert adapter_files([*named, *hidden]) == named
    files = ["model.safetensors", "config.json", "tokenizer/vocab.json", "tokenizer/.cache/vocab.json.lock", ".cache/x",
             "a/.b/c.json", ".gitattributes"]
    assert checkpoint_files(files, lambda index: []) == ["config.json", "model.safetensors", "tokenizer/vocab.json"]


@pytest.mark.parametrize("shard", ["../model-00001-of-00001.safetensors", "sub/../../x.safetensors", "/abs.safetensors",
                                   "sub\\x.safetensors", "x\x1b[2J.safetensors", ""])
def test_an_index_naming_a_shard_outside_the_folder_is_refused(shard, tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": shard}}), encoding="utf-8")
    with pytest.raises(AdapterkitError) as err:
        index_shards(index, "org/x", ["model.safetensors.index.json", shard])
    assert err.value.code == "hub-unsafe-path"


# ----------------------------------------------------------------------------- end to end, against the fake Hub


@pytest.fixture
def hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    server = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    monkeypatch.chdir(tmp_path)
    yield server
    server.stop()


def lora_files(tmp_path: Path) -> dict[str, bytes]:
    import torch

    g = torch.Generator().manual_seed(0)
    tensors = {"base_model.model.m.q.lora_A.weight": torch.randn(2, 4, generator=g),
               "base_model.model.m.q.lora_B.weight": torch.randn(3, 2, generator=g)}
    path = adapterkit.save(Adapter.from_tensors(LoraConfig(r=2, lora_alpha=2, target_modules=("q",)), tensors), tmp_path / "src")
    return {p.name: p.read_bytes() for p in path.iterdir()}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("name", ["evil\x1b[2J.txt", "sub/evil\x7f", "a/\x85b", "evil/", "sub\\evil"])
def test_pull_refuses_a_listing_with_a_hostile_name_and_writes_nothing(hub, tmp_path, name):
    hub.add("org/lora", lora_files(tmp_path))
    hub.hostile["org/lora"] = [name]
    res = run("pull", "org/lora", tmp_path / "out")
    assert res.exit_code == 2 and res.output.rstrip().endswith("[hub-unsafe-path]"), res.output
    assert "\x1b" not in res.output and "\x7f" not in res.output and "\x85" not in res.output
    assert not (tmp_path / "out").exists() and hub.fetched() == []


def test_pull_leaves_hidden_folders_below_the_top_level(hub, tmp_path):
    files = lora_files(tmp_path)
    hub.add("org/lora", {**files, **{f"runs/.ipynb_checkpoints/{k}": v for k, v in files.items()}, "a/.cache/x.lock": b""})
    res = run("pull", "org/lora", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*")) == sorted(files)
    assert sorted(hub.fetched()) == sorted(files)


def test_a_repo_id_huggingface_hub_refuses_is_a_local_path_and_never_asked(hub, tmp_path):
    for text in ("org/lora.git", "org/a..b", "org/lora@main\x01"):
        res = run("info", text)
        assert res.exit_code == 2 and "[file-not-found]" in res.output, (text, res.output)
    assert hub.log == []
