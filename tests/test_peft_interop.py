"""Interop with real PEFT (pinned 0.22.0): PEFT -> adapterkit, adapterkit -> PEFT, and the
facts of REFERENCE.md that adapterkit relies on, checked against PEFT's behaviour.

Every case of ``peft_models.CASES`` builds a tiny base model from a config under a fixed
seed, wraps it with ``get_peft_model``, fills every adapter parameter with ``randn``
(PEFT initialises lora_B to zero) and saves it with ``save_pretrained``.  The built
model, its outputs on a fixed input and the saved directory are shared per module.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

peft = pytest.importorskip("peft")
pytest.importorskip("transformers")

import safetensors  # noqa: E402
import safetensors.torch  # noqa: E402
from peft import PeftModel, get_peft_model, get_peft_model_state_dict  # noqa: E402
from peft_models import CASES, CASES_BY_NAME, Case, build_peft_model, llama, randomize_adapter, run  # noqa: E402

import adapterkit  # noqa: E402
from adapterkit.errors import AdapterkitError  # noqa: E402

# Messages PEFT/transformers emit when PEFT loads *its own* adapter, unrelated to the adapter's
# content.  A load from an adapterkit-written directory must emit exactly what the load of the
# PEFT-written directory emits, and that baseline may hold nothing but these.
KNOWN_NOISE = [
    r"FutureWarning: `is_gradient_checkpointing` is deprecated",  # transformers 5.x, on every PEFT wrap
]
# The original model recomputes these prompt encoders (MLP / LSTM / prefix projection) on the
# batch, while a loaded model (inference_mode) uses the stored encoder output; the two may differ
# by float rounding (observed: 4.5e-8 for the LSTM and the prefix projection; the MLP is exact).
# Loads of the PEFT-written and the adapterkit-written directories are still compared bit-exactly.
RECOMPUTED_ENCODER = {"prefix_projection", "p_tuning_lstm", "p_tuning_mlp"}


# ----------------------------------------------------------------------------- helpers


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(level=logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(f"log {record.name}: {record.getMessage()}")


@contextmanager
def captured() -> Iterator[list[str]]:
    """Every warning and every WARNING+ log record emitted inside the block.

    The ``transformers`` logger does not propagate to the root logger (so pytest's caplog
    would miss it); the handler is attached to it and to the root logger (``peft`` propagates).
    """
    msgs: list[str] = []
    handler = _ListHandler(msgs)
    loggers = [logging.getLogger(), logging.getLogger("transformers")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield msgs
        msgs.extend(f"{w.category.__name__}: {w.message}" for w in caught)
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


def _normalised(msgs: list[str], *dirs: Path) -> list[str]:
    out = []
    for m in msgs:
        for d in dirs:
            m = m.replace(str(d), "<DIR>")
        out.append(m)
    return sorted(out)


def peft_load(case: Case, path: Path, **kw: Any) -> tuple[torch.Tensor, list[str]]:
    """Outputs of ``PeftModel.from_pretrained(fresh base, path)`` and what it warned/logged."""
    base = case.base()
    with captured() as msgs:
        model = PeftModel.from_pretrained(base, str(path), **kw)
    model.eval()
    return run(model, case.inputs()), _normalised(msgs, path)


def lora_layers(model: Any, adapter_name: str = "default") -> dict[str, Any]:
    """PEFT LoRA/IA3 layers by module name relative to the base model."""
    from peft.tuners.ia3.layer import IA3Layer
    from peft.tuners.lora.layer import LoraLayer

    return {
        name: mod for name, mod in model.base_model.model.named_modules()
        if isinstance(mod, (LoraLayer, IA3Layer)) and adapter_name in getattr(mod, "scaling", getattr(mod, "ia3_l", {}))
    }


def assert_same_tensors(actual: Any, expected: dict[str, torch.Tensor]) -> None:
    assert set(actual) == set(expected)
    for key, want in expected.items():
        got = actual[key]
        assert got.dtype == want.dtype, key
        assert got.shape == want.shape, key
        assert torch.equal(got, want.detach().cpu()), key


def is_prompt(case: Case) -> bool:
    return case.kind in ("PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING")


# ----------------------------------------------------------------------------- fixtures


@dataclass
class Built:
    case: Case
    model: Any  # the original PeftModel (eval)
    dir: Path  # its save_pretrained directory
    state: dict[str, torch.Tensor]  # get_peft_model_state_dict(model)
    output: torch.Tensor  # the original model's output on case.inputs()
    reloaded: torch.Tensor  # PEFT's output after loading its own directory into a fresh base
    baseline_msgs: list[str]  # what that load warned/logged
    adapter: adapterkit.Adapter  # adapterkit.load(dir)


def _build(case: Case, d: Path) -> Built:
    with warnings.catch_warnings():
        # save-time notices: "Setting save_embedding_layers to True", and PEFT 0.21.2's false
        # "LoRA tensor(s) have invalid shape" alarm about the 1-D lora_B.bias (lora_bias=True)
        warnings.simplefilter("ignore")
        model = build_peft_model(case)
        output = run(model, case.inputs())
        model.save_pretrained(str(d))
        state = get_peft_model_state_dict(model)
    reloaded, msgs = peft_load(case, d)
    return Built(case, model, d, state, output, reloaded, msgs, adapterkit.load(d))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Built]:
    """``saved(case_name)``: the case built, saved by PEFT and loaded by adapterkit, once per module."""
    cache: dict[str, Built] = {}

    def get(name: str) -> Built:
        if name not in cache:
            cache[name] = _build(CASES_BY_NAME[name], tmp_path_factory.mktemp(name))
        return cache[name]

    return get


ALL = [c.name for c in CASES]
LORA = [c.name for c in CASES if c.kind == "LORA"]
PROMPT = [c.name for c in CASES if c.kind in ("PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING")]


# ----------------------------------------------------------------------------- A. PEFT -> adapterkit


@pytest.mark.parametrize("name", ALL)
def test_load_matches_peft_state_dict_and_file(name: str, saved: Callable[[str], Built]) -> None:
    built = saved(name)
    assert built.adapter.peft_type == built.case.kind
    assert_same_tensors(built.adapter.tensors, built.state)
    assert_same_tensors(built.adapter.tensors, safetensors.torch.load_file(built.dir / "adapter_model.safetensors"))
    lazy = adapterkit.open_adapter(built.dir)
    assert_same_tensors(lazy.tensors, built.state)
    for key in built.state:
        assert lazy.meta(key).shape == tuple(built.state[key].shape)


@pytest.mark.parametrize("name", ALL)
def test_validate_reports_nothing(name: str, saved: Callable[[str], Built]) -> None:
    built = saved(name)
    assert adapterkit.validate(built.dir) == []


@pytest.mark.parametrize("name", [n for n in ALL if n not in LORA])
def test_no_delta_weight_for_other_kinds(name: str, saved: Callable[[str], Built]) -> None:
    adapter = saved(name).adapter
    with pytest.raises(AdapterkitError) as info:
        adapter.delta_weight(next(iter(adapter.modules)))
    assert info.value.code == "not-supported"


@pytest.mark.parametrize("name", LORA)
def test_delta_weight_matches_peft_bit_exactly(name: str, saved: Callable[[str], Built]) -> None:
    built = saved(name)
    layers = lora_layers(built.model)
    assert set(built.adapter.modules) == set(layers)
    checked = 0
    for name, layer in layers.items():
        with torch.no_grad():
            want = layer.get_delta_weight("default")
        got = built.adapter.delta_weight(name)
        assert got.dtype == want.dtype, name
        assert torch.equal(got, want), name
        checked += 1
    assert checked


def test_delta_bias_matches_peft_merge(saved: Callable[[str], Built]) -> None:
    """lora_B.bias adds bias * scaling to the base bias on merge (spec §8.6)."""
    from adapterkit.kinds.lora import delta_bias

    built = saved("lora_bias")
    layers = lora_layers(built.model)
    assert layers
    for name, shared in layers.items():
        layer = copy.deepcopy(shared)  # the built model is shared by other tests: merge a copy
        before = layer.get_base_layer().bias.detach().clone()
        with torch.no_grad():
            layer.merge(adapter_names=["default"])
        after = layer.get_base_layer().bias.detach().clone()
        assert torch.equal(after, before + delta_bias(built.adapter, name)), name
    assert delta_bias(saved("lora_linear").adapter, next(iter(saved("lora_linear").adapter.modules))) is None


@pytest.mark.parametrize("name", ALL)
def test_module_views_agree_with_peft_layers(name: str, saved: Callable[[str], Built]) -> None:
    """Rank, alpha, scaling (REFERENCE: alpha/r, alpha/sqrt(r)), layer type; IA3 feedforward shapes."""
    built = saved(name)
    case, adapter = built.case, built.adapter
    if is_prompt(case):
        assert set(adapter.modules) == {"prompt_embeddings"}
        return
    layers = lora_layers(built.model)
    assert set(adapter.modules) == set(layers)
    peft_cfg = built.model.peft_config["default"]
    for name, layer in layers.items():
        view = adapter.module(name)
        if case.kind == "IA3":
            vec = layer.ia3_l["default"]
            assert view.is_feedforward == layer.is_feedforward, name
            base = layer.get_base_layer()
            if isinstance(base, torch.nn.Linear):
                want = (1, base.in_features) if layer.is_feedforward else (base.out_features, 1)
                assert tuple(vec.shape) == want, name
            else:  # Conv2d: (1, C, 1, 1), C = out channels (in channels for feedforward)
                c = base.in_channels if layer.is_feedforward else base.out_channels
                assert tuple(vec.shape) == (1, c, 1, 1), name
            continue
        r, alpha = layer.r["default"], layer.lora_alpha["default"]
        assert view.rank == r == adapter.config.rank_for(name)[0], name
        assert view.alpha == alpha == adapter.config.alpha_for(name)[0], name
        assert view.scaling == layer.scaling["default"], name
        want_scaling = alpha / math.sqrt(r) if peft_cfg.use_rslora else alpha / r
        assert layer.scaling["default"] == want_scaling, name
        base = layer.get_base_layer()
        want_type = {
            torch.nn.Embedding: "embedding", torch.nn.Conv1d: "conv1d", torch.nn.Conv2d: "conv2d", torch.nn.Conv3d: "conv3d",
        }.get(type(base), "linear")
        assert view.layer_type == want_type, name
        assert view.fan_in_fan_out == (layer.fan_in_fan_out if want_type == "linear" else False), name
        if view.magnitude is not None:
            assert torch.equal(view.magnitude, layer.lora_magnitude_vector["default"].weight.detach()), name


def test_conv3d_1x1_delta_equals_peft(tmp_path: Path) -> None:
    """PEFT 0.21.2 could not compute ΔW for a Conv3d with a (1, 1, k) kernel (its conv2d-1x1
    shortcut tested only ``size()[2:4]``); 0.22.0 does, and adapterkit's ΔW equals it and the
    LoRA branch's effect."""
    case = CASES_BY_NAME["lora_conv"]
    model = build_peft_model(case)
    model.save_pretrained(str(tmp_path))
    adapter = adapterkit.load(tmp_path)
    layer = model.base_model.model.p3
    assert isinstance(layer.get_base_layer(), torch.nn.Conv3d) and tuple(layer.get_base_layer().weight.shape[2:4]) == (1, 1)
    x = torch.randn(2, 4, 3, 3, 3, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        theirs = layer.get_delta_weight("default")
        lora_branch = layer.lora_B["default"](layer.lora_A["default"](x)) * layer.scaling["default"]
    delta = adapter.delta_weight("p3")
    torch.testing.assert_close(delta, theirs, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(torch.nn.functional.conv3d(x, delta), lora_branch, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["lora_linear", "ia3", "p_tuning_mlp"])
def test_non_default_adapter_name(name: str, tmp_path: Path) -> None:
    """PEFT saves a non-default adapter in a subfolder; it loads by name, by subfolder and
    (single subfolder) by the parent; written back it loads in PEFT under that name."""
    case = CASES_BY_NAME[name]
    saved = tmp_path / "peft"  # the output below goes beside it: never into the folder an adapter was found in
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_peft_model(case, adapter_name="other")
        model.save_pretrained(str(saved))
    assert (saved / "other" / "adapter_config.json").is_file()
    assert not (saved / "adapter_config.json").exists()
    state = get_peft_model_state_dict(model, adapter_name="other")
    by_name = adapterkit.load(saved, adapter_name="other")
    assert_same_tensors(by_name.tensors, state)
    assert adapterkit.load(saved / "other") == by_name
    assert adapterkit.load(saved) == by_name
    assert adapterkit.validate(saved, adapter_name="other") == []

    out = tmp_path / "ak"
    adapterkit.save(by_name, out)
    got, msgs = peft_load(case, out, adapter_name="other")
    want, base_msgs = peft_load(case, saved, subfolder="other", adapter_name="other")
    assert msgs == base_msgs
    assert torch.equal(got, want)


@pytest.mark.parametrize("name", ["lora_linear", "lora_bf16", "lora_conv", "lora_dora", "lora_embed_tokens", "ia3", "prefix_tuning"])
def test_bin_serialization(name: str, tmp_path: Path) -> None:
    """``save_pretrained(safe_serialization=False)`` writes adapter_model.bin; it loads
    identically, validates, and converts to a directory PEFT loads with identical outputs."""
    case = CASES_BY_NAME[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Setting save_embedding_layers to True" for lora_embed_tokens
        model = build_peft_model(case)
        model.save_pretrained(str(tmp_path / "peft"), safe_serialization=False)
        state = get_peft_model_state_dict(model)
    src = tmp_path / "peft"
    assert (src / "adapter_model.bin").is_file() and not (src / "adapter_model.safetensors").exists()
    adapter = adapterkit.load(src)
    assert_same_tensors(adapter.tensors, state)
    assert adapterkit.load(src / "adapter_model.bin") == adapter
    assert adapterkit.validate(src) == []

    adapterkit.save(adapter, tmp_path / "ak")
    got, msgs = peft_load(case, tmp_path / "ak")
    want, base_msgs = peft_load(case, src)
    assert msgs == base_msgs
    assert torch.equal(got, want)


# ----------------------------------------------------------------------------- B. adapterkit -> PEFT


def _check_outputs(built: Built, got: torch.Tensor) -> None:
    assert got.dtype == built.output.dtype
    assert torch.equal(got, built.reloaded)
    if built.case.name in RECOMPUTED_ENCODER:
        torch.testing.assert_close(got, built.output, rtol=0, atol=1e-6)
    else:
        assert torch.equal(got, built.output)


@pytest.mark.parametrize("name", ALL)
def test_peft_reference_is_sound(name: str, saved: Callable[[str], Built]) -> None:
    """The baseline itself: PEFT reloading its own directory warns only known noise and
    reproduces the original outputs."""
    built = saved(name)
    for msg in built.baseline_msgs:
        assert any(re.search(p, msg) for p in KNOWN_NOISE), msg
    if built.case.name in RECOMPUTED_ENCODER:
        torch.testing.assert_close(built.reloaded, built.output, rtol=0, atol=1e-6)
    else:
        assert torch.equal(built.reloaded, built.output)


@pytest.mark.parametrize("name", ALL)
def test_adapterkit_dir_loads_in_peft(name: str, saved: Callable[[str], Built], tmp_path: Path) -> None:
    built = saved(name)
    out = tmp_path / "ak"
    adapterkit.save(built.adapter, out)
    got, msgs = peft_load(built.case, out)
    assert msgs == built.baseline_msgs  # i.e. no warning or log record beyond KNOWN_NOISE
    _check_outputs(built, got)


@pytest.mark.parametrize("name", ALL)
def test_file_form_back_to_dir_loads_in_peft(name: str, saved: Callable[[str], Built], tmp_path: Path) -> None:
    built = saved(name)
    single = tmp_path / "adapter.safetensors"
    adapterkit.save(built.adapter, single, form="file")
    back = adapterkit.load(single)
    assert back == built.adapter
    adapterkit.save(back, tmp_path / "dir2")
    got, msgs = peft_load(built.case, tmp_path / "dir2")
    assert msgs == built.baseline_msgs
    _check_outputs(built, got)


@pytest.mark.parametrize("name", ALL)
def test_config_json_survives_round_trip(name: str, saved: Callable[[str], Built], tmp_path: Path) -> None:
    """adapterkit writes back the config PEFT wrote, byte for byte (nothing non-PEFT added)."""
    built = saved(name)
    out = tmp_path / "ak"
    adapterkit.save(built.adapter, out)
    assert (out / "adapter_config.json").read_text() == (built.dir / "adapter_config.json").read_text()


# ----------------------------------------------------------------------------- C. REFERENCE facts


@pytest.mark.parametrize("name", ALL)
def test_peft_file_format_facts(name: str, saved: Callable[[str], Built]) -> None:
    """safetensors metadata is exactly {"format": "pt"}; config is json.dumps(indent=2) with every
    object's keys sorted except the values of rank_pattern/alpha_pattern (PEFT 0.22.0 keeps their
    order, which decides the first match), inference_mode true and peft_version stamped."""
    built = saved(name)
    with safetensors.safe_open(str(built.dir / "adapter_model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
    text = (built.dir / "adapter_config.json").read_text()
    data = json.loads(text)
    top_sorted = {k: (v if k in ("rank_pattern", "alpha_pattern") else json.loads(json.dumps(v, sort_keys=True))) for k, v in sorted(data.items())}
    assert text == json.dumps(top_sorted, indent=2)
    assert data["inference_mode"] is True
    assert data["peft_version"] == peft.__version__ == "0.22.0"
    assert data["peft_type"] == built.case.kind


@pytest.mark.parametrize("name", PROMPT)
def test_prompt_embeddings_shapes(name: str, saved: Callable[[str], Built]) -> None:
    built = saved(name)
    case, cfg = built.case, built.adapter.config
    shape = tuple(built.state["prompt_embeddings"].shape)
    assert shape == cfg.embedding_shape()
    n = cfg.num_virtual_tokens
    if case.kind == "PREFIX_TUNING":
        assert cfg.num_transformer_submodules == 1
        assert shape == (n, 2 * cfg.num_layers * cfg.token_dim)
    elif case.name == "prompt_tuning_t5":
        assert cfg.num_transformer_submodules == 2
        assert shape == (2 * n, built.model.base_model.config.d_model)
    else:
        assert cfg.num_transformer_submodules == 1
        assert shape == (n, built.model.base_model.config.hidden_size)


def test_modules_to_save_stores_the_whole_module(saved: Callable[[str], Built]) -> None:
    built = saved("lora_modules_to_save")
    key = "base_model.model.lm_head.weight"
    assert key in built.state
    trained = built.model.base_model.model.lm_head.modules_to_save["default"].weight.detach()
    assert torch.equal(built.adapter.tensors[key], trained)
    assert not torch.equal(trained, llama().lm_head.weight.detach())  # randomised, not the base copy


def test_targeting_embed_tokens_also_saves_base_embedding(saved: Callable[[str], Built]) -> None:
    built = saved("lora_embed_tokens")
    key = "base_model.model.model.embed_tokens.base_layer.weight"
    whole = [k for k in built.state if ".lora_" not in k]
    assert whole == [key]
    assert torch.equal(built.adapter.tensors[key], llama().model.embed_tokens.weight.detach())


def test_rank_pattern_caret_key_matches_full_name() -> None:
    """REFERENCE.md says keys starting with ``^`` never match; PEFT 0.21.2 matches such a key
    when it spells the whole module name (``re.match(r"(.*\\.)?(^name)$", name)`` succeeds
    with the optional group empty).  adapterkit's rank_for follows PEFT."""
    cfg = peft.LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"],
        rank_pattern={"^model.layers.1.self_attn.q_proj": 6, "^layers.0.self_attn.v_proj": 5, "^self_attn.q_proj": 3},
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = get_peft_model(llama(), cfg)
    ranks = {name: layer.r["default"] for name, layer in lora_layers(model).items()}
    assert ranks["model.layers.1.self_attn.q_proj"] == 6  # full name with ^: matches
    assert ranks["model.layers.0.self_attn.v_proj"] == 4  # ^ + a suffix: does not match
    assert ranks["model.layers.0.self_attn.q_proj"] == 4
    unmatched = [str(w.message) for w in caught if "did not match any targeted module" in str(w.message)]
    assert len(unmatched) == 1 and "^layers.0.self_attn.v_proj" in unmatched[0] and "^self_attn.q_proj" in unmatched[0]
    ak = adapterkit.LoraConfig(r=4, target_modules=("q_proj", "v_proj"), rank_pattern=dict(cfg.rank_pattern))
    for name, r in ranks.items():
        assert ak.rank_for(name)[0] == r, name


def test_rank_pattern_order_is_kept_on_disk(tmp_path: Path) -> None:
    """PEFT applies the first matching key in dict order.  0.21.2 wrote the config with
    sort_keys=True, so an adapter whose two orders disagreed could not be reloaded; 0.22.0 keeps
    the order of rank_pattern/alpha_pattern on disk and reloads it.  adapterkit reads the file's
    order, exactly as PEFT's reload does."""
    cfg = peft.LoraConfig(r=4, target_modules=["q_proj", "down_proj"], rank_pattern={"q_proj": 2, r"layers\.0\..*": 3})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(llama(), cfg)
    randomize_adapter(model)
    ranks = {name: layer.r["default"] for name, layer in lora_layers(model).items()}
    assert ranks["model.layers.0.self_attn.q_proj"] == 2  # "q_proj" came first in memory
    model.save_pretrained(str(tmp_path))
    on_disk = json.loads((tmp_path / "adapter_config.json").read_text())["rank_pattern"]
    assert list(on_disk) == ["q_proj", r"layers\.0\..*"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = PeftModel.from_pretrained(llama(), str(tmp_path))
    assert {name: layer.r["default"] for name, layer in lora_layers(reloaded).items()} == ranks
    ours = adapterkit.load(tmp_path)
    assert ours.tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape[0] == 2
    assert ours.tensors["base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"].shape[0] == 3
    assert not [p for p in adapterkit.validate(tmp_path) if p.severity == "error"]


def test_ia3_feedforward_list_uses_plain_endswith() -> None:
    """REFERENCE: IA3 matches a feedforward_modules *list* with a plain endswith (no dot
    boundary), so "n_proj" makes down_proj (but not up_proj) feedforward; adapterkit agrees."""
    cfg = peft.IA3Config(target_modules=r".*\.(down_proj|up_proj)", feedforward_modules=["n_proj"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(llama(), cfg)
    ak = adapterkit.IA3Config(target_modules=cfg.target_modules, feedforward_modules=("n_proj",))
    flags = {name: layer.is_feedforward for name, layer in lora_layers(model).items()}
    assert flags == {f"model.layers.{i}.mlp.{m}": m == "down_proj" for i in range(2) for m in ("down_proj", "up_proj")}
    for name, flag in flags.items():
        assert ak.is_feedforward(name) == flag, name
