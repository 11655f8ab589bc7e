"""``qlabref verify`` and the claim checks behind it (``qlabref.verify``), on fresh random problems."""
from __future__ import annotations

import numpy as np
import pytest

from qlabref import cli, verify

EXPECTED_REFUTED = {"check_lemma2_upper_bound_as_printed", "check_findplr_bound_as_printed",
                    "check_theorem1_decrease_as_printed"}


@pytest.mark.parametrize("check", verify.CHECKS, ids=lambda c: c.__name__)
def test_each_claim_check_passes_or_reproduces_its_counterexample(rng, check):
    with np.errstate(over="ignore", invalid="ignore"):
        r = check(rng)
    expected = "REFUTED" if check.__name__ in EXPECTED_REFUTED else "PASS"
    assert r.status == expected, r.line()
    assert r.claim and r.measured and r.ok


def test_eq10_check_measures_what_it_says(rng):
    r = verify.check_eq10_exact_line_search(rng)
    assert r.data["max_rel_error"] <= 1e-12 and r.data["steps"] == 7 * 15


def test_lemma2_lower_bound_is_tight_on_a_quadratic(rng):
    r = verify.check_lemma2_lower_bound(rng)
    assert 1.0 - 1e-7 <= r.data["min_alpha_star_times_M"] < 2.0 and r.data["steps"] > 100


def test_theorem1_counterexample_numbers():
    r = verify.check_theorem1_decrease_as_printed(np.random.default_rng(0))
    assert r.data["alpha_star"] == pytest.approx(100.0, rel=1e-12)  # α* = ‖g‖²ᾱ²/(2·ε/2·ᾱ²) = 1/ε
    assert r.data["loss_after"] == pytest.approx(-100 + 0.005 * 1e4 + 0.495 * 98**2, rel=1e-12)


def test_a_failing_claim_makes_the_command_exit_1(monkeypatch, capsys):
    bad = verify.ClaimResult("Eq. (99)", "a claim", "FAIL", "measured 1 ≠ 2")
    monkeypatch.setattr(verify, "CHECKS", [lambda rng: bad])
    assert cli.main(["verify"]) == 1
    out = capsys.readouterr().out
    assert "FAIL     Eq. (99)" in out and "1 FAIL" in out


def test_verify_command_prints_one_line_per_claim_and_exits_0(capsys):
    assert cli.main(["verify", "--seed", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    body = lines[1:-1]
    assert len(body) == len(verify.CHECKS)
    for line in body:
        status = line.split()[0]
        assert status in ("PASS", "REFUTED"), line
    for tag in ("Eq. (10)", "Lemma 2", "Lemma 3", "Algorithm 2", "Eq. (16)", "Theorem 1", "Monotone"):
        assert any(tag in line for line in body), tag
    assert "0 FAIL" in lines[-1]
