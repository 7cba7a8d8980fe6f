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
import io
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
from adapterkit.dtypes import DTYPE_NAMES
from adapterkit.errors import API_CODES, CODES
from adapterkit.io.digest import combine, config_digest, digest_metadata, tensor_digest
from adapterkit.io.safetensors_file import encode, tensor_bytes
from adapterkit.kinds import KINDS
from adapterkit.kinds.loha import LoHaConfig
from adapterkit.kinds.lokr import LoKrConfig

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "spec" / "v1"
README = SPEC / "README.md"
VERSION = adapterkit.FORMAT_VERSION  # what adapterkit.save writes (1.1: with the content digest)
V1_0 = "1.0"  # the hand-built files (raw valid vectors, invalid vectors) keep the version without a digest
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
        {"type": "string", "pattern": r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(?![\s\S])"},
        "format version `MAJOR.MINOR`, the whole string (decimal, no leading zeros, no whitespace); this version writes "
        "`1.2` (`1.0` and `1.1` files stay valid); a major other than 1 is `version-unsupported` (§5.2 rule 7), "
        "not a schema error",
    ),
    (
        "adapterkit.config",
        "REQUIRED in the single-file form; absent in the directory form",
        {"type": "string", "contentMediaType": "application/json"},
        "the adapter config as compact JSON, keys sorted except in the pattern objects (§4.2)",
    ),
    (
        "adapterkit.digest",
        "REQUIRED of writers of 1.1 and later, with `adapterkit.digests`; OPTIONAL for readers",
        {"type": "string", "pattern": r"^sha256:[0-9a-f]{64}(?![\s\S])"},
        "the content digest (§5.5): SHA-256 over the config and every tensor, independent of form and tensor order",
    ),
    (
        "adapterkit.digests",
        "present exactly when `adapterkit.digest` is",
        {"type": "string", "pattern": r"^(?:[0-9a-f]{64})+(?![\s\S])"},
        "the entry digests the content digest combines (§5.5): the config's, then each tensor's in code-point order of "
        "the keys, as hex",
    ),
    (
        "adapterkit.recipe",
        "OPTIONAL, both forms",
        {"type": "string", "contentMediaType": "application/json", "contentSchema": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["op", "adapterkit"],
                "properties": {"op": {"type": "string", "minLength": 1}, "adapterkit": {"type": "string"}},
            },
        }},
        "how adapterkit made the adapter (§5.6): a JSON array of steps as compact JSON with sorted keys, non-ASCII "
        "characters as they are; provenance only, not part of the adapter's content",
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
            value = f"string holding a JSON {'array' if schema.get('contentSchema', {}).get('type') == 'array' else 'object'}"
        rows.append(f"| `{key}` | {presence} | {_cell(value)} | {_cell(doc)} |")
    rows.append("| any other key | OPTIONAL | string | ignored by readers of this version; not carried over when an adapter is rewritten |")
    return "\n".join(rows)


def error_table() -> str:
    """The codes a reader reports for a file, and the warnings (§13)."""
    rows = ["| Code | Severity | Meaning |", "|---|---|---|"]
    for code, (cls_name, meaning) in CODES.items():
        if code not in API_CODES:
            rows.append(f"| `{code}` | {'error' if cls_name else 'warning'} | {_cell(meaning)} |")
    return "\n".join(rows)


def api_code_table() -> str:
    """adapterkit's codes for failures of its API, which are not properties of a file (§13)."""
    rows = ["| Code | Meaning |", "|---|---|"]
    rows += [f"| `{code}` | {_cell(CODES[code][1])} |" for code in CODES if code in API_CODES]
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
        "api-codes": api_code_table,
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
    """ΔW by §8.6, in numpy, converted to F32.

    The product of the dyadic factors is exact in fp64 and in fp32 alike; the one rounding
    that matters is the scaling: it is a double (§8.3), rounded to the compute dtype, and
    the multiply is a compute-dtype multiply (numpy multiplies an f32 array by an f32
    scalar with a single rounding).  For F64 the result is then rounded once more, to F32.
    """
    reference = a if embedding or a.ndim > 2 else b
    ct = np.float64 if reference.dtype == torch.float64 else np.float32
    A, B = a.double().numpy(), b.double().numpy()
    if embedding:
        d = (B @ A).T
    elif A.ndim == 2:
        d = B @ A
        if fan_in_fan_out:
            d = d.T
    else:
        d = np.einsum("or,r...->o...", B.reshape(B.shape[0], B.shape[1]), A)
    product = np.ascontiguousarray(d).astype(ct)
    assert np.array_equal(product.astype(np.float64), d), "factor product not exact in the compute dtype"
    return (product * ct(scaling)).astype("<f4")


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


def loha_references(config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """ΔW of each LoHa module by §16 [R16-3], in numpy: the products of dyadic factors are exact in
    fp64 and fp32 alike; the one rounding is the multiply by the scaling in fp32."""
    out = {}
    cfg = {**config, "lora_alpha": config.get("alpha", 8)}
    for key in tensors:
        m = re.fullmatch(r"base_model\.model\.(.+)\.hada_w1_a", key)
        if not m:
            continue
        module = m[1]
        f = {p: tensors[f"{P}{module}.{p}"].double().numpy() for p in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")}
        if f"{P}{module}.hada_t1" in tensors:
            t1, t2 = (tensors[f"{P}{module}.hada_t{i}"].double().numpy() for i in (1, 2))
            r1 = np.einsum("abkl,bc,ap->pckl", t1, f["hada_w1_b"], f["hada_w1_a"])
            r2 = np.einsum("abkl,bc,ap->pckl", t2, f["hada_w2_b"], f["hada_w2_a"])
            d = r1 * r2
        else:
            d = (f["hada_w1_a"] @ f["hada_w1_b"]) * (f["hada_w2_a"] @ f["hada_w2_b"])
        product = np.ascontiguousarray(d).astype(np.float32)
        assert np.array_equal(product.astype(np.float64), d), "factor product not exact in fp32"
        r, s = ref_scaling(cfg, module)
        d = (product * np.float32(s)).astype("<f4")
        out[module] = {"rank": r, "scaling": s, "shape": list(d.shape), "sha256": sha256(d.tobytes())}
    return dict(sorted(out.items()))


def lokr_references(config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """ΔW of each LoKr module by §17 [R17-5], in numpy (np.kron pads the smaller rank with leading
    ones, as §17 says); dyadic factors keep every product exact, the scaling multiply rounds once."""
    out = {}
    cfg = {**config, "lora_alpha": config.get("alpha", 8)}
    modules = sorted({re.fullmatch(r"base_model\.model\.(.+)\.lokr_(?:w[12](?:_[ab])?|t2)", k)[1] for k in tensors if ".lokr_" in k})
    for module in modules:
        g = {p: tensors[f"{P}{module}.{p}"].double().numpy() for p in
             ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2") if f"{P}{module}.{p}" in tensors}
        w1 = g["lokr_w1"] if "lokr_w1" in g else g["lokr_w1_a"] @ g["lokr_w1_b"]
        if "lokr_w2" in g:
            w2 = g["lokr_w2"]
        elif "lokr_t2" in g:
            w2 = np.einsum("ijkl,ip,jq->pqkl", g["lokr_t2"], g["lokr_w2_a"], g["lokr_w2_b"])
        else:
            w2 = g["lokr_w2_a"] @ g["lokr_w2_b"]
        d = np.kron(w1[:, :, None, None] if w2.ndim == 4 else w1, w2)
        shape = [w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1], *w2.shape[2:]]
        product = np.ascontiguousarray(d).astype(np.float32)
        assert np.array_equal(product.astype(np.float64), d), "factor product not exact in fp32"
        r, s = ref_scaling(cfg, module)
        d = (product * np.float32(s)).astype("<f4").reshape(shape)
        out[module] = {"rank": r, "scaling": s, "shape": list(d.shape), "sha256": sha256(d.tobytes())}
    return out


# ---------------------------------------------------------------------------------------------
# vectors


def st_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    return b"".join(encode(tensors, metadata))


def raw_st(header: dict[str, Any], data: bytes) -> bytes:
    """A safetensors file from an arbitrary header object (for malformed containers)."""
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def file_meta(config: dict[str, Any], version: str = V1_0) -> dict[str, str]:
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

    steps = [
        {"adapterkit": "0.1.0", "inputs": ["org/math-lora", "./code-lora"], "method": "svd", "op": "combine", "rank": 4,
         "weights": [0.7, 0.3]},
        {"adapterkit": "0.1.0", "balanced": True, "op": "resize", "rank": 2},
    ]
    cfg = lora(r=2, lora_alpha=2, target_modules=["q_proj"])
    add("recipe_file", "a two-step adapterkit.recipe (combine, then resize): provenance, read back as written",
        "file", cfg, linear(Q, 2, 6, 4, 120), recipe=steps)
    add("recipe_dir", "the directory form carries adapterkit.recipe in adapter_model.safetensors", "dir", cfg,
        linear(Q, 2, 6, 4, 122), recipe=steps[1:])

    cfg = IA3Config(target_modules=("k_proj", "v_proj", "down_proj"), feedforward_modules=("down_proj",))
    t = {
        f"{P}model.layers.0.self_attn.k_proj.ia3_l": dyadic((4, 1), 46, positive=True, dtype=torch.float64),
        f"{P}model.layers.0.self_attn.v_proj.ia3_l": dyadic((4, 1), 47, positive=True, dtype=torch.float64),
        f"{P}model.layers.0.mlp.down_proj.ia3_l": dyadic((1, 16), 48, positive=True, dtype=torch.float64),
    }
    add("ia3_feedforward", "IA3 (F64): (out, 1) vectors for attention, (1, in) for the feedforward down_proj", "dir", cfg, t)

    cfg = PromptTuningConfig(num_virtual_tokens=4, token_dim=8, task_type="CAUSAL_LM", num_layers=2, num_attention_heads=2)
    add("prompt_tuning", "prompt tuning, 4 virtual tokens x token_dim 8", "file", cfg, {"prompt_embeddings": dyadic((4, 8), 49)})

    cfg = LoHaConfig(r=2, alpha=4, target_modules=("q_proj", "v_proj"), rank_pattern={"v_proj": 3},
                     alpha_pattern={"v_proj": 6}, task_type="CAUSAL_LM")
    t = {f"{P}{module}.hada_w{i}_{s}": dyadic(shape, 130 + 4 * m + n)
         for m, (module, r) in enumerate([(Q, 2), (V, 3)])
         for n, (i, s, shape) in enumerate([(1, "a", (4, r)), (1, "b", (r, 6)), (2, "a", (4, r)), (2, "b", (r, 6))])}
    add("loha_linear_dir", "LoHa on two Linear layers: q_proj r=2, alpha 4 (scaling 2); v_proj r=3, alpha 6 by the "
        "patterns (scaling 2); ΔW = ((w1_a·w1_b) ⊙ (w2_a·w2_b))·s [R16-3]", "dir", cfg, t)
    add("loha_linear_file", "the same LoHa adapter in the single-file form", "file", cfg, t)
    cfg = LoHaConfig.from_dict({"peft_type": "LOHA", "r": 2, "alpha": 3, "target_modules": ["conv", "conv1", "proj"],
                                "use_effective_conv2d": True, "rank_dropout": 0.25, "module_dropout": 0.5, "init_weights": False})
    t = {
        **{f"{P}conv.hada_w{i}_{s}": dyadic(shape, 140 + n) for n, (i, s, shape) in enumerate(
            [(1, "a", (2, 5)), (1, "b", (2, 3)), (2, "a", (2, 5)), (2, "b", (2, 3))])},
        f"{P}conv.hada_t1": dyadic((2, 2, 3, 3), 144), f"{P}conv.hada_t2": dyadic((2, 2, 3, 3), 145),
        **{f"{P}conv1.hada_w{i}_{s}": dyadic(shape, 146 + n) for n, (i, s, shape) in enumerate(
            [(1, "a", (2, 4)), (1, "b", (2, 3)), (2, "a", (2, 4)), (2, "b", (2, 3))])},
        f"{P}conv1.hada_t1": dyadic((2, 2, 3, 1), 150), f"{P}conv1.hada_t2": dyadic((2, 2, 3, 1), 151),
        **{f"{P}proj.hada_w{i}_{s}": dyadic(shape, 152 + n) for n, (i, s, shape) in enumerate(
            [(1, "a", (5, 2)), (1, "b", (2, 27)), (2, "a", (5, 2)), (2, "b", (2, 27))])},
        f"{P}proj.lora_A.weight": dyadic((2, 27), 156),
    }
    add("loha_conv", "LoHa with use_effective_conv2d: a Conv2d in the CP form (cores (2, 2, 3, 3), ΔW (5, 3, 3, 3)), a Conv1d "
        "in the CP form (cores (2, 2, 3, 1), ΔW (4, 3, 3, 1)) and a plain-form module of 27 columns (a 1×1 or flattened "
        "convolution, or a Linear: the file cannot tell) [R16-2]; scaling 3/2 rounded to fp32; rank_dropout, module_dropout "
        "and init_weights set and ignored [R16-4]; a `proj.lora_A.weight` kept with a warning [R16-5]", "file", cfg, t, warnings=["unexpected-key"])

    cfg = LoKrConfig(r=1, alpha=2, target_modules=("q_proj", "v_proj"), decompose_both=True, rank_pattern={"v_proj": 4},
                     task_type="CAUSAL_LM")
    t = {  # out 16 = 4·4, in 12 = 3·4: q_proj at r=1 all products (1 < max/2 on both sides); v_proj at r=4 all whole
        f"{P}{Q}.lokr_w1_a": dyadic((4, 1), 160), f"{P}{Q}.lokr_w1_b": dyadic((1, 3), 161),
        f"{P}{Q}.lokr_w2_a": dyadic((4, 1), 162), f"{P}{Q}.lokr_w2_b": dyadic((1, 4), 163),
        f"{P}{V}.lokr_w1": dyadic((4, 3), 164), f"{P}{V}.lokr_w2": dyadic((4, 4), 165),
    }
    add("lokr_linear", "LoKr on two Linear layers (out 16 = 4·4, in 12 = 3·4): q_proj at r=1 with decompose_both, both "
        "sides as products; v_proj at r=4 by rank_pattern, both whole (r ≥ max/2); ΔW = kron(W1, W2)·alpha/r [R17-5]",
        "dir", cfg, t)
    cfg = LoKrConfig(r=1, alpha=3, target_modules=("conv", "c1d", "conv1"), use_effective_conv2d=True, rank_pattern={"c1d": 2})
    t = {  # conv: Conv2d 8→6, 3×3: (a, b) = (2, 3), (c, d) = (2, 4), CP core; c1d: Conv1d 4→6, k=3, W2 whole (3-D)
        f"{P}conv.lokr_w1": dyadic((2, 2), 170), f"{P}conv.lokr_t2": dyadic((1, 1, 3, 3), 171),
        f"{P}conv.lokr_w2_a": dyadic((1, 3), 172), f"{P}conv.lokr_w2_b": dyadic((1, 4), 173),
        f"{P}c1d.lokr_w1": dyadic((2, 2), 174), f"{P}c1d.lokr_w2": dyadic((3, 2, 3), 175),
        f"{P}conv1.lokr_w1": dyadic((2, 2), 176), f"{P}conv1.lokr_w2_a": dyadic((3, 1), 177),
        f"{P}conv1.lokr_w2_b": dyadic((1, 4), 178),
    }
    add("lokr_conv", "LoKr with use_effective_conv2d at r=1: a Conv2d's W2 in the CP form (ΔW (6, 8, 3, 3)); a Conv1d's W2 "
        "at r=2 (rank_pattern) whole and 3-D, which kron meets with W1 as (1, a, c) (ΔW (6, 4, 3) from kron's (3, 4, 6)); a 1×1 convolution's W2 "
        "as a product, flattened (ΔW (6, 8)) [R17-5]", "file", cfg, t)

    cfg = PrefixTuningConfig(num_virtual_tokens=3, token_dim=4, num_layers=2, num_attention_heads=2, prefix_projection=True,
                             encoder_hidden_size=8, task_type="CAUSAL_LM")
    add("prefix_tuning", "projected prefix tuning: (num_virtual_tokens, 2·num_layers·token_dim) = (3, 16), the projection's output",
        "dir", cfg, {"prompt_embeddings": dyadic((3, 16), 50)})

    cfg = PTuningConfig(num_virtual_tokens=2, token_dim=6, num_transformer_submodules=2, encoder_hidden_size=8,
                        task_type="SEQ_2_SEQ_LM")
    add("p_tuning", "P-tuning on an encoder-decoder (2 submodules): the encoder's output, (2·2, 6)", "file", cfg,
        {"prompt_embeddings": dyadic((4, 6), 51)})
    more_valid_vectors(add)
    digest_valid_vectors(add)
    order_valid_vectors(add)
    recipe_valid_vectors(add)
    return vs


def torch_save_bytes(obj: Any) -> bytes:
    """``torch.save`` output (deterministic for a given torch release: the archive is named ``archive``)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def more_valid_vectors(add: Callable[..., None]) -> None:
    """The vectors added in revision 2 of the 1.0 text (precision, dtypes, forms, whole-module tensors)."""
    cfg = lora(r=3, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_rslora=True)
    add("lora_rslora_r3", "rsLoRA, r=3, alpha=8: scaling 8/√3 (not a power of two), rounded to F32 before the multiply",
        "file", cfg, {**linear(Q, 3, 8, 8, 60), **linear(V, 3, 8, 8, 62)})

    cfg = lora(r=3, lora_alpha=1, target_modules=["q_proj", "conv"])
    t = {**linear(Q, 3, 6, 8, 64, torch.float64),
         f"{P}conv.lora_A.weight": dyadic((3, 2, 3, 3), 66, dtype=torch.float64),
         f"{P}conv.lora_B.weight": dyadic((4, 3, 1, 1), 67, dtype=torch.float64)}
    add("lora_f64", "F64 factors, scaling 1/3: ΔW computed in F64 (scaling not rounded), then converted to F32", "dir", cfg, t)

    cfg = lora(r=3, lora_alpha=2, target_modules=["q_proj", "k_proj", "conv", "embed_tokens"])
    t = {
        f"{P}{Q}.lora_A.weight": dyadic((3, 6), 68, dtype=torch.float64),
        f"{P}{Q}.lora_B.weight": dyadic((8, 3), 69, dtype=torch.float32),
        f"{P}{K}.lora_A.weight": dyadic((3, 6), 70, dtype=torch.float32),
        f"{P}{K}.lora_B.weight": dyadic((8, 3), 71, dtype=torch.float64),
        f"{P}conv.lora_A.weight": dyadic((3, 2, 3, 3), 72, dtype=torch.float32),
        f"{P}conv.lora_B.weight": dyadic((4, 3, 1, 1), 73, dtype=torch.float64),
        f"{P}model.embed_tokens.lora_embedding_A": dyadic((3, 10), 74, dtype=torch.bfloat16),
        f"{P}model.embed_tokens.lora_embedding_B": dyadic((6, 3), 75, dtype=torch.float64),
    }
    add("lora_mixed_dtypes", "mixed dtypes, scaling 2/3: the reference tensor (B for Linear, A for conv and embedding) "
        "alone picks the compute dtype (q_proj, conv, embedding: F32; k_proj: F64)", "file", cfg, t)

    cfg = lora(r=2, lora_alpha=4, target_modules=["conv3", "temporal"])
    t = {f"{P}conv3.lora_A.weight": dyadic((2, 3, 2, 2, 2), 76), f"{P}conv3.lora_B.weight": dyadic((4, 2, 1, 1, 1), 77),
         f"{P}temporal.lora_A.weight": dyadic((2, 3, 1, 1, 3), 78), f"{P}temporal.lora_B.weight": dyadic((5, 2, 1, 1, 1), 79)}
    add("lora_conv3d", "LoRA on a 2x2x2 Conv3d and a 1x1x3 Conv3d (a Conv3d whose kernel starts 1x1 is not the Conv2d 1x1 case)",
        "file", cfg, t)

    cfg = lora(r=2, lora_alpha=4, target_modules=["q_proj"])
    add("lora_untargeted_module", "tensors for k_proj, which target_modules does not select: read as they are", "file", cfg,
        {**linear(Q, 2, 6, 4, 80), **linear(K, 2, 6, 4, 82)})

    cfg = lora(r=2, lora_alpha=4, target_modules=["embed_tokens"], modules_to_save=["score"])
    t = {
        f"{P}model.embed_tokens.lora_embedding_A": dyadic((2, 10), 84),
        f"{P}model.embed_tokens.lora_embedding_B": dyadic((6, 2), 85),
        f"{P}model.embed_tokens.base_layer.weight": dyadic((10, 6), 86),
        f"{P}model.pos_embed_tokens.base_layer.weight": dyadic((4, 6), 87),
        f"{P}score.weight": dyadic((3, 6), 88),
        f"{P}prescore.weight": dyadic((3, 6), 89),
    }
    add("lora_whole_module_keys", "whole-module tensors: the targeted embedding's base_layer and modules_to_save `score` are "
        "kept silently; `pos_embed_tokens` and `prescore` (no dot boundary) are kept with an unexpected-key warning",
        "file", cfg, t, warnings=["unexpected-key", "unexpected-key"])

    cfg = lora(r=2, lora_alpha=4, target_modules="embed_tokens")
    t = {f"{P}model.embed_tokens.lora_embedding_A": dyadic((2, 10), 122),
         f"{P}model.embed_tokens.lora_embedding_B": dyadic((6, 2), 123),
         f"{P}model.embed_tokens.base_layer.weight": dyadic((10, 6), 124)}
    add("lora_target_string", "target_modules as the string `embed_tokens` must match the whole name, so it does not "
        "select `model.embed_tokens`: the base_layer tensor is kept with an unexpected-key warning", "file", cfg, t,
        warnings=["unexpected-key"])

    cfg = lora(r=2, lora_alpha=4, target_modules=["q_proj"], modules_to_save=["bn"])
    t = {**linear(Q, 2, 6, 4, 90),
         f"{P}bn.weight": dyadic((4,), 92), f"{P}bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
         f"{P}bn.mask": torch.tensor([True, False] * 8), f"{P}bn.codes": torch.arange(-3, 3, dtype=torch.int8)}
    add("lora_modules_to_save_buffers", "modules_to_save tensors of other dtypes (an I64 scalar, BOOL, I8) are not adapter "
        "tensors and keep their dtype; BOOL takes one byte per element", "file", cfg, t)

    cfg = lora(r=2, lora_alpha=4, target_modules=["q_proj"], modules_to_save=["score"])
    add("lora_only_modules_to_save", "no LoRA tensors, only a modules_to_save module: valid, with the empty-adapter warning",
        "file", cfg, {f"{P}score.weight": dyadic((3, 6), 93)}, warnings=["empty-adapter"])

    cfg = lora(r=2, lora_alpha=4, target_modules=["q_proj"])
    add("lora_non_ascii_key", "a module name with non-ASCII characters: \\uXXXX escapes in the header", "file", cfg,
        linear("model.层.q_proj", 2, 6, 4, 94))

    cfg = lora(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], rank_pattern={"proj": 1},
               alpha_pattern={"v_proj)|(.*q_proj": 2})
    add("lora_pattern_wrapped", "pattern keys are spliced into PEFT's wrapper: alpha_pattern key `v_proj)|(.*q_proj` compiles "
        "only wrapped and matches both modules; rank_pattern key `proj` matches neither (dot boundary)", "file", cfg,
        {**linear(Q, 4, 6, 4, 95), **linear(V, 4, 6, 4, 97)}, warnings=["pattern-unmatched"])

    # a config as a person might write it: compact, unsorted, and rank_pattern keys in an order that sorting would change
    cfg_text = (b'{"target_modules":["q_proj","v_proj"],"peft_type":"LORA","r":4,"lora_alpha":8,'
                b'"rank_pattern":{"q_proj":2,"^model.layers.0.self_attn.q_proj":3}}')
    cfg_obj = json.loads(cfg_text)
    t = {**linear(Q, 2, 6, 4, 99), **linear(V, 4, 6, 4, 101)}
    add("dir_config_unsorted", "adapter_config.json compact with unsorted keys; rank_pattern applies in stored order (q_proj "
        "first: rank 2), so validate warns pattern-order", "dir", cfg_obj, t, write="raw", path=".", format_version=None,
        files={"adapter_config.json": cfg_text, "adapter_model.safetensors": st_bytes(t, {"format": "pt"})},
        warnings=["pattern-order"])

    base = lora(r=2, lora_alpha=4, target_modules=["q_proj"]).to_dict()
    t = linear(Q, 2, 6, 4, 103)
    embedded = json.dumps({**base, "lora_alpha": 4.0}, separators=(",", ":"))  # another member order, 4.0 for 4
    add("dir_embedded_config_equal", "directory form whose weights carry an adapterkit.config equal to adapter_config.json as "
        "JSON values (other member order, 4.0 for 4): accepted", "dir", base, t, write="raw", path=".",
        files={"adapter_config.json": peft_config_text(base),
               "adapter_model.safetensors": st_bytes(t, {"format": "pt", "adapterkit.version": V1_0, "adapterkit.config": embedded})})

    t_top, t_sub = linear(Q, 2, 6, 4, 105), linear(Q, 2, 6, 4, 107)
    add("lora_named_subfolder", "adapter_name `second`: the subfolder is read, not the default adapter beside it", "dir", base,
        t_sub, write="raw", path=".", adapter_name="second", format_version=None,
        files={"adapter_config.json": peft_config_text(base), "adapter_model.safetensors": st_bytes(t_top, {"format": "pt"}),
               "second/adapter_config.json": peft_config_text(base),
               "second/adapter_model.safetensors": st_bytes(t_sub, {"format": "pt"})})

    t = linear(Q, 2, 6, 4, 109)
    add("weights_file_path", "the path names a directory form's adapter_model.safetensors: the config beside it applies", "dir",
        base, t, write="raw", path="adapter_model.safetensors", format_version=None,
        files={"adapter_config.json": peft_config_text(base), "adapter_model.safetensors": st_bytes(t, {"format": "pt"})})
    add("prefers_safetensors", "adapter_model.safetensors and adapter_model.bin side by side: the .bin (here not even a "
        "checkpoint) is not read", "dir", base, t, write="raw", path=".", format_version=None,
        files={"adapter_config.json": peft_config_text(base), "adapter_model.safetensors": st_bytes(t, {"format": "pt"}),
               "adapter_model.bin": b"not a torch checkpoint\n"})
    a_b = tensor_bytes(t[f"{P}{Q}.lora_A.weight"]).tobytes() + tensor_bytes(t[f"{P}{Q}.lora_B.weight"]).tobytes()
    entries = {f"{P}{Q}.lora_A.weight": {"dtype": "F32", "shape": [2, 6], "data_offsets": [0, 48]},
               f"{P}{Q}.lora_B.weight": {"dtype": "F32", "shape": [4, 2], "data_offsets": [48, 80]}}
    add("peft_profile_no_metadata", "a PEFT-profile file without __metadata__ (format is optional there)", "dir", base, t,
        write="raw", path=".", format_version=None,
        files={"adapter_config.json": peft_config_text(base), "adapter_model.safetensors": raw_st(entries, a_b)})
    add("peft_profile_null_metadata", "a PEFT-profile file whose __metadata__ is null", "dir", base, t,
        write="raw", path=".", format_version=None,
        files={"adapter_config.json": peft_config_text(base), "adapter_model.safetensors": raw_st({"__metadata__": None, **entries}, a_b)})

    add("bin_safe", "legacy adapter_model.bin (torch.save of plain tensors), read with a restricted unpickler under the PEFT "
        "profile", "dir", base, t, write="raw", path=".", format_version=None, requires="bin",
        files={"adapter_config.json": peft_config_text(base), "adapter_model.bin": torch_save_bytes(dict(sorted(t.items())))})

    zero_key, empty_key = f"{P}score.zero_rows", f"{P}score.zz_empty"
    t = {**linear(Q, 2, 6, 4, 111), f"{P}score.weight": dyadic((3, 6), 113),
         zero_key: torch.zeros((0, 6)), empty_key: torch.zeros((0,))}
    data = b"".join(tensor_bytes(t[k]).tobytes() for k in (f"{P}{Q}.lora_A.weight", f"{P}{Q}.lora_B.weight", f"{P}score.weight"))
    header = {"__metadata__": file_meta(lora(r=2, lora_alpha=4, target_modules=["q_proj"], modules_to_save=["score"]).to_dict()),
              f"{P}{Q}.lora_A.weight": {"dtype": "F32", "shape": [2, 6], "data_offsets": [0, 48]},
              f"{P}{Q}.lora_B.weight": {"dtype": "F32", "shape": [4, 2], "data_offsets": [48, 80]},
              f"{P}score.weight": {"dtype": "F32", "shape": [3, 6], "data_offsets": [80, 152]},
              zero_key: {"dtype": "F32", "shape": [0, 6], "data_offsets": [80, 80]},
              empty_key: {"dtype": "BF16", "shape": [0], "data_offsets": [152, 152]}}
    add("zero_size_tensors", "zero-size tensors at a shared start offset (80, with a non-empty tensor whose key sorts first) "
        "and at the end of the data (152)", "file",
        lora(r=2, lora_alpha=4, target_modules=["q_proj"], modules_to_save=["score"]),
        {**t, empty_key: torch.zeros((0,), dtype=torch.bfloat16)}, write="raw", path="adapter.safetensors",
        files={"adapter.safetensors": raw_st(header, data)})

    cfg = IA3Config(target_modules=("conv", "conv3", "down_proj"), feedforward_modules=("conv3", "down_proj"),
                    modules_to_save=("classifier",))
    t = {
        f"{P}conv.ia3_l": dyadic((1, 4, 1, 1), 114, positive=True),
        f"{P}conv3.ia3_l": dyadic((1, 3, 1, 1, 1), 115, positive=True),
        f"{P}model.layers.0.mlp.gate_down_proj.ia3_l": dyadic((1, 8), 116, positive=True),
        f"{P}classifier.weight": dyadic((2, 8), 120),
        f"{P}model.layers.0.mlp.up_proj.weight": dyadic((8, 4), 121),
    }
    add("ia3_conv", "IA3 on a Conv2d (1, out, 1, 1), a feedforward Conv3d (1, in, 1, 1, 1), and `gate_down_proj`, feedforward "
        "by plain endswith: (1, in); a modules_to_save `classifier`, and an `up_proj.weight` kept with a warning", "file", cfg, t,
        warnings=["unexpected-key"])

    cfg = PrefixTuningConfig(num_virtual_tokens=3, token_dim=4, num_layers=2, num_attention_heads=2,
                             num_transformer_submodules=2, task_type="SEQ_2_SEQ_LM")
    add("prefix_tuning_encoder_decoder", "prefix tuning on an encoder-decoder (2 submodules): still (num_virtual_tokens, "
        "2·num_layers·token_dim) = (3, 16), as PEFT saves it", "file", cfg, {"prompt_embeddings": dyadic((3, 16), 117)})

    cfg = PromptTuningConfig(num_virtual_tokens=4, token_dim=8, task_type="SEQ_CLS", modules_to_save=("classifier", "score"))
    add("prompt_tuning_modules_to_save", "prompt tuning for SEQ_CLS: PEFT saves the `score` head as base_model.score.weight "
        "(prefix base_model., not base_model.model.)", "file", cfg,
        {"prompt_embeddings": dyadic((4, 8), 118), "base_model.score.weight": dyadic((3, 8), 119)})


def write_valid(v: dict[str, Any], root: Path) -> tuple[str, Path]:
    """Write one valid vector under ``root``; returns (path in expected.json, path to load)."""
    write = v.get("write")
    if write == "raw":
        for rel, data in v["files"].items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        return v["path"], root / v["path"]
    if write == "peft":
        (root / "adapter_model.safetensors").write_bytes(st_bytes(v["tensors"], {"format": "pt"}))
        (root / "adapter_config.json").write_bytes(peft_config_text(v["config"]))
        return ".", root
    if write == "future":
        meta = {**file_meta(v["config"], "1.7"), "adapterkit.future_key": "ignored by 1.0 readers"}
        (root / "adapter.safetensors").write_bytes(st_bytes(v["tensors"], meta))
        return "adapter.safetensors", root / "adapter.safetensors"
    adapter = dataclasses.replace(Adapter.from_tensors(v["config"], v["tensors"]), recipe=tuple(v.get("recipe", ())))
    if v["form"] == "file":
        adapterkit.save(adapter, root / "adapter.safetensors", form="file")
        return "adapter.safetensors", root / "adapter.safetensors"
    adapterkit.save(adapter, root / v.get("subdir", ""), form="dir", overwrite=True)  # root exists, empty
    return ".", root


def rewritten(adapter: Adapter, form: str) -> dict[str, str]:
    """SHA-256 of each file a conforming writer writes for ``adapter`` in ``form``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        if form == "dir":
            adapterkit.save(adapter, out, form="dir")
        else:
            out.mkdir()
            adapterkit.save(adapter, out / "adapter.safetensors", form="file")
        return {p.name: sha256(p.read_bytes()) for p in sorted(out.iterdir())}


def format_version_of(v: dict[str, Any]) -> str | None:
    if "format_version" in v:
        return v["format_version"]
    return {"peft": None, "future": "1.7", "raw": V1_0}.get(v.get("write"), VERSION)


def expected_valid(v: dict[str, Any], rel: str, load_path: Path) -> dict[str, Any]:
    tensors = v["tensors"]
    kw = {"adapter_name": v["adapter_name"]} if "adapter_name" in v else {}
    loaded = adapterkit.load(load_path, **kw)
    config = loaded.config.to_dict()  # key order as stored in the file
    given = v["config"] if isinstance(v["config"], dict) else v["config"].to_dict()
    if any(config.get(k) != val for k, val in given.items()):
        raise AssertionError(f"valid vector {v['name']}: the config did not survive the round trip")
    exp: dict[str, Any] = {
        "description": v["description"],
        "form": v["form"],
        "path": rel,
        "peft_type": config["peft_type"],
        "format_version": format_version_of(v),
        "config": config,
        "tensors": {
            k: {"dtype": DTYPE_NAMES[tensors[k].dtype], "shape": list(tensors[k].shape),
                "sha256": sha256(tensor_bytes(tensors[k]))}
            for k in sorted(tensors)
        },
        "warnings": sorted(v.get("warnings", [])),
    }
    for key in ("adapter_name", "requires", "recipe"):
        if key in v:
            exp[key] = v[key]
    if list(loaded.recipe) != v.get("recipe", []):
        raise AssertionError(f"valid vector {v['name']}: the recipe did not survive the round trip")
    if v.get("write") is None and not v.get("subdir"):
        exp["canonical"] = True  # written by adapterkit.save: the bytes a conforming writer produces
    else:
        exp["rewritten"] = rewritten(loaded, v["form"])
    if config["peft_type"] == "LORA":
        exp["delta_weights"] = lora_references(config, tensors)
    elif config["peft_type"] == "LOHA":
        exp["delta_weights"] = loha_references(config, tensors)
    elif config["peft_type"] == "LOKR":
        exp["delta_weights"] = lokr_references(config, tensors)
    # generation-time self check: adapterkit must agree with the references
    problems = adapterkit.validate(load_path, **kw)
    if [p for p in problems if p.severity == "error"] or sorted(p.code for p in problems) != exp["warnings"]:
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

    def add(name: str, code: str, description: str, files: dict[str, bytes], path: str = F, **kw: Any) -> None:
        form = kw.pop("form", "file" if path.endswith(".safetensors") else "dir")
        vs.append({"name": name, "code": code, "description": description, "form": form, "path": path, "files": files, **kw})

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
    add("recipe_not_json", "metadata-invalid", "adapterkit.recipe is not JSON",
        {F: st_bytes(good_t, {**meta, "adapterkit.recipe": "[{\"op\":"})}, requires="recipe")
    add("recipe_not_array", "metadata-invalid", "adapterkit.recipe is a JSON object, not an array of steps",
        {F: st_bytes(good_t, {**meta, "adapterkit.recipe": "{\"adapterkit\":\"0.1.0\",\"op\":\"resize\"}"})}, requires="recipe")
    add("recipe_step_without_op", "metadata-invalid", "a step of adapterkit.recipe lacks `op`",
        {F: st_bytes(good_t, {**meta, "adapterkit.recipe": "[{\"adapterkit\":\"0.1.0\",\"rank\":2}]"})}, requires="recipe")
    add("recipe_dir_step_not_object", "metadata-invalid", "directory form whose adapterkit.recipe holds a string, not a step",
        {"adapter_config.json": peft_config_text(base),
         "adapter_model.safetensors": st_bytes(good_t, {"format": "pt", "adapterkit.version": VERSION, "adapterkit.recipe": "[\"resize\"]"})},
        path=".", requires="recipe")
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
    fourier = {"peft_type": "FOURIERFT", "n_frequency": 10, "target_modules": ["q_proj"]}
    add("peft_type_fourierft", "peft-type-unsupported", "peft_type FOURIERFT, a method this version does not define",
        {F: st_bytes({f"{P}{Q}.fourierft_spectrum": dyadic((10,), 1)}, file_meta(fourier))})
    loha = LoHaConfig(r=2, alpha=4, target_modules=("q_proj",)).to_dict()
    good = {f"{P}{Q}.hada_w{i}_{s}": dyadic(shape, 60 + n) for n, (i, s, shape) in enumerate(
        [(1, "a", (4, 2)), (1, "b", (2, 6)), (2, "a", (4, 2)), (2, "b", (2, 6))])}
    add("loha_missing_partner", "missing-partner", "a LoHa module without hada_w2_b [R16-1]",
        {F: st_bytes({k: v for k, v in good.items() if not k.endswith("w2_b")}, file_meta(loha))}, key=f"{P}{Q}.hada_w1_a")
    add("loha_rank_mismatch", "shape-mismatch", "hada_w1_b of rank 3 where r is 2 [R16-2]",
        {F: st_bytes({**good, f"{P}{Q}.hada_w1_b": dyadic((3, 6), 70)}, file_meta(loha))}, key=f"{P}{Q}.hada_w1_b")
    lokr = LoKrConfig(r=1, alpha=2, target_modules=("q_proj",), decompose_both=True).to_dict()
    sides = {f"{P}{Q}.lokr_w1_a": dyadic((4, 1), 80), f"{P}{Q}.lokr_w1_b": dyadic((1, 3), 81),
             f"{P}{Q}.lokr_w2_a": dyadic((4, 1), 82), f"{P}{Q}.lokr_w2_b": dyadic((1, 4), 83)}
    add("lokr_missing_partner", "missing-partner", "a LoKr W1 stored as a product without lokr_w1_b [R17-1]",
        {F: st_bytes({k: v for k, v in sides.items() if not k.endswith("w1_b")}, file_meta(lokr))}, key=f"{P}{Q}.lokr_w1_a")
    add("lokr_both_forms", "unexpected-key", "a LoKr W2 stored both whole and as a product [R17-1]",
        {F: st_bytes({**sides, f"{P}{Q}.lokr_w2": dyadic((4, 4), 84)}, file_meta(lokr))}, key=f"{P}{Q}.lokr_w2_a")
    add("lokr_w1_product_without_decompose_both", "shape-mismatch",
        "W1 stored as a product while decompose_both is false: PEFT stores it whole [R17-3]",
        {F: st_bytes(sides, file_meta({**lokr, "decompose_both": False}))}, key=f"{P}{Q}.lokr_w1_a")
    add("lokr_rank_mismatch", "shape-mismatch", "lokr_w2_b of rank 2 where r is 1 [R17-2]",
        {F: st_bytes({**sides, f"{P}{Q}.lokr_w2_b": dyadic((2, 4), 88)}, file_meta(lokr))}, key=f"{P}{Q}.lokr_w2_b")
    add("lokr_split", "shape-mismatch", "out 16 split as (1, 16): factorization(16, -1) is (4, 4) [R17-4]",
        {F: st_bytes({f"{P}{Q}.lokr_w1": dyadic((1, 3), 85), f"{P}{Q}.lokr_w2_a": dyadic((16, 1), 86),
                      f"{P}{Q}.lokr_w2_b": dyadic((1, 4), 87)}, file_meta({**lokr, "decompose_both": False}))},
        key=f"{P}{Q}.lokr_w1")
    cp = LoHaConfig(r=2, alpha=4, target_modules=("conv",), use_effective_conv2d=True).to_dict()
    cores = {f"{P}conv.hada_w{i}_{s}": dyadic(shape, 71 + n) for n, (i, s, shape) in enumerate(
        [(1, "a", (2, 5)), (1, "b", (2, 3)), (2, "a", (2, 5)), (2, "b", (2, 3))])}
    add("loha_cp_missing_core", "missing-partner", "a LoHa module in the CP form with hada_t1 but no hada_t2 [R16-1]",
        {F: st_bytes({**cores, f"{P}conv.hada_t1": dyadic((2, 2, 3, 3), 75)}, file_meta(cp))}, key=f"{P}conv.hada_t1")
    add("loha_cp_core_shape", "shape-mismatch", "hada_t2 of (2, 2, 3, 1) beside a hada_t1 of (2, 2, 3, 3) [R16-2]",
        {F: st_bytes({**cores, f"{P}conv.hada_t1": dyadic((2, 2, 3, 3), 75), f"{P}conv.hada_t2": dyadic((2, 2, 3, 1), 76)},
                     file_meta(cp))}, key=f"{P}conv.hada_t2")
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
    more_invalid_vectors(add, base, good_t, meta)
    digest_invalid_vectors(add)
    order_invalid_vectors(add)
    recipe_invalid_vectors(add, good_t, meta)
    return vs


def more_invalid_vectors(add: Callable[..., None], base: dict[str, Any], good_t: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """The invalid vectors added in revision 2 of the 1.0 text: one per rule a reader could skip or misread."""
    F = "adapter.safetensors"
    a_key, b_key = f"{P}{Q}.lora_A.weight", f"{P}{Q}.lora_B.weight"
    a_bytes = tensor_bytes(good_t[a_key]).tobytes()
    data = a_bytes + tensor_bytes(good_t[b_key]).tobytes()
    a_entry = {"dtype": "F32", "shape": [2, 6], "data_offsets": [0, 48]}
    b_entry = {"dtype": "F32", "shape": [4, 2], "data_offsets": [48, 80]}

    def header_text(text: str, payload: bytes = data) -> bytes:
        raw = text.encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        return struct.pack("<Q", len(raw)) + raw + payload

    meta_json = json.dumps(meta, sort_keys=True, separators=(",", ":"))
    a_json, b_json = json.dumps(a_entry, separators=(",", ":")), json.dumps(b_entry, separators=(",", ":"))

    # §5.2: the container, rule by rule
    add("header_too_large", "header-invalid", "header length 100,000,001: over the limit (checked before the file size)",
        {F: struct.pack("<Q", 100_000_001) + b"{}      "})
    add("header_length_at_limit", "truncated-file", "header length exactly 100,000,000 (allowed) in a 16-byte file",
        {F: struct.pack("<Q", 100_000_000) + b"{}      "})
    add("header_duplicate_key", "header-invalid", "the header names lora_A twice (RFC 8259 names should be unique; here they MUST)",
        {F: header_text(f'{{"__metadata__":{meta_json},"{a_key}":{a_json},"{a_key}":{a_json},"{b_key}":{b_json}}}')})
    add("header_nan_literal", "header-invalid", "an ignored member of a tensor entry holds NaN, which is not JSON",
        {F: header_text(f'{{"__metadata__":{meta_json},"{a_key}":{a_json[:-1]},"note":NaN}},"{b_key}":{b_json}}}')})
    add("version_trailing_newline", "metadata-invalid", "adapterkit.version `1.0\\n`: the pattern is the whole string",
        {F: st_bytes(good_t, {**meta, "adapterkit.version": "1.0\n"})})
    v2 = {**meta, "adapterkit.version": "2.0"}
    add("version_major_2_unknown_dtype", "version-unsupported", "a 2.0 file with a dtype version 1 does not know (F4): the "
        "version is checked before the tensor entries",
        {F: raw_st({"__metadata__": v2, a_key: {**a_entry, "dtype": "F4"}, b_key: b_entry}, data)})
    add("version_major_2_format_np", "version-unsupported", "a 2.0 file whose format is `np`: the version is checked before format",
        {F: st_bytes(good_t, {**v2, "format": "np"})})
    add("format_missing", "metadata-invalid", "an adapterkit file without the REQUIRED `format`",
        {F: st_bytes(good_t, {k: v for k, v in meta.items() if k != "format"})})
    add("peft_format_not_pt", "metadata-invalid", "a PEFT-profile file whose format is `np`",
        {"adapter_config.json": peft_config_text(base), "adapter_model.safetensors": st_bytes(good_t, {"format": "np"})}, path=".")
    add("entry_not_object", "header-invalid", "a tensor entry that is a list",
        {F: raw_st({"__metadata__": meta, a_key: ["F32", [2, 6], [0, 48]], b_key: b_entry}, data)})
    add("shape_float", "header-invalid", "shape [2.0, 6]: 2.0 is not an integer (§1)",
        {F: header_text(f'{{"__metadata__":{meta_json},"{a_key}":{{"data_offsets":[0,48],"dtype":"F32","shape":[2.0,6]}},"{b_key}":{b_json}}}')})
    add("offsets_float", "header-invalid", "data_offsets [0, 48e0]: an exponent makes it not an integer (§1)",
        {F: header_text(f'{{"__metadata__":{meta_json},"{a_key}":{{"data_offsets":[0,48e0],"dtype":"F32","shape":[2,6]}},"{b_key}":{b_json}}}')})
    add("shape_negative", "header-invalid", "shape [-2, -6]",
        {F: raw_st({"__metadata__": meta, a_key: {**a_entry, "shape": [-2, -6]}, b_key: b_entry}, data)})
    add("shape_too_large", "header-invalid", "shape [2^32, 2^31]: 2^63 elements (zero-size, so the offsets alone would pass)",
        {F: raw_st({"__metadata__": meta, a_key: {**a_entry, "shape": [2**32, 2**31, 0], "data_offsets": [0, 0]},
                    b_key: {**b_entry, "data_offsets": [0, 32]}}, data[48:])})
    add("offsets_three", "header-invalid", "data_offsets with three numbers",
        {F: raw_st({"__metadata__": meta, a_key: {**a_entry, "data_offsets": [0, 48, 48]}, b_key: b_entry}, data)})
    add("offsets_reversed", "offset-out-of-range", "data_offsets [48, 0]: end before begin",
        {F: raw_st({"__metadata__": meta, a_key: {**a_entry, "data_offsets": [48, 0]}, b_key: b_entry}, data)})
    add("zero_size_inside", "offset-out-of-range", "a zero-size tensor at offset 20, inside lora_A's bytes",
        {F: raw_st({"__metadata__": meta, a_key: a_entry, b_key: b_entry,
                    f"{P}q_empty": {"dtype": "F32", "shape": [0], "data_offsets": [20, 20]}}, data)})
    add("zero_size_past_end", "offset-out-of-range", "a zero-size tensor at offset 88, past the end of the data (80)",
        {F: raw_st({"__metadata__": meta, a_key: a_entry, b_key: b_entry,
                    f"{P}q_empty": {"dtype": "F32", "shape": [0], "data_offsets": [88, 88]}}, data)})
    # revision 3: what the safetensors library (serde_json) refuses is refused (§1, found by scripts/fuzz.py)
    add("offsets_minus_zero", "header-invalid", "data_offsets [-0, 48]: -0 is not an integer (§1)",
        {F: header_text(f'{{"__metadata__":{meta_json},"{a_key}":{{"data_offsets":[-0,48],"dtype":"F32","shape":[2,6]}},"{b_key}":{b_json}}}')})
    add("header_lone_surrogate", "header-invalid", "an ignored member of a tensor entry holds the escape \\ud800, an unpaired surrogate",
        {F: header_text(f'{{"__metadata__":{meta_json},"{a_key}":{a_json[:-1]},"note":"\\ud800"}},"{b_key}":{b_json}}}')})
    add("header_nesting_128", "header-invalid", "an ignored member of a tensor entry nests arrays 128 levels deep, counting the header and the entry",
        {F: header_text(f'{{"__metadata__":{meta_json},"{a_key}":{a_json[:-1]},"note":{"[" * 126}{"]" * 126}}},"{b_key}":{b_json}}}')})
    add("header_integer_beyond_double", "header-invalid", "an ignored member of a tensor entry holds the integer 10^309, beyond a double",
        {F: header_text(f'{{"__metadata__":{meta_json},"{a_key}":{a_json[:-1]},"note":1{"0" * 309}}},"{b_key}":{b_json}}}')})

    # §1 and §7: the config as JSON, and its typed fields
    def cfg_file(name: str, code: str, description: str, text: bytes) -> None:
        add(name, code, description, {"adapter_config.json": text, "adapter_model.safetensors": st_bytes(good_t, {"format": "pt"})},
            path=".")

    cfg_file("config_duplicate_key", "config-invalid", "adapter_config.json names r twice",
             b'{"lora_alpha": 4, "peft_type": "LORA", "r": 2, "r": 4, "target_modules": ["q_proj"]}')
    cfg_file("config_nan_literal", "config-invalid", "an uninterpreted config member holds NaN, which is not JSON",
             b'{"lora_alpha": 4, "lora_dropout": NaN, "peft_type": "LORA", "r": 2}')
    cfg_file("config_number_overflow", "config-invalid", "an uninterpreted config member holds 1e400, beyond a double",
             b'{"lora_alpha": 4, "lora_dropout": 1e400, "peft_type": "LORA", "r": 2}')
    cfg_file("config_not_object", "config-invalid", "adapter_config.json is a JSON array", b"[]")
    cfg_file("config_without_peft_type", "config-invalid", "a config without peft_type",
             b'{"lora_alpha": 4, "r": 2, "target_modules": ["q_proj"]}')
    add("config_r_float", "config-invalid", "r is 2.0: not an integer (§1)",
        {F: st_bytes(good_t, {**meta, "adapterkit.config": '{"lora_alpha":4,"peft_type":"LORA","r":2.0}'})})
    add("config_r_bool", "config-invalid", "r is true: a boolean is not an integer",
        {F: st_bytes(good_t, file_meta({**base, "r": True}))})
    add("config_r_zero", "config-invalid", "r is 0 (the minimum is 1)", {F: st_bytes(good_t, file_meta({**base, "r": 0}))})
    add("config_bias_enum", "config-invalid", "bias is `some`, not one of none, all, lora_only",
        {F: st_bytes(good_t, file_meta({**base, "bias": "some"}))})
    add("prompt_without_num_virtual_tokens", "config-invalid", "a prompt-tuning config without the REQUIRED num_virtual_tokens",
        {F: st_bytes({"prompt_embeddings": dyadic((4, 8), 1)}, file_meta({"peft_type": "PROMPT_TUNING", "token_dim": 8}))})
    add("pattern_key_global_flag", "config-invalid", "rank_pattern key `(?i)q_proj` compiles alone but not inside PEFT's wrapper",
        {F: st_bytes(good_t, file_meta({**base, "rank_pattern": {"(?i)q_proj": 2}}))})

    # §4: forms, paths, names, .bin
    add("dir_embedded_config_not_json", "metadata-invalid", "directory form whose weights carry an adapterkit.config that is not JSON",
        {"adapter_config.json": peft_config_text(base), "adapter_model.safetensors": st_bytes(good_t, {**meta, "adapterkit.config": "{"})},
        path=".")
    add("dir_embedded_config_bool_vs_int", "metadata-invalid", "embedded use_rslora is 0, adapter_config.json has false: "
        "different JSON values", {"adapter_config.json": peft_config_text({**base, "use_rslora": False}),
                                  "adapter_model.safetensors": st_bytes(good_t, file_meta({**base, "use_rslora": 0}))}, path=".")
    add("adapter_name_missing", "adapter-not-found", "adapter_name `missing` names no subfolder (a default adapter exists)",
        {"adapter_config.json": peft_config_text(base), "adapter_model.safetensors": st_bytes(good_t, {"format": "pt"})},
        path=".", adapter_name="missing")
    add("config_missing_dir_bin", "config-missing", "a directory with only adapter_model.bin", {"adapter_model.bin": b"x"}, path=".")
    add("file_wrong_suffix_case", "not-an-adapter", "a single-file adapter named `adapter.SafeTensors` (suffixes are case-sensitive)",
        {"adapter.SafeTensors": st_bytes(good_t, meta)}, path="adapter.SafeTensors", form="file")
    add("path_missing", "file-not-found", "the path names nothing", {}, path="absent.safetensors")
    ns = argparse.Namespace(note="not a tensor")
    add("bin_unsafe_pickle", "unsafe-pickle", "adapter_model.bin pickles an argparse.Namespace: a global beyond plain tensors",
        {"adapter_config.json": peft_config_text(base), "adapter_model.bin": torch_save_bytes(ns)}, path=".", requires="bin")
    add("bin_not_checkpoint", "bin-invalid", "adapter_model.bin is text, not a torch checkpoint",
        {"adapter_config.json": peft_config_text(base), "adapter_model.bin": b"not a torch checkpoint\n"}, path=".", requires="bin")
    add("bin_truncated", "bin-invalid", "adapter_model.bin is a torch.save archive cut in half",
        {"adapter_config.json": peft_config_text(base), "adapter_model.bin": torch_save_bytes(good_t)[:700]}, path=".",
        requires="bin")
    add("bin_not_tensors", "bin-invalid", "adapter_model.bin maps a key to an integer, not a tensor",
        {"adapter_config.json": peft_config_text(base), "adapter_model.bin": torch_save_bytes({a_key: 1})}, path=".", requires="bin")

    # §6 and §8 to §10: tensors
    lora_meta = file_meta({**base, "modules_to_save": ["score"]})
    inf_t = {**good_t, f"{P}score.weight": torch.tensor([[0.5, float("inf")]], dtype=torch.float16)}
    add("non_finite_whole_module", "non-finite", "an F16 modules_to_save tensor holds +Inf", {F: st_bytes(inf_t, lora_meta)})
    pt = PromptTuningConfig(num_virtual_tokens=4, token_dim=8).to_dict()
    add("prompt_embeddings_int", "dtype-unsupported", "prompt_embeddings stored as I32 (an adapter tensor)",
        {F: st_bytes({"prompt_embeddings": torch.ones((4, 8), dtype=torch.int32)}, file_meta(pt))})
    prefix2 = PrefixTuningConfig(num_virtual_tokens=3, token_dim=4, num_layers=2, num_transformer_submodules=2).to_dict()
    add("prefix_tuning_submodules_shape", "shape-mismatch", "prefix tuning with 2 submodules stored (2·3, 16): the submodules "
        "do not multiply the rows", {F: st_bytes({"prompt_embeddings": dyadic((6, 16), 1)}, file_meta(prefix2))})
    nan_t = {**good_t, b_key: good_t[b_key].clone()}
    nan_t[b_key][0, 0] = float("nan")
    add("layout_before_values", "offset-out-of-range", "8 bytes after the last tensor, and a NaN in lora_B: the header's "
        "rules come before any tensor data is read", {F: st_bytes(nan_t, meta) + bytes(8)})
    add("lora_a_rank", "shape-mismatch", "lora_A (3, 6) for r=2, beside a correct lora_B (4, 2)",
        {F: st_bytes({a_key: dyadic((3, 6), 1), b_key: good_t[b_key]}, meta)})
    add("lone_lora_B", "missing-partner", "lora_B without its lora_A", {F: st_bytes({b_key: good_t[b_key]}, meta)})
    add("lora_b_rank", "shape-mismatch", "lora_A (2, 6) is right for r=2, lora_B (4, 3) is not",
        {F: st_bytes({a_key: good_t[a_key], b_key: dyadic((4, 3), 2)}, meta)})
    add("lora_linear_ndim", "shape-mismatch", "a 2-D lora_A with a 3-D lora_B",
        {F: st_bytes({a_key: good_t[a_key], b_key: dyadic((4, 2, 1), 2)}, meta)})
    add("lora_mixed_parts", "unexpected-key", "a module with lora_embedding_A, lora_embedding_B and lora_B.weight",
        {F: st_bytes({f"{P}emb.lora_embedding_A": dyadic((2, 10), 1), f"{P}emb.lora_embedding_B": dyadic((6, 2), 2),
                      f"{P}emb.lora_B.weight": dyadic((6, 2), 3)}, file_meta({**base, "target_modules": ["emb"]}))})
    add("lora_bias_missing", "missing-partner", "lora_bias=true but no lora_B.bias",
        {F: st_bytes(good_t, file_meta({**base, "lora_bias": True}))})
    add("lora_bias_shape", "shape-mismatch", "lora_B.bias (2,) beside lora_B (4, 2)",
        {F: st_bytes({**good_t, f"{P}{Q}.lora_B.bias": dyadic((2,), 3)}, file_meta({**base, "lora_bias": True}))})
    add("dora_magnitude_without_flag", "unexpected-key", "lora_magnitude_vector present while use_dora=false",
        {F: st_bytes({**good_t, f"{P}{Q}.lora_magnitude_vector": dyadic((4,), 3, positive=True)}, meta)})
    conv = {f"{P}conv.lora_A.weight": dyadic((2, 3, 3, 3), 1), f"{P}conv.lora_B.weight": dyadic((4, 2, 1, 1), 2)}
    add("dora_conv_magnitude_shape", "shape-mismatch", "DoRA magnitude (4,) for a Conv2d; (1, 4, 1, 1) is required",
        {F: st_bytes({**conv, f"{P}conv.lora_magnitude_vector": dyadic((4,), 3, positive=True)},
                     file_meta({**base, "target_modules": ["conv"], "use_dora": True}))})
    add("dora_embedding_magnitude_shape", "shape-mismatch", "DoRA magnitude (10,) for an embedding; (embedding_dim,) = (6,)",
        {F: st_bytes({f"{P}emb.lora_embedding_A": dyadic((2, 10), 1), f"{P}emb.lora_embedding_B": dyadic((6, 2), 2),
                      f"{P}emb.lora_magnitude_vector": dyadic((10,), 3, positive=True)},
                     file_meta({**base, "target_modules": ["emb"], "use_dora": True}))})
    add("lora_grouped_conv", "groups-unsupported", "LoRA as PEFT saves it for a Conv2d with groups=2: lora_B (6, r/2, 1, 1)",
        {F: st_bytes({f"{P}conv.lora_A.weight": dyadic((4, 4, 3, 3), 1), f"{P}conv.lora_B.weight": dyadic((6, 2, 1, 1), 2)},
                     file_meta({**base, "r": 4, "target_modules": ["conv"]}))})
    add("lora_conv_b_rank", "shape-mismatch", "conv lora_B (6, 3, 1, 1) for r=4: 3 does not divide 4, so not a grouped conv",
        {F: st_bytes({f"{P}conv.lora_A.weight": dyadic((4, 3, 3, 3), 1), f"{P}conv.lora_B.weight": dyadic((6, 3, 1, 1), 2)},
                     file_meta({**base, "r": 4, "target_modules": ["conv"]}))})
    ia3 = IA3Config(target_modules=("k_proj", "down_proj"), feedforward_modules=("down_proj", "up_proj")).to_dict()
    add("ia3_feedforward_not_subset", "config-invalid", "IA3 feedforward_modules names up_proj, which target_modules lacks",
        {F: st_bytes({f"{P}model.layers.0.self_attn.k_proj.ia3_l": dyadic((4, 1), 1, positive=True)}, file_meta(ia3))})
    ia3 = IA3Config(target_modules=("k_proj", "conv"), feedforward_modules=()).to_dict()
    add("ia3_ordinary_shape", "shape-mismatch", "IA3 ordinary module stored (1, in) instead of (out, 1)",
        {F: st_bytes({f"{P}model.layers.0.self_attn.k_proj.ia3_l": dyadic((1, 4), 1, positive=True)}, file_meta(ia3))})
    add("ia3_conv1d", "shape-mismatch", "a 3-D ia3_l (1, C, 1): PEFT's IA3 does not adapt nn.Conv1d",
        {F: st_bytes({f"{P}conv.ia3_l": dyadic((1, 4, 1), 1, positive=True)}, file_meta(ia3))})
    add("ia3_conv_shape", "shape-mismatch", "a 4-D ia3_l (4, 1, 1, 1): the channels belong in the second dimension",
        {F: st_bytes({f"{P}conv.ia3_l": dyadic((4, 1, 1, 1), 1, positive=True)}, file_meta(ia3))})


def saved(adapter: Adapter, form: str, **kw: Any) -> dict[str, bytes]:
    """The files ``adapterkit.save`` writes for ``adapter`` in ``form`` (the single file named adapter.safetensors)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / ("adapter.safetensors" if form == "file" else "out")
        adapterkit.save(adapter, out, form=form, **kw)
        if form == "file":
            return {"adapter.safetensors": out.read_bytes()}
        return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def split_st(data: bytes) -> tuple[dict[str, Any], bytes]:
    """A safetensors file's header object and data buffer."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def digest_adapter() -> Adapter:
    """The adapter of the content-digest vectors (§5.5): two LoRA modules, F32 and BF16 (so the file's
    order, F32 first, is not the sorted key order), and a whole `score` module from modules_to_save."""
    cfg = lora(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], modules_to_save=["score"])
    t = {**linear(V, 2, 6, 4, 130), **linear(Q, 2, 6, 4, 132, torch.bfloat16),
         f"{P}score.weight": dyadic((3, 6), 134), f"{P}score.bias": dyadic((3,), 135)}
    return Adapter.from_tensors(cfg, t)


def digest_valid_vectors(add: Callable[..., None]) -> None:
    """Valid vectors of the content digest (format 1.1, §5.5)."""
    adapter = digest_adapter()
    cfg, t = adapter.config, dict(adapter.tensors)
    file = saved(adapter, "file")["adapter.safetensors"]
    add("digest_file", "format 1.1: a single-file adapter with its content digest (mixed dtypes, a whole module)", "file", cfg, t)
    header, data = split_st(file)
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    reordered, cursor, chunks = {"__metadata__": header["__metadata__"]}, 0, []
    for key in sorted(entries, reverse=True):  # reverse key order, whatever the dtypes
        begin, end = entries[key]["data_offsets"]
        reordered[key] = {**entries[key], "data_offsets": [cursor, cursor + end - begin]}
        chunks.append(data[begin:end])
        cursor += end - begin
    add("digest_reordered", "the same tensors as `digest_file` in reverse key order in the file: the same content digest", "file",
        cfg, t, write="raw", path="adapter.safetensors", format_version=VERSION,
        files={"adapter.safetensors": raw_st(reordered, b"".join(chunks))})
    files = saved(adapter, "dir")
    relaid = json.dumps(dict(reversed(list(json.loads(files["adapter_config.json"]).items()))), separators=(",", ":"))
    add("digest_dir_config_relaid", "directory form whose adapter_config.json is compact with keys in reverse order: the same "
        "JSON value, so the same content digest (the config is hashed as canonical JSON)", "dir", cfg, t, write="raw", path=".",
        format_version=VERSION, files={**files, "adapter_config.json": relaid.encode("utf-8")})
    minimal = {"lora_alpha": 4, "modules_to_save": ["score"], "peft_type": "LORA", "r": 2, "target_modules": ["q_proj", "v_proj"]}
    entries = {k: tensor_digest(k, DTYPE_NAMES[v.dtype], tuple(v.shape), tensor_bytes(v)) for k, v in t.items()}
    add("digest_config_without_defaults", "a 1.1 file whose adapterkit.config omits the fields that have defaults: the digest "
        "covers the config as stored, not with the defaults filled in", "file", minimal, t, write="raw",
        path="adapter.safetensors", format_version=VERSION,
        files={"adapter.safetensors": st_bytes(t, {**file_meta(minimal, VERSION), **digest_metadata(config_digest(minimal, VERSION), entries)})})
    add("version_1_0", "a format 1.0 single file: no content digest, valid", "file", cfg, t, write="raw",
        path="adapter.safetensors", files=saved(adapter, "file", digest=False))
    add("version_1_1_without_digest", "a format 1.1 file without a content digest: valid (a reader accepts files without one)",
        "file", cfg, t, write="raw", path="adapter.safetensors", format_version="1.1",
        files={"adapter.safetensors": st_bytes(t, file_meta(cfg.to_dict(), "1.1"))})


def digest_invalid_vectors(add: Callable[..., None]) -> None:
    """Invalid vectors of the content digest (format 1.1, §5.5), all edits of `valid/digest_file`."""
    adapter = digest_adapter()
    F = "adapter.safetensors"
    file = saved(adapter, "file")[F]
    header, data = split_st(file)
    meta = header["__metadata__"]
    b_key = f"{P}{V}.lora_B.weight"
    begin = header[b_key]["data_offsets"][0]
    flipped = bytearray(file)
    flipped[len(file) - len(data) + begin] ^= 1  # the lowest mantissa bit of lora_B's first element: still finite
    add("digest_flipped_byte", "digest-mismatch", f"one bit of `{V}.lora_B.weight`'s data flipped: the mismatch names that tensor",
        {F: bytes(flipped)}, key=b_key)
    files = saved(adapter, "dir")
    config = json.loads(files["adapter_config.json"])
    add("digest_config_changed", "digest-mismatch", "directory form whose adapter_config.json says lora_alpha 8 instead of 4 after "
        "the digest was recorded: the mismatch names `config`",
        {**files, "adapter_config.json": peft_config_text({**config, "lora_alpha": 8})}, path=".", key="config")
    tensors = {k: v for k, v in adapter.tensors.items() if k != f"{P}score.bias"}
    add("digest_tensor_removed", "digest-mismatch", "`score.bias` removed from the file (the header and data rewritten, the "
        "digest kept): the digest records a tensor the file lacks", {F: st_bytes(tensors, meta)}, key=None)
    add("digest_malformed", "metadata-invalid", "adapterkit.digest in upper-case hex",
        {F: st_bytes(dict(adapter.tensors), {**meta, "adapterkit.digest": meta["adapterkit.digest"].upper().replace("SHA256", "sha256")})})
    add("digest_entries_upper_case", "metadata-invalid", "adapterkit.digests in upper-case hex (the entries still combine to "
        "adapterkit.digest once decoded)",
        {F: st_bytes(dict(adapter.tensors), {**meta, "adapterkit.digests": meta["adapterkit.digests"].upper()})})
    add("digest_entries_tampered", "metadata-invalid", "adapterkit.digests with the config's entry zeroed: the entries no longer "
        "combine to adapterkit.digest (found from the header alone)",
        {F: st_bytes(dict(adapter.tensors), {**meta, "adapterkit.digests": "0" * 64 + meta["adapterkit.digests"][64:]})})
    add("digest_entries_partial", "metadata-invalid", "adapterkit.digests with one hex digit more than whole entries (the "
        "entries, cut into 64-digit pieces, leave a partial one)",
        {F: st_bytes(dict(adapter.tensors), {**meta, "adapterkit.digests": meta["adapterkit.digests"] + "0"})})
    add("digest_without_entries", "metadata-invalid", "adapterkit.digest without adapterkit.digests",
        {F: st_bytes(dict(adapter.tensors), {k: v for k, v in meta.items() if k != "adapterkit.digests"})})


def _flip(file: bytes, key: str, edit: Callable[[bytearray, int], None] | None = None) -> bytes:
    """``file`` with the lowest bit of ``key``'s first byte flipped (or ``edit(buffer, offset)`` applied
    at the offset of ``key``'s data in the file)."""
    header, data = split_st(file)
    at = len(file) - len(data) + header[key]["data_offsets"][0]
    out = bytearray(file)
    if edit is None:
        out[at] ^= 1
    else:
        edit(out, at)
    return bytes(out)


def _entries(t: dict[str, torch.Tensor]) -> dict[str, bytes]:
    return {k: tensor_digest(k, DTYPE_NAMES[v.dtype], tuple(v.shape), tensor_bytes(v)) for k, v in t.items()}


# the pattern-order adapter: each pattern's stored order gives other values than its sorted order
ORDER_CFG: dict[str, Any] = {"r": 4, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"],
                             "rank_pattern": {"q_proj": 2, r"layers\.0\..*": 3}, "alpha_pattern": {"v_proj": 12, ".*": 8}}
ORDER_WARNINGS = ["pattern-order", "pattern-order"]  # q_proj's rank and v_proj's alpha depend on the order
NON_ASCII_MODULES = ("model.layers.0.m\uff5e", "model.layers.0.m\U0001f600")  # code points: U+FF5E first; UTF-16: U+1F600 first


def order_adapter() -> Adapter:
    return Adapter.from_tensors(lora(**ORDER_CFG), {**linear(Q, 2, 6, 4, 140), **linear(V, 3, 6, 4, 142)})


def non_ascii_adapter() -> Adapter:
    cfg = lora(r=2, lora_alpha=2, target_modules=["q_proj"])
    return Adapter.from_tensors(cfg, {**linear(NON_ASCII_MODULES[0], 2, 6, 4, 152), **linear(NON_ASCII_MODULES[1], 2, 6, 4, 154)})


ESCAPES_CONFIG_TEXT = (
    '{"peft_type":"LORA","r":2,"lora_alpha":8E0,"target_modules":["q_proj"],'
    '"base_model_name_or_path":"org/mod\u00e8le-\U0001f600",'
    '"note":"tab\\t quote\\" backslash\\\\ ctl\\u0001 del\\u007f slash\\/ \u00e9",'
    '"\\uff5e":1,"\U0001f600":2,"x_small":0.00001,"x_big":1e16,"x_float":16.0,"x_hundred":1E2,"x_neg_zero":-0,'
    '"x_nested":{"b":[{"d":1,"c":2}],"a":null},"x_int_309_digits":1' + "0" * 308 + "}"
)


def order_valid_vectors(add: Callable[..., None]) -> None:
    """Valid vectors of format 1.2 (§4.1, §4.2, §5.5): pattern order kept, canonical JSON, code-point order."""
    adapter = order_adapter()
    cfg, t = adapter.config, dict(adapter.tensors)
    add("pattern_order_file", "format 1.2: rank_pattern {q_proj: 2, layers\\.0\\..*: 3} and alpha_pattern {v_proj: 12, .*: 8} "
        "in that order, not sorted: q_proj has rank 2 (sorted order: 3) and v_proj scaling 12/3 (sorted: 8/3); the writer keeps "
        "the order in adapterkit.config and the digest hashes it", "file", cfg, t, warnings=ORDER_WARNINGS)
    add("pattern_order_dir", "the same adapter in the directory form: adapter_config.json keeps the patterns' order, byte for "
        "byte as PEFT 0.22.0 writes it", "dir", cfg, t, warnings=ORDER_WARNINGS)
    conf = cfg.to_dict()
    meta11 = {"format": "pt", "adapterkit.version": "1.1", **digest_metadata(config_digest(conf, "1.1"), _entries(t))}
    add("digest_1_1_pattern_order", "a format 1.1 directory form whose adapter_config.json keeps the patterns' order (as PEFT "
        "0.22.0 writes it): its digest, recorded by 1.1's rule, hashes the config with every object sorted, and verifies", "dir",
        cfg, t, write="raw", path=".", format_version="1.1", warnings=ORDER_WARNINGS,
        files={"adapter_config.json": saved(adapter, "dir")["adapter_config.json"], "adapter_model.safetensors": st_bytes(t, meta11)})
    parsed = json.loads(ESCAPES_CONFIG_TEXT, parse_int=lambda x: -0.0 if x == "-0" else int(x))
    t = linear(Q, 2, 6, 4, 150)
    meta = {"format": "pt", "adapterkit.version": VERSION, **digest_metadata(config_digest(parsed, VERSION), _entries(t))}
    add("digest_config_escapes", "directory form whose adapter_config.json holds raw UTF-8, escapes (\\/, \\u007f), member names "
        "U+FF5E and U+1F600, a nested object with unsorted members, and numbers written 8E0, 0.00001, 1e16, 1E2, -0 and a "
        "309-digit integer: its canonical JSON (§5.5) is 8.0, 1e-05, 1e+16, 100.0, -0.0 and the integer's digits, with \\uXXXX "
        "escapes in lowercase hex (U+007F too), / as it is, U+FF5E's member before U+1F600's, every object but the patterns sorted", "dir", parsed, t, write="raw", path=".", format_version=VERSION,
        files={"adapter_config.json": ESCAPES_CONFIG_TEXT.encode("utf-8"), "adapter_model.safetensors": st_bytes(t, meta)})
    adapter = non_ascii_adapter()
    add("digest_non_ascii_keys", "tensor keys whose modules end in U+FF5E and U+1F600: code-point (UTF-8 byte) order puts "
        "U+FF5E first, UTF-16 order the other; the header, the data and the entry digests follow code points", "file",
        adapter.config, dict(adapter.tensors))
    cfg = lora(r=2, lora_alpha=2, target_modules=["q_proj"], modules_to_save=["score"])
    e4m3 = torch.tensor([0x7C, 0x7E, 0xFE, 0x78, 0x01], dtype=torch.uint8).view(torch.float8_e4m3fn)
    e5m2 = torch.tensor([0x7B, 0xFB, 0x3C], dtype=torch.uint8).view(torch.float8_e5m2)
    add("f8_whole_module", "modules_to_save tensors in F8_E4M3 (bytes 7c 7e fe 78 01: 256, 448, -448, 128 and 2^-9, all finite "
        "in E4M3, whose only non-finite bytes are 7f and ff) and F8_E5M2 (7b fb 3c: 57344, -57344, 1)", "file", cfg,
        {**linear(Q, 2, 6, 4, 156), f"{P}score.weight": e4m3, f"{P}score.bias": e5m2})


def order_invalid_vectors(add: Callable[..., None]) -> None:
    """Invalid vectors of format 1.2's digest rules (§5.5) and of the FP8 encodings (§5.2, §6)."""
    F = "adapter.safetensors"
    file = saved(order_adapter(), "file")[F]
    header, data = split_st(file)
    meta = header["__metadata__"]
    conf = json.loads(meta["adapterkit.config"])
    conf["alpha_pattern"] = dict(reversed(list(conf["alpha_pattern"].items())))
    swapped = {**header, "__metadata__": {**meta, "adapterkit.config": json.dumps(conf, separators=(",", ":"))}}
    add("digest_pattern_reordered", "digest-mismatch", "`pattern_order_file` with alpha_pattern's two keys swapped after the "
        "digest was recorded: v_proj's scaling becomes 8/3, another adapter, so the mismatch names `config`",
        {F: raw_st(swapped, data)}, key="config")
    d = digest_adapter()
    t, conf = dict(d.tensors), d.config.to_dict()
    b_key = f"{P}{V}.lora_B.weight"
    meta10 = {**file_meta(conf, V1_0), **digest_metadata(config_digest(conf, V1_0), _entries(t))}
    add("digest_1_0_flipped_byte", "digest-mismatch", "a format 1.0 file that records a content digest (1.0 writers write none; "
        f"a reader checks one wherever it is recorded) with one bit of `{V}.lora_B.weight` flipped",
        {F: _flip(st_bytes(t, meta10), b_key)}, key=b_key)
    peft_meta = {"format": "pt", **digest_metadata(config_digest(conf, None), _entries(t))}
    add("digest_peft_profile_flipped_byte", "digest-mismatch", "a PEFT-profile directory (no adapterkit.version) whose weights "
        f"record a content digest, with one bit of `{V}.lora_B.weight` flipped",
        {"adapter_config.json": peft_config_text(conf), "adapter_model.safetensors": _flip(st_bytes(t, peft_meta), b_key)},
        path=".", key=b_key)
    file = saved(d, "file")[F]
    header, data = split_st(file)
    meta = header["__metadata__"]
    hexes = [meta["adapterkit.digests"][i : i + 64] for i in range(0, len(meta["adapterkit.digests"]), 64)]
    hexes[1], hexes[2] = hexes[2], hexes[1]
    out_of_order = {**meta, "adapterkit.digests": "".join(hexes), "adapterkit.digest": combine(bytes.fromhex(h) for h in hexes)}
    add("digest_entries_out_of_order", "digest-mismatch", "adapterkit.digests with the first two tensor entries swapped and "
        "adapterkit.digest recomputed to match: a consistent record, but not the content's (the entries follow code-point "
        "order), so the mismatch names the first key recorded at another place", {F: raw_st({**header, "__metadata__": out_of_order}, data)},
        key=sorted(t)[0])

    def to_inf(buf: bytearray, at: int) -> None:
        buf[at + 3], buf[at + 2] = 0x7F, buf[at + 2] | 0x80  # exponent all ones: F32 +Inf or NaN

    add("digest_before_values", "digest-mismatch", f"`{V}.lora_B.weight`'s first value made non-finite after the digest was "
        "recorded: the digest is checked before the tensor values", {F: _flip(file, b_key, to_inf)}, key=b_key,
        errors=["digest-mismatch", "non-finite"])
    bad = {**conf, "r": 4}
    broken = {**meta, "adapterkit.config": json.dumps(bad, sort_keys=True, separators=(",", ":")),
              "adapterkit.digest": meta["adapterkit.digest"].upper().replace("SHA256", "sha256")}
    add("digest_malformed_before_shape", "metadata-invalid", "adapterkit.digest in upper-case hex and a config r=4 that the "
        "rank-2 tensors contradict: the record is checked from the header alone right after `format`, before the config and "
        "the shapes", {F: raw_st({**header, "__metadata__": broken}, data)})
    extra = {**t, f"{P}score.scale": dyadic((1,), 136)}
    add("digest_tensor_added", "digest-mismatch", "`score.scale` added to `digest_file` (the header and data rewritten, the "
        "digest kept): the mismatch names the added tensor", {F: st_bytes(extra, meta)}, key=f"{P}score.scale")
    file = saved(non_ascii_adapter(), "file")[F]
    first, second = (f"{P}{m}.lora_A.weight" for m in NON_ASCII_MODULES)
    add("digest_non_ascii_first_key", "digest-mismatch", "`digest_non_ascii_keys` with one bit flipped in both lora_A tensors: "
        "the mismatch names the U+FF5E module's, first in code-point order (UTF-16 order would name U+1F600's)",
        {F: _flip(_flip(file, first), second)}, key=first)
    cfg = lora(r=2, lora_alpha=2, target_modules=["q_proj"], modules_to_save=["score"]).to_dict()
    for name, dtype, raw, what in (
        ("non_finite_f8_e4m3", torch.float8_e4m3fn, [0x38, 0x7F], "F8_E4M3 byte 7f, its NaN"),
        ("non_finite_f8_e5m2", torch.float8_e5m2, [0x3C, 0x7C], "F8_E5M2 byte 7c, +Inf (finite, 256, in E4M3)"),
    ):
        tensors = {**linear(Q, 2, 6, 4, 158), f"{P}score.weight": torch.tensor(raw, dtype=torch.uint8).view(dtype)}
        add(name, "non-finite", f"a modules_to_save tensor holding {what}", {F: st_bytes(tensors, file_meta(cfg))})


def recipe_valid_vectors(add: Callable[..., None]) -> None:
    """Valid vectors of the member rules of ``adapterkit.recipe`` (§5.6)."""
    cfg = lora(r=2, lora_alpha=2, target_modules=["q_proj"])
    steps = [{"adapterkit": "", "op": "quantize"},
             {"op": "resize", "rank": "sixteen", "inputs": None, "extra": {"nested": [1, None, True]}, "adapterkit": "0.1.0"}]
    t = linear(Q, 2, 6, 4, 160)
    text = json.dumps(steps, separators=(",", ":"))  # members in the order above, not sorted
    add("recipe_member_rules", "recipe steps checked only for a non-empty string `op` and a string `adapterkit`: an op "
        "outside the listed ones, an empty adapterkit, and members of any type are valid; stored with unsorted members, "
        "which a writer sorts when it saves the adapter again", "file", cfg, t, write="raw", path="adapter.safetensors",
        recipe=steps, files={"adapter.safetensors": st_bytes(t, {**file_meta(cfg.to_dict()), "adapterkit.recipe": text})})
    steps = [{"adapterkit": "0.1.0", "inputs": ["./mod\u00e8le-lora", "org/\U0001f600-lora"], "method": "cat", "op": "combine",
              "weights": [1, 1]}]
    add("recipe_non_ascii", "a recipe naming inputs with non-ASCII characters: the recipe text keeps them as they are "
        "(not \\uXXXX), and the header then escapes them", "file", cfg, linear(Q, 2, 6, 4, 162), recipe=steps)
    t = linear(Q, 2, 6, 4, 164)
    add("recipe_empty_array", "adapterkit.recipe `[]`: an array of no steps is valid (a writer writes no key instead)", "file",
        cfg, t, write="raw", path="adapter.safetensors",
        files={"adapter.safetensors": st_bytes(t, {**file_meta(cfg.to_dict()), "adapterkit.recipe": "[]"})})
    d = digest_adapter()
    header, data = split_st(saved(d, "file")["adapter.safetensors"])
    header["__metadata__"]["adapterkit.recipe"] = json.dumps(steps, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    add("recipe_added_after_digest", "`digest_file` with a recipe added and its digest kept: the digest does not cover the "
        "recipe", "file", d.config, dict(d.tensors), write="raw", path="adapter.safetensors", format_version=VERSION,
        recipe=steps, files={"adapter.safetensors": raw_st(header, data)})


def recipe_invalid_vectors(add: Callable[..., None], good_t: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Invalid vectors of the member rules of ``adapterkit.recipe`` (§5.6); a reader that does not read recipes
    reads them as valid (``requires: recipe``)."""
    F = "adapter.safetensors"
    for name, text, what in (
        ("recipe_step_without_adapterkit", '[{"op":"resize","rank":2}]', "a step lacks `adapterkit`"),
        ("recipe_op_empty", '[{"adapterkit":"0.1.0","op":""}]', "a step's `op` is the empty string"),
        ("recipe_op_not_string", '[{"adapterkit":"0.1.0","op":3}]', "a step's `op` is a number"),
        ("recipe_adapterkit_not_string", '[{"adapterkit":1,"op":"resize"}]', "a step's `adapterkit` is a number"),
        ("recipe_nan", '[{"adapterkit":"0.1.0","op":"resize","rank":NaN}]', "a step's member holds NaN, which is not JSON"),
        ("recipe_duplicate_member", '[{"adapterkit":"0.1.0","op":"resize","op":"prune"}]', "a step names `op` twice"),
        ("recipe_second_step_bad", '[{"adapterkit":"0.1.0","op":"resize"},{"adapterkit":"0.1.0"}]',
         "the first step is well-formed, the second lacks `op`: every element is checked"),
    ):
        add(name, "metadata-invalid", f"adapterkit.recipe: {what}", {F: st_bytes(good_t, {**meta, "adapterkit.recipe": text})},
            requires="recipe")


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
            exp.update({k: v[k] for k in ("adapter_name", "requires", "key", "errors") if k in v})
            (root / "expected.json").write_bytes(dump_json(exp))
            _check_invalid(v["name"], root / v["path"], v["code"], v.get("adapter_name"), v.get("key", _NO_KEY), v.get("errors"))
        out.update(_collect(Path(tmp), "vectors"))
    return out


_NO_KEY = object()  # an invalid vector that does not name the part at fault


def _check_invalid(name: str, path: Path, code: str, adapter_name: str | None, key: Any = _NO_KEY,
                   errors: list[str] | None = None) -> None:
    try:
        adapterkit.load(path, adapter_name=adapter_name)
    except adapterkit.AdapterkitError as exc:
        if exc.code != code:
            raise AssertionError(f"invalid vector {name}: load raised {exc.code}, expected {code}: {exc}") from exc
        if key is not _NO_KEY and exc.key != key:
            raise AssertionError(f"invalid vector {name}: load named {exc.key!r}, expected {key!r}") from exc
    else:
        raise AssertionError(f"invalid vector {name}: load succeeded, expected {code}")
    codes = [p.code for p in adapterkit.validate(path, adapter_name=adapter_name) if p.severity == "error"]
    if sorted(set(codes)) != (errors or [code]):
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
