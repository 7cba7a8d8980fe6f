"""Fault-injection campaign over every command that writes: many seeded faults per command.

Usage: python scripts/fault_campaign.py [--n 30] [--seed 0] [--only NAME] [--batch 8]

For each command of ``tests/faults.COMMANDS`` and each fault type, ``--n`` runs with a fault
drawn from the seed (the same draws as CI's ``tests/test_faults.py``, only more of them):

  kill      SIGKILL just before the n-th write-side call (n over a clean run's range)
  outside   SIGKILL from outside after a random delay (up to a clean run's duration)
  enospc    OSError(ENOSPC) at the n-th call that needs space
  eacces    OSError(EACCES or EROFS) at the n-th call that needs write permission (a creation)
  tmpfs     OUT on a real tmpfs holding a random fraction of the output (skipped if mounting fails)
  ro        OUT on a read-only tmpfs, absent or existing (--overwrite)
  race      two writers of different outputs meeting before their renames (half with --overwrite)
  free-race two writers started together, no barrier, random --overwrite each
  cache     pull only: an empty Hub cache of its own, SIGKILL / ENOSPC / EACCES / EROFS at a
            random call into the cache or OUT's folder; then a clean rerun on that cache must
            succeed with the repo's files (a pull must never leave the cache unusable)

pull runs against tests/fake_hub.py started in this process; its warm cache is an input.
`merge --push-to` writes locally what `merge` writes (then uploads): merge's rows cover it.

Each run is judged by ``tests/faults.judge``: inputs byte-identical, OUT absent or one complete
output, nothing left beside OUT by a process that survived (a killed one may leave only its
hidden staging folder), a survivor's error one line with the expected code.  Prints a table:
command, faults injected by type, failures; then the first failures in full.  Exit 1 on any.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from faults import (  # noqa: E402
    COMMANDS,
    PERMISSION,
    SPACE,
    Fault,
    Run,
    Server,
    clear,
    digests,
    judge,
    make_inputs,
    mount_tmpfs,
    output_digests,
    remount_readonly,
    start_hub,
    unmount,
)

TYPES = ["kill", "outside", "enospc", "eacces", "tmpfs", "ro", "race", "free-race", "cache"]
REASONS = {"enospc": "No space left on device", "erofs": "Read-only file system", "eacces": "Permission denied"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30, help="runs per command and fault type")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default=None, help="commands whose name contains this")
    ap.add_argument("--batch", type=int, default=8, help="runs forked at once")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ak-campaign-"))
    server = Server()
    mounts: list[Path] = []
    try:
        return campaign(args, work, server, mounts)
    finally:
        for m in mounts:
            unmount(m)
        server.close()
        shutil.rmtree(work, ignore_errors=True)


def campaign(args, work: Path, server: Server, mounts: list[Path]) -> int:
    inputs = make_inputs(work / "in")
    hub = start_hub(inputs, work / "in" / "cache")
    try:
        return _campaign(args, work, server, mounts, inputs)
    finally:
        hub.stop()


def _campaign(args, work: Path, server: Server, mounts: list[Path], inputs) -> int:
    commands = [c for c in COMMANDS if args.only is None or args.only in c.name]
    expected, clean = {}, {}
    for cmd in commands:
        for alt in (False, True):
            out = work / "clean" / f"{cmd.name}-{alt}" / cmd.out
            out.parent.mkdir(parents=True)
            [r] = server.run(Run(cmd.argv(inputs, out, alt=alt), Fault("count", root=str(out.parent))))
            assert r.rc == 0, (cmd.name, r.stderr)
            expected[cmd.name, alt], clean[cmd.name, alt] = output_digests(out), r
    before = digests(work / "in")  # the Hub cache too, warmed by the clean pulls
    traces = {}  # pull into an empty cache: every hooked call, for the "cache" faults
    for cmd in commands:
        if cmd.env:
            folder = work / "clean" / f"{cmd.name}-cold"
            (folder / "o").mkdir(parents=True)
            [r] = server.run(Run(cmd.argv(dict(inputs, cache=folder / "cache"), folder / "o" / cmd.out), Fault("trace", root=str(folder))))
            assert r.rc == 0, (cmd.name, r.stderr)
            traces[cmd.name] = [line.split(" ", 3)[2] for line in r.trace]
    can_mount = mount_tmpfs(work / "probe", 4096)
    if can_mount:
        unmount(work / "probe")
    counter = iter(range(10**9))
    rows, failures = [], []
    started = time.monotonic()
    for cmd in commands:
        rng = random.Random(f"{args.seed}-{cmd.name}")
        counts = dict.fromkeys(TYPES, 0)
        bad = 0
        pending: list[tuple[str, list[Run], list[tuple[Path, tuple[bool, ...], dict]]]] = []
        for kind in TYPES:
            if (kind in ("tmpfs", "ro") and not can_mount) or (kind == "cache" and not cmd.env):
                continue
            for _ in range(args.n):
                pending.append(plan(kind, cmd, rng, work, next(counter), inputs, clean, expected, mounts, traces))
        for i in range(0, len(pending), args.batch):
            batch = pending[i:i + args.batch]
            results = server.run(*(run for _, runs, _ in batch for run in runs))
            reruns = [(checks[0][2]["rerun"], checks[0][2]["again"]) for _, _, checks in batch if "rerun" in checks[0][2]]
            reran = dict(zip([id(r) for r, _ in reruns], server.run(*(r for r, _ in reruns)))) if reruns else {}
            for kind, runs, checks in batch:
                mine, results = results[:len(runs)], results[len(runs):]
                counts[kind] += 1
                problems = []
                for result, (out, alts, kw) in zip(mine, checks):
                    if "rerun" in kw:  # the cache a faulty pull left must serve a clean one
                        again = reran[id(kw["rerun"])]
                        if again.rc != 0 or output_digests(kw["again"]) != expected[cmd.name, False]:
                            problems.append(f"a rerun on the cache failed: {again.stderr.strip()[-300:]!r}")
                    kw = {k: v for k, v in kw.items() if k not in ("old_in_the_way", "rerun", "again")}
                    problems += judge(result, out, [expected[cmd.name, a] for a in alts], work / "in", before, **kw)
                if kind in ("race", "free-race") and all(r.rc == 2 for r in mine) and not checks[0][2].get("old_in_the_way"):
                    problems.append("both concurrent writers failed")
                if problems:
                    bad += 1
                    failures.append(f"{cmd.name} {kind} {[r.args for r in runs]} {[vars(r.fault) for r in runs]}: {problems} "
                                    f"{[m.stderr.strip()[-300:] for m in mine]}")
                for out, _, _ in checks:
                    if (out.parent.parent / "cache").exists():
                        shutil.rmtree(out.parent.parent, ignore_errors=True)
                    elif out.parent.is_mount():
                        unmount(out.parent)
                        mounts.remove(out.parent)
                    elif out.parent.exists():
                        clear(out.parent)
        rows.append((cmd.name, counts, bad))
    print(f"{'command':<12}" + "".join(f"{t:>10}" for t in TYPES) + f"{'faults':>8}{'failures':>10}")
    for name, counts, bad in rows:
        print(f"{name:<12}" + "".join(f"{counts[t]:>10}" for t in TYPES) + f"{sum(counts.values()):>8}{bad:>10}")
    total = sum(sum(c.values()) for _, c, _ in rows)
    print(f"{'all':<12}" + "".join(f"{sum(c[t] for _, c, _ in rows):>10}" for t in TYPES) + f"{total:>8}{len(failures):>10}")
    print(f"seed {args.seed}, {args.n} per command and type, {time.monotonic() - started:.0f} s")
    for f in failures[:10]:
        print("FAIL", f)
    return 1 if failures else 0


def plan(kind: str, cmd, rng: random.Random, work: Path, i: int, inputs, clean, expected, mounts, traces):
    """(kind, the runs, and per run: OUT, the outputs it may leave (alt flags), judge's options)."""
    folder = work / "runs" / str(i)
    folder.mkdir(parents=True)
    out = folder / cmd.out
    ref = clean[cmd.name, False]
    if kind == "cache":
        (folder / "o").mkdir()
        mine = dict(inputs, cache=folder / "cache")
        out, calls = folder / "o" / cmd.out, traces[cmd.name]
        mode = rng.choice(["kill", "enospc", "eacces", "erofs"])
        n = rng.randint(1, len(calls) if mode == "kill" else sum(k in (SPACE if mode == "enospc" else PERMISSION) for k in calls))
        rerun = Run(cmd.argv(mine, folder / "again" / cmd.out))
        opts = {"names": (mine["cache"], out), "rerun": rerun, "again": folder / "again" / cmd.out, "message": REASONS.get(mode)}
        return kind, [Run(cmd.argv(mine, out), Fault(mode, n, root=str(folder)))], [(out, (False,), opts)]
    if kind == "kill":
        return kind, [Run(cmd.argv(inputs, out), Fault("kill", rng.randint(1, ref.ops), root=str(folder)))], [(out, (False,), {})]
    if kind == "outside":
        return kind, [Run(cmd.argv(inputs, out), kill_after=rng.uniform(0, ref.seconds))], [(out, (False,), {})]
    if kind in ("enospc", "eacces"):
        mode = kind if kind == "enospc" else rng.choice(["eacces", "erofs"])
        run = Run(cmd.argv(inputs, out), Fault(mode, rng.randint(1, ref.space if mode == "enospc" else ref.perm), root=str(folder)))
        return kind, [run], [(out, (False,), {"must_fail": True, "message": REASONS[mode]})]
    if kind == "tmpfs":
        need = sum(p.stat().st_size for p in (work / "clean" / f"{cmd.name}-False").rglob("*") if p.is_file())
        size = max(4096, int(need * rng.uniform(0.05, 0.9)) // 4096 * 4096)
        mnt = folder / "mnt"
        if not mount_tmpfs(mnt, size):
            raise SystemExit(f"mount failed at {mnt}")
        mounts.append(mnt)
        out = mnt / cmd.out
        return kind, [Run(cmd.argv(inputs, out))], [(out, (False,), {"must_fail": True, "message": "No space left on device"})]
    if kind == "ro":
        mnt = folder / "mnt"
        if not mount_tmpfs(mnt, 1 << 20):
            raise SystemExit(f"mount failed at {mnt}")
        mounts.append(mnt)
        out, existing = mnt / cmd.out, rng.random() < 0.5
        if existing:
            old = work / "clean" / f"{cmd.name}-True" / cmd.out
            (shutil.copytree if old.is_dir() else shutil.copyfile)(old, out)
        remount_readonly(mnt)
        return kind, [Run(cmd.argv(inputs, out, overwrite=existing))], [(out, (True,) if existing else (False,),
                                                                            {"must_fail": True, "message": "Read-only file system"})]
    overwrite = rng.random() < 0.5
    if kind == "race":
        (folder.parent / f"{i}.barrier").mkdir()
        fault = Fault("barrier", root=str(folder), out=str(out), barrier=str(folder.parent / f"{i}.barrier"))
        flags = (overwrite, overwrite)
    else:
        fault = Fault("count", root=str(folder))
        flags = (rng.random() < 0.5, rng.random() < 0.5)
    in_the_way = rng.random() < 0.5
    if in_the_way:  # an old output (a complete one: the clean run's)
        old = work / "clean" / f"{cmd.name}-False" / cmd.out
        (shutil.copytree if old.is_dir() else shutil.copyfile)(old, out)
    runs = [Run(cmd.argv(inputs, out, alt=alt, overwrite=ow), fault) for alt, ow in zip((False, True), flags)]
    opts = {"codes": ("output-exists",), "old_in_the_way": in_the_way and not any(flags)}
    return kind, runs, [(out, (False, True), opts), (out, (False, True), opts)]


if __name__ == "__main__":
    sys.exit(main())
