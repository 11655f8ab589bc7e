"""``qlabref bench --parts tiny``: the 2-D step measurement runs, records both sides and reports."""
import numpy as np

from qlabref import bench, bench_tiny


def test_measure_tiny_records_every_job_on_both_sides():
    t = bench_tiny.measure_tiny(repeats=2, warmup=0, inner=3)
    assert set(t["jobs"]) == {"fwd+bwd", "sgd", "adam", "qlabgrad"}
    for r in t["jobs"].values():
        for key in ("qlabref_us", "numpy_us", "qlabref_cpu_us", "numpy_cpu_us"):
            assert r[key]["n"] == 2 and r[key]["min"] <= r[key]["median"]
        assert r["qlabref_us"]["median"] > 0 and r["numpy_us"]["median"] > 0
        assert np.isclose(r["ratio_numpy"], r["qlabref_us"]["median"] / r["numpy_us"]["median"])
    assert t["verdict"] in ("meets target", "misses target") and t["target_us"] == bench_tiny.TINY_TARGET_US
    lines = bench_tiny.format_tiny(t, "1 thread(s)")
    assert len(lines) == 5 and "qlabgrad step on booth" in lines[3] and "µs" in lines[0]


def test_numpy_baseline_steps_match_the_optimizers_first_step():
    """The plain-NumPy sides do the optimizers' arithmetic (an oracle for the yardstick itself)."""
    import qlabref as qr

    for name, kw in (("sgd", {"lr": 0.01}), ("adam", {"lr": 0.01})):
        theta = np.array(bench_tiny._START)
        bench_tiny._numpy_sides(th=theta)[name]()
        p = qr.tensor(np.array(bench_tiny._START), requires_grad=True)
        qr.optim.get(name, [p], **kw).step(lambda: qr.functions.booth.f(p))
        np.testing.assert_allclose(theta, p.data, rtol=1e-14)
    theta = np.array(bench_tiny._START)
    bench_tiny._numpy_sides(th=theta, pre_lr=0.0625)["qlabgrad"]()
    p = qr.tensor(np.array(bench_tiny._START), requires_grad=True)
    qr.optim.QLABGrad([p], pre_lr=0.0625, findplr="never").step(lambda: qr.functions.booth.f(p))
    np.testing.assert_allclose(theta, p.data, rtol=1e-12)


def test_tiny_is_a_bench_part():
    assert "tiny" in bench.PARTS and bench.part_names("tiny") == ["tiny"]
