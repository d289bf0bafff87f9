"""bg.from_torch of convolutional networks (issue 19, point 5): eval outputs match PyTorch in float64,
one SGD step in bngraph equals PyTorch's, every padding form maps one to one, what the IR cannot
reproduce is refused naming the module, and the standalone inference code takes (N, C, ...) data."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import bngraph as bg
from bngraph.interop.standalone import write_standalone
from interop_support import need

torch = need("torch")
nn = torch.nn


def _settle(net, shape, seed=0):
    """Running statistics away from their initial values, then eval mode, in float64."""
    net = net.double().train()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for scale in (1.0, 2.0):
            net(torch.randn(16, *shape, generator=g, dtype=torch.float64) * scale + 0.5)
    return net.eval()


def _cnn2d(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6, eps=1e-3, momentum=0.2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(6, 6, (3, 2), stride=(1, 2), padding="valid", groups=3, bias=False),
                      nn.BatchNorm2d(6), nn.LeakyReLU(0.1)),
        nn.AvgPool2d(2, padding=1, ceil_mode=True, count_include_pad=False),
        nn.Conv2d(6, 8, 3, padding="same", dilation=2), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 5), nn.BatchNorm1d(5), nn.Sigmoid(), nn.Linear(5, 4))
    return _settle(net, (3, 12, 10))


def _cnn1d(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv1d(2, 4, 5, stride=2, padding=2), nn.BatchNorm1d(4), nn.ReLU(),
        nn.MaxPool1d(3, stride=2, padding=1, dilation=1, ceil_mode=True),
        nn.Conv1d(4, 4, 3, padding="same", dilation=3, groups=2), nn.BatchNorm1d(4, momentum=0.3), nn.ReLU(),
        nn.AvgPool1d(2), nn.Flatten(), nn.Linear(4 * 3, 3))
    return _settle(net, (2, 23))


CASES = {"2d": (_cnn2d, (3, 12, 10), 4), "1d": (_cnn1d, (2, 23), 3)}


@pytest.mark.parametrize("kind", CASES)
def test_eval_outputs_match_pytorch(kind):
    make, shape, _ = CASES[kind]
    net = make()
    imported = bg.from_torch(net, shape, dtype="f64")
    assert imported.inputs_spec[0].kind == "spatial"
    assert imported.original_names["conv_0.W"] == "0.weight"
    model = imported.compile(dtype="float64")
    assert model.n_features == shape
    X = np.random.default_rng(1).normal(size=(9, *shape))
    with torch.no_grad():
        expected = net(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(model.forward(X), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", CASES)
def test_one_training_step_equals_pytorch(kind):
    make, shape, classes = CASES[kind]
    net = make()
    model = bg.from_torch(net, shape, dtype="f64").compile(dtype="float64")
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(12, *shape)), rng.integers(0, classes, 12)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    loss = nn.functional.cross_entropy(net(torch.from_numpy(X)), torch.from_numpy(y))
    opt.zero_grad()
    loss.backward()
    opt.step()
    ours = model.train_step(X, y, bg.optim.SGD(lr=0.1, momentum=0.9))
    assert ours == pytest.approx(loss.item(), rel=1e-10)
    net.eval()
    X2 = rng.normal(size=(7, *shape))
    with torch.no_grad():
        expected = net(torch.from_numpy(X2)).numpy()
    # eval mode after the step: new weights and new running statistics (over N and the positions) agree
    np.testing.assert_allclose(model.forward(X2), expected, rtol=1e-9, atol=1e-11)


PADDINGS = [  # (Conv2d keyword arguments)
    dict(padding=0), dict(padding=2), dict(padding=(1, 0)), dict(padding=(0, 2), stride=(2, 1)),
    dict(padding="valid", stride=2), dict(padding="same"), dict(padding="same", dilation=(2, 1)),
    dict(padding="same", kernel_size=(2, 4)), dict(padding=1, dilation=2, groups=2),
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")  # torch's own note
@pytest.mark.parametrize("kwargs", PADDINGS)
def test_conv2d_padding_forms(kwargs):
    kwargs = {"kernel_size": 3, **kwargs}
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(4, 6, **kwargs), nn.Flatten()).double().eval()
    X = np.random.default_rng(3).normal(size=(3, 4, 9, 8))
    with torch.no_grad():
        expected = net(torch.from_numpy(X)).numpy()
    model = bg.from_torch(net, (4, 9, 8), loss="mse", dtype="f64").compile(dtype="float64")
    np.testing.assert_allclose(model.forward(X), expected, rtol=1e-10, atol=1e-12)


def test_a_spatial_output_without_a_loss_is_returned_as_n_c_h_w():
    from bngraph.interop.program import ImportedProgram

    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.MaxPool2d(2, ceil_mode=True)).double()
    net = _settle(net, (2, 7, 7))
    imported = bg.from_torch(net, (2, 7, 7), loss=None, dtype="f64")
    X = np.random.default_rng(4).normal(size=(5, 2, 7, 7))
    with torch.no_grad():
        expected = net(torch.from_numpy(X)).numpy()
    got = ImportedProgram(imported).run({"x": X})["out"]
    assert got.shape == expected.shape == (5, 3, 3, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


REFUSED = [
    (nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")), (3, 8, 8),
     r"from_torch: 0 \(Conv2d\) has padding_mode='reflect'; bngraph's conv pads with zeros only"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(2)), (3, 8, 8),
     r"from_torch: 1 \(AdaptiveAvgPool2d\) has output_size=2; bngraph imports the adaptive pool to one position"),
    (nn.Sequential(nn.MaxPool2d(2, return_indices=True)), (3, 8, 8),
     r"from_torch: 0 \(MaxPool2d\) has return_indices=True"),
    (nn.Sequential(nn.AvgPool2d(2, divisor_override=3)), (3, 8, 8),
     r"from_torch: 0 \(AvgPool2d\) has divisor_override=3"),
    (nn.Sequential(nn.BatchNorm2d(3)), (3, 8),
     r"from_torch: 0 \(BatchNorm2d\) expects \(N, C, H, W\) data, receives \(N, 3, 8\)"),
    (nn.Sequential(nn.BatchNorm1d(3)), (3, 8, 8),
     r"from_torch: 0 \(BatchNorm1d\) expects \(N, C\) or \(N, C, L\) data, receives \(N, 3, 8, 8\)"),
    (nn.Sequential(nn.Conv1d(3, 4, 3)), (3, 8, 8),
     r"from_torch: 0 \(Conv1d\) expects \(N, C, L\) data, receives \(N, 3, 8, 8\)"),
    (nn.Sequential(nn.Conv2d(4, 4, 3)), (3, 8, 8),
     r"from_torch: 0 \(Conv2d\) takes 4 channels but receives 3 \(\(N, 3, 8, 8\)\)"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(6, 2)), (3, 8, 8),
     r"from_torch: 1 \(Linear\) receives \(N, 4, 6, 6\) data; .*put an nn.Flatten\(\) before it"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(2)), (3, 8, 8), r"from_torch: 1 \(Flatten\) with start_dim=2"),
    (nn.Sequential(nn.Conv3d(3, 4, 3)), (3, 8, 8, 8), r"a spatial input's shape must be \(channels, length\)"),
    (nn.Sequential(nn.Conv3d(3, 4, 3)), (3, 8, 8), r"from_torch: 0 is a Conv3d; bngraph imports"),
    (nn.Sequential(nn.Conv2d(3, 4, 3)), (3, 8, 8),
     r"the module's output is \(N, 4, 6, 6\) data; loss='softmax_cross_entropy' needs \(N, outputs\)"),
]


@pytest.mark.parametrize("net, shape, match", REFUSED, ids=[str(i) for i in range(len(REFUSED))])
def test_refused_modules_are_named(net, shape, match):
    with pytest.raises(bg.IRError, match=match):
        bg.from_torch(net, shape)


RUN_WITHOUT_BNGRAPH = """
import sys
sys.modules["bngraph"] = None  # importing bngraph now fails, installed or not
import importlib, numpy as np
mod = importlib.import_module(sys.argv[1])
np.save(sys.argv[3], mod.output(np.load(sys.argv[2])))
try:
    mod.output(np.load(sys.argv[2])[:, :1])
except ValueError as e:
    print(e)
"""


@pytest.mark.parametrize("kind", CASES)
def test_standalone_code_takes_n_c_data(tmp_path, kind):
    make, shape, _ = CASES[kind]
    net = make()
    model = bg.from_torch(net, shape, dtype="f64").compile(dtype="float64")
    values = {**model.params, **model.state}
    write_standalone(model.graph, {k: np.asarray(v) for k, v in values.items()}, tmp_path / "out",
                     dtype="float64", module="cnn")
    X = np.random.default_rng(5).normal(size=(6, *shape))
    np.save(tmp_path / "X.npy", X)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", RUN_WITHOUT_BNGRAPH, "cnn", str(tmp_path / "X.npy"),
                           str(tmp_path / "y.npy")], cwd=tmp_path / "out", env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with torch.no_grad():
        expected = net(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-10, atol=1e-12)
    assert f"X must have shape (m, {', '.join(map(str, shape))}), got (6, 1" in proc.stdout
    inf = model.export_inference()  # model.export_inference: (N, C, ...) data too
    np.testing.assert_allclose(inf.forward(X), expected, rtol=1e-10, atol=1e-12)
