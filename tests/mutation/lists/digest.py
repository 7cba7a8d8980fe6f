"""Mutation check of the content digest (spec §5.5): does tests/test_digest.py catch plausible bugs?

Usage: python tests/mutation/run.py digest [--only SUBSTRING]

Each mutant is one textual patch (a plausible bug) applied to a temporary copy of the
repository (never the real files); tests/test_digest.py then runs against the copy.  A mutant
is killed when a test fails.  Prints one line per mutant and the score.
"""

from __future__ import annotations

TESTS = ["tests/test_digest.py"]
DIGEST = "adapterkit/io/digest.py"
WRITER = "adapterkit/io/writer.py"
READER = "adapterkit/io/reader.py"
ATOMIC = "adapterkit/io/atomic.py"
VALIDATE = "adapterkit/validation.py"
INFO = "adapterkit/summary.py"

# (name, file, old text, new text)
MUTANTS = [
    ("field: no length prefix", DIGEST, "    return _u64(len(data)) + data", "    return data"),
    ("u64: big-endian", DIGEST, 'return struct.pack("<Q", n)', 'return struct.pack(">Q", n)'),
    ("config: keys not sorted", DIGEST, 'json.dumps(peft_key_order(config), separators=(",", ":")).encode("ascii")',
     'json.dumps(config, separators=(",", ":")).encode("ascii")'),
    ("config: non-ASCII kept as UTF-8", DIGEST, 'json.dumps(peft_key_order(config), separators=(",", ":")).encode("ascii")',
     'json.dumps(peft_key_order(config), separators=(",", ":"), ensure_ascii=False).encode("utf-8")'),
    ("config (1.2): pattern objects sorted too", DIGEST, 'json.dumps(peft_key_order(config), separators=(",", ":")).encode("ascii")',
     'json.dumps(config, sort_keys=True, separators=(",", ":")).encode("ascii")'),
    ("config (1.1): pattern order kept in 1.1 files too", DIGEST, "    if digest_keeps_pattern_order(version):", "    if True:"),
    ("config: entry without its tag", DIGEST, "hashlib.sha256(_field(_TAG_CONFIG) + _field(canonical_config(config, version)))",
     "hashlib.sha256(_field(canonical_config(config, version)))"),
    ("tensor: key not hashed", DIGEST, '_field(_TAG_TENSOR) + _field(key.encode("utf-8")) +', "_field(_TAG_TENSOR) +"),
    ("tensor: dtype not hashed", DIGEST, '_field(key.encode("utf-8")) + _field(dtype.encode("ascii"))', '_field(key.encode("utf-8"))'),
    ("tensor: shape not hashed", DIGEST, "    return head + b\"\".join(_u64(d) for d in shape) + _u64(nbytes)", "    return head + _u64(nbytes)"),
    ("tensor: rank not hashed", DIGEST, '_field(dtype.encode("ascii")) + _u64(len(shape))', '_field(dtype.encode("ascii"))'),
    ("tensor: data not hashed", DIGEST, "    h.update(data)\n", ""),
    ("digest: entry count not hashed", DIGEST, "_field(_TAG_ALL) + _u64(len(entries)) + b\"\".join(entries)", "_field(_TAG_ALL) + b\"\".join(entries)"),
    ("digest: entries in file order", DIGEST, "    entries = [config_entry] + [tensor_entries[k] for k in sorted(tensor_entries)]",
     "    entries = [config_entry] + list(tensor_entries.values())"),
    ("digest: config entry left out", DIGEST, "    entries = [config_entry] + [tensor_entries[k] for k in sorted(tensor_entries)]",
     "    entries = [tensor_entries[k] for k in sorted(tensor_entries)]"),
    ("record: entries that do not combine accepted", DIGEST, "    if combine(entries) != digest:", "    if False:"),
    ("record: upper-case entries accepted", DIGEST, '_DIGESTS = re.compile(r"(?:[0-9a-f]{64})+")', '_DIGESTS = re.compile(r"(?:[0-9a-fA-F]{64})+")'),
    ("record: digest without entries ignored", DIGEST, "    if digest is None and digests is None:\n        return None",
     "    if digests is None:\n        return None"),
    ("record: entries without digest ignored", DIGEST, "    if digest is None and digests is None:\n        return None",
     "    if digest is None:\n        return None"),
    ("record: trailing text after the digest accepted", DIGEST, "if value is None or not pattern.fullmatch(value):", "if value is None or not pattern.match(value):"),
    ("save: placeholder one entry short", DIGEST, '"0" * (_HEX * (n_tensors + 1))', '"0" * (_HEX * n_tensors)'),
    ("check: config not compared", DIGEST, "    if config_entry != entries[0]:", "    if False:"),
    ("check: the last differing tensor named", DIGEST, "    for i, key in enumerate(sorted(tensor_entries)):\n        if tensor_entries[key] not in known:",
     "    for i, key in enumerate(sorted(tensor_entries, reverse=True)):\n        if tensor_entries[key] not in known:"),
    ("check: a record out of order accepted", DIGEST, "    for i, key in enumerate(sorted(tensor_entries)):  # every entry recorded",
     "    for i, key in enumerate([]):  # every entry recorded"),
    ("check: the misplaced entry reported at a 0-based place", DIGEST, 'at place {1 + i}"', 'at place {i}"'),
    ("words: expected and actual entries swapped", DIGEST, 'expected=want, actual=f"entry {tensor_entries[key].hex()[:16]}..."',
     'expected=f"entry {tensor_entries[key].hex()[:16]}...", actual=want'),
    ("words: the removed-tensor counts swapped", DIGEST, 'expected=f"{len(entries) - 1} tensors", actual=f"{len(tensor_entries)} tensors"',
     'expected=f"{len(tensor_entries)} tensors", actual=f"{len(entries) - 1} tensors"'),
    ("words: a config mismatch names no part", DIGEST, "key=CONFIG_ENTRY, expected=", "key=None, expected="),
    ("words: entries shown with 8 hex digits", DIGEST, 'actual=f"entry {config_entry.hex()[:16]}..."', 'actual=f"entry {config_entry.hex()[:8]}..."'),
    ("check: a removed tensor not noticed", DIGEST, "    if len(entries) - 1 != len(tensor_entries):", "    if False:"),
    ("check: the config hashed with defaults filled in", READER,
     "    problem = mismatch(entries, config_digest(config_data, adapter.format_version), entries_now, str(adapter.source))",
     "    problem = mismatch(entries, config_digest(adapter.config.to_dict(), adapter.format_version), entries_now, str(adapter.source))"),
    ("load: digest not checked", READER, "        raise_first_error(digest)  # the bytes first", "        pass  # the bytes first"),
    ("load: verify_digest ignored", READER, "    if verify_digest and isinstance(store, LazyStore)", "    if isinstance(store, LazyStore)"),
    ("load: values checked before the digest", READER,
     "        raise_first_error(digest)  # the bytes first: a flipped bit may also make a NaN\n    else:",
     "        raise_first_error(values)\n        raise_first_error(digest)\n    else:"),
    ("open: record not checked from the header", READER, "    recorded(metadata, path)  # the content digest's", "    pass  # the content digest's"),
    ("validate: digest not checked (file-backed)", VALIDATE, "        found = mismatch(entries, config_digest(config_data, adapter.format_version), now, source)",
     "        found = None"),
    ("validate: NaN/Inf not reported for a file-backed adapter", VALIDATE, "            if (problem := nonfinite_problem(key, nonfinite_count(info.dtype, raw), info.numel, source)) is not None:",
     "            if (problem := nonfinite_problem(key, nonfinite_count(info.dtype, raw), info.numel, source)) is not None and False:"),
    ("validate: the digest's tensor entries not hashed", VALIDATE, "    if entries is None:\n        for _ in each():", "    if True:\n        for _ in each():"),
    ("save: no digest written", WRITER, "    encoder = DigestingEncoder(tensors, metadata, config, hash_early=not durable) if digest else None", "    encoder = None"),
    ("save: digest=False still says 1.1", WRITER, "VERSION_KEY: FORMAT_VERSION if digest else UNDIGESTED_VERSION}", "VERSION_KEY: FORMAT_VERSION}"),
    ("save: placeholder never replaced", ATOMIC, "                f.seek(offset)\n                f.write(data)\n", "                pass\n"),
    ("save: dir form hashes its indented config text", WRITER, "    encoder = DigestingEncoder(tensors, metadata, config, hash_early=not durable) if digest else None",
     "    encoder = DigestingEncoder(tensors, metadata, json.loads(config_json(adapter)) if form == 'file' else config_json(adapter), hash_early=not durable) if digest else None"),
    ("info: digest not shown", INFO, '        "digest": adapter.tensors.header.metadata.get(DIGEST_KEY) if isinstance(adapter.tensors, LazyStore) else None,',
     '        "digest": None,'),
]

DEFAULT_TESTS = TESTS
