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
# # One QLABGrad step on the MNIST MLP, by hand
#
# QLABGrad (Fu & Wu) picks the learning rate of every step from a quadratic fitted to the loss along
# the negative gradient. This notebook does one step of Algorithm 1 by hand on the paper's MNIST MLP
# (784-1000-1000-10, ReLU), next to the paper's equations (6)-(10), and then checks every number
# against what `qr.optim.QLABGrad` reports in `opt.last_step`.
#
# Open it with Jupyter (`pip install jupytext`, then open the `.py` file as a notebook), or run it as
# a script: `python demos/notebook_qlabgrad_step_by_hand.py`. The test suite runs it as a script.
#
# Notation: θ are all the parameters (as one vector), L(θ) the loss of one minibatch, ∇L its
# gradient, and g(α) = L(θ − α∇L) the loss along the negative gradient (Eq. 3).

# %%
import copy

import numpy as np

import qlabref as qr

X, y = qr.data.mnist("train")  # downloaded and verified on first use (~15 MB)
xb, yb = next(qr.data.batches(X, y, batch_size=64, seed=0))  # one minibatch
xb = xb.astype(np.float64)  # the data is float32; the model below is float64
model = qr.models.mlp(seed=0, dtype=np.float64)  # float64: the by-hand numbers agree to the last digits
by_hand = copy.deepcopy(model)  # we do the step by hand on this copy; the optimizer works on `model`
print(f"minibatch {xb.shape}, labels {yb[:10]}..., {model.num_parameters():,} parameters")


# %% [markdown]
# ## Eq. (6) and (7): the loss and the gradient at θ
#
# One forward and one backward pass give the first two coefficients of the quadratic
# g(α) ≈ a0 + a1·α + a2·α²:
#
# - a0 = g(0) = L(θ)                 (Eq. 6)
# - a1 = g'(0) = −‖∇L(θ)‖²           (Eq. 7), ‖∇L‖² summed over **all** parameters

# %%
def loss_of(m):
    return qr.cross_entropy(m(qr.tensor(xb)), yb)


loss = loss_of(by_hand)
loss.backward()
params = by_hand.parameters()
theta = [p.data.copy() for p in params]  # θ, kept to compute every point from
grads = [p.grad.copy() for p in params]  # ∇L(θ)
grad_sq = sum(float(np.sum(g * g)) for g in grads)

a0 = float(loss.data)  # Eq. (6)
a1 = -grad_sq  # Eq. (7)
print(f"a0 = L(θ)     = {a0:.12f}")
print(f"a1 = -|∇L|^2  = {a1:.12f}")

# %% [markdown]
# ## Algorithm 2 (FindPLR): the pre-learning rate ᾱ
#
# Algorithm 1 needs a pre-learning rate ᾱ. With the default settings QLABGrad finds it at the first
# step with FindPLR (Algorithm 2), starting from α0 = 1: loop 1 doubles ᾱ while
# g(ᾱ) − g(0) + ᾱ‖∇L‖² < 0, loop 2 halves it while g(ᾱ) > g(0). Here is that search written out.

# %%
def g(alpha):
    """g(α) = L(θ − α∇L): one forward pass at a moved copy of θ (Eq. 3); θ is put back afterwards."""
    for p, t, d in zip(params, theta, grads):
        p.data[...] = t - alpha * d
    with qr.no_grad(), qr.no_state_update():
        value = float(loss_of(by_hand).data)
    for p, t in zip(params, theta):
        p.data[...] = t
    return value


alpha_bar, tried = 1.0, []  # Algorithm 2, line 1: ᾱ = α0
g_bar = g(alpha_bar)  # line 3
tried.append((alpha_bar, g_bar))
while g_bar - a0 + alpha_bar * grad_sq < 0:  # lines 4-7
    alpha_bar *= 2
    g_bar = g(alpha_bar)
    tried.append((alpha_bar, g_bar))
while g_bar > a0:  # lines 8-11
    alpha_bar /= 2
    g_bar = g(alpha_bar)
    tried.append((alpha_bar, g_bar))
for a, v in tried:
    print(f"  ᾱ = {a:<10g} g(ᾱ) = {v:.6f}  {'> g(0): halve' if v > a0 else '<= g(0): keep'}")
print(f"ᾱ = {alpha_bar}")

# %% [markdown]
# ## Eq. (8) and (9): one probe, and the curvature a2
#
# The probe g(ᾱ) = L(θ − ᾱ∇L) (Eq. 8) is one more forward pass, on the same minibatch, without
# building a graph (and without touching BatchNorm statistics, had the model any). FindPLR's last
# evaluation is exactly this number, so QLABGrad reuses it. Then
#
# a2 = (g(ᾱ) − a0 − a1·ᾱ) / ᾱ²        (Eq. 9)

# %%
probe = g_bar  # Eq. (8)
a2 = (probe - a0 - a1 * alpha_bar) / alpha_bar**2  # Eq. (9)
print(f"g(ᾱ) = {probe:.12f}")
print(f"a2   = {a2:.12f}")

# %% [markdown]
# ## Eq. (10) and Algorithm 1, lines 4-8: the learning rate and the update
#
# The minimum of the fitted quadratic is at α* = −a1/(2a2), i.e.
#
# α* = ‖∇L‖²·ᾱ² / (2·[g(ᾱ) − L(θ) + ‖∇L‖²·ᾱ])        (Eq. 10)
#
# If α* < 0 (the fit is concave, a2 ≤ 0) the step falls back to α_t = ᾱ (lines 5-7). Then
# θ ← θ − α_t∇L (line 8).

# %%
alpha_star = grad_sq * alpha_bar**2 / (2 * (probe - a0 + grad_sq * alpha_bar))  # Eq. (10)
alpha_t = alpha_star if a2 > 0 else alpha_bar  # Algorithm 1, lines 4-7
new_theta = [t - alpha_t * d for t, d in zip(theta, grads)]  # line 8
print(f"α*  = {alpha_star:.12f}   (check: -a1/(2 a2) = {-a1 / (2 * a2):.12f})")
print(f"α_t = {alpha_t:.12f}   ({'α*' if a2 > 0 else 'fallback ᾱ'})")
print(f"new loss on this minibatch: {g(alpha_t):.6f} (was {a0:.6f})")

# %% [markdown]
# ## The same step with the optimizer
#
# `qr.optim.QLABGrad` does all of the above in `opt.step(closure)`; the closure runs the forward pass
# and returns the minibatch loss. `opt.last_step` holds every number of the step.

# %%
opt = qr.optim.QLABGrad(model.parameters())  # defaults: FindPLR from alpha0 = 1.0 at the first step
opt.step(lambda: loss_of(model))
s = opt.last_step
checks = [("a0 (Eq. 6)", a0, s["a0"]), ("a1 (Eq. 7)", a1, s["a1"]), ("pre_lr ᾱ (Alg. 2)", alpha_bar, s["pre_lr"]),
          ("g(ᾱ) (Eq. 8)", probe, s["probe_loss"]), ("a2 (Eq. 9)", a2, s["a2"]),
          ("α* (Eq. 10)", alpha_star, s["alpha_star"]), ("α_t (Alg. 1)", alpha_t, s["lr"])]
for name, mine, theirs in checks:
    rel = abs(mine - theirs) / max(abs(mine), abs(theirs))
    print(f"{name:<18} by hand {mine:>+.12e}   opt.last_step {theirs:>+.12e}   rel. diff {rel:.1e}")
    assert rel < 1e-9, name
diff = max(np.abs(p.data - t).max() for p, t in zip(model.parameters(), new_theta))
print(f"parameters: largest |θ_by_hand − θ_optimizer| = {diff:.1e}")
assert diff < 1e-12
print(f"closure calls this step: {s['evals']} (1 forward+backward, {s['findplr_evals']} FindPLR probes; "
      f"the last probe is g(ᾱ))")
print("all numbers match opt.last_step")

# %% [markdown]
# ## The fitted quadratic
#
# The quadratic a0 + a1·α + a2·α² against the true g(α) along −∇L: it matches g at α = 0 (value and
# slope) and at α = ᾱ by construction; α* is its minimum.

# %%
import matplotlib.pyplot as plt  # noqa: E402

alphas = np.linspace(0, 1.6 * max(alpha_bar, alpha_t), 25)
plt.figure(figsize=(6, 4))
plt.plot(alphas, [g(a) for a in alphas], "o-", ms=3, label="g(α) = L(θ − α∇L) (Eq. 3)")
plt.plot(alphas, a0 + a1 * alphas + a2 * alphas**2, "--", label="a0 + a1·α + a2·α² (Eqs. 6, 7, 9)")
plt.axvline(alpha_bar, color="grey", lw=0.8, label=f"ᾱ = {alpha_bar:g}")
plt.axvline(alpha_t, color="k", lw=0.8, ls=":", label=f"α* = {alpha_star:.3f} (Eq. 10)")
plt.xlabel("step size α")
plt.ylabel("minibatch loss")
plt.title("QLABGrad's quadratic fit, first step, MNIST MLP")
plt.legend(fontsize=8)
plt.tight_layout()
plt.show()
