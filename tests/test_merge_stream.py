"""The streamed merge's machinery: blocks of rows, the reader and writer threads, kernel copies.

``merge_checkpoint`` merges plain LoRA linear weights a block of rows at a time with a reader
thread ahead and a writer thread behind, and copies untouched tensors with
``os.copy_file_range``.  These tests hold that path to the whole-tensor path byte for byte,
errors raised in either thread to the same adapterkit errors with no output left behind, the
buffered copy to the kernel copy, and a merge killed with SIGKILL to "base untouched, output
absent or complete".  The comparison with PEFT itself is in ``test_merge.py``.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import adapterkit
import adapterkit.checkpoint.writer as writer_mod
import adapterkit.ops.merging as merge_mod
from adapterkit.checkpoint.reader import Checkpoint
from adapterkit.errors import AdapterkitError, FormatError
from adapterkit.kinds import lora
from adapterkit.ops import merge_checkpoint
from adapterkit.progress import progress_bytes

H, M, LAYERS = 48, 80, 3
PROJ = {"self_attn.q_proj": (H, H), "self_attn.v_proj": (H, H), "mlp.up_proj": (M, H), "mlp.down_proj": (H, M)}


def make_base(path: Path, dtype: torch.dtype = torch.bfloat16, shards: int = 3, scale: int = 1) -> Path:
    """A Llama-like sharded checkpoint written with the safetensors library (no transformers)."""
    g = torch.Generator().manual_seed(0)
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (64 * scale, H)}
    for i in range(LAYERS * scale):
        shapes.update({f"model.layers.{i}.{name}.weight": (o * scale, n * scale) for name, (o, n) in PROJ.items()})
        shapes[f"model.layers.{i}.input_layernorm.weight"] = (H,)
    shapes["lm_head.weight"] = (64 * scale, H)
    keys = list(shapes)
    per = -(-len(keys) // shards)
    path.mkdir(parents=True)
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: (torch.randn(shapes[k], generator=g) * 0.1).to(dtype) for k in keys[s * per:(s + 1) * per]}
        save_file(part, path / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (path / "config.json").write_text('{"model_type": "llama"}')
    return path


def make_lora(path: Path, seed: int, targets: tuple[str, ...] = ("q_proj", "up_proj", "down_proj"), scale: int = 1,
              dtype: torch.dtype = torch.float32, r: int = 4, **cfg) -> Path:
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(LAYERS * scale):
        for name, (o, n) in PROJ.items():
            if name.split(".")[1] in targets:
                p = f"base_model.model.model.layers.{i}.{name}"
                tensors[f"{p}.lora_A.weight"] = (torch.randn(r, n * scale, generator=g) * 0.3).to(dtype)
                tensors[f"{p}.lora_B.weight"] = (torch.randn(o * scale, r, generator=g) * 0.3).to(dtype)
    config = adapterkit.LoraConfig(r=r, lora_alpha=cfg.pop("lora_alpha", 8), target_modules=targets, **cfg)
    adapterkit.save(adapterkit.Adapter.from_tensors(config, tensors), path)
    return path


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def digest(folder: Path) -> dict[str, str]:
    return {k: hashlib.sha256(v).hexdigest() for k, v in files(folder).items()}


def no_leftovers(parent: Path, name: str) -> None:
    assert not (parent / name).exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{name}.tmp-")]
    assert not [t for t in threading.enumerate() if t.name.startswith("adapterkit-")]


@pytest.fixture
def count_row_streams(monkeypatch):
    calls = []
    original = merge_mod._Job._stream_rows

    def spy(self, key, rows):
        calls.append(key)
        return original(self, key, rows)

    monkeypatch.setattr(merge_mod._Job, "_stream_rows", spy)
    return calls


CASES = {
    "bf16": (torch.bfloat16, {}),
    "fp16": (torch.float16, {}),
    "fp32": (torch.float32, {}),
    "two_adapters_weighted": (torch.bfloat16, {"two": True, "weights": [0.5, -1.25]}),
    "unmerge": (torch.bfloat16, {"unmerge": True, "force": True}),  # the base records no merge: forced
    "to_fp32": (torch.bfloat16, {"dtype": "F32"}),
    "fp32_to_bf16": (torch.float32, {"dtype": "BF16"}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_row_blocks_give_the_whole_tensor_merge_byte_for_byte(name: str, tmp_path: Path, monkeypatch, count_row_streams) -> None:
    dtype, opts = CASES[name]
    base = make_base(tmp_path / "base", dtype, scale=4)
    adapters = [make_lora(tmp_path / "a", seed=1, scale=4)]
    if opts.pop("two", False):
        adapters.append(make_lora(tmp_path / "b", seed=2, targets=("q_proj", "v_proj"), dtype=torch.bfloat16, scale=4))
    monkeypatch.setattr(merge_mod, "CHUNK_ELEMENTS", 1)  # blocks of ROW_ALIGN rows: several a tensor, the last one short
    merge_checkpoint(base, adapters, tmp_path / "rows", **opts)
    assert count_row_streams, "the row path was not taken"
    count_row_streams.clear()
    monkeypatch.setattr(merge_mod, "ROW_DTYPES", ())  # every tensor merged whole
    merge_checkpoint(base, adapters, tmp_path / "whole", **opts)
    assert not count_row_streams
    assert files(tmp_path / "rows") == files(tmp_path / "whole")


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["bf16", "two_adapters_weighted", "unmerge", "fp32_to_bf16"])
def test_cuda_streams_row_blocks_through_page_locked_buffers_as_the_cpu_merges(name: str, tmp_path: Path, monkeypatch,
                                                                                count_row_streams) -> None:
    """--device cuda takes the row path (blocks in page-locked host memory, the fp32 sum on the
    GPU) and gives the CPU's merge: bf16/fp16 storage rounds each entry once, from an fp32 sum
    whose one product term may differ from the CPU's by the order of its r additions (cuBLAS vs
    MKL), so entries agree to one storage ulp; most are bit-identical."""
    dtype, opts = CASES[name]
    base = make_base(tmp_path / "base", dtype, scale=4)
    adapters = [make_lora(tmp_path / "a", seed=1, scale=4)]
    if opts.pop("two", False):
        adapters.append(make_lora(tmp_path / "b", seed=2, targets=("q_proj", "v_proj"), dtype=torch.bfloat16, scale=4))
    pinned = []
    original = merge_mod._Block.__init__

    def spy(self, nbytes, **kw):
        original(self, nbytes, **kw)
        pinned.append((self.data.device.type, self.data.is_pinned() if self.data.device.type == "cpu" else None))

    monkeypatch.setattr(merge_mod._Block, "__init__", spy)
    monkeypatch.setattr(merge_mod, "CHUNK_ELEMENTS", 1)
    merge_checkpoint(base, adapters, tmp_path / "gpu", device="cuda", **opts)
    assert count_row_streams, "the row path was not taken on cuda"
    assert ("cuda", None) in pinned and ("cpu", True) in pinned and ("cpu", False) not in pinned
    monkeypatch.setattr(merge_mod._Block, "__init__", original)
    merge_checkpoint(base, adapters, tmp_path / "cpu", device="cpu", **opts)
    for shard in sorted((tmp_path / "cpu").glob("*.safetensors")):
        ours, theirs = load_file(tmp_path / "gpu" / shard.name), load_file(shard)
        assert ours.keys() == theirs.keys()
        for key in theirs:
            a, b = ours[key], theirs[key]
            assert a.dtype == b.dtype and a.shape == b.shape
            if a.is_floating_point() and not torch.equal(a, b):
                ulp = torch.finfo(b.dtype).eps * b.float().abs().clamp_min(torch.finfo(b.dtype).tiny)
                assert bool(((a.float() - b.float()).abs() <= ulp).all()), key


@pytest.mark.parametrize("shape", [(5, 7), (200, 48), (300, 33), (1000, 999), (2048, 512)])
def test_row_delta_blocks_are_delta_weight_rows_bit_for_bit(shape: tuple[int, int]) -> None:
    """Blocks of ROW_ALIGN rows (or a multiple) give the rows of merge's result bit for bit: the
    assumption the streamed merge rests on, checked on this machine's sgemm kernel."""
    out_f, in_f = shape
    g = torch.Generator().manual_seed(out_f)
    for a_dtype, weight, unmerge in [(torch.float32, 1.0, False), (torch.bfloat16, -0.7, False), (torch.float16, 2.5, True)]:
        tensors = {"base_model.model.m.lora_A.weight": torch.randn(4, in_f, generator=g).to(a_dtype),
                   "base_model.model.m.lora_B.weight": torch.randn(out_f, 4, generator=g).to(a_dtype)}
        adapter = adapterkit.Adapter.from_tensors(adapterkit.LoraConfig(r=4, lora_alpha=3, target_modules=("m",)), tensors)
        W = torch.randn(out_f, in_f, generator=g).to(torch.bfloat16)
        whole = (lora.unmerge if unmerge else lora.merge)(adapter, "m", {"weight": W}, weight=weight)["weight"]
        fill = adapter.kind.row_merger(adapter, "m", weight=weight, unmerge=unmerge)
        for per in (merge_mod.ROW_ALIGN, 2 * merge_mod.ROW_ALIGN, out_f):
            rows = []
            for start in range(0, out_f, per):
                stop = min(out_f, start + per)
                term = torch.empty(stop - start, in_f)
                fill(start, stop, term)
                rows.append(W[start:stop].float() + term)
            assert torch.equal(torch.cat(rows), whole), (a_dtype, weight, unmerge, per)


def test_row_delta_is_only_for_row_separable_modules() -> None:
    def adapter(**cfg):
        tensors = {"base_model.model.m.lora_A.weight": torch.ones(2, 3), "base_model.model.m.lora_B.weight": torch.ones(4, 2)}
        tensors.update(cfg.pop("extra", {}))
        return adapterkit.Adapter.from_tensors(adapterkit.LoraConfig(r=2, lora_alpha=2, target_modules=("m",), **cfg), tensors)

    assert adapter().kind.row_merger(adapter(), "m") is not None
    fan = adapter(fan_in_fan_out=True)
    assert fan.kind.row_merger(fan, "m") is None
    dora = adapter(use_dora=True, extra={"base_model.model.m.lora_magnitude_vector": torch.ones(4)})
    assert dora.kind.row_merger(dora, "m") is None
    bias = adapter(lora_bias=True, extra={"base_model.model.m.lora_B.bias": torch.ones(4)})
    assert bias.kind.row_merger(bias, "m") is None
    f64 = adapterkit.Adapter.from_tensors(adapterkit.LoraConfig(r=2, lora_alpha=2, target_modules=("m",)),
                                          {"base_model.model.m.lora_A.weight": torch.ones(2, 3, dtype=torch.float64),
                                           "base_model.model.m.lora_B.weight": torch.ones(4, 2, dtype=torch.float64)})
    assert f64.kind.row_merger(f64, "m") is None


def test_kernel_copy_and_buffered_copy_give_identical_bytes(tmp_path: Path, monkeypatch) -> None:
    base = make_base(tmp_path / "base")
    adapter = make_lora(tmp_path / "a", seed=3, targets=("q_proj",))
    merge_checkpoint(base, [adapter], tmp_path / "kernel")
    monkeypatch.setattr(writer_mod, "COPY_BUFFER", 1000)  # many rounds through the buffer
    monkeypatch.setattr(writer_mod, "USE_COPY_FILE_RANGE", False)
    merge_checkpoint(base, [adapter], tmp_path / "buffered")
    monkeypatch.setattr(writer_mod, "USE_COPY_FILE_RANGE", True)
    refusals = []

    def refuse(*args):
        refusals.append(args)
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuse)  # the system refuses: fall back at once
    merge_checkpoint(base, [adapter], tmp_path / "refused")
    assert len(refusals) == 1  # the writer stopped trying after the first refusal
    assert files(tmp_path / "kernel") == files(tmp_path / "buffered") == files(tmp_path / "refused")


def test_reader_thread_error_is_raised_as_itself_and_leaves_no_output(tmp_path: Path, monkeypatch) -> None:
    base = make_base(tmp_path / "base")
    adapter = make_lora(tmp_path / "a", seed=4)
    target = "model.layers.1.mlp.up_proj.weight"
    original = Checkpoint.read_into
    where = []

    def failing(self, key, view, start=0):
        if key == target:
            where.append(threading.current_thread().name)
            raise FormatError("file changed while reading", code="truncated-file", path=self.shard_of(key), key=key)
        return original(self, key, view, start)

    monkeypatch.setattr(Checkpoint, "read_into", failing)
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(base, [adapter], tmp_path / "out")
    assert info.value.code == "truncated-file" and info.value.key == target
    assert where == ["adapterkit-reader"]
    no_leftovers(tmp_path, "out")


def test_truncated_base_shard_is_reported_and_leaves_no_output(tmp_path: Path, monkeypatch) -> None:
    base = make_base(tmp_path / "base")
    adapter = make_lora(tmp_path / "a", seed=5)
    opened = merge_mod.open_checkpoint

    def open_then_truncate(path):
        ckpt = opened(path)
        for shard in ckpt.shards[1:]:  # shrinks after its header was read: data of both threads' tensors
            os.truncate(shard, shard.stat().st_size // 2)
        return ckpt

    monkeypatch.setattr(merge_mod, "open_checkpoint", open_then_truncate)
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(base, [adapter], tmp_path / "out")
    assert info.value.code == "truncated-file" and "changed while reading" in str(info.value)
    no_leftovers(tmp_path, "out")


@pytest.mark.parametrize("where", ["pwrite", "copy_file_range"])
def test_writer_thread_error_is_raised_as_a_write_error_and_leaves_no_output(where: str, tmp_path: Path, monkeypatch) -> None:
    base = make_base(tmp_path / "base")
    before = digest(base)
    adapter = make_lora(tmp_path / "a", seed=6)
    if where == "pwrite":
        calls = []
        original = writer_mod._pwrite_all

        def full_disk(fd, data, offset):
            calls.append(threading.current_thread().name)
            if len(calls) == 6:
                raise OSError(errno.ENOSPC, "No space left on device")
            original(fd, data, offset)

        monkeypatch.setattr(writer_mod, "_pwrite_all", full_disk)
    else:
        def broken(*args):
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(os, "copy_file_range", broken)
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(base, [adapter], tmp_path / "out")
    assert info.value.code == "write-failed"
    assert ("No space left on device" if where == "pwrite" else "Input/output error") in str(info.value)
    if where == "pwrite":
        assert calls[-1] == "adapterkit-writer"
    no_leftovers(tmp_path, "out")
    assert digest(base) == before


def test_non_finite_block_stops_the_threads_and_counts_every_value(tmp_path: Path, monkeypatch) -> None:
    base = make_base(tmp_path / "base", torch.float32)
    adapter = make_lora(tmp_path / "a", seed=7, targets=("up_proj",))
    monkeypatch.setattr(merge_mod, "CHUNK_ELEMENTS", 2 * H)
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(base, [adapter], tmp_path / "out", weights=[1e39])
    assert info.value.code == "non-finite" and info.value.key == "model.layers.0.mlp.up_proj.weight"
    # every value of the tensor is counted, as the whole-tensor path counts them
    monkeypatch.setattr(merge_mod, "ROW_DTYPES", ())
    with pytest.raises(AdapterkitError) as whole:
        merge_checkpoint(base, [adapter], tmp_path / "out", weights=[1e39])
    assert str(info.value) == str(whole.value)
    no_leftovers(tmp_path, "out")


def test_progress_bar_shows_bytes_and_tensors_on_a_terminal(monkeypatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    with progress_bytes(3 << 30, desc="merge", items=291) as advance:
        advance(1 << 30, 1)
        time.sleep(0.15)  # tqdm redraws at most every 0.1 s
        advance(1 << 30, 0)
    assert "merge" in term.getvalue() and "1/291 tensors" in term.getvalue() and "2.00G/3.00G" in term.getvalue()
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: silent
    with progress_bytes(3 << 30, desc="merge", items=291) as advance:
        advance(1 << 30, 1)
    assert sys.stderr.getvalue() == ""


def test_sigkill_leaves_the_base_intact_and_the_output_absent_or_complete(tmp_path: Path) -> None:
    """``adapterkit merge`` killed at several moments of its writing: BASE is unchanged and OUT is
    either absent or the complete, loadable merge."""
    base = make_base(tmp_path / "base", shards=4, scale=8)
    adapter = make_lora(tmp_path / "a", seed=8, scale=8)
    before = digest(base)
    env = dict(os.environ, PYTHONPATH=str(Path(adapterkit.__file__).parent.parent))
    cmd = [sys.executable, "-m", "adapterkit", "merge", str(base), str(adapter)]
    merge_checkpoint(base, [adapter], tmp_path / "reference")
    delays = [0.0, 0.005, 0.02, 0.05, None]  # seconds after the staging folder appears; None: never killed
    procs = [subprocess.Popen([*cmd, str(tmp_path / f"out{i}")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for i in range(len(delays))]
    killed_while_running = []

    def kill_later(i: int, proc: subprocess.Popen, delay: float) -> None:
        deadline = time.monotonic() + 60
        while proc.poll() is None and not list(tmp_path.glob(f".out{i}.tmp-*")) and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed_while_running.append(i)

    killers = [threading.Thread(target=kill_later, args=(i, proc, delay)) for i, (proc, delay) in enumerate(zip(procs, delays))
               if delay is not None]
    for t in killers:
        t.start()
    for t in killers:
        t.join()
    for proc in procs:
        proc.wait(timeout=60)
    assert procs[-1].returncode == 0
    assert len(killed_while_running) >= 2, killed_while_running  # the kills landed while the merges ran
    reference = files(tmp_path / "reference")
    for i in range(len(delays)):
        out = tmp_path / f"out{i}"
        if out.exists():
            assert files(out) == reference, f"out{i} exists but is not the complete merge"
            for shard in out.glob("*.safetensors"):
                load_file(shard)
    assert os.path.exists(tmp_path / f"out{len(delays) - 1}")
    assert digest(base) == before
    for leftover in tmp_path.glob(".out*.tmp-*"):  # what a killed writer may leave: its staging folder only
        shutil.rmtree(leftover)


@pytest.mark.parametrize("rows", [193, 194, 197, 201, 385, 289])
def test_a_short_last_block_joins_the_one_before_and_stays_pefts_bit_for_bit(rows: int, tmp_path: Path) -> None:
    """Blocks of 192 rows (in_features 4096): a tail of 1-3, 5-7 or 9-11 rows takes another sgemm
    path than the same rows of the whole product (MKL), so the merge must not compute it alone.
    Oracle: PEFT's own LoRA layer (get_delta_weight), W + ΔW in fp32; every row bit for bit."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(rows)
    model = torch.nn.Sequential(torch.nn.Linear(4096, rows, bias=False))
    (tmp_path / "base").mkdir()
    save_file({"0.weight": model[0].weight.detach().clone()}, tmp_path / "base" / "model.safetensors")
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["0"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "lora")
    layer = peft_model.base_model.model[0]
    expected = layer.base_layer.weight.detach() + layer.get_delta_weight("default")
    merge_checkpoint(tmp_path / "base", [tmp_path / "lora"], tmp_path / "out")
    got = load_file(tmp_path / "out" / "model.safetensors")["0.weight"]
    assert torch.equal(got, expected), f"rows differing: {(got != expected).any(dim=1).nonzero().flatten().tolist()}"


@pytest.mark.parametrize("rows, per", [(193, 192), (385, 192), (5, 96), (96, 96), (200, 96), (0, 96)])
def test_row_blocks_cover_every_row_once_with_no_tail_alone(rows: int, per: int) -> None:
    from adapterkit.ops.merge_quantized import most_rows, row_blocks

    blocks = row_blocks(rows, per, 96)
    assert [r for start, stop in blocks for r in range(start, stop)] == list(range(rows))
    assert all(start % per == 0 for start, _ in blocks)
    assert len(blocks) <= 1 or blocks[-1][1] - blocks[-1][0] >= 96
    assert most_rows(rows, per, 96) == max((stop - start for start, stop in blocks), default=0) < per + 96
