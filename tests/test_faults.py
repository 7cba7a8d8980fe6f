"""Fault injection for every command that writes: killed processes, full disks, read-only
targets and concurrent writers leave every input byte-identical and OUT absent or complete.

Each run is a child of the fork server in ``tests/faults.py``, with hooks on the write-side
calls (nothing in adapterkit knows about them).  Kill points and error points are drawn from a
seeded random over the calls a clean run makes; ``scripts/fault_campaign.py`` runs many more.
A surviving process must end with one line ``adapterkit: error: ... [code]`` and exit 2.

Leftovers: a SIGKILLed writer may leave its hidden staging folder ``.<OUT>.tmp-*`` beside OUT
(nothing can remove it); the output inside sits one level down, so neither the adapter folder
search nor a checkpoint reader given the folder finds it.  A process that survives leaves none.

``pull`` runs against the fake Hub (tests/fake_hub.py) served from this test process, the
child's HF_ENDPOINT and HF_HUB_CACHE pointing at it and at a cache under the inputs, warmed by
the clean pulls: a pull into a warm cache writes only OUT, and the cache, an input, must stay
byte-identical.  Faults inside the cache (a pull into an empty one, hooked in both places) are
the last section: a survivor says write-failed naming the cache, and the cache serves a rerun.
``info --plot`` writes one PNG (deterministic: the clean runs give the same bytes).
``merge ... --push-to`` writes locally exactly what ``merge`` writes, then uploads that folder:
its local faults are merge's, covered here; it needs no cases of its own.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
from faults import (
    COMMANDS,
    PERMISSION,
    Fault,
    Run,
    Server,
    digests,
    judge,
    make_inputs,
    mount_tmpfs,
    output_digests,
    remount_readonly,
    start_hub,
    unmount,
)
from safetensors import safe_open
from safetensors.torch import load_file

from adapterkit.errors import AdapterkitError
from adapterkit.io import atomic

IDS = [c.name for c in COMMANDS]
ADAPTER_DIRS = [c for c in COMMANDS if not c.checkpoint and not c.file]


class Env:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.inputs = make_inputs(root / "in")
        self.hub = start_hub(self.inputs, root / "in" / "cache")
        self.server = Server()
        self.clean: dict[tuple[str, bool], object] = {}
        self.expected: dict[tuple[str, bool], dict[str, str]] = {}
        runs, keys = [], []
        for cmd in COMMANDS:
            for alt in (False, True):
                out = self.folder(f"clean-{alt}", cmd) / cmd.out
                runs.append(Run(cmd.argv(self.inputs, out, alt=alt), Fault("count", root=str(out.parent))))
                keys.append((cmd.name, alt, out))
        for (name, alt, out), result in zip(keys, self.server.run(*runs)):
            assert result.rc == 0, (name, alt, result.stderr)
            self.clean[name, alt] = result
            self.expected[name, alt] = output_digests(out)
        self.before = digests(root / "in")  # the Hub cache too, warmed by the clean pulls: a pull must leave it as it is
        self._n = 0

    def folder(self, what: str, cmd) -> Path:
        folder = self.root / what / cmd.name
        folder.mkdir(parents=True)
        return folder

    def scratch(self, cmd) -> Path:
        """A fresh empty folder for one run's OUT."""
        self._n += 1
        return self.folder(f"run{self._n}", cmd)

    def judge(self, result, out: Path, cmd, *, alts=(False,), **kw) -> list[str]:
        allowed = [self.expected[cmd.name, a] for a in alts]
        return judge(result, out, allowed, self.root / "in", self.before, **kw)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = Env(tmp_path_factory.mktemp("faults"))
    yield e
    e.server.close()
    e.hub.stop()


# ----------------------------------------------------------------------------- install itself, with and without renameat2

@pytest.fixture(params=["renameat2", "fallback"])
def installer(request, monkeypatch):
    if request.param == "fallback":
        monkeypatch.setattr(atomic, "_RENAMEAT2", None)
    return request.param


def _staged(tmp_path: Path, kind: str, text: str) -> Path:
    p = tmp_path / "staging" / "out"
    p.parent.mkdir(exist_ok=True)
    if kind == "dir":
        p.mkdir()
        (p / "new.txt").write_text(text)
    else:
        p.write_text(text)
    return p


def _tree(p: Path) -> dict[str, str]:
    if p.is_file():
        return {".": p.read_text()}
    return {q.relative_to(p).as_posix(): q.read_text() for q in p.rglob("*") if q.is_file()}


@pytest.mark.parametrize("new", ["dir", "file"])
@pytest.mark.parametrize("old", [None, "dir", "file", "empty-dir"])
def test_install_replaces_whole_or_refuses(tmp_path: Path, installer, new: str, old: str | None) -> None:
    """Without overwrite anything at OUT (even an empty folder) is refused and kept; with
    overwrite it is replaced whole (nothing of the old output remains, no file beside it)."""
    for overwrite in (False, True):
        shutil.rmtree(tmp_path, ignore_errors=True)
        tmp_path.mkdir()
        out = tmp_path / "out"
        if old == "dir":
            out.mkdir()
            (out / "old.txt").write_text("old")
        elif old == "empty-dir":
            out.mkdir()
        elif old == "file":
            out.write_text("old")
        before = _tree(out) if old else None
        staged = _staged(tmp_path, new, "new")
        if old and not overwrite:
            with pytest.raises(AdapterkitError) as exc:
                atomic.install(staged, out, overwrite=False)
            assert exc.value.code == "output-exists" and exc.value.path == str(out)
            assert _tree(out) == before and _tree(staged) == ({".": "new"} if new == "file" else {"new.txt": "new"})
            continue
        atomic.install(staged, out, overwrite=overwrite)
        assert _tree(out) == ({".": "new"} if new == "file" else {"new.txt": "new"})
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "staging"]
        assert not os.path.lexists(staged)  # the old output (swapped into the staging place) is gone


def test_install_fallback_puts_the_old_output_back_when_the_new_cannot_move_in(tmp_path: Path, monkeypatch) -> None:
    """Without renameat2, replacing is two renames; when the second fails the first is undone."""
    monkeypatch.setattr(atomic, "_RENAMEAT2", None)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    staged = _staged(tmp_path, "dir", "new")
    real = os.rename

    def rename(src, dst):
        if Path(src) == staged:
            raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError):
        atomic.install(staged, out, overwrite=True)
    assert _tree(out) == {"old.txt": "old"} and _tree(staged) == {"new.txt": "new"}


def test_install_gives_up_when_others_keep_replacing(tmp_path: Path, monkeypatch) -> None:
    """A target that vanishes and reappears forever ends in a WriteError, not a loop."""
    staged = _staged(tmp_path, "file", "new")
    monkeypatch.setattr(atomic, "_move_new", lambda s, d: (_ for _ in ()).throw(FileExistsError(17, "exists")))
    monkeypatch.setattr(atomic, "_swap", lambda s, d: (_ for _ in ()).throw(FileNotFoundError(2, "gone")))
    (tmp_path / "out").write_text("old")
    with pytest.raises(AdapterkitError) as exc:
        atomic.install(staged, tmp_path / "out", overwrite=True)
    assert exc.value.code == "write-failed"


def test_write_new_turns_a_failed_install_into_write_failed(tmp_path: Path, monkeypatch) -> None:
    """The rename into place failing (EIO here) ends in write-failed naming the target; nothing is
    left beside it.  Without overwrite an existing file is refused and kept."""
    out = tmp_path / "out.png"
    monkeypatch.setattr(atomic, "_move_new", lambda s, d: (_ for _ in ()).throw(OSError(5, "Input/output error")))
    with pytest.raises(AdapterkitError) as exc:
        atomic.write_new(out, [b"new"], overwrite=False)
    assert exc.value.code == "write-failed" and exc.value.path == str(out) and "Input/output error" in str(exc.value)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    out.write_bytes(b"old")
    with pytest.raises(AdapterkitError) as exc:
        atomic.write_new(out, [b"new"], overwrite=False)
    assert exc.value.code == "output-exists" and out.read_bytes() == b"old" and list(tmp_path.iterdir()) == [out]
    atomic.write_new(out, [b"new"], overwrite=True)
    assert out.read_bytes() == b"new" and list(tmp_path.iterdir()) == [out]


# ----------------------------------------------------------------------------- the clean outputs (the reference for every fault)

def test_clean_outputs_are_valid_and_deterministic(env) -> None:
    """The outputs a faulty run may leave are compared with these: each must be valid (adapters:
    `adapterkit validate`; checkpoints: index and shards agree, read by the safetensors library)
    and the same bytes on every run."""
    outs = [env.scratch(c) / c.out for c in COMMANDS]
    again = env.server.run(*(Run(c.argv(env.inputs, out)) for c, out in zip(COMMANDS, outs)))
    assert all(r.rc == 0 for r in again), [r.stderr for r in again]
    for cmd, rerun in zip(COMMANDS, outs):
        out = env.root / "clean-False" / cmd.name / cmd.out
        assert output_digests(rerun) == env.expected[cmd.name, False], cmd.name
        assert env.expected[cmd.name, True] != env.expected[cmd.name, False], cmd.name  # concurrent writers differ
        if cmd.checkpoint:
            _check_checkpoint(out)
    adapters = [c for c in COMMANDS if not c.checkpoint and not c.out.endswith(".png")]
    checks = env.server.run(*(Run(["validate", env.root / "clean-False" / c.name / c.out]) for c in adapters))
    assert all(r.rc == 0 for r in checks), [r.stdout for r in checks]
    for alt in (False, True):  # a pull's files are the Hub repo's bytes (the inputs a and b themselves)
        assert env.expected["pull", alt] == digests(env.inputs["b" if alt else "a"])
    _check_png(env.root / "clean-False" / "info-plot" / "out.png")


def _check_png(path: Path) -> None:
    """A complete PNG (every chunk's CRC right, IEND last) that decodes to the figure's pixels."""
    import struct
    import zlib

    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, kinds = 8, []
    while at < len(data):
        (n,), kind = struct.unpack(">I", data[at:at + 4]), data[at + 4:at + 8]
        assert zlib.crc32(data[at + 4:at + 8 + n]) == struct.unpack(">I", data[at + 8 + n:at + 12 + n])[0], kind
        kinds.append(kind)
        at += 12 + n
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and at == len(data)
    assert matplotlib.image.imread(path).shape[:2] == (352, 1200)  # figsize (15, 4.4) at 80 dpi


def _check_checkpoint(out: Path) -> None:
    if out.is_file():
        load_file(out)
        return
    index = json.loads((out / "model.safetensors.index.json").read_text())
    keys = {}
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(out / shard, "pt") as f:
            keys.update(dict.fromkeys(f.keys(), shard))
    assert keys == index["weight_map"]
    assert (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file()


def test_merge_output_is_w_plus_scaled_ba(env) -> None:
    """The clean merge against first principles: W + (alpha / r)·B·A for each target, the rest copied."""
    from faults import LORA_CONFIG, lora_tensors

    merged = {}
    for shard in (env.root / "clean-False" / "merge" / "out").glob("*.safetensors"):
        merged.update(load_file(shard))
    base = {}
    for shard in env.inputs["base"].glob("*.safetensors"):
        base.update(load_file(shard))
    a = lora_tensors(1)
    scaling = LORA_CONFIG["lora_alpha"] / LORA_CONFIG["r"]
    for key, w in base.items():
        lora = "base_model.model." + key.removesuffix(".weight")
        if lora + ".lora_A.weight" in a:
            w = w + scaling * a[lora + ".lora_B.weight"] @ a[lora + ".lora_A.weight"]
            torch.testing.assert_close(merged[key], w, rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(merged[key], w), key


# ----------------------------------------------------------------------------- SIGKILL

@pytest.mark.parametrize("cmd", COMMANDS, ids=IDS)
def test_sigkill_at_random_write_calls(env, cmd) -> None:
    """Killed just before its n-th write-side call (3 seeded n per command over a clean run's range)."""
    ops = env.clean[cmd.name, False].ops
    points = random.Random(f"kill-{cmd.name}").sample(range(1, ops + 1), min(3, ops))
    outs = [env.scratch(cmd) / cmd.out for _ in points]
    results = env.server.run(*(Run(cmd.argv(env.inputs, out), Fault("kill", n, root=str(out.parent))) for n, out in zip(points, outs)))
    for n, out, result in zip(points, outs, results):
        assert result.killed, (n, result.stderr)
        assert env.judge(result, out, cmd) == [], n


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c.checkpoint or c.name == "extract"], ids=lambda c: c.name)
def test_sigkill_from_outside_after_a_random_delay(env, cmd) -> None:
    seconds = env.clean[cmd.name, False].seconds
    delays = [random.Random(f"outside-{cmd.name}-{i}").uniform(0, seconds) for i in range(3)]
    outs = [env.scratch(cmd) / cmd.out for _ in delays]
    results = env.server.run(*(Run(cmd.argv(env.inputs, out), kill_after=d) for d, out in zip(delays, outs)))
    for out, result in zip(outs, results):
        assert env.judge(result, out, cmd) == []


@pytest.mark.parametrize("cmd", COMMANDS, ids=IDS)
def test_killed_before_the_rename_leaves_nothing_a_search_finds(env, cmd) -> None:
    """Killed with the output complete but not yet renamed into place: OUT is absent, and the
    folder holding it yields no adapter (the staging folder is hidden and the output one level
    down in it: the adapter folder search, one level deep, does not find it)."""
    out = env.scratch(cmd) / cmd.out
    [result] = env.server.run(Run(cmd.argv(env.inputs, out), Fault("kill-install", root=str(out.parent), out=str(out))))
    assert result.killed and not os.path.lexists(out)
    assert env.judge(result, out, cmd) == []
    [info] = env.server.run(Run(["info", out.parent]))
    assert info.rc == 2 and info.stderr.strip().endswith("[not-an-adapter]"), info.stdout + info.stderr


# ----------------------------------------------------------------------------- write errors (injected, and a real full tmpfs)

@pytest.mark.parametrize("cmd", COMMANDS, ids=IDS)
def test_injected_write_errors_are_one_line_write_failed(env, cmd) -> None:
    """ENOSPC at the second write call (creating the staged output) and at a seeded one, EROFS
    at the first creation (the staging folder), EACCES at a seeded one: exit 2,
    one line, write-failed naming OUT and the system's reason; nothing left beside OUT."""
    space = env.clean[cmd.name, False].space
    rng = random.Random(f"errors-{cmd.name}")
    perm = env.clean[cmd.name, False].perm
    faults = [("enospc", 2), ("enospc", rng.randint(3, space)), ("erofs", 1), ("eacces", rng.randint(1, perm))]
    outs = [env.scratch(cmd) / cmd.out for _ in faults]
    results = env.server.run(*(Run(cmd.argv(env.inputs, out), Fault(mode, n, root=str(out.parent))) for (mode, n), out in zip(faults, outs)))
    reasons = {"enospc": "No space left on device", "erofs": "Read-only file system", "eacces": "Permission denied"}
    for (mode, n), out, result in zip(faults, outs, results):
        assert env.judge(result, out, cmd, must_fail=True, message=reasons[mode]) == [], (mode, n)


def _mount(where: Path, size: int) -> None:
    if not mount_tmpfs(where, size):
        pytest.skip("mounting a tmpfs is not permitted here")


@pytest.mark.parametrize("cmd", COMMANDS, ids=IDS)
def test_a_real_full_tmpfs(env, cmd) -> None:
    """OUT on a tmpfs with room for about half of it: write-failed (ENOSPC), the tmpfs left empty."""
    need = sum(p.stat().st_size for p in (env.root / "clean-False" / cmd.name).rglob("*") if p.is_file())
    mnt = env.scratch(cmd) / "mnt"
    _mount(mnt, max(4096, need // 2 // 4096 * 4096))
    try:
        out = mnt / cmd.out
        [result] = env.server.run(Run(cmd.argv(env.inputs, out)))
        assert env.judge(result, out, cmd, must_fail=True, message="No space left on device") == []
        assert list(mnt.iterdir()) == []
    finally:
        unmount(mnt)


@pytest.mark.parametrize("cmd", COMMANDS, ids=IDS)
def test_a_read_only_target(env, cmd) -> None:
    """OUT on a read-only tmpfs (root ignores permission bits, not a read-only mount): absent,
    write-failed; existing, with --overwrite, write-failed and the old output untouched."""
    empty, full = env.scratch(cmd) / "empty", env.scratch(cmd) / "full"
    _mount(empty, 1 << 20)
    try:
        _mount(full, 1 << 20)
        try:
            old = env.root / "clean-True" / cmd.name / cmd.out
            (shutil.copytree if old.is_dir() else shutil.copyfile)(old, full / cmd.out)
            assert remount_readonly(empty) and remount_readonly(full)
            a, b = env.server.run(Run(cmd.argv(env.inputs, empty / cmd.out)),
                                  Run(cmd.argv(env.inputs, full / cmd.out, overwrite=True)))
            assert env.judge(a, empty / cmd.out, cmd, must_fail=True, message="Read-only file system") == []
            assert env.judge(b, full / cmd.out, cmd, alts=(True,), must_fail=True, message="Read-only file system") == []
        finally:
            unmount(full)
    finally:
        unmount(empty)


# ----------------------------------------------------------------------------- two writers at once

@pytest.mark.parametrize("cmd", COMMANDS, ids=IDS)
def test_concurrent_writers_without_overwrite(env, cmd) -> None:
    """Two writers of different outputs, both past every existence check (they meet at a barrier
    before their renames onto OUT): one wins, the other gets output-exists; OUT is the winner's."""
    out = env.scratch(cmd) / cmd.out
    (out.parent.parent / "barrier").mkdir()
    fault = Fault("barrier", root=str(out.parent), out=str(out), barrier=str(out.parent.parent / "barrier"))
    results = env.server.run(Run(cmd.argv(env.inputs, out), fault), Run(cmd.argv(env.inputs, out, alt=True), fault))
    assert sorted(r.rc for r in results) == [0, 2], [r.stderr for r in results]
    winner = [r.rc for r in results].index(0) == 1
    for result in results:
        assert env.judge(result, out, cmd, alts=(winner,), codes=("output-exists",)) == []
    assert "[output-exists]" in results[not winner].stderr


@pytest.mark.parametrize("old", [True, False], ids=["over-old", "no-old"])
@pytest.mark.parametrize("cmd", COMMANDS, ids=IDS)
def test_concurrent_writers_with_overwrite(env, cmd, old: bool) -> None:
    """Two writers with --overwrite (over an existing OUT, or none), meeting before their renames:
    both succeed, OUT is one of the two outputs whole (nothing of the old one, no mixture)."""
    out = env.scratch(cmd) / cmd.out
    if old and cmd.file:
        out.write_bytes(b"old")
    elif old:
        out.mkdir()
        (out / "old.txt").write_text("old")
    (out.parent.parent / "barrier").mkdir()
    fault = Fault("barrier", root=str(out.parent), out=str(out), barrier=str(out.parent.parent / "barrier"))
    results = env.server.run(Run(cmd.argv(env.inputs, out, overwrite=True), fault), Run(cmd.argv(env.inputs, out, alt=True, overwrite=True), fault))
    assert [r.rc for r in results] == [0, 0], [r.stderr for r in results]
    for result in results:
        assert env.judge(result, out, cmd, alts=(False, True)) == []


# ----------------------------------------------------------------------------- pull: faults while the download writes the Hub cache

PULL = next(c for c in COMMANDS if c.name == "pull")
REASONS = {"enospc": "No space left on device", "erofs": "Read-only file system", "eacces": "Permission denied"}


def _cold(env) -> tuple[Path, Path, dict]:
    """A run's folder holding an empty Hub cache (``cache/``, made by the pull) and OUT's folder ``o/``."""
    root = env.scratch(PULL)
    (root / "o").mkdir()
    return root, root / "o" / PULL.out, dict(env.inputs, cache=root / "cache")


@pytest.fixture(scope="module")
def cold_pull(env) -> dict[str, list[int]]:
    """Which hooked calls of a pull into an empty cache write the cache and which OUT's folder,
    by number (all calls, calls needing space, calls needing permission), from a traced run."""
    root, out, inputs = _cold(env)
    [r] = env.server.run(Run(PULL.argv(inputs, out), Fault("trace", root=str(root))))
    assert r.rc == 0, r.stderr
    calls: dict[str, list[int]] = {"cache": [], "out": [], "blob-space": [], "blob-perm": []}
    perm = 0
    for line in r.trace:
        n, space, kind, path = line.split(" ", 3)
        perm += kind in PERMISSION
        calls["out" if path.startswith(str(out.parent)) else "cache"].append(int(n))
        if "/blobs/" in path and path.endswith(".incomplete"):  # the download itself (huggingface_hub renames it into blobs/)
            if space != "-":
                calls["blob-space"].append(int(space))
            if kind in PERMISSION:
                calls["blob-perm"].append(perm)
    assert calls["cache"] and calls["out"] and calls["blob-space"] and calls["blob-perm"], r.trace
    assert max(calls["cache"]) < min(calls["out"])  # everything is in the cache before OUT is begun
    return calls


def test_pull_faults_in_the_hub_cache_leave_it_usable(env, cold_pull) -> None:
    """A pull into an empty cache, SIGKILLed at seeded calls into the cache (3) and into OUT's
    folder (2); ENOSPC at a seeded write of a download, EROFS at a seeded creation of one,
    EACCES creating the cache: a survivor's error is one line, write-failed naming the cache
    (not a Hub error) and the reason; OUT absent or complete.  Then the same cache serves a clean
    rerun, which gives the repo's files, and its snapshot holds the repo's bytes."""
    rng = random.Random("cold-pull")
    faults = [("kill", n) for n in rng.sample(cold_pull["cache"], 3)] + [("kill", n) for n in rng.sample(cold_pull["out"], 2)]
    faults += [("enospc", rng.choice(cold_pull["blob-space"])), ("erofs", rng.choice(cold_pull["blob-perm"])), ("eacces", 1)]
    runs = [_cold(env) for _ in faults]
    results = env.server.run(*(Run(PULL.argv(inputs, out), Fault(mode, n, root=str(root))) for (mode, n), (root, out, inputs) in zip(faults, runs)))
    again = env.server.run(*(Run(PULL.argv(inputs, root / "again" / PULL.out)) for root, _, inputs in runs))
    repo = digests(env.inputs["a"])
    for (mode, n), (root, out, inputs), result, rerun in zip(faults, runs, results, again):
        assert result.killed == (mode == "kill"), (mode, n, result.stderr)
        assert env.judge(result, out, PULL, must_fail=mode != "kill", message=REASONS.get(mode), names=(inputs["cache"],)) == [], (mode, n)
        assert rerun.rc == 0, (mode, n, rerun.stderr)
        assert digests(root / "again" / PULL.out) == repo, (mode, n)
        [snapshot] = (inputs["cache"] / "models--org--a" / "snapshots").iterdir()
        assert digests(snapshot) == repo, (mode, n)


def test_pull_into_an_unwritable_cache_is_write_failed_not_a_hub_error(env) -> None:
    """The cache on a read-only tmpfs: write-failed naming the cache and the reason, nothing written."""
    _, out, inputs = _cold(env)
    _mount(inputs["cache"], 1 << 20)
    try:
        assert remount_readonly(inputs["cache"])
        [result] = env.server.run(Run(PULL.argv(inputs, out)))
        assert env.judge(result, out, PULL, must_fail=True, message="Read-only file system", names=(inputs["cache"],)) == []
    finally:
        unmount(inputs["cache"])
