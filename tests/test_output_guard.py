"""The output guard (adapterkit/io/outputs.py): no command, and no library writer, writes over,
into or around an input it reads, with or without --overwrite.

Every writing command × every input role × {OUT is the input, OUT lies inside it, OUT holds it}:
exit 2 with `[overwrite-input]` naming OUT, the input and its role, and every input left byte
for byte as it was (expected values from first principles: the bytes on disk before the call).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import adapterkit
from adapterkit import Adapter, LoraConfig
from adapterkit.cli import main
from adapterkit.errors import AdapterkitError
from adapterkit.ops.merging import merge_checkpoint

PREFIX = "base_model.model."


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"model.layers.0.q_proj.weight": torch.randn(6, 8, generator=g),
            "model.layers.0.v_proj.weight": torch.randn(4, 8, generator=g),
            "model.norm.weight": torch.randn(8, generator=g)}


def _checkpoint(path: Path, seed: int) -> Path:
    path.mkdir(parents=True)
    save_file(_weights(seed), path / "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "tie_word_embeddings": False}))
    return path


def _lora(path: Path, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    tensors = {f"{PREFIX}model.layers.0.q_proj.lora_A.weight": torch.randn(2, 8, generator=g),
               f"{PREFIX}model.layers.0.q_proj.lora_B.weight": torch.randn(6, 2, generator=g),
               f"{PREFIX}model.layers.0.v_proj.lora_A.weight": torch.randn(2, 8, generator=g),
               f"{PREFIX}model.layers.0.v_proj.lora_B.weight": torch.randn(4, 2, generator=g)}
    adapterkit.save(Adapter.from_tensors(LoraConfig(r=2, lora_alpha=4, target_modules=("q_proj", "v_proj")), tensors), path)
    return path


@pytest.fixture
def world(tmp_path):
    """Each input alone in a holder folder (h_*), so that OUT = the holder holds that input only."""
    return {"base": _checkpoint(tmp_path / "h_base" / "base", 1), "ft": _checkpoint(tmp_path / "h_ft" / "ft", 2),
            "lora": _lora(tmp_path / "h_lora" / "lora"), "lora2": _lora(tmp_path / "h_lora2" / "lora2", seed=3)}


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every entry under root: files by their bytes, folders and links by their kind."""
    found: dict[str, bytes | None] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            found[rel] = p.read_bytes() if p.is_file() and not p.is_symlink() else ("link:" + os.readlink(p)).encode() if p.is_symlink() else None
    return found


# command, role, input key, argv (with {OUT}, {base}, ...)
CASES = [
    ("merge", "BASE", "base", ["merge", "{base}", "{lora}", "{OUT}"]),
    ("merge", "ADAPTER", "lora", ["merge", "{base}", "{lora}", "{OUT}"]),
    ("merge --adapter", "ADAPTER", "lora2", ["merge", "{base}", "{lora}", "{OUT}", "--adapter", "{lora2}"]),
    ("unmerge", "MERGED", "base", ["unmerge", "{base}", "{lora}", "{OUT}"]),
    ("unmerge", "ADAPTER", "lora", ["unmerge", "{base}", "{lora}", "{OUT}"]),
    ("extract", "BASE", "base", ["extract", "{base}", "{ft}", "{OUT}", "--rank", "1"]),
    ("extract", "FINETUNED", "ft", ["extract", "{base}", "{ft}", "{OUT}", "--rank", "1"]),
    ("convert", "SRC", "lora", ["convert", "{lora}", "{OUT}"]),
    ("convert --for", "SRC", "lora", ["convert", "{lora}", "{OUT}", "--for", "vllm"]),
    ("combine", "ADAPTERS", "lora", ["combine", "{lora}", "{lora2}", "-o", "{OUT}", "--method", "cat"]),
    ("combine", "ADAPTERS", "lora2", ["combine", "{lora}", "{lora2}", "-o", "{OUT}", "--method", "cat"]),
    ("resize", "IN", "lora", ["resize", "{lora}", "{OUT}", "--rank", "1"]),
    ("rebalance", "IN", "lora", ["rebalance", "{lora}", "{OUT}", "--rank", "1"]),
    ("prune", "IN", "lora", ["prune", "{lora}", "{OUT}", "--modules", "q_proj"]),
    ("info --plot", "PATH", "lora", ["info", "{lora}", "--plot", "{OUT}"]),
]
RELATIONS = {"is": lambda p: p, "lies inside": lambda p: p / "sub", "holds": lambda p: p.parent}


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("relation", list(RELATIONS))
@pytest.mark.parametrize(("command", "role", "key", "argv"), CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_no_command_writes_over_into_or_around_an_input(world, tmp_path, command, role, key, argv, relation, overwrite):
    out = RELATIONS[relation](world[key])
    before = snapshot(tmp_path)
    args = [a.format(OUT=out, **world) for a in argv] + (["--overwrite"] if overwrite else [])
    res = run(*args)
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert "\n" not in line and line.endswith("[overwrite-input]"), line
    assert line.startswith(f"adapterkit: error: {out}: ") and f"the output {relation} the {role} {world[key]}" in line, line
    assert snapshot(tmp_path) == before  # nothing changed, nothing added (no staging folder either)


def test_the_issue_examples_exit_2_and_leave_the_folder_whole(tmp_path, monkeypatch):
    """`merge BASE DIR/lora DIR --overwrite`, `merge BASE lora lora`, `unmerge MERGED lora lora`,
    `merge base outputs/checkpoint-500 outputs`, with relative paths."""
    _checkpoint(tmp_path / "base", 1)
    _lora(tmp_path / "outputs" / "checkpoint-500")
    (tmp_path / "outputs" / "trainer_state.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    for args in (["merge", "base", "outputs/checkpoint-500", "outputs"], ["merge", "base", "./outputs/checkpoint-500", "./outputs/"],
                 ["merge", "base", "outputs/checkpoint-500", "outputs/checkpoint-500"],
                 ["unmerge", "base", "outputs/checkpoint-500", "outputs/checkpoint-500"],
                 ["merge", "base", "outputs", "outputs/merged"],  # the adapter found in a subfolder of the folder named
                 ["merge", "base", "outputs/checkpoint-500", "."]):
        res = run(*args, "--overwrite")
        assert res.exit_code == 2 and res.output.rstrip().endswith("[overwrite-input]"), (args, res.output)
    assert snapshot(tmp_path) == before


def test_links_are_resolved(world, tmp_path):
    link = tmp_path / "link-to-lora"
    link.symlink_to(world["lora"])
    before = snapshot(tmp_path)
    # OUT a link to the input; the input named through a link, OUT its real holder
    for args in (["convert", world["lora"], link], ["resize", link, world["lora"].parent, "--rank", "1"],
                 ["merge", world["base"], link, world["lora"].parent]):
        res = run(*args, "--overwrite")
        assert res.exit_code == 2 and "[overwrite-input]" in res.output, (args, res.output)
    assert snapshot(tmp_path) == before


def test_a_single_file_adapter_is_its_file_not_its_folder(world, tmp_path):
    one = tmp_path / "files" / "one.safetensors"
    assert run("convert", world["lora"], one).exit_code == 0
    before = snapshot(tmp_path)
    for out in (one, one.parent, one / "x"):
        res = run("resize", one, out, "--rank", "1", "--overwrite")
        assert res.exit_code == 2 and "[overwrite-input]" in res.output, (out, res.output)
    assert snapshot(tmp_path) == before
    res = run("resize", one, one.parent / "two.safetensors", "--rank", "1")  # beside it: fine
    assert res.exit_code == 0, res.output
    assert run("merge", world["base"], one, one.parent / "merged").exit_code == 0


def _refused(call, *inputs: Path) -> AdapterkitError:
    before = [snapshot(p.parent) for p in inputs]
    with pytest.raises(AdapterkitError) as info:
        call()
    assert info.value.code == "overwrite-input", info.value
    assert [snapshot(p.parent) for p in inputs] == before
    return info.value


def test_library_writers_are_guarded_too(world, tmp_path):
    base, lora, lora2, ft = world["base"], world["lora"], world["lora2"], world["ft"]
    holder = lora.parent
    _refused(lambda: merge_checkpoint(base, [lora], holder, overwrite=True), lora)
    _refused(lambda: merge_checkpoint(base, [lora], lora, overwrite=True), lora)
    _refused(lambda: merge_checkpoint(base, [lora], lora / "merged"), lora)
    _refused(lambda: merge_checkpoint(base, [lora2], base / "merged"), base)
    _refused(lambda: merge_checkpoint(base, [lora], lora, unmerge=True, overwrite=True), lora)
    # the adapter found in the one subfolder holding one: the folder named is an input
    err = _refused(lambda: merge_checkpoint(base, [holder], holder / "merged"), lora)
    assert "folder holding the adapter" in str(err)
    # operations that make adapters in memory carry their inputs to save
    resized, _ = adapterkit.resize(adapterkit.load(lora), rank=1)
    _refused(lambda: adapterkit.save(resized, lora, overwrite=True), lora)
    _refused(lambda: adapterkit.save(resized, holder, overwrite=True), lora)
    twice, _ = adapterkit.resize(resized, rank=1)
    _refused(lambda: adapterkit.save(twice, lora / "again"), lora)
    pruned, _ = adapterkit.prune(adapterkit.load(holder), modules="q_proj")
    _refused(lambda: adapterkit.save(pruned, holder / "pruned"), lora)
    combined = adapterkit.combine([adapterkit.load(lora), adapterkit.load(lora2)], [1.0, 1.0], "cat")
    err = _refused(lambda: adapterkit.save(combined, lora2.parent, overwrite=True), lora2)
    assert "input adapter 2" in str(err)
    extracted, _ = adapterkit.extract(base, ft, rank=1)
    _refused(lambda: adapterkit.save(extracted, base / "lora"), base)
    _refused(lambda: adapterkit.save(extracted, ft.parent, overwrite=True), ft)
    exported = adapterkit.export(adapterkit.load(lora), "vllm")
    _refused(lambda: adapterkit.save(exported, lora, overwrite=True), lora)
    _refused(lambda: adapterkit.plot_spectrum(adapterkit.load(lora), lora / "spectrum.png"), lora)
    # and what is not an input stays writable
    adapterkit.save(resized, tmp_path / "elsewhere")
    assert merge_checkpoint(base, [lora], tmp_path / "merged").changed == 2


def test_repo_id_inputs_protect_their_cache_folder(tmp_path, monkeypatch):
    """A repo id's input is the cache snapshot its files were read from (and the blobs behind its
    links); pull reads the cache too."""
    from test_hub import checkpoint_files, make_lora
    from test_hub import hub as hub_fixture

    hub = hub_fixture.__wrapped__(tmp_path, monkeypatch)
    server = next(hub)
    try:
        server.add("org/lora", {p.name: p.read_bytes() for p in make_lora(tmp_path / "src" / "lora").iterdir()})
        server.add("org/base", checkpoint_files(tmp_path / "src"))
        cache = tmp_path / "cache"
        assert run("pull", "org/lora", tmp_path / "pulled").exit_code == 0  # fills the cache
        before = snapshot(cache)
        snap = next((cache / "models--org--lora" / "snapshots").iterdir())
        for args in (["pull", "org/lora", cache], ["pull", "org/lora", snap], ["pull", "org/lora", cache / "x"],
                     ["merge", "org/base", "org/lora", snap], ["merge", "org/base", "org/lora", cache / "models--org--lora"],
                     ["convert", "org/lora", snap / "x"], ["resize", "org/lora", cache / "models--org--lora" / "blobs", "--rank", "1"],
                     ["convert", "org/lora", (snap / "adapter_model.safetensors").resolve()]):  # the weights' blob itself
            res = run(*args, "--overwrite")
            assert res.exit_code == 2 and res.output.rstrip().endswith("[overwrite-input]"), (args, res.output)
        after = snapshot(cache)
        assert {k: v for k, v in after.items() if "org--base" not in k} == before  # (merge fetched org/base meanwhile)
    finally:
        next(hub, None)
