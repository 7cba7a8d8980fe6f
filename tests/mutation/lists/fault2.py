"""Mutation check of pull's and info --plot's writes: does tests/test_faults.py catch plausible bugs?

Usage: python tests/mutation/run.py fault2 [--only SUBSTRING]

Each mutant is one textual patch (a plausible bug) applied to a temporary copy of the
repository (never the real files); the fault tests of the command it breaks then run against
the copy (node ids: the whole file takes minutes).  A mutant is killed when a test fails.
Prints one line per mutant and the score.  The mutants of ``io.atomic.write_new`` are in
tests/mutation/lists/fault.py.
"""

from __future__ import annotations

F = "tests/test_faults.py::"
PULL = "adapterkit/hub/download.py"
REMOTE = "adapterkit/hub/remote.py"
SPECTRUM = "adapterkit/inspect/spectra.py"
CLI = "adapterkit/api.py"
PLOT_RACE = [F + "test_concurrent_writers_without_overwrite[info-plot]", F + "test_sigkill_at_random_write_calls[info-plot]"]
PLOT_ERRORS = [F + "test_injected_write_errors_are_one_line_write_failed[info-plot]", F + "test_a_read_only_target[info-plot]"]
PULL_RACE = [F + "test_concurrent_writers_without_overwrite[pull]", F + "test_concurrent_writers_with_overwrite[pull-over-old]"]
PULL_ERRORS = [F + "test_injected_write_errors_are_one_line_write_failed[pull]", F + "test_a_real_full_tmpfs[pull]"]
CACHE = [F + "test_pull_faults_in_the_hub_cache_leave_it_usable", F + "test_pull_into_an_unwritable_cache_is_write_failed_not_a_hub_error"]
TESTS = [F + "test_clean_outputs_are_valid_and_deterministic"]

# (name, file, old text, new text, tests)
MUTANTS = [
    ("plot: written in place with write_atomic (the bug fixed: clobbers a racing file, leaves .tmp files)", SPECTRUM,
     "    write_new(path, [_draw(data, title)], overwrite=overwrite, durable=False)",
     "    from ..io.atomic import write_atomic\n    write_atomic(path, [_draw(data, title)], durable=False)", PLOT_RACE),
    ("plot: always installed with overwrite", SPECTRUM, "[_draw(data, title)], overwrite=overwrite, durable=False)",
     "[_draw(data, title)], overwrite=True, durable=False)", PLOT_RACE),
    ("cli: info --plot always overwrites", CLI, 'summary["plot"] = _plot(adapter, Path(plot), device, overwrite)',
     'summary["plot"] = _plot(adapter, Path(plot), device, True)', PLOT_RACE),
    ("pull: install always replaces", PULL, "        install(staging, out, overwrite=overwrite)", "        install(staging, out, overwrite=True)", PULL_RACE),
    ("pull: the swapped-in staging folder kept", PULL, "        discard(staging.parent)", "        discard(staging)", PULL_ERRORS),
    ("pull: an OSError escapes as a bare OSError", PULL,
     '    except OSError as exc:\n        raise WriteError(f"cannot write output: {exc.strerror}", path=out) from exc',
     "    except OSError:\n        raise", PULL_ERRORS),
    ("pull: copied into OUT itself, not staged (a killed pull leaves a partial OUT)", PULL,
     "            target = staging / check_name(name, ref)", "            target = out / check_name(name, ref)",
     [F + "test_sigkill_at_random_write_calls[pull]"]),
    ("pull: a full or unwritable cache reported as a Hub error", REMOTE,
     'with translated(ref, f"downloading {name}"), into_cache(s, f"downloading {name}"):',
     'with translated(ref, f"downloading {name}"):', CACHE),
    ("pull: a cache write error names no path", REMOTE,
     'raise WriteError(f"cannot write the Hub cache: {exc.strerror} ({what})", path=s.cache_dir) from exc',
     'raise WriteError(f"cannot write the Hub cache: {exc.strerror} ({what})") from exc', CACHE),
    ("pull: ENOSPC in the cache left a Hub error", REMOTE, "_LOCAL_WRITE = {errno.ENOSPC, errno.EDQUOT,", "_LOCAL_WRITE = {errno.EDQUOT,", CACHE),
    ("pull: EROFS in the cache left a Hub error", REMOTE, "errno.EDQUOT, errno.EROFS, errno.EACCES,", "errno.EDQUOT, errno.EACCES,", CACHE),
]

DEFAULT_TESTS = TESTS
