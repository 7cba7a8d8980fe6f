"""Fault injection for the commands that write (test helper; adapterkit never imports it).

A *fork server* (a child Python process started once) imports adapterkit, its operations and
torch, then forks one child per run: the child installs hooks on the write-side calls the
library makes below one folder (``os.write``/``pwrite``/``ftruncate``/``fsync``/``mkdir``/
``open`` for writing/``rename``/``replace``/``link``/``symlink``/``chmod``/``unlink``/``rmdir``/
``copy_file_range``/``sendfile``, writes and flushes of files opened for writing, and the
``renameat2`` the installer calls through ctypes), runs one ``adapterkit`` command line (or
``adapterkit.save``) and exits with its status.  Nothing in adapterkit knows about the hooks.

Faults (``Fault.mode``):
  * ``count``: nothing injected; the child reports how many hooked calls it made (a clean run
    tells the range kill points are drawn from);
  * ``kill``: SIGKILL itself just before the ``n``-th hooked call;
  * ``enospc``: the ``n``-th call that needs space (data writes, fsync, creating a file or a
    folder) raises ``OSError(ENOSPC)`` instead; ``erofs`` / ``eacces``: the ``n``-th call that
    needs write permission (creating or opening a file for writing, creating a folder);
  * ``kill-install``: SIGKILL itself just before the first rename onto ``out``;
  * ``barrier``: the first rename whose destination is ``out`` waits until ``parties`` children
    have reached theirs (two writers past every existence check at once);
  * a run's ``kill_after`` SIGKILLs it from outside after that many seconds.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# hooked call -> whether it needs space/permission (where enospc/erofs/eacces are injected)
SPACE = {"write", "pwrite", "file.write", "file.flush", "ftruncate", "fsync", "mkdir", "open", "copy_file_range", "sendfile", "symlink"}
PERMISSION = {"mkdir", "open", "symlink"}  # where EACCES/EROFS come from (a file already open is written)
META = {"rename", "replace", "link", "chmod", "unlink", "rmdir", "renameat2"}
ERRNO = {"enospc": errno.ENOSPC, "erofs": errno.EROFS, "eacces": errno.EACCES}


@dataclass
class Fault:
    mode: str = "count"  # count | kill | enospc | erofs | eacces | barrier
    n: int = 0  # the hooked call (1-based) at which the fault strikes
    root: str = ""  # only calls on paths below this folder are hooked
    out: str = ""  # the output path (barrier: renames onto it)
    barrier: str = ""  # folder the barrier's marker files go to
    parties: int = 2


@dataclass
class Run:
    args: list[str]  # an adapterkit command line, or ["py-save", SRC, OUT(, "--overwrite")]; leading "env:NAME=VALUE" items set the child's environment
    fault: Fault = field(default_factory=Fault)
    kill_after: float | None = None  # SIGKILL from outside after this many seconds


@dataclass
class Result:
    rc: int | None  # exit status; None when killed by a signal
    signal: int | None
    stdout: str
    stderr: str
    ops: int  # hooked calls made (-1 when the child could not say: killed)
    space: int  # of which calls that need space
    perm: int  # of which calls that need write permission
    seconds: float
    trace: list[str] = field(default_factory=list)  # mode "trace": every hooked call (n, space n, kind, path)

    @property
    def killed(self) -> bool:
        return self.signal is not None


# ----------------------------------------------------------------------------- the hooks (in the child)

def install_hooks(fault: Fault) -> dict:
    """Patch the write-side calls; returns the counter state (``state["ops"]``)."""
    import builtins
    import io

    state = {"ops": 0, "space": 0, "perm": 0, "waited": False, "trace": []}
    lock = threading.Lock()
    root = os.path.abspath(fault.root) + os.sep
    real_readlink, real_kill, real_open = os.readlink, os.kill, io.open

    def mine(path, dir_fd=None) -> bool:
        try:
            if isinstance(path, int):
                path = real_readlink(f"/proc/self/fd/{path}")
            elif dir_fd is not None:  # shutil.rmtree's unlink(name, dir_fd=...)
                path = os.path.join(real_readlink(f"/proc/self/fd/{dir_fd}"), os.fsdecode(path))
            return os.path.abspath(os.fsdecode(path)).startswith(root)
        except (OSError, TypeError, ValueError):
            return False

    def strike(kind: str, path, dir_fd=None) -> None:
        if not mine(path, dir_fd):
            return
        with lock:
            state["ops"] += 1
            space, perm = kind in SPACE, kind in PERMISSION
            state["space"] += space
            state["perm"] += perm
            n_all, n_space, n_perm = state["ops"], state["space"], state["perm"]
            if fault.mode == "trace":
                state["trace"].append(f"{n_all} {n_space if space else '-'} {kind} {path if not isinstance(path, int) else real_readlink(f'/proc/self/fd/{path}')}")
        if fault.mode == "kill" and n_all == fault.n:
            real_kill(os.getpid(), signal.SIGKILL)
        if (fault.mode == "enospc" and space and n_space == fault.n) or (fault.mode in ("erofs", "eacces") and perm and n_perm == fault.n):
            code = ERRNO[fault.mode]
            raise OSError(code, os.strerror(code), path if not isinstance(path, int) else None)

    def barrier(dst) -> None:
        if fault.mode not in ("barrier", "kill-install") or state["waited"] or os.path.abspath(os.fsdecode(dst)) != os.path.abspath(fault.out):
            return
        if fault.mode == "kill-install":
            real_kill(os.getpid(), signal.SIGKILL)
        state["waited"] = True
        with real_open(os.path.join(fault.barrier, str(os.getpid())), "w"):
            pass
        deadline = time.monotonic() + 20
        while len(os.listdir(fault.barrier)) < fault.parties and time.monotonic() < deadline:
            time.sleep(0.001)

    def wrap(name: str, kind: str, *, which: int = 0, dst: int | None = None, when=None):
        real = getattr(os, name)

        def hooked(*args, **kwargs):
            if when is None or when(*args, **kwargs):
                strike(kind, args[which], kwargs.get("dir_fd"))
            if dst is not None:
                barrier(args[dst])
            return real(*args, **kwargs)

        setattr(os, name, hooked)

    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT
    wrap("write", "write")
    wrap("pwrite", "pwrite")
    wrap("ftruncate", "ftruncate")
    wrap("fsync", "fsync")
    wrap("mkdir", "mkdir", when=lambda path, *a, **k: not os.path.lexists(path))  # an existing folder: EEXIST first
    wrap("open", "open", when=lambda path, flags, *a, **k: bool(flags & writing))
    wrap("copy_file_range", "copy_file_range", which=1)
    wrap("sendfile", "sendfile")
    wrap("rename", "rename", dst=1)
    wrap("replace", "replace", dst=1)
    wrap("link", "link", which=1, dst=1)
    wrap("symlink", "symlink", which=1)  # the Hub cache's snapshot entries
    wrap("chmod", "chmod")
    wrap("unlink", "unlink")
    wrap("rmdir", "rmdir")

    class File:
        """A file opened for writing, its writes and flushes hooked."""

        def __init__(self, f) -> None:
            self._f = f

        def write(self, data):
            strike("file.write", self._f.fileno())
            return self._f.write(data)

        def flush(self):
            if not self._f.closed:
                strike("file.flush", self._f.fileno())
            return self._f.flush()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

        def __getattr__(self, name):
            return getattr(self._f, name)

    def hooked_open(file, mode="r", *args, **kwargs):
        if not any(c in mode for c in "wax+"):
            return real_open(file, mode, *args, **kwargs)
        strike("open", file)
        return File(real_open(file, mode, *args, **kwargs))

    builtins.open = io.open = hooked_open

    from adapterkit.io import atomic  # the installer's renameat2 (ctypes: below the os module)

    real_renameat2 = getattr(atomic, "_renameat2", None)

    def renameat2(src, dst, flags):
        strike("renameat2", src)
        barrier(dst)
        return real_renameat2(src, dst, flags)

    if real_renameat2 is not None:
        atomic._renameat2 = renameat2
    return state


def _child(run: Run, stdout: str, stderr: str, ops_file: str) -> None:
    """In the forked child: hooks, the command, the exit status (never returns)."""
    code = 70
    try:
        for fd, name in ((1, stdout), (2, stderr)):
            f = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False)
        args = list(run.args)
        while args and args[0].startswith("env:"):  # pull: the fake Hub's endpoint and the cache
            name, _, value = args.pop(0)[4:].partition("=")
            os.environ[name] = value
        state = install_hooks(run.fault)
        try:
            code = _execute(args)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            Path(ops_file).write_text(f"{state['ops']} {state['space']} {state['perm']}" + "".join("\n" + t for t in state["trace"]))  # outside the hooked folder: not counted
    except BaseException:
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
    os._exit(code)


def _execute(args: list[str]) -> int:
    from adapterkit.cli import main

    try:
        if args[0] == "py-save":  # the library's save, errors printed as the CLI does
            from adapterkit import load, save
            from adapterkit.errors import AdapterkitError

            try:
                save(load(args[1]), args[2], overwrite="--overwrite" in args)
            except AdapterkitError as exc:
                print(f"adapterkit: error: {exc}", file=sys.stderr)
                return 2
            return 0
        main(args, prog_name="adapterkit")
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


# ----------------------------------------------------------------------------- the server

def serve() -> None:
    """Import everything once, then fork one child per run of each request (one JSON line)."""
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="ak-faults-"))
    os.environ["HF_HOME"] = str(scratch / "hf")  # before huggingface_hub is imported: no stored login of this machine
    import huggingface_hub.file_download  # noqa: F401  (pull; HF_HUB_DISABLE_XET is set in the server's environment)
    import matplotlib.figure  # noqa: F401  (info --plot)
    import torch  # noqa: F401

    import adapterkit.api
    import adapterkit.cli
    import adapterkit.hub.download
    import adapterkit.inspect.spectra
    import adapterkit.io.reader
    import adapterkit.io.writer
    import adapterkit.ops.combining
    import adapterkit.ops.export
    import adapterkit.ops.extract
    import adapterkit.ops.merging
    import adapterkit.ops.pruning
    import adapterkit.ops.rebalancing
    import adapterkit.ops.resizing
    import adapterkit.validation  # noqa: F401

    reply = os.fdopen(os.dup(1), "w")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    try:
        _serve(reply, scratch)
    finally:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)  # the runs' outputs and the hf home: nothing left in /tmp


def _serve(reply, scratch: Path) -> None:
    for line in sys.stdin:
        runs = [Run(r["args"], Fault(**r["fault"]), r["kill_after"]) for r in json.loads(line)]
        started, children = time.monotonic(), []
        for i, run in enumerate(runs):
            files = [str(scratch / f"{i}.{name}") for name in ("out", "err", "ops")]
            if os.path.exists(files[2]):
                os.unlink(files[2])
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(run, *files)
            children.append((pid, files))
        timers = [threading.Timer(run.kill_after, _kill, (pid,)) for run, (pid, _) in zip(runs, children) if run.kill_after is not None]
        for t in timers:
            t.start()
        results = []
        for pid, files in children:
            _, status = os.waitpid(pid, 0)
            texts = [Path(f).read_text(errors="replace") if os.path.exists(f) else "" for f in files]
            results.append(asdict(Result(
                rc=os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else None,
                signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                stdout=texts[0], stderr=texts[1], ops=int(texts[2].split()[0]) if texts[2] else -1,
                space=int(texts[2].split()[1]) if texts[2] else -1, perm=int(texts[2].split()[2]) if texts[2] else -1, trace=texts[2].splitlines()[1:],
                seconds=time.monotonic() - started,
            )))
        for t in timers:
            t.cancel()
        reply.write(json.dumps(results) + "\n")
        reply.flush()


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Server:
    """The pytest side: start the fork server, send it runs, read back results."""

    def __init__(self) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]), PYTHONDONTWRITEBYTECODE="1",
                   HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1", MPLBACKEND="Agg")
        env.pop("HF_TOKEN", None)
        env.pop("HF_HUB_OFFLINE", None)
        code = "import faults; faults.serve()"
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)

    def run(self, *runs: Run, timeout: float = 300) -> list[Result]:
        """Start every run at once (children of one fork server); wait for all."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        payload = [{"args": [str(a) for a in r.args], "fault": asdict(r.fault), "kill_after": r.kill_after} for r in runs]
        self.proc.stdin.write(json.dumps(payload) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fault server died (status {self.proc.poll()})")
        return [Result(**r) for r in json.loads(line)]

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


# ----------------------------------------------------------------------------- checks shared by the tests and the campaign

def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder``, by relative path."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def output_digests(out: Path) -> dict[str, str]:
    """Digests of an output, a file or a folder."""
    if out.is_dir():
        return digests(out)
    return {out.name: hashlib.sha256(out.read_bytes()).hexdigest()}


def mount_tmpfs(where: Path, size: int) -> bool:
    """Mount a tmpfs of ``size`` bytes at ``where``; False where mounting is not permitted."""
    where.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def remount_readonly(where: Path) -> bool:
    done = subprocess.run(["mount", "-o", "remount,ro", str(where)], capture_output=True, timeout=30)
    return done.returncode == 0


def unmount(where: Path) -> None:
    if subprocess.run(["umount", str(where)], capture_output=True, timeout=30).returncode != 0:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


# ----------------------------------------------------------------------------- inputs and the commands under test

HIDDEN, INTER, VOCAB, LAYERS, RANK = 64, 96, 128, 2, 4
TARGETS = ("q_proj", "v_proj")


def _base_tensors(seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    t = {"model.embed_tokens.weight": torch.randn(VOCAB, HIDDEN, generator=g), "model.norm.weight": torch.ones(HIDDEN),
         "lm_head.weight": torch.randn(VOCAB, HIDDEN, generator=g)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for m in ("q_proj", "k_proj", "v_proj", "o_proj"):
            t[p + f"self_attn.{m}.weight"] = torch.randn(HIDDEN, HIDDEN, generator=g) * 0.1
        t[p + "mlp.gate_proj.weight"] = torch.randn(INTER, HIDDEN, generator=g) * 0.1
        t[p + "mlp.up_proj.weight"] = torch.randn(INTER, HIDDEN, generator=g) * 0.1
        t[p + "mlp.down_proj.weight"] = torch.randn(HIDDEN, INTER, generator=g) * 0.1
        t[p + "input_layernorm.weight"] = torch.ones(HIDDEN)
    return t


def write_checkpoint(folder: Path, tensors) -> Path:
    """transformers' sharded layout, written with the safetensors library: 3 shards, the index,
    config.json and a tokenizer file (an extra file the merge copies)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    keys = sorted(tensors)
    parts = [keys[i::3] for i in range(3)]
    weight_map, total = {}, 0
    for i, part in enumerate(parts):
        name = f"model-{i + 1:05d}-of-00003.safetensors"
        save_file({k: tensors[k].contiguous() for k in part}, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
        total += sum(tensors[k].numel() * tensors[k].element_size() for k in part)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
                                                    "vocab_size": VOCAB, "tie_word_embeddings": False}))
    (folder / "tokenizer_config.json").write_text('{"model_max_length": 128}')
    return folder


def lora_tensors(seed: int, layers=range(LAYERS)):
    """PEFT's keys for a LoRA of rank RANK on TARGETS (A is r x in, B is out x r)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    t = {}
    for i in layers:
        for m in TARGETS:
            key = f"base_model.model.model.layers.{i}.self_attn.{m}"
            t[key + ".lora_A.weight"] = torch.randn(RANK, HIDDEN, generator=g) * 0.1
            t[key + ".lora_B.weight"] = torch.randn(HIDDEN, RANK, generator=g) * 0.1
    return t


LORA_CONFIG = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": 2 * RANK, "target_modules": list(TARGETS),
               "lora_dropout": 0.0, "bias": "none", "base_model_name_or_path": None, "fan_in_fan_out": False,
               "use_rslora": False, "use_dora": False, "rank_pattern": {}, "alpha_pattern": {}}


def write_lora(folder: Path, seed: int) -> Path:
    """PEFT's adapter directory, written with the safetensors library and json."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file(lora_tensors(seed), str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    (folder / "adapter_config.json").write_text(json.dumps(LORA_CONFIG, indent=2))
    return folder


def make_inputs(folder: Path) -> dict[str, Path]:
    """Every input the commands read, under ``folder`` (never written to by a command)."""
    import torch

    base_t = _base_tensors(0)
    paths = {"base": write_checkpoint(folder / "base", base_t), "a": write_lora(folder / "a", 1), "b": write_lora(folder / "b", 2)}
    ft = dict(base_t)  # fine-tuned: base + a known rank-RANK change of q_proj and v_proj
    delta = lora_tensors(3)
    for i in range(LAYERS):
        for m in TARGETS:
            key = f"base_model.model.model.layers.{i}.self_attn.{m}"
            ft[f"model.layers.{i}.self_attn.{m}.weight"] = base_t[f"model.layers.{i}.self_attn.{m}.weight"] + torch.mm(
                delta[key + ".lora_B.weight"], delta[key + ".lora_A.weight"])
    paths["ft"] = write_checkpoint(folder / "ft", ft)
    merged = dict(base_t)  # base with `a` merged (W + alpha/r B A), for unmerge
    a = lora_tensors(1)
    for i in range(LAYERS):
        for m in TARGETS:
            key = f"base_model.model.model.layers.{i}.self_attn.{m}"
            merged[f"model.layers.{i}.self_attn.{m}.weight"] = base_t[f"model.layers.{i}.self_attn.{m}.weight"] + 2.0 * torch.mm(
                a[key + ".lora_B.weight"], a[key + ".lora_A.weight"])
    paths["merged"] = write_checkpoint(folder / "merged", merged)
    return paths


PULL_ENV = ("HF_ENDPOINT={hub}", "HF_HUB_CACHE={cache}")


def start_hub(inputs: dict[str, Path], cache: Path):
    """The fake Hub (tests/fake_hub.py) in this process, its repos org/a and org/b holding the
    files of inputs a and b; adds ``hub`` (its URL) and ``cache`` (the Hub cache pulls use) to
    ``inputs``.  Returns the server (``stop()`` it)."""
    from fake_hub import FakeHub

    hub = FakeHub().start()
    for name in ("a", "b"):
        hub.add(f"org/{name}", {p.name: p.read_bytes() for p in sorted(inputs[name].iterdir())})
    inputs["hub"], inputs["cache"] = hub.url, cache
    return hub


@dataclass(frozen=True)
class Command:
    name: str
    args: tuple[str, ...]  # with {base}, {a}, ... for inputs and {out} for the output
    alt: tuple[str, ...]  # the same command writing a different output (concurrent writers)
    out: str  # the output's name
    checkpoint: bool = False  # the output is a model checkpoint (else an adapter)
    env: tuple[str, ...] = ()  # "NAME={input}" set in the child's environment (pull: {hub}, {cache})

    @property
    def file(self) -> bool:
        """The output is one file (else a folder)."""
        return "." in self.out

    def argv(self, inputs: dict[str, Path], out: Path, *, alt: bool = False, overwrite: bool = False) -> list[str]:
        argv = [a.format(out=out, **inputs) for a in (self.alt if alt else self.args)]
        return ["env:" + e.format(**inputs) for e in self.env] + argv + (["--overwrite"] if overwrite else [])


COMMANDS = [
    Command("save", ("py-save", "{a}", "{out}"), ("py-save", "{b}", "{out}"), "out"),
    Command("convert", ("convert", "{a}", "{out}"), ("convert", "{b}", "{out}"), "out.safetensors"),
    Command("convert-for", ("convert", "{a}", "{out}", "--for", "vllm"), ("convert", "{b}", "{out}", "--for", "vllm"), "out"),
    Command("merge", ("merge", "{base}", "{a}", "{out}"), ("merge", "{base}", "{b}", "{out}"), "out", checkpoint=True),
    Command("merge-file", ("merge", "{base}", "{a}", "{out}", "--max-shard-size", "1GB"),
            ("merge", "{base}", "{b}", "{out}", "--max-shard-size", "1GB"), "out.safetensors", checkpoint=True),
    # {merged} carries no merge record (written here, not by merge): --force takes the adapter out anyway
    Command("unmerge", ("unmerge", "{merged}", "{a}", "{out}", "--force"), ("unmerge", "{merged}", "{b}", "{out}", "--force"), "out", checkpoint=True),
    Command("combine", ("combine", "{a}", "{b}", "--method", "cat", "-o", "{out}"),
            ("combine", "{a}", "{b}", "--method", "cat", "--weights", "1,-1", "-o", "{out}"), "out"),
    Command("resize", ("resize", "{a}", "{out}", "--rank", "2"), ("resize", "{a}", "{out}", "--rank", "3"), "out"),
    Command("rebalance", ("rebalance", "{a}", "{out}", "--rank", "2"), ("rebalance", "{b}", "{out}", "--rank", "2"), "out"),
    Command("prune", ("prune", "{a}", "{out}", "--layers", "0"), ("prune", "{a}", "{out}", "--layers", "1"), "out.safetensors"),
    Command("extract", ("extract", "{base}", "{ft}", "{out}", "--rank", "4"), ("extract", "{base}", "{ft}", "{out}", "--rank", "2"), "out"),
    # the Hub repos org/a and org/b hold inputs a and b (start_hub); the warm cache {cache} is an input
    Command("pull", ("pull", "org/a", "{out}"), ("pull", "org/b", "{out}"), "out", env=PULL_ENV),
    Command("info-plot", ("info", "{a}", "--plot", "{out}"), ("info", "{b}", "--plot", "{out}"), "out.png"),
]
# `merge ... --push-to REPO` writes locally exactly what `merge` writes (then uploads the folder
# it wrote): its local faults are merge's, covered above; the upload writes nothing local.


# ----------------------------------------------------------------------------- judging one run

def one_line_error(stderr: str) -> str | None:
    """The code of a one-line ``adapterkit: error: ... [code]`` message, else None."""
    import re

    lines = stderr.strip().splitlines()
    m = re.fullmatch(r"adapterkit: error: .* \[([a-z-]+)\]", lines[0]) if len(lines) == 1 else None
    return m[1] if m else None


def judge(result: Result, out: Path, allowed: list[dict[str, str]], inputs: Path, before: dict[str, str], *,
          codes: tuple[str, ...] = ("write-failed",), must_fail: bool = False, message: str | None = None,
          names: tuple[Path, ...] = ()) -> list[str]:
    """Everything wrong with the state one run left (empty: all good).

    Args:
        allowed: the digests of each complete output the run may leave at ``out``.
        codes: the error codes a surviving process may report; ``must_fail``: it must report one.
        message: text the error line must hold (e.g. the strerror of the injected fault).
        names: the paths one of which a write-failed error must name (default ``out``; a pull: its Hub cache).
    """
    problems = []
    if digests(inputs) != before:
        problems.append("an input changed")
    if os.path.lexists(out):
        got = output_digests(out)
        if got not in allowed:
            problems.append(f"OUT exists but is not a complete output ({sorted(got)})")
    others = sorted(p.name for p in out.parent.iterdir() if p.name != out.name)
    if result.killed:
        for name in others:
            p = out.parent / name
            if not name.startswith(f".{out.name}.tmp-") or not p.is_dir() or any(
                    (p / f).exists() for f in ("adapter_config.json", "adapter_model.safetensors", "model.safetensors.index.json", "model.safetensors")):
                problems.append(f"a killed writer left {name!r}, which could be taken for an output")
    else:
        if others:
            problems.append(f"left beside OUT: {others}")
        if result.rc == 0:
            if must_fail:
                problems.append("an injected write error was swallowed (exit 0)")
            if not os.path.lexists(out):
                problems.append("exit 0 but no OUT")
        else:
            code = one_line_error(result.stderr)
            if result.rc != 2 or code not in codes:
                problems.append(f"exit {result.rc}, expected 0 or 2 with one of {codes}: {result.stderr.strip()[-400:]!r}")
            elif code == "write-failed" and not any(str(p) in result.stderr for p in names or (out,)):
                problems.append(f"write-failed does not name OUT: {result.stderr.strip()!r}")
            elif message and message not in result.stderr:
                problems.append(f"error lacks {message!r}: {result.stderr.strip()!r}")
    return problems


def clear(folder: Path) -> None:
    """Empty ``folder`` (the output and whatever a killed writer left)."""
    import shutil

    for p in folder.iterdir():
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
