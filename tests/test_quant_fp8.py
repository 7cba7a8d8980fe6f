"""adapterkit.quant.fp8 against the libraries that own the formats.

Expected values come from the libraries, never from adapterkit's helpers:

- compressed-tensors 0.20.1: ``FloatQuantizationCompressor.decompress`` (its ``dequantize``) and
  ``.compress`` (its ``quantize``), with scales from its ``calculate_qparams`` over the min and max
  llm-compressor's min-max observer takes per tile (``observe`` below restates that observer's
  ``flatten_for_calibration`` reduction, llm-compressor not being installed; for the tensor and
  group strategies compressed-tensors' own ``compute_dynamic_scales_and_zp`` checks it);
- transformers 5.23.0: ``Fp8Dequantize._dequantize_one``, ``_dequantize_fp8_weight`` (FP8Linear's
  block layout, edge blocks included) and ``Fp8Quantize._quantize_one``.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from adapterkit.errors import AdapterkitError
from adapterkit.quant.fp8 import from_config
from adapterkit.quant.scheme import quant_format

ct_forward = pytest.importorskip("compressed_tensors.quantization.lifecycle.forward")
from compressed_tensors.compressors.naive_quantized.base import FloatQuantizationCompressor  # noqa: E402
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme  # noqa: E402
from compressed_tensors.quantization.utils import (  # noqa: E402
    calculate_qparams,
    compute_dynamic_scales_and_zp,
    maybe_pad_tensor_for_block_quant,
)
from transformers.integrations.finegrained_fp8 import (  # noqa: E402
    Fp8Dequantize,
    Fp8Quantize,
    _dequantize_fp8_weight,
)

CPU = torch.device("cpu")
NAMES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float8_e4m3fn: "F8_E4M3",
         torch.float8_e5m2: "F8_E5M2"}
BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16,
        torch.float8_e4m3fn: torch.uint8}


def keys_of(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {key: (NAMES[t.dtype], tuple(t.shape)) for key, t in tensors.items()}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit (so -0.0 differs from +0.0 and equal NaNs are equal)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(BITS[a.dtype]), b.view(BITS[b.dtype]))


def sample_weight(out: int, inp: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """Values over several magnitudes, a zero 16x16 corner (a zero tile in every strategy but
    tensor), a zero row, and some -0.0."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g) * torch.exp2(torch.randint(-12, 4, (out, 1), generator=g).float())
    w[:16, :16] = 0.0
    w[out - 1] = 0.0
    w[5, 20:23] = -0.0
    return w.to(dtype)


# -- compressed-tensors ----------------------------------------------------------------------------

STRATEGIES = {
    "tensor": {"strategy": "tensor"},
    "channel": {"strategy": "channel"},
    "group": {"strategy": "group", "group_size": 32},
    "block": {"strategy": "block", "block_structure": [128, 128]},
    "block-small": {"strategy": "block", "block_structure": [48, 40]},
}
SHAPES = [(64, 96), (200, 130), (256, 256)]  # small, edge blocks / partial groups, whole 128-blocks


def weights_args(strategy: str, inp: int) -> dict:
    args = {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": False, **STRATEGIES[strategy]}
    if strategy == "group" and inp % 32:
        args["group_size"] = 26 if inp % 26 == 0 else 16
    return args


def ct_config(weights: dict, *, targets=("Linear",), ignore=("lm_head",), fmt="float-quantized", **extra) -> dict:
    return {"quant_method": "compressed-tensors", "format": fmt, "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": list(targets), "weights": weights,
                                          "input_activations": {"num_bits": 8, "type": "float", "strategy": "token",
                                                                "dynamic": True, "symmetric": True}}},
            "ignore": list(ignore), "kv_cache_scheme": None, "sparsity_config": {}, **extra}


def scheme_of(weights: dict) -> QuantizationScheme:
    return QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**weights),
                              input_activations=QuantizationArgs(num_bits=8, type="float", strategy="token",
                                                                 dynamic=True))


def observe(w: torch.Tensor, args: QuantizationArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """llm-compressor's min-max weight observer: its ``flatten_for_calibration`` shapes, min and
    max over each tile, then compressed-tensors' ``calculate_qparams`` (the scale math)."""
    if args.strategy == "tensor":
        flat = w.reshape(1, 1, -1)
    elif args.strategy == "channel":
        flat = w.unsqueeze(-2).unsqueeze(0)
    elif args.strategy == "group":
        flat = w.unflatten(-1, (-1, args.group_size)).unsqueeze(0)
    else:
        bh, bw = args.block_structure
        padded = maybe_pad_tensor_for_block_quant(w, args.block_structure)
        rows, cols = padded.shape
        flat = padded.reshape(rows // bh, bh, cols // bw, bw).transpose(1, 2).flatten(-2, -1).unsqueeze(0)
    low, high = torch.amin(flat, dim=(0, -1)), torch.amax(flat, dim=(0, -1))
    scale, zero = calculate_qparams(low, high, args)
    if args.strategy == "tensor":
        scale, zero = scale.reshape(1), zero.reshape(1)
    return scale, zero


def ct_quantize(w: torch.Tensor, weights: dict) -> dict[str, torch.Tensor]:
    """The library's compression of ``w`` (in the model's dtype): observer, then the compressor
    with the zero point the module holds until it is compressed."""
    scheme = scheme_of(weights)
    scale, zero = observe(w, scheme.weights)
    return FloatQuantizationCompressor.compress({"weight": w, "weight_scale": scale, "weight_zero_point": zero},
                                                scheme)


def ct_dequantize(members: dict[str, torch.Tensor], weights: dict) -> torch.Tensor:
    return FloatQuantizationCompressor.decompress(dict(members), scheme_of(weights))["weight"]


def ct_checkpoint(out: int, inp: int, strategy: str, dtype, seed: int = 0, module: str = "model.layers.0.mlp.up_proj"):
    weights = weights_args(strategy, inp)
    members = ct_quantize(sample_weight(out, inp, seed, dtype), weights)
    tensors = {f"{module}.weight": members["weight"], f"{module}.weight_scale": members["weight_scale"],
               f"{module}.input_scale": torch.tensor([0.5], dtype=dtype),
               "lm_head.weight": torch.zeros(8, inp, dtype=dtype)}
    return ct_config(weights), tensors, weights


CASES = [(shape, strategy) for shape in SHAPES[:2] for strategy in STRATEGIES] + [(SHAPES[2], "block")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=NAMES.get)
@pytest.mark.parametrize(("shape", "strategy"), CASES, ids=[f"{s[0]}x{s[1]}-{t}" for s, t in CASES])
def test_compressed_tensors_dequantize_quantize_match_the_library(shape, strategy, dtype):
    out, inp = shape
    config, tensors, weights = ct_checkpoint(out, inp, strategy, dtype, seed=out + inp)
    fmt = quant_format({"quantization_config": config})
    found = fmt.find(keys_of(tensors))
    assert list(found) == ["model.layers.0.mlp.up_proj"]  # lm_head (ignored, dense) and input_scale are plain
    packed = found["model.layers.0.mlp.up_proj"]
    assert packed.shape == (out, inp) and packed.info["strategy"] == STRATEGIES[strategy]["strategy"]
    members = {role: tensors[key] for role, key in packed.members.items()}
    assert set(members) == {"weight", "weight_scale"}

    # dequantize: compressed-tensors computes in the scale's dtype; ours is that, upcast to fp32
    ours = fmt.dequantize(packed, members, CPU)
    theirs = ct_dequantize(members, weights)
    assert theirs.dtype == dtype and ours.dtype == torch.float32
    assert same_bits(ours, theirs.to(torch.float32))

    # quantize with fresh scales: the library on the same weight in the model's (= scale's) dtype
    new = sample_weight(out, inp, seed=7 * out + inp) * 3.0
    mine = fmt.quantize(packed, new, members, CPU)
    library = ct_quantize(new.to(dtype), weights)
    assert set(mine) == {"weight", "weight_scale"}
    assert same_bits(mine["weight"], library["weight"]) and same_bits(mine["weight_scale"], library["weight_scale"])
    assert fmt.planned(packed, keys_of(tensors)) == {k: keys_of(tensors)[k] for k in packed.members.values()}

    # quantize(dequantize(x)): ours gives what the library gives on its own dequantization
    again = fmt.quantize(packed, ours, members, CPU)
    library_again = ct_quantize(theirs, weights)
    assert same_bits(again["weight"], library_again["weight"])
    assert same_bits(again["weight_scale"], library_again["weight_scale"])
    # where the library's own round trip gives the checkpoint's bytes back, ours does too (and only there)
    assert same_bits(again["weight"], members["weight"]) == same_bits(library_again["weight"], members["weight"])


def test_observer_reduction_is_compressed_tensors_own_where_it_has_one():
    """``observe`` restates llm-compressor's reduction; for the strategies compressed-tensors
    reduces itself (dynamic tensor / group scales) the two agree bit for bit."""
    w = sample_weight(64, 96, seed=3, dtype=torch.bfloat16)
    for strategy in ("tensor", "group"):
        args = QuantizationArgs(**weights_args(strategy, 96))
        mine, _ = observe(w, args)
        dynamic = QuantizationArgs(**{**weights_args(strategy, 96), "dynamic": True})
        theirs, _ = compute_dynamic_scales_and_zp(w, dynamic, module=torch.nn.Module())
        assert same_bits(mine.reshape(theirs.shape), theirs)


def test_compressed_tensors_zero_tiles_negative_zero_and_saturation():
    out, inp = 200, 130
    config, tensors, weights = ct_checkpoint(out, inp, "block", torch.bfloat16)
    fmt = quant_format({"quantization_config": config})
    packed = fmt.find(keys_of(tensors))["model.layers.0.mlp.up_proj"]
    members = {role: tensors[key] for role, key in packed.members.items()}
    w = torch.zeros(out, inp)
    w[130:, 128:] = torch.linspace(-3.0, 5.0, 70 * 2).reshape(70, 2)  # an edge block, partial both ways
    w[0, 0] = -0.0
    w[129, 5] = -1e-30  # a tiny negative: its block's absmax, so it maps to -448
    mine = fmt.quantize(packed, w, members, CPU)
    library = ct_quantize(w.to(torch.bfloat16), weights)
    assert same_bits(mine["weight"], library["weight"]) and same_bits(mine["weight_scale"], library["weight_scale"])
    # zero blocks get the scale dtype's eps, as calculate_qparams sets it
    assert mine["weight_scale"][0, 0].item() == torch.finfo(torch.bfloat16).eps
    # -0.0 is written as +0.0 (the library adds its zero point of zeros)
    assert mine["weight"].view(torch.uint8)[0, 0].item() == 0x00
    assert mine["weight"].to(torch.float32)[129, 5].item() == -448.0
    # the largest value of a tile maps to 448; nothing exceeds the range, nothing is NaN
    q = mine["weight"].to(torch.float32)
    assert q.abs().max().item() == 448.0 and not q.isnan().any()
    # an overflowing tile (every value at the absmax, which bf16 division rounds above 448) saturates
    w2 = torch.full((out, inp), 1.0) * torch.tensor([3.0e-3, 7.1e-3, 5.3e-2, 9.9e2] * 50).reshape(out, 1)
    mine2 = fmt.quantize(packed, w2, members, CPU)
    library2 = ct_quantize(w2.to(torch.bfloat16), weights)
    assert same_bits(mine2["weight"], library2["weight"])
    assert mine2["weight"].to(torch.float32).abs().max().item() <= 448.0


def test_compressed_tensors_zero_point_member():
    config, tensors, weights = ct_checkpoint(64, 96, "channel", torch.bfloat16)
    zero_key = "model.layers.0.mlp.up_proj.weight_zero_point"
    tensors[zero_key] = torch.zeros(64, 1, dtype=torch.float8_e4m3fn)
    fmt = quant_format({"quantization_config": config})
    packed = fmt.find(keys_of(tensors))["model.layers.0.mlp.up_proj"]
    assert packed.members["weight_zero_point"] == zero_key
    members = {role: tensors[key] for role, key in packed.members.items()}
    theirs = ct_dequantize(members, weights)
    assert same_bits(fmt.dequantize(packed, members, CPU), theirs.to(torch.float32))
    written = fmt.quantize(packed, theirs.float(), members, CPU)
    assert same_bits(written["weight_zero_point"], members["weight_zero_point"])
    members["weight_zero_point"] = torch.full((64, 1), 2.0).to(torch.float8_e4m3fn)
    with pytest.raises(AdapterkitError) as err:
        fmt.dequantize(packed, members, CPU)
    assert err.value.code == "quant-invalid" and err.value.key == "model.layers.0.mlp.up_proj"
    assert "weight_zero_point" in str(err.value)


def test_compressed_tensors_groups_by_target():
    """Exact names, then re: patterns, then class names, as compressed-tensors' match_targets."""
    block = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "block", "block_structure": [32, 32]}
    channel = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "channel"}
    config = ct_config(channel)
    config["config_groups"]["group_1"] = {"targets": ["re:.*mlp.*"], "weights": block}
    config["config_groups"]["group_2"] = {"targets": ["model.layers.0.mlp.down_proj"], "weights": channel}
    tensors = {}
    for name in ("self_attn.q_proj", "mlp.up_proj", "mlp.down_proj"):
        module = f"model.layers.0.{name}"
        grid = block if name == "mlp.up_proj" else channel
        tensors.update({f"{module}.{k}": v for k, v in ct_quantize(sample_weight(64, 64, 1), grid).items()})
    found = quant_format({"quantization_config": config}).find(keys_of(tensors))
    assert {m: p.info["strategy"] for m, p in found.items()} == {
        "model.layers.0.self_attn.q_proj": "channel", "model.layers.0.mlp.up_proj": "block",
        "model.layers.0.mlp.down_proj": "channel"}
    assert found["model.layers.0.mlp.up_proj"].info["group"] == "group_1"


# -- transformers' FineGrainedFP8 -----------------------------------------------------------------


def hf_quantizer(block) -> SimpleNamespace:
    return SimpleNamespace(quantization_config=SimpleNamespace(weight_block_size=block, scale_fmt="float"))


def hf_quantize(w: torch.Tensor, block) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' Fp8Quantize; for a block that does not divide the weight (which it leaves
    dense) it runs on the zero-padded weight, whose edge tiles hold the same values."""
    out, inp = w.shape
    if block is not None:
        w = torch.nn.functional.pad(w, (0, (-inp) % block[1], 0, (-out) % block[0]))
    done = Fp8Quantize(hf_quantizer(block))._quantize_one("m.weight", w)
    assert done["m.weight"].dtype == torch.float8_e4m3fn
    return done["m.weight"][:out, :inp].contiguous(), done["m.weight_scale_inv"]


def hf_dequantize(q: torch.Tensor, inverse: torch.Tensor, block) -> torch.Tensor:
    out, inp = q.shape
    if block is None or (out % block[0] == 0 and inp % block[1] == 0):
        return Fp8Dequantize(hf_quantizer(block))._dequantize_one(q, inverse, output_dtype=torch.float32)
    return _dequantize_fp8_weight(q, inverse, list(block), torch.float32)  # FP8Linear's ceil-block layout


def fp8_config(block=(128, 128), **extra) -> dict:
    config = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
              "modules_to_not_convert": ["lm_head"], **extra}
    if block != "default":
        config["weight_block_size"] = list(block) if block is not None else None
    return config


@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16], ids=NAMES.get)
@pytest.mark.parametrize(("shape", "block"), [((256, 384), (128, 128)), ((200, 130), (128, 128)),
                                              ((576, 300), (128, 128)), ((64, 96), (32, 48)),
                                              ((64, 96), None), ((200, 130), None)])
def test_finegrained_fp8_matches_transformers(shape, block, scale_dtype):
    out, inp = shape
    module = "model.layers.3.self_attn.kv_a_proj_with_mqa"
    q, inverse = hf_quantize(sample_weight(out, inp, seed=out * inp), block)
    if block is None:
        inverse = inverse.reshape(())  # FP8Linear's per-tensor scale is a scalar
    tensors = {f"{module}.weight": q, f"{module}.weight_scale_inv": inverse.to(scale_dtype),
               "lm_head.weight": torch.zeros(4, inp, dtype=torch.bfloat16)}
    fmt = quant_format({"quantization_config": fp8_config(block)})
    found = fmt.find(keys_of(tensors))
    assert list(found) == [module]
    packed = found[module]
    members = {role: tensors[key] for role, key in packed.members.items()}
    assert same_bits(fmt.dequantize(packed, members, CPU), hf_dequantize(q, members["weight_scale_inv"], block))

    new = sample_weight(out, inp, seed=11) * 0.25
    mine = fmt.quantize(packed, new, members, CPU)
    theirs_q, theirs_inv = hf_quantize(new, block)
    assert same_bits(mine["weight"], theirs_q)
    assert same_bits(mine["weight_scale_inv"], theirs_inv.reshape(mine["weight_scale_inv"].shape))
    assert mine["weight_scale_inv"].dtype == torch.float32
    planned = fmt.planned(packed, keys_of(tensors))
    assert planned[f"{module}.weight_scale_inv"] == ("F32", tuple(inverse.shape))
    # what was written reads back as transformers reads it
    assert same_bits(fmt.dequantize(packed, mine, CPU), hf_dequantize(mine["weight"], mine["weight_scale_inv"], block))

    # round trip: ours gives what transformers gives on its own dequantization
    if scale_dtype == torch.float32:
        dense = hf_dequantize(q, inverse, block)
        again = fmt.quantize(packed, fmt.dequantize(packed, members, CPU), members, CPU)
        library_q, library_inv = hf_quantize(dense, block)
        assert same_bits(again["weight"], library_q)
        assert same_bits(again["weight_scale_inv"], library_inv.reshape(again["weight_scale_inv"].shape))


def test_finegrained_fp8_zero_blocks_saturation_and_default_block():
    fmt = quant_format({"quantization_config": fp8_config("default")})
    assert fmt.describe()["block"] == [128, 128]
    q, inverse = hf_quantize(sample_weight(200, 130, seed=5), (128, 128))
    tensors = {"m.weight": q, "m.weight_scale_inv": inverse}
    packed = fmt.find(keys_of(tensors))["m"]
    w = torch.zeros(200, 130)
    w[150, 129] = -2.5
    w[3, 3] = -0.0
    w[130:, :128] = 7.77e-3  # every value at the absmax: w * (448 / absmax) may round above 448
    # a value whose w * scale is exactly a float8 tie (1.0625 -> 1.0) while w / weight_scale_inv is not
    w[10, 128], w[11, 128] = 4.566279888153076, 0.010829626582562923
    mine = fmt.quantize(packed, w, {"weight": q, "weight_scale_inv": inverse}, CPU)
    theirs_q, theirs_inv = hf_quantize(w, (128, 128))
    assert same_bits(mine["weight"], theirs_q) and same_bits(mine["weight_scale_inv"], theirs_inv)
    assert mine["weight_scale_inv"][0, 0].item() == 1.0  # a zero block keeps scale 1
    assert mine["weight"][11, 128].item() == 1.0  # transformers multiplies by 448 / amax
    assert mine["weight"].view(torch.uint8)[3, 3].item() == 0x80  # transformers keeps -0.0
    assert mine["weight"].to(torch.float32).abs().max().item() == 448.0


# -- fbgemm ---------------------------------------------------------------------------------------


def test_fbgemm_fp8_reads_rows_and_refuses_writing():
    w = sample_weight(64, 96, seed=9)
    scale = (w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 448.0).float()
    q = (w / scale).clamp(-448, 448).to(torch.float8_e4m3fn)
    tensors = {"m.weight": q, "m.weight_scale": scale}
    fmt = quant_format({"quantization_config": {"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0,
                                                "modules_to_not_convert": ["lm_head"]}})
    packed = fmt.find(keys_of(tensors))["m"]
    members = {"weight": q, "weight_scale": scale}
    # transformers' dequantization of row-scaled float8 weights: the fp32 product
    assert same_bits(fmt.dequantize(packed, members, CPU), _dequantize_fp8_weight(q, scale, None, torch.float32))
    assert fmt.requantize is None
    with pytest.raises(AdapterkitError) as err:
        fmt.quantize(packed, w, members, CPU)
    assert err.value.code == "quant-unsupported" and "quant_method" in str(err.value)
    with pytest.raises(AdapterkitError, match="weight_scale"):
        fmt.find(keys_of({"m.weight": q, "m.weight_scale": scale.to(torch.bfloat16)}))


# -- refusals ---------------------------------------------------------------------------------------

MODULE = "model.layers.0.mlp.up_proj"


def refusal(config: dict, tensors: dict | None = None) -> AdapterkitError:
    with pytest.raises(AdapterkitError) as err:
        fmt = quant_format({"quantization_config": config})
        fmt.find(keys_of(tensors or {}))
    return err.value


def fp8(shape) -> torch.Tensor:
    return torch.zeros(shape).to(torch.float8_e4m3fn)


BLOCK = weights_args("block", 130)


@pytest.mark.parametrize(("tensors", "field", "phrase"), [
    ({f"{MODULE}.weight": fp8((200, 130)), f"{MODULE}.weight_scale": torch.ones(2, 1)},
     "config_groups.group_0.weights.block_structure", "has shape (2, 1)"),
    ({f"{MODULE}.weight": fp8((200, 130)), f"{MODULE}.weight_scale": torch.ones(1, 2)},
     "config_groups.group_0.weights.block_structure", "(2, 2)"),
    ({f"{MODULE}.weight": fp8((200, 130))}, "weight_scale", "absent"),
    ({f"{MODULE}.weight": torch.zeros(200, 130), f"{MODULE}.weight_scale": torch.ones(2, 2)},
     "weight_scale", "no float8 weight"),
    ({"lm_head.weight": fp8((200, 130)), "lm_head.weight_scale": torch.ones(2, 2)}, "ignore", "leaves"),
    ({f"{MODULE}.weight": fp8((200, 130)), f"{MODULE}.weight_scale": torch.ones(2, 2, dtype=torch.float8_e4m3fn)},
     "weight_scale", "F8_E4M3"),
    ({f"{MODULE}.weight": fp8((200, 130)), f"{MODULE}.weight_scale": torch.ones(2, 2),
      f"{MODULE}.weight_zero_point": torch.zeros(3, 2).to(torch.float8_e4m3fn)}, "weight_zero_point", "does not fit"),
])
def test_compressed_tensors_tensors_that_disagree(tensors, field, phrase):
    err = refusal(ct_config(BLOCK), tensors)
    module = next(iter(tensors)).rsplit(".", 1)[0]
    assert err.code == "quant-invalid" and err.key == module
    assert f"(field {field})" in str(err) and phrase in str(err)


def test_channel_and_group_scale_shapes():
    channel = ct_config(weights_args("channel", 96))
    err = refusal(channel, {f"{MODULE}.weight": fp8((64, 96)), f"{MODULE}.weight_scale": torch.ones(64)})
    assert err.code == "quant-invalid" and "config_groups.group_0.weights.strategy" in str(err)
    group = ct_config({**weights_args("group", 96), "group_size": 64})
    err = refusal(group, {f"{MODULE}.weight": fp8((64, 96)), f"{MODULE}.weight_scale": torch.ones(64, 2)})
    assert err.code == "quant-invalid" and "not a multiple of group_size 64" in str(err)
    assert "config_groups.group_0.weights.group_size" in str(err)
    ok = quant_format({"quantization_config": ct_config(weights_args("group", 96))})
    assert ok.find(keys_of({f"{MODULE}.weight": fp8((64, 96)), f"{MODULE}.weight_scale": torch.ones(64, 3)}))


def test_stray_float8_tensors_and_e5m2_are_refused():
    err = refusal(ct_config(BLOCK), {"model.layers.0.mlp.experts.gate_up_proj": fp8((4, 64, 32))})
    assert err.code == "quant-invalid" and err.key == "model.layers.0.mlp.experts.gate_up_proj"
    e5 = torch.zeros(200, 130).to(torch.float8_e5m2)
    err = refusal(ct_config(BLOCK), {f"{MODULE}.weight": e5, f"{MODULE}.weight_scale": torch.ones(2, 2)})
    assert err.code == "quant-unsupported" and err.key == MODULE and "F8_E5M2" in str(err)


def test_a_module_no_group_targets():
    config = ct_config(BLOCK, targets=["re:.*self_attn.*"])
    err = refusal(config, {f"{MODULE}.weight": fp8((200, 130)), f"{MODULE}.weight_scale": torch.ones(2, 2)})
    assert err.code == "quant-invalid" and err.key == MODULE and "config_groups.*.targets" in str(err)
    config = ct_config(BLOCK)
    config["config_groups"]["group_1"] = {"targets": ["Embedding"], "weights": weights_args("channel", 130)}
    err = refusal(config, {f"{MODULE}.weight": fp8((200, 130)), f"{MODULE}.weight_scale": torch.ones(2, 2)})
    assert err.code == "quant-unsupported" and "cannot be told" in str(err)


@pytest.mark.parametrize(("change", "key", "phrase"), [
    ({"format": "pack-quantized"}, "quantization_config.format", "pack-quantized"),
    ({"format": "naive-quantized-x"}, "quantization_config.format", "naive-quantized-x"),
    ({"format": "nvfp4-pack-quantized"}, "quantization_config.format", "nvfp4"),
    ({"format": "sparse-24-bitmask"}, "quantization_config.format", "sparse-24"),
    ({"format": "dense"}, "quantization_config.format", "dense"),
    ({"weights": {"num_bits": 4}}, "quantization_config.config_groups.group_0.weights.num_bits", "4-bit"),
    ({"weights": {"type": "int"}}, "quantization_config.config_groups.group_0.weights.type", "int weights"),
    ({"weights": {"symmetric": False}}, "quantization_config.config_groups.group_0.weights.symmetric", "asymmetric"),
    ({"weights": {"dynamic": True}}, "quantization_config.config_groups.group_0.weights.dynamic", "dynamic"),
    ({"weights": {"strategy": "tensor_group"}}, "quantization_config.config_groups.group_0.weights.strategy",
     "tensor_group"),
    ({"weights": {"scale_dtype": "torch.float8_e4m3fn"}},
     "quantization_config.config_groups.group_0.weights.scale_dtype", "scale_dtype"),
    ({"weights": {"block_structure": [128]}},
     "quantization_config.config_groups.group_0.weights.block_structure", "block_structure"),
    ({"weights": {"global_scale": 1}}, "quantization_config.config_groups.group_0.weights.global_scale", "unknown"),
    ({"transform_config": {"config_groups": {"u": {}}}}, "quantization_config.transform_config", "rotated"),
    ({"quantization_status": "frozen"}, "quantization_config.quantization_status", "frozen"),
])
def test_compressed_tensors_settings_refused_by_name(change, key, phrase):
    weights = dict(BLOCK)
    weights.update(change.pop("weights", {}))
    err = refusal(ct_config(weights, **change))
    assert err.code == "quant-unsupported" and err.key == key and phrase in str(err)


def test_mixed_precision_groups():
    config = ct_config(BLOCK, fmt="mixed-precision")
    config["config_groups"]["group_0"]["format"] = "float-quantized"
    config["config_groups"]["group_1"] = {"targets": ["re:.*experts.*"], "format": "pack-quantized",
                                          "weights": {"num_bits": 4, "type": "int", "strategy": "group",
                                                      "group_size": 32}}
    err = refusal(config)
    assert err.code == "quant-unsupported" and err.key == "quantization_config.config_groups.group_1.format"
    del config["config_groups"]["group_1"]
    config["config_groups"]["group_1"] = {"targets": ["re:.*experts.*"], "weights": weights_args("channel", 96),
                                          "format": "float-quantized"}
    assert quant_format({"quantization_config": config}).describe()["groups"]["group_1"]["strategy"] == "channel"


@pytest.mark.parametrize(("config", "key"), [
    (fp8_config(scale_fmt="ue8m0"), "quantization_config.scale_fmt"),
    (fp8_config(expert_dtype="fp4"), "quantization_config.expert_dtype"),
    (fp8_config(fmt="e5m2"), "quantization_config.fmt"),
    (fp8_config(modules_to_convert=["embed_tokens"]), "quantization_config.modules_to_convert"),
    (fp8_config(block=(128,)), "quantization_config.weight_block_size"),
    (fp8_config(activation_scheme="per-token"), "quantization_config.activation_scheme"),
])
def test_finegrained_settings_refused_by_name(config, key):
    err = refusal(config)
    assert err.code == "quant-unsupported" and err.key == key


def test_finegrained_tensors_that_disagree():
    err = refusal(fp8_config(), {"m.weight": fp8((576, 300)), "m.weight_scale_inv": torch.ones(4, 3)})
    assert err.code == "quant-invalid" and err.key == "m" and "(field weight_block_size)" in str(err)
    assert "(5, 3)" in str(err)
    err = refusal(fp8_config(), {"lm_head.weight": fp8((256, 256)), "lm_head.weight_scale_inv": torch.ones(2, 2)})
    assert err.code == "quant-invalid" and "(field modules_to_not_convert)" in str(err)
    err = refusal(fp8_config(), {"m.weight": fp8((256, 256)), "m.weight_scale": torch.ones(2, 2)})
    assert err.code == "quant-invalid" and "weight_scale_inv" in str(err)


def test_dequantize_refuses_tensors_that_are_not_what_find_read():
    config, tensors, _weights = ct_checkpoint(64, 96, "channel", torch.bfloat16)
    fmt = quant_format({"quantization_config": config})
    packed = fmt.find(keys_of(tensors))[MODULE]
    bad = {"weight": torch.zeros(64, 96, dtype=torch.bfloat16), "weight_scale": tensors[f"{MODULE}.weight_scale"]}
    with pytest.raises(AdapterkitError) as err:
        fmt.dequantize(packed, bad, CPU)
    assert err.value.code == "quant-invalid"
    bad = {"weight": tensors[f"{MODULE}.weight"], "weight_scale": torch.ones(1, 64, dtype=torch.bfloat16)}
    with pytest.raises(AdapterkitError):
        fmt.dequantize(packed, bad, CPU)


def test_nested_config_and_describe():
    config, _tensors, _weights = ct_checkpoint(64, 96, "block", torch.bfloat16)
    nested = {"quant_method": "compressed-tensors", "quantization_config": config}
    fmt = from_config(nested)
    assert fmt.describe() == {"format": "compressed-tensors-fp8", "ignore": ["lm_head"], "targets": ["Linear"],
                              "strategy": "block", "block": [128, 128], "input_activations": "dynamic"}
    assert math.isclose(448.0, torch.finfo(torch.float8_e4m3fn).max)


@pytest.mark.parametrize("shape", [(), (1, 1), (1,)], ids=str)
def test_per_tensor_scale_shapes_are_kept(shape):
    config, tensors, weights = ct_checkpoint(64, 96, "tensor", torch.bfloat16)
    key = f"{MODULE}.weight_scale"
    tensors[key] = tensors[key].reshape(shape)
    fmt = quant_format({"quantization_config": config})
    packed = fmt.find(keys_of(tensors))[MODULE]
    members = {role: tensors[k] for role, k in packed.members.items()}
    theirs = ct_dequantize(members, weights)
    assert same_bits(fmt.dequantize(packed, members, CPU), theirs.float())
    written = fmt.quantize(packed, theirs.float(), members, CPU)
    assert written["weight_scale"].shape == shape


# -- fuzz: every layout of one module either reads or is refused with an adapterkit error ------------

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

DTYPES = [torch.float8_e4m3fn, torch.float8_e5m2, torch.bfloat16, torch.float32, None]
CONFIGS = [ct_config(weights_args(s, 96)) for s in STRATEGIES] + [fp8_config(), fp8_config(None), fp8_config((8, 16)),
                                                                    {"quant_method": "fbgemm_fp8"}]


def sized(dtype, shape, data) -> torch.Tensor:
    values = torch.tensor(data.draw(st.lists(st.floats(-1e4, 1e4, width=32), min_size=math.prod(shape),
                                             max_size=math.prod(shape))), dtype=torch.float32).reshape(shape)
    return values.to(dtype)


def layout_scale_shape(config: dict, out: int, inp: int) -> tuple[int, ...]:
    """The scale shape the libraries give an (out, in) weight under ``config`` (written out here)."""
    if config["quant_method"] == "fbgemm_fp8":
        return (out, 1)
    if config["quant_method"] == "fp8":
        block = config["weight_block_size"]
        return () if block is None else (-(-out // block[0]), -(-inp // block[1]))
    weights = config["config_groups"]["group_0"]["weights"]
    strategy = weights["strategy"]
    if strategy == "tensor":
        return (1,)
    if strategy == "channel":
        return (out, 1)
    if strategy == "group":
        return (out, inp // weights["group_size"])
    bh, bw = weights["block_structure"]
    return (-(-out // bh), -(-inp // bw))


REACHED: list[str] = []


@given(data=st.data())
def test_fuzz_layouts(data):
    config = data.draw(st.sampled_from(CONFIGS))
    fmt = quant_format({"quantization_config": config})
    if data.draw(st.booleans()):  # a layout that fits the config (sometimes): the read and write paths run
        wshape = (data.draw(st.integers(1, 40)), 32 * data.draw(st.integers(1, 3)))
        sshape = layout_scale_shape(config, *wshape)
        wdtype, sdtype = torch.float8_e4m3fn, data.draw(st.sampled_from([torch.float32, torch.bfloat16]))
    else:
        wshape = tuple(data.draw(st.lists(st.integers(0, 20), min_size=1, max_size=3)))
        sshape = tuple(data.draw(st.lists(st.integers(0, 4), min_size=0, max_size=3)))
        wdtype, sdtype = data.draw(st.sampled_from(DTYPES)), data.draw(st.sampled_from(DTYPES))
    tensors = {}
    if wdtype is not None:
        tensors["m.weight"] = sized(wdtype, wshape, data)
    if sdtype is not None:
        tensors[f"m.{fmt.scale_role}"] = sized(sdtype, sshape, data).abs()
    if data.draw(st.booleans()):
        tensors["m.weight_zero_point"] = sized(torch.float8_e4m3fn, sshape, data)
    try:
        found = fmt.find(keys_of(tensors))
    except AdapterkitError:
        return
    for packed in found.values():
        members = {role: tensors[key] for role, key in packed.members.items()}
        try:
            dense = fmt.dequantize(packed, members, CPU)
        except AdapterkitError:
            continue
        REACHED.append(fmt.name)
        assert dense.shape == packed.shape and dense.dtype == torch.float32
        if fmt.requantize:
            written = fmt.quantize(packed, dense.nan_to_num(), members, CPU)
            planned = fmt.planned(packed, keys_of(tensors))
            assert keys_of({packed.members[role]: t for role, t in written.items()}) == planned


def test_fuzz_reached_the_read_and_write_paths():
    """The fuzz above is not all refusals: it read and wrote modules of several formats."""
    if not REACHED:  # run alone (-k)
        test_fuzz_layouts()
    assert len(set(REACHED)) >= 2, REACHED


def test_scales_of_another_observer_are_read_not_remade():
    config, tensors, weights = ct_checkpoint(64, 96, "channel", torch.bfloat16)
    config["config_groups"]["group_0"]["weights"]["observer"] = "mse"
    fmt = quant_format({"quantization_config": config})
    assert fmt.requantize is None
    packed = fmt.find(keys_of(tensors))[MODULE]
    members = {role: tensors[k] for role, k in packed.members.items()}
    assert same_bits(fmt.dequantize(packed, members, CPU), ct_dequantize(members, weights).float())
    with pytest.raises(AdapterkitError) as err:
        fmt.quantize(packed, torch.zeros(64, 96), members, CPU)
    assert err.value.code == "quant-unsupported" and "weights.observer" in str(err.value)


# -- end to end: merge onto an FP8 base (needs adapterkit.ops.merge_quantized, the lead's merge) -----

TARGETS = ["q_proj", "v_proj", "down_proj"]


def _fp8_base(root, method: str):
    """A tiny bf16 llama, its linear weights quantized as the owning library writes them, and a
    LoRA (random B) made with PEFT on the dense model."""
    import json

    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, dtype="bfloat16")
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(root / "dense")
    dense = load_file(root / "dense" / "model.safetensors")
    weights = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "block", "block_structure": [48, 48]}
    quantized = {}
    for key, value in dense.items():
        if key.endswith("_proj.weight"):
            module = key[: -len(".weight")]
            if method == "compressed-tensors":
                members = ct_quantize(value, weights)
                quantized[key], quantized[module + ".weight_scale"] = members["weight"], members["weight_scale"]
            else:
                quantized[key], quantized[module + ".weight_scale_inv"] = hf_quantize(value, (32, 32))
        else:
            quantized[key] = value
    (root / "fp8").mkdir()
    save_file(quantized, root / "fp8" / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((root / "dense" / "config.json").read_text())
    config["quantization_config"] = (ct_config(weights) if method == "compressed-tensors"
                                     else fp8_config((32, 32)))
    (root / "fp8" / "config.json").write_text(json.dumps(config))
    torch.manual_seed(7)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False))
    peft_model.save_pretrained(root / "lora")
    return weights


def _delta(root, module: str) -> torch.Tensor:
    import json

    from safetensors.torch import load_file

    tensors = load_file(root / "lora" / "adapter_model.safetensors")
    config = json.loads((root / "lora" / "adapter_config.json").read_text())
    a = tensors[f"base_model.model.{module}.lora_A.weight"].double()
    b = tensors[f"base_model.model.{module}.lora_B.weight"].double()
    return config["lora_alpha"] / config["r"] * (b @ a)


@pytest.mark.parametrize("method", ["compressed-tensors", "fp8"])
def test_merge_onto_an_fp8_base(method, tmp_path):
    pytest.importorskip("adapterkit.ops.merge_quantized")
    from safetensors.torch import load_file

    from adapterkit.ops.merging import merge_checkpoint

    weights = _fp8_base(tmp_path, method)
    scale = "weight_scale" if method == "compressed-tensors" else "weight_scale_inv"
    base = load_file(tmp_path / "fp8" / "model.safetensors")
    merge_checkpoint(tmp_path / "fp8", [tmp_path / "lora"], tmp_path / "f32", dtype="F32")
    report = merge_checkpoint(tmp_path / "fp8", [tmp_path / "lora"], tmp_path / "requantized")
    dense, got = load_file(tmp_path / "f32" / "model.safetensors"), load_file(tmp_path / "requantized" / "model.safetensors")
    assert set(got) == set(base) and not any(k.endswith(scale) for k in dense)
    changed = [f"model.layers.{i}.{'mlp' if t == 'down_proj' else 'self_attn'}.{t}" for i in range(2) for t in TARGETS]
    for module in changed:
        members = {"weight": base[module + ".weight"], scale: base[module + "." + scale]}
        if method == "compressed-tensors":
            library = ct_dequantize(members, weights).float()
        else:
            library = hf_dequantize(members["weight"], members[scale], (32, 32))
        expected = library.double() + _delta(tmp_path, module)
        assert torch.allclose(dense[module + ".weight"].double(), expected, rtol=0,
                              atol=4 * 2.0 ** -24 * expected.abs().max().item()), module
        # the requantized output is the library's quantizer on the merged weight
        if method == "compressed-tensors":
            theirs = ct_quantize(dense[module + ".weight"].to(torch.bfloat16), weights)
        else:
            q, inverse = hf_quantize(dense[module + ".weight"], (32, 32))
            theirs = {"weight": q, scale: inverse}
        assert same_bits(got[module + ".weight"], theirs["weight"]), module
        assert same_bits(got[module + "." + scale], theirs[scale]), module
    for key in base:
        if not any(key.startswith(m + ".") for m in changed):
            assert torch.equal(got[key].view(torch.uint8), base[key].view(torch.uint8)), key
    assert report.quantized["format"] in ("compressed-tensors-fp8", "finegrained-fp8")
