"""Merge, unmerge and extract end to end on GPTQ and AWQ checkpoints (``ops.merge_quantized``
over ``quant.gptq`` / ``quant.awq``), against the libraries and first principles.

The checkpoints are tiny Llama-shaped models (2 layers, hidden 128, MLP 256, biases on the
attention projections) whose linear layers GPTQModel 7.7.0 (``TorchLinear.pack_block``) and
AutoAWQ 0.2.9 (``WQLinear_GEMM.from_linear``) packed themselves, and whose
``quantization_config`` is what those libraries write into ``config.json``
(``QuantizeConfig.to_dict()``, ``AwqConfig.to_transformers_dict()``); embeddings, norms,
biases and ``lm_head`` are plain fp16.  The libraries run in one child process for the whole
module (``tests/quant_oracle.py``'s loader and ops, kept alive and asked again after the
merges).  Expected values:

- dequantization: the library's own (``TorchLinear.dequantize_weight``, ``dequantize_gemm``);
- ΔW: computed here in fp64 from the adapter's tensors (scale · B · A);
- re-quantized codes: ``clamp(round_half_even(w / scale + zero), 0, 2**bits - 1)`` in numpy
  over the grid the codes were packed with (the fp16 scales as stored, the zero points given
  to the packer, ``g_idx`` per column for GPTQ, consecutive row groups for AWQ), packed into
  words by the documented bit layouts (checked first against the library's packing of the
  base);
- survival figures: norms recomputed from the library's dequantization of what was written.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import adapterkit
from adapterkit.adapter import Adapter
from adapterkit.cli import main as cli
from adapterkit.errors import AdapterkitError
from adapterkit.kinds.lora import LoraConfig
from adapterkit.ops.extract import extract
from adapterkit.ops.merging import merge_checkpoint

HERE = Path(__file__).parent
ORACLE_DIR = Path(os.environ.get("ADAPTERKIT_QUANT_ORACLES", Path(sys.prefix) / "oracles" / "quant"))

LAYERS, HIDDEN, INTER, VOCAB = 2, 128, 256, 64
LINEARS = {"self_attn.q_proj": (128, 128), "self_attn.k_proj": (64, 128), "self_attn.v_proj": (64, 128),
           "self_attn.o_proj": (128, 128), "mlp.gate_proj": (256, 128), "mlp.up_proj": (256, 128),
           "mlp.down_proj": (128, 256)}
BIASED = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
PACKED = [f"model.layers.{i}.{m}" for i in range(LAYERS) for m in LINEARS]
TARGETS = ["q_proj", "v_proj", "down_proj", "lm_head"]
CHANGED = sorted(m for m in PACKED if m.rsplit(".", 1)[1] in TARGETS)  # packed modules the adapter changes (file order)
UNTOUCHED = [m for m in PACKED if m not in CHANGED]
MEMBER_ENDINGS = (".qweight", ".qzeros", ".scales", ".g_idx")
R, ALPHA = 4, 8
P = "base_model.model."


@dataclass(frozen=True)
class Variant:
    method: str  # gptq | awq
    bits: int
    group_size: int
    desc_act: bool
    sym: bool
    fmt: str  # gptq (v1) | gptq_v2 | gemm

    @property
    def v1(self) -> bool:
        return self.fmt == "gptq"

    @property
    def packing(self) -> tuple:  # variants that differ only by v1/v2 share the packed tensors
        return (self.method, self.bits, self.group_size, self.desc_act, self.sym)


VARIANTS = {
    "gptq4-sym-actorder-v1": Variant("gptq", 4, 32, True, True, "gptq"),
    "gptq8-asym-v2": Variant("gptq", 8, 128, False, False, "gptq_v2"),
    "gptq2-asym-v1": Variant("gptq", 2, 32, False, False, "gptq"),
    "gptq3-asym-actorder-v2": Variant("gptq", 3, 64, True, False, "gptq_v2"),
    "awq-gemm": Variant("awq", 4, 64, False, False, "gemm"),
}
GPTQ_VARIANTS = [n for n, v in VARIANTS.items() if v.method == "gptq"]


# -- the libraries, in one child process -----------------------------------------------------------

SERVER = r"""
import importlib, json, sys, traceback
sys.path.insert(0, sys.argv[1])
import quant_oracle as qo
loaded = qo.load()
torch = loaded[0]
qo._skip_init("awq.models")  # its __init__ imports every model definition
AwqConfig = importlib.import_module("awq.models._config").AwqConfig
QuantizeConfig = importlib.import_module("gptqmodel.quantization.config").QuantizeConfig

def one(case):
    if case["op"] == "gptq_config":  # what GPTQModel's save writes as config.quantization_config
        return {"json": json.dumps(QuantizeConfig(**case["kwargs"]).to_dict(), default=str)}
    if case["op"] == "awq_config":  # what AutoAWQ's save writes into config.json
        return {"json": json.dumps(AwqConfig(**case["kwargs"]).to_transformers_dict())}
    return qo.run(case, *loaded)

print("READY", flush=True)
for line in sys.stdin:
    src, dst = line.split()
    try:
        cases = torch.load(src)
        torch.save({str(i): one(c) for i, c in enumerate(cases)}, dst)
        print("DONE", flush=True)
    except Exception:
        print("FAIL " + traceback.format_exc().replace("\n", " | "), flush=True)
"""


class Oracle:
    """GPTQModel and AutoAWQ in a child process that stays up: ``oracle(cases)`` -> results."""

    def __init__(self, where: Path) -> None:
        self.where, self.calls = where, 0
        env = dict(os.environ, PYTHONPATH=str(ORACLE_DIR))
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, str(HERE)], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.ready = False  # it loads while the caller builds its cases

    def _wait(self, word: str) -> None:
        log = []
        for line in self.proc.stdout:
            if line.startswith(word):
                return
            if line.startswith("FAIL"):
                raise AssertionError(line.replace(" | ", "\n"))
            log.append(line)
        raise AssertionError("the oracle process ended:\n" + "".join(log[-30:]))

    def __call__(self, cases: list[dict]) -> list[dict]:
        if not self.ready:
            self._wait("READY")
            self.ready = True
        self.calls += 1
        src, dst = self.where / f"cases{self.calls}.pt", self.where / f"results{self.calls}.pt"
        torch.save(cases, src)
        self.proc.stdin.write(f"{src} {dst}\n")
        self.proc.stdin.flush()
        self._wait("DONE")
        results = torch.load(dst)
        return [results[str(i)] for i in range(len(cases))]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.terminate()  # the child process this class started (its interpreter's exit takes a while)
        self.proc.wait(timeout=60)


# -- first principles: the grid and the bit layouts --------------------------------------------------

def pack_gptq(codes: np.ndarray, bits: int) -> np.ndarray:
    """codes (in, out) -> int32 words (in·bits/32, out): along the input dimension, code i
    occupies bits i·bits .. i·bits+bits-1 of the little-endian stream of words."""
    n_in, n_out = codes.shape
    words = np.zeros((n_in * bits // 32, n_out), dtype=np.uint64)
    for i in range(n_in):
        for b in range(bits):
            pos = i * bits + b
            words[pos // 32] |= ((codes[i].astype(np.uint64) >> np.uint64(b)) & np.uint64(1)) << np.uint64(pos % 32)
    return words.astype(np.uint32).view(np.int32)


def unpack_gptq(words: np.ndarray, bits: int, n_in: int) -> np.ndarray:
    stream = words.view(np.uint32).astype(np.uint64)
    codes = np.zeros((n_in, words.shape[1]), dtype=np.int64)
    for i in range(n_in):
        for b in range(bits):
            pos = i * bits + b
            codes[i] |= (((stream[pos // 32] >> np.uint64(pos % 32)) & np.uint64(1)) << np.uint64(b)).astype(np.int64)
    return codes


AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AutoAWQ's order_map: nibble i of word w holds output 8w + AWQ_ORDER[i]


def pack_awq(codes: np.ndarray) -> np.ndarray:
    """codes (in, out) -> int32 words (in, out/8), AutoAWQ's GEMM interleaving."""
    n_in, n_out = codes.shape
    words = np.zeros((n_in, n_out // 8), dtype=np.uint64)
    for w in range(n_out // 8):
        for i, o in enumerate(AWQ_ORDER):
            words[:, w] |= codes[:, 8 * w + o].astype(np.uint64) << np.uint64(4 * i)
    return words.astype(np.uint32).view(np.int32)


def unpack_awq(words: np.ndarray) -> np.ndarray:
    stream = words.view(np.uint32).astype(np.int64)
    codes = np.zeros((words.shape[0], words.shape[1] * 8), dtype=np.int64)
    for w in range(words.shape[1]):
        for i, o in enumerate(AWQ_ORDER):
            codes[:, 8 * w + o] = (stream[:, w] >> (4 * i)) & 15
    return codes


def nearest(target: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes, near_tie): clamp(round_half_even(target / scale + zero), 0, 2**bits - 1) in fp64,
    and where target / scale + zero lies within fp32 rounding of a half (either code is right
    there for a weight the merge computed in fp32)."""
    t = target / scale + zero
    codes = np.clip(np.round(t), 0, (1 << bits) - 1).astype(np.int64)  # np.round: half to even
    tie = (np.abs(t - np.floor(t) - 0.5) < 1e-4) & (t > 0) & (t < (1 << bits) - 1)
    return codes, tie


def on_grid(codes: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """float16(scale · (code - zero)) as fp32: the products both libraries round once to fp16."""
    return ((codes - zero) * scale).astype(np.float16).astype(np.float32)


# -- the checkpoints -------------------------------------------------------------------------------

def act_order_g_idx(gen: torch.Generator, n_in: int, size: int) -> torch.Tensor:
    """GPTQ's act-order map (GPTQModel: ``(arange // group_size)[invperm]``): a permuted g_idx."""
    invperm = torch.argsort(torch.randperm(n_in, generator=gen))
    return ((torch.arange(n_in) // size)[invperm]).to(torch.int32)


def grid_of(v: Variant, module: str) -> dict:
    """The grid (fp16 scales, zero points, group of each input column) and codes of one module,
    and a weight within 0.3 of a step from its grid points (what the packer is handed)."""
    out, n_in = LINEARS[module.split(".", 3)[3]]
    gen = torch.Generator().manual_seed(sum(map(ord, module)) * 31 + v.bits * 7 + v.group_size + v.desc_act)
    maxq = (1 << v.bits) - 1
    groups = n_in // v.group_size
    scales = ((torch.rand(groups, out, generator=gen) + 0.5) * 0.04 / maxq).half()  # (groups, out), as stored
    if v.sym:
        zeros = torch.full((groups, out), 1 << (v.bits - 1))
    else:  # zero point 0 would be the all-ones v1 code that GPTQModel and vLLM read differently (refused apart)
        zeros = torch.randint(1 if v.method == "gptq" else 0, maxq + 1, (groups, out), generator=gen)
    if v.method == "gptq":
        g_idx = act_order_g_idx(gen, n_in, v.group_size) if v.desc_act else (torch.arange(n_in) // v.group_size).to(torch.int32)
    else:
        g_idx = (torch.arange(n_in) // v.group_size).to(torch.int32)
    codes = torch.randint(0, maxq + 1, (n_in, out), generator=gen)
    s = scales.float()[g_idx.long()]  # (in, out)
    z = zeros[g_idx.long()]
    noise = (torch.rand(n_in, out, generator=gen) * 2 - 1) * 0.3 * s
    weight = ((codes - z).float() * s + noise).t().contiguous()  # (out, in), as nn.Linear
    return dict(out=out, n_in=n_in, scales=scales, zeros=zeros, g_idx=g_idx, codes=codes, weight=weight)


def pack_case(v: Variant, g: dict) -> dict:
    if v.method == "gptq":  # GPTQModel's pack_block takes (out, groups) scales and zeros
        return dict(op="gptq_pack", bits=v.bits, group_size=v.group_size, sym=v.sym, desc_act=v.desc_act,
                    **{"in": g["n_in"], "out": g["out"]}, W=g["weight"], scales=g["scales"].float().t().contiguous(),
                    zeros=g["zeros"].t().contiguous(), g_idx=g["g_idx"])
    return dict(op="awq_pack", group_size=v.group_size, **{"in": g["n_in"], "out": g["out"]}, W=g["weight"],
                scales=g["scales"].float(), zeros=g["zeros"])


def config_case(v: Variant) -> dict:
    if v.method == "gptq":
        return dict(op="gptq_config", kwargs=dict(bits=v.bits, group_size=v.group_size, desc_act=v.desc_act, sym=v.sym,
                                                  format=v.fmt))
    return dict(op="awq_config", kwargs=dict(zero_point=True, q_group_size=v.group_size, w_bit=v.bits, version="GEMM"))


def members_of(v: Variant, packed: dict) -> dict[str, torch.Tensor]:
    """role -> the tensor the library's save writes (v1 files: GPTQModel's v2->v1 conversion)."""
    if v.method == "gptq":
        return {"qweight": packed["qweight"], "qzeros": packed["qzeros_v1" if v.v1 else "qzeros_v2"],
                "scales": packed["scales"], "g_idx": packed["g_idx"]}
    return {"qweight": packed["qweight"], "qzeros": packed["qzeros"], "scales": packed["scales"]}


def library_weight(v: Variant, packed: dict) -> torch.Tensor:
    """The library's dequantization (fp16, (in, out)) as fp32 (out, in)."""
    if v.method == "gptq":
        return packed["weight_v1" if v.v1 else "weight_v2"].float().t().contiguous()
    return packed["weight"].float().t().contiguous()


def dequant_case(v: Variant, members: dict[str, torch.Tensor], module: str) -> dict:
    out, n_in = LINEARS[module.split(".", 3)[3]]
    if v.method == "gptq":
        return dict(op="gptq_dequant", bits=v.bits, group_size=v.group_size, sym=v.sym, desc_act=v.desc_act, v1=v.v1,
                    **{"in": n_in, "out": out}, **{r: members[r] for r in ("qweight", "qzeros", "scales", "g_idx")})
    return dict(op="awq_dequant", group_size=v.group_size, **{"in": n_in, "out": out}, qweight=members["qweight"],
                qzeros=members["qzeros"], scales=members["scales"])


def plain_tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    tensors = {"model.embed_tokens.weight": (torch.randn(VOCAB, HIDDEN, generator=gen) * 0.02).half(),
               "model.norm.weight": (1 + torch.randn(HIDDEN, generator=gen) * 0.1).half(),
               "lm_head.weight": (torch.randn(VOCAB, HIDDEN, generator=gen) * 0.02).half()}
    for i in range(LAYERS):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"model.layers.{i}.{norm}.weight"] = (1 + torch.randn(HIDDEN, generator=gen) * 0.1).half()
        for m in BIASED:
            tensors[f"model.layers.{i}.{m}.bias"] = (torch.randn(LINEARS[m][0], generator=gen) * 0.01).half()
    return tensors


def model_config(quantization_config: dict) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN, "intermediate_size": INTER,
            "num_hidden_layers": LAYERS, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
            "vocab_size": VOCAB, "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "attention_bias": True,
            "tie_word_embeddings": False, "torch_dtype": "float16", "quantization_config": quantization_config}


def write_checkpoint(path: Path, tensors: dict[str, torch.Tensor], config: dict) -> Path:
    path.mkdir(parents=True)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


def lora_tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    tensors = {}
    for module in [*CHANGED, "lm_head"]:
        out, n_in = (VOCAB, HIDDEN) if module == "lm_head" else LINEARS[module.split(".", 3)[3]]
        tensors[f"{P}{module}.lora_A.weight"] = torch.randn(R, n_in, generator=gen) * 0.1
        tensors[f"{P}{module}.lora_B.weight"] = torch.randn(out, R, generator=gen) * 0.025
    return tensors


def lora_delta(tensors: dict[str, torch.Tensor], module: str) -> torch.Tensor:
    """ΔW of one module in fp64, from the adapter's tensors: alpha / r · B · A."""
    a = tensors[f"{P}{module}.lora_A.weight"].double()
    b = tensors[f"{P}{module}.lora_B.weight"].double()
    return ALPHA / R * (b @ a)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Every variant's checkpoint (packed by its library), the library's dequantization of
    each module, the grid it was packed on, the LoRA adapter and its fp64 ΔW; and the oracle,
    kept up for the tests that ask it again."""
    if not (ORACLE_DIR / "gptqmodel").is_dir() or not (ORACLE_DIR / "awq").is_dir():
        pytest.fail(f"the GPTQ/AWQ oracles are not installed in {ORACLE_DIR}: run scripts/setup.sh "
                    "(or set ADAPTERKIT_QUANT_ORACLES)")
    root = tmp_path_factory.mktemp("grid")
    oracle = Oracle(root)
    try:
        yield build(root, oracle)
    finally:
        oracle.close()


def build(root: Path, oracle: Oracle) -> dict:
    plain = plain_tensors()
    adapter = lora_tensors()
    lora = adapterkit.save(Adapter.from_tensors(LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS), adapter),
                           root / "lora")
    packings = sorted({v.packing for v in VARIANTS.values()})
    first = {p: next(v for v in VARIANTS.values() if v.packing == p) for p in packings}
    grids = {(p, m): grid_of(first[p], m) for p in packings for m in PACKED}
    order = list(grids)
    results = oracle([pack_case(first[p], grids[(p, m)]) for p, m in order] + [config_case(v) for v in VARIANTS.values()])
    packed = dict(zip(order, results[: len(order)]))
    configs = {name: json.loads(r["json"]) for name, r in zip(VARIANTS, results[len(order):])}
    world = {"root": root, "oracle": oracle, "lora": lora, "plain": plain, "variants": {},
             "delta": {m: lora_delta(adapter, m) for m in [*CHANGED, "lm_head"]}}
    for name, v in VARIANTS.items():
        tensors = dict(plain)
        members, library, grid = {}, {}, {}
        for m in PACKED:
            packed_m = packed[(v.packing, m)]
            members[m] = members_of(v, packed_m)
            library[m] = library_weight(v, packed_m)
            grid[m] = grids[(v.packing, m)]
            tensors |= {f"{m}.{role}": t for role, t in members[m].items()}
        base = write_checkpoint(root / name, tensors, model_config(configs[name]))
        world["variants"][name] = {"v": v, "base": base, "members": members, "library": library, "grid": grid,
                                   "config": configs[name], "outputs": {}}
    return world


def output(world, name: str, form: str) -> Path:
    """A merge of the variant's base with the adapter (``dense``: dtype F32; ``requantized``), made once."""
    var = world["variants"][name]
    if form not in var["outputs"]:
        out = world["root"] / f"{name}-{form}"
        var["outputs"][form] = (out, merge_checkpoint(var["base"], [world["lora"]], out,
                                                      dtype="F32" if form == "dense" else None))
    return var["outputs"][form][0]


def report_of(world, name: str, form: str):
    output(world, name, form)
    return world["variants"][name]["outputs"][form][1]


def rewritten(world, name: str) -> list[dict]:
    """The library's dequantization of each changed module of the re-quantized merge (asked once)."""
    var = world["variants"][name]
    if "rewritten" not in var:
        v = var["v"]
        got = load_file(output(world, name, "requantized") / "model.safetensors")
        roles = ("qweight", "qzeros", "scales", "g_idx") if v.method == "gptq" else ("qweight", "qzeros", "scales")
        var["rewritten"] = world["oracle"]([dequant_case(v, {r: got[f"{m}.{r}"] for r in roles}, m) for m in CHANGED])
    return var["rewritten"]


def scale_zero(v: Variant, g: dict) -> tuple[np.ndarray, np.ndarray]:
    """The per-element fp16 scale (as fp64) and zero point of the (out, in) weight."""
    idx = g["g_idx"].long()
    return g["scales"].double()[idx].t().numpy(), g["zeros"][idx].t().double().numpy()


def fp32_close(got: torch.Tensor, expected: torch.Tensor, ulps: int = 4) -> bool:
    """Within a few fp32 ulps of the largest magnitude involved (an fp32 sum of fp32 terms)."""
    return bool(torch.allclose(got.double(), expected.double(), rtol=0, atol=ulps * 2.0 ** -24 * expected.abs().max().item()))


# -- the checkpoints are what the libraries write ----------------------------------------------------

@pytest.mark.parametrize("name", VARIANTS)
def test_checkpoint_is_the_librarys(world, name):
    """The base as built: the config GPTQModel/AutoAWQ write, the library's packed codes equal the
    documented bit layout of the codes it was handed, and its dequantization the fp16 grid values
    (so the first-principles helpers below are right)."""
    var = world["variants"][name]
    v, config = var["v"], var["config"]
    assert config["quant_method"] == v.method and config["bits"] == v.bits and config["group_size"] == v.group_size
    if v.method == "gptq":
        assert config["desc_act"] is v.desc_act and config["sym"] is v.sym and config["checkpoint_format"] == v.fmt
    else:
        assert config["version"] == "gemm" and config["zero_point"] is True
    for m in PACKED:
        g = var["grid"][m]
        codes = g["codes"].numpy()
        words = pack_gptq(codes, v.bits) if v.method == "gptq" else pack_awq(codes)
        assert np.array_equal(var["members"][m]["qweight"].numpy(), words), m
        s, z = scale_zero(v, g)
        assert np.array_equal(var["library"][m].numpy(), on_grid(codes.T, s, z)), m


# -- 1. dense merge --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", VARIANTS)
def test_dense_merge_equals_library_dequantization_plus_delta(world, name):
    var = world["variants"][name]
    out_dir = output(world, name, "dense")
    out = load_file(out_dir / "model.safetensors")
    assert not [k for k in out if k.endswith(MEMBER_ENDINGS)]
    assert set(out) == set(world["plain"]) | {m + ".weight" for m in PACKED}
    assert all(t.dtype == torch.float32 for t in out.values())
    for m in CHANGED:
        expected = var["library"][m].double() + world["delta"][m]
        assert fp32_close(out[m + ".weight"], expected), m
    for m in UNTOUCHED:  # exactly the library's dequantization (fp16 values), as fp32
        assert torch.equal(out[m + ".weight"], var["library"][m]), m
    expected = world["plain"]["lm_head.weight"].double() + world["delta"]["lm_head"]
    assert fp32_close(out["lm_head.weight"], expected)
    for key, t in world["plain"].items():
        if key != "lm_head.weight":
            assert torch.equal(out[key], t.float()), key
    config = json.loads((out_dir / "config.json").read_text())
    assert "quantization_config" not in config
    report = report_of(world, name, "dense")
    assert report.quantized["output"] == "dense" and "survival" not in report.quantized
    assert report.quantized["format"] == ("awq-4bit-gemm" if var["v"].method == "awq" else f"gptq-{var['v'].bits}bit")


# -- 2. re-quantized merge -------------------------------------------------------------------------

def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.contiguous().view(torch.uint8).numpy().tobytes() == \
        b.contiguous().view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("name", VARIANTS)
def test_requantized_merge_is_nearest_grid_point(world, name):
    var = world["variants"][name]
    v = var["v"]
    base = load_file(var["base"] / "model.safetensors")
    got = load_file(output(world, name, "requantized") / "model.safetensors")
    assert {k: (t.dtype, t.shape) for k, t in got.items()} == {k: (t.dtype, t.shape) for k, t in base.items()}
    assert "quantization_config" in json.loads((output(world, name, "requantized") / "config.json").read_text())
    for key in base:
        module, _, role = key.rpartition(".")
        if (module in CHANGED and role == "qweight") or key == "lm_head.weight":
            continue
        assert same_bytes(got[key], base[key]), key  # untouched modules, and every other member, byte for byte
    ties = 0
    for m in CHANGED:
        g = var["grid"][m]
        s, z = scale_zero(v, g)
        target = var["library"][m].double().numpy() + world["delta"][m].numpy()
        expected, tie = nearest(target, s, z, v.bits)
        written = unpack_gptq(got[m + ".qweight"].numpy(), v.bits, g["n_in"]) if v.method == "gptq" \
            else unpack_awq(got[m + ".qweight"].numpy())
        written = written.T
        differ = written != expected
        assert not (differ & ~tie).any(), (m, np.argwhere(differ & ~tie)[:5])
        assert (np.abs(written - expected) <= 1).all()
        ties += int(differ.sum())
        words = pack_gptq(expected.T, v.bits) if v.method == "gptq" else pack_awq(expected.T)
        if not differ.any():
            assert np.array_equal(got[m + ".qweight"].numpy(), words), m
        assert (expected != g["codes"].numpy().T).mean() > 0.05, m  # ΔW moved a good share of the codes
    assert ties <= 2
    # the plain module the adapter targets: fp16 of the fp32 sum (one rounding)
    exact = world["plain"]["lm_head.weight"].double() + world["delta"]["lm_head"]
    diff = (got["lm_head.weight"].double() - exact).abs()
    assert bool((diff <= exact.abs() * 2.0 ** -10 + 2.0 ** -24).all())


@pytest.mark.parametrize("name", VARIANTS)
def test_requantized_survival_report_matches_library(world, name):
    """The survival figures against the library's dequantization of what was written."""
    var = world["variants"][name]
    v = var["v"]
    got = load_file(output(world, name, "requantized") / "model.safetensors")
    written = rewritten(world, name)
    report = report_of(world, name, "requantized")
    assert report.quantized["output"] == "requantized"
    survival = report.quantized["survival"]
    assert [m["module"] for m in survival["modules"]] == CHANGED
    totals = {"delta": 0.0, "moved": 0.0, "error": 0.0}
    for m, ref, figures in zip(CHANGED, written, survival["modules"]):
        after = ref["weight"].double().t()
        g = var["grid"][m]
        s, z = scale_zero(v, g)
        codes = unpack_gptq(got[m + ".qweight"].numpy(), v.bits, g["n_in"]).T if v.method == "gptq" \
            else unpack_awq(got[m + ".qweight"].numpy()).T
        assert np.array_equal(after.float().numpy(), on_grid(codes, s, z)), m  # the library reads the codes we read
        before = var["library"][m].double()
        delta = world["delta"][m]
        mine = {"delta": delta.norm().item(), "moved": (after - before).norm().item(),
                "error": (after - before - delta).norm().item()}
        assert math.isclose(figures["delta_norm"], mine["delta"], rel_tol=1e-5), m
        assert math.isclose(figures["moved_norm"], mine["moved"], rel_tol=1e-5), m
        assert math.isclose(figures["error_norm"], mine["error"], rel_tol=1e-5, abs_tol=1e-6 * mine["delta"]), m
        assert math.isclose(figures["kept"], mine["moved"] / mine["delta"], rel_tol=1e-5), m
        assert (m in survival["lost_modules"]) == (mine["error"] / mine["delta"] >= 0.5), m
        for k in totals:
            totals[k] += mine[k] ** 2
    assert math.isclose(survival["kept"], math.sqrt(totals["moved"] / totals["delta"]), rel_tol=1e-5)
    assert math.isclose(survival["error"], math.sqrt(totals["error"] / totals["delta"]), rel_tol=1e-5)


# -- 3. unmerge ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", VARIANTS)
def test_unmerge(world, name, tmp_path):
    var = world["variants"][name]
    merge_checkpoint(output(world, name, "dense"), [world["lora"]], tmp_path / "back", unmerge=True)
    back = load_file(tmp_path / "back" / "model.safetensors")
    for m in CHANGED:
        assert fp32_close(back[m + ".weight"], var["library"][m], ulps=8), m
    for m in UNTOUCHED:
        assert torch.equal(back[m + ".weight"], var["library"][m]), m
    assert fp32_close(back["lm_head.weight"], world["plain"]["lm_head.weight"].float(), ulps=8)
    # from the re-quantized merge: runs on the grid, and says how much of -ΔW it kept
    report = merge_checkpoint(output(world, name, "requantized"), [world["lora"]], tmp_path / "backq", unmerge=True)
    assert report.quantized["output"] == "requantized"
    survival = report.quantized["survival"]
    assert [m["module"] for m in survival["modules"]] == CHANGED
    for figures in survival["modules"]:
        assert math.isclose(figures["delta_norm"], world["delta"][figures["module"]].norm().item(), rel_tol=1e-5)
    base = load_file(var["base"] / "model.safetensors")
    again = load_file(tmp_path / "backq" / "model.safetensors")
    assert set(again) == set(base)
    for key in base:
        if not key.endswith(".qweight") and key != "lm_head.weight":
            assert same_bytes(again[key], base[key]), key


# -- 4. extract ------------------------------------------------------------------------------------

def fp32_model(world, name: str, where: Path) -> Path:
    """The variant's checkpoint with its plain tensors in fp32 and ``torch_dtype: float32`` (the
    packed members as the library wrote them): a model whose dense dtype is fp32, so that a
    dense F32 merge and its base agree on every plain tensor's dtype (extract's rule)."""
    var = world["variants"][name]
    tensors = load_file(var["base"] / "model.safetensors")
    tensors |= {k: t.float() for k, t in world["plain"].items()}
    return write_checkpoint(where, tensors, json.loads((var["base"] / "config.json").read_text()) | {"torch_dtype": "float32"})


def extracted(adapter, m: str) -> torch.Tensor:
    return adapter.tensors[f"{P}{m}.lora_B.weight"].double() @ adapter.tensors[f"{P}{m}.lora_A.weight"].double()


@pytest.mark.parametrize("name", VARIANTS)
def test_extract_dense_finetune_from_quantized_base(world, name, tmp_path):
    """BASE the packed checkpoint, FINETUNED its dense merge: ΔW at the adapter's rank.  An fp32
    model (dense F32 merge): within fp32 rounding and the SVD's; the fp16 model as such (a dense
    F16 merge, extract refuses F32 beside F16 plain tensors): within what fp16 rounding of the
    merged weights and of the stored factors allows."""
    var = world["variants"][name]
    base32 = fp32_model(world, name, tmp_path / "base32")
    merge_checkpoint(base32, [world["lora"]], tmp_path / "ft32", dtype="F32")
    adapter, report = extract(base32, tmp_path / "ft32", rank=R)
    assert {r.name for r in report.modules} == set(CHANGED)
    assert {m + ".weight" for m in UNTOUCHED} <= set(report.unchanged)
    for m in CHANGED:
        assert adapter.tensors[f"{P}{m}.lora_A.weight"].shape[0] == R
        assert adapter.tensors[f"{P}{m}.lora_A.weight"].dtype == torch.float32
        delta = world["delta"][m]
        assert (extracted(adapter, m) - delta).norm() <= 1e-5 * delta.norm(), m
    if name not in ("gptq4-sym-actorder-v1", "awq-gemm"):  # the fp16 model: two variants are enough
        return
    merge_checkpoint(var["base"], [world["lora"]], tmp_path / "ft16", dtype="F16")
    adapter, report = extract(var["base"], tmp_path / "ft16", rank=R)
    assert {r.name for r in report.modules} == set(CHANGED)
    assert {m + ".weight" for m in UNTOUCHED} <= set(report.unchanged)
    ft16 = load_file(tmp_path / "ft16" / "model.safetensors")
    for m in CHANGED:
        delta = world["delta"][m]
        noise = (ft16[m + ".weight"].double() - var["library"][m].double() - delta).norm()
        # best rank-r approximation of ΔW + noise is within 2·‖noise‖ of ΔW; the factors are fp16
        assert (extracted(adapter, m) - delta).norm() <= 2 * noise + 2e-3 * delta.norm(), m


@pytest.mark.parametrize("name", VARIANTS)
def test_extract_requantized_finetune_from_dense_base(world, name, tmp_path):
    """BASE dense (the library's dequantization as fp32, the plain tensors as stored), FINETUNED
    the re-quantized merge: the difference of the library's dequantizations."""
    var = world["variants"][name]
    dense = dict(world["plain"]) | {m + ".weight": var["library"][m] for m in PACKED}
    config = {k: x for k, x in model_config({}).items() if k != "quantization_config"}
    write_checkpoint(tmp_path / "dense", dense, config)
    ft = output(world, name, "requantized")
    adapter, report = extract(tmp_path / "dense", ft, energy=1.0)
    assert {r.name for r in report.modules} == set(CHANGED)
    after = rewritten(world, name)
    for m, ref in zip(CHANGED, after):
        expected = ref["weight"].double().t() - var["library"][m].double()
        assert adapter.tensors[f"{P}{m}.lora_A.weight"].dtype == torch.float16  # the dtype the packed weights stand for
        assert (extracted(adapter, m) - expected).norm() <= 1e-2 * expected.norm(), m  # full rank; fp16 factors


# -- 5. a ΔW below the grid's step -----------------------------------------------------------------

@pytest.mark.parametrize("name", GPTQ_VARIANTS)
def test_tiny_delta_is_rounded_away_and_named(world, name, tmp_path):
    var = world["variants"][name]
    report = merge_checkpoint(var["base"], [world["lora"]], tmp_path / "tiny", weights=[1e-6])
    survival = report.quantized["survival"]
    assert survival["lost_modules"] == CHANGED and survival["kept"] == 0.0
    warning = [n for n in report.notes if n.startswith("WARNING")]
    assert len(warning) == 1 and CHANGED[0] in warning[0] and "rounded most of ΔW away" in warning[0]
    base = load_file(var["base"] / "model.safetensors")
    got = load_file(tmp_path / "tiny" / "model.safetensors")
    for m in CHANGED:
        assert same_bytes(got[m + ".qweight"], base[m + ".qweight"]), m


# -- 6. refusals, end to end -----------------------------------------------------------------------

Q = "model.layers.1.self_attn.v_proj"


def _drop_g_idx(tensors, config):
    assert config["desc_act"] is True
    tensors.pop(f"{Q}.g_idx")


def _bits5(tensors, config):
    config["bits"] = 5


def _gemv(tensors, config):
    config["version"] = "gemv"


def _qzeros_shape(tensors, config):
    tensors[f"{Q}.qzeros"] = tensors[f"{Q}.qzeros"][:, :-1].contiguous()


REFUSALS = {  # case -> (variant, change, code, words the error names)
    "act-order without g_idx": ("gptq4-sym-actorder-v1", _drop_g_idx, "quant-invalid", (Q, "field g_idx")),
    "bits 5": ("gptq8-asym-v2", _bits5, "quant-unsupported", ("quantization_config.bits",)),
    "awq gemv": ("awq-gemm", _gemv, "quant-unsupported", ("quantization_config.version", "gemv")),
    "gptq qzeros shape": ("gptq2-asym-v1", _qzeros_shape, "quant-invalid", (Q, "qzeros", "field bits")),
    "awq qzeros shape": ("awq-gemm", _qzeros_shape, "quant-invalid", (Q, "qzeros", "field bits")),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_refusals_name_module_and_field(world, case, tmp_path):
    name, change, code, words = REFUSALS[case]
    src = world["variants"][name]["base"]
    tensors = load_file(src / "model.safetensors")
    config = json.loads((src / "config.json").read_text())
    change(tensors, config["quantization_config"])
    base = write_checkpoint(tmp_path / "base", tensors, config)
    for dtype in (None, "F32"):
        with pytest.raises(AdapterkitError) as info:
            merge_checkpoint(base, [world["lora"]], tmp_path / f"out{dtype}", dtype=dtype)
        text = f"{info.value} {info.value.key}"
        assert info.value.code == code, text
        assert all(w in text for w in words), (words, text)
        assert not (tmp_path / f"out{dtype}").exists()
    res = CliRunner().invoke(cli, ["merge", str(base), str(world["lora"]), str(tmp_path / "cli")])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and f"[{code}]" in lines[0], res.output
    assert all(w.replace("field ", "") in lines[0] for w in words), lines[0]
    assert not (tmp_path / "cli").exists()
    assert not [p for p in tmp_path.iterdir() if p.name != "base"]


@pytest.mark.parametrize("name", ["gptq3-asym-actorder-v2"])
def test_cli_merge_prints_the_survival_table(world, name, tmp_path):
    """`adapterkit merge BASE ADAPTER OUT` on a packed base: the re-quantized output and its
    table, the same figures as the API's report."""
    var = world["variants"][name]
    res = CliRunner().invoke(cli, ["merge", str(var["base"]), str(world["lora"]), str(tmp_path / "out"), "--json"])
    assert res.exit_code == 0, res.output
    quantized = json.loads(res.stdout)["quantized"]
    api = report_of(world, name, "requantized").quantized
    assert quantized["output"] == "requantized" and quantized["format"] == api["format"]
    assert [m["module"] for m in quantized["survival"]["modules"]] == CHANGED
    for ours, theirs in zip(quantized["survival"]["modules"], api["survival"]["modules"]):
        assert ours == pytest.approx(theirs)
    base = load_file(output(world, name, "requantized") / "model.safetensors")
    got = load_file(tmp_path / "out" / "model.safetensors")
    assert all(same_bytes(got[k], base[k]) for k in base)
    text = CliRunner().invoke(cli, ["merge", str(var["base"]), str(world["lora"]), str(tmp_path / "out2")])
    assert text.exit_code == 0 and f"re-quantized to {api['format']}" in text.stdout
    assert all(m in text.stdout for m in CHANGED)


def test_find_takes_the_interfaces_read_argument(world):
    """Regression: GPTQ.find / AWQ.find lacked base.QuantFormat.find's ``read`` argument, so every
    merge, unmerge, extract or info on a GPTQ/AWQ checkpoint (QuantizedView calls
    ``find(keys, read=...)``) failed with a TypeError."""
    from adapterkit.checkpoint import open_checkpoint
    from adapterkit.quant.scheme import quant_format
    from adapterkit.quant.view import QuantizedView

    for name in ("gptq2-asym-v1", "awq-gemm"):
        var = world["variants"][name]
        ckpt = open_checkpoint(var["base"])
        view = QuantizedView(ckpt, quant_format({"quantization_config": var["config"]}), None)
        assert sorted(view.packed) == sorted(PACKED)
        assert torch.equal(view.read(CHANGED[0] + ".weight"), var["library"][CHANGED[0]])
