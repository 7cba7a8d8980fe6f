#!/usr/bin/env python
"""Regenerate the generated parts of ``spec/v1`` from the library, deterministically.

What it writes:
  * ``spec/v1/schema/<kind>.json`` from each config class's ``json_schema()``, and
    ``spec/v1/schema/metadata.json`` (the safetensors ``__metadata__`` of adapterkit files);
  * the tables between ``<!-- BEGIN GENERATED: name -->`` and ``<!-- END GENERATED -->``
    in ``spec/v1/README.md`` (config fields per kind, metadata keys, error codes, vectors);
  * the conformance vectors under ``spec/v1/vectors/{valid,invalid}/<name>/``, each with
    an ``expected.json``.

Tensor values are small dyadic rationals (k/8, k in ±1..±4, never zero) and every
scaling is a power of two, so each ΔW is exact in fp32 whatever order a BLAS sums in,
and its digest is portable.  Expected ΔW digests come from an independent numpy
reference, and generation fails if adapterkit's ``delta_weight`` disagrees.

Usage:
  python scripts/make_spec.py          # rewrite everything
  python scripts/make_spec.py --check  # exit 1 (listing the files) if anything on disk differs
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import re
import struct
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import adapterkit
from adapterkit import Adapter, IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, PTuningConfig
from adapterkit.errors import CODES
from adapterkit.io.safetensors_file import encode, tensor_bytes
from adapterkit.kinds import KINDS

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "spec" / "v1"
README = SPEC / "README.md"
VERSION = adapterkit.FORMAT_VERSION
P = "base_model.model."

# ---------------------------------------------------------------------------------------------
# schemas


def schema_name(cls: type) -> str:
    return cls.peft_type.lower()


METADATA_KEYS: list[tuple[str, str, dict[str, Any], str]] = [
    ("format", "REQUIRED", {"const": "pt"}, "always `pt`, as PEFT and the safetensors library write it"),
    (
        "adapterkit.version",
        "REQUIRED (only PEFT-profile files lack it)",
        {"type": "string", "pattern": r"^1\.(0|[1-9][0-9]*)$"},
        "format version `MAJOR.MINOR` (decimal, no leading zeros); this version writes `1.0`",
    ),
    (
        "adapterkit.config",
        "REQUIRED in the single-file form; absent in the directory form",
        {"type": "string", "contentMediaType": "application/json"},
        "the adapter config as compact JSON with sorted keys",
    ),
]


def metadata_schema() -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://adapterkit.dev/spec/v1/schema/metadata.json",
        "title": "adapterkit v1 safetensors __metadata__",
        "type": "object",
        "required": ["format", "adapterkit.version"],
        "properties": {k: {**s, "description": d} for k, _, s, d in METADATA_KEYS},
        "additionalProperties": {"type": "string"},
    }


def dump_json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def schemas() -> dict[str, bytes]:
    out = {f"schema/{schema_name(k.config)}.json": dump_json(k.config.json_schema()) for k in KINDS.values()}
    out["schema/metadata.json"] = dump_json(metadata_schema())
    return out


# ---------------------------------------------------------------------------------------------
# generated README tables


def _type(s: dict[str, Any]) -> str:
    if "anyOf" in s:
        return " or ".join(_type(x) for x in s["anyOf"])
    if "const" in s or "enum" in s:
        return "string"
    types = s.get("type", [])
    parts = []
    for t in [types] if isinstance(types, str) else types:
        if t == "array":
            parts.append(f"array of {_type(s['items'])}")
        elif t == "object" and "additionalProperties" in s:
            parts.append(f"object (string → {_type(s['additionalProperties'])})")
        else:
            parts.append(t)
    return " or ".join(parts)


def _constraints(s: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for sub in s.get("anyOf", []):
        out += _constraints(sub)
    if "const" in s:
        out.append(f"exactly `{s['const']}`")
    if "enum" in s:
        out.append("one of " + ", ".join(f"`{v}`" for v in s["enum"]))
    if "minimum" in s:
        out.append(f"integer ≥ {s['minimum']}" if s.get("type") == "integer" else f"≥ {s['minimum']}")
    if s.get("type") == "number":
        out.append("finite")
    if "pattern" in s:
        out.append(f"matches `{s['pattern']}`")
    if isinstance(s.get("additionalProperties"), dict):
        out += [f"values: {c}" for c in _constraints(s["additionalProperties"])]
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def field_table(cls: type) -> str:
    rows = [
        "| Field | Type | Presence | Default | Constraints | Meaning |",
        "|---|---|---|---|---|---|",
        f"| `peft_type` | string | REQUIRED | — | exactly `{cls.peft_type}` | the adapter method |",
    ]
    for f in cls.typed_fields():
        schema, required = f.metadata["schema"], f.metadata.get("required", False)
        if required:
            default = "—"
        elif f.default is not dataclasses.MISSING:
            default = f"`{json.dumps(f.default)}`"
        else:
            default = f"`{json.dumps(f.default_factory())}`"
        constraints = "; ".join(dict.fromkeys(_constraints(schema))) or "—"
        rows.append(
            f"| `{f.name}` | {_cell(_type(schema))} | {'REQUIRED' if required else 'OPTIONAL'} | {_cell(default)} "
            f"| {_cell(constraints)} | {_cell(f.metadata['doc'])} |"
        )
    return "\n".join(rows)


def metadata_table() -> str:
    rows = ["| Key | Presence | Value | Meaning |", "|---|---|---|---|"]
    for key, presence, schema, doc in METADATA_KEYS:
        value = "; ".join(_constraints(schema)) or _type(schema)
        if "contentMediaType" in schema:
            value = "string holding a JSON object"
        rows.append(f"| `{key}` | {presence} | {_cell(value)} | {_cell(doc)} |")
    rows.append("| any other key | OPTIONAL | string | ignored by readers of this version; not carried over when an adapter is rewritten |")
    return "\n".join(rows)


def error_table() -> str:
    rows = ["| Code | Severity | Raised as | Meaning |", "|---|---|---|---|"]
    for code, (cls_name, meaning) in CODES.items():
        severity = "error" if cls_name else "warning"
        rows.append(f"| `{code}` | {severity} | {f'`{cls_name}`' if cls_name else '—'} | {_cell(meaning)} |")
    return "\n".join(rows)


def vector_table(files: dict[str, bytes]) -> str:
    rows = ["| Vector | Form | Expect | Contents |", "|---|---|---|---|"]
    for kind in ("valid", "invalid"):
        names = sorted({p.split("/")[2] for p in files if p.startswith(f"vectors/{kind}/")})
        for name in names:
            exp = json.loads(files[f"vectors/{kind}/{name}/expected.json"])
            expect = "loads" if kind == "valid" else f"`{exp['code']}`"
            rows.append(f"| `{kind}/{name}` | {exp['form']} | {expect} | {_cell(exp['description'])} |")
    return "\n".join(rows)


_BLOCK = re.compile(r"(<!-- BEGIN GENERATED: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- END GENERATED -->)", re.S)


def render_readme(text: str, files: dict[str, bytes]) -> str:
    """``text`` with every generated block rewritten.  Raises KeyError for an unknown block."""
    blocks: dict[str, Callable[[], str]] = {
        **{f"fields-{schema_name(k.config)}": (lambda c=k.config: field_table(c)) for k in KINDS.values()},
        "metadata": metadata_table,
        "error-codes": error_table,
        "vectors": lambda: vector_table(files),
    }
    seen = set()

    def sub(m: re.Match) -> str:
        seen.add(m["name"])
        return m[1] + blocks[m["name"]]() + "\n" + m[4]

    out = _BLOCK.sub(sub, text)
    missing = set(blocks) - seen
    if missing:
        raise KeyError(f"README lacks generated blocks: {sorted(missing)}")
    return out


# ---------------------------------------------------------------------------------------------
# tensors and references


def dyadic(shape: tuple[int, ...], seed: int, *, positive: bool = False, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Deterministic values k/8, k in {±1..±4} (never zero, so no signed zeros arise)."""
    n = math.prod(shape)
    vals = []
    for i in range(n):
        k = (i * 5 + (i // 3) * 3 + seed * 7) % 8 - 4  # -4..3
        k = k + 1 if k >= 0 else k  # -4..-1, 1..4
        vals.append(abs(k) if positive else k)
    return (torch.tensor(vals, dtype=torch.float64) / 8).reshape(shape).to(dtype)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ref_scaling(cfg: dict[str, Any], module: str) -> tuple[int, float]:
    """PEFT's rank/alpha resolution, written out independently of adapterkit."""

    def first(pattern: dict[str, Any], default: Any) -> Any:
        for key, value in pattern.items():
            if re.match(rf"(.*\.)?({key})$", module):
                return value
        return default

    r = first(cfg.get("rank_pattern", {}), cfg.get("r", 8))
    alpha = first(cfg.get("alpha_pattern", {}), cfg.get("lora_alpha", 8))
    return r, (alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r)


def ref_delta(a: torch.Tensor, b: torch.Tensor, *, embedding: bool, fan_in_fan_out: bool, scaling: float) -> np.ndarray:
    """ΔW in fp64 numpy (exact for the dyadic vectors), cast to fp32."""
    A, B = a.double().numpy(), b.double().numpy()
    if embedding:
        d = (B @ A).T
    elif A.ndim == 2:
        d = B @ A
        if fan_in_fan_out:
            d = d.T
    else:
        d = np.einsum("or,r...->o...", B.reshape(B.shape[0], B.shape[1]), A)
    return np.ascontiguousarray(d * scaling).astype("<f4")


def lora_references(config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    out = {}
    for key in tensors:
        m = re.fullmatch(r"base_model\.model\.(.+)\.(lora_A\.weight|lora_embedding_A)", key)
        if not m:
            continue
        module, embedding = m[1], m[2] == "lora_embedding_A"
        b = tensors[f"{P}{module}." + ("lora_embedding_B" if embedding else "lora_B.weight")]
        r, s = ref_scaling(config, module)
        d = ref_delta(tensors[key], b, embedding=embedding, fan_in_fan_out=bool(config.get("fan_in_fan_out")), scaling=s)
        out[module] = {"rank": r, "scaling": s, "shape": list(d.shape), "sha256": sha256(d.tobytes())}
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------
# vectors


def st_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    return b"".join(encode(tensors, metadata))


def raw_st(header: dict[str, Any], data: bytes) -> bytes:
    """A safetensors file from an arbitrary header object (for malformed containers)."""
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def file_meta(config: dict[str, Any], version: str = VERSION) -> dict[str, str]:
    return {
        "format": "pt",
        "adapterkit.version": version,
        "adapterkit.config": json.dumps(config, sort_keys=True, separators=(",", ":")),
    }


def peft_config_text(config: dict[str, Any]) -> bytes:
    return json.dumps(config, indent=2, sort_keys=True).encode("utf-8")


def lora(**kw: Any) -> LoraConfig:
    return LoraConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()})


def linear(module: str, r: int, n_in: int, n_out: int, seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return {
        f"{P}{module}.lora_A.weight": dyadic((r, n_in), seed, dtype=dtype),
        f"{P}{module}.lora_B.weight": dyadic((n_out, r), seed + 1, dtype=dtype),
    }


Q, K, V = "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"
Q1, V1 = "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"


def valid_vectors() -> list[dict[str, Any]]:
    """Each: name, description, form, config (AdapterConfig), tensors; optional ``write`` override."""
    vs: list[dict[str, Any]] = []

    def add(name: str, description: str, form: str, config: Any, tensors: dict[str, torch.Tensor], **kw: Any) -> None:
        vs.append({"name": name, "description": description, "form": form, "config": config, "tensors": tensors, **kw})

    cfg = lora(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    t = {**linear(Q, 2, 6, 4, 1), **linear(V, 2, 6, 4, 3)}
    add("lora_linear_dir", "LoRA on two Linear layers, r=2, alpha=4 (scaling 2)", "dir", cfg, t)
    add("lora_linear_file", "the same adapter in the single-file form", "file", cfg, t)

    cfg = lora(r=2, lora_alpha=2, target_modules=["c_attn"], fan_in_fan_out=True)
    add("lora_fan_in_fan_out", "LoRA on a transformers Conv1D (fan_in_fan_out): ΔW is (in, out)", "file", cfg,
        linear("transformer.h.0.attn.c_attn", 2, 4, 12, 5))

    cfg = lora(r=2, lora_alpha=8, target_modules=["embed_tokens"])
    t = {
        f"{P}model.embed_tokens.lora_embedding_A": dyadic((2, 10), 7),
        f"{P}model.embed_tokens.lora_embedding_B": dyadic((6, 2), 8),
        f"{P}model.embed_tokens.base_layer.weight": dyadic((10, 6), 9),
    }
    add("lora_embedding", "LoRA on an Embedding, with the base embedding PEFT saves beside it", "dir", cfg, t)

    cfg = lora(r=2, lora_alpha=4, target_modules=["conv", "proj"])
    t = {
        f"{P}conv.lora_A.weight": dyadic((2, 3, 3, 3), 10),
        f"{P}conv.lora_B.weight": dyadic((4, 2, 1, 1), 11),
        f"{P}proj.lora_A.weight": dyadic((2, 4, 1, 1), 12),
        f"{P}proj.lora_B.weight": dyadic((5, 2, 1, 1), 13),
    }
    add("lora_conv2d", "LoRA on a 3x3 Conv2d and a 1x1 Conv2d", "file", cfg, t)

    cfg = lora(r=2, lora_alpha=1, target_modules=["conv1"])
    t = {
        f"{P}encoder.conv1.lora_A.weight": dyadic((2, 3, 5), 14, dtype=torch.float16),
        f"{P}encoder.conv1.lora_B.weight": dyadic((4, 2, 1), 15, dtype=torch.float16),
    }
    add("lora_conv1d", "LoRA on a Conv1d (kernel 5), stored in F16, scaling 1/2", "dir", cfg, t)

    cfg = lora(r=2, lora_alpha=4, target_modules=["q_proj"], lora_bias=True)
    t = {**linear(Q, 2, 6, 4, 16), f"{P}{Q}.lora_B.bias": dyadic((4,), 17)}
    add("lora_bias", "lora_bias=true: lora_B.bias (out,) beside each lora_B", "file", cfg, t)

    cfg = lora(r=2, lora_alpha=4, target_modules=["q_proj", "conv"], use_dora=True)
    t = {
        **linear(Q, 2, 6, 4, 18),
        f"{P}{Q}.lora_magnitude_vector": dyadic((4,), 19, positive=True),
        f"{P}conv.lora_A.weight": dyadic((2, 3, 3, 3), 20),
        f"{P}conv.lora_B.weight": dyadic((4, 2, 1, 1), 21),
        f"{P}conv.lora_magnitude_vector": dyadic((1, 4, 1, 1), 22, positive=True),
    }
    add("lora_dora", "DoRA on a Linear ((out,) magnitude) and a Conv2d ((1, out, 1, 1) magnitude)", "dir", cfg, t)

    cfg = lora(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_rslora=True)
    t = {**linear(Q, 4, 6, 4, 23, torch.bfloat16), **linear(V, 4, 6, 4, 25, torch.bfloat16)}
    add("lora_rslora", "rsLoRA, r=4, alpha=8: scaling alpha/sqrt(r) = 4; stored in BF16", "file", cfg, t)

    rank_pattern = {"^model.layers.1.self_attn.v_proj": 1, "layers.0.self_attn.q_proj": 2, "q_proj": 3}
    cfg = lora(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], rank_pattern=rank_pattern,
               alpha_pattern={"model.layers.1.self_attn.q_proj": 12, "v_proj": 16})
    t = {**linear(Q, 2, 6, 4, 27), **linear(Q1, 3, 6, 4, 29), **linear(V, 4, 6, 4, 31), **linear(V1, 1, 6, 4, 33)}
    add("lora_rank_pattern", "rank_pattern (first matching key in file order, a `^` key spelling a whole name) and alpha_pattern",
        "dir", cfg, t)

    cfg = lora(r=2, lora_alpha=4, target_modules=["q_proj"], modules_to_save=["score"], task_type="SEQ_CLS")
    t = {
        **linear(Q, 2, 6, 4, 35, torch.bfloat16),
        f"{P}score.weight": dyadic((3, 6), 37),
        f"{P}score.bias": dyadic((3,), 38),
    }
    add("lora_modules_to_save", "LoRA (BF16) plus a whole `score` module (F32) from modules_to_save", "file", cfg, t)

    sub = lora(r=2, lora_alpha=2, target_modules=["q_proj"])
    add("lora_subfolder", "PEFT layout of a non-default adapter: the files live in the subfolder `other/`", "dir", sub,
        linear(Q, 2, 6, 4, 39), subdir="other")

    peft_cfg = {
        "alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": "example/tiny-llama", "bias": "none",
        "exclude_modules": None, "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
        "layers_pattern": None, "layers_to_transform": None, "lora_alpha": 16, "lora_bias": False, "lora_dropout": 0.05,
        "modules_to_save": None, "peft_type": "LORA", "peft_version": "0.21.2", "r": 4, "rank_pattern": {},
        "revision": None, "target_modules": ["v_proj", "q_proj"], "task_type": "CAUSAL_LM", "use_dora": False,
        "use_rslora": False,
    }
    add("peft_profile", "written as PEFT writes it: __metadata__ is only {\"format\": \"pt\"}, PEFT's own config keys", "dir",
        peft_cfg, {**linear(Q, 4, 6, 4, 41), **linear(V, 4, 6, 4, 43)}, write="peft")

    future = {"future_field": {"nested": [1, 2]}, "lora_alpha": 4, "peft_type": "LORA", "r": 2, "target_modules": ["q_proj"]}
    add("future_minor", "format version 1.7 with an unknown metadata key and an unknown config field: read, both ignored",
        "file", future, linear(Q, 2, 6, 4, 45), write="future")

    cfg = IA3Config(target_modules=("k_proj", "v_proj", "down_proj"), feedforward_modules=("down_proj",))
    t = {
        f"{P}model.layers.0.self_attn.k_proj.ia3_l": dyadic((4, 1), 46, positive=True, dtype=torch.float64),
        f"{P}model.layers.0.self_attn.v_proj.ia3_l": dyadic((4, 1), 47, positive=True, dtype=torch.float64),
        f"{P}model.layers.0.mlp.down_proj.ia3_l": dyadic((1, 16), 48, positive=True, dtype=torch.float64),
    }
    add("ia3_feedforward", "IA3 (F64): (out, 1) vectors for attention, (1, in) for the feedforward down_proj", "dir", cfg, t)

    cfg = PromptTuningConfig(num_virtual_tokens=4, token_dim=8, task_type="CAUSAL_LM", num_layers=2, num_attention_heads=2)
    add("prompt_tuning", "prompt tuning, 4 virtual tokens x token_dim 8", "file", cfg, {"prompt_embeddings": dyadic((4, 8), 49)})

    cfg = PrefixTuningConfig(num_virtual_tokens=3, token_dim=4, num_layers=2, num_attention_heads=2, prefix_projection=True,
                             encoder_hidden_size=8, task_type="CAUSAL_LM")
    add("prefix_tuning", "projected prefix tuning: (num_virtual_tokens, 2·num_layers·token_dim) = (3, 16), the projection's output",
        "dir", cfg, {"prompt_embeddings": dyadic((3, 16), 50)})

    cfg = PTuningConfig(num_virtual_tokens=2, token_dim=6, num_transformer_submodules=2, encoder_hidden_size=8,
                        task_type="SEQ_2_SEQ_LM")
    add("p_tuning", "P-tuning on an encoder-decoder (2 submodules): the encoder's output, (2·2, 6)", "file", cfg,
        {"prompt_embeddings": dyadic((4, 6), 51)})
    return vs


def write_valid(v: dict[str, Any], root: Path) -> tuple[str, Path]:
    """Write one valid vector under ``root``; returns (path in expected.json, path to load)."""
    write = v.get("write")
    if write == "peft":
        (root / "adapter_model.safetensors").write_bytes(st_bytes(v["tensors"], {"format": "pt"}))
        (root / "adapter_config.json").write_bytes(peft_config_text(v["config"]))
        return ".", root
    if write == "future":
        meta = {**file_meta(v["config"], "1.7"), "adapterkit.future_key": "ignored by 1.0 readers"}
        (root / "adapter.safetensors").write_bytes(st_bytes(v["tensors"], meta))
        return "adapter.safetensors", root / "adapter.safetensors"
    adapter = Adapter.from_tensors(v["config"], v["tensors"])
    if v["form"] == "file":
        adapterkit.save(adapter, root / "adapter.safetensors", form="file")
        return "adapter.safetensors", root / "adapter.safetensors"
    adapterkit.save(adapter, root / v.get("subdir", ""), form="dir", overwrite=True)  # root exists, empty
    return ".", root


def expected_valid(v: dict[str, Any], rel: str, load_path: Path) -> dict[str, Any]:
    tensors = v["tensors"]
    loaded = adapterkit.load(load_path)
    config = loaded.config.to_dict()  # key order as stored in the file
    given = v["config"] if isinstance(v["config"], dict) else v["config"].to_dict()
    if any(config.get(k) != val for k, val in given.items()):
        raise AssertionError(f"valid vector {v['name']}: the config did not survive the round trip")
    exp: dict[str, Any] = {
        "description": v["description"],
        "form": v["form"],
        "path": rel,
        "peft_type": config["peft_type"],
        "format_version": None if v.get("write") == "peft" else ("1.7" if v.get("write") == "future" else VERSION),
        "config": config,
        "tensors": {
            k: {"dtype": str(tensors[k].dtype).removeprefix("torch."), "shape": list(tensors[k].shape),
                "sha256": sha256(tensor_bytes(tensors[k]))}
            for k in sorted(tensors)
        },
        "warnings": [],
    }
    dtype_names = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16"}
    for info in exp["tensors"].values():
        info["dtype"] = dtype_names[info["dtype"]]
    if config["peft_type"] == "LORA":
        exp["delta_weights"] = lora_references(config, tensors)
    # generation-time self check: adapterkit must agree with the references
    problems = adapterkit.validate(load_path)
    if problems:
        raise AssertionError(f"valid vector {v['name']}: {[str(p) for p in problems]}")
    for module, ref in exp.get("delta_weights", {}).items():
        got = loaded.delta_weight(module, dtype=torch.float32)
        if sha256(tensor_bytes(got)) != ref["sha256"] or loaded.module(module).scaling != ref["scaling"]:
            raise AssertionError(f"valid vector {v['name']}: adapterkit's ΔW/scaling for {module} disagrees with the reference")
    return exp


def invalid_vectors() -> list[dict[str, Any]]:
    """Each: name, description, code, form, and files {relative path: bytes} (path[0] is loaded)."""
    vs: list[dict[str, Any]] = []
    base = lora(r=2, lora_alpha=4, target_modules=["q_proj"]).to_dict()
    good_t = linear(Q, 2, 6, 4, 1)
    good = st_bytes(good_t, file_meta(base))
    a_key, b_key = f"{P}{Q}.lora_A.weight", f"{P}{Q}.lora_B.weight"
    meta = file_meta(base)
    F = "adapter.safetensors"

    def add(name: str, code: str, description: str, files: dict[str, bytes], path: str = F) -> None:
        form = "file" if path.endswith(".safetensors") else "dir"
        vs.append({"name": name, "code": code, "description": description, "form": form, "path": path, "files": files})

    def one_tensor(header_entry: dict[str, Any], data: bytes, metadata: dict[str, str] | None = None) -> bytes:
        return raw_st({"__metadata__": metadata or meta, a_key: header_entry}, data)

    a_bytes = tensor_bytes(good_t[a_key])
    add("file_too_short", "truncated-file", "a 4-byte file, too short for the header length", {F: good[:4]})
    add("truncated_data", "truncated-file", "the last 4 bytes of tensor data are missing", {F: good[:-4]})
    add("header_length_past_eof", "truncated-file", "the header length points past the end of the file",
        {F: struct.pack("<Q", len(good)) + good[8:]})
    add("header_not_json", "header-invalid", "the header bytes are not JSON",
        {F: struct.pack("<Q", 16) + b"{not json here!}"})
    add("header_not_object", "header-invalid", "the header is a JSON array, not an object",
        {F: struct.pack("<Q", 8) + b"[]      "})
    add("unknown_dtype", "header-invalid", "a tensor with dtype C64, which safetensors does not define",
        {F: one_tensor({"dtype": "C64", "shape": [2, 6], "data_offsets": [0, 96]}, bytes(96))})
    add("offsets_size_mismatch", "offset-out-of-range", "data_offsets span 40 bytes for a 2x6 F32 tensor (48)",
        {F: one_tensor({"dtype": "F32", "shape": [2, 6], "data_offsets": [0, 40]}, a_bytes[:40])})
    add("offsets_hole", "offset-out-of-range", "the only tensor starts at byte 8 of the data, leaving a hole",
        {F: one_tensor({"dtype": "F32", "shape": [2, 6], "data_offsets": [8, 56]}, bytes(8) + a_bytes)})
    b_bytes = tensor_bytes(good_t[b_key])
    add("offsets_overlap", "offset-out-of-range", "lora_A and lora_B both claim data bytes [0, 32)",
        {F: raw_st({"__metadata__": file_meta(lora(r=2, lora_alpha=4, target_modules=["q_proj"]).to_dict()),
                    a_key: {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]},
                    b_key: {"dtype": "F32", "shape": [4, 2], "data_offsets": [0, 32]}}, b_bytes)})
    add("trailing_bytes", "offset-out-of-range", "8 bytes after the last tensor", {F: good + bytes(8)})
    add("metadata_not_strings", "metadata-invalid", "__metadata__ maps `format` to a number",
        {F: raw_st({"__metadata__": {"format": 1}, a_key: {"dtype": "F32", "shape": [2, 6], "data_offsets": [0, 48]}}, a_bytes)})
    add("int_dtype", "dtype-unsupported", "LoRA factors stored as I32",
        {F: st_bytes({k: v.mul(8).to(torch.int32) for k, v in good_t.items()}, meta)})
    add("version_major_2", "version-unsupported", "adapterkit.version 2.0: an unknown major version",
        {F: st_bytes(good_t, file_meta(base, "2.0"))})
    add("version_malformed", "metadata-invalid", "adapterkit.version `1` lacks the minor part",
        {F: st_bytes(good_t, file_meta(base, "1"))})
    add("version_leading_zero", "metadata-invalid", "adapterkit.version `1.01` has a leading zero",
        {F: st_bytes(good_t, file_meta(base, "1.01"))})
    add("format_not_pt", "metadata-invalid", "__metadata__ format is `np`",
        {F: st_bytes(good_t, {**meta, "format": "np"})})
    no_version = {k: v for k, v in meta.items() if k != "adapterkit.version"}
    add("single_file_without_version", "metadata-invalid", "adapterkit.config present but adapterkit.version absent",
        {F: st_bytes(good_t, no_version)})
    loha = {"peft_type": "LOHA", "r": 2, "alpha": 4, "target_modules": ["q_proj"]}
    add("peft_type_loha", "peft-type-unsupported", "peft_type LOHA, a method this version does not define",
        {F: st_bytes({f"{P}{Q}.hada_w1_a": dyadic((4, 2), 1)}, file_meta(loha))})
    add("embedded_config_not_json", "config-invalid", "adapterkit.config is not valid JSON",
        {F: st_bytes(good_t, {**meta, "adapterkit.config": "{\"peft_type\": \"LORA\","})})
    add("config_file_not_json", "config-invalid", "adapter_config.json is not valid JSON",
        {"adapter_config.json": b"{\n  \"peft_type\": \"LORA\",\n", "adapter_model.safetensors": st_bytes(good_t, {"format": "pt"})},
        path=".")
    add("config_field_wrong_type", "config-invalid", "r is the string \"2\"",
        {F: st_bytes(good_t, file_meta({**base, "r": "2"}))})
    add("config_missing_dir", "config-missing", "a directory with adapter_model.safetensors but no adapter_config.json",
        {"adapter_model.safetensors": st_bytes(good_t, {"format": "pt"})}, path=".")
    add("config_missing_file", "config-missing", "a .safetensors without adapterkit.config and no adapter_config.json beside it",
        {F: st_bytes(good_t, {"format": "pt"})})
    add("ambiguous_adapter", "ambiguous-adapter", "two PEFT subfolders (`first/`, `second/`) and no adapter named",
        {f"{sub}/{name}": data for sub in ("first", "second") for name, data in (
            ("adapter_config.json", peft_config_text(base)), ("adapter_model.safetensors", st_bytes(good_t, {"format": "pt"})))},
        path=".")
    add("not_an_adapter", "not-an-adapter", "a directory with neither adapter_config.json nor adapter weights",
        {"README.md": b"# not an adapter\n"}, path=".")
    add("dir_embedded_config_differs", "metadata-invalid",
        "directory form whose weights carry an adapterkit.config (r=4) that differs from adapter_config.json (r=2)",
        {"adapter_config.json": peft_config_text(base),
         "adapter_model.safetensors": st_bytes(good_t, file_meta({**base, "r": 4}))}, path=".")
    add("weights_missing", "weights-missing", "a directory with adapter_config.json but no weights file",
        {"adapter_config.json": peft_config_text(base)}, path=".")
    add("lora_shape_vs_r", "shape-mismatch", "config r=4 but lora_A is (2, 6) and lora_B (4, 2)",
        {F: st_bytes(good_t, file_meta({**base, "r": 4}))})
    add("lora_shape_vs_rank_pattern", "shape-mismatch", "rank_pattern gives q_proj rank 3; the tensors have rank 2",
        {F: st_bytes(good_t, file_meta({**base, "rank_pattern": {"q_proj": 3}}))})
    add("lora_conv_b_kernel", "shape-mismatch", "conv LoRA whose lora_B has a 3x3 kernel instead of 1x1",
        {F: st_bytes({f"{P}conv.lora_A.weight": dyadic((2, 3, 3, 3), 1), f"{P}conv.lora_B.weight": dyadic((4, 2, 3, 3), 2)},
                     file_meta({**base, "target_modules": ["conv"]}))})
    add("lone_lora_A", "missing-partner", "lora_A without its lora_B",
        {F: st_bytes({a_key: good_t[a_key]}, meta)})
    nan_t = dict(good_t)
    nan_t[b_key] = good_t[b_key].clone()
    nan_t[b_key][1, 1] = float("nan")
    add("non_finite", "non-finite", "lora_B holds a NaN", {F: st_bytes(nan_t, meta)})
    add("lora_bias_without_flag", "unexpected-key", "lora_B.bias present while lora_bias=false",
        {F: st_bytes({**good_t, f"{P}{Q}.lora_B.bias": dyadic((4,), 3)}, meta)})
    add("dora_without_magnitude", "missing-partner", "use_dora=true but no lora_magnitude_vector",
        {F: st_bytes(good_t, file_meta({**base, "use_dora": True}))})
    add("dora_magnitude_shape", "shape-mismatch", "DoRA magnitude (1, 4) for a Linear; (4,) is required",
        {F: st_bytes({**good_t, f"{P}{Q}.lora_magnitude_vector": dyadic((1, 4), 3, positive=True)},
                     file_meta({**base, "use_dora": True}))})
    ia3 = IA3Config(target_modules=("k_proj", "down_proj"), feedforward_modules=("down_proj",)).to_dict()
    add("ia3_feedforward_shape", "shape-mismatch", "IA3 feedforward module stored (out, 1) instead of (1, in)",
        {F: st_bytes({f"{P}model.layers.0.mlp.down_proj.ia3_l": dyadic((4, 1), 1, positive=True),
                      f"{P}model.layers.0.self_attn.k_proj.ia3_l": dyadic((4, 1), 2, positive=True)}, file_meta(ia3))})
    pt = PromptTuningConfig(num_virtual_tokens=4, token_dim=8).to_dict()
    add("prompt_embeddings_shape", "shape-mismatch", "prompt_embeddings (4, 6) for num_virtual_tokens=4, token_dim=8",
        {F: st_bytes({"prompt_embeddings": dyadic((4, 6), 1)}, file_meta(pt))})
    add("prompt_embeddings_missing", "tensor-missing", "a prompt-tuning adapter without prompt_embeddings",
        {F: st_bytes({"other": dyadic((4, 8), 1)}, file_meta(pt))})
    prefix = {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 3, "token_dim": 4, "num_attention_heads": 2}
    add("prefix_without_num_layers", "config-invalid", "prefix tuning config without num_layers (the shape is undefined)",
        {F: st_bytes({"prompt_embeddings": dyadic((3, 16), 1)}, file_meta(prefix))})
    return vs


# ---------------------------------------------------------------------------------------------
# assembling


def _collect(root: Path, prefix: str) -> dict[str, bytes]:
    return {f"{prefix}/{p.relative_to(root).as_posix()}": p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def vectors() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for v in valid_vectors():
            root = Path(tmp) / "valid" / v["name"]
            root.mkdir(parents=True)
            rel, load_path = write_valid(v, root)
            exp = expected_valid(v, rel, load_path)
            (root / "expected.json").write_bytes(dump_json(exp))
        for v in invalid_vectors():
            root = Path(tmp) / "invalid" / v["name"]
            root.mkdir(parents=True)
            for rel, data in v["files"].items():
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(data)
            exp = {"description": v["description"], "form": v["form"], "path": v["path"], "code": v["code"]}
            (root / "expected.json").write_bytes(dump_json(exp))
            _check_invalid(v["name"], root / v["path"], v["code"])
        out.update(_collect(Path(tmp), "vectors"))
    return out


def _check_invalid(name: str, path: Path, code: str) -> None:
    try:
        adapterkit.load(path)
    except adapterkit.AdapterkitError as exc:
        if exc.code != code:
            raise AssertionError(f"invalid vector {name}: load raised {exc.code}, expected {code}: {exc}") from exc
    else:
        raise AssertionError(f"invalid vector {name}: load succeeded, expected {code}")
    codes = [p.code for p in adapterkit.validate(path) if p.severity == "error"]
    if code not in codes:
        raise AssertionError(f"invalid vector {name}: validate gave {codes}, expected {code}")


def generate() -> dict[str, bytes]:
    """Every generated file, keyed by path relative to ``spec/v1`` (README.md included)."""
    files = {**schemas(), **vectors()}
    files["README.md"] = render_readme(README.read_text(encoding="utf-8"), files).encode("utf-8")
    return files


def on_disk() -> dict[str, bytes]:
    out = {p: (SPEC / p).read_bytes() for p in ("README.md",) if (SPEC / p).is_file()}
    for sub in ("schema", "vectors"):
        if (SPEC / sub).is_dir():
            out.update(_collect(SPEC / sub, sub))
    return out


def differences(files: dict[str, bytes] | None = None) -> list[str]:
    """Paths (relative to spec/v1) whose bytes on disk differ from a fresh generation."""
    files = generate() if files is None else files
    disk = on_disk()
    return sorted(p for p in set(files) | set(disk) if files.get(p) != disk.get(p))


def write(files: dict[str, bytes]) -> list[str]:
    changed = differences(files)
    for rel in changed:
        path = SPEC / rel
        if rel in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(files[rel])
        else:
            path.unlink()
    for sub in ("schema", "vectors"):  # drop directories emptied by removals
        for d in sorted((SPEC / sub).rglob("*"), reverse=True):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if anything differs")
    args = parser.parse_args(argv)
    files = generate()
    if args.check:
        diff = differences(files)
        for rel in diff:
            print(f"stale: spec/v1/{rel}")
        if diff:
            print("run `python scripts/make_spec.py` to regenerate", file=sys.stderr)
        return 1 if diff else 0
    for rel in write(files):
        print(f"wrote: spec/v1/{rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
