"""qr.nn containers and models without PyTorch: parameter counts (REFERENCE.md), state_dict keys and
strict-loading errors, flat parameter/gradient buffers, initialisation, seeding, interop key
translation, .npz round trips, bad-input messages."""
import numpy as np
import pytest
from scipy import stats

import qlabref as qr
import qlabref.nn.functional as F
from qlabref import interop, models


@pytest.mark.parametrize("kw, expected", [
    (dict(num_classes=10, variant="cifar"), 11_173_962),
    (dict(num_classes=10, variant="imagenet"), 11_181_642),
    (dict(num_classes=200, variant="imagenet"), 11_279_112),
    (dict(num_classes=200, variant="cifar"), 11_271_432),
])
def test_resnet18_parameter_counts_match_reference(kw, expected):
    assert models.resnet18(**kw).num_parameters() == expected


def test_mlp_and_cnn_sizes():
    # 784·1000 + 1000 + 1000·1000 + 1000 + 1000·10 + 10
    assert models.mlp().num_parameters() == 1_796_010
    # conv 1→32 5×5, conv 32→64 5×5, fc 1024→512, fc 512→10 (our documented choice)
    assert models.paper_cnn().num_parameters() == (32 * 25 + 32) + (64 * 32 * 25 + 64) + (1024 * 512 + 512) + (512 * 10 + 10)


def test_resnet_state_dict_keys_are_torchvision_names():
    keys = list(models.resnet18().state_dict())
    assert keys[:6] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                        "bn1.num_batches_tracked"]
    assert "layer2.0.downsample.0.weight" in keys and "layer2.0.downsample.1.running_var" in keys
    assert "layer1.0.downsample.0.weight" not in keys
    assert keys[-2:] == ["fc.weight", "fc.bias"]
    sd = models.resnet18().state_dict()
    assert sd["bn1.num_batches_tracked"].dtype == np.int64 and sd["bn1.num_batches_tracked"].shape == ()


def test_seed_fixes_weights_and_dtype_is_respected():
    a, b, c = models.paper_cnn(seed=7), models.paper_cnn(seed=7), models.paper_cnn(seed=8)
    for (k, x), (_, y), (_, z) in zip(a.state_dict().items(), b.state_dict().items(), c.state_dict().items()):
        np.testing.assert_array_equal(x, y)
        assert k.endswith("bias") or not np.array_equal(x, z)
    m = models.mlp(dtype=np.float64)
    assert all(p.dtype == np.float64 for p in m.parameters())
    assert models.mlp().fc1.weight.dtype == np.float32


def test_default_init_is_uniform_with_pytorch_bound():
    """PyTorch's default: U(−1/√fan_in, 1/√fan_in) for weight and bias (KS test against that law)."""
    for layer, fan_in in ((qr.nn.Linear(300, 200, seed=1), 300), (qr.nn.Conv2d(6, 40, 5, seed=2), 150)):
        bound = 1 / np.sqrt(fan_in)
        w = layer.weight.data.astype(np.float64).ravel()
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
        assert stats.kstest(w, stats.uniform(-bound, 2 * bound).cdf).pvalue > 1e-4
        assert np.abs(layer.bias.data).max() <= bound


def test_torchvision_init_option():
    m = models.resnet18(init="torchvision", seed=0)
    w = m.layer3[0].conv1.weight.data
    fan_out = 256 * 9
    assert np.std(w) == pytest.approx(np.sqrt(2 / fan_out), rel=0.02)
    assert stats.kstest(w.ravel().astype(np.float64) / np.sqrt(2 / fan_out), "norm").pvalue > 1e-4


# ------------------------------------------------------------------------------------------ state_dict
def _perturbed(sd, rng):
    return {k: (v + rng.standard_normal(v.shape).astype(v.dtype) if v.dtype.kind == "f" else v + 3) for k, v in sd.items()}


def test_state_dict_round_trip_is_exact(rng):
    m = models.resnet18(variant="imagenet", num_classes=5)
    target = _perturbed(m.state_dict(), rng)
    m.load_state_dict(target)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, target[k], err_msg=k)
    assert int(m.state_dict()["bn1.num_batches_tracked"]) == 3


@pytest.mark.parametrize("edit, pattern", [
    (lambda sd: sd.pop("layer1.0.bn2.running_var"), r"missing keys: layer1\.0\.bn2\.running_var"),
    (lambda sd: sd.__setitem__("layer9.weight", np.zeros(3)), r"unexpected keys: layer9\.weight"),
])
def test_strict_load_names_missing_and_unexpected_keys_and_loads_nothing(rng, edit, pattern):
    m = models.resnet18(num_classes=5)
    before = m.state_dict()
    sd = _perturbed(before, rng)
    edit(sd)
    with pytest.raises(qr.nn.StateDictError, match=pattern):
        m.load_state_dict(sd)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=f"{k} was partially loaded")
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert missing or unexpected


def test_misshaped_key_names_key_and_both_shapes_and_loads_nothing(rng):
    m = models.mlp()
    before = m.state_dict()
    sd = _perturbed(before, rng)
    sd["fc2.weight"] = np.zeros((1000, 999), dtype=np.float32)
    with pytest.raises(ValueError, match=r"'fc2\.weight' has shape \(1000, 999\) .* \(1000, 1000\) in the model"):
        m.load_state_dict(sd)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_interop_translates_kuangliu_and_dataparallel_names(rng):
    m = models.resnet18(num_classes=10)
    sd = _perturbed(m.state_dict(), rng)
    kuangliu = {}
    for k, v in sd.items():
        k2 = k.replace("downsample.", "shortcut.").replace("fc.", "linear.")
        kuangliu["module." + k2] = v
    assert any(".shortcut.0.weight" in k for k in kuangliu)
    interop.load_torch_state_dict(m, kuangliu)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, sd[k])


def test_npz_round_trip_and_missing_file(tmp_path, rng):
    m = models.paper_cnn(seed=1)
    m.load_state_dict(_perturbed(m.state_dict(), rng))
    path = interop.save_npz(m, tmp_path / "cnn.npz")
    fresh = models.paper_cnn(seed=2)
    interop.load_npz(fresh, path)
    for (k, a), (_, b) in zip(m.state_dict().items(), fresh.state_dict().items()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        interop.load_npz(fresh, tmp_path / "nope.npz")


# ------------------------------------------------------------------------------------------ flat buffers
def test_flat_parameters_and_grads_are_views_and_backward_accumulates_in_place(rng):
    m = models.paper_cnn(dtype=np.float64, seed=3)
    before = {k: v.copy() for k, v in m.state_dict().items()}
    flat = m.flat_parameters()
    grads = m.flat_grads()
    assert flat.size == grads.size == m.num_parameters() and flat.flags.c_contiguous
    for k, v in m.state_dict().items():  # moving into the buffer kept every value
        np.testing.assert_array_equal(v, before[k])
    assert all(np.shares_memory(p.data, flat) and np.shares_memory(p.grad, grads) for p in m.parameters())
    assert m.flat_parameters() is flat and m.flat_grads() is grads
    x, y = rng.standard_normal((3, 1, 28, 28)), rng.integers(0, 10, 3)
    F.cross_entropy(m(qr.tensor(x)), y).backward()
    g1 = grads.copy()
    assert np.any(g1 != 0)
    assert all(np.shares_memory(p.grad, grads) for p in m.parameters())
    F.cross_entropy(m(qr.tensor(x)), y).backward()  # accumulates: exactly twice
    np.testing.assert_array_equal(grads, 2 * g1)
    # the same gradient as a model without flat buffers
    ref = models.paper_cnn(dtype=np.float64, seed=3)
    F.cross_entropy(ref(qr.tensor(x)), y).backward()
    np.testing.assert_allclose(g1, np.concatenate([p.grad.ravel() for p in ref.parameters()]), rtol=1e-14)
    # updating the flat buffer updates the parameters; zero_grad keeps the views
    flat -= 0.1 * grads
    np.testing.assert_array_equal(m.conv1.weight.data.ravel(), flat[:m.conv1.weight.size])
    m.zero_grad()
    assert not grads.any() and all(np.shares_memory(p.grad, grads) for p in m.parameters())
    # an optimizer step writes through the views too
    opt = qr.optim.SGD(m.parameters(), lr=0.01)
    opt.step(lambda: F.cross_entropy(m(qr.tensor(x)), y))
    assert all(np.shares_memory(p.data, flat) for p in m.parameters())
    # loading a state_dict writes into the views
    m.load_state_dict(before)
    np.testing.assert_array_equal(flat, np.concatenate([before[k].ravel() for k, _ in m.named_parameters()]))


def test_flat_buffer_refuses_mixed_dtypes():
    m = qr.nn.Sequential(qr.nn.Linear(2, 3), qr.nn.Linear(3, 1, dtype=np.float64))
    with pytest.raises(ValueError, match="mixed dtypes"):
        m.flat_parameters()


# ------------------------------------------------------------------------------------------ modules
def test_train_eval_propagate_and_batchnorm_counts_batches(rng):
    m = models.resnet18(num_classes=3, variant="imagenet")
    m.eval()
    assert not any(mod.training for mod in m.modules())
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    with qr.no_grad():
        m(qr.tensor(x))
    assert int(m.state_dict()["bn1.num_batches_tracked"]) == 0
    m.train()
    with qr.no_grad():
        m(qr.tensor(x))
        with qr.no_state_update():
            m(qr.tensor(x))
    assert int(m.state_dict()["layer4.1.bn2.num_batches_tracked"]) == 1


def test_named_modules_parameters_and_repr():
    m = models.resnet18()
    names = [n for n, _ in m.named_modules()]
    assert names[0] == "" and "layer2.0.downsample.0" in names
    assert len(m.parameters()) == len(dict(m.named_parameters())) == 62
    assert "Conv2d(3, 64" in repr(m)
    assert m.layer2[0].downsample[0].path() == "layer2.0.downsample.0"


@pytest.mark.parametrize("model, shape, pattern", [
    (lambda: models.paper_cnn(), (2, 1, 32, 32), r"paper_cnn: expects .*\(N, 1, 28, 28\), got \(2, 1, 32, 32\).*fc1 takes 1024"),
    (lambda: models.paper_cnn(), (2, 3, 28, 28), r"got \(2, 3, 28, 28\)"),
    (lambda: models.mlp(), (2, 1, 27, 27), r"fc1 \(Linear 784->1000\): input has 729 features"),
    (lambda: models.resnet18(), (2, 1, 32, 32), r"resnet18: expects images of shape \(N, 3, H, W\), got \(2, 1, 32, 32\)"),
    (lambda: qr.nn.Sequential(qr.nn.Conv2d(3, 4, 3), qr.nn.BatchNorm2d(5)), (2, 3, 8, 8),
     r"1 \(BatchNorm2d\): expected input \(N, 5, H, W\), got shape \(2, 4, 6, 6\)"),
    (lambda: qr.nn.Sequential(qr.nn.Conv2d(3, 4, 3)), (2, 1, 8, 8), r"0 \(Conv2d\): weight has 3 input channels, got 1 channels"),
])
def test_bad_shapes_name_the_layer_and_shapes(model, shape, pattern):
    with pytest.raises(ValueError, match=pattern):
        model()(qr.tensor(np.zeros(shape, dtype=np.float32)))


def test_constructor_arguments_are_checked():
    with pytest.raises(ValueError, match="in_features must be a positive int"):
        qr.nn.Linear(0, 3)
    with pytest.raises(ValueError, match="kernel_size"):
        qr.nn.Conv2d(1, 2, (3, 3, 3))
    with pytest.raises(ValueError, match="variant must be 'cifar' or 'imagenet'"):
        models.resnet18(variant="tiny")
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        models.mlp(dtype=np.int32)


def test_qlabgrad_on_flat_buffers_equals_per_parameter_steps(rng):
    """With flat_parameters()/flat_grads() QLABGrad works on the two buffers (one pass over memory);
    the numbers equal the per-parameter path (only ‖∇L‖²'s summation order differs), and the
    parameters stay views of the buffer."""
    x, y = rng.standard_normal((6, 1, 28, 28)), rng.integers(0, 10, 6)
    runs = []
    for flat in (False, True):
        m = models.paper_cnn(dtype=np.float64, seed=5)
        if flat:
            buf, _ = m.flat_parameters(), m.flat_grads()
        opt = qr.optim.QLABGrad(m.parameters(), alpha0=0.5, findplr="every:2")
        recs = []
        for _ in range(4):
            opt.step(lambda: F.cross_entropy(m(qr.tensor(x)), y))
            recs.append(dict(opt.last_step))
        assert all(r["flat_storage"] == flat for r in recs)
        if flat:
            assert all(np.shares_memory(p.data, buf) for p in m.parameters())
        runs.append((np.concatenate([p.data.ravel() for p in m.parameters()]), recs))
    (theta_a, recs_a), (theta_b, recs_b) = runs
    np.testing.assert_allclose(theta_b, theta_a, rtol=1e-11, atol=1e-13)
    for ra, rb in zip(recs_a, recs_b):
        assert rb["lr"] == pytest.approx(ra["lr"], rel=1e-9) and rb["evals"] == ra["evals"]


# ------------------------------------------------------------------------------------------ PyTorch's container rules
def test_tied_modules_are_counted_once_like_torch(rng):
    shared = qr.nn.Linear(3, 3, dtype=np.float64)
    m = qr.nn.Sequential(shared, qr.nn.ReLU(), shared)
    assert len(m.parameters()) == 2 and m.num_parameters() == 12
    assert list(m.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]  # torch lists both names
    assert m.flat_parameters().size == 12
    x = qr.tensor(rng.standard_normal((4, 3)))
    opt = qr.optim.SGD(m.parameters(), lr=0.1)  # no "parameter appears more than once"
    opt.step(lambda: (m(x) * m(x)).mean())


def test_reassignment_keeps_order_and_rejects_plain_tensors():
    lin = qr.nn.Linear(2, 3)
    lin.weight = qr.nn.Parameter(np.zeros((3, 2), dtype=np.float32))
    assert list(lin.state_dict()) == ["weight", "bias"]
    with pytest.raises(TypeError, match="cannot assign a Tensor as parameter 'weight'"):
        lin.weight = qr.tensor(np.zeros((3, 2), dtype=np.float32))
    lin.bias = None  # allowed, as in torch: the key disappears
    assert list(lin.state_dict()) == ["weight"] and lin.bias is None
    m = qr.nn.Sequential(qr.nn.Linear(2, 2), qr.nn.Linear(2, 2))
    setattr(m, "0", qr.nn.Linear(2, 2))
    assert list(m.state_dict())[:2] == ["0.weight", "0.bias"]


def test_models_pickle_and_deepcopy(rng):
    import copy
    import pickle

    m = models.resnet18(num_classes=4, variant="imagenet")
    m.load_state_dict(_perturbed(m.state_dict(), rng))
    for clone in (pickle.loads(pickle.dumps(m)), copy.deepcopy(m)):
        for (k, a), (_, b) in zip(m.state_dict().items(), clone.state_dict().items()):
            np.testing.assert_array_equal(a, b, err_msg=k)
        assert clone.layer2[0].downsample[0].path() == "layer2.0.downsample.0"
        clone.layer1[0].conv1.weight.data[...] = 0  # independent storage
        assert np.any(m.layer1[0].conv1.weight.data != 0)


def test_unconvertible_value_is_named_and_nothing_loads(rng):
    m = qr.nn.Sequential(qr.nn.Linear(2, 2), qr.nn.BatchNorm2d(2))
    before = m.state_dict()
    sd = _perturbed(before, rng)
    sd["1.running_mean"] = np.array(["a", "b"])
    with pytest.raises(qr.nn.StateDictError, match=r"'1\.running_mean' has dtype <U1"):
        m.load_state_dict(sd)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=f"{k} was partially loaded")


def test_all_problems_are_reported_together(rng):
    m = models.mlp()
    sd = _perturbed(m.state_dict(), rng)
    del sd["fc3.bias"]
    sd["fc1.weight"] = np.zeros((2, 2), dtype=np.float32)
    with pytest.raises(qr.nn.StateDictError) as info:
        m.load_state_dict(sd)
    msg = str(info.value)
    assert "missing keys: fc3.bias" in msg and "'fc1.weight' has shape (2, 2) in the state_dict but (1000, 784)" in msg
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


def test_translate_keys_keeps_a_models_own_names():
    """A model whose child is really called ``linear`` loads its own checkpoint (no kuangliu renaming)."""
    class Net(qr.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = qr.nn.Linear(2, 2)
            self.shortcut = qr.nn.Linear(2, 2)

    a, b = Net(), Net()
    interop.load_torch_state_dict(b, {"module." + k: v for k, v in a.state_dict().items()})
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_array_equal(x, y)


def test_dtype_mismatch_names_layer_and_both_dtypes():
    m = models.mlp()  # float32
    with pytest.raises(ValueError, match=r"fc1 \(Linear\): input has dtype float64, the layer's parameters are float32"):
        m(qr.tensor(np.zeros((2, 784))))
    with pytest.raises(ValueError, match=r"conv1 \(Conv2d\): input has dtype float64"):
        models.resnet18()(qr.tensor(np.zeros((2, 3, 32, 32))))


def test_pool_and_flatten_errors_name_the_layer():
    m = qr.nn.Sequential(qr.nn.Conv2d(1, 2, 3), qr.nn.MaxPool2d(5))
    with pytest.raises(ValueError, match=r"^1 \(MaxPool2d\): max_pool2d: input of spatial size 3x3"):
        m(qr.tensor(np.zeros((1, 1, 5, 5), dtype=np.float32)))
    with pytest.raises(ValueError, match="end_dim 3 is out of range"):
        F.flatten(qr.tensor(np.ones((2, 3, 1))), 1, 3)
