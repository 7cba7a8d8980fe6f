"""Mutation check of the hostile-input defences: does tests/test_fuzz.py catch plausible bugs?

Usage: python tests/mutation/run.py fuzz [--only SUBSTRING]

Each mutant is one textual patch (a plausible bug) applied to a temporary copy of the
repository (never the real files); the named tests then run against the copy.  A mutant is
killed when a test fails.  Prints one line per mutant and the score.  The mutants cover the
strict JSON of headers and configs, the container reader's order of checks, the version check,
the .bin loader, the checkpoint index's shard names, the header-only paths of info/validate,
and the fuzz harness itself (scripts/fuzz.py).
"""

from __future__ import annotations

T = "tests/test_fuzz.py"
JS = "adapterkit/io/jsontext.py"
SF = "adapterkit/io/safetensors_file.py"
VS = "adapterkit/io/version.py"
BF = "adapterkit/io/bin_file.py"
CK = "adapterkit/checkpoint/reader.py"
INFO = "adapterkit/summary.py"
VAL = "adapterkit/validation.py"
FZ = "scripts/fuzz.py"

JSON_TESTS = [f"{T}::test_surrogates_in_ignored_members", f"{T}::test_names_without_utf8", f"{T}::test_integers",
              f"{T}::test_integers_of_309_digits_beyond_a_double", f"{T}::test_integers_that_stay_valid", f"{T}::test_surrogate_pair_and_escaped_nul_are_names"]
HEADER_TESTS = [f"{T}::test_truncation_at_every_byte", f"{T}::test_bad_offsets", f"{T}::test_overlap_inside_the_data", f"{T}::test_huge_header_length", f"{T}::test_huge_shapes",
                f"{T}::test_header_claiming_more_than_the_file_is_refused_before_allocation", f"{T}::test_nesting", f"{T}::test_dtype_disagrees_with_byte_count"]
BIN_TESTS = [f"{T}::test_malicious_bin_is_refused_everywhere"]
INDEX_TESTS = [f"{T}::test_index_shard_names_that_leave_the_folder"]
BOUND_TESTS = [f"{T}::test_info_and_validate_read_headers_only_and_stay_bounded"]
HARNESS_TESTS = [f"{T}::test_campaign_counts_a_crash_as_a_failure", f"{T}::test_campaign_run_counts_and_reports", f"{T}::test_entry_as_an_array_is_a_stricter_rule",
                 f"{T}::test_repeated_names", f"{T}::test_unknown_major_version_of_any_length", f"{T}::test_empty_tensor_with_unaddressable_shape_is_a_stricter_rule"]

# (name, file, old text, new text, tests)
MUTANTS = [
    ("json: unpaired surrogates accepted", JS, "        _check_strings(value)\n", "        pass\n", JSON_TESTS),
    ("json: surrogate escapes spotted in lower case only", JS, r'_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")', r'_SURROGATE_ESCAPE = re.compile(r"\\ud[89a-f]")', JSON_TESTS),
    ("json: surrogates checked in member names only", JS, "            stack.extend(item.values())\n", "", JSON_TESTS),
    ("json: surrogates not looked for inside arrays", JS, "            stack.extend(item)\n            continue", "            continue", JSON_TESTS),
    ("json: -0 read as the integer 0", JS, '    if token == "-0":\n        return -0.0\n', "", JSON_TESTS),
    ("json: integers beyond a double accepted", JS, "        float(value)\n", "        pass\n", JSON_TESTS),
    ("json: long integers looked for from 310 digits", JS, '_RARE_INT = re.compile(r"-0|[0-9]{309}")', '_RARE_INT = re.compile(r"-0|[0-9]{310}")', JSON_TESTS),
    ("header: nesting limit off by one (128)", SF, "MAX_DEPTH = 127", "MAX_DEPTH = 128", HEADER_TESTS),
    ("header: nesting counted in arrays only", SF, "level = [v for k, v in entry.items() if k not in _ENTRY_FIELDS and isinstance(v, (dict, list))]",
     "level = [v for k, v in entry.items() if k not in _ENTRY_FIELDS and isinstance(v, list)]", HEADER_TESTS),
    ("header: nesting checked only with two extra members", SF, "        if len(entry) > 3 and _too_deep(entry):", "        if len(entry) > 4 and _too_deep(entry):", HEADER_TESTS),
    ("header: length limit not checked", SF, "            if n > MAX_HEADER_BYTES:", "            if False:", HEADER_TESTS),
    ("header: file size not checked against the header length", SF, "            if 8 + n > size:", "            if False:", HEADER_TESTS),
    ("header: data past the end of the file not checked", SF, "    if cursor > data_len:", "    if False:", HEADER_TESTS),
    ("header: holes and overlaps allowed", SF, "        if info.begin != cursor:", "        if info.begin > cursor:", HEADER_TESTS),
    ("header: byte count not checked against dtype x shape", SF, "        if end < begin or end - begin != expected:", "        if end < begin:", HEADER_TESTS),
    ("header: element count unbounded", SF, "        if count >= 2**63:", "        if False:", [*HEADER_TESTS, f"{T}::test_empty_tensor_with_unaddressable_shape_is_a_stricter_rule"]),
    ("version: int() of the major (ValueError past 4300 digits)", VS, "    if m[1] != str(SUPPORTED_MAJOR):", "    if int(m[1]) != SUPPORTED_MAJOR:", [f"{T}::test_unknown_major_version_of_any_length"]),
    ("bin: the unrestricted unpickler", BF, 'map_location="cpu", weights_only=True', 'map_location="cpu", weights_only=False', BIN_TESTS),
    ("bin: read through a plain file (allocates a claimed length)", BF, "obj = torch.load(view, ", "obj = torch.load(path, ",
     [f"{T}::test_bin_claiming_a_huge_string_allocates_nothing_of_it"]),
    ("bin: a refused pickle reported as bin-invalid", BF, "        raise UnsafeFileError(\n", "        raise FormatError(\n", BIN_TESTS),
    ("index: shard names with / allowed", CK, 'or "/" in shard ', "", INDEX_TESTS),
    ("index: hidden shard names allowed", CK, ' or shard.startswith(".")', "", INDEX_TESTS),
    ("index: backslashes allowed", CK, ' or "\\\\" in shard', "", INDEX_TESTS),
    ("info --no-modules reads the tensors", INFO, "    if per_module:", "    if True:", BOUND_TESTS),
    ("validate reads the whole adapter at once", VAL, "        if isinstance(adapter.tensors, LazyStore):\n            problems += _streamed_checks(adapter, config_data)",
     "        if False:\n            pass", BOUND_TESTS),
    ("harness: an allocation failure is not noticed", FZ, "        if isinstance(exc, MemoryError) or", "        if False and", HARNESS_TESTS),
    ("harness: any refusal passes as a stricter rule", FZ, "        if rule is None:\n", "        if False:\n", HARNESS_TESTS),
    ("harness: no stricter rule for repeated names", FZ, '     lambda e: e.code == "header-invalid" and "duplicate member name" in e.message),', "     lambda e: False),", HARNESS_TESTS),
    ("harness: no stricter rule for array entries", FZ, '     lambda e: e.code == "header-invalid" and e.message == "tensor entry must be an object"),', "     lambda e: False),", HARNESS_TESTS),
    ("harness: differential ignores tensor bytes", FZ, "_raw(t) != _raw(u)", "False", [f"{T}::test_campaign_counts_a_crash_as_a_failure"]),
    ("harness: a crash not counted", FZ, '        result.fail("allocation" if _allocation_failure(exc) else "crash", f"{what} [{step}]\\n{traceback.format_exc()}")\n', "", HARNESS_TESTS),
]

DEFAULT_TESTS = [T]
