"""Mutation check of atomic installs and staging: does tests/test_faults.py catch plausible bugs?

Usage: python tests/mutation/run.py fault [--only SUBSTRING]

Each mutant is one textual patch (a plausible bug) applied to a temporary copy of the
repository (never the real files); tests/test_faults.py then runs against the copy.  A mutant
is killed when a test fails.  Prints one line per mutant and the score.
"""

from __future__ import annotations

TESTS = ["tests/test_faults.py"]
ATOMIC = "adapterkit/io/atomic.py"
WRITER = "adapterkit/io/writer.py"
CKPT = "adapterkit/checkpoint/writer.py"
F = "tests/test_faults.py::"
PLOT_ERRORS = [F + "test_injected_write_errors_are_one_line_write_failed[info-plot]", F + "test_a_read_only_target[info-plot]",
               F + "test_a_real_full_tmpfs[info-plot]"]

# (name, file, old text, new text)
MUTANTS = [
    ("install: an existing output replaced without overwrite (check-then-rename race)", ATOMIC,
     "        if not overwrite or not os.path.lexists(path):", "        if not os.path.lexists(path):"),
    ("install: plain rename, not no-replace", ATOMIC,
     "    if _renameat2(src, dst, _RENAME_NOREPLACE):\n        return\n", "    os.rename(src, dst)\n    return\n"),
    ("install: the loser's error is write-failed", ATOMIC,
     'f"output exists ({kind}); pass overwrite=True (--overwrite) to replace it whole", code="output-exists",',
     'f"output exists ({kind}); pass overwrite=True (--overwrite) to replace it whole", code="write-failed",'),
    ("install: an output that appeared meanwhile is not replaced with overwrite", ATOMIC,
     "                continue  # it appeared meanwhile: replace it", "                raise"),
    ("install: the swapped-out old output is kept", ATOMIC, "        discard(staged)  # the old output", "        pass"),
    ("install fallback: a file moved with replace (clobbers)", ATOMIC,
     "            os.link(src, dst)  # fails if dst exists, atomically", "            os.replace(src, dst)\n            return"),
    ("install fallback: no existence check before a folder rename", ATOMIC,
     "    if os.path.lexists(dst):\n        raise FileExistsError", "    if False:\n        raise FileExistsError"),
    ("install fallback: the old output not put back when the rename fails", ATOMIC,
     "    except OSError:\n        os.rename(aside, path)\n        raise", "    except OSError:\n        raise"),
    ("staging folder not hidden", ATOMIC, 'prefix=f".{path.name}.tmp-", dir=path.parent)) / path.name',
     'prefix=f"{path.name}.tmp-", dir=path.parent)) / path.name'),
    ("writer: staging folder left beside the output", WRITER, "        discard(staging.parent)", "        discard(staging)"),
    ("writer: install always replaces", WRITER, "        install(staging, path, overwrite=overwrite)", "        install(staging, path, overwrite=True)"),
    ("writer: an OSError escapes as a bare OSError", WRITER,
     '    except OSError as exc:\n        raise WriteError(f"cannot write output: {exc.strerror}", path=path) from exc\n    finally:',
     "    except OSError:\n        raise\n    finally:"),
    ("checkpoint: install always replaces", CKPT,
     "        install(staging, self.out, overwrite=self.overwrite)", "        install(staging, self.out, overwrite=True)"),
    ("checkpoint: a failed writer leaves its empty staging folder", CKPT,
     "self._finalizer = weakref.finalize(self, discard, self._staging.parent)", "self._finalizer = weakref.finalize(self, discard, self._staging)"),
    ("checkpoint: the emptied staging folder kept after commit", CKPT,
     "        self._finalizer()  # the emptied staging folder", "        self._finalizer.detach()  # the emptied staging folder"),
    ("checkpoint: staging mkdir error escapes as a bare OSError", CKPT,
     '                self.abort()\n                raise WriteError(f"cannot create output: {exc.strerror}", path=self.out) from exc',
     "                self.abort()\n                raise"),
    # write_new (one-file outputs staged and installed: info --plot), against the plot's fault tests
    ("write_new: install always replaces", ATOMIC, "        install(staging, path, overwrite=overwrite)\n    except OSError as exc:",
     "        install(staging, path, overwrite=True)\n    except OSError as exc:", [F + "test_concurrent_writers_without_overwrite[info-plot]"]),
    ("write_new: the staging folder left beside the output", ATOMIC, "    finally:\n        discard(staging.parent)\n\n\ndef same_file",
     "    finally:\n        discard(staging)\n\n\ndef same_file", PLOT_ERRORS),
    ("write_new: write-failed names the staging path", ATOMIC, "            exc.path = str(path)\n            exc.args = (str(exc),)\n", "", PLOT_ERRORS),
    ("write_new: an OSError of the install escapes bare", ATOMIC,
     '        install(staging, path, overwrite=overwrite)\n    except OSError as exc:\n        raise WriteError(f"cannot write output: {exc.strerror}", path=path) from exc',
     "        install(staging, path, overwrite=overwrite)\n    except OSError:\n        raise",
     [F + "test_write_new_turns_a_failed_install_into_write_failed"]),
]

DEFAULT_TESTS = TESTS
