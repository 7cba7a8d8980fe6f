"""Mutation check of diff and the spectrum plot: do tests/test_diff.py and tests/test_plot.py catch plausible bugs?

Usage: python tests/mutation/run.py inspect [--only SUBSTRING]

Each mutant is one textual patch (a plausible bug) applied to a temporary copy of the
repository (never the real files); the test files then run against the copy.  A mutant is
killed when a test fails.  Prints one line per mutant and the score.
"""

from __future__ import annotations

DIFF_TESTS = ["tests/test_diff.py"]
PLOT_TESTS = ["tests/test_plot.py"]
DIFF = "adapterkit/inspect/compare.py"
SPECTRUM = "adapterkit/inspect/spectra.py"
CLI = "adapterkit/cli/inspect.py"
CLI_INFO = "adapterkit/api.py"

# (name, file, old text, new text, tests)
MUTANTS = [
    ("diff: inner product without the scalings", DIFF, "inner = fa.scaling * fb.scaling * float((GB * GA).sum())", "inner = float((GB * GA).sum())", DIFF_TESTS),
    ("diff: inner product pairs the wrong Gram entries", DIFF, "float((GB * GA).sum())", "float((GB * GA.T).sum())", DIFF_TESTS),
    ("diff: core without the scaling", DIFF, "arrays.svd((RB @ RA.T) * scaling)", "arrays.svd(RB @ RA.T)", DIFF_TESTS),
    ("diff: no numerical-rank cut", DIFF, "k = int((S > RANK_RTOL * S[0]).sum()) if arrays.numel(S) and float(S[0]) > 0 else 0", "k = arrays.numel(S)", DIFF_TESTS),
    ("diff: column angles ignore the frames", DIFF, "col = Ua.T @ crossB @ Ub", "col = Ua.T @ Ub", DIFF_TESTS),
    ("diff: row angles read the column spaces", DIFF, "_angles(col), _angles(row), energy_col", "_angles(col), _angles(col), energy_col", DIFF_TESTS),
    ("diff: subspace energy not weighted by σ²", DIFF, "energy_col = float(((col * Sb[None, :]) ** 2).sum()) / eb", "energy_col = float((col**2).sum()) / len(Sb)", DIFF_TESTS),
    ("diff: row energy weighted by a's spectrum", DIFF, "energy_row = float(((row * Sb[None, :]) ** 2).sum()) / eb", "energy_row = float(((row * Sa[:, None]) ** 2).sum()) / float((Sa**2).sum())", DIFF_TESTS),
    ("diff: Gram frame P = WΛ^½ (not Λ^-½)", DIFF, "return W / root, root[:, None] * W.T", "return W * root, root[:, None] * W.T", DIFF_TESTS),
    ("diff: Gram route for any nonsingular Gram", DIFF, "float(lam[0]) < GRAM_RCOND * float(lam[-1])", "float(lam[0]) <= 0", DIFF_TESTS),
    ("diff: QR route's cross matrix of one adapter", DIFF, "return Ra, Rb, Qa.T @ Qb, cross", "return Ra, Rb, Qa.T @ Qa[:, :Qb.shape[1]], cross", DIFF_TESTS),
    ("diff: zero entries counted as conflicts", DIFF, "int((torch.sign(Ma) * torch.sign(Mb) < 0).sum())", "int((torch.sign(Ma) * torch.sign(Mb) <= 0).sum())", DIFF_TESTS),
    ("diff: conflict fraction of rows, not entries", DIFF, "return _rows_conflict(fa, fb, None) / (m * n), 0.0, m", "return _rows_conflict(fa, fb, None) / m, 0.0, m", DIFF_TESTS),
    ("diff: block boundary drops a row", DIFF, "ba, bb = Ba[start:start + step], Bb[start:start + step]", "ba, bb = Ba[start:start + step - 1], Bb[start:start + step - 1]", DIFF_TESTS),
    ("diff: whole matrix in one block", DIFF, "step = max(1, BLOCK_ELEMENTS // max(n, 1))", "step = max(m, 1)", DIFF_TESTS),
    ("diff: bound without the finite-population factor", DIFF, "* (1 - (k - 1) / population) / (2 * k))", "/ (2 * k))", DIFF_TESTS),
    ("diff: bound one-sided (ln 1/δ)", DIFF, "math.log(2 / (1 - confidence))", "math.log(1 / (1 - confidence))", DIFF_TESTS),
    ("diff: sample ignores the seed", DIFF, "manual_seed((opts.seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)", "manual_seed(zlib.crc32(name.encode()))", DIFF_TESTS),
    ("diff: small modules sampled with a bound", DIFF, 'if opts.conflict == "block" or m <= opts.sample_rows:', 'if opts.conflict == "block":', DIFF_TESTS),
    ("diff: IA3 vectors compared raw (not l - 1)", DIFF, "fp64=True, device=opts.device) - 1\n", "fp64=True, device=opts.device)\n", DIFF_TESTS),
    ("diff: prompt tokens read as columns", DIFF, "na, nb = arrays.norm(ea, axis=1), arrays.norm(eb, axis=1)\n    dots = arrays.total(ea * eb, axis=1)", "na, nb = arrays.norm(ea, axis=0), arrays.norm(eb, axis=0)\n    dots = arrays.total(ea * eb, axis=0)", DIFF_TESTS),
    ("diff: different kinds accepted", DIFF, "    if a.peft_type != b.peft_type:\n", "    if False:\n", DIFF_TESTS),
    ("diff: convolution kernels not compared", DIFF, "if (fa.layer_type, fa.shape, fa.a_tail) != (fb.layer_type, fb.shape, fb.a_tail):", "if (fa.layer_type, fa.shape) != (fb.layer_type, fb.shape):", DIFF_TESTS),
    ("diff: modules of one adapter dropped", DIFF, "names = sorted(set(a.modules) | set(b.modules))", "names = sorted(set(a.modules) & set(b.modules))", DIFF_TESTS),
    ("diff: overlap normalised by the shared modules only", DIFF, "na = sum((m.norm_a or 0.0) ** 2 for m in self.modules)", "na = sum((m.norm_a or 0.0) ** 2 for m in self.shared)", DIFF_TESTS),
    ("diff: most conflicting sorted ascending", DIFF, "return (-(m.conflict if m.conflict is not None else 0.0),", "return ((m.conflict if m.conflict is not None else 0.0),", DIFF_TESTS),
    ("diff: overall subspace energy weighted by a", DIFF, "rows = [(m.energy_in_col, (m.norm_b or 0.0) ** 2)", "rows = [(m.energy_in_col, (m.norm_a or 0.0) ** 2)", DIFF_TESTS),
    ("diff: bad sample_rows accepted", DIFF, "or sample_rows < 1:", "or sample_rows < 0:", DIFF_TESTS),
    ("cli: diff --sample-rows ignored", CLI, "conflict=conflict, sample_rows=sample_rows, seed=seed)", "conflict=conflict, seed=seed)", DIFF_TESTS),
    ("cli: diff --top ignored", CLI, "    click.echo(report.summary(top))", "    click.echo(report.summary())", DIFF_TESTS),
    ("spectrum: energy of σ, not σ²", SPECTRUM, "        sq = S.square()\n", "        sq = S.clone()\n", PLOT_TESTS),
    ("spectrum: rank for a level one short", SPECTRUM, "ranks = {level: select_rank(S, energy=level) for level in ENERGY_LEVELS}",
     "ranks = {level: int((torch.tensor(cum) < level).sum()) for level in ENERGY_LEVELS}", PLOT_TESTS),
    ("spectrum: rank cost counts B only", SPECTRUM, "ranks, f.shape[0] + f.shape[1]))", "ranks, f.shape[0]))", PLOT_TESTS),
    ("spectrum: default budgets include R", SPECTRUM, "for d in (8, 4, 2)}", "for d in (8, 4, 2, 1)}", PLOT_TESTS),
    ("spectrum: budget of one rank per module", SPECTRUM, "budget = avg * sum(costs)", "budget = avg + sum(costs)", PLOT_TESTS),
    ("plot: existing output replaced", SPECTRUM, "    if (path.exists() or path.is_symlink()) and not overwrite:", "    if False:", PLOT_TESTS),
    ("plot: may overwrite the adapter it shows", SPECTRUM, "    check_output(path, adapter_inputs(adapter, \"adapter shown\"))", "    pass", PLOT_TESTS),
    ("plot: extra checked after computing (no one-line error)", SPECTRUM, "    except ImportError:\n", "    except ModuleNotFoundError as exc:\n        raise exc\n    except ImportError:\n", PLOT_TESTS),
    ("cli: info --plot ignored", CLI_INFO, '        summary["plot"] = _plot(adapter, Path(plot), device, overwrite)', '        summary["plot"] = {"modules": 1}', PLOT_TESTS),
]

DEFAULT_TESTS = None
