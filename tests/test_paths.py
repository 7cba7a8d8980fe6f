"""Paths before repo ids (adapterkit/hub/repo_id.py): text that is a path by its shape, or whose
first part exists here, is never looked up on the Hub; a missing one is `file-not-found`.

Against the fake Hub of tests/fake_hub.py with HF_HUB_OFFLINE unset: its request log must stay
empty, so a look-up would be seen (and not merely fail offline).
"""

from __future__ import annotations

import os

import pytest
from test_hub import hub as hub_fixture
from test_hub import make_lora, one_line_error, run

import adapterkit
from adapterkit.errors import AdapterkitError
from adapterkit.hub.repo_id import RepoRef, as_repo

hub = hub_fixture  # the fake Hub of test_hub.py


@pytest.mark.parametrize(("text", "local"), [
    ("org/name", False), ("org/name@v2", False), ("./org/name", True), ("../org/name", True), ("/org/name", True),
    ("~/org/name", True), ("runs/lorra", True), ("runs/lorra@main", True), ("nope", True),
])
def test_which_texts_are_repo_ids(tmp_path, monkeypatch, text, local):
    from adapterkit.hub.repo_id import local_reason

    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    ref = as_repo(text)
    assert (ref is None) == local, ref
    if not local:
        assert isinstance(ref, RepoRef)
    assert (local_reason(text) is not None) == (local and text != "nope")


def test_a_typo_under_an_existing_folder_is_file_not_found_not_a_hub_lookup(hub, tmp_path, monkeypatch):
    base = tmp_path / "base"
    base.mkdir()
    make_lora(tmp_path / "runs" / "lora")
    monkeypatch.chdir(tmp_path)
    assert "HF_HUB_OFFLINE" not in os.environ
    line = one_line_error(run("merge", "base", "runs/lorra", "out"), "file-not-found")
    assert "runs/lorra" in line and "not the Hub repo id runs/lorra" in line and "'runs' exists here" in line
    line = one_line_error(run("validate", "runs/lorra"), "file-not-found")
    with pytest.raises(AdapterkitError) as err:
        adapterkit.load("runs/lorra")
    assert err.value.code == "file-not-found" and "not the Hub repo id" in str(err.value)
    assert hub.log == []


@pytest.mark.parametrize("text", ["./nope/adapter", "./org/name", "../nope/adapter", "/no/such/org", "~/no-such-folder-here/x"])
def test_a_path_by_its_shape_is_never_a_repo_id(hub, tmp_path, monkeypatch, text):
    monkeypatch.chdir(tmp_path)
    for args in (["info", text], ["validate", text], ["convert", text, "out"], ["resize", text, "out", "--rank", "1"],
                 ["merge", text, "x", "out"]):
        one_line_error(run(*args), "file-not-found")
    with pytest.raises(AdapterkitError) as err:
        adapterkit.load(text)
    assert err.value.code == "file-not-found"
    assert hub.log == []


def test_dot_slash_before_a_repo_id_says_how_to_reach_the_hub(hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(run("info", "./org/name"), "file-not-found")
    assert "to fetch the Hub repo org/name, drop the './'" in line
    assert hub.log == []


def test_a_repo_id_with_nothing_local_is_still_fetched(hub, tmp_path, monkeypatch):
    hub.add("org/lora", {p.name: p.read_bytes() for p in make_lora(tmp_path / "src" / "lora").iterdir()})
    monkeypatch.chdir(tmp_path)
    assert run("validate", "org/lora").exit_code == 0
    assert hub.log != []
