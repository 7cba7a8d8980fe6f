"""How many threads a job may use: the thread policy every numeric operation follows.

torch's default is one intra-op thread per CPU of the affinity mask, whatever else runs there.
OpenMP threads spin at every barrier, so when another process holds one of those cores each
parallel region waits for the slowest thread: on a loaded 2-core machine ``extract`` took 140 s
with torch's default and 37 s with one thread.  The policy gives a job of ``work`` floating-point
operations (its largest kernel: one matrix product, QR or SVD)

    n = max(1, min(cores − reserve, floor(idle + SPARE) − reserve, work // PER_THREAD, torch's count))

where

  * ``cores`` are the cores this process may use: the CPUs of its affinity mask
    (``os.sched_getaffinity``), capped by its cgroup's CPU quota, rounded down (cgroup v2
    ``cpu.max`` "QUOTA PERIOD" or "max PERIOD", v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``,
    the smallest along the cgroup's path: :func:`cpu_quota`);
  * ``idle`` is what others leave of the machine: its CPUs less the 1-minute load average, less
    this process's own share of that average (its CPU time, averaged the way the kernel averages
    the load: :class:`Load`), so that a long job's own threads do not make the next job shrink.
    A core counts when at least ``1 − SPARE`` of it is idle: a thread that shares its core
    stalls every other thread at each barrier, and one thread fewer costs far less than that;
  * ``reserve`` cores are kept for the job's own other threads (the merge's reader and writer);
  * small work gets one thread: below ``PER_THREAD`` operations per thread (about a millisecond
    of one core's sgemm) a thread costs more to wake than it computes;
  * torch's current count (``torch.set_num_threads`` by the caller, ``OMP_NUM_THREADS``) is a cap.

The override replaces all of it: ``ADAPTERKIT_THREADS=N`` in the environment, then ``--threads N``
on the command line (:func:`override`), which wins; every job then uses exactly N threads, its
size and the load notwithstanding.  A value that is not a positive integer is an error naming
where it came from.

:func:`intra_op` sets torch's intra-op threads for one job and restores them after it (an
exception included); :func:`threads_for` is the decision alone, for jobs that are not torch's
(hashing: ``threads_for(nbytes, per_thread=...)``).  :func:`for_command` is what the CLI wraps
a command in: the override, and torch's count for the work outside the jobs (reading, checking,
casting) set to the policy's — before torch is imported, through ``OMP_NUM_THREADS``.

Thread counts and results: matrix products and elementwise work are bit-identical whatever the
count (the kernels split rows and columns, not sums); LAPACK's QR, SVD and eigh are not (their
blocked reductions follow the count): results differ in the last bits (tests/test_threads.py
states the bounds).  This module imports torch only inside :func:`intra_op` and :func:`for_command`.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import ArgumentError

ENV = "ADAPTERKIT_THREADS"
PER_THREAD = 1 << 25  # floating-point operations a thread must get to be worth waking (~1 ms of sgemm on one core)
SPARE = 0.25  # a core counts as idle when at least 1 - SPARE of it is
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
LOAD_WINDOW = 60.0  # seconds: the time constant of the kernel's 1-minute load average
FACTS_TTL = 1.0  # seconds a reading of the affinity, quota and load is reused


# ----------------------------------------------------------------------------- the cores this process may use


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _levels(top: Path, inner: str) -> Iterator[Path]:
    """The cgroup's folder under the mount ``top`` and every folder above it up to ``top``; when
    the path is not there (a container shows the host's path), ``top`` alone."""
    here = top / inner.strip("/")
    if not here.is_dir():
        yield top
        return
    while True:
        yield here
        if here == top or top not in here.parents:
            return
        here = here.parent


def _quota_v2(text: str | None) -> float | None:
    """cgroup v2 ``cpu.max``: "QUOTA PERIOD" in cores, None for "max PERIOD" or anything else."""
    parts = (text or "").split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _quota_v1(quota: str | None, period: str | None) -> float | None:
    """cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in cores; None for -1 (no quota)."""
    try:
        q, p = int(quota or ""), int(period or "")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def cpu_quota(root: Path | str = CGROUP_ROOT, proc_cgroup: Path | str = PROC_CGROUP) -> float | None:
    """The CPU quota of this process's cgroup in cores (1.5 = 150 ms per 100 ms), the smallest
    along its path, or None when there is none (or no cgroup file system).

    ``proc_cgroup`` is ``/proc/self/cgroup`` ("ID:CONTROLLERS:PATH" lines): a v1 line whose
    controllers include ``cpu`` names the path under ``root/cpu`` (or ``root/cpu,cpuacct``) with
    ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us``; the v2 line "0::PATH" the path under ``root``
    (or ``root/unified``) with ``cpu.max``.  A v1 cpu controller, where there is one, is the one
    in force."""
    root, lines = Path(root), (_read(Path(proc_cgroup)) or "").splitlines()
    paths: dict[str, str] = {}
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers = parts[1].split(",")
        if "cpu" in controllers:
            paths.setdefault("v1", parts[2])
        elif parts[0] == "0" and parts[1] == "":
            paths.setdefault("v2", parts[2])
    found: list[float] = []
    if "v1" in paths:
        for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
            top = root / mount
            if (top / "cpu.cfs_quota_us").is_file():
                for level in _levels(top, paths["v1"]):
                    q = _quota_v1(_read(level / "cpu.cfs_quota_us"), _read(level / "cpu.cfs_period_us"))
                    if q is not None:
                        found.append(q)
                return min(found, default=None)
    if "v2" in paths:
        for top in (root, root / "unified"):
            if (top / "cgroup.controllers").is_file():
                for level in _levels(top, paths["v2"]):
                    q = _quota_v2(_read(level / "cpu.max"))
                    if q is not None:
                        found.append(q)
                if found:
                    return min(found)
    return None


def affinity() -> int:
    """How many CPUs this process may run on (its affinity mask; all CPUs where that is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def usable_cores(cpus: int, quota: float | None) -> int:
    """The cores a process with ``cpus`` CPUs in its affinity mask and a cgroup quota of ``quota``
    cores may keep busy: the quota rounded down (a thread over the quota is throttled, stalling
    the others at each barrier), at least 1."""
    return max(1, min(cpus, math.floor(quota) if quota is not None else cpus))


# ----------------------------------------------------------------------------- the load


class Load:
    """This process's own share of the load average: an exponential average of its CPU time per
    second with the load average's time constant (:data:`LOAD_WINDOW`), updated at each reading.
    ``clock`` and ``cpu_time`` are the wall clock and the process's CPU seconds (tests pass fakes)."""

    def __init__(self, clock=time.monotonic, cpu_time=time.process_time) -> None:
        self.clock, self.cpu_time = clock, cpu_time
        self.at, self.used, self.share = clock(), cpu_time(), 0.0
        self.lock = threading.Lock()

    def own(self) -> float:
        """Busy cores this process adds to the 1-minute load average, as of now."""
        with self.lock:
            now, used = self.clock(), self.cpu_time()
            dt = now - self.at
            if dt > 0:
                keep = math.exp(-dt / LOAD_WINDOW)
                self.share = self.share * keep + (used - self.used) / dt * (1 - keep)
                self.at, self.used = now, used
            return self.share


_LOAD = Load()


def idle_cores(machine: int, load: float, own: float) -> float:
    """What others leave of a machine of ``machine`` CPUs whose 1-minute load average is ``load``,
    ``own`` of it this process's: machine − (load − own), never below 0 nor above ``machine``."""
    return min(float(machine), max(0.0, machine - max(0.0, load - own)))


# ----------------------------------------------------------------------------- the decision


@dataclass(frozen=True)
class Machine:
    """What the policy reads: the cores this process may use (``cores``: affinity ∩ quota), the
    CPUs the load average is spread over (``machine``), the 1-minute load average and this
    process's own share of it."""

    cores: int
    machine: int
    load: float
    own: float = 0.0
    quota: float | None = None

    @property
    def idle(self) -> float:
        return idle_cores(self.machine, self.load, self.own)


_facts: tuple[float, Machine] | None = None
_facts_lock = threading.Lock()


def machine(*, root: Path | str = CGROUP_ROOT, proc_cgroup: Path | str = PROC_CGROUP) -> Machine:
    """The machine as this process sees it now (read again after :data:`FACTS_TTL` seconds)."""
    global _facts
    with _facts_lock:
        now = time.monotonic()
        if _facts is not None and now - _facts[0] < FACTS_TTL and root == CGROUP_ROOT and proc_cgroup == PROC_CGROUP:
            return _facts[1]
        quota = cpu_quota(root, proc_cgroup)
        try:
            load = os.getloadavg()[0]
        except (OSError, AttributeError):  # no load average here (Windows): count the machine as free
            load = 0.0
        seen = Machine(usable_cores(affinity(), quota), os.cpu_count() or 1, load, _LOAD.own(), quota)
        if root == CGROUP_ROOT and proc_cgroup == PROC_CGROUP:
            _facts = (now, seen)
        return seen


def positive(value: object, where: str) -> int:
    """``value`` as a thread count: an ``argument-invalid`` error naming ``where`` unless it is a
    positive integer (an int, not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ArgumentError(f"{where} must be a positive integer, the number of threads (got {value!r})",
                            key=where, expected="an integer >= 1", actual=value)
    return value


_override: int | None = None


def requested(environ: dict[str, str] | None = None) -> int | None:
    """The thread count the user asked for: :func:`override`'s (the CLI's ``--threads``), else
    ``ADAPTERKIT_THREADS`` (empty counts as unset), else None: the policy decides.

    Raises:
        ArgumentError: ``argument-invalid`` naming ``ADAPTERKIT_THREADS`` when it is set to
            something other than a positive integer.
    """
    if _override is not None:
        return _override
    text = (os.environ if environ is None else environ).get(ENV)
    if text is None or not text.strip():
        return None
    try:
        n = int(text.strip())
    except ValueError:
        n = 0
    if n < 1:
        raise ArgumentError(f"{text!r} is not a positive integer: set it to the number of threads to use, or unset it "
                            "for the automatic choice", key=ENV, expected="an integer >= 1", actual=text)
    return n


def decide(work: float, seen: Machine, *, per_thread: float = PER_THREAD, reserve: int = 0, cap: int | None = None) -> int:
    """The policy (the module doc), on a given ``seen`` machine: the threads a job of ``work``
    operations may use, ``reserve`` cores kept for its other threads, at most ``cap``."""
    free = math.floor(seen.idle + SPARE)
    n = min(seen.cores, free) - reserve
    if cap is not None:
        n = min(n, cap)
    if work < math.inf:
        n = min(n, int(work // per_thread))
    return max(1, n)


def threads_for(work: float, *, per_thread: float = PER_THREAD, reserve: int = 0, cap: int | None = None) -> int:
    """How many threads a job of ``work`` operations (``per_thread`` of them worth a thread) may
    use now: the override if the user gave one, else :func:`decide` on this :func:`machine`.

    Args:
        work: the job's size in floating-point operations (its largest kernel), or in the
            caller's own unit with a ``per_thread`` in that unit (bytes to hash, ...);
            ``math.inf`` for "as many as the machine allows".
        per_thread: how much of that work a thread must get to be worth waking.
        reserve: cores kept for the job's own other threads (not taken from an override).
        cap: the most threads to use (torch's current count), not applied to an override.

    Raises:
        ArgumentError: ``argument-invalid`` for a bad ``ADAPTERKIT_THREADS``.
    """
    n = requested()
    if n is not None:
        return n
    return decide(work, machine(), per_thread=per_thread, reserve=reserve, cap=cap)


# ----------------------------------------------------------------------------- torch


@contextmanager
def intra_op(work: float, *, reserve: int = 0) -> Iterator[int]:
    """torch's intra-op threads set for a job of ``work`` floating-point operations (see
    :func:`threads_for`), restored when the block ends, by an exception too; yields the count."""
    import torch

    before = torch.get_num_threads()
    n = threads_for(work, reserve=reserve, cap=before)
    if n != before:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextmanager
def override(n: int | None) -> Iterator[None]:
    """Every job in the block uses exactly ``n`` threads (None: the environment or the policy
    decides, as outside the block); what ``--threads N`` does for a command.  Process-wide.

    Raises:
        ArgumentError: ``argument-invalid`` when ``n`` is not a positive integer.
    """
    global _override
    if n is not None:
        n = positive(n, "threads")
    before, _override = _override, n if n is not None else _override
    try:
        yield
    finally:
        _override = before


@contextmanager
def for_command(n: int | None) -> Iterator[int]:
    """A CLI command's threads: the override ``n`` (``--threads``; None: ``ADAPTERKIT_THREADS`` or
    the policy) for every job, and torch's count for the work outside the jobs set to the
    policy's: through ``OMP_NUM_THREADS`` while torch is not imported (which imports no torch:
    a usage error stays torch-free), else ``torch.set_num_threads``; both restored after.
    An ``OMP_NUM_THREADS`` the user set is left as it is (torch's count, a cap on the jobs).
    Yields the count.

    Raises:
        ArgumentError: ``argument-invalid`` for a bad ``n`` or ``ADAPTERKIT_THREADS``.
    """
    import sys

    with override(n):
        count = threads_for(math.inf)
        forced = requested() is not None
        torch = sys.modules.get("torch")
        env_before = os.environ.get("OMP_NUM_THREADS")
        set_env = torch is None and (env_before is None or forced)
        before = torch.get_num_threads() if torch is not None else None
        if set_env:
            os.environ["OMP_NUM_THREADS"] = str(count)
        elif torch is not None and (forced or env_before is None) and before != count:
            torch.set_num_threads(count)
        try:
            yield count
        finally:
            if set_env:
                if env_before is None:
                    os.environ.pop("OMP_NUM_THREADS", None)
                else:
                    os.environ["OMP_NUM_THREADS"] = env_before
            if torch is not None and torch.get_num_threads() != before:
                torch.set_num_threads(before)


# ----------------------------------------------------------------------------- work


def matmul_work(m: int, k: int, n: int) -> float:
    """Operations of an (m×k)·(k×n) product: 2·m·k·n."""
    return 2.0 * m * k * n


def factor_work(shapes: Iterable[Sequence[int]]) -> float:
    """Operations of the largest QR or Gram matrix among tensors of these shapes (each seen as
    its first dimension × the rest): 2·rows·cols·min(rows, cols)."""
    best = 0.0
    for shape in shapes:
        rows = shape[0] if len(shape) else 1
        cols = math.prod(shape[1:]) if len(shape) > 1 else 1
        best = max(best, 2.0 * rows * cols * min(rows, cols))
    return best


def svd_work(m: int, n: int) -> float:
    """Operations of a thin SVD of an m×n matrix (Golub-Van Loan's count, about 14·m·n²
    for m ≥ n): 14·max·min²."""
    big, small = max(m, n), min(m, n)
    return 14.0 * big * small * small


def dense_work(shapes: Iterable[Sequence[int]]) -> float:
    """Operations of the largest dense matrix a product of two factors of these shapes can
    form, (m×r)·(r×n) with m the most rows, n the most columns and r the largest inner size
    among them (each shape seen as its first dimension × the rest): an upper estimate, 2·m·r·n."""
    rows = cols = inner = 0
    for shape in shapes:
        r = shape[0] if len(shape) else 1
        c = math.prod(shape[1:]) if len(shape) > 1 else 1
        rows, cols, inner = max(rows, r), max(cols, c), max(inner, min(r, c))
    return 2.0 * rows * inner * cols
