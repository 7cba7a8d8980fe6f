"""Hypothesis strategies for valid adapters of every kind, composable with keyword bounds.

Every adapter these produce passes ``adapterkit.validate`` with no errors (the
suite checks that).  Tensor values come from a seeded torch generator, so
examples are cheap even for larger shapes; hypothesis shrinks the seed, shapes,
module sets and flags.

    from adapterkit.testing import strategies as aks
    @given(aks.adapters())
    def test_roundtrip(adapter): ...
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from hypothesis import strategies as st

from ..adapter import Adapter
from ..kinds import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, PTuningConfig

PREFIX = "base_model.model."
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
LAYER_TYPES = ("linear", "embedding", "conv1d", "conv2d", "conv3d")
_SUBMODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj")


def dtypes(choices: Sequence[torch.dtype] = FLOAT_DTYPES) -> st.SearchStrategy[torch.dtype]:
    """A storage dtype adapters may use."""
    return st.sampled_from(tuple(choices))


def module_names(*, min_size: int = 1, max_size: int = 4, max_layers: int = 3) -> st.SearchStrategy[list[str]]:
    """Distinct, sorted module paths such as ``model.layers.1.self_attn.q_proj``."""
    one = st.builds(lambda i, s: f"model.layers.{i}.{s}", st.integers(0, max_layers - 1), st.sampled_from(_SUBMODULES))
    return st.lists(one, min_size=min_size, max_size=max_size, unique=True).map(sorted)


def _randn(gen: torch.Generator, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(shape, generator=gen).to(dtype)


@st.composite
def lora_adapters(
    draw,
    *,
    layer_types: Sequence[str] = LAYER_TYPES,
    max_modules: int = 4,
    max_rank: int = 4,
    max_features: int = 6,
    dtypes: st.SearchStrategy[torch.dtype] | None = None,
    use_dora: st.SearchStrategy[bool] | None = None,
    use_rslora: st.SearchStrategy[bool] | None = None,
    lora_bias: st.SearchStrategy[bool] | None = None,
    patterns: bool = True,
    modules_to_save: bool = True,
) -> Adapter:
    """A valid LoRA adapter: random modules, layer types, ranks, rank/alpha patterns,
    dtype, rsLoRA, lora_bias, DoRA and modules_to_save, all mutually consistent (never
    lora_bias with DoRA: PEFT's config refuses the pair)."""
    names = draw(module_names(max_size=max_modules))
    types = {n: draw(st.sampled_from(tuple(layer_types))) for n in names}
    dtype = draw(dtypes if dtypes is not None else st.sampled_from(FLOAT_DTYPES))
    dora = draw(use_dora if use_dora is not None else st.booleans())
    rslora = draw(use_rslora if use_rslora is not None else st.booleans())
    has_linear_or_conv = any(t != "embedding" for t in types.values())
    bias = draw(lora_bias if lora_bias is not None else st.booleans()) and has_linear_or_conv and not dora  # PEFT refuses both
    r = draw(st.integers(1, max_rank))
    alpha = draw(st.sampled_from([1, 2, 8, 16, 0.5, 3.0]))
    rank_pattern, alpha_pattern = {}, {}
    if patterns:
        for n in names:
            if draw(st.booleans()):
                rank_pattern[n] = draw(st.integers(1, max_rank))
            if draw(st.booleans()):
                alpha_pattern[n] = draw(st.sampled_from([1, 4, 32, 0.25]))
    extra_modules = ("lm_head",) if modules_to_save and draw(st.booleans()) else None
    config = LoraConfig(
        r=r, lora_alpha=alpha, target_modules=tuple(sorted({n.rsplit(".", 1)[1] for n in names})),
        rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, use_rslora=rslora, use_dora=dora,
        lora_bias=bias, modules_to_save=extra_modules,
        fan_in_fan_out=draw(st.booleans()) if set(types.values()) <= {"linear"} else False,
    )
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    feat = st.integers(1, max_features)
    tensors: dict[str, torch.Tensor] = {}
    for name in names:
        rank = config.rank_for(name)[0]
        out_f, in_f = draw(feat), draw(feat)
        p = PREFIX + name
        kind = types[name]
        if kind == "embedding":
            tensors[f"{p}.lora_embedding_A"] = _randn(gen, (rank, in_f), dtype)
            tensors[f"{p}.lora_embedding_B"] = _randn(gen, (out_f, rank), dtype)
        else:
            k = {"linear": 0, "conv1d": 1, "conv2d": 2, "conv3d": 3}[kind]
            kernel = tuple(draw(st.integers(1, 3)) for _ in range(k))
            tensors[f"{p}.lora_A.weight"] = _randn(gen, (rank, in_f, *kernel), dtype)
            tensors[f"{p}.lora_B.weight"] = _randn(gen, (out_f, rank) + (1,) * k, dtype)
            if bias:
                tensors[f"{p}.lora_B.bias"] = _randn(gen, (out_f,), dtype)
        if dora:
            shape = (out_f,) if kind in ("linear", "embedding") else (1, out_f) + (1,) * (len(tensors[f"{p}.lora_A.weight"].shape) - 2)
            tensors[f"{p}.lora_magnitude_vector"] = _randn(gen, shape, dtype).abs() + 0.5
    if extra_modules:
        tensors[PREFIX + "lm_head.weight"] = _randn(gen, (draw(feat), draw(feat)), dtype)
    return Adapter.from_tensors(config, tensors)


@st.composite
def ia3_adapters(draw, *, max_modules: int = 4, max_features: int = 6, dtypes: st.SearchStrategy[torch.dtype] | None = None) -> Adapter:
    """A valid IA3 adapter with a random subset of feedforward modules (list or regex form)."""
    names = draw(module_names(max_size=max_modules))
    dtype = draw(dtypes if dtypes is not None else st.sampled_from(FLOAT_DTYPES))
    suffixes = sorted({n.rsplit(".", 1)[1] for n in names})
    ff = sorted(s for s in suffixes if draw(st.booleans()))
    config = IA3Config(target_modules=tuple(suffixes), feedforward_modules=tuple(ff))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    tensors = {}
    for name in names:
        size = draw(st.integers(1, max_features))
        shape = (1, size) if config.is_feedforward(name) else (size, 1)
        tensors[f"{PREFIX}{name}.ia3_l"] = 1 + 0.1 * _randn(gen, shape, dtype)
    return Adapter.from_tensors(config, tensors)


def _prompt_common(draw) -> dict:
    return dict(
        num_virtual_tokens=draw(st.integers(1, 6)),
        token_dim=draw(st.integers(1, 8)),
        num_transformer_submodules=draw(st.sampled_from([1, 2])),
        num_attention_heads=draw(st.integers(1, 4)),
        num_layers=draw(st.integers(1, 4)),
        task_type=draw(st.sampled_from(["CAUSAL_LM", "SEQ_2_SEQ_LM", None])),
    )


def _prompt_adapter(draw, config, dtypes) -> Adapter:
    dtype = draw(dtypes if dtypes is not None else st.sampled_from(FLOAT_DTYPES))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    return Adapter.from_tensors(config, {"prompt_embeddings": _randn(gen, config.embedding_shape(), dtype)})


@st.composite
def prompt_tuning_adapters(draw, *, dtypes: st.SearchStrategy[torch.dtype] | None = None) -> Adapter:
    """A valid prompt-tuning adapter."""
    config = PromptTuningConfig(**_prompt_common(draw), prompt_tuning_init=draw(st.sampled_from(["RANDOM", "TEXT"])))
    return _prompt_adapter(draw, config, dtypes)


@st.composite
def p_tuning_adapters(draw, *, dtypes: st.SearchStrategy[torch.dtype] | None = None) -> Adapter:
    """A valid P-tuning adapter (the file holds the encoder's output)."""
    config = PTuningConfig(
        **_prompt_common(draw),
        encoder_reparameterization_type=draw(st.sampled_from(["MLP", "LSTM"])),
        encoder_hidden_size=draw(st.integers(1, 8)),
    )
    return _prompt_adapter(draw, config, dtypes)


@st.composite
def prefix_tuning_adapters(draw, *, dtypes: st.SearchStrategy[torch.dtype] | None = None) -> Adapter:
    """A valid prefix-tuning adapter, with or without projection."""
    common = _prompt_common(draw)
    common["num_transformer_submodules"] = 1
    config = PrefixTuningConfig(**common, prefix_projection=draw(st.booleans()), encoder_hidden_size=draw(st.integers(1, 8)))
    return _prompt_adapter(draw, config, dtypes)


def adapters(**lora_kwargs) -> st.SearchStrategy[Adapter]:
    """A valid adapter of any of the five kinds."""
    return st.one_of(
        lora_adapters(**lora_kwargs), ia3_adapters(), prompt_tuning_adapters(), p_tuning_adapters(), prefix_tuning_adapters()
    )
