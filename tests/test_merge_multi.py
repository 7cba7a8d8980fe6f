"""Several adapters merged in one pass = PEFT's model with them all active, in the listed order.

Every pairing of LoRA, DoRA, rsLoRA, IA3 (output and feedforward input scaling) and
``modules_to_save``, on one shared module (``q_proj``, which has a bias) and on distinct ones,
in both orders.  The oracle is PEFT 0.22.0 itself:

- adapters of one PEFT type (the LoRA family; IA3 with IA3) are loaded into one ``PeftModel``
  and activated together with ``base_model.set_adapter([first, second])``; the merged
  checkpoint must give its logits, and its tensors must equal PEFT's ``merge_and_unload``;
- LoRA-family and IA3 adapters cannot share a ``PeftModel`` ("Cannot combine adapters with
  different peft types"): PEFT's own layers injected one inside the other in the listed order
  (``inject_adapter_in_model``, the first innermost) are the oracle;
- what PEFT refuses to hold active together (two ``modules_to_save`` of one module, a module
  saved whole by one adapter and adapted by the other) must be refused by name.

Adapters are random (B nonzero, IA3 scales and DoRA magnitudes away from their initial values),
so a wrong composition shows in the logits.
"""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from peft import IA3Config, LoraConfig, PeftModel, get_peft_model, inject_adapter_in_model  # noqa: E402
from peft_models import shards, token_input  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM  # noqa: E402

import adapterkit  # noqa: E402
from adapterkit.errors import AdapterkitError  # noqa: E402
from adapterkit.ops import merge_checkpoint  # noqa: E402

KINDS = ("lora", "dora", "rslora", "ia3", "ia3_ff", "mts")
PAIRS = list(itertools.combinations_with_replacement(KINDS, 2))
LORA_FAMILY = {"lora", "dora", "rslora", "mts"}


def base_model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=64, attention_bias=True)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # biases start at zero; random ones make bias handling show
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(torch.randn_like(p) * 0.1)
    return model


def config(kind: str, module: str, slot: int):
    """The PEFT config of ``kind`` placed on ``module`` (``slot`` 0/1 keeps the LoRA of a
    modules_to_save adapter away from the other adapter's modules)."""
    if kind == "lora":
        return LoraConfig(r=4, lora_alpha=8, target_modules=[module])
    if kind == "dora":
        return LoraConfig(r=2, lora_alpha=4, target_modules=[module], use_dora=True)
    if kind == "rslora":
        return LoraConfig(r=4, lora_alpha=3, target_modules=[module], use_rslora=True)
    if kind == "ia3":
        return IA3Config(target_modules=[module], feedforward_modules=[])
    if kind == "ia3_ff":
        return IA3Config(target_modules=[module], feedforward_modules=[module])
    return LoraConfig(r=2, lora_alpha=4, target_modules=["o_proj" if slot == 0 else "up_proj"], modules_to_save=[module])


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Every adapter parameter random: factors and saved copies around 0, IA3 scales around 1,
    DoRA magnitudes around their initial norms."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g)
            if "ia3_l" in name:
                p.copy_(1 + 0.3 * noise)
            elif "lora_magnitude_vector" in name:
                p.mul_(1 + 0.3 * noise)
            elif "lora_" in name or "modules_to_save" in name:
                p.copy_(0.3 * noise)


def make_adapter(kind: str, module: str, slot: int, path: Path) -> Path:
    return save_adapter(config(kind, module, slot), 100 + slot, path)


def save_adapter(cfg, seed: int, path: Path, make=base_model) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(make(), cfg)
        randomize(model, seed)
        model.save_pretrained(path)
    return path


def load_nested(model: torch.nn.Module, adapter: Path, name: str) -> None:
    """Copy an adapter's saved tensors into the layers ``inject_adapter_in_model`` made (names
    with PEFT's ``.base_layer`` hops removed); a module saved whole is copied into the base."""
    params = {n.replace(".base_layer", ""): p for n, p in model.named_parameters()}
    with torch.no_grad():
        for key, value in load_file(adapter / "adapter_model.safetensors").items():
            key = key.removeprefix("base_model.model.")
            module, leaf = key.rsplit(".", 1)
            if leaf in ("ia3_l", "lora_magnitude_vector"):
                target = f"{key}.{name}" + (".weight" if leaf == "lora_magnitude_vector" else "")
            elif module.rsplit(".", 1)[-1] in ("lora_A", "lora_B"):
                target = f"{module}.{name}.{leaf}"
            else:  # saved whole: the modules_to_save copy where PEFT made one, else the base tensor
                copy = f"{module}.modules_to_save.{name}.{leaf}"
                target = copy if copy in params else key
            params[target].copy_(value)


def oracle(kinds: tuple[str, str], paths: tuple[Path, Path], configs, order: tuple[int, int], make=base_model):
    """(logits, merge_and_unload state dict or None) of PEFT with both adapters active in ``order``."""
    inputs = token_input()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if (kinds[0] in LORA_FAMILY) == (kinds[1] in LORA_FAMILY):  # one PEFT type: one PeftModel
            model = PeftModel.from_pretrained(make(), paths[order[0]], adapter_name="first")
            model.load_adapter(paths[order[1]], adapter_name="second")
            model.base_model.set_adapter(["first", "second"])
            model.eval()
            with torch.no_grad():
                logits = model(**inputs).logits
                merged = model.merge_and_unload().state_dict()
            return logits, merged
        model = make()
        for n, i in (("first", order[0]), ("second", order[1])):
            model = inject_adapter_in_model(configs[i], model, adapter_name=n)
            load_nested(model, paths[i], n)
        for module in model.modules():  # the second injection deactivates the first one's modules_to_save copies
            if type(module).__name__ == "ModulesToSaveWrapper" and not module.active_adapters:
                module.set_adapter(list(module.modules_to_save))
        model.eval()
        with torch.no_grad():
            return model(**inputs).logits, None


def refused(kinds: tuple[str, str], shared: bool) -> str | None:
    """What the refusal of a pair PEFT cannot hold active together names: a module saved whole
    that the other adapter saves whole too or adapts; IA3 adapters that disagree on whether the
    module is feedforward (PEFT's layer keeps the first one's choice)."""
    if shared and "mts" in kinds:
        return "modules_to_save"
    if shared and sorted(kinds) == ["ia3", "ia3_ff"]:
        return "feedforward"
    return None


_BUILT: dict[tuple, tuple] = {}


def built(kinds: tuple[str, str], shared: bool, root: Path):
    key = (kinds, shared)
    if key not in _BUILT:
        folder = root / f"{kinds[0]}-{kinds[1]}-{'shared' if shared else 'distinct'}"
        modules = ("q_proj", "q_proj" if shared else "v_proj")
        configs = [config(kinds[i], modules[i], i) for i in (0, 1)]
        paths = tuple(make_adapter(kinds[i], modules[i], i, folder / f"adapter{i}") for i in (0, 1))
        _BUILT[key] = (paths, configs)
    return _BUILT[key]


@pytest.fixture(scope="module")
def saved_base(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("base") / "base"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base_model().save_pretrained(path)
    return path


@pytest.mark.parametrize("order", [(0, 1), (1, 0)], ids=["listed", "reversed"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "distinct"])
@pytest.mark.parametrize("kinds", PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
def test_two_adapters_merge_to_peft_with_both_active(kinds, shared, order, saved_base, tmp_path_factory) -> None:
    paths, configs = built(kinds, shared, tmp_path_factory.getbasetemp())
    out = tmp_path_factory.mktemp("out") / "merged"
    adapters = [paths[i] for i in order]
    why = refused(kinds, shared)
    if why is not None:
        with pytest.raises(AdapterkitError) as info:
            merge_checkpoint(saved_base, adapters, out)
        message = str(info.value)
        assert info.value.code == "not-supported" and why in message, message
        assert str(paths[0]) in message and str(paths[1]) in message and "q_proj" in message
        assert not out.exists()
        return
    merge_checkpoint(saved_base, adapters, out)
    logits, theirs = oracle(kinds, paths, configs, order)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        ours = merged(**token_input()).logits
    torch.testing.assert_close(ours, logits, rtol=1e-5, atol=1e-5)
    if theirs is not None:
        mine = shards(out)
        theirs = {k: v for k, v in theirs.items() if k in mine}
        assert theirs.keys() == mine.keys()
        for k, v in mine.items():
            torch.testing.assert_close(v, theirs[k], rtol=0, atol=2e-6, msg=k)


def test_peft_refuses_what_merge_refuses(tmp_path_factory) -> None:
    """The refusals above are PEFT's: it cannot activate two modules_to_save adapters of one
    module, nor load an adapter onto a module another saves whole (either order), nor an IA3
    adapter whose feedforward choice differs from the first one's on a module."""
    paths, _ = built(("mts", "mts"), True, tmp_path_factory.getbasetemp())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(base_model(), paths[0], adapter_name="first")
        model.load_adapter(paths[1], adapter_name="second")
        with pytest.raises(ValueError, match="one adapter"):
            model.base_model.set_adapter(["first", "second"])
        for kinds in (("lora", "mts"), ("dora", "mts")):
            p, _ = built(kinds, True, tmp_path_factory.getbasetemp())
            for first, second in ((0, 1), (1, 0)):
                model = PeftModel.from_pretrained(base_model(), p[first], adapter_name="first")
                with pytest.raises((ValueError, TypeError)):
                    model.load_adapter(p[second], adapter_name="second")
        # IA3 adapters disagreeing on feedforward: the layer keeps the first one's shape for ia3_l
        p, _ = built(("ia3", "ia3_ff"), True, tmp_path_factory.getbasetemp())
        model = PeftModel.from_pretrained(base_model(), p[0], adapter_name="first")
        with pytest.raises(RuntimeError, match="size mismatch"):
            model.load_adapter(p[1], adapter_name="second")


def test_merging_one_after_the_other_differs_for_dora(saved_base, tmp_path) -> None:
    """Two merge commands, LoRA then DoRA on one module: the second command's DoRA takes its
    norm over the weight the first one wrote, ‖W + ΔW_lora + ΔW_dora‖ (first principles), not
    over W + ΔW_dora as PEFT with both active does (the one-pass merge, tested above)."""
    paths, _ = built(("lora", "dora"), True, tmp_path.parent)
    merge_checkpoint(saved_base, [paths[0]], tmp_path / "one")
    merge_checkpoint(tmp_path / "one", [paths[1]], tmp_path / "two")
    merge_checkpoint(saved_base, list(paths), tmp_path / "both")
    lora, dora = adapterkit.load(paths[0]), adapterkit.load(paths[1])
    module = "model.layers.0.self_attn.q_proj"
    key = module + ".weight"
    W = shards(saved_base)[key].double()
    d_lora = (lora.tensors[f"base_model.model.{module}.lora_B.weight"].double() @ lora.tensors[f"base_model.model.{module}.lora_A.weight"].double()) * 2.0
    d_dora = (dora.tensors[f"base_model.model.{module}.lora_B.weight"].double() @ dora.tensors[f"base_model.model.{module}.lora_A.weight"].double()) * 2.0
    m = dora.tensors[f"base_model.model.{module}.lora_magnitude_vector"].double()
    sequential = (m / torch.linalg.norm(W + d_lora + d_dora, dim=1)).view(-1, 1) * (W + d_lora + d_dora)
    active = (m / torch.linalg.norm(W + d_dora, dim=1)).view(-1, 1) * (W + d_lora + d_dora)
    two, both = shards(tmp_path / "two")[key].double(), shards(tmp_path / "both")[key].double()
    torch.testing.assert_close(two, sequential, rtol=0, atol=1e-5)
    torch.testing.assert_close(both, active, rtol=0, atol=1e-5)
    assert (two - both).abs().max() > 1e-3


def test_two_modules_to_save_with_equal_base_tensors_are_not_a_conflict(saved_base, tmp_path) -> None:
    """Two adapters that both store the same base tensor (a trained bias, bias="all") with equal
    values merge; with different values PEFT keeps whichever it loaded last: refused by name."""
    def make(seed: int, path: Path, same: bool) -> Path:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = get_peft_model(base_model(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], bias="all"))
            randomize(model, seed)
            if not same:
                with torch.no_grad():
                    model.base_model.model.model.layers[0].self_attn.k_proj.bias.add_(seed)
            model.save_pretrained(path)
        return path

    a, b = make(1, tmp_path / "a", True), make(2, tmp_path / "b", True)
    merge_checkpoint(saved_base, [a, b], tmp_path / "ab")
    c = make(3, tmp_path / "c", False)
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(saved_base, [a, c], tmp_path / "ac")
    assert info.value.code == "not-supported" and "k_proj.bias" in str(info.value) and "loaded last" in str(info.value)


def test_ia3_adapters_disagreeing_on_feedforward_are_refused(saved_base, tmp_path) -> None:
    paths_ff, _ = built(("ia3_ff", "ia3_ff"), True, tmp_path.parent)
    paths_out, _ = built(("ia3", "ia3"), True, tmp_path.parent)
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(saved_base, [paths_out[0], paths_ff[1]], tmp_path / "x")
    assert info.value.code == "not-supported" and "feedforward" in str(info.value) and "q_proj" in str(info.value)


def gpt2_model() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=64)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(torch.randn_like(p) * 0.1)
    return model


OTHER_LAYERS = {
    # GPT-2's Conv1D (weights stored transposed: fan_in_fan_out), c_attn has a bias
    "gpt2_conv1d": (gpt2_model, {
        "lora": lambda: LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True),
        "dora": lambda: LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True, use_dora=True),
        "ia3": lambda: IA3Config(target_modules=["c_attn"], feedforward_modules=[], fan_in_fan_out=True),
    }),
    # an embedding: DoRA's norm per embedding dimension; both adapters save the same base layer
    "llama_embedding": (base_model, {
        "lora": lambda: LoraConfig(r=4, lora_alpha=8, target_modules=["embed_tokens"]),
        "dora": lambda: LoraConfig(r=2, lora_alpha=4, target_modules=["embed_tokens"], use_dora=True),
    }),
}
OTHER_CASES = [(layer, a, b) for layer, (_, kinds) in OTHER_LAYERS.items() for a, b in itertools.product(kinds, repeat=2)
               if "dora" in (a, b)]


@pytest.mark.parametrize(("layer", "first", "second"), OTHER_CASES, ids=[f"{c[0]}-{c[1]}+{c[2]}" for c in OTHER_CASES])
def test_dora_with_another_adapter_on_conv1d_and_embedding(layer, first, second, tmp_path) -> None:
    make, kinds = OTHER_LAYERS[layer]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make().save_pretrained(tmp_path / "base")
    configs = [kinds[first](), kinds[second]()]
    paths = (save_adapter(configs[0], 200, tmp_path / "a", make), save_adapter(configs[1], 201, tmp_path / "b", make))
    merge_checkpoint(tmp_path / "base", list(paths), tmp_path / "out")
    logits, _ = oracle((first, second), paths, configs, (0, 1), make)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**token_input()).logits, logits, rtol=1e-5, atol=1e-5)
