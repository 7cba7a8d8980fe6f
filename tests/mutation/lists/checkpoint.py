"""Mutation check of adapterkit.checkpoint: does tests/test_checkpoint.py catch plausible bugs?

Usage: python tests/mutation/run.py checkpoint [--only SUBSTRING]

Run by ``tests/mutation/run.py`` (each mutant patched into a temporary copy of the
repository, never the real files); prints one line per mutant and the score.
"""

from __future__ import annotations

TESTS = ["tests/test_checkpoint.py"]
R, W, L = "adapterkit/checkpoint/reader.py", "adapterkit/checkpoint/writer.py", "adapterkit/checkpoint/layout.py"
GUARD = "adapterkit/io/outputs.py"  # the output guard the writer calls

# (name, file, old text, new text)
MUTANTS = [
    ("base sharding ignored: every key in the first shard", W,
     "by_name[self.base.shard_of(placed.get(key, key)).name].append(key)", "by_name[names[0]].append(key)"),
    ("tensor written at its data offset, header length forgotten", W,
     "        at = shard.layout.data_start + info.begin\n        _pwrite_all(shard.open(), view, at)", "        at = info.begin\n        _pwrite_all(shard.open(), view, at)"),
    ("header not padded to 8 bytes", L, '    raw += b" " * (-len(raw) % 8)\n', ""),
    ("layout by key only (dtype rank ignored: misaligned data)", L,
     "key=lambda k: (-_RANK[plan[k][0]], k)", "key=lambda k: k"),
    ("index total_size kept from the base", W,
     '        meta["total_size"] = sum(', '        meta["total_size"] = meta.get("total_size") or sum('),
    ("extra files not copied", W, "            self._copy_extra_files()\n", ""),
    ("extra files: subfolders skipped", R,
     'dirs[:] = [d for d in dirs if not d.startswith(".")]', "dirs[:] = []"),
    ("extra files: other weights carried over", R,
     ' or name.endswith(WEIGHT_SUFFIXES)', ""),
    ("staging kept when a write breaks the plan", W,
     "        except BaseException:  # a plan mismatch, or an interrupt: nothing half-written is kept\n            self.abort()\n",
     "        except BaseException:  # a plan mismatch, or an interrupt: nothing half-written is kept\n"),
    ("ENOSPC escapes as a bare OSError, staging kept", W,
     "        except OSError as exc:\n            self.abort()\n            raise WriteError(f\"cannot write output: {exc.strerror}\", path=self.out, key=key) from exc\n        except BaseException:  # a plan",
     "        except OSError:\n            raise\n        except BaseException:  # a plan"),
    ("overwrite merges into the old output", W, "        install(staging, self.out, overwrite=self.overwrite)",
     "        shutil.copytree(staging, self.out, dirs_exist_ok=True) if self.out.is_dir() else install(staging, self.out, overwrite=self.overwrite)"),
    ("output-exists not re-checked at commit (an output that appeared meanwhile is replaced)", W,
     "        _check_absent(self.out, self.overwrite)\n        install(staging, self.out, overwrite=self.overwrite)",
     "        install(staging, self.out, overwrite=True)"),
    ("an output holding the base may be replaced", GUARD, "            if i.is_relative_to(o):\n                return \"holds\"",
     "            if False:\n                return \"holds\""),
    ("an output inside the base is allowed", GUARD, "            if o.is_relative_to(i):\n                return \"lies inside\"",
     "            if False:\n                return \"lies inside\""),
    ("greedy split: an oversized tensor closes the current shard first", L,
     "        if size > max_shard_size:\n            shards.append([key])",
     "        if size > max_shard_size:\n            if current:\n                shards.append(current)\n                current, used = [], 0\n            shards.append([key])"),
    ("greedy split: a shard may not reach the limit exactly", L, "if used + size > max_shard_size:", "if used + size >= max_shard_size:"),
    ("reader: a key in two shards accepted", R, "            if key in seen:", "            if False:"),
    ("reader: index keys missing from shards accepted", R, "        if key not in seen:", "        if False:"),
    ("reader: keys in header text order, not data order", R,
     "sorted(header.tensors.values(), key=lambda i: (i.begin, i.end))", "list(header.tensors.values())"),
    ("reader: short read not detected", R, "        if got != view.nbytes:", "        if False:"),
    ("reader: .bin folder reported as not-a-checkpoint", R, "    if bins:", "    if False:"),
    ("writer: dtype not checked", W, "            if actual != dtype:", "            if False:"),
    ("writer: shape not checked", W, "            if tuple(data.shape) != shape:", "            if False:"),
    ("writer: missing writes committed", W, "        if self._next < len(self._order):", "        if False:"),
    ("writer: durable never fsyncs shards", W, "            if durable:\n                os.fsync(fd)", "            if False:\n                os.fsync(fd)"),
]

DEFAULT_TESTS = TESTS
