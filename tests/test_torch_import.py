"""bg.from_torch: an nn.Sequential's eval outputs match, and training goes on in bngraph exactly as
it would in PyTorch (one SGD step on the same batch gives the same network)."""
from __future__ import annotations

import numpy as np
import pytest

import bngraph as bg
from interop_support import need

torch = need("torch")
nn = torch.nn


def _net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.BatchNorm1d(8, eps=1e-3, momentum=0.2), nn.LeakyReLU(0.05),
                        nn.Sequential(nn.Linear(8, 5, bias=False), nn.BatchNorm1d(5), nn.Tanh()),
                        nn.Linear(5, 4), nn.Sigmoid(), nn.Identity(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3))
    X = torch.randn(64, 6, dtype=torch.float64)
    net = net.double().train()
    with torch.no_grad():
        net(X)
        net(X * 2 + 1)  # running statistics away from their initial values
    return net.eval()


def test_eval_outputs_match_and_hyperparameters_carry_over():
    net = _net()
    imported = bg.from_torch(net, 6, dtype="f64")
    bns = [n for n in imported.nodes if n.op == "batchnorm"]
    assert [(n.attr["eps"], n.attr["momentum"]) for n in bns] == [(1e-3, 0.2), (1e-5, 0.1)]
    assert imported.original_names["bn_2.running_var"] == "2.running_var"
    model = imported.compile(dtype="float64")
    X = np.random.default_rng(1).normal(size=(20, 6))
    with torch.no_grad():
        expected = net(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(model.forward(X), expected, rtol=1e-10, atol=1e-12)


def test_one_training_step_equals_pytorch():
    net = _net()
    model = bg.from_torch(net, 6, dtype="f64").compile(dtype="float64")
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(16, 6)), rng.integers(0, 3, 16)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    loss = nn.functional.cross_entropy(net(torch.from_numpy(X)), torch.from_numpy(y))
    opt.zero_grad()
    loss.backward()
    opt.step()
    ours = model.train_step(X, y, bg.optim.SGD(lr=0.1, momentum=0.9))
    assert ours == pytest.approx(loss.item(), rel=1e-12)
    net.eval()
    X2 = rng.normal(size=(10, 6))
    with torch.no_grad():
        expected = net(torch.from_numpy(X2)).numpy()
    # eval mode after the step: new weights and new running statistics agree
    np.testing.assert_allclose(model.forward(X2), expected, rtol=1e-9, atol=1e-12)


def test_unsupported_modules_are_named():
    with pytest.raises(bg.IRError, match=r"from_torch: 1 is a Conv3d; bngraph imports"):
        bg.from_torch(nn.Sequential(nn.Linear(4, 4), nn.Conv3d(1, 1, 1)), 4)
    with pytest.raises(bg.IRError, match="momentum=None"):
        bg.from_torch(nn.Sequential(nn.BatchNorm1d(4, momentum=None)), 4)
    with pytest.raises(bg.IRError, match="takes 5 features but receives 4"):
        bg.from_torch(nn.Sequential(nn.Linear(5, 2)), 4)
