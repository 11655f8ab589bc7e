# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A PyTorch training run, cross-checked with the reference engine
#
# You train with QLABGrad in PyTorch (`qlabref.torch.QLABGrad`, a `torch.optim.Optimizer`). Is what
# you run the paper's method? This notebook trains an ordinary PyTorch MLP on MNIST, then replays
# the same run — same initial weights, same minibatches — in qlabref's NumPy reference engine and
# compares the two step by step with `qr.crosscheck`.
#
# Needs PyTorch (`pip install 'qlabref[torch]'`). Open with Jupyter via jupytext, or run as a script:
# `python demos/notebook_torch_crosscheck.py` (the test suite runs it that way).

# %%
import copy

import numpy as np
import torch

import qlabref as qr
import qlabref.torch as qt

torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 256), torch.nn.ReLU(),
                          torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
initial = copy.deepcopy(net)  # the starting point, kept for the cross-check
X, y = qr.data.mnist("train")
X, y = X[:4096], y[:4096]  # a small slice keeps this quick

# %% [markdown]
# ## Training in PyTorch
#
# The closure only runs the forward pass and returns the minibatch loss: QLABGrad calls `backward`
# itself, then evaluates the loss once more at θ − ᾱ∇L (the probe g(ᾱ), Eq. 8) under
# `torch.no_grad()` — with BatchNorm statistics and dropout masks as in the forward pass. Each step's
# numbers are in `opt.last_step`.

# %%
opt = qt.QLABGrad(net.parameters())  # ᾱ from FindPLR (alpha0 = 1.0) at the first step
batches = qr.data.batches(X, y, batch_size=64, seed=0)
for step in range(1, 31):
    xb, yb = (torch.from_numpy(a) for a in next(batches))
    opt.step(lambda: torch.nn.functional.cross_entropy(net(xb), yb))
    s = opt.last_step
    if step % 5 == 0 or step == 1:
        print(f"step {step:>2}: loss {s['loss']:.4f}  α_t {s['lr']:.4f}  "
              f"({'fallback ᾱ' if s['fallback'] else 'α* of Eq. 10'}), {s['evals']} forward passes")
Xte, yte = qr.data.mnist("test")
with torch.no_grad():
    acc = (net(torch.from_numpy(Xte[:2000])).argmax(1).numpy() == yte[:2000]).mean()
print(f"test accuracy after 30 steps: {acc:.1%}")

# %% [markdown]
# ## The same run in the reference engine
#
# `qr.crosscheck(model, X, y, ...)` takes the initial torch module, builds the qlabref model with the
# same weights (`qr.interop.from_torch`), draws minibatches in the same order
# (`qr.data.batches(X, y, batch_size, seed)`, as above) and runs both optimizers side by side. After
# every step it compares the loss, the probe loss g(ᾱ), α*, α_t, the parameters and the buffers, as
# relative differences |a − b| / max(|a|, |b|).
#
# In float64 both sides do the same arithmetic up to the order of floating-point sums, so they agree
# to ~1e-14 over the whole run: this is the check that the PyTorch optimizer is the reference
# algorithm. In float32 (PyTorch's default) the first steps agree to ~1e-5, and then the two runs
# drift apart: the two libraries round the float32 forward pass differently, α* is computed from a
# difference of two nearly equal losses (Eq. 10's denominator), and each step's α_t feeds the next.
# Both float32 runs are equally "right"; the verdict says after how many steps they part by more
# than the tolerance.

# %%
results = []
for dtype in ("float64", "float32"):
    res = qr.crosscheck(initial, X, y, optimizer="qlabgrad", steps=30, batch_size=64, seed=0, dtype=dtype)
    results.append(res)
    print(res.verdict())
assert results[0].ok  # float64: every step, every quantity within 1e-9
print(results[0].table())

# %% [markdown]
# The float32 cross-check starts from the same weights as the PyTorch run above, so its PyTorch side
# *is* that run: the losses match what we printed.

# %%
print("float32 losses, PyTorch side, steps 1 and 5:",
      f"{results[1].rows[0]['loss_torch']:.4f}, {results[1].rows[4]['loss_torch']:.4f}")

# %% [markdown]
# ## The differences against the step
#
# Exact agreement (difference 0) is drawn at the bottom edge; the dashed line is the tolerance.

# %%
qr.crosscheck_torch.plot(results)

# %% [markdown]
# ## What a wrong implementation looks like
#
# A common mistake in a hand-written QLABGrad: taking the update from the probed point θ − ᾱ∇L
# instead of θ. Here it is as a subclass; the cross-check names the first step and the quantity.

# %%
class StepFromProbedPoint(qt.QLABGrad):
    """Wrong on purpose: θ_t = (θ − ᾱ∇L) − α_t∇L."""

    def _move(self, params, saved, alpha, dirs, kind):
        if kind == "update":  # from wherever the probe left θ, not from the saved θ
            with torch.no_grad():
                for p, d in zip(params, dirs):
                    p.sub_(alpha * d)
        else:
            super()._move(params, saved, alpha, dirs, kind)


bad = qr.crosscheck(initial, X, y, steps=5, batch_size=64, torch_optimizer=StepFromProbedPoint)
print(bad.verdict())
assert not bad.ok and bad.first_failure[0] == 1

# %% [markdown]
# ## Bringing the PyTorch MLP into qlabref's paper model
#
# `nn.Sequential(Linear, ReLU, Linear, ReLU, Linear)` has keys `0.weight, 2.weight, 4.weight` (here
# `1., 3., 5.` behind the `Flatten`); qlabref's `mlp()` names them `fc1, fc2, fc3`. The explicit option
# `from_sequential=True` maps one onto the other.

# %%
model = qr.models.mlp((784, 256, 256, 10))
qr.interop.load_torch_state_dict(model, net.state_dict(), from_sequential=True)
with torch.no_grad():
    want = net(torch.from_numpy(Xte[:5])).numpy()
print("same outputs:", np.allclose(model(qr.tensor(Xte[:5])).data, want, rtol=1e-5, atol=1e-6))
