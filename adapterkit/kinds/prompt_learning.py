"""What prompt tuning, P-tuning and prefix tuning share: one ``prompt_embeddings`` tensor.

The file holds the virtual-token embeddings *as the model consumes them* (for
P-tuning and projected prefix tuning, the encoder's output, not its weights),
with no ``base_model.model.`` prefix.  Each kind's module gives the expected
shape as a function of its config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..arrays import norm, to_float
from ..errors import Problem
from .base import OPT_STR_LIST, POS_INT, AdapterConfig, Kind, schema_field
from .merging import whole_module_names
from .patterns import matches_modules_to_save

if TYPE_CHECKING:  # torch is imported by the functions that compute: opening and checking an adapter needs none
    import torch

    from ..adapter import Adapter, TensorStore

KEY = "prompt_embeddings"
PREFIX = "base_model."  # PEFT saves a prompt-learning model's modules_to_save as base_model.<module>.<param>
OPT_POS_INT = {"anyOf": [{"type": "null"}, POS_INT]}


@dataclass(frozen=True)
class PromptLearningConfig(AdapterConfig):
    """Fields common to the prompt-learning kinds (PEFT's ``PromptLearningConfig``)."""

    num_virtual_tokens: int = schema_field(None, POS_INT, required=True, doc="number of virtual tokens")
    token_dim: int = schema_field(None, POS_INT, required=True, doc="hidden size of the base model's embeddings")
    num_transformer_submodules: int = schema_field(1, POS_INT, doc="1 for decoder-only, 2 for encoder-decoder")
    num_attention_heads: Any = schema_field(None, OPT_POS_INT, doc="attention heads of the base model")
    num_layers: Any = schema_field(None, OPT_POS_INT, doc="transformer layers of the base model")
    modules_to_save: Any = schema_field(None, OPT_STR_LIST, doc="modules stored whole")

    def features(self) -> dict[str, Any]:
        names = ("num_virtual_tokens", "token_dim", "num_transformer_submodules", "num_layers", "num_attention_heads")
        return {n: getattr(self, n) for n in names}

    def embedding_shape(self) -> tuple[int, ...]:
        """(num_virtual_tokens · num_transformer_submodules, token_dim); prefix tuning overrides."""
        return (self.num_virtual_tokens * self.num_transformer_submodules, self.token_dim)


@dataclass(frozen=True)
class PromptModule:
    """The single "module" of a prompt-learning adapter: the virtual-token embeddings."""

    name: str
    key: str
    shape: tuple[int, ...]
    store: TensorStore

    @property
    def prompt_embeddings(self) -> torch.Tensor:
        return self.store[self.key]


def parse_key(key: str) -> tuple[str, str] | None:
    return (KEY, KEY) if key == KEY else None


def modules(adapter: Adapter) -> dict[str, PromptModule]:
    if KEY not in adapter.tensors:
        return {}
    return {KEY: PromptModule(KEY, KEY, adapter.meta(KEY).shape, adapter.tensors)}


def check(adapter: Adapter) -> list[Problem]:
    cfg: PromptLearningConfig = adapter.config  # type: ignore[assignment]
    problems = []
    shape_known = not ({"num_virtual_tokens", "token_dim", "num_transformer_submodules", "num_layers"} & cfg.unknown)
    want = cfg.embedding_shape() if shape_known else "2-D"
    if KEY not in adapter.tensors:
        problems.append(Problem("tensor-missing", f"{cfg.peft_type} adapters hold `{KEY}`", key=KEY, expected=want, actual="absent"))
    elif not shape_known:
        if len(adapter.meta(KEY).shape) != 2:
            problems.append(Problem("shape-mismatch", f"{KEY} must be 2-D", key=KEY, expected=want, actual=adapter.meta(KEY).shape))
    elif adapter.meta(KEY).shape != want:
        problems.append(Problem(
            "shape-mismatch", f"{KEY} shape disagrees with the config", key=KEY, expected=want, actual=adapter.meta(KEY).shape,
        ))
    for key in adapter.tensors:
        if key != KEY and not matches_modules_to_save(cfg.modules_to_save, key, PREFIX):
            problems.append(Problem("unexpected-key", f"{cfg.peft_type} adapters hold only `{KEY}`", "warning", key=key))
    return problems


def stats(adapter: Adapter, module: str, device: Any = None) -> dict[str, float]:
    emb = to_float(adapter.module(module).prompt_embeddings, fp64=True, device=device)
    return {"virtual_tokens": emb.shape[0], "norm": norm(emb)}


def make_kind(config: type[PromptLearningConfig]) -> Kind:
    """The Kind record for a prompt-learning config class."""
    return Kind(
        peft_type=config.peft_type, config=config, parse_key=parse_key, modules=modules, check=check, stats=stats,
        whole_tensors=whole_tensors,
        no_merge_reason="adapters have no weights to merge into a checkpoint: the virtual tokens are prepended to the input",
    )


def whole_tensors(adapter: Adapter) -> dict[str, str]:
    """adapter key -> base-relative name of the ``modules_to_save`` tensors (PEFT saves them
    as ``base_model.<module>.<param>`` for prompt kinds)."""
    return whole_module_names(adapter, PREFIX, parse_key)
