"""Tiny base models and PEFT configs for the interop tests against real PEFT.

Every base model is built from a config (no network) under a fixed seed, so
calling a builder twice gives bit-identical weights: the "fresh base model" that
``PeftModel.from_pretrained`` loads an adapter into.  ``CASES`` is the matrix the
interop tests run: each case names a base model, a PEFT config factory and how
to build a fixed input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

SEED = 0
ADAPTER_SEED = 1234


# ----------------------------------------------------------------------------- base models


def llama(dtype: torch.dtype = torch.float32, kv_heads: int = 1, bias: bool = False) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=kv_heads, max_position_embeddings=64, attention_bias=bias,
    )
    return LlamaForCausalLM(cfg).to(dtype).eval()


def gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(SEED)
    cfg = GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=64)
    return GPT2LMHeadModel(cfg).eval()


def t5() -> nn.Module:
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(SEED)
    cfg = T5Config(
        vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2, num_heads=2,
        decoder_start_token_id=0, pad_token_id=0,
    )
    return T5ForConditionalGeneration(cfg).eval()


def llama_classifier() -> nn.Module:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(SEED)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, num_labels=3, pad_token_id=0,
    )
    return LlamaForSequenceClassification(cfg).eval()


def bert_classifier() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(SEED)
    cfg = BertConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64, num_labels=3)
    return BertForSequenceClassification(cfg).eval()


def bert_input() -> dict[str, torch.Tensor]:
    return {**token_input(), "token_type_ids": torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]])}


class ConvNet(nn.Module):
    """Conv1d, Conv2d 3x3, Conv2d 1x1 and Conv3d side by side, plus a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(3, 6, 3, padding=1)
        self.p2 = nn.Conv2d(6, 5, 1)
        self.c3 = nn.Conv3d(3, 4, (2, 3, 3), padding=1)
        self.p3 = nn.Conv3d(4, 4, 1)
        self.head = nn.Linear(6 + 5 + 4, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 3, 4, 4, 4)
        a = self.c1(x.flatten(2)).mean(-1)
        b = self.p2(self.c2(x[:, :, 0])).mean((-1, -2))
        c = self.p3(self.c3(x)).mean((-1, -2, -3))
        return self.head(torch.cat([a, b, c], dim=-1))


class EmbNet(nn.Module):
    """nn.Embedding followed by a Linear (LoRA embedding case)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.out = nn.Linear(8, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(ids))


def convnet() -> nn.Module:
    torch.manual_seed(SEED)
    return ConvNet().eval()


def embnet() -> nn.Module:
    torch.manual_seed(SEED)
    return EmbNet().eval()


def shards(path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder's ``*.safetensors`` files, by key."""
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


# ----------------------------------------------------------------------------- inputs


def token_input() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(1, 64, (2, 6), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def seq2seq_input() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(1, 64, (2, 6), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "decoder_input_ids": ids[:, :4]}


def conv_input() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randn(2, 3, 4, 4, 4, generator=g)


def emb_input() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randint(0, 20, (2, 5), generator=g)


# ----------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    name: str
    base: Callable[[], nn.Module]
    config: Callable[[], Any]  # -> a PEFT config
    inputs: Callable[[], Any]  # -> a dict of kwargs or a single tensor
    kind: str = "LORA"
    notes: dict = field(default_factory=dict)


def _lora(**kw: Any) -> Callable[[], Any]:
    def make() -> Any:
        from peft import LoraConfig

        return LoraConfig(**kw)

    return make


def _cfg(cls_name: str, **kw: Any) -> Callable[[], Any]:
    def make() -> Any:
        import peft

        return getattr(peft, cls_name)(**kw)

    return make


LLAMA_ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
LLAMA_ALL = [*LLAMA_ATTN, "gate_proj", "up_proj", "down_proj"]

CASES: list[Case] = [
    Case("lora_linear", llama, _lora(r=4, lora_alpha=8, target_modules=LLAMA_ALL, task_type="CAUSAL_LM"), token_input),
    Case("lora_gpt2_conv1d", gpt2, _lora(r=4, lora_alpha=16, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True, task_type="CAUSAL_LM"), token_input),
    Case("lora_embedding", embnet, _lora(r=3, lora_alpha=6, target_modules=["emb", "out"]), emb_input),
    Case("lora_conv", convnet, _lora(r=2, lora_alpha=5, target_modules=["c1", "c2", "p2", "c3", "p3"]), conv_input),
    Case("lora_bias", lambda: llama(bias=True), _lora(r=4, lora_alpha=8, target_modules=LLAMA_ATTN, lora_bias=True, task_type="CAUSAL_LM"), token_input),
    Case("lora_train_bias_all", lambda: llama(bias=True), _lora(r=2, lora_alpha=4, target_modules=["q_proj"], bias="all", task_type="CAUSAL_LM"), token_input),
    Case("lora_train_bias_lora_only", lambda: llama(bias=True), _lora(r=2, lora_alpha=4, target_modules=["q_proj"], bias="lora_only", task_type="CAUSAL_LM"), token_input),
    Case("lora_dora", llama, _lora(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], use_dora=True, task_type="CAUSAL_LM"), token_input),
    Case("lora_dora_conv_emb", convnet, _lora(r=2, lora_alpha=4, target_modules=["c2", "p2", "head"], use_dora=True), conv_input),
    Case("lora_dora_emb", embnet, _lora(r=3, lora_alpha=6, target_modules=["emb"], use_dora=True), emb_input),
    Case("lora_rslora", llama, _lora(r=4, lora_alpha=8, target_modules=LLAMA_ATTN, use_rslora=True, task_type="CAUSAL_LM"), token_input),
    Case(
        "lora_patterns", llama,
        _lora(
            r=4, lora_alpha=8, target_modules=LLAMA_ALL, task_type="CAUSAL_LM",
            # The first matching key wins.  Keys are given in sorted order because PEFT writes the
            # config with sort_keys=True, so the on-disk order is the sorted one (see
            # test_rank_pattern_order_is_lost_on_disk).  Overlaps: layer 1 q_proj matches the `^` key
            # and "q_proj"; layer 0 q_proj matches the layers.0 key and "q_proj"; layer 0 down_proj
            # matches "down_proj" and the layers.0 key.
            rank_pattern={"^model.layers.1.self_attn.q_proj": 6, "down_proj": 5, r"layers\.0\..*_proj": 3, "q_proj": 2},
            alpha_pattern={"^model.layers.0.mlp.up_proj": 7, "mlp.up_proj": 11, "v_proj": 3},
        ),
        token_input,
    ),
    Case(
        "lora_rslora_patterns", llama,
        _lora(r=4, lora_alpha=8, target_modules=LLAMA_ALL, use_rslora=True, rank_pattern={"down_proj": 9}, alpha_pattern={"q_proj": 5}, task_type="CAUSAL_LM"),
        token_input,
    ),
    Case("lora_modules_to_save", llama, _lora(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"], task_type="CAUSAL_LM"), token_input),
    Case("lora_embed_tokens", llama, _lora(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"], task_type="CAUSAL_LM"), token_input),
    Case("lora_bf16", lambda: llama(torch.bfloat16), _lora(r=4, lora_alpha=8, target_modules=LLAMA_ALL, task_type="CAUSAL_LM"), token_input),
    Case("lora_fp16", lambda: llama(torch.float16), _lora(r=4, lora_alpha=8, target_modules=LLAMA_ATTN, task_type="CAUSAL_LM"), token_input),
    Case("ia3", llama, _cfg("IA3Config", target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"], task_type="CAUSAL_LM"), token_input, kind="IA3"),
    Case("ia3_conv", convnet, _cfg("IA3Config", target_modules=["c2", "p2", "head"], feedforward_modules=["head"]), conv_input, kind="IA3"),
    Case("prompt_tuning", llama, _cfg("PromptTuningConfig", num_virtual_tokens=3, task_type="CAUSAL_LM"), token_input, kind="PROMPT_TUNING"),
    Case("prompt_tuning_t5", t5, _cfg("PromptTuningConfig", num_virtual_tokens=3, task_type="SEQ_2_SEQ_LM"), seq2seq_input, kind="PROMPT_TUNING"),
    Case("prefix_tuning", llama, _cfg("PrefixTuningConfig", num_virtual_tokens=3, task_type="CAUSAL_LM"), token_input, kind="PREFIX_TUNING"),
    Case("prefix_projection", lambda: llama(kv_heads=2), _cfg("PrefixTuningConfig", num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=12, task_type="CAUSAL_LM"), token_input, kind="PREFIX_TUNING"),
    Case("p_tuning_mlp", llama, _cfg("PromptEncoderConfig", num_virtual_tokens=3, encoder_hidden_size=12, encoder_reparameterization_type="MLP", task_type="CAUSAL_LM"), token_input, kind="P_TUNING"),
    Case("p_tuning_lstm", llama, _cfg("PromptEncoderConfig", num_virtual_tokens=3, encoder_hidden_size=12, encoder_reparameterization_type="LSTM", task_type="CAUSAL_LM"), token_input, kind="P_TUNING"),
]
CASES_BY_NAME = {c.name: c for c in CASES}


# ----------------------------------------------------------------------------- helpers


def randomize_adapter(model: nn.Module, seed: int = ADAPTER_SEED, scale: float = 0.3) -> None:
    """Fill every trainable (adapter) parameter with randn under ``seed``, in its own dtype.

    PEFT initialises lora_B to zero, which would make many checks vacuous.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.copy_((torch.randn(p.shape, generator=g) * scale).to(p.dtype))


def build_peft_model(case: Case, adapter_name: str = "default") -> nn.Module:
    from peft import get_peft_model

    model = get_peft_model(case.base(), case.config(), adapter_name=adapter_name)
    randomize_adapter(model)
    return model.eval()


def run(model: nn.Module, inputs: Any) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return out.logits if hasattr(out, "logits") else out
