#!/usr/bin/env python
"""Mutation testing of the conformance vectors: does every rule of spec/v1 have a vector that
fails on a reader (or writer) that skips or misreads it?

Each mutant is one plausible misreading of one rule id of ``spec/v1/README.md`` (a rule
skipped, an off-by-one, a wrong order, a wrong code), written as an exact text patch to one
file of the ``adapterkit`` package.  For each mutant the package is copied to a temporary
directory, the patch is applied to the copy (the real files are never touched), and
``scripts/run_vectors.py`` runs every vector against the copy in a subprocess whose
PYTHONPATH is the copy.  A mutant is *killed* when at least one vector fails.  A rule is
*pinned* when it has at least one mutant and every one of its mutants is killed.

The script refuses to run when a patch no longer applies (its ``old`` text must occur exactly
once), when a mutated file does not compile, when the unmutated copy fails a vector, or when
a rule id of the README has no mutant: the list has to follow the code and the text.

Usage:
  python scripts/mutate_vectors.py                 # table and summary; exit 1 unless every rule is pinned
  python scripts/mutate_vectors.py -k '^R5.2|^R8' -j 4   # only the rules of §5.2 and §8, 4 at a time
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "adapterkit"
README = ROOT / "spec" / "v1" / "README.md"
VECTORS = ROOT / "spec" / "v1" / "vectors"
RUNNER = ROOT / "scripts" / "run_vectors.py"
RULE_DEF = re.compile(r"\*\*\[(R[0-9.]+-[0-9]+)\]\*\*")


@dataclass(frozen=True)
class Mutant:
    rule: str  # the rule id it breaks
    name: str  # what the misreading is
    file: str  # path inside the adapterkit package
    old: str  # exact text, occurring once in the file
    new: str


M = Mutant
SF, RD, VS, JS, BF, WR = "io/safetensors_file.py", "io/reader.py", "io/version.py", "io/jsontext.py", "io/bin_file.py", "io/writer.py"
LO, IA, PL, BA, PA, VA = "kinds/lora.py", "kinds/ia3.py", "kinds/prompt_learning.py", "kinds/base.py", "kinds/patterns.py", "validate.py"
DG = "io/digest.py"
V2 = '    return json.dumps(peft_key_order(config), separators=(",", ":")).encode("ascii")'  # the 1.2 canonical JSON

MUTANTS: list[Mutant] = [
    # §1: strict JSON, integers
    M("R1-1", "repeated member names allowed (last wins)", JS, 'raise ValueError(f"duplicate member name {name!r}")', "pass"),
    M("R1-1", "NaN/Infinity literals accepted", JS, '"parse_constant": _no_constant, ', ""),
    M("R1-1", "numbers beyond a double accepted (inf)", JS, '"parse_float": _finite_float', '"parse_float": float'),
    M("R1-1", "unpaired surrogate escapes accepted", JS, "        _check_strings(value)\n", "        pass\n"),
    M("R1-1", "integers beyond a double accepted", JS, "        float(value)\n", "        pass\n"),
    M("R1-1", "nesting past 127 levels accepted", SF, "        if len(entry) > 3 and _too_deep(entry):", "        if False:"),
    M("R1-2", "-0 read as the integer 0", JS, '    if token == "-0":\n        return -0.0\n', ""),
    M("R1-1", "the header parsed leniently (config strictly)", SF, "obj = loads_strict(raw)", "obj = __import__('json').loads(raw)"),
    M("R1-1", "configs parsed leniently (the header strictly)", RD, "        return loads_strict(text)\n",
      "        return __import__('json').loads(text)\n"),
    M("R1-2", "integral floats accepted in shapes", SF,
      '        if not isinstance(shape, list):\n            raise _bad(path, "shape must be a list of non-negative integers", key, actual=shape)',
      '        shape = [int(d) if isinstance(d, float) and d.is_integer() else d for d in shape] if isinstance(shape, list) else shape\n        if not isinstance(shape, list):\n            raise _bad(path, "shape must be a list of non-negative integers", key, actual=shape)'),
    M("R1-2", "integral floats accepted in data_offsets", SF,
      '        if type(begin) is not int or type(end) is not int or begin < 0 or end < 0:',
      '        begin, end = (int(o) if isinstance(o, float) and o.is_integer() else o for o in (begin, end))\n        if type(begin) is not int or type(end) is not int or begin < 0 or end < 0:'),
    M("R1-2", "integral floats accepted as config integers", BA,
      '"integer": lambda v: isinstance(v, int) and not isinstance(v, bool),',
      '"integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),'),
    M("R1-2", "booleans accepted as integers (Python's bool is an int)", BA,
      '"integer": lambda v: isinstance(v, int) and not isinstance(v, bool),', '"integer": lambda v: isinstance(v, int),'),
    # §4.1 directory form
    M("R4.1-1", "adapter_config.json written without sorted keys", WR, "json.dumps(peft_key_order(adapter.config.to_dict()), indent=2)",
      "json.dumps(adapter.config.to_dict(), indent=2)"),
    M("R4.1-1", "adapter_config.json written with every object sorted (PEFT 0.21, adapterkit 1.1)", WR,
      "json.dumps(peft_key_order(adapter.config.to_dict()), indent=2)", "json.dumps(adapter.config.to_dict(), indent=2, sort_keys=True)"),
    M("R4.1-1", "adapter_config.json written with a trailing newline", WR,
      "return json.dumps(peft_key_order(adapter.config.to_dict()), indent=2)",
      'return json.dumps(peft_key_order(adapter.config.to_dict()), indent=2) + "\\n"'),
    M("R4.1-2", "a config file not laid out as PEFT writes it is refused", RD, "    return _parse_json(raw, path=path)\n",
      "    data = _parse_json(raw, path=path)\n"
      "    if isinstance(data, dict) and raw != __import__('json').dumps(data, indent=2, sort_keys=True).encode():\n"
      "        raise ConfigError('config not in canonical layout', path=path)\n"
      "    return data\n"),
    M("R4.1-3", "the directory form's weights carry adapterkit.config too", WR,
      "    if form == \"file\":\n        metadata[CONFIG_KEY] =", "    if True:\n        metadata[CONFIG_KEY] ="),
    M("R4.1-3", "the directory form also gets a README.md", WR,
      "        files = {WEIGHTS_NAME: encoder or encode(tensors, metadata), CONFIG_NAME: [config_json(adapter).encode(\"utf-8\")]}",
      "        files = {WEIGHTS_NAME: encoder or encode(tensors, metadata), CONFIG_NAME: [config_json(adapter).encode(\"utf-8\")], 'README.md': [b'# adapter']}"),
    M("R4.1-4", "an embedded config in the directory form is not compared", RD,
      "if embedded is not None and not _same_json(embedded, config_data):", "if False:"),
    M("R4.1-4", "compared as text (compact, sorted) instead of as JSON values", RD,
      "        return json_equal(loads_strict(text), data)",
      "        return text == __import__('json').dumps(data, sort_keys=True, separators=(',', ':'))"),
    M("R4.1-4", "compared with Python's == (true equals 1)", RD, "        return json_equal(loads_strict(text), data)",
      "        return loads_strict(text) == data"),
    M("R4.1-4", "a non-JSON embedded config is config-invalid in the directory form", RD,
      "    except (ValueError, RecursionError):\n        return False",
      "    except (ValueError, RecursionError) as exc:\n        raise ConfigError('embedded config is not JSON') from exc"),
    M("R4.1-5", "several adapter subfolders: the first is taken", RD, "    if len(subs) == 1:\n        return subs[0]",
      "    if len(subs) >= 1:\n        return subs[0]"),
    M("R4.1-5", "a missing named subfolder is not-an-adapter (revision 1)", RD,
      'code="adapter-not-found", path=sub', 'code="not-an-adapter", path=sub'),
    M("R4.1-5", "the adapter name is ignored when the directory itself holds an adapter", RD,
      "    if adapter_name:\n        sub = path / adapter_name",
      "    if adapter_name and not (path / CONFIG_NAME).is_file():\n        sub = path / adapter_name"),
    M("R4.1-6", "only adapter_model.safetensors counts as weights for config-missing", RD,
      "    if (path / WEIGHTS_NAME).exists() or (path / BIN_NAME).exists():", "    if (path / WEIGHTS_NAME).exists():"),
    M("R4.1-6", "weights without config reported as not-an-adapter", RD,
      'raise ConfigError("weights found but no adapter_config.json", code="config-missing"',
      'raise ConfigError("weights found but no adapter_config.json", code="not-an-adapter"'),
    M("R4.1-7", "adapter_model.bin preferred over adapter_model.safetensors", RD,
      "        weights = folder / WEIGHTS_NAME\n        if not weights.exists():\n            weights = folder / BIN_NAME",
      "        weights = folder / BIN_NAME\n        if not weights.exists():\n            weights = folder / WEIGHTS_NAME"),
    M("R4.1-7", "no weights reported as not-an-adapter", RD, 'raise NotFoundError("no adapter weights", code="weights-missing"',
      'raise NotFoundError("no adapter weights", code="not-an-adapter"'),
    M("R4.1-8", "the directory form also gets an adapter_model.bin", WR,
      "        files = {WEIGHTS_NAME: encoder or encode(tensors, metadata), CONFIG_NAME: [config_json(adapter).encode(\"utf-8\")]}",
      "        files = {WEIGHTS_NAME: encoder or encode(tensors, metadata), CONFIG_NAME: [config_json(adapter).encode(\"utf-8\")], 'adapter_model.bin': [b'x']}"),
    M("R4.1-9", "the unrestricted unpickler (weights_only=False)", BF, 'map_location="cpu", weights_only=True',
      'map_location="cpu", weights_only=False'),
    M("R4.1-9", "a file that is not a checkpoint reported as unsafe-pickle", BF,
      'str(exc)[:200]})", code="bin-invalid", path=path) from exc', 'str(exc)[:200]})", code="unsafe-pickle", path=path) from exc'),
    M("R4.1-9", "state-dict values not checked to be tensors", BF,
      "if not isinstance(key, str) or not isinstance(value, torch.Tensor):", "if not isinstance(key, str):"),
    M("R4.1-9", "no .bin support, refused as weights-missing instead of bin-unsupported", BF,
      "    path = Path(path)\n    if not path.is_file():",
      "    raise NotFoundError('no .bin support', code='weights-missing', path=path)\n    path = Path(path)\n    if not path.is_file():"),
    # §4.2, §4.3
    M("R4.2-1", "the embedded config written with spaces", WR,
      'metadata[CONFIG_KEY] = json.dumps(peft_key_order(config), separators=(",", ":"))',
      "metadata[CONFIG_KEY] = json.dumps(peft_key_order(config))"),
    M("R4.2-1", "the embedded config written with every object sorted", WR,
      'metadata[CONFIG_KEY] = json.dumps(peft_key_order(config), separators=(",", ":"))',
      'metadata[CONFIG_KEY] = json.dumps(config, sort_keys=True, separators=(",", ":"))'),
    M("R4.2-2", "an embedded config without a version read under the PEFT profile", RD,
      "            if version is None:\n                raise FormatError(", "            if False:\n                raise FormatError("),
    M("R4.2-3", "a non-JSON embedded config is metadata-invalid in the single-file form", RD,
      '            data = _parse_json(header.metadata[CONFIG_KEY], path=path, key=f"__metadata__.{CONFIG_KEY}")',
      "            try:\n"
      "                data = loads_strict(header.metadata[CONFIG_KEY])\n"
      "            except ValueError as exc:\n"
      "                raise FormatError('embedded config is not JSON', code='metadata-invalid', path=path) from exc"),
    M("R4.3-1", "suffixes compared case-insensitively", RD, '    elif path.suffix == ".safetensors":',
      '    elif path.suffix.lower() == ".safetensors":'),
    M("R4.3-1", "a missing path reported as not-an-adapter", RD, 'raise NotFoundError("no such file or directory", path=path)',
      'raise NotFoundError("no such file or directory", code="not-an-adapter", path=path)'),
    M("R4.3-1", "a weights file without an embedded config is always config-missing", RD,
      "            if not config_path.is_file():\n                raise ConfigError(",
      "            if True:\n                raise ConfigError("),
    # §5.2 the container
    M("R5.2-0", "tensor values checked while the entries are read, before the layout rules", SF,
      "    cursor = 0\n    ordered = sorted(",
      "    for _i in infos.values():\n"
      "        with open(path, 'rb') as _f:\n"
      "            _f.seek(data_start + _i.begin)\n"
      "            _b = _f.read(_i.nbytes)\n"
      "        if len(_b) == _i.nbytes and _i.dtype == 'F32' and _b and not torch.isfinite(torch.frombuffer(bytearray(_b), dtype=torch.float32)).all():\n"
      "            raise _bad(path, 'non-finite', _i.key, code='non-finite')\n"
      "    cursor = 0\n    ordered = sorted("),
    M("R5.2-1", "a file shorter than 8 bytes reported as header-invalid", SF,
      '"file is too short to hold a safetensors header",\n                    code="truncated-file"',
      '"file is too short to hold a safetensors header",\n                    code="header-invalid"'),
    M("R5.2-2", "the limit of revision 1 (100 MiB)", SF, "MAX_HEADER_BYTES = 100_000_000", "MAX_HEADER_BYTES = 100 * 1024 * 1024"),
    M("R5.2-2", "off by one: N = 10^8 refused", SF, "if n > MAX_HEADER_BYTES:", "if n >= MAX_HEADER_BYTES:"),
    M("R5.2-2", "the file size checked before the header limit", SF,
      "            if n > MAX_HEADER_BYTES:", "            if 8 + n > size:\n                raise FormatError('short', code='truncated-file', path=path)\n            if n > MAX_HEADER_BYTES:"),
    M("R5.2-3", "a header past the end of the file reported as header-invalid", SF,
      '"file ends inside the header", code="truncated-file"', '"file ends inside the header", code="header-invalid"'),
    M("R5.2-4", "a header that is not an object reported as metadata-invalid", SF,
      'raise _bad(path, "header must be a JSON object", expected', 'raise _bad(path, "header must be a JSON object", code="metadata-invalid", expected'),
    M("R5.2-5", "non-string metadata values accepted", SF, "isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()",
      "isinstance(k, str) for k, v in metadata.items()"),
    M("R5.2-5", "__metadata__: null refused", SF, 'metadata = obj.pop("__metadata__", None)\n    if metadata is None:\n        metadata = {}',
      'metadata = obj.pop("__metadata__", {})'),
    M("R5.2-6", "the version matched with $ (a trailing newline passes)", VS, "m = _VERSION.fullmatch(version)",
      "m = re.match(_VERSION.pattern + '$', version)"),
    M("R5.2-6", "leading zeros accepted", VS, '_VERSION = re.compile(r"(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)")',
      '_VERSION = re.compile(r"([0-9]+)\\.([0-9]+)")'),
    M("R5.2-7", "the version checked after the tensor entries (revision 1's order)", SF,
      "    check_version(metadata, path)  # before the tensor rules: a later major version may change them\n", ""),
    M("R5.2-7", "format checked before the version", SF,
      "    check_version(metadata, path)  # before the tensor rules",
      "    if 'adapterkit.version' in metadata and metadata.get('format') != 'pt':\n"
      "        raise _bad(path, 'format must be pt', code='metadata-invalid')\n"
      "    check_version(metadata, path)  # before the tensor rules"),
    M("R5.2-7", "a version with another major is metadata-invalid (the 1.0 schema's pattern)", VS,
      "        raise VersionError(\n            \"unsupported adapterkit format major version\"",
      "        raise FormatError(\n            \"unsupported adapterkit format major version\", code=\"metadata-invalid\""),
    M("R5.2-8", "negative dimensions accepted", SF, '            if type(d) is not int or d < 0:', '            if type(d) is not int:'),
    M("R5.2-8", "no limit on the element count", SF, '        if count >= 2**63:  #', '        if False:  #'),
    M("R5.2-8", "off by one: 2^63 elements accepted", SF, '        if count >= 2**63:  #', '        if count > 2**63:  #'),
    M("R5.2-8", "data_offsets of any length >= 2", SF, "or len(offsets) != 2", "or len(offsets) < 2"),
    M("R5.2-8", "an entry that is not an object skipped", SF,
      '        if not isinstance(entry, dict):\n            raise _bad(path, "tensor entry must be an object", key)',
      "        if not isinstance(entry, dict):\n            continue"),
    M("R5.2-9", "BOOL taken as one bit per element", SF, '        expected = math.prod(shape) * itemsize',
      "        expected = -(-math.prod(shape) // 8) if dtype == 'BOOL' else math.prod(shape) * itemsize"),
    M("R5.2-9", "only end >= begin checked, not the size", SF, "if end < begin or end - begin != expected:", "if end < begin:"),
    M("R5.2-10", "sorted by begin alone (ties in header order)", SF, '    ordered = sorted(infos.values(), key=_BEGIN_END)',
      '    ordered = sorted(infos.values(), key=lambda i: i.begin)'),
    M("R5.2-10", "zero-size tensors exempt from the layout rule", SF, "    for info in ordered:\n        if info.begin != cursor:",
      "    for info in ordered:\n        if info.begin == info.end:\n            continue\n        if info.begin != cursor:"),
    M("R5.2-10", "holes allowed (only overlaps refused)", SF, "        if info.begin != cursor:", "        if info.begin < cursor:"),
    M("R5.2-11", "data past the end reported as offset-out-of-range", SF,
      'path, "file ends before the tensor data", cut.key, code="truncated-file"',
      'path, "file ends before the tensor data", cut.key, code="offset-out-of-range"'),
    M("R5.2-12", "trailing bytes allowed", SF, "    if cursor < data_len:", "    if False:"),
    M("R5.2-13", "tensor data assumed to lie in key order (data_offsets used only for sizes)", SF,
      "    return Header(path, dict(metadata), infos, data_start)",
      "    _at, _moved = 0, {}\n"
      "    for _k in sorted(infos):\n"
      "        _i = infos[_k]\n"
      "        _moved[_k] = TensorInfo(_k, _i.dtype, _i.shape, _at, _at + _i.nbytes)\n"
      "        _at += _i.nbytes\n"
      "    return Header(path, dict(metadata), _moved, data_start)"),
    # §5.3 metadata
    M("R5.3-1", 'format not checked in adapterkit files', RD, '    if fmt != "pt" and not (version is None and fmt is None):', '    if fmt not in (None, "pt"):'),
    M("R5.3-1", 'format not checked in PEFT-profile files', RD, '    if fmt != "pt" and not (version is None and fmt is None):', '    if fmt != "pt" and version is not None:'),
    M("R5.3-1", 'format REQUIRED in PEFT-profile files too', RD, '    if fmt != "pt" and not (version is None and fmt is None):', '    if fmt != "pt":'),
    M("R5.3-2", "unknown adapterkit.* metadata keys refused", RD,
      "    version = check_version(metadata, path)  # read_header has checked it already; the version comes first\n",
      "    version = check_version(metadata, path)\n"
      "    if any(k.startswith('adapterkit.') and k not in (VERSION_KEY, CONFIG_KEY) for k in metadata):\n"
      "        raise FormatError('unknown key', code='metadata-invalid', path=path)\n"),
    # §5.6 adapterkit.recipe
    M("R5.6-1", "the recipe is not written", WR, "    if adapter.recipe:  # provenance (spec §5.6), in both forms; not part of the digest\n", "    if False:\n"),
    M("R5.6-1", "the recipe is written with spaces (not compact)", "io/recipe.py",
      'sort_keys=True, separators=(",", ":"), ensure_ascii=False)', 'sort_keys=True, ensure_ascii=False)'),
    M("R5.6-2", "the recipe is not read back", RD, "    return () if text is None else decode(text, path=path)", "    return ()"),
    M("R5.6-3", "a recipe that is not JSON is ignored", "io/recipe.py", "        data = loads_strict(text)\n    except (ValueError, RecursionError) as exc:\n        raise",
      "        data = loads_strict(text)\n    except (ValueError, RecursionError):\n        return ()\n        raise"),
    M("R5.6-3", "a recipe that is not an array is accepted", "io/recipe.py", "    if not isinstance(data, list):\n", "    if isinstance(data, dict):\n        data = [data]\n    if not isinstance(data, list):\n"),
    M("R5.6-3", "steps are not checked", "io/recipe.py", '        for member in ("op", "adapterkit"):\n', '        for member in ():\n'),
    M("R5.6-3", "a non-object step is accepted", "io/recipe.py", "        if not isinstance(item, dict):\n", "        if not isinstance(item, (dict, str)):\n"),
    # §5.4 writer determinism
    M("R5.4-1", "tensor data laid out by key only", SF, "return sorted(tensors, key=lambda k: (-tensors[k].dtype.itemsize, k))",
      "return sorted(tensors)"),
    M("R5.4-1", "header not padded to 8 bytes", SF, '    raw += b" " * (-len(raw) % 8)\n    return struct', "    return struct"),
    M("R5.4-1", "non-ASCII written as UTF-8 in the header", SF,
      'raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")',
      'raw = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")'),
    # §6 tensor values
    M("R6-1", "every tensor restricted to float dtypes (whole-module ones too)", VA,
      "if dtype not in ALLOWED_DTYPES and adapter.kind.parse_key(key) is not None:", "if dtype not in ALLOWED_DTYPES:"),
    M("R6-1", "dtype rule skipped", VA, "if dtype not in ALLOWED_DTYPES and adapter.kind.parse_key(key) is not None:", "if False:"),
    M("R6-1", "only LoRA-style keys (base_model.model.) are adapter tensors", VA,
      "if dtype not in ALLOWED_DTYPES and adapter.kind.parse_key(key) is not None:",
      "if dtype not in ALLOWED_DTYPES and key.startswith('base_model.model.') and adapter.kind.parse_key(key) is not None:"),
    M("R6-2", "finiteness checked only on adapter tensors", VA, "    return [p for key in adapter.tensors if (p := _non_finite(",
      "    return [p for key in adapter.tensors if adapter.kind.parse_key(key) is not None and (p := _non_finite("),
    M("R6-2", "finiteness checked only on F32 tensors", VA, "    if not t.is_floating_point() or _all_finite(t):",
      "    if t.dtype != torch.float32 or _all_finite(t):"),
    # §7 config
    M("R7-1", "a config without peft_type reported as peft-type-unsupported", "kinds/__init__.py",
      'raise ConfigError("config has no peft_type", path=path,', 'raise ConfigError("config has no peft_type", code="peft-type-unsupported", path=path,'),
    M("R7-1", "a config that is not an object is not-an-adapter", "kinds/__init__.py",
      'raise ConfigError("adapter config must be a JSON object", path=path,', 'raise ConfigError("adapter config must be a JSON object", code="not-an-adapter", path=path,'),
    M("R7-2", "an unknown peft_type is config-invalid", "kinds/__init__.py", '"unsupported peft_type", code="peft-type-unsupported"',
      '"unsupported peft_type", code="config-invalid"'),
    M("R7-3", "minimum not checked", BA, '    if "minimum" in schema and isinstance(value, (int, float)) and value < schema["minimum"]:',
      "    if False:"),
    M("R7-3", "enum not checked", BA, '    if "enum" in schema and value not in schema["enum"]:', "    if False:"),
    M("R7-3", "REQUIRED fields not enforced", BA, '                if f.metadata.get("required"):\n                    reject(ConfigError(',
      "                if False:\n                    reject(ConfigError("),
    M("R7-4", "uninterpreted members dropped", BA, "        config = cls(**values, extra=data, unknown=frozenset(unknown))", "        config = cls(**values, extra={}, unknown=frozenset(unknown))"),
    M("R7-5", "writers add their own member to adapter_config.json", WR,
      "    return json.dumps(peft_key_order(adapter.config.to_dict()), indent=2)",
      "    return json.dumps(peft_key_order({**adapter.config.to_dict(), 'adapterkit_version': '1.0'}), indent=2)"),
    # §8 LoRA
    M("R8.1-1", "pattern keys compiled alone, not wrapped", LO, '                    re.compile(rf"(.*\\.)?({key})$")', "                    re.compile(key)"),
    M("R8.1-1", "pattern keys not checked", LO, '                    re.compile(rf"(.*\\.)?({key})$")', "                    pass"),
    M("R8.3-1", "patterns applied in sorted order, not stored order", PA, '    for key in pattern_keys:\n        regex = _pattern_regex(key)',
      '    for key in sorted(pattern_keys):\n        regex = _pattern_regex(key)'),
    M("R8.3-1", "the last matching key wins", PA, '    for key in pattern_keys:\n        regex = _pattern_regex(key)',
      '    for key in reversed(list(pattern_keys)):\n        regex = _pattern_regex(key)'),
    M("R8.3-1", "re.search instead of re.match (no dot boundary)", PA, '        return re.compile(rf"(.*\\.)?({key})$")',
      '        return re.compile(rf".*?({key})$")'),
    M("R8.3-1", "re.fullmatch of the key alone", PA, '        return re.compile(rf"(.*\\.)?({key})$")',
      '        return type("FullMatch", (), {"match": staticmethod(re.compile(rf"(.*\\.)?{key}").fullmatch)})()'),
    M("R8.3-2", "rsLoRA scaling alpha / r", LO, "return alpha / math.sqrt(r) if self.use_rslora else alpha / r", "return alpha / r"),
    M("R8.3-2", "scaling computed in single precision", LO, "return alpha / math.sqrt(r) if self.use_rslora else alpha / r",
      "return float(torch.tensor(alpha, dtype=torch.float32) / (torch.tensor(r, dtype=torch.float32).sqrt() if self.use_rslora else r))"),
    M("R8.4-1", "modules target_modules does not select are refused", LO, "    names = list(groups)\n",
      "    names = list(groups)\n    for _n in names:\n        if not matches_target(cfg.target_modules, _n):\n"
      "            add('unexpected-key', 'not targeted', _n)\n"),
    M("R8.4-2", "list targets matched without a dot boundary", PA, '    return any(module == t or module.endswith("." + t) for t in targets)',
      "    return any(module.endswith(t) for t in targets)"),
    M("R8.4-2", "string targets matched with re.search", PA, "        return re.fullmatch(regex, module) is not None",
      "        return re.search(regex, module) is not None"),
    M("R8.5-1", "a lone A or B accepted", LO, "        if a_part not in parts or b_part not in parts:\n", "        if False:\n"),
    M("R8.5-2", "embedding and linear parts may be mixed", LO,
      '        if embedding and ({"lora_A.weight", "lora_B.weight", "lora_B.bias"} & parts.keys()):', "        if False:"),
    M("R8.5-3", "conv B kernel not checked", LO, "or len(b) != len(a) or any(d != 1 for d in b[2:]):", "or len(b) != len(a):"),
    M("R8.5-3", "Linear factors' dimensions not checked", LO, "            if len(a) != 2 or len(b) != 2:", "            if False:"),
    M("R8.5-4", "B's rank not checked", LO, "        if b[1] != r and not rank_unknown:\n", "        if False:\n"),
    M("R8.5-4", "A's rank not checked", LO, "        if a[0] != r and not rank_unknown:\n", "        if False:\n"),
    M("R8.5-5", "a missing lora_B.bias accepted", LO, "        elif cfg.lora_bias and not embedding:", "        elif False:"),
    M("R8.5-5", "lora_B.bias shape not checked", LO, "            elif adapter.meta(key).shape != (out,):\n                add(\"shape-mismatch\", f\"lora_B.bias",
      "            elif False:\n                add(\"shape-mismatch\", f\"lora_B.bias"),
    M("R8.5-6", "a magnitude without use_dora accepted", LO,
      '            if not cfg.use_dora:\n                add("unexpected-key"', '            if False:\n                add("unexpected-key"'),
    M("R8.5-6", "conv magnitudes taken as (out,)", LO, "want = (out,) if embedding or len(a) == 2 else (1, out) + (1,) * (len(a) - 2)",
      "want = (out,)"),
    M("R8.5-6", "an embedding's magnitude sized by num_embeddings", LO,
      "want = (out,) if embedding or len(a) == 2 else", "want = (a[1],) if embedding else (out,) if len(a) == 2 else"),
    M("R8.5-7", "grouped convolutions reported as shape-mismatch (revision 1)", LO,
      'add("groups-unsupported", f"`{name}` is LoRA', 'add("shape-mismatch", f"`{name}` is LoRA'),
    M("R8.5-7", "any B rank below r taken for a grouped convolution", LO,
      "and 1 <= b[1] < r and r % b[1] == 0 and b[0] % (r // b[1]) == 0:", "and 1 <= b[1] < r:"),
    M("R8.6-1", "the compute dtype from B for every layer type", LO,
      "    ct = _compute_dtype(b_raw if view.layer_type == \"linear\" else a_raw)", "    ct = _compute_dtype(b_raw)"),
    M("R8.6-1", "F64 when either factor is F64", LO,
      "    ct = _compute_dtype(b_raw if view.layer_type == \"linear\" else a_raw)",
      "    ct = torch.float64 if torch.float64 in (a_raw.dtype, b_raw.dtype) else torch.float32"),
    M("R8.6-1", "always F32 (F64 factors computed in F32)", LO,
      "    ct = _compute_dtype(b_raw if view.layer_type == \"linear\" else a_raw)", "    ct = torch.float32"),
    M("R8.6-2", "fan_in_fan_out not transposed", LO, "        if view.fan_in_fan_out:\n            out = out.T", "        pass"),
    M("R8.6-2", "the Conv2d 1x1 shortcut applied to any conv whose kernel starts 1x1 (PEFT's Conv3d bug)", LO,
      '    elif view.layer_type == "conv2d" and A.shape[2:4] == (1, 1):',
      '    elif view.layer_type in ("conv2d", "conv3d") and A.shape[2:4] == (1, 1):'),
    M("R8.6-2", "embedding ΔW not transposed", LO, "        out = (B @ A).T * view.scaling", "        out = (B @ A) * view.scaling"),
    M("R8.6-3", "scaling multiplied in double precision, then rounded", LO,
      "        out = out * view.scaling\n", "        out = (out.double() * view.scaling).to(out.dtype)\n"),
    M("R8.6-3", "scaling applied to A before the product", LO, "        out = B @ A\n", "        out = B @ (A * view.scaling) / view.scaling\n"),
    M("R8.8-1", "only tensors of the kinds' grammars kept", SF,
      "    return Header(path, dict(metadata), infos, data_start)",
      "    _parts = ('lora_A.weight', 'lora_B.weight', 'lora_B.bias', 'lora_embedding_A', 'lora_embedding_B',\n"
      "              'lora_magnitude_vector', 'ia3_l', 'prompt_embeddings')\n"
      "    infos = {k: i for k, i in infos.items() if k.endswith(_parts)}\n"
      "    return Header(path, dict(metadata), infos, data_start)"),
    M("R8.8-1", "no warning for keys outside the grammar", LO,
      '        if key not in grouped and not whole_unknown and not _whole_module_ok(cfg, key) and feature_tensor(key) is None:', '        if False:'),
    M("R8.8-1", "modules_to_save names matched without a dot boundary", PA, "    return any(m == n or m.endswith(\".\" + n) for m in modules for n in names)",
      "    return any(m.endswith(n) for m in modules for n in names)"),
    # §9 IA3
    M("R9-1", "feedforward_modules not checked against target_modules", IA,
      "if isinstance(ff, tuple) and isinstance(targets, tuple) and not set(ff) <= set(targets):", "if False:"),
    M("R9-2", "feedforward lists matched with a dot boundary", PA, "    return any(module.endswith(t) for t in feedforward)",
      '    return any(module == t or module.endswith("." + t) for t in feedforward)'),
    M("R9-2", "ordinary/feedforward orientation not checked", IA,
      "            ok = shape[0] == 1 if view.is_feedforward else shape[1] == 1", "            ok = 1 in shape"),
    M("R9-2", "3-D vectors (nn.Conv1d) accepted", IA, "        elif len(shape) in (4, 5):", "        elif len(shape) in (3, 4, 5):"),
    M("R9-2", "conv vectors' leading 1 not checked", IA, "            ok = shape[0] == 1 and all(d == 1 for d in shape[2:])",
      "            ok = all(d == 1 for d in shape[2:])"),
    M("R9-3", "IA3 modules_to_save tensors warned about", IA,
      "        if parse_key(key) is None and \"modules_to_save\" not in cfg.unknown and not matches_modules_to_save(cfg.modules_to_save, key, PREFIX):",
      "        if parse_key(key) is None:"),
    M("R9-3", "no warning for IA3 keys outside the grammar", IA,
      "        if parse_key(key) is None and \"modules_to_save\" not in cfg.unknown and not matches_modules_to_save(cfg.modules_to_save, key, PREFIX):",
      "        if False:"),
    # §10 prompt kinds
    M("R10-1", "prefix tuning rows multiplied by the submodules", "kinds/prefix_tuning.py",
      "        return (self.num_virtual_tokens, 2 * self.num_layers * self.token_dim)",
      "        return (self.num_virtual_tokens * self.num_transformer_submodules, 2 * self.num_layers * self.token_dim)"),
    M("R10-1", "prompt tuning rows not multiplied by the submodules", PL,
      "        return (self.num_virtual_tokens * self.num_transformer_submodules, self.token_dim)",
      "        return (self.num_virtual_tokens, self.token_dim)"),
    M("R10-1", "a missing prompt_embeddings accepted", PL, "    if KEY not in adapter.tensors:\n        problems.append(",
      "    if KEY not in adapter.tensors:\n        pass\n    if False:\n        problems.append("),
    M("R10-2", "prompt kinds warn on modules_to_save tensors (revision 1)", PL,
      "        if key != KEY and not matches_modules_to_save(cfg.modules_to_save, key, PREFIX):", "        if key != KEY:"),
    M("R10-2", "prompt kinds' modules_to_save expected under base_model.model.", PL,
      'PREFIX = "base_model."  #', 'PREFIX = "base_model.model."  #'),
    M("R10-3", "prefix tuning without num_layers accepted", "kinds/prefix_tuning.py", "        if self.num_layers is None:",
      "        if False:"),
    # §5.5 content digest (1.1)
    M("R5.5-1", "the writer records no digest", WR, "    encoder = DigestingEncoder(tensors, metadata, config) if digest else None",
      "    encoder = None"),
    M("R5.5-1", "tensor entries recorded in file order, not sorted key order", DG,
      "    entries = [config_entry] + [tensor_entries[k] for k in sorted(tensor_entries)]",
      "    entries = [config_entry] + list(tensor_entries.values())"),
    M("R5.5-1", "the digest combines the entries without their count", DG,
      "hashlib.sha256(_field(_TAG_ALL) + _u64(len(entries)) + b\"\".join(entries))", "hashlib.sha256(_field(_TAG_ALL) + b\"\".join(entries))"),
    M("R5.5-2", "the tensor entry omits the dtype", DG, '_field(key.encode("utf-8")) + _field(dtype.encode("ascii"))', '_field(key.encode("utf-8"))'),
    M("R5.5-2", "the tensor entry omits the shape", DG, "    return head + b\"\".join(_u64(d) for d in shape) + _u64(nbytes)",
      "    return head + _u64(nbytes)"),
    M("R5.5-3", "the config hashed in its indented (adapter_config.json) layout", DG,
      '    return json.dumps(peft_key_order(config), separators=(",", ":")).encode("ascii")',
      '    return json.dumps(peft_key_order(config), indent=2).encode("ascii")'),
    M("R5.5-3", "the config hashed as read, defaults filled in", RD,
      "    problem = mismatch(entries, config_digest(config_data, adapter.format_version), entries_now, str(adapter.source))",
      "    problem = mismatch(entries, config_digest(adapter.config.to_dict(), adapter.format_version), entries_now, str(adapter.source))"),
    M("R5.5-4", "entries that do not combine to the digest accepted", DG, "    if combine(entries) != digest:", "    if False:"),
    M("R5.5-4", "a digest without its entries accepted", DG, "    if digest is None and digests is None:\n        return None",
      "    if digests is None:\n        return None"),
    M("R5.5-4", "upper-case hex entries accepted", DG, '_DIGESTS = re.compile(r"(?:[0-9a-f]{64})+")', '_DIGESTS = re.compile(r"(?:[0-9a-fA-F]{64})+")'),
    M("R5.5-5", "the digest not checked on load", RD, "            raise_first_error(digest.result())", "            pass"),
    M("R5.5-5", "the config entry not compared", DG, "    if config_entry != entries[0]:", "    if False:"),
    M("R5.5-5", "a removed tensor not noticed", DG, "    if len(entries) - 1 != len(tensor_entries):", "    if False:"),
    M("R5.5-6", "a file without a digest refused", DG, "    if digest is None and digests is None:\n        return None",
      "    if digest is None and digests is None:\n        raise FormatError('no content digest', code='metadata-invalid', path=path)"),
    # §5.5 and §5.6, read by an outsider: one mutant per plausible misreading of the TEXT of each MUST
    # (not of adapterkit's code), each killed by some vector (issue 17, point 9)
    M("R5.5-1", "tensor entries ordered by UTF-16 code units (JavaScript's sort), not code points", DG,
      "    entries = [config_entry] + [tensor_entries[k] for k in sorted(tensor_entries)]",
      "    entries = [config_entry] + [tensor_entries[k] for k in sorted(tensor_entries, key=lambda k: k.encode('utf-16-be'))]"),
    M("R5.5-1", "the digest combines the tensor entries only, without the config's", DG,
      "    entries = [config_entry] + [tensor_entries[k] for k in sorted(tensor_entries)]",
      "    entries = [config_entry] + [tensor_entries[k] for k in sorted(tensor_entries)]\n"
      "    return {DIGEST_KEY: combine(entries[1:]), DIGESTS_KEY: b''.join(entries).hex()}"),
    M("R5.5-1", "the digest's tag field left out", DG, "hashlib.sha256(_field(_TAG_ALL) + _u64(len(entries))", "hashlib.sha256(_u64(len(entries))"),
    M("R5.5-1", "the entry digests written in upper-case hex", DG, "DIGESTS_KEY: b\"\".join(entries).hex()}", "DIGESTS_KEY: b\"\".join(entries).hex().upper()}"),
    M("R5.5-2", "the tensor entry omits the rank m", DG, '_field(dtype.encode("ascii")) + _u64(len(shape))', '_field(dtype.encode("ascii"))'),
    M("R5.5-2", "u64 read as big-endian", DG, 'return struct.pack("<Q", n)', 'return struct.pack(">Q", n)'),
    M("R5.5-2", "the key hashed as it is escaped in the header (\\uXXXX), not as UTF-8", DG,
      '_field(_TAG_TENSOR) + _field(key.encode("utf-8"))', '_field(_TAG_TENSOR) + _field(json.dumps(key).strip(\'"\').encode("ascii"))'),
    M("R5.5-3", "1.2: the pattern objects sorted too (as in 1.1)", DG, "    if digest_keeps_pattern_order(version):", "    if False:"),
    M("R5.5-3", "1.1 files hashed with the pattern order kept (the 1.2 rule for every file)", DG,
      "    if digest_keeps_pattern_order(version):", "    if True:"),
    M("R5.5-3", "non-ASCII hashed as raw UTF-8", DG, V2,
      '    return json.dumps(peft_key_order(config), separators=(",", ":"), ensure_ascii=False).encode("utf-8")'),
    M("R5.5-3", "\\uXXXX escapes in upper-case hex", DG, V2,
      '    return re.sub(r"\\\\u[0-9a-f]{4}", lambda m: "\\\\u" + m[0][2:].upper(), json.dumps(peft_key_order(config), separators=(",", ":"))).encode("ascii")'),
    M("R5.5-3", "/ escaped as \\/", DG, V2,
      '    return json.dumps(peft_key_order(config), separators=(",", ":")).replace("/", "\\\\/").encode("ascii")'),
    M("R5.5-3", "U+007F written as it is (only U+0000 to U+001F escaped, as RFC 8259 requires)", DG, V2,
      '    return json.dumps(peft_key_order(config), separators=(",", ":")).replace("\\\\u007f", "\\x7f").encode("ascii")'),
    M("R5.5-3", "integral numbers written as integers (16 for 16.0, 100 for 1E2)", DG, V2,
      '    return re.sub(r"(?<=[0-9])\\.0(?=[,}\\]])", "", json.dumps(peft_key_order(config), separators=(",", ":"))).encode("ascii")'),
    M("R5.5-3", "member names ordered by UTF-16 code units", JS,
      "        return {k: v if k in PRESERVED_ORDER else peft_key_order(v) for k, v in sorted(value.items())}",
      "        return {k: v if k in PRESERVED_ORDER else peft_key_order(v) for k, v in sorted(value.items(), key=lambda kv: kv[0].encode('utf-16-be'))}"),
    M("R5.5-4", "the record checked when the data is read, after the config and the shapes", RD,
      "    recorded(metadata, path)  # the content digest's", "    pass  # the content digest's"),
    M("R5.5-4", "adapterkit.digests taken as any run of hex digits (a partial entry accepted)", DG,
      '_DIGESTS = re.compile(r"(?:[0-9a-f]{64})+")', '_DIGESTS = re.compile(r"[0-9a-f]+")'),
    M("R5.5-5", "the last differing tensor named, not the first", DG, "    for i, key in enumerate(sorted(tensor_entries)):\n        if tensor_entries[key] not in known:",
      "    for i, key in enumerate(sorted(tensor_entries, reverse=True)):\n        if tensor_entries[key] not in known:"),
    M("R5.5-5", "the first differing tensor in UTF-16 order", DG, "    for i, key in enumerate(sorted(tensor_entries)):\n        if tensor_entries[key] not in known:",
      "    for i, key in enumerate(sorted(tensor_entries, key=lambda k: k.encode('utf-16-be'))):\n        if tensor_entries[key] not in known:"),
    M("R5.5-5", "a record out of order accepted (entries compared as a set)", DG,
      "    for i, key in enumerate(sorted(tensor_entries)):  # every entry recorded", "    for i, key in enumerate([]):  # every entry recorded"),
    M("R5.5-5", "the count compared before the entries (an added tensor reported as a count)", DG,
      "    known = set(entries[1:])\n",
      "    known = set(entries[1:])\n    if len(entries) - 1 != len(tensor_entries):\n"
      "        return Problem('digest-mismatch', 'tensor count differs', path=path)\n"),
    M("R5.5-5", "a removed tensor named (the first key), not reported without a key", DG,
      '        return Problem("digest-mismatch", "tensors the content digest records are missing", path=path,\n',
      '        return Problem("digest-mismatch", "tensors the content digest records are missing", path=path, key=min(tensor_entries, default=None),\n'),
    M("R5.5-5", "digests in 1.0 files ignored (1.0 writers write none)", DG, "    if digest is None and digests is None:\n        return None",
      "    if (digest is None and digests is None) or metadata.get('adapterkit.version') == '1.0':\n        return None"),
    M("R5.5-5", "digests in PEFT-profile files ignored", DG, "    if digest is None and digests is None:\n        return None",
      "    if (digest is None and digests is None) or 'adapterkit.version' not in metadata:\n        return None"),
    M("R5.5-5", "the values checked before the digest", RD,
      "            raise_first_error(digest.result())  # the bytes first: a flipped bit may also make a NaN\n    else:\n        values = value_problems(loaded)\n    raise_first_error(values)",
      "            raise_first_error(values)\n            raise_first_error(digest.result())\n    else:\n        values = value_problems(loaded)\n    raise_first_error(values)"),
    M("R5.6-1", "non-ASCII escaped in the recipe text", "io/recipe.py",
      'sort_keys=True, separators=(",", ":"), ensure_ascii=False)', 'sort_keys=True, separators=(",", ":"))'),
    M("R5.6-1", "the steps' members kept in the order given, not sorted", "io/recipe.py",
      'json.dumps(list(recipe), sort_keys=True, separators=(",", ":"), ensure_ascii=False)', 'json.dumps(list(recipe), separators=(",", ":"), ensure_ascii=False)'),
    M("R5.6-2", "the digest covers the recipe (hashed with the config)", RD,
      "    problem = mismatch(entries, config_digest(config_data, adapter.format_version), entries_now, str(adapter.source))",
      "    problem = mismatch(entries, config_digest({**config_data, **({'adapterkit.recipe': list(adapter.recipe)} if adapter.recipe else {})}, adapter.format_version), entries_now, str(adapter.source))"),
    M("R5.6-3", "only the first step checked", "io/recipe.py", "    for i, item in enumerate(data):\n", "    for i, item in enumerate(data[:1]):\n"),
    M("R5.6-3", "adapterkit must be non-empty too", "io/recipe.py", "(member == \"op\" and not value)", "not value"),
    M("R5.6-3", "op must be one of the listed operations", "io/recipe.py", "(member == \"op\" and not value)",
      "(member == \"op\" and value not in ('combine', 'resize', 'rebalance', 'prune', 'extract', 'export'))"),
    M("R5.6-3", "only op required (adapterkit optional)", "io/recipe.py", '        for member in ("op", "adapterkit"):\n', '        for member in ("op",):\n'),
    M("R5.6-3", "an empty op accepted", "io/recipe.py", "(member == \"op\" and not value)", "False"),
    M("R5.6-3", "the recipe parsed leniently (NaN, repeated names)", "io/recipe.py", "        data = loads_strict(text)\n",
      "        data = json.loads(text)\n"),
    M("R5.6-3", "an empty array refused", "io/recipe.py", "    if not isinstance(data, list):\n", "    if not isinstance(data, list) or not data:\n"),
    M("R5.6-3", "members beyond op and adapterkit checked (rank an integer)", "io/recipe.py", "        for member in (\"op\", \"adapterkit\"):\n",
      "        if 'rank' in item and not isinstance(item['rank'], int):\n            raise FormatError('rank', code='metadata-invalid', path=path)\n"
      "        for member in (\"op\", \"adapterkit\"):\n"),
    # §5.2 FP8 encodings
    M("R5.2-14", "F8_E4M3 read as E5M2 (IEEE-like: exponent all ones is Inf/NaN)", VA,
      "        t = t.float()  # torch has no isfinite for float8",
      "        t = (t.view(torch.float8_e5m2) if t.dtype == torch.float8_e4m3fn else t).float()  # torch has no isfinite for float8"),
    M("R5.2-14", "F8_E5M2 read as E4M3 (only 7f/ff non-finite)", VA,
      "        t = t.float()  # torch has no isfinite for float8",
      "        t = (t.view(torch.float8_e4m3fn) if t.dtype == torch.float8_e5m2 else t).float()  # torch has no isfinite for float8"),
    M("R5.2-14", "FP8 values taken as always finite", VA, "        t = t.float()  # torch has no isfinite for float8",
      "        return None  # torch has no isfinite for float8"),
    # §1 and §12 edges
    M("R1-1", "every integer of 309 digits refused", JS, "    value = int(token)\n",
      "    if len(token.lstrip('-')) >= 309:\n        raise ValueError('309 digits')\n    value = int(token)\n"),
    M("R12-1", "unexpected-key reported once, not once per key", LO,
      'actual=key, severity="warning")\n', 'actual=key, severity="warning")\n            break\n'),
    # §11 versions
    M("R11-1", "the writer writes version 1.0 with a digest", WR, "VERSION_KEY: FORMAT_VERSION if digest else UNDIGESTED_VERSION}",
      "VERSION_KEY: UNDIGESTED_VERSION}"),
    M("R11-2", "an unknown minor version refused", VS, "    if m[1] != str(SUPPORTED_MAJOR):", "    if m[1] != str(SUPPORTED_MAJOR) or m[2] != '0':"),
    # §12 warnings
    M("R12-1", "empty-adapter only when the file holds no tensor at all", LO, "    if not groups and not _token_modules(adapter):\n        add(\"empty-adapter\"",
      "    if not adapter.tensors:\n        add(\"empty-adapter\""),
    M("R12-1", "no pattern-order warning", LO, "            if winner != after_save and pattern[winner] != pattern[after_save]:", "            if False:"),
    M("R12-1", "no pattern-unmatched warning", LO, "            if not any(pattern_key([pkey], n) == pkey for n in names):", "            if False:"),
]


def rules_in_readme() -> list[str]:
    return list(dict.fromkeys(RULE_DEF.findall(README.read_text(encoding="utf-8"))))


def mutated_text(mutant: Mutant) -> str:
    """The mutated file's text.  Raises SystemExit when the patch does not apply or compile."""
    path = PACKAGE / mutant.file
    text = path.read_text(encoding="utf-8")
    if text.count(mutant.old) != 1:
        raise SystemExit(f"mutant {mutant.rule} '{mutant.name}': its old text occurs {text.count(mutant.old)} times in {mutant.file}")
    text = text.replace(mutant.old, mutant.new)
    try:
        compile(text, str(path), "exec")
    except SyntaxError as exc:
        raise SystemExit(f"mutant {mutant.rule} '{mutant.name}' does not compile: {exc}") from exc
    return text


def make_copy(dest: Path, mutant: Mutant | None) -> None:
    shutil.copytree(PACKAGE, dest / "adapterkit", ignore=shutil.ignore_patterns("__pycache__"))
    if mutant is not None:
        (dest / "adapterkit" / mutant.file).write_text(mutated_text(mutant), encoding="utf-8")


def run(mutant: Mutant | None, vectors: Path) -> list[str]:
    """The vectors that fail against a copy of adapterkit with ``mutant`` applied."""
    with tempfile.TemporaryDirectory(prefix="adapterkit-mutant-") as tmp:
        make_copy(Path(tmp), mutant)
        env = {**os.environ, "PYTHONPATH": tmp, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONWARNINGS": "ignore"}
        proc = subprocess.run([sys.executable, str(RUNNER), "-q", str(vectors)], cwd=tmp, env=env,
                              capture_output=True, text=True, timeout=600)
    failed = proc.stdout.split()
    if proc.returncode != 0 and not failed:
        failed = [f"(runner crashed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode})"]
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", "--rules", default="", help="only rules whose id matches this regular expression (re.match)")
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("-v", "--verbose", action="store_true", help="list the vectors that kill each mutant")
    parser.add_argument("--vectors", type=Path, default=VECTORS)
    args = parser.parse_args(argv)
    rules = rules_in_readme()
    mutants = [m for m in MUTANTS if re.match(args.rules, m.rule)]
    unknown = sorted({m.rule for m in MUTANTS} - set(rules))
    if unknown:
        raise SystemExit(f"mutants name rule ids the README does not define: {unknown}")
    for m in mutants:  # every patch applies and compiles, before anything runs
        mutated_text(m)
    start = time.monotonic()
    baseline = run(None, args.vectors)
    if baseline:
        raise SystemExit(f"the unmutated copy already fails: {baseline}")
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda m: run(m, args.vectors), mutants))
    by_rule: dict[str, list[tuple[Mutant, list[str]]]] = {r: [] for r in rules if re.match(args.rules, r)}
    for m, failed in zip(mutants, results):
        by_rule[m.rule].append((m, failed))
    print(f"{'rule':9} {'mutants':>7} {'killed':>6}  surviving mutants / killing vectors")
    for rule, rows in by_rule.items():
        killed = sum(1 for _, f in rows if f)
        notes = [f"SURVIVES: {m.name}" for m, f in rows if not f] or ([] if rows else ["NO MUTANT"])
        print(f"{rule:9} {len(rows):7} {killed:6}  {'; '.join(notes)}")
        if args.verbose:
            for m, f in rows:
                print(f"{'':26}{m.name}: {', '.join(f[:3])}{' ...' if len(f) > 3 else ''}")
    pinned = sum(1 for rows in by_rule.values() if rows and all(f for _, f in rows))
    killed = sum(1 for f in results if f)
    print(f"rules pinned {pinned} / {len(by_rule)}, mutants killed {killed} / {len(mutants)} "
          f"({time.monotonic() - start:.0f} s, {args.jobs} jobs)")
    return 0 if pinned == len(by_rule) else 1


if __name__ == "__main__":
    sys.exit(main())
