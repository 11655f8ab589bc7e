"""qr.nn.Dropout / F.dropout: PyTorch's semantics, an explicit RNG, and the probe's mask replay."""
import numpy as np
import pytest

import qlabref as qr
import qlabref.nn.functional as F


def test_dropout_statistics_and_scale(rng):
    p = float(rng.uniform(0.1, 0.9))
    layer = qr.nn.Dropout(p, seed=int(rng.integers(2**31)))
    x = qr.tensor(np.ones((200, 300)))
    y = layer(x).data
    kept = y != 0
    assert np.allclose(y[kept], 1.0 / (1.0 - p))
    n = kept.size  # kept fraction ~ Binomial(n, 1 − p): within 6 standard deviations
    assert abs(kept.mean() - (1 - p)) < 6 * np.sqrt(p * (1 - p) / n)
    layer.eval()
    assert layer(x) is x
    assert np.all(qr.nn.Dropout(1.0, seed=0)(x).data == 0)
    assert qr.nn.Dropout(0.0, seed=0)(x) is x
    with pytest.raises(ValueError, match="p must be"):
        qr.nn.Dropout(1.5)


def test_same_seed_same_masks_and_probe_reuses_mask(rng):
    seed = int(rng.integers(2**31))
    a, b = qr.nn.Dropout(0.5, seed=seed), qr.nn.Dropout(0.5, seed=seed)
    x = qr.tensor(rng.normal(size=(4, 5)))
    first = a(x).data
    assert np.array_equal(first, b(x).data)
    with qr.no_grad(), qr.no_state_update():  # an optimizer's probe: same mask, generator untouched
        assert np.array_equal(a(x).data, first)
        assert np.array_equal(a(qr.tensor(2 * x.data)).data, 2 * first)
    assert np.array_equal(a(x).data, b(x).data)  # both generators advanced once more, alike
    fresh = qr.nn.Dropout(0.5, seed=seed)
    with pytest.raises(RuntimeError, match="reuses the mask"), qr.no_state_update():
        fresh(x)


def test_dropout_gradient_is_the_mask(rng):
    p = 0.3
    mask = F.dropout_mask((3, 4), p, np.float64, rng)
    x = rng.normal(size=(3, 4))
    errs = qr.gradcheck(lambda t: F.dropout(t * t, p, mask=mask), [qr.tensor(x, requires_grad=True)])
    assert max(errs.values()) < 1e-6
    t = qr.tensor(x, requires_grad=True)
    F.dropout(t, p, mask=mask).sum().backward()
    assert np.array_equal(t.grad, mask)


def test_qlabgrad_probe_sees_the_forward_mask(rng):
    """Reference engine: with dropout, Algorithm 1's probe g(ᾱ) is the loss at θ − ᾱ∇L *with the forward's
    mask*: recomputed by hand from the returned mask."""
    model = qr.nn.Sequential(qr.nn.Linear(6, 8, dtype=np.float64, seed=1), qr.nn.ReLU(),
                             qr.nn.Dropout(0.4, seed=int(rng.integers(2**31))), qr.nn.Linear(8, 3, dtype=np.float64, seed=2))
    x, y = rng.normal(size=(10, 6)), rng.integers(0, 3, 10)
    opt = qr.optim.QLABGrad(model.parameters(), pre_lr=0.1, findplr="never")
    theta = [p.data.copy() for p in model.parameters()]
    opt.step(lambda: qr.cross_entropy(model(qr.tensor(x)), y))
    mask = model[2]._mask
    grads = [p.grad.copy() for p in model.parameters()]
    w1, b1, w2, b2 = [t - 0.1 * g for t, g in zip(theta, grads)]
    h = np.maximum(x @ w1.T + b1, 0) * mask
    logits = h @ w2.T + b2
    z = logits - logits.max(1, keepdims=True)
    probe = float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(10), y]))
    assert abs(probe - opt.last_step["probe_loss"]) < 1e-12
