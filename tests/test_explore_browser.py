"""``qlabref explore`` in a real browser: Debian's headless Chromium driven by Playwright.

The test writes a page for a small grid, opens it from disk (file://), picks a function, clicks a start
point on the map, steps through with the next button and the slider, and checks that what the page
shows (the start, θ_t, a2, ᾱ, α*, the step taken, the fallback) equals, as float64, what the engine
computes for that start: QLABGrad run here step by step on a Tensor.

Skipped when Chromium (/usr/bin/chromium) or Playwright is missing, unless
``QLABREF_REQUIRE_BROWSER=1`` (set by CI), in which case it fails.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import qlabref as qr
from qlabref import explore as E
from qlabref import functions as F

CHROMIUM = os.environ.get("QLABREF_CHROMIUM", "/usr/bin/chromium")
# headless and quiet: no background connections (the test machine has no network)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
GRID, STEPS = 3, 40


def _need_browser():
    missing = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "playwright is not installed (pip install playwright; the test extra has it)"
    if missing is None and not Path(CHROMIUM).exists():
        missing = f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    if missing:
        if os.environ.get("QLABREF_REQUIRE_BROWSER") == "1":
            pytest.fail(f"QLABREF_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(f"{missing}; set QLABREF_REQUIRE_BROWSER=1 to make this a failure")


@pytest.fixture(scope="module")
def page_file(tmp_path_factory):
    _need_browser()
    data = E.build_data(["booth", "himmelblau"], grid=GRID, steps=STEPS)
    path, _ = E.write_page(tmp_path_factory.mktemp("explore") / "explore.html", data)
    return path


@pytest.fixture(scope="module")
def browser():
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, page_file):
    pg = browser.new_page(viewport={"width": 1280, "height": 1000})
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.goto(page_file.as_uri())
    pg.wait_for_selector("body[data-ready='1']", timeout=30_000)
    yield pg
    pg.close()
    assert errors == [], errors


def engine(fn, start, steps):
    p = qr.tensor(np.array(start, dtype=np.float64), requires_grad=True)
    opt = qr.optim.QLABGrad([p], findplr="once")
    xs, recs = [p.data.copy()], []
    for _ in range(steps):
        opt.step(lambda: fn.f(p))
        recs.append(dict(opt.last_step))
        xs.append(p.data.copy())
    return xs, recs


def _lattice(fn):
    (x0, x1), (y0, y1) = fn.domain
    xs = np.linspace(x0 + 0.05 * (x1 - x0), x1 - 0.05 * (x1 - x0), GRID)
    ys = np.linspace(y0 + 0.05 * (y1 - y0), y1 - 0.05 * (y1 - y0), GRID)
    return xs, ys


def _click_near(page, fn, x, y):
    """Click the map a little off the point (x, y): the page must snap to the nearest start."""
    (x0, x1), (y0, y1) = fn.domain
    box = page.locator("#map").bounding_box()
    u = (x - x0) / (x1 - x0) + 0.02
    v = 1 - (y - y0) / (y1 - y0) - 0.015
    page.mouse.click(box["x"] + u * box["width"], box["y"] + v * box["height"])


def _num(page, sel):
    text = page.locator(sel).inner_text().strip()
    return None if text == "—" else float(text)


def _check_step(page, xs, recs, t):
    assert page.locator("#step-label").inner_text() == str(t)
    n = len(recs)
    tt = min(t, n)
    assert _num(page, "#q-x") == xs[tt][0] and _num(page, "#q-y") == xs[tt][1]  # float64, exactly
    k = min(max(t, 1), n)
    rec = recs[k - 1]
    assert page.locator("#q-k").inner_text() == str(k)
    assert _num(page, "#q-a0") == rec["a0"] and _num(page, "#q-a1") == rec["a1"] and _num(page, "#q-a2") == rec["a2"]
    assert _num(page, "#q-probe") == rec["probe_loss"]
    assert _num(page, "#q-pre-lr") == rec["pre_lr"]
    assert _num(page, "#q-lr") == rec["lr"]
    assert _num(page, "#q-alpha-star") == rec["alpha_star"]
    assert page.locator("#q-fallback").get_attribute("data-fallback") == str(int(rec["fallback"]))
    assert page.locator("#q-fallback").inner_text().startswith("yes" if rec["fallback"] else "no")


@pytest.mark.parametrize("name, corner", [("himmelblau", (1, 1)), ("booth", (0, 2))])
def test_click_a_start_and_step_through(page, name, corner):
    fn = F.get(name)
    page.select_option("#fn", label=name)
    xs_grid, ys_grid = _lattice(fn)
    sx, sy = xs_grid[corner[0]], ys_grid[corner[1]]
    _click_near(page, fn, sx, sy)
    assert _num(page, "#start-x") == sx and _num(page, "#start-y") == sy
    assert page.locator("#step-label").inner_text() == "0"

    # the engine, independently, for as many steps as the page shows for QLABGrad
    n_page = int(page.evaluate("() => DATA.functions[state.fn].runs.qlabgrad[state.start].f.length - 1"))
    xs, recs = engine(fn, (sx, sy), n_page)
    assert 1 <= n_page <= STEPS

    _check_step(page, xs, recs, 0)  # the start; the panel previews step 1 (FindPLR)
    for t in range(1, min(n_page, 6) + 1):  # the next button
        page.click("#next")
        _check_step(page, xs, recs, t)
    page.locator("#step").fill(str(n_page))  # the slider
    _check_step(page, xs, recs, n_page)
    page.click("#prev")
    _check_step(page, xs, recs, n_page - 1)

    # every optimizer's row is filled in, and the learning rates shown are the demo's
    for opt in E.OPTIMIZERS:
        assert page.locator(f"#row-{opt} .f").inner_text().strip() != ""
    assert f"lr = {E.DEMO_LRS[name]['sgd']}" in page.locator("#row-sgd").inner_text()


def test_fallback_is_shown_when_it_fires(page):
    """Himmelblau's start nearest its local maximum: QLABGrad's first fit is concave (a2 < 0)."""
    fn = F.himmelblau
    xs_grid, ys_grid = _lattice(fn)
    page.select_option("#fn", label="himmelblau")
    # the lattice point nearest the local maximum (-0.27, -0.92)
    i = int(np.argmin(np.abs(xs_grid - fn.local_maximum[0])))
    j = int(np.argmin(np.abs(ys_grid - fn.local_maximum[1])))
    _click_near(page, fn, xs_grid[i], ys_grid[j])
    xs, recs = engine(fn, (xs_grid[i], ys_grid[j]), 1)
    page.click("#next")
    _check_step(page, xs, recs, 1)
    assert recs[0]["fallback"], "this start was chosen for a first step that falls back"


def test_play_advances_and_pauses(page):
    page.click("#play")
    page.wait_for_function("() => +document.getElementById('step-label').textContent >= 3", timeout=10_000)
    page.click("#play")
    t = page.locator("#step-label").inner_text()
    page.wait_for_timeout(400)
    assert page.locator("#step-label").inner_text() == t
    page.keyboard.press("ArrowRight")  # the arrow keys step too
    assert page.locator("#step-label").inner_text() == str(int(t) + 1)
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    assert page.locator("#step-label").inner_text() == str(int(t) - 1)
