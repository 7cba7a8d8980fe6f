"""Mutation check of the thread policy (adapterkit/threads.py): does tests/test_threads.py catch plausible bugs?

Usage: python tests/mutation/run.py threads [--only SUBSTRING]

Each mutant is one textual patch (a plausible bug) applied to a temporary copy of the
repository (never the real files); tests/test_threads.py then runs against the copy.  A mutant
is killed when a test fails.  Prints one line per mutant and the score.
"""

from __future__ import annotations

TESTS = ["tests/test_threads.py"]
THREADS = "adapterkit/threads.py"

# (name, file, old text, new text)
MUTANTS = [
    ("quota rounded up (a 2.5-core quota gives 3 threads, throttled)", THREADS,
     "math.floor(quota) if quota is not None else cpus", "math.ceil(quota) if quota is not None else cpus"),
    ("cgroup v2: the largest quota along the path, not the smallest", THREADS,
     "                if found:\n                    return min(found)", "                if found:\n                    return max(found)"),
    ("cgroup v1: the quota of the mount's root only, not the process's cgroup", THREADS,
     '                for level in _levels(top, paths["v1"]):', '                for level in _levels(top, "/"):'),
    ("own share of the load not subtracted", THREADS,
     "max(0.0, machine - max(0.0, load - own))", "max(0.0, machine - max(0.0, load))"),
    ("a core shared with another process counts as free (rounded up)", THREADS,
     "free = math.floor(seen.idle + SPARE)", "free = math.ceil(seen.idle)"),
    ("small work not held to one thread", THREADS,
     "        n = min(n, int(work // per_thread))\n", "        pass\n"),
    ("reserve not kept for the job's other threads", THREADS,
     "n = min(seen.cores, free) - reserve", "n = min(seen.cores, free)"),
    ("torch's threads not restored after an exception", THREADS,
     "    try:\n        yield n\n    finally:\n        if torch.get_num_threads() != before:\n            torch.set_num_threads(before)",
     "    yield n\n    if torch.get_num_threads() != before:\n        torch.set_num_threads(before)"),
    ("the environment wins over --threads", THREADS,
     "    if _override is not None:\n        return _override\n", "    if _override is not None and not os.environ.get(ENV):\n        return _override\n"),
    ("own load decays per second, not per minute", THREADS, "math.exp(-dt / LOAD_WINDOW)", "math.exp(-dt)"),
    ("the override capped by torch's count", THREADS,
     "    n = requested()\n    if n is not None:\n        return n\n", "    n = requested()\n    if n is not None:\n        return n if cap is None else min(n, cap)\n"),
]

DEFAULT_TESTS = TESTS
