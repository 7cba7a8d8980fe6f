"""Hostile quantized checkpoints: every reader ends in success or an AdapterkitError, memory bounded.

Seeds are tiny checkpoints the owning libraries wrote (bitsandbytes NF4 with and without double
quantization, FP4, int8, through transformers); each case damages one: a member dropped,
truncated, re-typed or filled with extreme values, the quant_state record's bytes edited, a
config field set to a wrong value or type (a lying config).  Then the dequantized view opens
it and reads every logical tensor, and a dense merge of a small LoRA runs on it.  Every case
must end in success or an ``AdapterkitError`` with a code in ``CODES``, allocating at most a
small multiple of the checkpoint's size (tracemalloc), and never leave an output behind on
failure.  Formats that other issue parts add register their seeds in ``SEEDS``.
"""

from __future__ import annotations

import json
import shutil
import tracemalloc
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

pytest.importorskip("bitsandbytes")

from adapterkit.checkpoint import open_checkpoint
from adapterkit.errors import CODES, AdapterkitError
from adapterkit.io.writer import save
from adapterkit.ops.merge_quantized import open_quantized
from adapterkit.ops.merging import _read_config, merge_checkpoint

BNB_SEEDS = {
    "nf4-dq": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
    "nf4": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
    "fp4-dq": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=True),
    "int8": dict(load_in_8bit=True),
}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("qfuzz")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=32, tie_word_embeddings=False, dtype="bfloat16")
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(root / "dense")
    out = {}
    for name, kwargs in BNB_SEEDS.items():
        model = AutoModelForCausalLM.from_pretrained(root / "dense", quantization_config=BitsAndBytesConfig(**kwargs), device_map="cpu")
        model.save_pretrained(root / name)
        out[name] = root / name
    from adapterkit import Adapter
    from adapterkit.kinds.lora import LoraConfig

    lora = Adapter.from_tensors(LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]), {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(2, 32),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.randn(32, 2),
    })
    save(lora, root / "lora")
    return root, out


MUTATIONS = ("drop", "truncate", "retype", "extreme", "record", "config")


def _mutate(src: Path, dst: Path, data) -> None:
    shutil.copytree(src, dst)
    tensors = load_file(src / "model.safetensors")
    config = json.loads((src / "config.json").read_text())
    how = data.draw(st.sampled_from(MUTATIONS))
    members = sorted(k for k in tensors if tensors[k].dtype in (torch.uint8, torch.int8) or k.endswith((".absmax", ".SCB",
                                                                                                          "quant_map", "nested_absmax")))
    key = data.draw(st.sampled_from(members))
    t = tensors[key]
    if how == "drop":
        del tensors[key]
    elif how == "truncate" and t.numel() > 1:
        tensors[key] = t.reshape(-1)[: data.draw(st.integers(0, t.numel() - 1))].clone()
    elif how == "retype":
        dtype = data.draw(st.sampled_from([torch.float32, torch.bfloat16, torch.uint8, torch.int8, torch.int32]))
        raw = t.reshape(-1).view(torch.uint8)
        raw = raw[: raw.numel() // dtype.itemsize * dtype.itemsize]
        tensors[key] = raw.view(dtype).clone()
    elif how == "extreme":
        value = data.draw(st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.0, 1e38, 255, -128]))
        if t.is_floating_point():
            tensors[key] = torch.full_like(t, value if isinstance(value, float) else float(value))
        else:
            info = torch.iinfo(t.dtype)
            tensors[key] = torch.full_like(t, int(min(max(value if isinstance(value, int) else 0, info.min), info.max)))
    elif how == "record":
        records = [k for k in tensors if "quant_state" in k] or [key]
        rkey = data.draw(st.sampled_from(records))
        raw = bytearray(bytes(tensors[rkey].reshape(-1).view(torch.uint8).tolist()))
        edits = data.draw(st.lists(st.tuples(st.integers(0, max(len(raw) - 1, 0)), st.integers(0, 255)), min_size=1, max_size=4))
        for at, byte in edits:
            if raw:
                raw[at] = byte
        if data.draw(st.booleans()):
            raw = raw[: data.draw(st.integers(0, len(raw)))]
        tensors[rkey] = torch.tensor(list(raw), dtype=torch.uint8)
    else:
        qc = config["quantization_config"]
        field = data.draw(st.sampled_from([*sorted(qc), "quant_method"]))
        qc[field] = data.draw(st.one_of(st.none(), st.booleans(), st.integers(-3, 5000), st.text(max_size=8),
                                        st.sampled_from(["nf4", "fp4", "gptq", "awq", "fp8", "uint8", "bfloat16", "hqq"]),
                                        st.lists(st.integers(0, 300), max_size=3)))
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(config))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_quantized_checkpoints(seeds, tmp_path_factory, data):
    root, bases = seeds
    name = data.draw(st.sampled_from(sorted(bases)))
    case = tmp_path_factory.mktemp("case")
    _mutate(bases[name], case / "base", data)
    size = (case / "base" / "model.safetensors").stat().st_size
    tracemalloc.start()
    try:
        try:
            ckpt = open_checkpoint(case / "base")
            view = open_quantized(ckpt, _read_config(ckpt))
            if view is not None:
                for key in view.keys():
                    view.read(key)
        except AdapterkitError as exc:
            assert exc.code in CODES, exc
        out = case / "out"
        try:
            merge_checkpoint(case / "base", [root / "lora"], out, dtype="BF16")
        except AdapterkitError as exc:
            assert exc.code in CODES, exc
            assert not out.exists()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * size + (8 << 20), f"{peak} bytes allocated for a {size}-byte checkpoint"
