"""bitsandbytes bases: our dequantization and quantization against bitsandbytes itself, and merges
onto a 4-bit / 8-bit checkpoint that transformers wrote, against first principles and PEFT.

The oracles: ``bitsandbytes`` 0.50.2 (its CPU backend: ``dequantize_4bit``, ``quantize_4bit``,
``int8_vectorwise_quant``/``dequant``), transformers 5.23.0 (which quantizes and saves the tiny
models, and loads what we write), PEFT 0.22.0 (the adapter on the 4-bit model: the QLoRA
outputs the merged models are compared with).  Expected sums are computed here in fp64 from the
adapter's own tensors.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

bnb = pytest.importorskip("bitsandbytes")
F = bnb.functional

from click.testing import CliRunner  # noqa: E402

from adapterkit.cli import main as cli  # noqa: E402
from adapterkit.errors import AdapterkitError  # noqa: E402
from adapterkit.ops.merge_quantized import AsTrained, round_as_trained  # noqa: E402
from adapterkit.ops.merging import merge_checkpoint  # noqa: E402
from adapterkit.quant.bnb import Bnb4, Bnb8  # noqa: E402
from adapterkit.quant.scheme import quant_format  # noqa: E402

CPU = torch.device("cpu")
TARGETS = ["q_proj", "v_proj", "down_proj"]


# ----------------------------------------------------------------------------- the formats alone


def _packed_4bit(w: torch.Tensor, quant_type: str, double: bool, blocksize: int):
    q, state = F.quantize_4bit(w, blocksize=blocksize, quant_type=quant_type, compress_statistics=double)
    tensors = {"m.weight": q} | {"m.weight." + k: v for k, v in state.as_dict(packed=True).items()}
    keys = {k: ({torch.uint8: "U8", torch.float32: "F32"}[v.dtype], tuple(v.shape)) for k, v in tensors.items()}
    fmt = Bnb4({"load_in_4bit": True, "bnb_4bit_quant_type": quant_type, "bnb_4bit_use_double_quant": double})
    packed = fmt.find(keys, tensors.__getitem__)["m"]
    return fmt, packed, {r: tensors[k] for r, k in packed.members.items()}, q, state


SHAPES = [((64, 128), 64), ((48, 100), 128), ((33, 30), 64), ((7, 9), 32), ((16, 300), 256)]


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double", [False, True])
@pytest.mark.parametrize("shape,blocksize", SHAPES)
def test_4bit_dequantize_and_quantize_equal_bitsandbytes(quant_type, double, shape, blocksize):
    torch.manual_seed(hash((quant_type, double, shape)) % 1000)
    w = torch.randn(*shape, dtype=torch.bfloat16)
    fmt, packed, roles, q, state = _packed_4bit(w, quant_type, double, blocksize)
    ours = fmt.dequantize(packed, roles, CPU)
    state32 = F.QuantState.from_dict(state.as_dict(packed=True), device="cpu")
    state32.dtype = torch.float32
    assert torch.equal(ours, F.dequantize_4bit(q, state32)), "fp32 dequantization differs from bitsandbytes'"
    assert torch.equal(ours.to(torch.bfloat16), F.dequantize_4bit(q, state)), "what PEFT's dequantize_bnb_weight gives"
    align = fmt.row_align(packed)  # the row blocks a dense merge streams: those rows of the whole, bit for bit
    fetch = fmt.rows(packed, roles, CPU)
    for per in (align, 3 * align):
        got = torch.cat([fetch(start, min(shape[0], start + per)) for start in range(0, shape[0], per)])
        assert torch.equal(got, ours), per
    # fresh quantization of an fp32 weight (a merged one): every member bit for bit, the record as a dict
    x = torch.randn(*shape) * 0.05 + w.float()
    new = fmt.quantize(packed, x, roles, CPU)
    q2, s2 = F.quantize_4bit(x, blocksize=blocksize, quant_type=quant_type, compress_statistics=double)
    ref = s2.as_dict(packed=True)
    assert torch.equal(new["weight"], q2)
    for role in ("quant_map",) + (("nested_absmax", "nested_quant_map") if double else ("absmax",)):
        assert torch.equal(new[role], ref[role]), role
    if double:
        _assert_nested_nearest(new["absmax"], ref["absmax"], x, blocksize, ref)
    record = json.loads(bytes(new["record"].tolist()))
    expected = json.loads(bytes(ref[f"quant_state.bitsandbytes__{quant_type}"].tolist()))
    assert record == expected | {"dtype": "bfloat16"}  # the weight's dtype stays the model's
    assert new["record"].numel() == fmt.record_size(packed)
    if not double:  # nothing in the record varies: exactly bitsandbytes' bytes
        assert bytes(new["record"].tolist()) == bytes(ref[f"quant_state.bitsandbytes__{quant_type}"].tolist()).replace(b"float32", b"bfloat16")


def _assert_nested_nearest(ours: torch.Tensor, theirs: torch.Tensor, x: torch.Tensor, blocksize: int, ref: dict) -> None:
    """The nested absmax codes: bitsandbytes' where its CPU kernel picks the nearest code, and
    strictly nearer where it does not (the deliberate difference ``bnb-nested-absmax-nearest``)."""
    flat = x.reshape(-1).float()
    n = flat.numel()
    blocks = -(-n // blocksize)
    absmax = torch.stack([flat[i * blocksize:(i + 1) * blocksize].abs().max() for i in range(blocks)])
    offset = absmax.mean()
    values = absmax - offset
    scales = ref["nested_absmax"].repeat_interleave(256)[: values.numel()]
    normed = values / scales
    code = ref["nested_quant_map"]
    mine, bnbs = (normed - code[ours.long()]).abs(), (normed - code[theirs.long()]).abs()
    differ = ours != theirs
    assert bool((mine[differ] < bnbs[differ]).all()), "where we differ from bitsandbytes, our code must be nearer"
    assert bool((mine <= bnbs).all())


def test_4bit_quantizer_edge_values_equal_bitsandbytes():
    """Exact code values, ties between codes, zero blocks, a block of one value, huge and tiny."""
    rows = [torch.zeros(64), torch.full((64,), 3.0), torch.linspace(-1, 1, 64), torch.tensor([1e-30] * 63 + [1.0]),
            torch.tensor([0.5, -0.5] * 32) * 1e30]
    table = F.get_4bit_type("nf4", device="cpu")
    mids = ((table[:-1] + table[1:]) / 2).repeat(5)[:64]
    rows += [mids, -mids, table.repeat(4)]
    x = torch.stack(rows)
    for quant_type in ("nf4", "fp4"):
        for double in (False, True):
            fmt, packed, roles, _, _ = _packed_4bit(torch.randn(*x.shape, dtype=torch.bfloat16), quant_type, double, 64)
            new = fmt.quantize(packed, x, roles, CPU)
            q2, s2 = F.quantize_4bit(x, blocksize=64, quant_type=quant_type, compress_statistics=double)
            assert torch.equal(new["weight"], q2), (quant_type, double)
            ref = s2.as_dict(packed=True)
            if double:
                _assert_nested_nearest(new["absmax"], ref["absmax"], x, 64, ref)
            else:
                assert torch.equal(new["absmax"], ref["absmax"]), (quant_type, double)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_4bit_codes_equal_bitsandbytes_at_every_float_near_a_midpoint(quant_type):
    """Every fp32 whose top 16 bits it shares with a midpoint between two codes (all 65,536 of
    each such run), and the first and last float of every other run of 65,536, quantized in
    blocks whose absmax is 1 (so the scaled value is the float itself): bitsandbytes' codes."""
    table = F.get_4bit_type(quant_type, device="cpu").sort().values
    mids = (table[:-1] + table[1:]) / 2
    runs = sorted({int(m.view(torch.int32)) >> 16 for m in mids})
    prefix = torch.arange(1 << 16, dtype=torch.int64)
    ends = torch.cat([prefix << 16, (prefix << 16) | 0xFFFF])
    near = torch.cat([(torch.tensor(r, dtype=torch.int64) << 16) + torch.arange(1 << 16) for r in runs])
    values = torch.cat([ends, near]).to(torch.int32).view(torch.float32)
    values = values[torch.isfinite(values)]
    pad = -values.numel() % 63
    values = torch.cat([values, torch.zeros(pad)]).view(-1, 63)
    x = torch.cat([values, torch.ones(values.shape[0], 1)], dim=1)  # absmax 1 in every block
    fmt, packed, roles, _, _ = _packed_4bit(torch.randn(*x.shape, dtype=torch.bfloat16), quant_type, False, 64)
    new = fmt.quantize(packed, x, roles, CPU)
    q2, _ = F.quantize_4bit(x, blocksize=64, quant_type=quant_type, compress_statistics=False)
    assert torch.equal(new["weight"], q2)


def test_nested_quantizer_is_nearest_where_bitsandbytes_cpu_is_not():
    """Deliberate difference ``bnb-nested-absmax-nearest``: bitsandbytes 0.50.2's CPU kernel finds
    the code by a bucketed search in fp32 (BinSearch's Direct2), which lands on a farther code
    for about 0.15% of values; ours is the nearest code, ties to the lower.  Shown beside
    bitsandbytes' own result: the absmax agree, the codes agree wherever bitsandbytes' is the
    nearest, and every code that differs is strictly nearer."""
    code = F.create_dynamic_map()
    from adapterkit.quant.bnb import quantize_blockwise

    torch.manual_seed(0)
    differ = 0
    values = [torch.cat([code, (code[:-1] + code[1:]) / 2, torch.tensor([-0.988, 0.0, 1.0, -1.0])])]
    values += [torch.randn(1024) * torch.rand(1) for _ in range(40)]
    for x in values:
        q, absmax = quantize_blockwise(x, code.clone(), 256)
        q2, s2 = F.quantize_blockwise(x, blocksize=256)
        assert torch.equal(absmax, s2.absmax)
        normed = torch.nn.functional.pad(x, (0, -x.numel() % 256)).view(-1, 256) / absmax.view(-1, 1)
        normed = normed.reshape(-1)[: x.numel()]
        mine, theirs = (normed - code[q.long()]).abs(), (normed - code[q2.long()]).abs()
        assert bool((mine <= theirs).all())
        assert bool((mine[q != q2] < theirs[q != q2]).all())
        nearest = (normed.view(-1, 1) - code.view(1, -1)).abs().argmin(dim=1)  # first minimum: ties to the lower code
        assert torch.equal(q.long(), nearest)
        differ += int((q != q2).sum())
    assert differ > 0  # the difference is real on this bitsandbytes (else the entry should go)


def test_int8_dequantize_and_quantize_equal_bitsandbytes():
    torch.manual_seed(3)
    w = torch.randn(40, 70, dtype=torch.bfloat16)
    cb, scb, _ = F.int8_vectorwise_quant(w.to(torch.float16))
    fmt = Bnb8({"load_in_8bit": True})
    packed = fmt.find({"m.weight": ("I8", (40, 70)), "m.SCB": ("F32", (40,))})["m"]
    assert torch.equal(fmt.dequantize(packed, {"weight": cb, "SCB": scb}, CPU), F.int8_vectorwise_dequant(cb, scb))
    fetch = fmt.rows(packed, {"weight": cb, "SCB": scb}, CPU)
    assert torch.equal(torch.cat([fetch(s, min(40, s + 7)) for s in range(0, 40, 7)]), F.int8_vectorwise_dequant(cb, scb))
    new = fmt.quantize(packed, w.float(), {}, CPU)
    assert torch.equal(new["weight"], cb) and torch.equal(new["SCB"], scb)


def test_as_trained_rounding_equals_bitsandbytes_round_trip():
    torch.manual_seed(4)
    for quant_type in ("nf4", "fp4"):
        for double in (True, False):
            for blocksize in (64, 128):
                w = torch.randn(96, 80, dtype=torch.bfloat16)
                q, state = F.quantize_4bit(w, blocksize=blocksize, quant_type=quant_type, compress_statistics=double)
                # the default compute dtype bf16: what Linear4bit's forward multiplies by (dequantize_4bit to the weight's dtype)
                ours = round_as_trained(w.float(), AsTrained(quant_type, blocksize, double), CPU)
                assert torch.equal(ours, F.dequantize_4bit(q, state).float()), (quant_type, double, blocksize)
                state.dtype = torch.float32
                ours = round_as_trained(w.float(), AsTrained(quant_type, blocksize, double, compute_dtype="F32"), CPU)
                assert torch.equal(ours, F.dequantize_4bit(q, state)), (quant_type, double, blocksize)


# ----------------------------------------------------------------------------- checkpoints transformers wrote


def _tiny_llama(path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, dtype="bfloat16")
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(path)


def _quantized(dense: Path, path: Path, **bnb_kwargs):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    model = AutoModelForCausalLM.from_pretrained(dense, quantization_config=BitsAndBytesConfig(**bnb_kwargs), device_map="cpu")
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A dense bf16 llama, its NF4 (double-quantized) and int8 versions as transformers saves them,
    and a LoRA trained (random B) on the 4-bit model with PEFT."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("bnb")
    _tiny_llama(root / "dense")
    four = _quantized(root / "dense", root / "nf4", load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                      bnb_4bit_compute_dtype=torch.bfloat16)
    _quantized(root / "dense", root / "int8", load_in_8bit=True)
    torch.manual_seed(7)
    peft_model = get_peft_model(four, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False))
    with torch.no_grad():  # a fine-tune's size of change: large enough to survive 4-bit rounding in most modules
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(4.0)
    peft_model.save_pretrained(root / "lora")
    ids = torch.tensor([[1, 5, 9, 14, 33, 2, 70, 8]])
    with torch.no_grad():
        qlora_logits = peft_model(input_ids=ids).logits.float()
    return {"root": root, "ids": ids, "qlora_logits": qlora_logits}


def _lora_delta(root: Path, module: str) -> torch.Tensor:
    """ΔW of one module from the adapter file, in fp64 (first principles: scale · B · A)."""
    tensors = load_file(root / "lora" / "adapter_model.safetensors")
    config = json.loads((root / "lora" / "adapter_config.json").read_text())
    a = tensors[f"base_model.model.{module}.lora_A.weight"].double()
    b = tensors[f"base_model.model.{module}.lora_B.weight"].double()
    return config["lora_alpha"] / config["r"] * (b @ a)


def _bnb_dequantized(path: Path, module: str) -> torch.Tensor:
    """bitsandbytes' own fp32 dequantization of a module of a saved 4-bit checkpoint."""
    with safe_open(path / "model.safetensors", "pt") as f:
        weight = f.get_tensor(module + ".weight")
        state = {k[len(module + ".weight."):]: f.get_tensor(k) for k in f.keys() if k.startswith(module + ".weight.")}
    quant_state = F.QuantState.from_dict(state, device="cpu")
    quant_state.dtype = torch.float32
    return F.dequantize_4bit(weight, quant_state)


def _modules(root: Path) -> list[str]:
    return [f"model.layers.{i}.{part}.{t}" for i in range(2) for t in TARGETS for part in ("self_attn", "mlp")
            if (part == "mlp") == (t == "down_proj")]


def _logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, device_map="cpu")
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_config_is_read_as_bnb(models):
    config = json.loads((models["root"] / "nf4" / "config.json").read_text())
    fmt = quant_format(config)
    assert isinstance(fmt, Bnb4) and fmt.quant_type == "nf4" and fmt.double
    assert isinstance(quant_format(json.loads((models["root"] / "int8" / "config.json").read_text())), Bnb8)


def test_dense_merge_from_nf4_equals_fp64_sum(models, tmp_path):
    root = models["root"]
    report = merge_checkpoint(root / "nf4", [root / "lora"], tmp_path / "f32", dtype="F32")
    out = load_file(tmp_path / "f32" / "model.safetensors")
    assert not any(k.endswith((".absmax", ".quant_map")) or "quant_state" in k for k in out)
    config = json.loads((tmp_path / "f32" / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"  # both rewrites kept
    for module in _modules(root):
        expected = _bnb_dequantized(root / "nf4", module).double() + _lora_delta(root, module)
        got = out[module + ".weight"].double()
        # fp32 sum of fp32 terms against the fp64 sum: within a few fp32 ulps
        assert torch.allclose(got, expected, rtol=0, atol=4 * 2.0 ** -24 * expected.abs().max().item()), module
    untouched = "model.layers.0.self_attn.k_proj"
    assert torch.equal(out[untouched + ".weight"], _bnb_dequantized(root / "nf4", untouched))
    assert report.quantized["output"] == "dense" and report.quantized["format"] == "bnb-nf4"


def test_dense_bf16_merge_matches_qlora_outputs(models, tmp_path):
    """The dense merge loads in transformers and computes what the 4-bit base + adapter computes."""
    root = models["root"]
    merge_checkpoint(root / "nf4", [root / "lora"], tmp_path / "bf16", dtype="BF16")
    out = load_file(tmp_path / "bf16" / "model.safetensors")
    for module in _modules(root):
        expected = (_bnb_dequantized(root / "nf4", module).double() + _lora_delta(root, module)).to(torch.bfloat16)
        diff = (out[module + ".weight"].float() - expected.float()).abs()
        ulp = expected.float().abs() * 2.0 ** -7
        assert bool((diff <= ulp).all()), module  # one rounding: at most an ulp where fp32 and fp64 straddle a tie
        assert (diff > 0).float().mean() < 1e-3, module
    logits = _logits(tmp_path / "bf16", models["ids"])
    assert (logits - models["qlora_logits"]).abs().max() < 0.05 * models["qlora_logits"].abs().max()


@pytest.mark.parametrize("rows", [None, 24], ids=["default-blocks", "blocks-of-24-rows"])
def test_requantized_merge_equals_bitsandbytes_quantizer(models, tmp_path, monkeypatch, rows):
    """Whole blocks or several of 24 rows per module (the last one short): the dense output and
    the re-quantized one stream the same blocks, and the codes, scales and survival figures
    are the whole module's."""
    if rows is not None:
        import adapterkit.ops.merge_quantized as mq

        monkeypatch.setattr(mq, "CHUNK_ELEMENTS", 1)
        monkeypatch.setattr(mq, "ROW_ALIGN", rows)
    root = models["root"]
    merge_checkpoint(root / "nf4", [root / "lora"], tmp_path / "f32", dtype="F32")
    report = merge_checkpoint(root / "nf4", [root / "lora"], tmp_path / "nf4")
    dense = load_file(tmp_path / "f32" / "model.safetensors")
    base = load_file(root / "nf4" / "model.safetensors")
    got = load_file(tmp_path / "nf4" / "model.safetensors")
    assert set(got) == set(base)
    changed = {m + ".weight" for m in _modules(root)}
    for key in base:
        module_weight = next((c for c in changed if key == c or key.startswith(c + ".")), None)
        if module_weight is None:
            assert torch.equal(got[key], base[key]), key  # untouched: byte for byte
    for weight in changed:
        q, state = F.quantize_4bit(dense[weight], blocksize=64, quant_type="nf4", compress_statistics=True)
        ref = state.as_dict(packed=True)
        assert torch.equal(got[weight], q), weight
        for role in ("quant_map", "nested_absmax", "nested_quant_map"):
            assert torch.equal(got[f"{weight}.{role}"], ref[role]), (weight, role)
        _assert_nested_nearest(got[weight + ".absmax"], ref["absmax"], dense[weight], 64, ref)
        record = json.loads(bytes(got[weight + ".quant_state.bitsandbytes__nf4"].tolist()))
        assert record == json.loads(bytes(ref["quant_state.bitsandbytes__nf4"].tolist())) | {"dtype": "bfloat16"}
    survival = report.quantized["survival"]
    assert len(survival["modules"]) == len(changed)
    for m in survival["modules"]:  # the figures, recomputed here from the files
        weight = m["module"] + ".weight"
        written = _bnb_dequantized(tmp_path / "nf4", m["module"]).double()
        before = _bnb_dequantized(root / "nf4", m["module"]).double()
        delta = dense[weight].double() - before
        assert math.isclose(m["delta_norm"], delta.norm().item(), rel_tol=1e-5)
        assert math.isclose(m["moved_norm"], (written - before).norm().item(), rel_tol=1e-5)
        assert math.isclose(m["error_norm"], (written - before - delta).norm().item(), rel_tol=1e-5)
    # transformers loads the re-quantized checkpoint as a 4-bit model
    logits = _logits(tmp_path / "nf4", models["ids"])
    assert torch.isfinite(logits).all()


def test_requantized_dora_merges_whole_and_reports_survival(models, tmp_path):
    """A DoRA adapter has no row form (its norm spans the whole weight): the module is merged
    whole, then quantized.  The dense merge is PEFT's DoRA rule computed in fp64 from the files
    (m / ‖W + ΔW‖ per output row · (W + ΔW), W bitsandbytes' dequantization); the survival
    figures are recomputed from the written and the base checkpoints."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = models["root"]
    four = AutoModelForCausalLM.from_pretrained(root / "nf4", device_map="cpu")
    torch.manual_seed(11)
    dora = get_peft_model(four, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True, init_lora_weights=False))
    with torch.no_grad():
        for name, p in dora.named_parameters():
            if "lora_B" in name:
                p.mul_(4.0)
    dora.save_pretrained(tmp_path / "dora")
    merge_checkpoint(root / "nf4", [tmp_path / "dora"], tmp_path / "f32", dtype="F32")
    report = merge_checkpoint(root / "nf4", [tmp_path / "dora"], tmp_path / "nf4")
    tensors = load_file(tmp_path / "dora" / "adapter_model.safetensors")
    dense = load_file(tmp_path / "f32" / "model.safetensors")
    survival = {m["module"]: m for m in report.quantized["survival"]["modules"]}
    modules = [f"model.layers.{i}.self_attn.q_proj" for i in range(2)]
    assert sorted(survival) == modules
    for module in modules:
        prefix = f"base_model.model.{module}"
        a, b = tensors[f"{prefix}.lora_A.weight"].double(), tensors[f"{prefix}.lora_B.weight"].double()
        m = tensors[f"{prefix}.lora_magnitude_vector"].double()
        before = _bnb_dequantized(root / "nf4", module).double()
        combined = before + 2.0 * (b @ a)
        exact = (m / combined.norm(dim=1)).view(-1, 1) * combined
        value = dense[module + ".weight"].double()
        assert (value - exact).norm() <= 1e-6 * exact.norm()
        written = _bnb_dequantized(tmp_path / "nf4", module).double()
        figures = survival[module]
        assert math.isclose(figures["delta_norm"], (value - before).norm().item(), rel_tol=1e-5)
        assert math.isclose(figures["moved_norm"], (written - before).norm().item(), rel_tol=1e-5)
        assert math.isclose(figures["error_norm"], (written - value).norm().item(), rel_tol=1e-5)


def test_tiny_adapter_rounded_away_is_named(models, tmp_path):
    root = models["root"]
    report = merge_checkpoint(root / "nf4", [root / "lora"], tmp_path / "out", weights=[1e-4])
    survival = report.quantized["survival"]
    assert set(survival["lost_modules"]) == set(_modules(root))
    assert any(n.startswith("WARNING") and "model.layers.0.self_attn.q_proj" in n for n in report.notes)
    res = CliRunner().invoke(cli, ["merge", str(root / "nf4"), str(root / "lora"), str(tmp_path / "cli"), "--weight", "1e-4"])
    assert res.exit_code == 0, res.output
    assert "WARNING" in res.stderr and "rounded most of ΔW away" in res.stderr
    assert "mostly rounded away" in res.stdout


def test_int8_merge_dense_and_requantized(models, tmp_path):
    root = models["root"]
    merge_checkpoint(root / "int8", [root / "lora"], tmp_path / "f32", dtype="F32")
    merge_checkpoint(root / "int8", [root / "lora"], tmp_path / "q8")
    dense = load_file(tmp_path / "f32" / "model.safetensors")
    base = load_file(root / "int8" / "model.safetensors")
    got = load_file(tmp_path / "q8" / "model.safetensors")
    for module in _modules(root):
        deq = F.int8_vectorwise_dequant(base[module + ".weight"], base[module + ".SCB"]).double()
        expected = deq + _lora_delta(root, module)
        assert torch.allclose(dense[module + ".weight"].double(), expected, rtol=0, atol=4 * 2.0 ** -24 * expected.abs().max().item())
        cb, scb, _ = F.int8_vectorwise_quant(dense[module + ".weight"].to(torch.float16))
        assert torch.equal(got[module + ".weight"], cb) and torch.equal(got[module + ".SCB"], scb)
    assert torch.equal(got["model.layers.0.self_attn.k_proj.weight"], base["model.layers.0.self_attn.k_proj.weight"])


def test_unmerge_from_requantized_and_dense(models, tmp_path):
    root = models["root"]
    merge_checkpoint(root / "nf4", [root / "lora"], tmp_path / "m32", dtype="F32")
    merge_checkpoint(tmp_path / "m32", [root / "lora"], tmp_path / "u32", unmerge=True)
    back = load_file(tmp_path / "u32" / "model.safetensors")
    for module in _modules(root):
        deq = _bnb_dequantized(root / "nf4", module)
        assert torch.allclose(back[module + ".weight"], deq, rtol=0, atol=1e-5 * deq.abs().max().item())
    merge_checkpoint(root / "nf4", [root / "lora"], tmp_path / "mq")
    report = merge_checkpoint(tmp_path / "mq", [root / "lora"], tmp_path / "uq", unmerge=True, dtype="F32")
    assert report.quantized["output"] == "dense"
    assert "quantization_config" not in json.loads((tmp_path / "uq" / "config.json").read_text())


def test_as_trained_merge_matches_qlora_better_than_original_base(models, tmp_path):
    """merge --as-trained nf4 into the 16-bit base reproduces the 4-bit base + adapter the user
    trained; merging into the original 16-bit base does not (the QLoRA base was the rounded one)."""
    root = models["root"]
    report = merge_checkpoint(root / "dense", [root / "lora"], tmp_path / "trained", dtype="F32",
                              as_trained={"quant_type": "nf4", "blocksize": 64, "double_quant": True})
    merge_checkpoint(root / "dense", [root / "lora"], tmp_path / "plain", dtype="F32")
    qlora = models["qlora_logits"]
    as_trained = (_logits(tmp_path / "trained", models["ids"]) - qlora).abs().max().item()
    plain = (_logits(tmp_path / "plain", models["ids"]) - qlora).abs().max().item()
    assert as_trained < plain / 4, (as_trained, plain)
    assert as_trained < 0.02 * qlora.abs().max().item()  # the QLoRA forward computes in bf16: its rounding only
    # the weights rounded are exactly those transformers quantized
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    four = AutoModelForCausalLM.from_pretrained(root / "dense", device_map="cpu",
                                                quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"))
    quantized = {n + ".weight" for n, m in four.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    dense = load_file(root / "dense" / "model.safetensors")
    trained = load_file(tmp_path / "trained" / "model.safetensors")
    rounded = {k for k in dense if k not in {m + ".weight" for m in _modules(root)} and not torch.equal(trained[k], dense[k].float())}
    assert rounded == quantized - {m + ".weight" for m in _modules(root)}
    assert any("rounded through bitsandbytes' nf4" in n for n in report.notes)


def test_as_trained_refusals(models, tmp_path):
    root = models["root"]
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(root / "nf4", [root / "lora"], tmp_path / "x", as_trained={"quant_type": "nf4"})
    assert info.value.code == "argument-invalid" and "quantized already" in str(info.value)
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(root / "dense", [root / "lora"], tmp_path / "x", as_trained={"quant_type": "int3"})
    assert info.value.code == "argument-invalid"
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(root / "dense", [root / "lora"], tmp_path / "x", as_trained={"quant_type": "nf4", "blocksize": 48})
    assert info.value.code == "argument-invalid" and "blocksize" in str(info.value)
    for bad, field in (({"quant_type": "nf4", "blocksze": 64}, "blocksze"), ({"quant_type": "nf4", "skip": 3}, "skip"),
                       ({"quant_type": "nf4", "skip": [3]}, "skip"), (["nf4"], "as_trained")):
        with pytest.raises(AdapterkitError) as info:  # a typo or a wrong type: refused by name, never a TypeError
            merge_checkpoint(root / "dense", [root / "lora"], tmp_path / "x", as_trained=bad)
        assert info.value.code == "argument-invalid" and field in str(info.value), str(info.value)
    # a single skip name is one module, not its letters
    merge_checkpoint(root / "dense", [root / "lora"], tmp_path / "one", as_trained={"skip": "o_proj"})
    o = "model.layers.0.self_attn.o_proj.weight"
    assert torch.equal(load_file(tmp_path / "one" / "model.safetensors")[o], load_file(root / "dense" / "model.safetensors")[o])
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(root / "dense", [root / "lora"], tmp_path / "x", as_trained={"quant_type": "nf4", "compute_dtype": "I8"})
    assert info.value.code == "argument-invalid" and "compute_dtype" in str(info.value)
    res = CliRunner().invoke(cli, ["merge", str(root / "dense"), str(root / "lora"), str(tmp_path / "cli"), "--as-trained", "nf4",
                                   "--as-trained-compute-dtype", "fp32", "--as-trained-skip", "o_proj", "--json"])
    assert res.exit_code == 0, res.output
    settings = json.loads(res.stdout)["quantized"]["as_trained"]
    assert settings == {"quant_type": "nf4", "blocksize": 64, "double_quant": True, "skip": ["o_proj"], "compute_dtype": "F32"}


# ----------------------------------------------------------------------------- bad input


def _copy_with(src: Path, dst: Path, *, tensors=None, config=None) -> Path:
    import shutil

    shutil.copytree(src, dst)
    if tensors is not None:
        data = load_file(src / "model.safetensors")
        tensors(data)
        save_file(data, dst / "model.safetensors", metadata={"format": "pt"})
    if config is not None:
        cfg = json.loads((src / "config.json").read_text())
        config(cfg["quantization_config"])
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


Q = "model.layers.0.self_attn.q_proj"
K = "model.layers.1.self_attn.k_proj"  # no adapter touches it


def _record(data, **changes):
    key = Q + ".weight.quant_state.bitsandbytes__nf4"
    record = json.loads(bytes(data[key].tolist())) | changes
    data[key] = torch.tensor(list(json.dumps(record).encode()), dtype=torch.uint8)


BAD = {
    "unknown method": dict(config=lambda qc: qc.update(quant_method="hqq"), code="quant-unsupported", where="quant_method"),
    "storage": dict(config=lambda qc: qc.update(bnb_4bit_quant_storage="bfloat16"), code="quant-unsupported", where="bnb_4bit_quant_storage"),
    "type disagrees": dict(config=lambda qc: qc.update(bnb_4bit_quant_type="fp4"), code="quant-invalid", where="bnb_4bit_quant_type"),
    "double disagrees": dict(config=lambda qc: qc.update(bnb_4bit_use_double_quant=False), code="quant-invalid", where="bnb_4bit_use_double_quant"),
    "both bit widths": dict(config=lambda qc: qc.update(load_in_8bit=True), code="quant-unsupported", where="load_in_4bit"),
    "missing absmax": dict(tensors=lambda d: d.pop(Q + ".weight.absmax"), code="quant-invalid", where=Q),
    "absmax shape": dict(tensors=lambda d: d.update({Q + ".weight.absmax": d[Q + ".weight.absmax"][:-1]}), code="quant-invalid", where=Q),
    "weight shape": dict(tensors=lambda d: d.update({Q + ".weight": d[Q + ".weight"][:-2]}), code="quant-invalid", where=Q),
    "no record": dict(tensors=lambda d: d.pop(Q + ".weight.quant_state.bitsandbytes__nf4"), code="quant-invalid", where=Q),
    "record not json": dict(tensors=lambda d: d.update({Q + ".weight.quant_state.bitsandbytes__nf4": torch.tensor([123, 34], dtype=torch.uint8)}),
                            code="quant-invalid", where=Q),
    "record shape": dict(tensors=lambda d: _record(d, shape=[64, 65]), code="quant-invalid", where=Q),
    "record blocksize": dict(tensors=lambda d: _record(d, blocksize=48), code="quant-invalid", where="blocksize"),
    "record offset": dict(tensors=lambda d: _record(d, nested_offset="x"), code="quant-invalid", where="nested_offset"),
    "record dtype": dict(tensors=lambda d: _record(d, dtype="int8"), code="quant-invalid", where="dtype"),
    # an untouched module's statistics and record gone: its U8 codes must not pass as a dense weight
    "lone packed weight": dict(tensors=lambda d: [d.pop(k) for k in list(d) if k.startswith(K + ".weight.")],
                               code="quant-invalid", where=K),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_quantized_checkpoints_name_the_field(models, tmp_path, case):
    spec = BAD[case]
    base = _copy_with(models["root"] / "nf4", tmp_path / "base", tensors=spec.get("tensors"), config=spec.get("config"))
    for dtype in (None, "BF16"):
        with pytest.raises(AdapterkitError) as info:
            merge_checkpoint(base, [models["root"] / "lora"], tmp_path / f"out{dtype}", dtype=dtype)
        assert info.value.code == spec["code"], str(info.value)
        assert spec["where"] in str(info.value), str(info.value)
        assert not (tmp_path / f"out{dtype}").exists()
    res = CliRunner().invoke(cli, ["merge", str(base), str(models["root"] / "lora"), str(tmp_path / "cli"), "--dtype", "bf16"])
    assert res.exit_code == 2 and f"[{spec['code']}]" in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_int8_weight_without_scb_is_refused(models, tmp_path):
    base = _copy_with(models["root"] / "int8", tmp_path / "base", tensors=lambda d: d.pop(Q + ".SCB"))
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(base, [models["root"] / "lora"], tmp_path / "out", dtype="BF16")
    assert info.value.code == "quant-invalid" and Q in str(info.value) and "SCB" in str(info.value)


def test_packed_weight_without_config_is_not_copied_as_dense(models, tmp_path):
    """A 4-bit checkpoint whose config lost quantization_config: the packed U8 weight is not a
    float weight (refused by merge's dtype rule, naming the tensor)."""
    base = _copy_with(models["root"] / "nf4", tmp_path / "base", config=lambda qc: qc.clear())
    cfg = json.loads((base / "config.json").read_text())
    cfg.pop("quantization_config")
    (base / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(base, [models["root"] / "lora"], tmp_path / "out", dtype="BF16")
    assert info.value.code in ("base-dtype-unsupported", "base-mismatch", "base-shape-mismatch") and Q in str(info.value)


# ----------------------------------------------------------------------------- deliberate differences, beside the peers


def test_peft_merge_into_4bit_rounds_twice_ours_once(models, tmp_path):
    """Deliberate difference ``qlora-merge-once``: PEFT's ``merge_and_unload`` on the 4-bit model
    dequantizes to bf16, adds ΔW there and quantizes again in place; ours adds in fp32 and rounds
    once (dense), or quantizes once from the fp32 sum.  Both against the exact fp64 sum: ours is
    at least as close for every merged module."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    root = models["root"]
    four = AutoModelForCausalLM.from_pretrained(root / "nf4", device_map="cpu")
    merged = PeftModel.from_pretrained(four, root / "lora").merge_and_unload()
    merge_checkpoint(root / "nf4", [root / "lora"], tmp_path / "bf16", dtype="BF16")
    merge_checkpoint(root / "nf4", [root / "lora"], tmp_path / "nf4")
    dense = load_file(tmp_path / "bf16" / "model.safetensors")
    for module in _modules(root):
        exact = _bnb_dequantized(root / "nf4", module).double() + _lora_delta(root, module)
        layer = merged.get_submodule(module)
        peft_weight = F.dequantize_4bit(layer.weight.data, layer.weight.quant_state).double()
        ours_dense = dense[module + ".weight"].double()
        ours_requantized = _bnb_dequantized(tmp_path / "nf4", module).double()
        peft_error = (peft_weight - exact).norm().item()
        assert (ours_dense - exact).norm().item() < peft_error / 10, module  # one bf16 rounding against a 4-bit one
        assert (ours_requantized - exact).norm().item() <= peft_error * 1.001, module


def test_padded_record_reads_as_bitsandbytes_record(models, tmp_path):
    """Deliberate difference ``bnb-record-padded``: a rewritten double-quantized module's record
    is bitsandbytes' JSON followed by spaces (its length is planned before the new offset is
    known); bitsandbytes reads the same dict from it."""
    from bitsandbytes.utils import unpack_tensor_to_dict

    root = models["root"]
    merge_checkpoint(root / "nf4", [root / "lora"], tmp_path / "nf4")
    got = load_file(tmp_path / "nf4" / "model.safetensors")
    record = got[Q + ".weight.quant_state.bitsandbytes__nf4"]
    raw = bytes(record.tolist())
    assert raw != raw.rstrip(b" ") and json.loads(raw) == unpack_tensor_to_dict(record)
    assert raw.rstrip(b" ") == json.dumps(unpack_tensor_to_dict(record)).encode()  # bitsandbytes' bytes, then spaces


def test_info_describes_a_quantized_checkpoint(models):
    root = models["root"]
    res = CliRunner().invoke(cli, ["info", str(root / "nf4"), "--json"])
    assert res.exit_code == 0, res.output
    quantization = json.loads(res.stdout)["quantization"]
    with safe_open(root / "nf4" / "model.safetensors", "pt") as f:
        quantized = {k[: -len(".quant_state.bitsandbytes__nf4")] for k in f.keys() if k.endswith("bitsandbytes__nf4")}
        packed = sum(f.get_slice(k).get_shape()[0] for k in f.keys() if any(k == q or k.startswith(q + ".") for q in quantized)
                     and not f.get_slice(k).get_shape() == [] and f.get_slice(k).get_dtype() == "U8")
    assert quantization["format"] == "bnb-nf4" and quantization["double_quant"] is True
    assert quantization["quantized_modules"] == len(quantized) == 14
    assert quantization["quantized_bytes"] > packed  # the U8 members alone, then the fp32 statistics
    dense = load_file(root / "dense" / "model.safetensors")
    assert quantization["dense_parameters"] == sum(t.numel() for t in dense.values())
    text = CliRunner().invoke(cli, ["info", str(root / "nf4")]).stdout
    assert "quantization:    bnb-nf4" in text and "14 modules" in text
    assert json.loads(CliRunner().invoke(cli, ["info", str(root / "dense"), "--json"]).stdout)["quantization"] is None


# ----------------------------------------------------------------------------- extract against a quantized side


def test_extract_dense_finetune_from_quantized_base(models, tmp_path):
    """FINETUNED dense (a bf16 merge of the 4-bit base and the adapter), BASE the 4-bit checkpoint:
    extract finds the adapter's ΔW at its rank and sees the other modules as unchanged."""
    from adapterkit.ops.extract import extract

    root = models["root"]
    merge_checkpoint(root / "nf4", [root / "lora"], tmp_path / "ft", dtype="BF16")
    adapter, report = extract(root / "nf4", tmp_path / "ft", rank=4)
    assert {r.name for r in report.modules} == set(_modules(root))
    assert "model.layers.0.self_attn.k_proj.weight" in report.unchanged  # bf16(dequantized base): kept as it was
    for module in _modules(root):
        a = adapter.tensors[f"base_model.model.{module}.lora_A.weight"].double()
        b = adapter.tensors[f"base_model.model.{module}.lora_B.weight"].double()
        delta = b @ a
        expected = load_file(tmp_path / "ft" / "model.safetensors")[module + ".weight"].double() - _bnb_dequantized(root / "nf4", module).double()
        assert (delta - expected).norm() <= 0.02 * expected.norm(), module  # rank 4 of a rank-4 ΔW plus bf16 rounding noise
        assert (expected - _lora_delta(root, module)).norm() <= 0.05 * expected.norm(), module


def test_extract_quantized_finetune_from_dense_base(models, tmp_path):
    """The reverse: BASE dense (the 4-bit base dequantized to fp32), FINETUNED the re-quantized merge."""
    from adapterkit.ops.extract import extract

    root = models["root"]
    merge_checkpoint(root / "nf4", [root / "lora"], tmp_path / "ftq")
    stored = load_file(root / "nf4" / "model.safetensors")  # the dense base: bitsandbytes' fp32 dequantization of each module
    modules = {k.split(".weight.quant_state")[0] for k in stored if ".quant_state." in k}
    base = {k: v for k, v in stored.items() if not any(k.startswith(m + ".weight") for m in modules)}
    base |= {m + ".weight": _bnb_dequantized(root / "nf4", m) for m in modules}
    (tmp_path / "base32").mkdir()
    save_file(base, tmp_path / "base32" / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((root / "nf4" / "config.json").read_text())
    config.pop("quantization_config")
    (tmp_path / "base32" / "config.json").write_text(json.dumps(config))
    adapter, report = extract(tmp_path / "base32", tmp_path / "ftq", energy=1.0)
    assert {r.name for r in report.modules} == set(_modules(root))
    for module in _modules(root):
        a = adapter.tensors[f"base_model.model.{module}.lora_A.weight"].double()
        b = adapter.tensors[f"base_model.model.{module}.lora_B.weight"].double()
        expected = _bnb_dequantized(tmp_path / "ftq", module).double() - _bnb_dequantized(root / "nf4", module).double()
        assert (b @ a - expected).norm() <= 1e-2 * expected.norm(), module  # full rank; the factors stored in bf16
    assert adapter.tensors[f"base_model.model.{Q}.lora_A.weight"].dtype == torch.bfloat16  # the dtype the 4-bit weights stand for


# ----------------------------------------------------------------------------- combinations


def test_two_adapters_and_weights_on_a_4bit_base(models, tmp_path):
    """Two adapters (the same LoRA at 0.25 and 0.75) on the 4-bit base equal one at weight 1."""
    root = models["root"]
    merge_checkpoint(root / "nf4", [root / "lora"], tmp_path / "one", dtype="F32")
    merge_checkpoint(root / "nf4", [root / "lora", root / "lora"], tmp_path / "two", dtype="F32", weights=[0.25, 0.75], again=True)
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    for module in _modules(root):
        assert torch.allclose(one[module + ".weight"], two[module + ".weight"], rtol=0, atol=1e-6), module


def test_dora_on_a_4bit_base_equals_first_principles(models, tmp_path):
    """DoRA's norm is over the dequantized base weight plus ΔW (PEFT's DoRA on bnb layers
    dequantizes for it): W' = m / ‖W + ΔW‖_row · (W + ΔW), in fp64 here."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = models["root"]
    four = AutoModelForCausalLM.from_pretrained(root / "nf4", device_map="cpu")
    torch.manual_seed(11)
    model = get_peft_model(four, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True, init_lora_weights=False))
    model.save_pretrained(tmp_path / "dora")
    merge_checkpoint(root / "nf4", [tmp_path / "dora"], tmp_path / "out", dtype="F32")
    tensors = load_file(tmp_path / "dora" / "adapter_model.safetensors")
    out = load_file(tmp_path / "out" / "model.safetensors")
    for i in range(2):
        module = f"model.layers.{i}.self_attn.q_proj"
        p = f"base_model.model.{module}"
        w = _bnb_dequantized(root / "nf4", module).double()
        combined = w + 2.0 * tensors[f"{p}.lora_B.weight"].double() @ tensors[f"{p}.lora_A.weight"].double()
        m = tensors[f"{p}.lora_magnitude_vector"].double().reshape(-1, 1)
        expected = m / combined.norm(dim=1, keepdim=True) * combined
        assert torch.allclose(out[module + ".weight"].double(), expected, rtol=0, atol=1e-5 * expected.abs().max().item()), module


def test_resharded_requantized_output_loads(models, tmp_path):
    """A re-quantized output resharded (--max-shard-size) holds the same tensors and loads in transformers."""
    root = models["root"]
    merge_checkpoint(root / "nf4", [root / "lora"], tmp_path / "one")
    merge_checkpoint(root / "nf4", [root / "lora"], tmp_path / "many", max_shard_size=20_000)
    index = json.loads((tmp_path / "many" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2
    many = {}
    for shard in shards:
        many |= load_file(tmp_path / "many" / shard)
    one = load_file(tmp_path / "one" / "model.safetensors")
    assert set(many) == set(one) and all(torch.equal(many[k], one[k]) for k in one)
    assert torch.equal(_logits(tmp_path / "many", models["ids"]), _logits(tmp_path / "one", models["ids"]))


# ----------------------------------------------------------------------------- CUDA (scripts/gpu_checks.sh runs these)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double", [False, True])
def test_4bit_on_cuda_equals_the_cpu(quant_type, double):
    """Our dequantization and quantization are plain torch: on a CUDA device they give the CPU's
    bits, but for the mean over the absmax (a reduction: its last bit may differ)."""
    torch.manual_seed(5)
    w = torch.randn(96, 200, dtype=torch.bfloat16)
    fmt, packed, roles, _, _ = _packed_4bit(w, quant_type, double, 64)
    gpu = torch.device("cuda")
    assert torch.equal(fmt.dequantize(packed, roles, gpu).cpu(), fmt.dequantize(packed, roles, CPU))
    x = w.float() + 0.01 * torch.randn(96, 200)
    on_cpu, on_gpu = fmt.quantize(packed, x, roles, CPU), fmt.quantize(packed, x.to(gpu), roles, gpu)
    assert torch.equal(on_cpu["weight"], on_gpu["weight"])
    if not double:
        assert torch.equal(on_cpu["absmax"], on_gpu["absmax"])
    else:
        a = json.loads(bytes(on_cpu["record"].tolist()))["nested_offset"]
        b = json.loads(bytes(on_gpu["record"].tolist()))["nested_offset"]
        assert abs(a - b) <= 4 * abs(a) * 2.0 ** -24
        assert (on_cpu["absmax"].int() - on_gpu["absmax"].int()).abs().max() <= 1


@pytest.mark.cuda
@cuda
def test_merge_onto_nf4_on_cuda_equals_the_cpu(models, tmp_path):
    root = models["root"]
    merge_checkpoint(root / "nf4", [root / "lora"], tmp_path / "cpu", dtype="F32")
    merge_checkpoint(root / "nf4", [root / "lora"], tmp_path / "gpu", dtype="F32", device="cuda")
    a, b = load_file(tmp_path / "cpu" / "model.safetensors"), load_file(tmp_path / "gpu" / "model.safetensors")
    for key in a:  # ΔW's product may round differently on the GPU: within fp32 rounding
        assert torch.allclose(a[key].float(), b[key].float(), rtol=0, atol=4 * 2.0 ** -24 * max(1.0, a[key].float().abs().max().item())), key


def test_sharded_quantized_base_keeps_its_sharding(models, tmp_path):
    """A 4-bit base in two shards: the dense output keeps the shard names, each weight where its
    packed tensors were, and every module's members dropped; the re-quantized one keeps every key."""
    root = models["root"]
    stored = load_file(root / "nf4" / "model.safetensors")
    keys = list(stored)
    halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2], "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    base = tmp_path / "base"
    base.mkdir()
    for name, part in halves.items():
        save_file({k: stored[k] for k in part}, base / name, metadata={"format": "pt"})
    weight_map = {k: name for name, part in halves.items() for k in part}
    (base / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for extra in ("config.json", "generation_config.json"):
        (base / extra).write_bytes((root / "nf4" / extra).read_bytes())
    merge_checkpoint(base, [root / "lora"], tmp_path / "dense", dtype="BF16")
    merge_checkpoint(base, [root / "lora"], tmp_path / "q")
    index = json.loads((tmp_path / "dense" / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(index.values()) == set(halves)
    for key, shard in index.items():
        assert weight_map[key] == shard, key  # a dense weight sits in the shard its packed codes were in
    assert not any(".absmax" in k or "quant_state" in k for k in index)
    assert json.loads((tmp_path / "q" / "model.safetensors.index.json").read_text())["weight_map"] == weight_map
    whole = load_file(tmp_path / "q" / "model-00001-of-00002.safetensors") | load_file(tmp_path / "q" / "model-00002-of-00002.safetensors")
    single = tmp_path / "single"
    merge_checkpoint(root / "nf4", [root / "lora"], single)
    assert all(torch.equal(whole[k], v) for k, v in load_file(single / "model.safetensors").items())
    assert torch.equal(_logits(tmp_path / "dense", models["ids"]), _logits(_dense_single(root, tmp_path), models["ids"]))


def _dense_single(root: Path, tmp_path: Path) -> Path:
    out = tmp_path / "dense-single"
    merge_checkpoint(root / "nf4", [root / "lora"], out, dtype="BF16")
    return out


def test_a_quantized_weight_stands_for_its_records_dtype(models, tmp_path):
    """The dense dtype of a 4-bit weight is its record's (what bitsandbytes dequantizes to), not
    the config's: here the config says float32, the records bfloat16."""
    from adapterkit.checkpoint import open_checkpoint
    from adapterkit.ops.merge_quantized import open_quantized

    base = _copy_with(models["root"] / "nf4", tmp_path / "base")
    config = json.loads((base / "config.json").read_text()) | {"dtype": "float32"}
    (base / "config.json").write_text(json.dumps(config))
    view = open_quantized(open_checkpoint(base), config)
    assert view.keys()[Q + ".weight"][0] == "BF16" and view.dense_dtype == "F32"


def test_requantized_unmerge_subtracts(models, tmp_path):
    """Unmerging from a re-quantized merge: the codes are bitsandbytes' quantization of the
    dequantized merge minus ΔW (the dense unmerge's fp32 value)."""
    root = models["root"]
    merge_checkpoint(root / "nf4", [root / "lora"], tmp_path / "mq")
    merge_checkpoint(tmp_path / "mq", [root / "lora"], tmp_path / "u32", unmerge=True, dtype="F32")
    merge_checkpoint(tmp_path / "mq", [root / "lora"], tmp_path / "uq", unmerge=True)
    dense, got = load_file(tmp_path / "u32" / "model.safetensors"), load_file(tmp_path / "uq" / "model.safetensors")
    for module in _modules(root):
        expected = _bnb_dequantized(tmp_path / "mq", module).double() - _lora_delta(root, module)
        assert (dense[module + ".weight"].double() - expected).abs().max() < 1e-5, module
        q, _ = F.quantize_4bit(dense[module + ".weight"], blocksize=64, quant_type="nf4", compress_statistics=True)
        assert torch.equal(got[module + ".weight"], q), module


def test_as_trained_rounds_untouched_weights_at_the_stored_dtype_and_skips_by_suffix(models, tmp_path):
    """Without --dtype (the output keeps bf16) the weights no adapter touches are rounded too;
    a skip name matches a module by suffix, as llm_int8_skip_modules does."""
    root = models["root"]
    merge_checkpoint(root / "dense", [root / "lora"], tmp_path / "t",
                     as_trained={"quant_type": "nf4", "skip": ("o_proj",)})
    dense, out = load_file(root / "dense" / "model.safetensors"), load_file(tmp_path / "t" / "model.safetensors")
    k = "model.layers.0.self_attn.k_proj.weight"
    assert torch.equal(out[k], round_as_trained(dense[k].float(), AsTrained("nf4", 64, True), CPU).to(torch.bfloat16))
    assert not torch.equal(out[k], dense[k])
    for i in range(2):
        o = f"model.layers.{i}.self_attn.o_proj.weight"
        assert torch.equal(out[o], dense[o]), o  # skipped: left as stored
    assert torch.equal(out["model.embed_tokens.weight"], dense["model.embed_tokens.weight"])


def test_extract_reports_a_changed_quantized_non_target(models, tmp_path):
    """A packed module outside --targets that the fine-tune changed is not 'unchanged'."""
    from adapterkit.ops.extract import extract

    root = models["root"]
    merge_checkpoint(root / "nf4", [root / "lora"], tmp_path / "ft", dtype="BF16")
    _, report = extract(root / "nf4", tmp_path / "ft", rank=4, targets=r"q_proj$")
    v = "model.layers.0.self_attn.v_proj.weight"
    assert v not in report.unchanged and v in report.not_extracted
    assert "model.layers.0.self_attn.k_proj.weight" in report.unchanged


def test_non_finite_dense_merge_is_refused_and_nothing_written(models, tmp_path):
    """An overflowing ΔW on the streamed dense path: refused naming the tensor, no output left."""
    root = models["root"]
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(root / "nf4", [root / "lora"], tmp_path / "out", dtype="BF16", weights=[3e38])
    assert info.value.code == "non-finite" and ".weight" in str(info.value)
    assert not (tmp_path / "out").exists() and not any(tmp_path.iterdir())
    merge_checkpoint(root / "nf4", [root / "lora"], tmp_path / "unsafe", dtype="F32", weights=[3e38], safe=False)
    unsafe = load_file(tmp_path / "unsafe" / "model.safetensors")
    assert any(not bool(torch.isfinite(unsafe[m + ".weight"]).all()) for m in _modules(root))  # --no-safe writes them


def test_tied_embeddings_on_a_quantized_base(models, tmp_path):
    """A 4-bit base that ties lm_head to its (plain) input embedding, and one adapter on a packed
    module and on lm_head: untied by default, lm_head = embedding + its ΔW, the packed module
    dequantized + ΔW, in both output forms."""
    from adapterkit import Adapter, save
    from adapterkit.kinds.lora import LoraConfig

    root = models["root"]
    base = _copy_with(root / "nf4", tmp_path / "base", tensors=lambda d: d.pop("lm_head.weight"))
    config = json.loads((base / "config.json").read_text()) | {"tie_word_embeddings": True}
    (base / "config.json").write_text(json.dumps(config))
    g = torch.Generator().manual_seed(3)
    tensors = {f"base_model.model.{m}.lora_{ab}.weight": torch.randn(shape, generator=g) * 0.1
               for m, (out, inp) in ((Q, (64, 64)), ("lm_head", (96, 64)))
               for ab, shape in (("A", (2, inp)), ("B", (out, 2)))}
    save(Adapter.from_tensors(LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "lm_head"]), tensors), tmp_path / "lora")

    def delta(module: str) -> torch.Tensor:
        p = f"base_model.model.{module}"
        return tensors[f"{p}.lora_B.weight"].double() @ tensors[f"{p}.lora_A.weight"].double()

    stored = load_file(base / "model.safetensors")
    embed = stored["model.embed_tokens.weight"]
    merge_checkpoint(base, [tmp_path / "lora"], tmp_path / "dense", dtype="F32")
    merge_checkpoint(base, [tmp_path / "lora"], tmp_path / "q")
    for out, dtype in ((tmp_path / "dense", torch.float32), (tmp_path / "q", torch.bfloat16)):
        got = load_file(out / "model.safetensors")
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["tie_word_embeddings"] is False, out
        assert torch.equal(got["model.embed_tokens.weight"], embed.to(dtype)), out
        expected = (embed.double() + delta("lm_head")).to(dtype)
        assert got["lm_head.weight"].dtype == dtype
        assert (got["lm_head.weight"].double() - expected.double()).abs().max() <= 2 * expected.double().abs().max() * 2.0 ** -8, out
    dense = load_file(tmp_path / "dense" / "model.safetensors")
    q_expected = _bnb_dequantized(base, Q).double() + delta(Q)
    assert (dense[Q + ".weight"].double() - q_expected).abs().max() <= 4 * 2.0 ** -24 * q_expected.abs().max()
    q = F.quantize_4bit(dense[Q + ".weight"], blocksize=64, quant_type="nf4", compress_statistics=True)[0]
    assert torch.equal(load_file(tmp_path / "q" / "model.safetensors")[Q + ".weight"], q)


@pytest.mark.parametrize("start,count", [(0, 0), (0, 1), (1, 1), (1, 4), (3, 101), (0, 1000)])
def test_unpack_4bit_reads_high_nibble_first_at_any_offset(start, count):
    """First principles: byte b holds code b >> 4 then code b & 15; a slice starting at an odd
    byte (an int16 view needs an even one) and an odd byte count read the same."""
    from adapterkit.quant.bnb import unpack_4bit

    table = torch.randn(16)
    data = torch.randint(0, 256, (start + count + 3,), dtype=torch.uint8)[start: start + count]
    expected = [table[v].item() for b in data.tolist() for v in (b >> 4, b & 15)]
    assert unpack_4bit(data, table).tolist() == expected


# ----------------------------------------------------------------------------- blocks of rows, several adapters, refusals


def _lora(path: Path, tensors: dict[str, torch.Tensor], **config) -> Path:
    from adapterkit import Adapter, save
    from adapterkit.kinds.lora import LoraConfig

    save(Adapter.from_tensors(LoraConfig(**config), tensors), path)
    return path


def _one_module_nf4(root: Path, out_f: int, in_f: int) -> tuple[Path, Path, dict]:
    """A checkpoint of one NF4 (double-quantized) module ``m.proj`` that bitsandbytes packed,
    shaped so that blocks of 64 values cut its rows, and a rank-4 LoRA on it."""
    g = torch.Generator().manual_seed(out_f * in_f)
    w = (torch.randn(out_f, in_f, generator=g) * 0.05).to(torch.bfloat16)
    q, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    base = root / "base"
    base.mkdir(parents=True)
    save_file({"m.proj.weight": q} | {"m.proj.weight." + k: v for k, v in state.as_dict(packed=True).items()},
              base / "model.safetensors", metadata={"format": "pt"})
    qc = {"quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False, "bnb_4bit_quant_type": "nf4",
          "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "bfloat16"}
    (base / "config.json").write_text(json.dumps({"model_type": "llama", "dtype": "bfloat16", "quantization_config": qc}))
    A, B = torch.randn(4, in_f, generator=g) * 0.1, torch.randn(out_f, 4, generator=g) * 0.1
    lora = _lora(root / "lora", {"base_model.model.m.proj.lora_A.weight": A, "base_model.model.m.proj.lora_B.weight": B},
                 r=4, lora_alpha=8, target_modules=["proj"])
    state32 = F.QuantState.from_dict(state.as_dict(packed=True), device="cpu")
    state32.dtype = torch.float32
    return base, lora, {"w": F.dequantize_4bit(q, state32).double(), "delta": 2.0 * B.double() @ A.double()}


@pytest.mark.parametrize("out_f,in_f", [(200, 48), (401, 47)], ids=["48-per-row", "47-per-row-odd-count"])
def test_blocks_of_rows_start_on_a_4bit_block_at_any_chunk_size(tmp_path, monkeypatch, out_f, in_f):
    """Rows of 48 (47) values: a block of 64 starts on a row only every 4 (64) rows, so a block
    of rows must start at a multiple of that, whatever number of rows CHUNK_ELEMENTS fits (here
    150 (250): not a multiple).  The second shape has an odd element count and a short last
    4-bit block; double quantization, three blocks of rows, the last one short.  Dense output
    against bitsandbytes' dequantization + ΔW in fp64; the re-quantized codes are bitsandbytes'
    quantization of that dense output, the survival figures recomputed from the files."""
    import adapterkit.ops.merge_quantized as mq

    base, lora, ref = _one_module_nf4(tmp_path, out_f, in_f)
    monkeypatch.setattr(mq, "CHUNK_ELEMENTS", (150 if in_f == 48 else 250) * in_f)
    merge_checkpoint(base, [lora], tmp_path / "f32", dtype="F32")
    dense = load_file(tmp_path / "f32" / "model.safetensors")["m.proj.weight"]
    expected = ref["w"] + ref["delta"]
    assert torch.allclose(dense.double(), expected, rtol=0, atol=4 * 2.0 ** -24 * expected.abs().max().item())
    report = merge_checkpoint(base, [lora], tmp_path / "q")
    got = load_file(tmp_path / "q" / "model.safetensors")
    q, state = F.quantize_4bit(dense, blocksize=64, quant_type="nf4", compress_statistics=True)
    ref_state = state.as_dict(packed=True)
    assert torch.equal(got["m.proj.weight"], q)
    assert torch.equal(got["m.proj.weight.nested_absmax"], ref_state["nested_absmax"])
    _assert_nested_nearest(got["m.proj.weight.absmax"], ref_state["absmax"], dense, 64, ref_state)
    (m,) = report.quantized["survival"]["modules"]
    written = _bnb_dequantized(tmp_path / "q", "m.proj").double()
    delta = dense.double() - ref["w"]
    assert math.isclose(m["delta_norm"], delta.norm().item(), rel_tol=1e-5)
    assert math.isclose(m["moved_norm"], (written - ref["w"]).norm().item(), rel_tol=1e-5)
    assert math.isclose(m["error_norm"], (written - ref["w"] - delta).norm().item(), rel_tol=1e-5)


def test_dense_merge_in_small_chunks_is_pefts_fp32_sum_bit_for_bit(models, tmp_path, monkeypatch):
    """CHUNK_ELEMENTS of 1: blocks of rows as small as the alignment allows (ROW_ALIGN, 96: more
    than these modules have).  Each weight is PEFT's merge in fp32, bit for bit: bitsandbytes'
    fp32 dequantization + (B @ A) · scaling, the product over the whole module (sgemm on a
    block of one row or a few rounds differently).  The factors are full fp32 values (the
    fixture's LoRA holds bf16 values, whose products are exact in any order)."""
    import adapterkit.ops.merge_quantized as mq

    monkeypatch.setattr(mq, "CHUNK_ELEMENTS", 1)
    root = models["root"]
    g = torch.Generator().manual_seed(17)
    shapes = {m: (_bnb_dequantized(root / "nf4", m).shape) for m in _modules(root)}
    tensors = {f"base_model.model.{m}.lora_{ab}.weight": torch.randn(shape, generator=g) * 0.1
               for m, (out, inp) in shapes.items() for ab, shape in (("A", (4, inp)), ("B", (out, 4)))}
    lora = _lora(tmp_path / "lora", tensors, r=4, lora_alpha=8, target_modules=TARGETS)
    merge_checkpoint(root / "nf4", [lora], tmp_path / "f32", dtype="F32")
    out = load_file(tmp_path / "f32" / "model.safetensors")
    for module in shapes:
        a, b = tensors[f"base_model.model.{module}.lora_A.weight"], tensors[f"base_model.model.{module}.lora_B.weight"]
        expected = _bnb_dequantized(root / "nf4", module) + (b @ a) * 2.0
        assert torch.equal(out[module + ".weight"], expected), module


def test_two_adapters_requantized_survival_counts_both(models, tmp_path):
    """Two adapters on every changed module (the same LoRA at 0.25 and 0.75): the re-quantized
    codes are bitsandbytes' quantization of the dense two-adapter merge, and the survival
    figures (second pass: W + both terms) are those of ΔW = 1.0 · B·A·scaling."""
    root = models["root"]
    kwargs = dict(weights=[0.25, 0.75], again=True)
    merge_checkpoint(root / "nf4", [root / "lora", root / "lora"], tmp_path / "f32", dtype="F32", **kwargs)
    report = merge_checkpoint(root / "nf4", [root / "lora", root / "lora"], tmp_path / "q", **kwargs)
    dense, got = load_file(tmp_path / "f32" / "model.safetensors"), load_file(tmp_path / "q" / "model.safetensors")
    survival = {m["module"]: m for m in report.quantized["survival"]["modules"]}
    assert set(survival) == set(_modules(root))
    for module in _modules(root):
        q, _ = F.quantize_4bit(dense[module + ".weight"], blocksize=64, quant_type="nf4", compress_statistics=True)
        assert torch.equal(got[module + ".weight"], q), module
        before = _bnb_dequantized(root / "nf4", module).double()
        written = _bnb_dequantized(tmp_path / "q", module).double()
        delta = _lora_delta(root, module)  # 0.25 + 0.75 of it
        m = survival[module]
        assert math.isclose(m["delta_norm"], delta.norm().item(), rel_tol=1e-5), module
        assert math.isclose(m["moved_norm"], (written - before).norm().item(), rel_tol=1e-5), module
        assert math.isclose(m["error_norm"], (written - before - delta).norm().item(), rel_tol=1e-4), module


def test_non_finite_rows_in_an_early_block_refuse_the_requantized_merge(models, tmp_path, monkeypatch):
    """Blocks of 24 rows; ΔW overflows in row 0 only (the first block), the later blocks are
    finite: refused, every non-finite value counted, nothing written."""
    import adapterkit.ops.merge_quantized as mq

    monkeypatch.setattr(mq, "CHUNK_ELEMENTS", 1)
    monkeypatch.setattr(mq, "ROW_ALIGN", 24)
    b = torch.zeros(64, 2)
    b[0] = 1e38  # row 0 of B·A: 2 · 1e38 · 4 = inf; every other row 0
    lora = _lora(tmp_path / "lora", {f"base_model.model.{Q}.lora_A.weight": torch.full((2, 64), 4.0),
                                     f"base_model.model.{Q}.lora_B.weight": b}, r=2, lora_alpha=2, target_modules=["q_proj"])
    with pytest.raises(AdapterkitError) as info:
        merge_checkpoint(models["root"] / "nf4", [lora], tmp_path / "out")
    assert info.value.code == "non-finite" and Q in str(info.value)
    assert info.value.actual == "64 non-finite of 4096"
    assert not (tmp_path / "out").exists()


def test_modules_to_save_replaces_a_quantized_weight(models, tmp_path):
    """A tensor stored whole (modules_to_save) for a packed module replaces its weight: the
    re-quantized codes are bitsandbytes' quantization of the stored tensor, not of the base's."""
    root = models["root"]
    g = torch.Generator().manual_seed(21)
    stored = torch.randn(64, 64, generator=g) * 0.05
    v = "model.layers.0.self_attn.v_proj"
    lora = _lora(tmp_path / "lora", {f"base_model.model.{Q}.weight": stored,
                                     f"base_model.model.{v}.lora_A.weight": torch.randn(2, 64, generator=g) * 0.1,
                                     f"base_model.model.{v}.lora_B.weight": torch.randn(32, 2, generator=g) * 0.1},
                 r=2, lora_alpha=2, target_modules=["v_proj"], modules_to_save=["q_proj"])
    merge_checkpoint(root / "nf4", [lora], tmp_path / "q")
    got = load_file(tmp_path / "q" / "model.safetensors")
    q, _ = F.quantize_4bit(stored, blocksize=64, quant_type="nf4", compress_statistics=True)
    assert torch.equal(got[Q + ".weight"], q)
    merge_checkpoint(root / "nf4", [lora], tmp_path / "f32", dtype="F32")
    assert torch.equal(load_file(tmp_path / "f32" / "model.safetensors")[Q + ".weight"], stored)


def test_unmerge_of_two_adapters_takes_the_last_merged_out_first(models, tmp_path):
    """PEFT unmerges the adapters merged last first; in fp32 the order shows where one ΔW is
    large (2^17, where fp32's spacing is 2^-6) and one small: (W − ΔW2) − ΔW1, not
    (W − ΔW1) − ΔW2.  Both ΔW are exact in fp32 (rank 1: one product per value)."""
    root = models["root"]
    g = torch.Generator().manual_seed(5)
    big = _lora(tmp_path / "big", {f"base_model.model.{Q}.lora_A.weight": torch.ones(1, 64),
                                   f"base_model.model.{Q}.lora_B.weight": torch.full((64, 1), 2.0 ** 17)},
                r=1, lora_alpha=1, target_modules=["q_proj"])
    a, b = torch.randn(1, 64, generator=g) * 0.3, torch.randn(64, 1, generator=g) * 0.3
    small = _lora(tmp_path / "small", {f"base_model.model.{Q}.lora_A.weight": a, f"base_model.model.{Q}.lora_B.weight": b},
                  r=1, lora_alpha=1, target_modules=["q_proj"])
    merge_checkpoint(root / "nf4", [big, small], tmp_path / "u", dtype="F32", unmerge=True, force=True)
    w = _bnb_dequantized(root / "nf4", Q)
    d1, d2 = torch.full((64, 64), 2.0 ** 17), b * a  # fp32 products, each exact as computed
    expected = (w - d2) - d1
    assert not torch.equal(expected, (w - d1) - d2)  # the order is visible here
    assert torch.equal(load_file(tmp_path / "u" / "model.safetensors")[Q + ".weight"], expected)
