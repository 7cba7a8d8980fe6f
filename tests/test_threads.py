"""The thread policy (adapterkit/threads.py): its decisions from first principles, the override
order, torch's threads set for a job and restored, ``--threads`` reaching torch, and the results
with 1 and with 2 threads: bit-identical where torch's kernels are (products, elementwise work,
sorting), within a stated bound where LAPACK's blocked reductions follow the count (QR, SVD,
eigh, fp64 Gram products that MKL splits along the long side)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import adapterkit
from adapterkit import threads
from adapterkit.adapter import Adapter
from adapterkit.cli import main
from adapterkit.errors import ArgumentError
from adapterkit.kinds.lora import PREFIX, LoraConfig
from adapterkit.threads import ENV, PER_THREAD, Load, Machine, cpu_quota, decide, usable_cores

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)


# ----------------------------------------------------------------------------- cgroup quota


def _tree(tmp_path: Path, files: dict[str, str], proc: str) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    root.mkdir()
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")
    (tmp_path / "self").write_text(proc)
    return root, tmp_path / "self"


def test_cgroup_v2_quota_is_the_smallest_along_the_path(tmp_path):
    root, proc = _tree(tmp_path, {"cgroup.controllers": "cpu memory", "cpu.max": "max 100000",
                                  "user/cpu.max": "300000 100000", "user/job/cpu.max": "150000 100000"}, "0::/user/job\n")
    assert cpu_quota(root, proc) == 1.5
    (root / "user/cpu.max").write_text("50000 100000")  # a parent's quota binds its children
    assert cpu_quota(root, proc) == 0.5
    (root / "user/cpu.max").write_text("max 100000")
    (root / "user/job/cpu.max").write_text("max 100000")
    assert cpu_quota(root, proc) is None


def test_cgroup_v2_in_a_container_reads_its_own_root(tmp_path):
    # the host's path is not under the container's mount: the mount's own cpu.max is this cgroup's
    root, proc = _tree(tmp_path, {"cgroup.controllers": "cpu", "cpu.max": "400000 100000"}, "0::/kubepods/pod1/abc\n")
    assert cpu_quota(root, proc) == 4.0


def test_cgroup_v1_quota(tmp_path):
    files = {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000",
             "cpu/docker/x/cpu.cfs_quota_us": "250000", "cpu/docker/x/cpu.cfs_period_us": "100000"}
    root, proc = _tree(tmp_path, files, "12:memory:/docker/x\n4:cpu:/docker/x\n3:cpuacct:/docker/x\n0::/\n")
    assert cpu_quota(root, proc) == 2.5
    (root / "cpu/docker/x/cpu.cfs_quota_us").write_text("-1")
    assert cpu_quota(root, proc) is None


def test_cgroup_v1_combined_controller_folder(tmp_path):
    files = {"cpu,cpuacct/cpu.cfs_quota_us": "50000", "cpu,cpuacct/cpu.cfs_period_us": "100000"}
    root, proc = _tree(tmp_path, files, "3:cpu,cpuacct:/\n")
    assert cpu_quota(root, proc) == 0.5


def test_cgroup_v1_cpu_controller_wins_over_an_unused_v2_hierarchy(tmp_path):
    # the hybrid layout (systemd): v1 controllers, an empty v2 tree under unified/
    files = {"cpu/cpu.cfs_quota_us": "300000", "cpu/cpu.cfs_period_us": "100000",
             "unified/cgroup.controllers": "", "unified/cpu.max": "100000 100000"}
    root, proc = _tree(tmp_path, files, "1:cpu:/\n0::/\n")
    assert cpu_quota(root, proc) == 3.0


@pytest.mark.parametrize("text", ["", "garbage", "100000", "abc 100000", "0 100000", "100000 0", "-5 100000"])
def test_cgroup_files_that_say_nothing_give_no_quota(tmp_path, text):
    root, proc = _tree(tmp_path, {"cgroup.controllers": "cpu", "cpu.max": text}, "0::/\n")
    assert cpu_quota(root, proc) is None


def test_no_cgroup_file_system_gives_no_quota(tmp_path):
    assert cpu_quota(tmp_path / "nothing", tmp_path / "no-such-file") is None
    root, proc = _tree(tmp_path, {"cpu.max": "100000 100000"}, "0::/\n")  # no cgroup.controllers: not a v2 mount
    assert cpu_quota(root, proc) is None


@pytest.mark.parametrize(("cpus", "quota", "cores"), [(8, None, 8), (8, 2.5, 2), (8, 0.5, 1), (2, 16.0, 2), (16, 16.0, 16), (1, None, 1)])
def test_usable_cores_are_the_affinity_capped_by_the_quota_rounded_down(cpus, quota, cores):
    assert usable_cores(cpus, quota) == cores


def test_the_machine_read_here_is_consistent():
    seen = threads.machine()
    assert 1 <= seen.cores <= len(os.sched_getaffinity(0)) <= seen.machine
    assert seen.load >= 0 and seen.own >= 0


# ----------------------------------------------------------------------------- the decision


@pytest.mark.parametrize(("seen", "work", "reserve", "expected"), [
    (Machine(cores=2, machine=2, load=0.0), math.inf, 0, 2),        # idle: every core
    (Machine(cores=2, machine=2, load=0.2), math.inf, 0, 2),        # 1.8 idle + 0.25 -> 2
    (Machine(cores=2, machine=2, load=0.3), math.inf, 0, 1),        # 1.7 idle: a core shared with another process
    (Machine(cores=2, machine=2, load=1.0), math.inf, 0, 1),        # another process holds a core
    (Machine(cores=2, machine=2, load=5.0), math.inf, 0, 1),        # overloaded: still one thread
    (Machine(cores=2, machine=2, load=1.9, own=1.9), math.inf, 0, 2),  # the load is our own: both cores
    (Machine(cores=2, machine=2, load=1.9, own=0.9), math.inf, 0, 1),
    (Machine(cores=16, machine=16, load=3.3), math.inf, 0, 12),     # 12.7 idle + 0.25 -> 12
    (Machine(cores=16, machine=16, load=0.0), math.inf, 2, 14),     # two cores kept for the reader and the writer
    (Machine(cores=2, machine=2, load=0.0), math.inf, 2, 1),        # ... never below one
    (Machine(cores=4, machine=64, load=30.0), math.inf, 0, 4),      # a container's 4 cores on a busy host
    (Machine(cores=4, machine=64, load=62.5), math.inf, 0, 1),      # 1.5 idle + 0.25 -> 1
    (Machine(cores=16, machine=16, load=0.0), 0, 0, 1),             # no work: one thread
    (Machine(cores=16, machine=16, load=0.0), PER_THREAD - 1, 0, 1),   # small work: one thread
    (Machine(cores=16, machine=16, load=0.0), 3.5 * PER_THREAD, 0, 3),  # a thread per PER_THREAD
    (Machine(cores=16, machine=16, load=0.0), 1e15, 0, 16),
    (Machine(cores=16, machine=16, load=10.0), 1e15, 0, 6),
])
def test_decide(seen, work, reserve, expected):
    assert decide(work, seen, reserve=reserve) == expected


def test_decide_caps_at_torchs_count_and_takes_the_caller_unit():
    idle16 = Machine(cores=16, machine=16, load=0.0)
    assert decide(math.inf, idle16, cap=4) == 4
    assert decide(10 << 20, idle16, per_thread=1 << 20) == 10  # bytes to hash, a MB a thread
    assert decide(10 << 20, idle16, per_thread=4 << 20) == 2


def test_own_load_is_averaged_as_the_kernel_averages_the_load():
    clock, used = [0.0], [0.0]
    load = Load(clock=lambda: clock[0], cpu_time=lambda: used[0])
    assert load.own() == 0.0
    clock[0], used[0] = 60.0, 120.0  # two cores busy for a minute
    assert load.own() == pytest.approx(2 * (1 - math.exp(-1)))
    clock[0] = 120.0  # then idle for a minute
    assert load.own() == pytest.approx(2 * (1 - math.exp(-1)) * math.exp(-1))
    assert load.own() == pytest.approx(2 * (1 - math.exp(-1)) * math.exp(-1))  # no time passed: unchanged


# ----------------------------------------------------------------------------- the override


def test_override_order_environment_then_option(monkeypatch):
    assert threads.requested() is None
    monkeypatch.setenv(ENV, "3")
    assert threads.requested() == 3
    with threads.override(5):
        assert threads.requested() == 5
        with threads.override(None):  # None keeps what is in force
            assert threads.requested() == 5
        with threads.override(1):
            assert threads.requested() == 1
        assert threads.requested() == 5
    assert threads.requested() == 3
    monkeypatch.setenv(ENV, " 7 ")
    assert threads.requested() == 7
    monkeypatch.setenv(ENV, "")
    assert threads.requested() is None


def test_the_override_replaces_the_policy(monkeypatch):
    monkeypatch.setattr(threads, "machine", lambda **_: Machine(cores=2, machine=2, load=9.0))
    assert threads.threads_for(math.inf) == 1
    assert threads.threads_for(0, reserve=2) == 1
    with threads.override(4):
        assert threads.threads_for(0, reserve=2, cap=1) == 4  # small work, reserve, load and cap notwithstanding
    monkeypatch.setenv(ENV, "6")
    assert threads.threads_for(0) == 6


@pytest.mark.parametrize("text", ["abc", "0", "-2", "2.5", "1e3", "two"])
def test_a_bad_environment_value_names_the_variable(monkeypatch, text):
    monkeypatch.setenv(ENV, text)
    with pytest.raises(ArgumentError) as err:
        threads.threads_for(math.inf)
    assert err.value.code == "argument-invalid" and err.value.key == ENV
    assert str(err.value).startswith(f"{ENV}: {text!r} is not a positive integer")
    with threads.override(2):  # the option wins: the variable is not read
        assert threads.threads_for(math.inf) == 2


@pytest.mark.parametrize("n", [0, -1, True, 2.0, "3"])
def test_a_bad_override_is_refused(n):
    with pytest.raises(ArgumentError) as err, threads.override(n):
        pass
    assert err.value.code == "argument-invalid" and err.value.key == "threads"
    assert threads.requested() is None


# ----------------------------------------------------------------------------- torch's threads


def test_intra_op_sets_torchs_threads_and_restores_them():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with threads.override(1), threads.intra_op(math.inf) as n:
            assert n == 1 and torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with threads.override(3), threads.intra_op(0) as n:
            assert n == 3 and torch.get_num_threads() == 3
        assert torch.get_num_threads() == 2
        with threads.intra_op(0) as n:  # small work: one thread
            assert n == 1 and torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(ZeroDivisionError), threads.override(1), threads.intra_op(math.inf):
            assert torch.get_num_threads() == 1
            1 / 0  # noqa: B018
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        with threads.intra_op(math.inf) as n:  # torch's count is a cap without an override
            assert n == 1
    finally:
        torch.set_num_threads(before)


def test_for_command_sets_the_count_outside_the_jobs_and_restores_it(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        torch.set_num_threads(2)
        with threads.for_command(3) as n:
            assert n == 3 and torch.get_num_threads() == 3
        assert torch.get_num_threads() == 2 and threads.requested() is None
        with pytest.raises(RuntimeError), threads.for_command(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError
        assert torch.get_num_threads() == 2 and threads.requested() is None
    finally:
        torch.set_num_threads(before)


def _fresh(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", ENV)}
    environ["PYTHONPATH"] = str(ROOT) + os.pathsep + environ.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**environ, **env}, timeout=300)


def _lora(path: Path, seed: int = 0, shapes=((512, 384, 32), (384, 512, 24))) -> Path:
    """A LoRA on q_proj and v_proj of one layer (out, in, rank each), big enough for MKL to thread."""
    g = torch.Generator().manual_seed(seed)
    tensors, ranks = {}, {}
    for name, (out_f, in_f, r) in zip(("q_proj", "v_proj"), shapes):
        decay = 0.8 ** torch.arange(r, dtype=torch.float32)
        tensors[f"{PREFIX}model.layers.0.{name}.lora_A.weight"] = torch.randn(r, in_f, generator=g) * 0.1
        tensors[f"{PREFIX}model.layers.0.{name}.lora_B.weight"] = torch.randn(out_f, r, generator=g) * 0.1 * decay
        ranks[name] = r
    config = LoraConfig(r=shapes[0][2], lora_alpha=16, target_modules=("q_proj", "v_proj"),
                        rank_pattern={"v_proj": shapes[1][2]})
    return adapterkit.save(Adapter.from_tensors(config, tensors), path)


def test_threads_option_reaches_torch_during_a_command(tmp_path, monkeypatch):
    lora = _lora(tmp_path / "lora", shapes=((16, 12, 4), (12, 16, 2)))
    import adapterkit.ops.resizing as resizing

    seen: list[int] = []
    real = resizing.factored_svd

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(resizing, "factored_svd", spy)
    before = torch.get_num_threads()
    for args, env, expected in ((["--threads", "1"], None, 1), (["--threads", "3"], None, 3), ([], "2", 2),
                                (["--threads", "1"], "2", 1)):
        if env is None:
            monkeypatch.delenv(ENV, raising=False)
        else:
            monkeypatch.setenv(ENV, env)
        seen.clear()
        out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
        result = CliRunner().invoke(main, ["resize", str(lora), str(out), "--rank", "2", *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert seen == [expected, expected], (args, env)
        assert torch.get_num_threads() == before


def test_threads_option_sets_torchs_count_for_the_whole_command_in_a_fresh_process(tmp_path):
    lora = _lora(tmp_path / "lora", shapes=((16, 12, 4), (12, 16, 2)))
    code = (
        "import sys\n"
        "from adapterkit.cli import main\n"
        "assert 'torch' not in sys.modules\n"
        "try:\n"
        f"    main(['resize', {str(lora)!r}, {str(tmp_path / 'out')!r} + sys.argv[1], '--rank', '2', '--threads', sys.argv[1]])\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "import os, torch\n"
        "print(torch.get_num_threads(), os.environ.get('OMP_NUM_THREADS'))\n"
    )
    for n in ("1", "2") if len(os.sched_getaffinity(0)) >= 2 else ("1",):  # torch caps OMP_NUM_THREADS at the CPUs
        proc = _fresh(code.replace("sys.argv[1]", repr(n)))
        assert proc.returncode == 0, proc.stderr
        # torch was imported during the command, with the count asked for; the variable is restored after
        assert proc.stdout.split()[-2:] == [n, "None"], proc.stdout + proc.stderr


@pytest.mark.parametrize("value", ["0", "x"])
def test_bad_values_are_one_line_errors_without_torch(tmp_path, value):
    code = (
        "import sys\n"
        "from adapterkit.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:], prog_name='adapterkit')\n"
        "except SystemExit as e:\n"
        "    print('exit', e.code)\n"
        "print('torch imported' if 'torch' in sys.modules else 'no torch')\n"
    )
    option = _fresh(code.replace("sys.argv[1:]", repr(["resize", "in", "out", "--rank", "2", "--threads", value])))
    assert option.stdout.split("\n")[-3:] == ["exit 2", "no torch", ""], option.stdout + option.stderr
    assert "Invalid value for '--threads'" in option.stderr and option.stderr.rstrip().endswith("[usage]")
    env = _fresh(code.replace("sys.argv[1:]", repr(["resize", "in", "out", "--rank", "2"])), **{ENV: value})
    assert env.stdout.split("\n")[-3:] == ["exit 2", "no torch", ""], env.stdout + env.stderr
    assert env.stderr == (f"adapterkit: error: {ENV}: {value!r} is not a positive integer: set it to the number of threads "
                          f"to use, or unset it for the automatic choice (expected an integer >= 1, got {value}) [argument-invalid]\n")


def test_every_computing_command_takes_threads():
    computing = {"info", "merge", "unmerge", "extract", "combine", "resize", "rebalance", "prune", "diff"}
    for name, command in main.commands.items():
        has = any(p.name == "threads" for p in command.params)
        assert has == (name in computing), name


# ----------------------------------------------------------------------------- 1 thread against 2


def _both(fn):
    """``fn()`` with every job on 1 thread, then on 2."""
    with threads.override(1):
        one = fn()
    with threads.override(2):
        two = fn()
    return one, two


def _delta(adapter: Adapter) -> dict[str, torch.Tensor]:
    return {m: adapter.delta_weight(m, dtype=torch.float64) for m in adapter.modules}


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float) -> float:
    """The largest ‖a − b‖_F / ‖a‖_F over the modules; asserts it is at most ``rtol``."""
    assert a.keys() == b.keys()
    errors = {k: float((a[k] - b[k]).norm() / a[k].norm()) for k in a}
    worst = max(errors.values())
    assert worst <= rtol, errors
    return worst


def _checkpoint(path: Path, seed: int = 1, extra: dict[str, torch.Tensor] | None = None) -> Path:
    g = torch.Generator().manual_seed(seed)
    path.mkdir()
    tensors = {"model.layers.0.q_proj.weight": torch.randn(512, 384, generator=g),
               "model.layers.0.v_proj.weight": torch.randn(384, 512, generator=g).bfloat16(),
               "model.norm.weight": torch.randn(384, generator=g), **(extra or {})}
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "tie_word_embeddings": False}))
    return path


def test_merge_and_unmerge_are_bit_identical_with_1_and_2_threads(tmp_path):
    base, lora = _checkpoint(tmp_path / "base"), _lora(tmp_path / "lora")
    outs = iter(tmp_path / f"m{i}" for i in range(4))
    merged = _both(lambda: adapterkit.merge(base, [lora], next(outs)).out)
    m1, m2 = (load_file(p / "model.safetensors") for p in merged)
    assert all(torch.equal(m1[k], m2[k]) for k in m1) and not torch.equal(m1["model.layers.0.q_proj.weight"],
                                                                          load_file(base / "model.safetensors")["model.layers.0.q_proj.weight"])
    back = _both(lambda: adapterkit.unmerge(merged[0], [lora], next(outs)).out)
    u1, u2 = (load_file(p / "model.safetensors") for p in back)
    assert all(torch.equal(u1[k], u2[k]) for k in u1)


EXACT = ("cat", "linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
SVD = ("svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")


def test_combine_with_1_and_2_threads(tmp_path):
    """The factor methods are bit-identical; the SVD methods within 1e-5 (relative, per module's ΔW)."""
    a, b = adapterkit.load(_lora(tmp_path / "a", 0)), adapterkit.load(_lora(tmp_path / "b", 1))
    for method in EXACT + SVD:
        density = 0.5 if method not in ("cat", "linear", "svd") else None
        one, two = _both(lambda m=method, d=density: adapterkit.combine([a, b], [0.7, -0.4], m, density=d, rank=8 if m == "svd" else None))
        if method in EXACT:
            assert one.tensors.keys() == two.tensors.keys()
            assert all(torch.equal(one.tensors[k], two.tensors[k]) for k in one.tensors), method
        else:
            _close(_delta(one), _delta(two), 1e-5)


def test_resize_and_rebalance_with_1_and_2_threads(tmp_path):
    """QR and SVD follow the thread count: ΔW within 1e-5 (relative); the chosen ranks are the same."""
    lora = adapterkit.load(_lora(tmp_path / "lora"))
    (r1, rep1), (r2, rep2) = _both(lambda: adapterkit.resize(lora, rank=12))
    _close(_delta(r1), _delta(r2), 1e-5)
    assert abs(rep1.energy_kept - rep2.energy_kept) <= 1e-9
    (b1, rep1), (b2, rep2) = _both(lambda: adapterkit.rebalance(lora, rank=8))
    assert [m.rank_after for m in rep1.modules] == [m.rank_after for m in rep2.modules]
    _close(_delta(b1), _delta(b2), 1e-5)


def test_prune_info_and_diff_with_1_and_2_threads(tmp_path):
    """Their fp64 Gram products (r×m by m×r) are split along m by MKL: norms within 1e-12,
    the pruned adapter bit-identical, sign conflicts equal."""
    a, b = _lora(tmp_path / "a", 0), _lora(tmp_path / "b", 1)
    (p1, rep1), (p2, rep2) = _both(lambda: adapterkit.prune(adapterkit.load(a), keep_fraction=0.5))
    assert rep1.dropped == rep2.dropped and all(torch.equal(p1.tensors[k], p2.tensors[k]) for k in p1.tensors)
    assert all(abs(rep1.shares[k] - rep2.shares[k]) <= 1e-12 for k in rep1.shares)
    i1, i2 = _both(lambda: adapterkit.info(a))
    assert i1["per_module"].keys() == i2["per_module"].keys() == {"model.layers.0.q_proj", "model.layers.0.v_proj"}
    for name, stats in i1["per_module"].items():
        assert stats["delta_norm"] == pytest.approx(i2["per_module"][name]["delta_norm"], rel=1e-12)
    d1, d2 = _both(lambda: adapterkit.diff(adapterkit.load(a), adapterkit.load(b)))
    for m1, m2 in zip(d1.modules, d2.modules):
        assert m1.conflict == m2.conflict
        for field in ("norm_a", "norm_b", "cosine", "energy_in_col", "energy_in_row"):
            assert getattr(m1, field) == pytest.approx(getattr(m2, field), rel=1e-9, abs=1e-12), field


def test_extract_with_1_and_2_threads(tmp_path):
    """The dense and the randomized SVD follow the thread count: ΔW within 1e-5 (relative) where
    the factors are stored in fp32, within bf16's rounding (2⁻⁸ relative) where they are stored
    in bf16 (a factor's entry near a rounding boundary may round the other way)."""
    g = torch.Generator().manual_seed(3)
    big = torch.randn(1100, 1040, generator=g)
    base = _checkpoint(tmp_path / "base", extra={"model.layers.0.o_proj.weight": big})
    tuned = load_file(base / "model.safetensors")
    for key in ("model.layers.0.q_proj.weight", "model.layers.0.v_proj.weight", "model.layers.0.o_proj.weight"):
        m, n = tuned[key].shape
        change = (torch.randn(m, 6, generator=g) @ torch.randn(6, n, generator=g)) * 0.05
        tuned[key] = (tuned[key].float() + change).to(tuned[key].dtype)
    (tmp_path / "tuned").mkdir()
    save_file(tuned, tmp_path / "tuned" / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "tuned" / "config.json").write_text((base / "config.json").read_text())
    (e1, rep1), (e2, _) = _both(lambda: adapterkit.extract(base, tmp_path / "tuned", rank=6))
    assert {m.method for m in rep1.modules} == {"dense", "randomized"}
    d1, d2 = _delta(e1), _delta(e2)
    bf16 = "model.layers.0.v_proj"
    _close({k: v for k, v in d1.items() if k != bf16}, {k: v for k, v in d2.items() if k != bf16}, 1e-5)
    _close({bf16: d1[bf16]}, {bf16: d2[bf16]}, 2**-8)


# ----------------------------------------------------------------------------- every operation runs in a job


def _spy(monkeypatch, owner, name: str, seen: list[int]) -> None:
    real = getattr(owner, name)

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)


def test_every_operation_sets_the_threads_of_its_kernels(tmp_path, monkeypatch):
    """With torch at 1 thread and the override at 3, each operation's kernels run on 3: they run
    inside ``intra_op`` (outside it they would run on torch's 1)."""
    import adapterkit.inject.merge as live
    import adapterkit.inspect.compare as compare
    import adapterkit.kinds.lora as lora_kind
    import adapterkit.ops.combining as combining
    import adapterkit.ops.extract as extracting
    import adapterkit.ops.merging as merging
    import adapterkit.ops.resizing as resizing

    a_path, b_path = _lora(tmp_path / "a", 0), _lora(tmp_path / "b", 1)
    a, b = adapterkit.load(a_path), adapterkit.load(b_path)
    base = _checkpoint(tmp_path / "base")
    seen: list[int] = []
    for owner, name in ((resizing, "factored_svd"), (combining, "factored_svd"), (combining, "dense_svd"), (combining, "merge_tensors"),
                        (extracting, "dense_svd"), (lora_kind, "factor_norm"), (compare, "_rows_conflict"),
                        (merging._Job, "_stream_rows"), (live, "_step")):
        _spy(monkeypatch, owner, name, seen)
    model = torch.nn.Module()
    model.model = torch.nn.Module()
    layer = torch.nn.Module()
    layer.q_proj, layer.v_proj = torch.nn.Linear(384, 512), torch.nn.Linear(512, 384)
    model.model.layers = torch.nn.ModuleList([layer])
    runs = {
        "resize": lambda: adapterkit.resize(a, rank=8),
        "rebalance": lambda: adapterkit.rebalance(a, rank=8),
        "combine svd": lambda: adapterkit.combine([a, b], [1, 1], "svd"),
        "combine ties_svd": lambda: adapterkit.combine([a, b], [1, 1], "ties_svd", density=0.5),
        "combine ties": lambda: adapterkit.combine([a, b], [1, 1], "ties", density=0.5),
        "prune": lambda: adapterkit.prune(a, keep_fraction=0.5),
        "info": lambda: adapterkit.info(a_path, device="cpu"),  # without a device: numpy, no torch threads (tests/test_torch_free.py)
        "diff": lambda: adapterkit.diff(a, b),
        "merge": lambda: adapterkit.merge(base, [a_path], tmp_path / "merged"),
        "extract": lambda: adapterkit.extract(base, tmp_path / "merged", rank=4),
        "merge_attached": lambda: adapterkit.merge_attached(adapterkit.attach(model, a)),
    }
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        for what, run_it in runs.items():
            seen.clear()
            with threads.override(3):
                run_it()
            assert seen and set(seen) == {3}, (what, seen)
            assert torch.get_num_threads() == 1, what
    finally:
        torch.set_num_threads(before)
