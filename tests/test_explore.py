"""``qlabref explore``: the data the page embeds (no browser here; tests/test_explore_browser.py drives
the page in Chromium).

Oracles: the QLABGrad numbers are compared with the engine run in the test itself (``QLABGrad`` on a
Tensor, step by step, no ``qlabref.trajectory``); SGD paths with plain gradient descent written out
with the analytic gradient; the start lattice, the map and the stopping rules with the test's own
formulas.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import qlabref as qr
from qlabref import explore as E
from qlabref import functions as F

FUNCS = ["booth", "himmelblau", "eggholder"]
GRID, STEPS = 2, 30


@pytest.fixture(scope="module")
def data():
    return E.build_data(FUNCS, grid=GRID, steps=STEPS)


def _fd(data, name):
    return next(fd for fd in data["functions"] if fd["name"] == name)


def engine_qlabgrad(fn, start, steps):
    """QLABGrad (FindPLR once) run directly: the iterates and a copy of opt.last_step per step."""
    p = qr.tensor(np.array(start, dtype=np.float64), requires_grad=True)
    opt = qr.optim.QLABGrad([p], findplr="once")
    xs, recs = [p.data.copy()], []
    for _ in range(steps):
        opt.step(lambda: fn.f(p))
        recs.append(dict(opt.last_step))
        xs.append(p.data.copy())
    return np.array(xs), recs


# ------------------------------------------------------------------------------------ the lattice
@pytest.mark.parametrize("name", F.names())
def test_start_grid_is_the_stated_lattice(name):
    fn = F.get(name)
    (x0, x1), (y0, y1) = fn.domain
    g = 7
    s = E.start_grid(fn, g)
    assert s.shape == (g * g, 2)
    # corners 5% inside the box, equal spacing, x varying fastest
    assert s[0, 0] == pytest.approx(x0 + 0.05 * (x1 - x0)) and s[0, 1] == pytest.approx(y0 + 0.05 * (y1 - y0))
    assert s[-1, 0] == pytest.approx(x1 - 0.05 * (x1 - x0)) and s[-1, 1] == pytest.approx(y1 - 0.05 * (y1 - y0))
    dx = np.diff(s[:g, 0])
    assert np.allclose(dx, 0.9 * (x1 - x0) / (g - 1)) and np.all(s[:g, 1] == s[0, 1])
    assert np.allclose(np.diff(s[::g, 1]), 0.9 * (y1 - y0) / (g - 1))


def test_every_function_and_optimizer_is_on_the_page(data):
    assert data["optimizers"] == ["qlabgrad", "sgd", "adam", *qr.optim.BEYOND_PAPER]
    assert E.build_data.__defaults__ is not None and set(F.names()) == {f for f in E.DEMO_LRS}
    for name in FUNCS:
        fd = _fd(data, name)
        assert len(fd["starts"]) == GRID * GRID
        assert fd["settings"]["qlabgrad"] == {"findplr": "once"}
        for opt in ("sgd", "adam", "schedulefree-sgd", "schedulefree-adamw"):
            assert fd["settings"][opt] == {"lr": E.DEMO_LRS[name][opt]}
        for opt in ("dog", "dadapt-sgd", "dadapt-adam", "prodigy"):
            assert fd["settings"][opt] == {}
        for opt in data["optimizers"]:
            assert len(fd["runs"][opt]) == GRID * GRID


# ------------------------------------------------------------------------------------ QLABGrad exact
@pytest.mark.parametrize("name", FUNCS)
def test_qlabgrad_numbers_are_the_engines_exactly(data, name):
    fn = F.get(name)
    fd = _fd(data, name)
    for i, start in enumerate(fd["starts"]):
        q = fd["runs"]["qlabgrad"][i]["q"]
        n = len(q["x"]) - 1
        xs, recs = engine_qlabgrad(fn, start, n)
        assert q["x"] == xs[:, 0].tolist() and q["y"] == xs[:, 1].tolist()  # float64, bit for bit
        for k, rec in enumerate(recs):
            for key in ("a1", "a2", "pre_lr", "probe_loss"):
                assert q[key][k] == float(rec[key]), (name, i, k, key)
            # stored as null where they equal f(θ_{k−1}) and α* (the page shows those)
            a0 = q["f"][k] if q["a0"][k] is None else q["a0"][k]
            lr = q["alpha_star"][k] if q["lr"][k] is None else q["lr"][k]
            assert a0 == float(rec["a0"]) and lr == float(rec["lr"]), (name, i, k)
            ast = rec["alpha_star"]
            assert q["alpha_star"][k] == (None if ast is None or not math.isfinite(ast) else float(ast))
            assert q["fallback"][k] == int(bool(rec["fallback"]))
            assert q["evals"][k] == rec["evals"]
            # the numbers fit together as Eq. (9)/(10) and Algorithm 1 say
            if not rec["fallback"] and ast is not None:
                assert lr == q["alpha_star"][k]
                assert q["alpha_star"][k] == pytest.approx(-q["a1"][k] / (2 * q["a2"][k]), rel=1e-12)
        # f(θ_t) on the page is f at the engine's iterate
        assert np.allclose(q["f"], fn.f(xs), rtol=1e-15, atol=0)


def test_a_fallback_step_is_recorded_as_one():
    """Near Himmelblau's local maximum (-0.27, -0.92) the first step's fit is concave: fallback."""
    fn = F.himmelblau
    start = (-0.5, -1.0)
    out = E.run_start("himmelblau", "qlabgrad", start, 3, {"findplr": "once"})
    _, recs = engine_qlabgrad(fn, start, 1)
    assert recs[0]["fallback"] is True and recs[0]["a2"] < 0
    assert out["q"]["fallback"][0] == 1 and out["q"]["lr"][0] == out["q"]["pre_lr"][0] == recs[0]["pre_lr"] == recs[0]["lr"]


@pytest.mark.parametrize("name", FUNCS)
def test_g_samples_are_the_loss_along_minus_gradient(data, name):
    fn = F.get(name)
    fd = _fd(data, name)
    for run in fd["runs"]["qlabgrad"]:
        q = run["q"]
        for k in range(len(q["g"])):
            theta = np.array([q["x"][k], q["y"][k]])
            t = qr.tensor(theta.copy(), requires_grad=True)  # the gradient by autodiff, not fn.grad
            fn.f(t).backward()
            alphas = np.linspace(0, q["g_top"][k], E.G_POINTS)
            truth = np.array([fn.f(theta - a * t.grad) for a in alphas])
            codes = np.array(q["g"][k])
            lo, hi = q["g_min"][k], q["g_max"][k]
            drawn = lo + codes / 999 * (hi - lo)
            tol = (hi - lo) / 999 * 0.5 + 1e-5 * (abs(hi) + abs(lo)) + 1e-300
            assert np.all(codes >= 0) and np.max(np.abs(drawn - truth)) <= tol
            # the range covers ᾱ, the step taken and 2α*
            assert q["g_top"][k] >= max(q["pre_lr"][k], float(recs_lr(q, k)), 2 * (q["alpha_star"][k] or 0))


def recs_lr(q, k):
    return q["alpha_star"][k] if q["lr"][k] is None else q["lr"][k]


# ------------------------------------------------------------------------------------ drawing data
def test_sgd_paths_match_gradient_descent_to_the_drawing_resolution(data):
    for name in ("booth", "himmelblau"):
        fn = F.get(name)
        fd = _fd(data, name)
        lr = E.DEMO_LRS[name]["sgd"]
        width = np.array([d[1] - d[0] for d in fn.domain])
        for i, start in enumerate(fd["starts"]):
            run = fd["runs"]["sgd"][i]
            drawn = E.decode_path(fn, run["p"])
            x = np.array(start, dtype=np.float64)
            ref = [x.copy()]
            for _ in range(len(drawn) - 1):
                x = x - lr * fn.grad(x)  # θ ← θ − lr ∇f
                ref.append(x.copy())
            ref = np.array(ref)
            assert np.all(np.abs(drawn - ref) <= 0.5 / E.QUANT * width + 1e-9 * np.abs(ref))
            losses = fn.f(ref)
            assert np.allclose(run["f"], losses, rtol=6e-4, atol=0)


@pytest.mark.parametrize("name", ["booth", "himmelblau"])
def test_runs_stop_at_the_first_hit_as_the_demo(data, name):
    fn = F.get(name)
    fd = _fd(data, name)
    lo, hi = fn.bounds
    for i in range(len(fd["starts"])):
        q = fd["runs"]["qlabgrad"][i]["q"]
        run = fd["runs"]["qlabgrad"][i]
        xs = np.array([q["x"], q["y"]]).T
        ok = [bool(np.all(x >= lo) and np.all(x <= hi)) and fn.f(x) - fn.nearest_minimum(x)[2] < E.TOL for x in xs]
        first = ok.index(True) if True in ok else None
        assert run["hit"] == first
        if first is not None:
            assert len(xs) - 1 == first and run["stop"] == "hit"
        else:
            assert len(xs) - 1 == STEPS or run["stop"] in ("stationary", "nonfinite")


def test_eggholder_runs_are_cut_at_the_local_hit(data):
    fd = _fd(data, "eggholder")
    for opt in data["optimizers"]:
        for run in fd["runs"][opt]:
            n = len(run["f"]) - 1
            assert run["hit"] is None or run["hit"] == n
            assert len(run["p"]) == 2 * (n + 1)


@pytest.mark.parametrize("name", F.names())
def test_map_codes_follow_the_colour_scale(name):
    fn = F.get(name)
    codes, scale = E._map_codes(fn)
    n = E.MAP_RES
    codes = np.array(codes).reshape(n, n)
    (x0, x1), (y0, y1) = fn.domain
    rng = np.random.default_rng(7)
    for j, i in rng.integers(0, n, size=(20, 2)):
        x, y = x0 + i / (n - 1) * (x1 - x0), y0 + j / (n - 1) * (y1 - y0)
        v = fn.f(np.array([x, y]))
        if fn.log_levels:
            u = (math.log10(max(v - fn.f_min, scale["lo"])) - math.log10(scale["lo"])) / math.log10(scale["hi"] / scale["lo"])
        else:
            u = (v - scale["lo"]) / (scale["hi"] - scale["lo"])
        assert abs(codes[j, i] - u * 999) <= 0.5 + 1e-6


# ------------------------------------------------------------------------------------ encoding
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=1, max_size=50))
def test_encoding_keeps_every_float64_exactly(values):
    back = E.decode_data(E.encode_data({"v": values}))["v"]
    assert all(a == b and math.copysign(1, a) == math.copysign(1, b) for a, b in zip(values, back))
    assert len(back) == len(values)


def test_page_embeds_the_data_and_needs_no_network(data, tmp_path):
    path, size = E.write_page(tmp_path / "p.html", data)
    html = path.read_text(encoding="utf-8")
    assert size == len(html.encode("utf-8"))
    assert E.data_from_page(html) == data
    # self-contained: nothing is fetched from elsewhere
    low = html.lower()
    for needle in ("http://", "https://", "<link", " src=", "import(", "fetch("):
        assert needle not in low, needle
    assert not list(tmp_path.glob("*.tmp"))


def test_jobs_give_the_same_data():
    one = E.build_data(["booth"], grid=2, steps=8, jobs=1)
    two = E.build_data(["booth"], grid=2, steps=8, jobs=2)
    one.pop("seconds"), two.pop("seconds")
    assert one == two


# ------------------------------------------------------------------------------------ the command
def test_command_writes_the_page(tmp_path, capsys):
    from qlabref import cli

    out = tmp_path / "sub" / "e.html"
    assert cli.main(["explore", "--functions", "booth", "--grid", "2", "--steps", "5", "--out", str(out)]) == 0
    d = E.data_from_page(out.read_text(encoding="utf-8"))
    assert d["grid"] == 2 and d["steps"] == 5 and [f["name"] for f in d["functions"]] == ["booth"]
    assert f"wrote {out}" in capsys.readouterr().out


def test_resweep_uses_the_recomputed_learning_rates(tmp_path, monkeypatch, capsys):
    from qlabref import cli

    table = {"booth": {"sgd": 0.05, "adam": 0.5, "schedulefree-sgd": 0.02, "schedulefree-adamw": 0.7}}
    asked = []
    monkeypatch.setattr(E, "lrs_from_sweep", lambda fns, progress=False: asked.append(list(fns)) or table)
    out = tmp_path / "e.html"
    assert cli.main(["explore", "--functions", "booth", "--grid", "2", "--steps", "3", "--resweep", "--out", str(out)]) == 0
    d = E.data_from_page(out.read_text(encoding="utf-8"))
    assert asked == [["booth"]]
    assert {o: s["lr"] for o, s in d["functions"][0]["settings"].items() if "lr" in s} == table["booth"]
    assert d["lr_source"] == "recomputed by the demo's sweep"
    assert "sgd lr=0.05" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["--grid", "1"], "--grid"),
    (["--grid", f"{E.MAX_GRID + 1}"], "--grid"),
    (["--grid", "many"], "--grid"),
    (["--steps", "0"], "--steps"),
    (["--jobs", "0"], "--jobs"),
    (["--functions", "sphere"], "unknown test function 'sphere'"),
    (["--functions", "booth", "booth"], "more than once"),
    (["--out", "{tmp}"], "is a folder"),
    (["--out", "{tmp}/page.txt"], ".html"),
    (["--out", "{tmp}/file.html/page.html"], "is a file"),
])
def test_bad_arguments_one_line_exit_2(tmp_path, capsys, argv, needle):
    from qlabref import cli

    (tmp_path / "file.html").write_text("x")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        code = cli.main(["explore", *argv])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err


@pytest.mark.slow
def test_recorded_learning_rates_are_the_demo_sweeps_choice():
    """DEMO_LRS against the sweep itself (about 100 s on a 2-core machine)."""
    assert E.lrs_from_sweep(F.names()) == E.DEMO_LRS
