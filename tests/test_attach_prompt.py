"""attach_prompt against real PEFT (0.21.2): prompt tuning, P-tuning and prefix tuning on a tiny
causal LM (Llama), encoder-decoder (T5) and sequence classifiers (Llama, BERT).

Each case trains nothing: PEFT wraps a fresh base, its adapter parameters are filled with randn,
``save_pretrained`` writes the files; the reference is ``PeftModel.from_pretrained`` on a fresh
base, and ours is ``attach_prompt`` of ``adapterkit.load`` of the same directory.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from peft import PeftModel, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model  # noqa: E402
from peft_models import (  # noqa: E402
    SEED,
    bert_classifier,
    bert_input,
    llama,
    llama_classifier,
    randomize_adapter,
    seq2seq_input,
    t5,
    token_input,
)

import adapterkit  # noqa: E402
from adapterkit.errors import AdapterkitError  # noqa: E402
from adapterkit.inject.prompt import (  # noqa: E402
    attach_prompt,
    attached_prompts,
    detach_prompt,
    extract_prompt,
    merge_prompt,
    set_active_prompt,
)

TOL = 1e-5


@dataclass(frozen=True)
class PromptCase:
    name: str
    base: Callable[[], torch.nn.Module]
    config: Callable[[], Any]
    inputs: Callable[[], dict[str, torch.Tensor]]
    generates: bool = False
    scale: float = 0.3  # of the random adapter parameters


def _pt(task: str) -> Callable[[], Any]:
    return lambda: PromptTuningConfig(num_virtual_tokens=3, task_type=task)


def _ptune(task: str, encoder: str = "MLP") -> Callable[[], Any]:
    return lambda: PromptEncoderConfig(num_virtual_tokens=3, encoder_hidden_size=12, encoder_reparameterization_type=encoder, task_type=task)


def _prefix(task: str, **kw: Any) -> Callable[[], Any]:
    return lambda: PrefixTuningConfig(num_virtual_tokens=3, task_type=task, **kw)


CASES = [
    PromptCase("causal_prompt", llama, _pt("CAUSAL_LM"), token_input, True),
    PromptCase("causal_prompt_strong", llama, _pt("CAUSAL_LM"), token_input, True, scale=30.0),  # moves greedy tokens
    PromptCase("causal_ptune_mlp", llama, _ptune("CAUSAL_LM"), token_input, True),
    PromptCase("causal_ptune_lstm", llama, _ptune("CAUSAL_LM", "LSTM"), token_input, True),
    PromptCase("causal_prefix_gqa", llama, _prefix("CAUSAL_LM"), token_input, True),  # 1 kv head of 2
    PromptCase("causal_prefix_projection", lambda: llama(kv_heads=2), _prefix("CAUSAL_LM", prefix_projection=True, encoder_hidden_size=12), token_input, True),
    PromptCase("t5_prompt", t5, _pt("SEQ_2_SEQ_LM"), seq2seq_input, True),
    PromptCase("t5_ptune", t5, _ptune("SEQ_2_SEQ_LM"), seq2seq_input, True),
    PromptCase("t5_prefix", t5, _prefix("SEQ_2_SEQ_LM"), seq2seq_input, True),
    PromptCase("llama_cls_prompt", llama_classifier, _pt("SEQ_CLS"), token_input),
    PromptCase("llama_cls_ptune", llama_classifier, _ptune("SEQ_CLS"), token_input),
    PromptCase("llama_cls_prefix", llama_classifier, _prefix("SEQ_CLS"), token_input),
    PromptCase("bert_cls_prompt", bert_classifier, _pt("SEQ_CLS"), bert_input),
    PromptCase("bert_cls_ptune", bert_classifier, _ptune("SEQ_CLS"), bert_input),
    PromptCase("bert_cls_prefix", bert_classifier, _prefix("SEQ_CLS"), bert_input),  # PEFT runs `bert` by hand
]
BY_NAME = {c.name: c for c in CASES}
GENERATES = [c.name for c in CASES if c.generates]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``saved(case_name)``: the directory PEFT's ``save_pretrained`` wrote, once per module."""
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            case, d = BY_NAME[name], tmp_path_factory.mktemp(name)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = get_peft_model(case.base(), case.config())
                randomize_adapter(model, scale=case.scale)
                model.save_pretrained(str(d))
            cache[name] = d
        return cache[name]

    return get


def reference(case: PromptCase, d: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PeftModel.from_pretrained(case.base(), str(d)).eval()


def ours(case: PromptCase, d: Path, name: str = "p") -> Any:
    return attach_prompt(case.base(), adapterkit.load(d), name)


def logits(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model(**inputs).logits


def greedy(model: Any, inputs: dict[str, torch.Tensor], *, scores: bool = False) -> Any:
    """Greedy tokens; with ``scores``, also the (steps, B, vocab) logits of each step."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT (and we, as PEFT) warn that position ids are ignored
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False, output_scores=True, return_dict_in_generate=True)
    return (out.sequences, torch.stack(out.scores)) if scores else out.sequences


def generation_input(case: PromptCase) -> dict[str, torch.Tensor]:
    return token_input()


# ----------------------------------------------------------------------------- against PEFT


@pytest.mark.parametrize("name", list(BY_NAME))
def test_logits_match_peft(name: str, saved: Callable[[str], Path]) -> None:
    case, d = BY_NAME[name], saved(name)
    want, got = logits(reference(case, d), case.inputs()), logits(ours(case, d), case.inputs())
    assert got.shape == want.shape
    assert (got - want).abs().max() <= TOL
    base = logits(case.base(), case.inputs())
    assert (base - want[:, -base.shape[1]:]).abs().max() > 1e-3  # the prompt matters


@pytest.mark.parametrize("name", GENERATES)
def test_greedy_generate_matches_peft(name: str, saved: Callable[[str], Path]) -> None:
    case, d = BY_NAME[name], saved(name)
    inputs = generation_input(case)
    want, want_scores = greedy(reference(case, d), inputs, scores=True)
    got, got_scores = greedy(ours(case, d), inputs, scores=True)
    assert torch.equal(got, want)
    assert (got_scores - want_scores).abs().max() <= TOL
    # the tiny models' greedy tokens rarely move, but every step's scores do
    assert (greedy(case.base(), inputs, scores=True)[1] - want_scores).abs().max() > 1e-3


def test_greedy_tokens_follow_a_strong_prompt(saved: Callable[[str], Path]) -> None:
    case, d = BY_NAME["causal_prompt_strong"], saved("causal_prompt_strong")
    want = greedy(reference(case, d), token_input())
    assert torch.equal(greedy(ours(case, d), token_input()), want)
    assert not torch.equal(greedy(case.base(), token_input()), want)


def test_left_padded_batch_generates_as_peft(saved: Callable[[str], Path]) -> None:
    inputs = token_input()
    inputs["attention_mask"][0, :2] = 0
    for name in ("causal_prompt_strong", "causal_prefix_gqa"):
        case, d = BY_NAME[name], saved(name)
        assert torch.equal(logits(ours(case, d), inputs), logits(reference(case, d), inputs)), name
        assert torch.equal(greedy(ours(case, d), inputs), greedy(reference(case, d), inputs)), name


def _labels(name: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    if name.startswith("t5"):
        return inputs["decoder_input_ids"].contiguous()
    if "cls" in name:
        return torch.tensor([0, 2])
    return inputs["input_ids"]


@pytest.mark.parametrize("name", ["causal_prompt", "causal_prefix_gqa", "t5_prompt", "t5_prefix", "llama_cls_prompt", "bert_cls_prompt", "bert_cls_prefix"])
def test_loss_matches_peft(name: str, saved: Callable[[str], Path]) -> None:
    """Causal labels are padded with -100 over virtual tokens (prompt) or kept (prefix); the
    classifiers' and T5's labels are passed on as they are."""
    case, d = BY_NAME[name], saved(name)
    inputs = {**case.inputs(), "labels": _labels(name, case.inputs())}
    with torch.no_grad():
        want, got = reference(case, d)(**inputs).loss, ours(case, d)(**inputs).loss
    assert abs(float(got) - float(want)) <= TOL


@pytest.mark.parametrize("name", ["causal_prompt", "causal_prefix_gqa", "llama_cls_prompt"])
def test_inputs_embeds_match_peft(name: str, saved: Callable[[str], Path]) -> None:
    case, d = BY_NAME[name], saved(name)
    base = case.base()
    inputs = {"inputs_embeds": base.get_input_embeddings()(token_input()["input_ids"]), "attention_mask": token_input()["attention_mask"]}
    assert (logits(ours(case, d), inputs) - logits(reference(case, d), inputs)).abs().max() <= TOL


def test_bf16_model_matches_peft(tmp_path: Path) -> None:
    """Prompts take the input embeddings' dtype, prefixes the model's, as in PEFT."""
    for cfg in (_pt("CAUSAL_LM"), _prefix("CAUSAL_LM")):
        case = PromptCase("bf16", lambda: llama(torch.bfloat16), cfg, token_input)
        d = tmp_path / type(cfg()).__name__
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = get_peft_model(case.base(), case.config())
            randomize_adapter(model)
            model.save_pretrained(str(d))
        assert torch.equal(logits(ours(case, d), token_input()), logits(reference(case, d), token_input()))


@pytest.mark.parametrize("name", ["causal_prompt", "causal_prefix_gqa", "bert_cls_prompt"])
def test_position_and_token_type_ids_as_peft(name: str, saved: Callable[[str], Path]) -> None:
    """Prompts drop position ids (with PEFT's warning), prefixes shift them by the virtual tokens;
    causal LMs drop token type ids, classifiers pad them with zeros."""
    case, d = BY_NAME[name], saved(name)
    inputs = {**token_input(), "position_ids": torch.arange(6).expand(2, 6) + 1, "token_type_ids": bert_input()["token_type_ids"]}
    want = logits(reference(case, d), inputs)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = ours(case, d)(**inputs).logits
    assert (got - want).abs().max() <= TOL
    said = {str(w.message).split(" are not supported")[0] for w in caught}
    assert said == ({"Position ids"} if "prefix" not in name else set()) | ({"Token type ids"} if "causal" in name else set())


def test_positional_arguments_are_understood(saved: Callable[[str], Path]) -> None:
    case, d = BY_NAME["causal_prompt"], saved("causal_prompt")
    ids, mask = token_input()["input_ids"], token_input()["attention_mask"]
    with torch.no_grad():
        got = ours(case, d)(ids, mask).logits
    assert torch.equal(got, logits(ours(case, d), token_input()))


# ----------------------------------------------------------------------------- reversibility


@pytest.mark.parametrize("name", ["causal_prompt", "causal_prefix_gqa", "t5_prefix", "llama_cls_prompt"])
def test_detach_restores_the_base_exactly(name: str, saved: Callable[[str], Path]) -> None:
    case, d = BY_NAME[name], saved(name)
    model = case.base()
    before_dict, before_state = dict(model.__dict__), {k: v.clone() for k, v in model.state_dict().items()}
    base_out = logits(model, case.inputs())
    attach_prompt(model, adapterkit.load(d), "p")
    assert set(model.state_dict()) == set(before_state)
    assert not torch.equal(logits(model, case.inputs()), base_out)
    detach_prompt(model, "p")
    assert model.__dict__.keys() == before_dict.keys()
    assert all(model.__dict__[k] is v for k, v in before_dict.items())
    assert all(torch.equal(v, before_state[k]) for k, v in model.state_dict().items())
    assert torch.equal(logits(model, case.inputs()), base_out)
    if case.generates:
        assert torch.equal(greedy(model, generation_input(case)), greedy(case.base(), generation_input(case)))


@pytest.mark.parametrize("name", list(BY_NAME))
def test_attach_extract_save_load_is_identity(name: str, saved: Callable[[str], Path], tmp_path: Path) -> None:
    adapter = adapterkit.load(saved(name))
    model = attach_prompt(BY_NAME[name].base(), adapter, "p")
    extracted = extract_prompt(model, "p")
    assert extracted == adapter
    adapterkit.save(extracted, tmp_path / "out")
    assert adapterkit.load(tmp_path / "out") == adapter


@pytest.mark.parametrize("name", ["causal_prompt_strong", "t5_prefix"])
def test_deepcopy_carries_the_prompt(name: str, saved: Callable[[str], Path]) -> None:
    """The patched methods are bound to the instance: a deep copy runs (and detaches) on its own."""
    case, d = BY_NAME[name], saved(name)
    model = ours(case, d)
    twin = copy.deepcopy(model)
    detach_prompt(model, "p")
    assert torch.equal(logits(twin, case.inputs()), logits(ours(case, d), case.inputs()))
    assert torch.equal(greedy(twin, generation_input(case)), greedy(ours(case, d), generation_input(case)))
    assert torch.equal(logits(model, case.inputs()), logits(case.base(), case.inputs()))
    assert extract_prompt(twin, "p") == adapterkit.load(d)


def test_two_prompts_one_active(saved: Callable[[str], Path]) -> None:
    """Classifier prompts carry the head (modules_to_save); switching swaps it, None disables."""
    a, b = BY_NAME["llama_cls_prompt"], BY_NAME["llama_cls_prefix"]
    model = ours(a, saved(a.name), "a")
    attach_prompt(model, adapterkit.load(saved(b.name)), "b")
    assert attached_prompts(model) == ["a", "b"]
    assert torch.equal(logits(model, b.inputs()), logits(ours(b, saved(b.name)), b.inputs()))
    set_active_prompt(model, "a")
    assert torch.equal(logits(model, a.inputs()), logits(ours(a, saved(a.name)), a.inputs()))
    set_active_prompt(model, None)
    assert torch.equal(logits(model, a.inputs()), logits(a.base(), a.inputs()))
    detach_prompt(model, "a")
    detach_prompt(model, "b")
    assert attached_prompts(model) == []
    assert torch.equal(logits(model, a.inputs()), logits(a.base(), a.inputs()))


# ----------------------------------------------------------------------------- errors


def _error(fn: Callable[[], Any]) -> AdapterkitError:
    with pytest.raises(AdapterkitError) as info:
        fn()
    return info.value


def _untouched(model: torch.nn.Module, fn: Callable[[], Any]) -> AdapterkitError:
    before = dict(model.__dict__)
    err = _error(fn)
    assert model.__dict__ == before
    return err


def test_merge_is_not_supported(saved: Callable[[str], Path]) -> None:
    model = ours(BY_NAME["causal_prompt"], saved("causal_prompt"))
    err = _error(lambda: merge_prompt(model, "p"))
    assert err.code == "not-supported"
    assert "PROMPT_TUNING adapters cannot be merged: they have no weights to merge into" in str(err)


def test_token_dim_mismatch(saved: Callable[[str], Path]) -> None:
    model = t5()  # d_model 16 vs. a prompt of a 16-wide Llama: same width, but two submodules
    err = _untouched(model, lambda: attach_prompt(model, adapterkit.load(saved("causal_prompt")), "p"))
    assert (err.code, err.key, err.expected, err.actual) == ("base-mismatch", "num_transformer_submodules", 2, 1)

    from transformers import LlamaConfig, LlamaForCausalLM

    wide = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2))
    err = _untouched(wide, lambda: attach_prompt(wide, adapterkit.load(saved("causal_prompt")), "p"))
    assert (err.code, err.key, err.expected, err.actual) == ("base-mismatch", "token_dim", 32, 16)


def test_prefix_geometry_mismatch(saved: Callable[[str], Path]) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    deep = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1))
    err = _untouched(deep, lambda: attach_prompt(deep, adapterkit.load(saved("causal_prefix_gqa")), "p"))
    assert (err.code, err.key, err.expected, err.actual) == ("base-mismatch", "num_layers", 3, 2)
    err = _untouched(llama(kv_heads=2), lambda: attach_prompt(llama(kv_heads=2), adapterkit.load(saved("causal_prefix_gqa")), "p"))
    assert (err.code, err.key) == ("base-mismatch", "token_dim")
    assert "prefix key/value heads differ" in str(err)


def test_model_without_input_embeddings(saved: Callable[[str], Path]) -> None:
    model = torch.nn.Linear(4, 4)
    err = _untouched(model, lambda: attach_prompt(model, adapterkit.load(saved("causal_prompt")), "p"))
    assert err.code == "not-supported"
    assert "transformers models" in str(err)

    class NoEmbeddings(type(llama())):  # type: ignore[misc]
        def get_input_embeddings(self) -> Any:
            raise NotImplementedError

    model = NoEmbeddings(llama().config)
    err = _untouched(model, lambda: attach_prompt(model, adapterkit.load(saved("causal_prompt")), "p"))
    assert (err.code, err.actual) == ("not-supported", "NoneType")
    assert "no input embedding layer" in str(err)


def test_non_prompt_adapter_and_duplicate_name(saved: Callable[[str], Path]) -> None:
    from adapterkit.kinds import LoraConfig

    lora = adapterkit.Adapter.from_tensors(LoraConfig(r=1, lora_alpha=1, target_modules=["q_proj"]), {})
    model = llama()
    err = _untouched(model, lambda: attach_prompt(model, lora, "p"))
    assert (err.code, err.actual) == ("not-supported", "LORA")
    attach_prompt(model, adapterkit.load(saved("causal_prompt")), "p")
    err = _untouched(model, lambda: attach_prompt(model, adapterkit.load(saved("causal_prompt")), "p"))
    assert (err.code, err.key) == ("argument-invalid", "p")
    err = _error(lambda: extract_prompt(model, "q"))
    assert (err.code, err.key) == ("key-not-found", "q")


def test_missing_inputs_are_argument_errors(saved: Callable[[str], Path]) -> None:
    model = ours(BY_NAME["causal_prompt"], saved("causal_prompt"))
    err = _error(lambda: model(attention_mask=torch.ones(1, 2)))
    assert (err.code, err.key) == ("argument-invalid", "input_ids")
    model = ours(BY_NAME["t5_prompt"], saved("t5_prompt"))
    err = _error(lambda: model.generate(attention_mask=torch.ones(1, 2)))
    assert (err.code, err.key) == ("argument-invalid", "input_ids")
    assert "generate() of an encoder-decoder with a prompt adapter needs input_ids" in str(err)


def test_classifier_prefix_without_cache_is_refused(saved: Callable[[str], Path]) -> None:
    """A classifier whose forward cannot take past_key_values cannot take a prefix."""
    from transformers import LlamaConfig, LlamaForCausalLM

    class Classifier(LlamaForCausalLM):
        def can_generate(self) -> bool:  # type: ignore[override]
            return False

        def forward(self, input_ids: Any = None, attention_mask: Any = None) -> Any:  # type: ignore[override]
            return super().forward(input_ids=input_ids, attention_mask=attention_mask)

    torch.manual_seed(SEED)
    model = Classifier(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1))
    err = _untouched(model, lambda: attach_prompt(model, adapterkit.load(saved("causal_prefix_gqa")), "p"))
    assert err.code == "not-supported"
    assert "past_key_values" in str(err)


# ----------------------------------------------------------------------------- properties


def fitting_model(adapter: adapterkit.Adapter) -> torch.nn.Module:
    """A tiny random transformers model shaped to take ``adapter``: T5 for two submodules,
    else a Llama whose key/value geometry matches the adapter's."""
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    cfg = adapter.config
    torch.manual_seed(SEED)
    if cfg.num_transformer_submodules == 2:
        return T5ForConditionalGeneration(T5Config(
            vocab_size=32, d_model=cfg.token_dim, d_kv=cfg.token_dim, d_ff=8, num_layers=cfg.num_layers or 1, num_heads=1,
            decoder_start_token_id=0, pad_token_id=0,
        )).eval()
    heads = _heads(adapter)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=32, hidden_size=cfg.token_dim, intermediate_size=8, num_hidden_layers=cfg.num_layers or 1,
        num_attention_heads=heads, num_key_value_heads=heads, head_dim=cfg.token_dim // heads, max_position_embeddings=32,
    )).eval()


def _prompt_adapters() -> Any:
    from hypothesis import strategies as st

    from adapterkit.testing.strategies import p_tuning_adapters, prefix_tuning_adapters, prompt_tuning_adapters

    return st.one_of(prompt_tuning_adapters(), p_tuning_adapters(), prefix_tuning_adapters()).filter(
        # the fitting Llama's RoPE needs an even head dim (of token_dim / heads for prefixes)
        lambda a: (a.config.token_dim // _heads(a)) % 2 == 0 and a.config.token_dim % _heads(a) == 0
    )


def _heads(adapter: adapterkit.Adapter) -> int:
    return adapter.config.num_attention_heads if adapter.peft_type == "PREFIX_TUNING" else 1


def test_attach_run_extract_detach_property() -> None:
    """For every valid prompt adapter (any float dtype) and a model that fits it: the forward runs
    with the virtual tokens in front (prompts) or in the cache (prefixes), extract gives the
    adapter back bit for bit, and detach leaves the instance as it was."""
    from hypothesis import given

    @given(_prompt_adapters())
    def check(adapter: adapterkit.Adapter) -> None:
        model = fitting_model(adapter)
        before = dict(model.__dict__)
        ids = torch.arange(1, 5).expand(2, 4)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if adapter.config.num_transformer_submodules == 2:
            inputs["decoder_input_ids"] = ids[:, :2]
        attach_prompt(model, adapter, "p")
        out = logits(model, inputs)
        grows = adapter.peft_type != "PREFIX_TUNING" and adapter.config.num_transformer_submodules == 1
        assert out.shape[1] == inputs.get("decoder_input_ids", ids).shape[1] + (adapter.config.num_virtual_tokens if grows else 0)
        assert torch.isfinite(out).all()
        assert extract_prompt(model, "p") == adapter
        detach_prompt(model, "p")
        assert model.__dict__.keys() == before.keys() and all(model.__dict__[k] is v for k, v in before.items())

    check()


# ----------------------------------------------------------------------------- through adapterkit.attach


@pytest.mark.parametrize("name", ["causal_prompt", "t5_prefix", "llama_cls_ptune"])
def test_public_attach_reaches_prompts(name: str, saved: Callable[[str], Path]) -> None:
    """``adapterkit.attach`` dispatches prompt kinds here and records them, so the generic
    ``set_active``, ``disabled``, ``extract_from_model`` and ``detach`` work on them; a LoRA
    adapter and a prompt share the name space, and only one prompt may be active."""
    case, d = BY_NAME[name], saved(name)
    inputs = case.inputs()
    model = case.base()
    base = logits(model, inputs)
    adapterkit.attach(model, adapterkit.load(d), "p")
    torch.testing.assert_close(logits(model, inputs), logits(reference(case, d), inputs), rtol=0, atol=TOL)
    with adapterkit.disabled(model):
        torch.testing.assert_close(logits(model, inputs), base, rtol=0, atol=0)
    prompted = logits(model, inputs)
    adapterkit.set_active(model, [])
    torch.testing.assert_close(logits(model, inputs), base, rtol=0, atol=0)
    adapterkit.set_active(model, ["p"])
    torch.testing.assert_close(logits(model, inputs), prompted, rtol=0, atol=0)
    assert adapterkit.extract_from_model(model, "p") == adapterkit.load(d)
    with pytest.raises(AdapterkitError) as info:
        adapterkit.attach(model, adapterkit.load(d), "p")
    assert info.value.code == "adapter-name-taken"
    adapterkit.attach(model, adapterkit.load(d), "q", activate=False)
    torch.testing.assert_close(logits(model, inputs), prompted, rtol=0, atol=0)  # "p" still active
    with pytest.raises(AdapterkitError) as info:
        adapterkit.set_active(model, ["p", "q"])
    assert info.value.code == "argument-invalid"
    with pytest.raises(AdapterkitError) as info:
        adapterkit.merge_attached(model)
    assert info.value.code == "not-supported"
    adapterkit.detach(model, "q")
    adapterkit.detach(model, "p")
    torch.testing.assert_close(logits(model, inputs), base, rtol=0, atol=0)
    assert adapterkit.inject.registry(model) == {} and "forward" not in model.__dict__
