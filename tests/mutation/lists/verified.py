"""Mutation check of the parallel hashing of the content digest (issue 19, point 4): does
tests/test_digest_parallel.py catch plausible bugs in ``digest.RegionHasher``/``PartsHasher``,
``hash_threads``, ``read_all``'s pieces and the writer's deferred hashing?

Usage: python tests/mutation/run.py verified [--only SUBSTRING]

Each mutant is one textual patch (a plausible bug) applied to a temporary copy of the
repository (never the real files); the tests then run against the copy.  A mutant is killed
when a test fails.  Prints one line per mutant and the score.  (The digest's definition and
its checks are in tests/mutation/lists/digest.py.)
"""

from __future__ import annotations

TESTS = ["tests/test_digest_parallel.py"]
DIGEST = "adapterkit/io/digest.py"
WRITER = "adapterkit/io/writer.py"
SF = "adapterkit/io/safetensors_file.py"

# (name, file, old text, new text)
MUTANTS = [
    ("region: a worker hashes the whole tensor once its first byte is there", DIGEST,
     "            return self._region, self._filled", "            return self._region, len(self._region)"),
    ("region: the last run of tensors never hashed", DIGEST,
     "        if run:\n            self._pool.submit(self._hash_run, run)\n        return self", "        return self"),
    ("pool: a task the caller takes back from the workers is not run", DIGEST,
     "fn(*args) if future is None or future.cancel() else future.result()",
     "fn(*args) if future is None else ({} if future.cancel() else future.result())"),
    ("pool: an error in a worker swallowed", DIGEST,
     "fn(*args) if future is None or future.cancel() else future.result()",
     "fn(*args) if future is None or future.cancel() else (future.result() if future.exception() is None else {})"),
    ("parts: the last run never submitted", DIGEST,
     "        self._flush()\n        return self._pool.results()", "        return self._pool.results()"),
    ("threads: a constant, not the cores this process may use", DIGEST,
     "    return threads_for(nbytes, per_thread=_BYTES_PER_THREAD, cap=HASH_THREADS)",
     "    return max(1, min(HASH_THREADS, nbytes // _BYTES_PER_THREAD))"),
    ("threads: every core of the machine, not the process's affinity", "adapterkit/threads.py",
     "        return len(os.sched_getaffinity(0))\n", "        return os.cpu_count() or 1\n", [*TESTS, "tests/test_threads.py"]),
    ("read_all: the hasher told of a piece before it is read", SF,
     "                n = _read_into(f, region[got:stop])\n                got += n\n                if on_read is not None and n:\n                    on_read(region, got)",
     "                if on_read is not None:\n                    on_read(region, stop)\n                n = _read_into(f, region[got:stop])\n                got += n"),
    ("save: the tensors held back for the fsync never hashed", WRITER,
     "                for part in self.later:\n                    self.hasher.add(*part)\n", ""),
    ("save: a tensor written from a copy held back, the copy kept to the end", WRITER,
     'if self.hash_early or t.device.type != "cpu" or not t.is_contiguous():', "if self.hash_early:"),
    ("save: a durable save hashes while it writes (taking CPU from the writing, not waiting on the fsync)", WRITER,
     "hash_early=not durable", "hash_early=True"),
]

DEFAULT_TESTS = TESTS
