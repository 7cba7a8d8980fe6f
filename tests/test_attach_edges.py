"""adapterkit.attach off the common path, against PEFT 0.22.0 on tiny models.

* DoRA (and LoRA) on a scaled embedding, Gemma 3's kind (the base module multiplies the
  looked-up rows by ``embed_scale``): PEFT scales the adapter's contribution by
  ``embed_scale`` after the DoRA weight norm, which stays the norm of the unscaled W + ΔW
  (``DoraEmbeddingVariant.forward``); an ``embed_scale`` given as a plain number counts too
  (``BaseTunerLayer._get_embed_scale``).
* A target inside a ``modules_to_save`` module: PEFT never adapts the module saved whole nor
  any module inside it (``check_target_module_exists``), it saves the whole module instead.
* Nested ``disabled()``: PEFT 0.22.0's ``disable_adapter`` re-enables on exit only what was
  enabled on entry, so an inner exit leaves the model disabled while the outer block runs.

Every expected output is PEFT's, at the same point of the same sequence of calls.
"""

from __future__ import annotations

import warnings
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("peft")
pytest.importorskip("transformers")

from peft import LoraConfig, PeftModel, get_peft_model
from peft_models import CASES_BY_NAME, _lora, build_peft_model, llama, randomize_adapter, run, token_input

import adapterkit

TOL = 1e-5


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b.detach()).abs().max())


def peft_load(base: nn.Module, path: Path) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PeftModel.from_pretrained(base, str(path)).eval()


# ----------------------------------------------------------------------------- DoRA / LoRA on a scaled embedding


class ScaledEmbedding(nn.Embedding):
    """Gemma 3's ``Gemma3TextScaledWordEmbedding``: rows times ``embed_scale`` (a buffer, or a number)."""

    def __init__(self, *args, embed_scale: float, as_buffer: bool, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if as_buffer:
            self.register_buffer("embed_scale", torch.tensor(embed_scale), persistent=False)
        else:
            self.embed_scale = embed_scale

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids) * self.embed_scale


class ScaledEmbNet(nn.Module):
    def __init__(self, scale: float, as_buffer: bool) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.emb = ScaledEmbedding(20, 8, embed_scale=scale, as_buffer=as_buffer)
        self.out = nn.Linear(8, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(ids))


IDS = torch.tensor([[0, 3, 19, 7], [5, 1, 2, 9]])


@pytest.mark.parametrize("as_buffer", [True, False], ids=["buffer", "number"])
@pytest.mark.parametrize("use_dora", [True, False], ids=["dora", "lora"])
def test_scaled_embedding_equals_peft(use_dora, as_buffer, tmp_path):
    scale = 8 ** 0.5  # Gemma's sqrt(hidden_size)

    def make() -> nn.Module:
        return ScaledEmbNet(scale, as_buffer)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(make(), LoraConfig(r=3, lora_alpha=6, target_modules=["emb", "out"], use_dora=use_dora))
    randomize_adapter(peft_model, seed=5, scale=0.3)
    peft_model.eval().save_pretrained(tmp_path)
    model = adapterkit.attach(make(), adapterkit.load(tmp_path))
    base = make()(IDS)
    theirs = peft_model(IDS)
    assert max_diff(theirs, base) > 1e-2  # the adapter changes the outputs
    assert max_diff(model(IDS), theirs) <= TOL
    with adapterkit.disabled(model), peft_model.disable_adapter():
        assert max_diff(model(IDS), base) <= TOL and max_diff(peft_model(IDS), base) <= TOL
    adapterkit.merge_attached(model)
    peft_model.merge_adapter()
    assert max_diff(model(IDS), peft_model(IDS)) <= TOL and max_diff(model(IDS), theirs) <= TOL
    adapterkit.unmerge_attached(model)
    peft_model.unmerge_adapter()
    ours_plain = adapterkit.merge_and_unload(model)
    theirs_plain = peft_model.merge_and_unload()
    assert max_diff(ours_plain(IDS), theirs_plain(IDS)) <= TOL
    for key, value in theirs_plain.state_dict().items():
        assert max_diff(ours_plain.state_dict()[key], value) <= TOL, key


def test_dora_embed_scale_leaves_the_weight_norm_unscaled(tmp_path):
    """First principles beside PEFT: out = m/‖W+ΔW‖·(W+ΔW)[ids]·embed_scale (norm over the
    unscaled weight, per embedding dimension), then the output layer."""
    scale = 3.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(ScaledEmbNet(scale, True), LoraConfig(r=2, lora_alpha=4, target_modules=["emb"], use_dora=True))
    randomize_adapter(peft_model, seed=6, scale=0.3)
    peft_model.save_pretrained(tmp_path)
    a = adapterkit.load(tmp_path)
    name = "emb"
    A = a.tensors[f"base_model.model.{name}.lora_embedding_A"]  # (r, vocab)
    B = a.tensors[f"base_model.model.{name}.lora_embedding_B"]  # (dim, r)
    m = a.tensors[f"base_model.model.{name}.lora_magnitude_vector"]  # (dim,)
    net = ScaledEmbNet(scale, True)
    W = net.emb.weight.detach()  # (vocab, dim)
    merged = W + (B @ A).T * (4 / 2)
    want = net.out((m / merged.norm(dim=0)) * merged[IDS] * scale)
    model = adapterkit.attach(ScaledEmbNet(scale, True), a)
    assert max_diff(model(IDS), want) <= TOL
    assert max_diff(peft_model(IDS), want) <= TOL


# ----------------------------------------------------------------------------- targets inside a modules_to_save module


MTS_CASES = {
    # every layer's mlp saved whole: its up/down_proj are not adapted (q_proj is)
    "mlp": dict(target_modules=["q_proj", "up_proj", "down_proj"], modules_to_save=["mlp"]),
    # only layer 1's mlp: layer 0's up_proj is adapted, layer 1's is inside the saved module
    "layers.1.mlp": dict(target_modules=["up_proj", "v_proj"], modules_to_save=["layers.1.mlp"]),
    # a target named as the full path of a child of the saved module
    "full name": dict(target_modules=["model.layers.0.mlp.gate_proj", "q_proj"], modules_to_save=["layers.0.mlp"]),
}


@pytest.mark.parametrize("case", sorted(MTS_CASES))
def test_targets_inside_a_module_saved_whole_equal_peft(case, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(llama(), LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM", **MTS_CASES[case]))
    randomize_adapter(peft_model, seed=8, scale=0.05)
    peft_model.eval().save_pretrained(tmp_path)
    saved = adapterkit.load(tmp_path)
    inside = [n for n in saved.modules if any(f"{s}." in n + "." for s in MTS_CASES[case]["modules_to_save"])]
    assert inside == [] and saved.modules  # PEFT adapted nothing inside the saved modules, but something
    inputs = token_input()
    theirs = run(peft_model, inputs)
    model = adapterkit.attach(llama(), saved)
    assert max_diff(run(model, inputs), theirs) <= TOL
    with adapterkit.disabled(model):
        assert max_diff(run(model, inputs), run(llama(), inputs)) <= TOL
    adapterkit.merge_attached(model)
    assert max_diff(run(model, inputs), theirs) <= TOL
    adapterkit.unmerge_attached(model)
    back = adapterkit.extract_from_model(model, "default")
    assert back == saved
    ours_plain, theirs_plain = adapterkit.merge_and_unload(model), peft_model.merge_and_unload()
    assert ours_plain.state_dict().keys() == theirs_plain.state_dict().keys()
    for key, value in theirs_plain.state_dict().items():
        assert max_diff(ours_plain.state_dict()[key], value) <= TOL, key


# ----------------------------------------------------------------------------- nested disabled()


NESTED = ["lora_linear", "lora_dora", "ia3", "prompt_tuning", "prefix_tuning"]


def stages(model: nn.Module, disable, inputs, merged: bool = False) -> list[torch.Tensor]:
    """Outputs at: before, outer, inner, inner again after an exception, outer after inner, after outer."""
    out = [run(model, inputs)]
    with disable():
        out.append(run(model, inputs))
        with disable():
            out.append(run(model, inputs))
        try:
            with disable():
                raise KeyError("inside")
        except KeyError:
            pass
        out.append(run(model, inputs))
        with ExitStack() as stack:  # twice more, then out
            stack.enter_context(disable())
            stack.enter_context(disable())
        out.append(run(model, inputs))
    out.append(run(model, inputs))
    return out


@pytest.mark.parametrize(("name", "merged"), [(n, m) for n in NESTED for m in (False, True)
                                               if not (m and CASES_BY_NAME[n].kind not in ("LORA", "IA3"))])  # prompts: no merge
def test_nested_disabled_equals_peft(name, merged, tmp_path):
    case = CASES_BY_NAME[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_peft_model(case)
        model.save_pretrained(tmp_path)
    peft_model = peft_load(case.base(), tmp_path)
    ours = adapterkit.attach(case.base(), adapterkit.load(tmp_path))
    if merged:
        peft_model.merge_adapter()
        adapterkit.merge_attached(ours)
    inputs = case.inputs()
    theirs = stages(peft_model, peft_model.disable_adapter, inputs)
    got = stages(ours, lambda: adapterkit.disabled(ours), inputs)
    base = run(case.base(), inputs)
    for i, (t, g) in enumerate(zip(theirs, got)):
        assert t.shape == g.shape and max_diff(g, t) <= TOL, i
    assert all(max_diff(t, base) <= TOL for t in theirs[1:-1])  # disabled throughout the outer block
    assert theirs[0].shape != base.shape or max_diff(theirs[0], base) > 1e-3  # (prompts add positions)
    assert max_diff(theirs[-1], theirs[0]) <= TOL


def test_nested_disabled_with_two_active_adapters(tmp_path):
    case = CASES_BY_NAME["lora_linear"]
    paths = []
    for seed in (1, 2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = get_peft_model(case.base(), _lora(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")())
            randomize_adapter(m, seed=seed)
            m.save_pretrained(tmp_path / str(seed))
        paths.append(tmp_path / str(seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = PeftModel.from_pretrained(case.base(), str(paths[0]), adapter_name="a").eval()
        peft_model.load_adapter(str(paths[1]), adapter_name="b")
        peft_model.base_model.set_adapter(["a", "b"])
    ours = adapterkit.attach(case.base(), adapterkit.load(paths[0]), "a")
    adapterkit.attach(ours, adapterkit.load(paths[1]), "b")
    adapterkit.set_active(ours, ["a", "b"])
    inputs = case.inputs()
    theirs = stages(peft_model, peft_model.disable_adapter, inputs)
    got = stages(ours, lambda: adapterkit.disabled(ours), inputs)
    for i, (t, g) in enumerate(zip(theirs, got)):
        assert max_diff(g, t) <= TOL, i
