"""The cases of PEFT's own test matrix, as data for ``test_peft_matrix.py``.

Ported from PEFT's tests (the facts, not the code): ``tests/test_custom_models.py``
(``TEST_CASES``: its LoRA and IA3 rows in full, and the first row of every other PEFT method,
which adapterkit does not implement yet and must refuse by name; ``MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES``:
its LoRA and IA3 rows), ``tests/test_decoder_models.py`` (``ALL_CONFIGS``' LoRA, IA3 and
prompt-learning configs on the decoder architectures it uses, each built here as a tiny
model from a transformers config: no downloads) and ``tests/test_initialization.py``
(the LoRA scaling cases: rsLoRA, rank and alpha patterns).

Every base model is built under a fixed seed, so two calls give the same weights.  Inputs
are PEFT's: ``torch.arange(90).view(9, 10)`` for the custom models, two short token rows
with a padded position for the decoders.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

SEED = 0

# ----------------------------------------------------------------------------- custom models
# The small modules of PEFT's test_custom_models.py: same layers, same shapes.


class MLP(nn.Module):
    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.lin0 = nn.Linear(10, 20, bias=bias)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.lin1 = nn.Linear(20, 2, bias=bias)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.sm(self.lin1(self.drop(self.relu(self.lin0(X.float())))))


class EmbConv1D(nn.Module):
    """nn.Embedding then transformers' Conv1D (GPT-2's layer), then a Linear."""

    def __init__(self) -> None:
        from transformers.pytorch_utils import Conv1D

        super().__init__()
        self.emb = nn.Embedding(100, 5)
        self.conv1d = Conv1D(1, 5)
        self.relu = nn.ReLU()
        self.flat = nn.Flatten()
        self.lin0 = nn.Linear(10, 2)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.sm(self.lin0(self.flat(self.relu(self.conv1d(self.emb(X))))))


class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1d = nn.Conv1d(1, 1, 2)
        self.relu = nn.ReLU()
        self.flat = nn.Flatten()
        self.lin0 = nn.Linear(9, 2)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        X = X.float().reshape(-1, 1, 10)
        return self.sm(self.lin0(self.flat(self.relu(self.conv1d(X)))))


class Conv2dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv2d = nn.Conv2d(5, 10, 3)
        self.relu = nn.ReLU()
        self.flat = nn.Flatten()
        self.lin0 = nn.Linear(10, 2)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        X = X.float().reshape(-1, 5, 3, 3)
        return self.sm(self.lin0(self.flat(self.relu(self.conv2d(X)))))


class Conv2dGroups(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin0 = nn.Linear(90, 288)
        self.conv2d = nn.Conv2d(16, 16, 3, groups=8)
        self.relu = nn.ReLU()
        self.flat = nn.Flatten()
        self.lin1 = nn.Linear(16, 2)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        X = self.lin0(X.float().flatten()).reshape(2, 16, 3, 3)
        return self.sm(self.lin1(self.flat(self.relu(self.conv2d(X)))))


class Conv2dGroups2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv2d = nn.Conv2d(16, 32, 3, padding=1, groups=2)
        self.relu = nn.ReLU()
        self.flat = nn.Flatten()
        self.lin0 = nn.Linear(12800, 2)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, X: torch.Tensor) -> torch.Tensor:  # PEFT's model ignores its input
        X = torch.arange(9 * 16 * 20 * 20).view(9, 16, 20, 20).float() / 1000
        return self.sm(self.lin0(self.flat(self.relu(self.conv2d(X)))))


class Conv3dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv3d = nn.Conv3d(5, 10, 3)
        self.relu = nn.ReLU()
        self.flat = nn.Flatten()
        self.lin0 = nn.Linear(10, 2)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        X = torch.stack([X.float()] * 3, dim=-1).reshape(-1, 5, 3, 3, 3)
        return self.sm(self.lin0(self.flat(self.relu(self.conv3d(X)))))


class MhaNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(10, 2)
        self.lin0 = nn.Linear(10, 2)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        X = X.float()
        return self.sm(self.lin0(self.mha(X, X, X)[0]))


class _LinearUsingParameter(nn.Module):
    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(in_features, out_features))
        self.bias = nn.Parameter(torch.ones(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


class MlpUsingParameters(nn.Module):
    """An MLP whose layers are plain parameters (what ``target_parameters`` targets)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin0 = _LinearUsingParameter(10, 20)
        self.relu = nn.ReLU()
        self.lin1 = _LinearUsingParameter(20, 2)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.sm(self.lin1(self.relu(self.lin0(X.float()))))


class LinearEmbedConv2d(nn.Module):
    """test_initialization.py's model (Linear, Embedding, Conv2d side by side), scaled down to
    take the custom models' (9, 10) input."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(10, 40)
        self.embed = nn.Embedding(100, 40)
        self.conv2d = nn.Conv2d(10, 16, 3)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        parts = (self.linear(X.float() / 90), self.embed(X), self.conv2d(X.float().reshape(1, 10, 3, 3) / 90))
        return torch.cat([p.flatten() for p in parts])


class Pair(nn.Sequential):
    """Two ``LinearEmbedConv2d`` as ``0`` and ``1`` (PEFT's test_rank_alpha_pattern_override)."""

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return torch.cat([m(X) for m in self])


CUSTOM: dict[str, Callable[[], nn.Module]] = {
    "MLP": MLP, "MLP_nobias": lambda: MLP(bias=False), "EmbConv1D": EmbConv1D, "Conv1d": Conv1dNet, "Conv2d": Conv2dNet,
    "Conv2dGroups": Conv2dGroups, "Conv2dGroups2": Conv2dGroups2, "Conv3d": Conv3dNet, "MHA": MhaNet,
    "MlpUsingParameters": MlpUsingParameters, "LinearEmbedConv2d": LinearEmbedConv2d,
    "Pair": lambda: Pair(LinearEmbedConv2d(), LinearEmbedConv2d()),
}


def custom_input() -> dict[str, torch.Tensor]:
    return {"X": torch.arange(90).view(9, 10)}


# ----------------------------------------------------------------------------- decoders
# test_decoder_models.py's architectures, as tiny random models from a transformers config.

_DIMS = {"vocab_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 64}


def _decoder(config_cls: str, model_cls: str, **kw: Any) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import transformers

        cfg = getattr(transformers, config_cls)(**kw)
        return getattr(transformers, model_cls)(cfg)

    return make


DECODERS: dict[str, Callable[[], nn.Module]] = {
    "opt": _decoder("OPTConfig", "OPTForCausalLM", **_DIMS, hidden_size=16, ffn_dim=32, word_embed_proj_dim=16),
    "gpt2": _decoder("GPT2Config", "GPT2LMHeadModel", vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=64),
    "gptj": _decoder("GPTJConfig", "GPTJForCausalLM", vocab_size=64, n_embd=16, n_layer=2, n_head=2, rotary_dim=4, n_positions=64),
    "llama": _decoder("LlamaConfig", "LlamaForCausalLM", **_DIMS, hidden_size=16, intermediate_size=32, num_key_value_heads=1),
    "qwen2": _decoder("Qwen2Config", "Qwen2ForCausalLM", **_DIMS, hidden_size=16, intermediate_size=32, num_key_value_heads=1),
    "gemma3": _decoder("Gemma3TextConfig", "Gemma3ForCausalLM", **_DIMS, hidden_size=16, intermediate_size=32, num_key_value_heads=1, head_dim=8),
    "mistral": _decoder("MistralConfig", "MistralForCausalLM", **_DIMS, hidden_size=16, intermediate_size=32, num_key_value_heads=1),
}


def decoder_input() -> dict[str, torch.Tensor]:
    return {"input_ids": torch.tensor([[1, 1, 1], [1, 2, 1]]), "attention_mask": torch.tensor([[1, 1, 1], [1, 0, 1]])}


# test_initialization.py's TestScaling uses a tiny OPT with 5 attention layers
DECODERS["opt5"] = _decoder("OPTConfig", "OPTForCausalLM", **{**_DIMS, "num_hidden_layers": 5}, hidden_size=16, ffn_dim=32, word_embed_proj_dim=16)


_BUILT: dict[str, nn.Module] = {}


def build_base(model: str) -> nn.Module:
    """A fresh copy of the base model ``model`` (a key of CUSTOM or DECODERS), built once under
    a fixed seed, in eval mode."""
    if model not in _BUILT:
        torch.manual_seed(SEED)
        _BUILT[model] = (CUSTOM.get(model) or DECODERS[model])().eval()
    return copy.deepcopy(_BUILT[model])


def inputs_for(model: str) -> dict[str, torch.Tensor]:
    return custom_input() if model in CUSTOM else decoder_input()


# ----------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class MatrixCase:
    """One row: a PEFT config (class name + kwargs) on a base model.

    ``second``: a second config, added as another adapter and active together with the first
    (MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES); ``source``: the PEFT test file the row comes from.
    """

    name: str
    model: str
    config: str
    kwargs: dict[str, Any]
    source: str
    second: dict[str, Any] | None = None
    tags: tuple[str, ...] = field(default=())

    @property
    def kind(self) -> str:
        return {"LoraConfig": "LORA", "IA3Config": "IA3", "LoHaConfig": "LOHA", "LoKrConfig": "LOKR", "PromptTuningConfig": "PROMPT_TUNING",
                "PrefixTuningConfig": "PREFIX_TUNING", "PromptEncoderConfig": "P_TUNING"}.get(self.config, self.config)

    @property
    def supported_kind(self) -> bool:
        return self.kind in ("LORA", "IA3", "LOHA", "LOKR", "PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING")

    @property
    def prompt(self) -> bool:
        return self.kind in ("PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING")

    def make_config(self, kwargs: dict[str, Any] | None = None) -> Any:
        import peft

        kw = dict(self.kwargs if kwargs is None else kwargs)
        for key, value in list(kw.items()):  # nested configs are given as (class name, kwargs)
            if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) and value[0].endswith("Config"):
                kw[key] = getattr(peft, value[0])(**value[1])
        return getattr(peft, self.config)(**kw)


CUSTOM_SOURCE = "test_custom_models.py::TEST_CASES"

# (name, model, config class, kwargs) — the LoRA and IA3 rows of PEFT's TEST_CASES
_CUSTOM_ROWS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("Vanilla MLP 1 LoRA", "MLP", "LoraConfig", {"target_modules": "lin0"}),
    ("Vanilla MLP 2 LoRA", "MLP", "LoraConfig", {"target_modules": ["lin0"]}),
    ("Vanilla MLP 3 LoRA", "MLP", "LoraConfig", {"target_modules": ["lin1"]}),
    ("Vanilla MLP 4 LoRA", "MLP", "LoraConfig", {"target_modules": ["lin0", "lin1"]}),
    ("Vanilla MLP 5 LoRA", "MLP", "LoraConfig", {"target_modules": ["lin0"], "modules_to_save": ["lin1"]}),
    ("Vanilla MLP 6 LoRA", "MLP", "LoraConfig", {"target_modules": ["lin0"], "lora_alpha": 4, "lora_dropout": 0.1}),
    ("Vanilla MLP 7 LoRA with DoRA", "MLP", "LoraConfig", {"target_modules": ["lin0"], "use_dora": True}),
    ("Vanilla MLP 8 LoRA with DoRA", "MLP", "LoraConfig", {"target_modules": ["lin0", "lin1"], "use_dora": True}),
    ("Vanilla MLP 1 LoRA with KaSA", "MLP", "LoraConfig", {"target_modules": ["lin0"], "kasa_config": ("KasaConfig", {}), "r": 4}),
    ("Vanilla MLP 1 LoRA with MiCA", "MLP", "LoraConfig", {"target_modules": ["lin0"], "init_lora_weights": "mica", "r": 4}),
    ("Vanilla MLP 9 LoRA with DoRA", "MLP", "LoraConfig", {"target_modules": "lin1", "use_dora": True, "lora_alpha": 32}),
    ("Vanilla MLP 10 LoRA with VeLoRA random", "MLP", "LoraConfig",
     {"target_modules": ["lin0"], "velora_config": ("VeloraConfig", {"num_groups": 2, "init_type": "random"})}),
    ("Vanilla MLP 11 LoRA with VeLoRA batch_average", "MLP", "LoraConfig",
     {"target_modules": ["lin0", "lin1"], "velora_config": ("VeloraConfig", {"num_groups": 2, "init_type": "batch_average"})}),
    ("Vanilla MLP 12 LoRA with VeLoRA batch_average_once", "MLP", "LoraConfig",
     {"target_modules": ["lin0"], "velora_config": ("VeloraConfig", {"num_groups": 2, "init_type": "batch_average_once"})}),
    ("Embedding + transformers Conv1D 1 LoRA", "EmbConv1D", "LoraConfig", {"target_modules": ["conv1d"]}),
    ("Embedding + transformers Conv1D 2 LoRA", "EmbConv1D", "LoraConfig", {"target_modules": ["emb"]}),
    ("Embedding + transformers Conv1D 3 LoRA", "EmbConv1D", "LoraConfig", {"target_modules": ["emb", "conv1d"]}),
    ("Embedding + transformers Conv1D 1 DoRA", "EmbConv1D", "LoraConfig", {"target_modules": ["conv1d"], "use_dora": True}),
    ("Embedding + transformers Conv1D 2 DoRA", "EmbConv1D", "LoraConfig", {"target_modules": ["emb"], "use_dora": True}),
    ("Embedding + transformers Conv1D 3 DoRA", "EmbConv1D", "LoraConfig", {"target_modules": ["emb", "conv1d"], "use_dora": True}),
    ("Embedding + transformers Conv1D 1 LoRA trainable_tokens", "EmbConv1D", "LoraConfig",
     {"target_modules": ["conv1d"], "trainable_token_indices": {"emb": [0, 10]}}),
    ("Conv1d LoRA", "Conv1d", "LoraConfig", {"target_modules": ["conv1d"]}),
    ("Conv1d LoRA with DoRA", "Conv1d", "LoraConfig", {"target_modules": ["conv1d"], "use_dora": True}),
    ("Conv2d 1 LoRA", "Conv2d", "LoraConfig", {"target_modules": ["conv2d"]}),
    ("Conv2d 2 LoRA", "Conv2d", "LoraConfig", {"target_modules": ["conv2d", "lin0"]}),
    ("Conv2d 1 LoRA with DoRA", "Conv2d", "LoraConfig", {"target_modules": ["conv2d"], "use_dora": True}),
    ("Conv2d 2 LoRA with DoRA", "Conv2d", "LoraConfig", {"target_modules": ["conv2d", "lin0"], "use_dora": True}),
    ("Conv2d Groups LoRA", "Conv2dGroups", "LoraConfig", {"target_modules": ["conv2d"]}),
    ("Conv2d Groups2 LoRA", "Conv2dGroups2", "LoraConfig", {"target_modules": ["conv2d"]}),
    ("Conv2d Groups LoRA with DoRA", "Conv2dGroups", "LoraConfig", {"target_modules": ["conv2d"], "use_dora": True}),
    ("Conv2d Groups2 LoRA with DoRA", "Conv2dGroups2", "LoraConfig", {"target_modules": ["conv2d"], "use_dora": True}),
    ("Conv3d 1 LoRA", "Conv3d", "LoraConfig", {"target_modules": ["conv3d"]}),
    ("Conv3d 2 LoRA", "Conv3d", "LoraConfig", {"target_modules": ["conv3d", "lin0"]}),
    ("Conv3d 1 LoRA with DoRA", "Conv3d", "LoraConfig", {"target_modules": ["conv3d"], "use_dora": True}),
    ("Conv3d 2 LoRA with DoRA", "Conv3d", "LoraConfig", {"target_modules": ["conv3d", "lin0"], "use_dora": True}),
    ("Vanilla MLP 1 LoRA with lora_b bias", "MLP", "LoraConfig", {"target_modules": ["lin0", "lin1"], "lora_bias": True, "lora_alpha": 32}),
    ("Conv2d 1 LoRA with lora_b bias", "Conv2d", "LoraConfig", {"target_modules": ["conv2d"], "lora_bias": True, "lora_alpha": 32}),
    ("Conv3d 1 LoRA with lora_b bias", "Conv3d", "LoraConfig", {"target_modules": ["conv3d"], "lora_bias": True, "lora_alpha": 32}),
    ("MHA 1 LoRA", "MHA", "LoraConfig", {"target_modules": ["mha"]}),
    ("MHA 2 LoRA", "MHA", "LoraConfig", {"target_modules": ["mha", "lin0"]}),
    ("MLP 1 using nn.Parameter LoRA", "MlpUsingParameters", "LoraConfig", {"target_parameters": ["lin0.weight"]}),
    ("MLP 2 using nn.Parameter LoRA", "MLP", "LoraConfig", {"target_modules": ["lin0"], "target_parameters": ["lin1.weight"]}),
    ("BD-LoRA A only", "MLP", "LoraConfig",
     {"target_modules": ["lin0", "lin1"], "use_bdlora": ("BdLoraConfig", {"target_modules_bd_a": ["lin0"], "match_strict": False})}),
    ("BD-LoRA B only", "MLP", "LoraConfig",
     {"target_modules": ["lin0", "lin1"], "use_bdlora": ("BdLoraConfig", {"target_modules_bd_b": ["lin1"], "nblocks": 2, "match_strict": False})}),
    ("BD-LoRA both A and B", "MLP", "LoraConfig",
     {"target_modules": ["lin0", "lin1"], "use_bdlora": ("BdLoraConfig", {"target_modules_bd_a": ["lin0"], "target_modules_bd_b": ["lin1"], "nblocks": 2})}),
    ("Vanilla MLP 1 LoRA with Monteclora", "MLP", "LoraConfig",
     {"target_modules": ["lin0"], "monteclora_config": ("MontecloraConfig", {"num_samples": 2})}),
    ("Vanilla MLP 1 IA3", "MLP", "IA3Config", {"target_modules": "lin0", "feedforward_modules": []}),
    ("Vanilla MLP 2 IA3", "MLP", "IA3Config", {"target_modules": "lin0", "feedforward_modules": "lin0"}),
    ("Vanilla MLP 3 IA3", "MLP", "IA3Config", {"target_modules": ["lin0"], "feedforward_modules": []}),
    ("Vanilla MLP 4 IA3", "MLP", "IA3Config", {"target_modules": ["lin0"], "feedforward_modules": ["lin0"]}),
    ("Vanilla MLP 5 IA3", "MLP", "IA3Config", {"target_modules": ["lin1"], "feedforward_modules": []}),
    ("Vanilla MLP 6 IA3", "MLP", "IA3Config", {"target_modules": ["lin1"], "feedforward_modules": ["lin1"]}),
    ("Vanilla MLP 7 IA3", "MLP", "IA3Config", {"target_modules": ["lin0", "lin1"], "feedforward_modules": []}),
    ("Vanilla MLP 8 IA3", "MLP", "IA3Config", {"target_modules": ["lin0", "lin1"], "feedforward_modules": ["lin0", "lin1"]}),
    ("Vanilla MLP 9 IA3", "MLP", "IA3Config", {"target_modules": ["lin0"], "modules_to_save": ["lin1"], "feedforward_modules": ["lin0"]}),
    ("transformers Conv1D 1 IA3", "EmbConv1D", "IA3Config", {"target_modules": ["conv1d"], "feedforward_modules": ["conv1d"]}),
    ("transformers Conv1D 2 IA3", "EmbConv1D", "IA3Config", {"target_modules": ["conv1d", "lin0"], "feedforward_modules": ["conv1d", "lin0"]}),
    # PEFT names this row "transformers Conv1D 1 IA3" too
    ("transformers Conv1D 3 IA3", "EmbConv1D", "IA3Config",
     {"target_modules": ["conv1d"], "feedforward_modules": ["conv1d"], "modules_to_save": ["lin0"]}),
    ("Conv2d 1 IA3", "Conv2d", "IA3Config", {"target_modules": ["conv2d"], "feedforward_modules": []}),
    ("Conv2d 2 IA3", "Conv2d", "IA3Config", {"target_modules": ["conv2d"], "feedforward_modules": ["conv2d"]}),
    ("Conv2d 3 IA3", "Conv2d", "IA3Config", {"target_modules": ["conv2d", "lin0"], "feedforward_modules": []}),
    ("Conv2d 4 IA3", "Conv2d", "IA3Config", {"target_modules": ["conv2d", "lin0"], "feedforward_modules": ["conv2d"]}),
    ("Conv2d 5 IA3", "Conv2d", "IA3Config", {"target_modules": ["conv2d", "lin0"], "feedforward_modules": ["conv2d", "lin0"]}),
    ("Conv3d 1 IA3", "Conv3d", "IA3Config", {"target_modules": ["conv3d"], "feedforward_modules": []}),
    ("Conv3d 2 IA3", "Conv3d", "IA3Config", {"target_modules": ["conv3d"], "feedforward_modules": ["conv3d"]}),
    ("Conv3d 3 IA3", "Conv3d", "IA3Config", {"target_modules": ["conv3d", "lin0"], "feedforward_modules": []}),
    ("Conv3d 4 IA3", "Conv3d", "IA3Config", {"target_modules": ["conv3d", "lin0"], "feedforward_modules": ["conv3d"]}),
    ("Conv3d 5 IA3", "Conv3d", "IA3Config", {"target_modules": ["conv3d", "lin0"], "feedforward_modules": ["conv3d", "lin0"]}),
]

# TEST_CASES' LoHa rows, in full
_LOHA_ROWS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("Vanilla MLP 1 LOHA", "MLP", "LoHaConfig", {"target_modules": "lin0"}),
    ("Vanilla MLP 2 LOHA", "MLP", "LoHaConfig", {"target_modules": ["lin0"]}),
    ("Vanilla MLP 3 LOHA", "MLP", "LoHaConfig", {"target_modules": ["lin1"]}),
    ("Vanilla MLP 4 LOHA", "MLP", "LoHaConfig", {"target_modules": ["lin0", "lin1"]}),
    ("Vanilla MLP 5 LOHA", "MLP", "LoHaConfig", {"target_modules": ["lin0"], "modules_to_save": ["lin1"]}),
    ("Vanilla MLP 6 LOHA", "MLP", "LoHaConfig", {"target_modules": ["lin0"], "alpha": 4, "module_dropout": 0.1}),
    ("Vanilla MLP 7 LOHA", "MLP", "LoHaConfig", {"target_modules": "lin0", "rank_dropout": 0.5}),
    ("Conv2d 1 LOHA", "Conv2d", "LoHaConfig", {"target_modules": ["conv2d"]}),
    ("Conv2d 2 LOHA", "Conv2d", "LoHaConfig", {"target_modules": ["conv2d", "lin0"]}),
    ("Conv2d 3 LOHA", "Conv2d", "LoHaConfig", {"target_modules": ["conv2d"], "use_effective_conv2d": True}),
    ("Conv2d 4 LOHA", "Conv2d", "LoHaConfig", {"target_modules": ["conv2d", "lin0"], "use_effective_conv2d": True}),
]

# TEST_CASES' LoKr rows, in full
_LOKR_ROWS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("Vanilla MLP 1 LOKR", "MLP", "LoKrConfig", {"target_modules": "lin0"}),
    ("Vanilla MLP 2 LOKR", "MLP", "LoKrConfig", {"target_modules": ["lin0"]}),
    ("Vanilla MLP 3 LOKR", "MLP", "LoKrConfig", {"target_modules": ["lin1"]}),
    ("Vanilla MLP 4 LOKR", "MLP", "LoKrConfig", {"target_modules": ["lin0", "lin1"]}),
    ("Vanilla MLP 5 LOKR", "MLP", "LoKrConfig", {"target_modules": ["lin0"], "modules_to_save": ["lin1"]}),
    ("Vanilla MLP 6 LOKR", "MLP", "LoKrConfig", {"target_modules": ["lin0"], "alpha": 4, "module_dropout": 0.1}),
    ("Vanilla MLP 7 LOKR", "MLP", "LoKrConfig", {"target_modules": "lin0", "rank_dropout": 0.5}),
    ("Vanilla MLP 8 LOKR", "MLP", "LoKrConfig", {"target_modules": "lin0", "decompose_both": True, "r": 1, "alpha": 1}),
    ("Conv2d 1 LOKR", "Conv2d", "LoKrConfig", {"target_modules": ["conv2d"]}),
    ("Conv2d 2 LOKR", "Conv2d", "LoKrConfig", {"target_modules": ["conv2d", "lin0"]}),
    ("Conv2d 3 LOKR", "Conv2d", "LoKrConfig", {"target_modules": ["conv2d"], "use_effective_conv2d": True}),
    ("Conv2d 4 LOKR", "Conv2d", "LoKrConfig", {"target_modules": ["conv2d", "lin0"], "use_effective_conv2d": True}),
    ("Conv2d 5 LOKR", "Conv2d", "LoKrConfig", {"target_modules": ["conv2d", "lin0"], "use_effective_conv2d": True, "decompose_both": True}),
    ("Conv2d 6 LOKR", "Conv2d", "LoKrConfig", {"target_modules": ["conv2d", "lin0"], "use_effective_conv2d": True, "decompose_factor": 4}),
    ("Conv2d 7 LOKR", "Conv2d", "LoKrConfig",
     {"target_modules": ["conv2d", "lin0"], "use_effective_conv2d": True, "decompose_both": True, "decompose_factor": 4}),
]

# The first TEST_CASES row of every other PEFT method (AdaMSS left out: PEFT needs scikit-learn for it): adapterkit does not implement these kinds
# yet (a later issue), and must refuse each by its peft_type.
_OTHER_KIND_ROWS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("Vanilla MLP 1 GLoRA", "MLP", "GloraConfig", {"target_modules": "lin0"}),
    ("Vanilla MLP 1 BEFT", "MLP", "BeftConfig", {"target_modules": "lin0"}),
    ("Vanilla MLP 1 OFT", "MLP", "OFTConfig", {"r": 2, "oft_block_size": 0, "target_modules": "lin0", "use_cayley_neumann": False}),
    ("Vanilla MLP 1 DEFT", "MLP", "DeftConfig", {"target_modules": "lin0"}),
    ("Vanilla MLP 1 HRA", "MLP", "HRAConfig", {"target_modules": "lin0"}),
    ("Vanilla MLP 1 MiSS", "MLP", "MissConfig", {"target_modules": "lin0", "r": 2}),
    ("Vanilla MLP 1 BOFT", "MLP", "BOFTConfig", {"target_modules": ["lin1"], "boft_block_size": 2}),
    ("Vanilla MLP 1 SHiRA", "MLP", "ShiraConfig", {"r": 1, "target_modules": "lin0"}),
    ("Vanilla MLP 1 VeRA", "MLP", "VeraConfig", {"target_modules": "lin0"}),
    ("Vanilla MLP 1 FourierFT", "MLP", "FourierFTConfig", {"n_frequency": 10, "target_modules": "lin0", "init_weights": True}),
    ("Vanilla MLP 1 VBLoRA", "MLP", "VBLoRAConfig", {"target_modules": "lin0", "vector_length": 1, "num_vectors": 5}),
    ("Embedding + transformers Conv1D 1 trainable_tokens", "EmbConv1D", "TrainableTokensConfig",
     {"target_modules": ["emb"], "token_indices": [0, 1, 3], "init_weights": False}),
    ("Vanilla MLP 1 RandLora", "MLP", "RandLoraConfig", {"target_modules": "lin0", "randlora_alpha": 1}),
    ("Vanilla MLP 1 C3A", "MLP", "C3AConfig", {"block_size": 2, "target_modules": "lin0", "init_weights": True}),
    ("Vanilla MLP 1 RoAd", "MLP", "RoadConfig", {"target_modules": "lin0", "group_size": 2}),
    ("Vanilla MLP 1 DeLoRA", "MLP", "DeloraConfig", {"target_modules": "lin0"}),
    ("Vanilla MLP 1 HiRA", "MLP", "HiraConfig", {"target_modules": "lin0"}),
    ("Linear 4 LNTuning", "MLP", "LNTuningConfig", {"target_modules": "lin0"}),
    ("Vanilla MLP 1 Supertuning", "MLP", "SupertuningConfig", {"sparsity": 0.5, "target_modules": "lin0"}),
    ("Vanilla MLP 1 TinyLoRA", "MLP", "TinyLoraConfig", {"target_modules": "lin0", "r": 2, "u": 16}),
    ("Vanilla MLP 1 PVeRA", "MLP", "PveraConfig", {"target_modules": "lin0"}),
    ("Vanilla MLP 1 GraLoRA", "MLP", "GraloraConfig", {"target_modules": "lin0"}),
    ("Vanilla MLP 1 OSF", "MLP", "OSFConfig", {}),
    ("Vanilla MLP 1 FRoD", "MLP", "FrodConfig", {"target_modules": "lin0"}),
    ("Vanilla MLP 1 UniLora", "MLP", "UniLoraConfig", {"target_modules": "lin0", "theta_d_length": 101}),
    ("Vanilla MLP 1 WaveFT", "MLP", "WaveFTConfig", {"target_modules": "lin0", "n_frequency": 8}),
    ("Vanilla MLP 1 PSOFT", "MLP", "PsoftConfig", {"target_modules": "lin0", "r": 4, "psoft_alpha": 4}),
    ("Vanilla MLP 1 Lily", "MLP", "LilyConfig", {"target_modules": "lin0", "r": 2, "stride_A": 1, "num_B": 2}),
    ("Vanilla MLP 1 Peanut", "MLP", "PeanutConfig", {"target_modules": "lin0", "r": 2, "depth": 0, "act_fn": "relu"}),
]

MULTI_SOURCE = "test_custom_models.py::MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES"
# (name, model, config class, kwargs 1, kwargs 2): both adapters active at once
_MULTI_ROWS: list[tuple[str, str, str, dict[str, Any], dict[str, Any]]] = [
    ("LoRA Same", "MLP", "LoraConfig", {"target_modules": ["lin0"]}, {"target_modules": ["lin0"]}),
    ("LoRA Different", "MLP", "LoraConfig", {"target_modules": ["lin0"]}, {"target_modules": ["lin1"]}),
    ("LoRA + trainable tokens Same", "EmbConv1D", "LoraConfig",
     {"target_modules": ["lin0"], "trainable_token_indices": {"emb": [0, 1, 2]}},
     {"target_modules": ["lin0"], "trainable_token_indices": {"emb": [3, 4, 5, 6]}}),
    ("LoRA + trainable tokens Different", "EmbConv1D", "LoraConfig",
     {"target_modules": ["lin0"], "trainable_token_indices": {"emb": [0, 1, 2]}},
     {"target_modules": ["conv1d"], "trainable_token_indices": {"emb": [3, 4, 5, 6]}}),
    ("IA3 Same", "MLP_nobias", "IA3Config", {"target_modules": ["lin0"], "feedforward_modules": ["lin0"]},
     {"target_modules": ["lin0"], "feedforward_modules": ["lin0"]}),
    ("IA3 Different", "MLP_nobias", "IA3Config", {"target_modules": ["lin0"], "feedforward_modules": ["lin0"]},
     {"target_modules": ["lin1"], "feedforward_modules": ["lin1"]}),
    # test_initialization.py TestScaling.test_scaling_multiple_adapters: two ranks and alphas on one module
    ("scaling multiple adapters", "opt5", "LoraConfig", {"r": 8, "lora_alpha": 16, "target_modules": ["k_proj"]},
     {"r": 16, "lora_alpha": 8, "target_modules": ["k_proj"]}),
]
# PEFT's target_parameters rows are left out of the multi-adapter matrix: PEFT itself skips
# them ("LoRA with multiple adapters with target_parameters is not supported").

DECODER_SOURCE = "test_decoder_models.py::ALL_CONFIGS"
DECODER_MODELS = ["opt", "gpt2", "gptj", "llama", "qwen2", "gemma3", "mistral"]
_LORA_DECODER = {"task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 32, "target_modules": None, "lora_dropout": 0.05, "bias": "none"}
_DECODER_CONFIGS: list[tuple[str, str, dict[str, Any]]] = [
    ("IA3", "IA3Config", {"task_type": "CAUSAL_LM", "target_modules": None, "feedforward_modules": None}),
    ("LoRA", "LoraConfig", _LORA_DECODER),
    ("aLoRA", "LoraConfig", {**_LORA_DECODER, "alora_invocation_tokens": [1]}),
    ("aLoRA never invoked", "LoraConfig", {**_LORA_DECODER, "alora_invocation_tokens": [1000]}),
    ("LoRA trainable tokens", "LoraConfig", {**_LORA_DECODER, "trainable_token_indices": [0, 1, 3]}),
    ("prefix tuning", "PrefixTuningConfig", {"task_type": "CAUSAL_LM", "num_virtual_tokens": 10}),
    ("prefix tuning zero init", "PrefixTuningConfig", {"task_type": "CAUSAL_LM", "num_virtual_tokens": 10, "init_weights": "zero"}),
    ("P-tuning", "PromptEncoderConfig", {"task_type": "CAUSAL_LM", "num_virtual_tokens": 10, "encoder_hidden_size": 32}),
    ("prompt tuning", "PromptTuningConfig", {"task_type": "CAUSAL_LM", "num_virtual_tokens": 10}),
]

INIT_SOURCE = "test_initialization.py"
_LEC = ["linear", "embed", "conv2d"]
_INIT_ROWS: list[tuple[str, str, dict[str, Any]]] = [
    ("lora scaling default", "LinearEmbedConv2d", {"target_modules": _LEC, "lora_alpha": 3, "r": 16, "use_rslora": False}),
    ("lora rslora scaling", "LinearEmbedConv2d", {"target_modules": _LEC, "lora_alpha": 3, "r": 16, "use_rslora": True}),
    ("lora default scaling pattern", "LinearEmbedConv2d",
     {"target_modules": _LEC, "rank_pattern": {"embed": 9, "conv2d": 16}, "alpha_pattern": {"linear": 11, "conv2d": 13},
      "lora_alpha": 17, "r": 25, "use_rslora": False}),
    ("lora rslora scaling pattern", "LinearEmbedConv2d",
     {"target_modules": _LEC, "rank_pattern": {"embed": 9, "conv2d": 16}, "alpha_pattern": {"linear": 11, "conv2d": 13},
      "lora_alpha": 17, "r": 25, "use_rslora": True}),
    ("rank alpha pattern override", "Pair",
     {"target_modules": ["linear"], "lora_alpha": 1, "r": 8, "use_rslora": False, "rank_pattern": {"linear": 8}, "alpha_pattern": {"0.linear": 2}}),
    ("scaling simple", "opt5", {"r": 8, "lora_alpha": 16, "target_modules": ["k_proj"]}),
    ("scaling with rslora", "opt5", {"r": 8, "lora_alpha": 16, "use_rslora": True, "target_modules": ["k_proj"]}),
    ("scaling rank pattern alpha pattern", "opt5",
     {"r": 8, "lora_alpha": 8, "target_modules": ["k_proj"],
      "rank_pattern": {"layers.1.self_attn.k_proj": 16, "layers.2.self_attn.k_proj": 32},
      "alpha_pattern": {"layers.2.self_attn.k_proj": 4, "layers.3.self_attn.k_proj": 16}}),
]


def _slug(text: str) -> str:
    return "_".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


CASES: list[MatrixCase] = (
    [MatrixCase(_slug(n), m, c, kw, CUSTOM_SOURCE) for n, m, c, kw in _CUSTOM_ROWS]
    + [MatrixCase(_slug(n), m, c, kw, CUSTOM_SOURCE) for n, m, c, kw in _LOHA_ROWS + _LOKR_ROWS]
    + [MatrixCase(_slug(n), m, c, kw, CUSTOM_SOURCE) for n, m, c, kw in _OTHER_KIND_ROWS]
    + [MatrixCase("multi_" + _slug(n), m, c, kw1, MULTI_SOURCE, second=kw2) for n, m, c, kw1, kw2 in _MULTI_ROWS]
    + [MatrixCase(f"{arch}_{_slug(n)}", arch, c, kw, DECODER_SOURCE) for arch in DECODER_MODELS for n, c, kw in _DECODER_CONFIGS]
    + [MatrixCase("init_" + _slug(n), m, "LoraConfig", kw, INIT_SOURCE) for n, m, kw in _INIT_ROWS]
)
CASES_BY_NAME = {c.name: c for c in CASES}
assert len(CASES_BY_NAME) == len(CASES), "case names must be unique"
