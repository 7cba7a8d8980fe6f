"""adapterkit.checkpoint against transformers and safetensors as oracles.

Bases are tiny Llama models saved by ``save_pretrained`` (sharded, unsharded, bf16).  Reading
must agree with ``safetensors.safe_open`` bit for bit; writing every tensor through unchanged
must reproduce the base byte for byte (shards, index, extra files), and resharding with
``max_shard_size`` must reproduce what ``save_pretrained(max_shard_size=...)`` writes.  Errors
carry their code, file and key; a failed or killed write leaves the base untouched and the
output absent or whole.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import struct
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from adapterkit.checkpoint import Checkpoint, CheckpointWriter, open_checkpoint
from adapterkit.checkpoint.layout import split_greedy
from adapterkit.errors import AdapterkitError

INDEX = "model.safetensors.index.json"


# ---------------------------------------------------------------------------------------------
# bases


def llama(dtype: torch.dtype = torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1)
    return LlamaForCausalLM(config).to(dtype)


def add_extras(folder: Path) -> None:
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE"}}')
    (folder / "tokenizer_config.json").write_text('{"model_max_length": 128}')
    (folder / "original").mkdir()
    (folder / "original" / "params.json").write_text('{"dim": 16}')


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    model = llama()
    model.save_pretrained(root / "sharded", max_shard_size="20KB")
    model.save_pretrained(root / "single")
    model.save_pretrained(root / "resharded", max_shard_size=9000)  # the oracle for max_shard_size=9000
    llama(torch.bfloat16).save_pretrained(root / "bf16", max_shard_size="8KB")
    for name in ("sharded", "single", "bf16"):
        add_extras(root / name)
    assert len(list((root / "sharded").glob("model-*.safetensors"))) == 2
    assert len(list((root / "bf16").glob("model-*.safetensors"))) == 2
    assert len(list((root / "resharded").glob("model-*.safetensors"))) == 4
    return {p.name: p for p in root.iterdir()}


@pytest.fixture
def base(bases, tmp_path) -> Path:
    """A private copy of the sharded base, free to damage."""
    return Path(shutil.copytree(bases["sharded"], tmp_path / "base"))


def plan_of(ckpt: Checkpoint, keys=None) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {k: (ckpt.info(k).dtype, ckpt.info(k).shape) for k in (keys or ckpt.keys())}


def copy_through(ckpt: Checkpoint, out: Path, *, as_tensors: bool = False, keys=None, **kw) -> Path:
    plan = plan_of(ckpt, keys)
    with CheckpointWriter(out, ckpt, plan=plan, **kw) as w:
        for key in plan:
            w.write(key, ckpt.read(key) if as_tensors else ckpt.read_bytes(key))
        return w.commit()


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative posix path -> bytes), hidden ones included."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for name, data in tree(folder).items():
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


def raw_header(path: Path) -> dict:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def assert_error(exc: pytest.ExceptionInfo, code: str, *parts: str) -> None:
    assert isinstance(exc.value, AdapterkitError)
    assert exc.value.code == code, str(exc.value)
    for part in parts:
        assert part in str(exc.value), (part, str(exc.value))


def assert_nothing_left(out: Path) -> None:
    """No output and no staging beside it."""
    assert not os.path.lexists(out)
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")] == []


# ---------------------------------------------------------------------------------------------
# reading


@pytest.mark.parametrize("name", ["sharded", "single", "bf16"])
def test_open_agrees_with_safe_open(bases, name):
    folder = bases[name]
    ckpt = open_checkpoint(folder)
    index = json.loads((folder / INDEX).read_text()) if (folder / INDEX).exists() else None
    assert ckpt.path == folder and ckpt.index == index
    assert ckpt.shards == sorted(folder.glob("model*.safetensors"))
    expected_keys = []
    for shard in ckpt.shards:
        header = raw_header(shard)
        assert ckpt.metadata(shard) == header.pop("__metadata__") == ckpt.metadata(shard.name)
        expected_keys += sorted(header, key=lambda k: header[k]["data_offsets"])  # data order within a shard
        with safe_open(shard, "pt") as f:
            for key in f.keys():
                info = ckpt.info(key)
                sl = f.get_slice(key)
                assert (info.dtype, list(info.shape)) == (sl.get_dtype(), sl.get_shape())
                assert info.nbytes == info.end - info.begin == info.numel * info.torch_dtype.itemsize
                assert ckpt.shard_of(key) == shard
                want, got = f.get_tensor(key), ckpt.read(key)
                assert got.dtype == want.dtype and got.shape == want.shape
                assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))
                assert ckpt.read_bytes(key) == want.contiguous().view(torch.uint8).numpy().tobytes()
    assert ckpt.keys() == expected_keys and len(ckpt) == len(expected_keys)
    if index is not None:
        assert {k: ckpt.shard_of(k).name for k in ckpt.keys()} == index["weight_map"]


def test_read_gives_a_fresh_tensor_each_time(bases):
    ckpt = open_checkpoint(bases["single"])
    a = ckpt.read("lm_head.weight")
    a.add_(1.0)  # writable and private: the next read is unaffected
    b = ckpt.read("lm_head.weight")
    assert not torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    assert b.is_contiguous() and b.device.type == "cpu"


def test_keys_follow_the_data_not_the_header_text(tmp_path):
    """adapterkit's own writer lists header entries by key but lays data out widest dtype first."""
    from adapterkit.io.safetensors_file import write_file

    write_file(tmp_path / "m.safetensors", {"a": torch.ones(2, dtype=torch.int8), "b": torch.ones(2)}, {"format": "pt"})
    assert list(raw_header(tmp_path / "m.safetensors")) == ["__metadata__", "a", "b"]
    assert open_checkpoint(tmp_path / "m.safetensors").keys() == ["b", "a"]


def test_shard_shrinking_after_open(base):
    ckpt = open_checkpoint(base)
    with open(base / SHARD2, "r+b") as f:
        f.truncate(f.seek(0, 2) - 8)
    key = max(ckpt.keys(), key=lambda k: (ckpt.shard_of(k).name, ckpt.info(k).end))
    with pytest.raises(AdapterkitError) as exc:
        ckpt.read(key)
    assert_error(exc, "truncated-file", SHARD2, key, "changed while reading")


def test_open_by_index_file_or_single_file(bases):
    by_index = open_checkpoint(bases["sharded"] / INDEX)
    assert by_index.path == bases["sharded"] and len(by_index.shards) == 2
    one = open_checkpoint(bases["single"] / "model.safetensors")
    assert one.path == bases["single"] / "model.safetensors" and one.shards == [one.path]
    assert one.index is None and one.extra_files() == []
    assert open_checkpoint(bases["single"]).keys() == one.keys()


def test_extra_files_are_the_non_weight_files(base):
    (base / ".git").mkdir()
    (base / ".git" / "HEAD").write_text("ref")
    (base / ".gitattributes").write_text("*.safetensors filter=lfs")
    (base / "pytorch_model.bin").write_bytes(b"stale")
    (base / "pytorch_model.bin.index.json").write_text("{}")
    (base / "original" / "consolidated.00.pth").write_bytes(b"stale")
    (base / "stray.safetensors").write_bytes(b"x")
    extra = open_checkpoint(base).extra_files()
    assert [p.relative_to(base).as_posix() for p in extra] == [
        "config.json", "generation_config.json", "original/params.json", "tokenizer.json", "tokenizer_config.json",
    ]


def test_tensor_keys_and_lookups_of_unknown_names(bases):
    ckpt = open_checkpoint(bases["sharded"])
    assert "lm_head.weight" in ckpt and "nope" not in ckpt
    for call in (ckpt.info, ckpt.read, ckpt.read_bytes, ckpt.shard_of, ckpt.metadata):
        with pytest.raises(AdapterkitError) as exc:
            call("nope")
        assert_error(exc, "key-not-found", "nope", str(bases["sharded"]))


# ---------------------------------------------------------------------------------------------
# reading: errors


def edit_index(base: Path, edit) -> None:
    index = json.loads((base / INDEX).read_text())
    edit(index["weight_map"])
    (base / INDEX).write_text(json.dumps(index))


SHARD1, SHARD2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


def test_index_naming_a_missing_shard(base):
    (base / SHARD2).unlink()
    with pytest.raises(AdapterkitError) as exc:
        open_checkpoint(base)
    assert_error(exc, "checkpoint-invalid", INDEX, SHARD2, "lm_head.weight")


def test_key_in_index_but_not_in_shard(base):
    edit_index(base, lambda wm: wm.__setitem__("model.ghost.weight", SHARD1))
    with pytest.raises(AdapterkitError) as exc:
        open_checkpoint(base)
    assert_error(exc, "checkpoint-invalid", SHARD1, "model.ghost.weight", "not in its shard")


def test_key_in_shard_but_not_in_index(base):
    edit_index(base, lambda wm: wm.pop("model.norm.weight"))
    with pytest.raises(AdapterkitError) as exc:
        open_checkpoint(base)
    assert_error(exc, "checkpoint-invalid", "model.norm.weight", "not in the index")


def test_key_in_another_shard_than_the_index_says(base):
    edit_index(base, lambda wm: wm.__setitem__("lm_head.weight", SHARD1))
    with pytest.raises(AdapterkitError) as exc:
        open_checkpoint(base)
    assert_error(exc, "checkpoint-invalid", SHARD2, "lm_head.weight", f"in {SHARD1}")


def test_key_in_two_shards(base):
    with safe_open(base / SHARD2, "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert "model.embed_tokens.weight" not in tensors
    tensors["model.embed_tokens.weight"] = torch.ones(64, 16)  # also in shard 1
    save_file(tensors, base / SHARD2, metadata={"format": "pt"})
    with pytest.raises(AdapterkitError) as exc:
        open_checkpoint(base)
    assert_error(exc, "checkpoint-invalid", "model.embed_tokens.weight", SHARD1, SHARD2, "two shards")


@pytest.mark.parametrize("damage, code", [
    (lambda b: b[:8] + b"x" + b[9:], "header-invalid"),
    (lambda b: b[: len(b) - 4], "truncated-file"),
    (lambda b: b + b"\0" * 4, "offset-out-of-range"),
])
def test_corrupt_shard_header(base, damage, code):
    shard = base / SHARD1
    shard.write_bytes(damage(shard.read_bytes()))
    with pytest.raises(AdapterkitError) as exc:
        open_checkpoint(base)
    assert_error(exc, code, SHARD1)


@pytest.mark.parametrize("text, part", [
    ("{not json", "not valid JSON"),
    ("[]", "JSON object"),
    ('{"weight_map": {}}', "weight_map"),
    ('{"weight_map": {"a": "../model.safetensors"}}', "../model.safetensors"),
    ('{"weight_map": {"a": "model.bin"}}', "model.bin"),
    ('{"weight_map": {"a": "model.safetensors"}, "metadata": []}', "metadata"),
])
def test_malformed_index(base, text, part):
    (base / INDEX).write_text(text)
    with pytest.raises(AdapterkitError) as exc:
        open_checkpoint(base)
    assert_error(exc, "checkpoint-invalid", INDEX, part)


def test_bin_only_checkpoint_is_refused_with_advice(tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    torch.save({"w": torch.ones(2)}, folder / "pytorch_model.bin")
    for path in (folder, folder / "pytorch_model.bin"):
        with pytest.raises(AdapterkitError) as exc:
            open_checkpoint(path)
        assert_error(exc, "checkpoint-unsupported", str(path), "convert")


def test_adapter_is_not_a_checkpoint(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    save_file({"base_model.model.q.lora_A.weight": torch.ones(2, 4)}, folder / "adapter_model.safetensors")
    for path in (folder, folder / "adapter_model.safetensors"):
        with pytest.raises(AdapterkitError) as exc:
            open_checkpoint(path)
        assert_error(exc, "not-a-checkpoint", str(path), "adapter")


def test_not_a_checkpoint(tmp_path, base):
    with pytest.raises(AdapterkitError) as exc:
        open_checkpoint(tmp_path / "absent")
    assert_error(exc, "file-not-found")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterkitError) as exc:
        open_checkpoint(tmp_path / "empty")
    assert_error(exc, "not-a-checkpoint", "empty")
    shutil.copy(base / SHARD1, base / "model.safetensors")
    with pytest.raises(AdapterkitError) as exc:
        open_checkpoint(base)
    assert_error(exc, "checkpoint-invalid", "ambiguous")


# ---------------------------------------------------------------------------------------------
# writing


@pytest.mark.parametrize("name", ["sharded", "single", "bf16"])
@pytest.mark.parametrize("as_tensors", [False, True])
def test_round_trip_is_byte_identical(bases, tmp_path, name, as_tensors):
    """Shards (safetensors' own layout), index (transformers' text) and extra files all equal the base."""
    ckpt = open_checkpoint(bases[name])
    out = copy_through(ckpt, tmp_path / "out", as_tensors=as_tensors, durable=as_tensors)
    assert tree(out) == tree(bases[name])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left
    assert oct((out / "config.json").stat().st_mode & 0o777) == "0o644"


def test_round_trip_loads_in_transformers(bases, tmp_path):
    from transformers import AutoModelForCausalLM

    out = copy_through(open_checkpoint(bases["sharded"]), tmp_path / "out")
    want = llama().state_dict()
    got = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_max_shard_size_splits_like_save_pretrained(bases, tmp_path):
    """Resharding the unsharded base at 9000 bytes, keys in the model's order, writes exactly the
    files save_pretrained(max_shard_size=9000) writes: same names, same assignment, same bytes."""
    from transformers import AutoModelForCausalLM

    ckpt = open_checkpoint(bases["single"])
    model_order = list(llama().state_dict())
    out = copy_through(ckpt, tmp_path / "out", keys=model_order, max_shard_size=9000)
    want = {n: b for n, b in tree(bases["resharded"]).items() if not n.startswith("original/") and "tokenizer" not in n}
    got = {n: b for n, b in tree(out).items() if not n.startswith("original/") and "tokenizer" not in n}
    assert sorted(got) == sorted(want) == [
        "config.json", "generation_config.json", *(f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)), INDEX,
    ]
    assert got == want
    assert (out / "tokenizer.json").exists() and (out / "original" / "params.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert all(torch.equal(loaded[k], ckpt.read(k)) for k in ckpt.keys())


def test_placement_puts_a_new_tensor_in_the_shard_of_a_base_key(bases, tmp_path):
    """A key the base lacks joins the shard of the base key it is placed beside (any shard, not
    the first); the index says so and the other keys keep their shards.  Unplaced: refused."""
    ckpt = open_checkpoint(bases["sharded"])
    last = next(k for k in ckpt.keys() if ckpt.shard_of(k) == ckpt.shards[-1])
    plan = plan_of(ckpt)
    plan["extra.weight"] = plan[last]
    with CheckpointWriter(tmp_path / "out", ckpt, plan=plan, placement={"extra.weight": last}) as w:
        for key in plan:
            w.write(key, ckpt.read_bytes(last if key == "extra.weight" else key))
        w.commit()
    index = json.loads((tmp_path / "out" / INDEX).read_text())["weight_map"]
    base_index = json.loads((bases["sharded"] / INDEX).read_text())["weight_map"]
    assert index == dict(base_index, **{"extra.weight": base_index[last]}) and base_index[last] != sorted(set(base_index.values()))[0]
    with pytest.raises(AdapterkitError) as info:
        CheckpointWriter(tmp_path / "out2", ckpt, plan=plan)
    assert_error(info, "plan-mismatch", "extra.weight")


def test_max_shard_size_large_enough_gives_one_file(bases, tmp_path):
    out = copy_through(open_checkpoint(bases["sharded"]), tmp_path / "out", max_shard_size=10**9)
    assert sorted(p.name for p in out.glob("model*")) == ["model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == (bases["single"] / "model.safetensors").read_bytes()


@given(st.lists(st.integers(1, 40), max_size=12), st.integers(1, 30))
def test_split_greedy_matches_huggingface_hub(sizes, limit):
    from huggingface_hub import split_torch_state_dict_into_shards

    state = {f"t{i}": torch.zeros(n, dtype=torch.uint8) for i, n in enumerate(sizes)}
    split = split_torch_state_dict_into_shards(state, max_shard_size=limit)
    groups = split_greedy([(k, t.numel()) for k, t in state.items()], limit)
    assert [g for g in groups if g] == list(split.filename_to_tensors.values())


def test_dtype_change_and_metadata(bases, tmp_path):
    """A plan may change dtypes: the layout keeps every tensor aligned (wider dtypes first) and
    the index's total_size follows; metadata lands in every shard beside format=pt."""
    ckpt = open_checkpoint(bases["sharded"])
    plan = plan_of(ckpt)
    halved = {k for k in plan if "mlp" in k}
    plan.update({k: ("BF16", plan[k][1]) for k in halved})
    with CheckpointWriter(tmp_path / "out", ckpt, plan=plan, metadata={"merged": "yes"}) as w:
        for key in plan:
            t = ckpt.read(key)
            w.write(key, t.to(torch.bfloat16) if key in halved else t)
        out = w.commit()
    index = json.loads((out / INDEX).read_text())
    assert index["weight_map"] == ckpt.index["weight_map"]
    sizes = {k: torch.Size(s).numel() * (2 if d == "BF16" else 4) for k, (d, s) in plan.items()}
    assert index["metadata"] == {"total_parameters": ckpt.index["metadata"]["total_parameters"], "total_size": sum(sizes.values())}
    for shard in ckpt.shards:
        header = raw_header(out / shard.name)
        assert header.pop("__metadata__") == {"format": "pt", "merged": "yes"}
        order = sorted(header, key=lambda k: header[k]["data_offsets"])
        assert order == list(header)  # entries in data order, as safetensors writes them
        dtypes = [header[k]["dtype"] for k in order]
        assert dtypes == sorted(dtypes, key=lambda d: d != "F32")
        with safe_open(out / shard.name, "pt") as f:
            for key in f.keys():
                want = ckpt.read(key).to(torch.bfloat16) if key in halved else ckpt.read(key)
                assert torch.equal(f.get_tensor(key), want)


def test_single_file_forms(bases, tmp_path):
    one = open_checkpoint(bases["single"] / "model.safetensors")
    out = copy_through(one, tmp_path / "merged.safetensors")
    assert out.read_bytes() == one.path.read_bytes()
    out_dir = copy_through(one, tmp_path / "merged")  # a file base into a folder: no extra files to carry
    assert sorted(p.name for p in out_dir.iterdir()) == ["model.safetensors"]
    out = copy_through(open_checkpoint(bases["single"]), tmp_path / "from_dir.safetensors")
    assert out.read_bytes() == one.path.read_bytes()
    with pytest.raises(AdapterkitError) as exc:
        CheckpointWriter(tmp_path / "x.safetensors", open_checkpoint(bases["sharded"]), plan=plan_of(open_checkpoint(bases["sharded"])))
    assert_error(exc, "form-mismatch", "2 shards")
    with pytest.raises(AdapterkitError) as exc:
        CheckpointWriter(tmp_path / "x", one, plan=plan_of(one), form="file")
    assert_error(exc, "form-mismatch")
    assert_nothing_left(tmp_path / "x.safetensors")
    assert_nothing_left(tmp_path / "x")


def test_zero_size_tensors_and_empty_plans(tmp_path):
    save_file({"a": torch.ones(3), "empty": torch.zeros(0, 4), "b": torch.ones(2, dtype=torch.int8)},
              tmp_path / "z.safetensors", metadata={"format": "pt"})
    z = open_checkpoint(tmp_path / "z.safetensors")
    assert z.read("empty").shape == (0, 4) and z.read_bytes("empty") == b""
    out = copy_through(z, tmp_path / "z2.safetensors")
    assert out.read_bytes() == z.path.read_bytes()
    with CheckpointWriter(tmp_path / "none.safetensors", z, plan={}) as w:
        out = w.commit()
    assert open_checkpoint(out).keys() == []


# ---------------------------------------------------------------------------------------------
# writing: refusals and failures


def test_output_exists_and_overwrite_replaces_whole(bases, tmp_path):
    ckpt = open_checkpoint(bases["sharded"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    (out / "model-00009-of-00009.safetensors").write_text("old")
    with pytest.raises(AdapterkitError) as exc:
        copy_through(ckpt, out)
    assert_error(exc, "output-exists", str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "stale.txt").read_text() == "old"
    copy_through(ckpt, out, overwrite=True)
    assert tree(out) == tree(bases["sharded"])  # nothing from before remains
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_output_appearing_during_the_write_is_not_clobbered(bases, tmp_path):
    ckpt = open_checkpoint(bases["single"])
    out = tmp_path / "out"
    with pytest.raises(AdapterkitError) as exc, CheckpointWriter(out, ckpt, plan=plan_of(ckpt)) as w:
        for key in ckpt.keys():
            w.write(key, ckpt.read_bytes(key))
        out.mkdir()  # an empty folder, which a bare rename would silently replace
        w.commit()
    assert_error(exc, "output-exists")
    assert list(out.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("where", ["same", "inside", "deep-inside", "parent", "shard", "symlink"])
def test_output_must_not_touch_the_base(base, tmp_path, where):
    ckpt = open_checkpoint(base)
    before = digest(base)
    if where == "symlink":
        (tmp_path / "link").symlink_to(base)
    out = {
        "same": base, "inside": base / "merged", "deep-inside": base / "original" / "merged",
        "parent": tmp_path, "shard": base / SHARD1, "symlink": tmp_path / "link",
    }[where]
    for overwrite in (False, True):
        with pytest.raises(AdapterkitError) as exc:
            CheckpointWriter(out, ckpt, plan=plan_of(ckpt), overwrite=overwrite, max_shard_size=10**9 if where == "shard" else None)
        assert_error(exc, "overwrite-input")
    assert digest(base) == before
    assert [p.name for p in base.rglob(".*")] == []


def test_single_file_base_cannot_be_overwritten(bases, tmp_path):
    path = Path(shutil.copy(bases["single"] / "model.safetensors", tmp_path / "m.safetensors"))
    ckpt = open_checkpoint(path)
    with pytest.raises(AdapterkitError) as exc:
        copy_through(ckpt, path, overwrite=True)
    assert_error(exc, "overwrite-input")
    copy_through(ckpt, tmp_path / "m2.safetensors")  # a sibling is fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "m2.safetensors"]


def bad_writes(ckpt: Checkpoint):
    keys = ckpt.keys()
    first = ckpt.read(keys[0])
    return {
        "out-of-order": [(keys[1], ckpt.read_bytes(keys[1]))],
        "wrong-shape": [(keys[0], first.reshape(-1))],
        "wrong-dtype": [(keys[0], first.view(torch.int32))],  # same shape and byte count
        "wrong-byte-count": [(keys[0], ckpt.read_bytes(keys[0])[:-1])],
        "too-many": [(k, ckpt.read_bytes(k)) for k in keys] + [(keys[0], ckpt.read_bytes(keys[0]))],
        "too-few": [(k, ckpt.read_bytes(k)) for k in keys[:-1]],
    }


MESSAGES = {
    "out-of-order": "plan order", "wrong-shape": "shape differs", "wrong-dtype": "dtype differs",
    "wrong-byte-count": "byte count", "too-many": "written already", "too-few": "not every tensor",
}


@pytest.mark.parametrize("case", ["out-of-order", "wrong-shape", "wrong-dtype", "wrong-byte-count", "too-many", "too-few"])
@pytest.mark.parametrize("with_block", [True, False])
def test_writes_that_break_the_plan(bases, tmp_path, case, with_block):
    ckpt = open_checkpoint(bases["sharded"])
    out = tmp_path / "out"
    writes = bad_writes(ckpt)[case]
    w = CheckpointWriter(out, ckpt, plan=plan_of(ckpt))
    with pytest.raises(AdapterkitError) as exc:
        if with_block:
            with w:
                for key, data in writes:
                    w.write(key, data)
                w.commit()
        else:  # no with block: the failing call itself discards the staging folder
            for key, data in writes:
                w.write(key, data)
            w.commit()
    assert_error(exc, "plan-mismatch", str(out), MESSAGES[case])
    assert_nothing_left(out)
    with pytest.raises(AdapterkitError) as exc:
        w.commit()
    assert_error(exc, "plan-mismatch", "closed")


def test_plan_must_match_a_sharded_base(bases, tmp_path):
    ckpt = open_checkpoint(bases["sharded"])
    plan = plan_of(ckpt)
    for bad in ({**plan, "extra.weight": ("F32", (2,))}, {k: v for k, v in plan.items() if k != "lm_head.weight"}):
        with pytest.raises(AdapterkitError) as exc:
            CheckpointWriter(tmp_path / "out", ckpt, plan=bad)
        assert_error(exc, "plan-mismatch", "max_shard_size")
    for bad in ({"lm_head.weight": ("F17", (2,))}, {"lm_head.weight": ("F32", (-1,))}, {"lm_head.weight": "F32"}):
        with pytest.raises(AdapterkitError) as exc:
            CheckpointWriter(tmp_path / "out", ckpt, plan=bad, max_shard_size=100)
        assert_error(exc, "plan-mismatch", "lm_head.weight")
    with pytest.raises(AdapterkitError) as exc:
        CheckpointWriter(tmp_path / "out", ckpt, plan=plan, metadata={"format": "np"})
    assert_error(exc, "plan-mismatch", "format")
    assert_nothing_left(tmp_path / "out")


def test_leaving_the_block_without_commit_discards(bases, tmp_path):
    ckpt = open_checkpoint(bases["sharded"])
    with CheckpointWriter(tmp_path / "out", ckpt, plan=plan_of(ckpt)) as w:
        w.write(ckpt.keys()[0], ckpt.read_bytes(ckpt.keys()[0]))
        assert len(list(tmp_path.glob(".out.tmp-*"))) == 1
    assert_nothing_left(tmp_path / "out")
    w = CheckpointWriter(tmp_path / "out", ckpt, plan=plan_of(ckpt))
    del w  # abandoned: collected, its staging folder goes
    assert_nothing_left(tmp_path / "out")


def test_no_space_mid_write(bases, tmp_path, monkeypatch):
    ckpt = open_checkpoint(bases["sharded"])
    real, calls = os.pwrite, []

    def pwrite(fd, data, offset):
        calls.append(offset)
        if len(calls) == 7:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    with pytest.raises(AdapterkitError) as exc:
        copy_through(ckpt, tmp_path / "out")
    assert_error(exc, "write-failed", "No space left", str(tmp_path / "out"))
    assert_nothing_left(tmp_path / "out")


def test_no_space_while_copying_extra_files(bases, tmp_path, monkeypatch):
    ckpt = open_checkpoint(bases["sharded"])

    def copyfile(src, dst, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shutil, "copyfile", copyfile)
    with pytest.raises(AdapterkitError) as exc:
        copy_through(ckpt, tmp_path / "out")
    assert_error(exc, "write-failed", "No space left")
    assert_nothing_left(tmp_path / "out")


def test_sigkill_leaves_the_base_intact_and_the_output_absent_or_whole(base, tmp_path):
    """A forked child writes the output and is killed with SIGKILL: after k tensors (k = 0 .. n,
    the child waits there to be killed), or at growing delays into commit(), or not at all.
    The base never changes; the output is absent (only ``.out.tmp-*`` beside it) or complete."""
    ckpt = open_checkpoint(base)
    keys = ckpt.keys()
    before = digest(base)
    stops = [(k, None) for k in (0, 1, len(keys) // 2, len(keys) - 1)]
    stops += [(len(keys), delay) for delay in (0.0, 0.0002, 0.0005, 0.001, 0.002, 0.004, 0.008)]
    stops += [(None, None)]  # runs to the end
    outcomes = []
    for i, (stop, delay) in enumerate(stops):
        run = tmp_path / f"run{i}"
        run.mkdir()
        out = run / "out"
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            try:
                os.close(r)
                writer = CheckpointWriter(out, ckpt, plan=plan_of(ckpt))
                for n, key in enumerate(keys):
                    if n == stop:
                        os.write(w, b"s")
                        time.sleep(60)
                    writer.write(key, ckpt.read_bytes(key))
                os.write(w, b"c")
                writer.commit()
                os.write(w, b"d")
            finally:
                os._exit(0)
        os.close(w)
        first = os.read(r, 1)
        if stop is not None:
            time.sleep(delay or 0.0)
            os.kill(pid, signal.SIGKILL)
        said = first
        while chunk := os.read(r, 1):
            said += chunk
        os.close(r)
        _, status = os.waitpid(pid, 0)
        names = sorted(p.name for p in run.iterdir())
        assert all(n == "out" or n.startswith(".out.tmp-") for n in names), names
        if os.path.exists(out):
            assert tree(out) == tree(base), i  # complete: every shard, the index, every extra file
            outcomes.append("whole")
        else:
            assert len(names) == 1, (i, names, said)  # killed before the rename: its staging folder only
            outcomes.append("absent")
        assert digest(base) == before
    assert outcomes[:4] == ["absent"] * 4, outcomes  # killed between tensors: deterministic
    assert outcomes[-1] == "whole" and said == b"cd" and os.WIFEXITED(status)


def test_durable_write_syncs_every_file_and_folder(bases, tmp_path, monkeypatch):
    ckpt = open_checkpoint(bases["sharded"])
    synced: list[str] = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = copy_through(ckpt, tmp_path / "out")
    names = {Path(s).name for s in synced}
    files = {p.name for p in out.rglob("*")}
    assert files <= names, files - names  # every file and subfolder (synced under the staging folder)
    assert any(n.startswith(".out.tmp-") for n in names)  # the staging folder itself
    assert synced[-1] == str(tmp_path)  # the parent, after the rename
    synced.clear()
    copy_through(ckpt, tmp_path / "fast", durable=False)
    assert synced == []


# ---------------------------------------------------------------------------------------------
# a base with an index and one shard (issue 17): the layout is kept, and readable


def single_shard_with_index(model_dir: Path, folder: Path) -> Path:
    """``model_dir``'s model.safetensors as ``model-00001-of-00001.safetensors`` beside an index
    (as some tools publish checkpoints), with its other files."""
    shutil.copytree(model_dir, folder)
    shard = "model-00001-of-00001.safetensors"
    (folder / "model.safetensors").rename(folder / shard)
    with safe_open(folder / shard, "pt") as f:
        keys = list(f.keys())
        sizes = [f.get_tensor(k) for k in keys]
    index = {"metadata": {"total_parameters": sum(t.numel() for t in sizes),
                          "total_size": sum(t.numel() * t.element_size() for t in sizes)},
             "weight_map": dict.fromkeys(sorted(keys), shard)}
    (folder / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return folder


def test_single_shard_with_index_round_trips_with_its_index(bases, tmp_path):
    base = single_shard_with_index(bases["single"], tmp_path / "base")
    out = copy_through(open_checkpoint(base), tmp_path / "out")
    assert tree(out) == tree(base)  # the shard under its name, and the index beside it
    assert open_checkpoint(out).keys() == open_checkpoint(base).keys()


def test_merge_into_single_shard_with_index_is_readable_by_adapterkit_and_transformers(bases, tmp_path):
    from transformers import AutoModelForCausalLM

    import adapterkit
    from adapterkit.ops import merge_checkpoint

    base = single_shard_with_index(bases["single"], tmp_path / "base")
    name = "model.layers.0.self_attn.q_proj"
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(2, 16, generator=g), torch.randn(16, 2, generator=g)
    adapter = adapterkit.Adapter.from_tensors(
        adapterkit.LoraConfig(r=2, lora_alpha=4, target_modules=("q_proj",)),
        {f"base_model.model.{name}.lora_A.weight": A, f"base_model.model.{name}.lora_B.weight": B})
    merge_checkpoint(base, [adapter], tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.safetensors*")) == ["model-00001-of-00001.safetensors", INDEX]
    assert json.loads((out / INDEX).read_text())["weight_map"] == json.loads((base / INDEX).read_text())["weight_map"]
    ckpt = open_checkpoint(out)  # adapterkit reads its own output
    want = llama().state_dict()[f"{name}.weight"] + 2 * (B @ A)
    torch.testing.assert_close(ckpt.read(f"{name}.weight"), want, rtol=0, atol=1e-6)
    got = AutoModelForCausalLM.from_pretrained(out).state_dict()
    torch.testing.assert_close(got[f"{name}.weight"], want, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# `adapterkit info` on a broken checkpoint names the checkpoint's problem, as merge does


def _info(path: Path):
    from click.testing import CliRunner

    from adapterkit.cli import main

    return CliRunner().invoke(main, ["info", str(path)])


def test_info_names_a_truncated_shard(base):
    shard = sorted(base.glob("model-*.safetensors"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    result = _info(base)
    assert result.exit_code == 2, result.output
    assert "[truncated-file]" in result.output and shard.name in result.output and "not-an-adapter" not in result.output


def test_info_names_a_missing_shard(base):
    shard = sorted(base.glob("model-*.safetensors"))[0]
    shard.unlink()
    result = _info(base)
    assert result.exit_code == 2, result.output
    assert "[checkpoint-invalid]" in result.output and shard.name in result.output and "not-an-adapter" not in result.output


def test_info_on_a_folder_that_is_neither_still_says_not_an_adapter(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    result = _info(tmp_path)
    assert result.exit_code == 2 and "[not-an-adapter]" in result.output, result.output


def test_an_index_of_model_safetensors_alone_is_read_and_kept(bases, tmp_path):
    """model.safetensors beside an index naming only it: one reading, so not ambiguous (an index
    naming other shards beside a stray model.safetensors still is: test_not_a_checkpoint)."""
    base = Path(shutil.copytree(bases["single"], tmp_path / "base"))
    with safe_open(base / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    (base / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": dict.fromkeys(sorted(keys), "model.safetensors")},
                                         indent=2, sort_keys=True) + "\n")
    ckpt = open_checkpoint(base)
    assert ckpt.index is not None and [p.name for p in ckpt.shards] == ["model.safetensors"]
    out = copy_through(ckpt, tmp_path / "out")
    assert sorted(p.name for p in out.glob("model*")) == ["model.safetensors", INDEX]
    assert tree(out)["model.safetensors"] == tree(base)["model.safetensors"]
    assert open_checkpoint(out).keys() == ckpt.keys()
