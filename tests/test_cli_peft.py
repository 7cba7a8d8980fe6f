"""`adapterkit info / validate / convert` on adapters written by real PEFT, all five kinds."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from peft import (
    IA3Config,
    LoraConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    get_peft_model,
)
from transformers import LlamaConfig, LlamaForCausalLM

from adapterkit.cli import main

CONFIGS = {
    "LORA": lambda: LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], rank_pattern={"v_proj": 2}),
    "IA3": lambda: IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]),
    "PROMPT_TUNING": lambda: PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3),
    "PREFIX_TUNING": lambda: PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3),
    "P_TUNING": lambda: PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, encoder_hidden_size=8),
}


def _base():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def peft_dir(request, tmp_path_factory):
    model = get_peft_model(_base(), CONFIGS[request.param]())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "ia3" in name else 0.0))
    model.eval()
    out = tmp_path_factory.mktemp(request.param.lower())
    model.save_pretrained(out)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    return request.param, out, ids, logits


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_info_validate_convert(peft_dir, tmp_path):
    kind, path, ids, logits = peft_dir
    res = run("info", path, "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["kind"] == kind and summary["format"] == "PEFT profile"
    assert summary["modules"] >= 1 and summary["parameters"] > 0
    res = run("validate", path)
    assert res.exit_code == 0 and "valid (0 errors, 0 warnings)" in res.output, res.output
    for form, out in (("file", tmp_path / "a.safetensors"), ("dir", tmp_path / "a")):
        res = run("convert", path, out, "--form", form)
        assert res.exit_code == 0, res.output
        assert run("validate", out).exit_code == 0
    res = run("convert", tmp_path / "a.safetensors", tmp_path / "b")
    assert res.exit_code == 0
    for out in (tmp_path / "a", tmp_path / "b"):
        model = PeftModel.from_pretrained(_base(), out).eval()
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids).logits, logits)
