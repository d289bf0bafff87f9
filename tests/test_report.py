"""bg.report and `bngraph report`: a self-contained HTML page for every model source (a model file,
a trained checkpoint, an ONNX file, a PyTorch model, a convolutional graph), checked structurally:
every IR node links to its code and back, every pass has its section with its sentences and the
params it removed or remapped, nothing is fetched from outside the file; the code map against the
renderers' own plans; both graph layouts."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import bngraph as bg
from bngraph.cli import main
from bngraph.compiler import PROGRAM_DOCS, build_programs
from bngraph.printer import format_node
from bngraph.htmlreport import build_html
from bngraph.htmlreport.codemap import map_code
from bngraph.htmlreport.drawing import graph_svg
from bngraph.htmlreport.passlog import ir_diff
from interop_support import need
from report_support import check_report

ROOT = Path(__file__).resolve().parents[1]
MLP = str(ROOT / "examples" / "mlp.py")


def _data(n=120, features=8, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, features)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(int) + (X[:, 1] > 1).astype(int)


@pytest.mark.parametrize("target", ["numpy", "cuda"])
def test_model_file_report_from_the_command_line(tmp_path, capsys, target):
    out = tmp_path / "r.html"
    assert main(["report", MLP, "--out", str(out), "--target", target]) == 0
    assert capsys.readouterr().out.strip() == f"wrote report {out}"
    text = out.read_text()
    page = check_report(text, bg.TRAINING_PIPELINE)
    progs = {a["id"] for a in page.having("program", tag="section")}
    assert progs == {f"prog-{p}" for p in ("train_step", "forward", "forward_train", "evaluate")}
    # fold_bias: its sentence, and the params it removed and remapped
    fold = text[text.index('data-pass="fold_bias"'):text.index('data-pass="fuse_bn"')]
    assert "removed fc1.b (128 parameters): cancelled by bn1&#39;s mean subtraction" in fold
    assert '<code class="gone">fc1.b</code>' in fold and '<code class="mod">bn1.running_mean</code>' in fold
    assert '<tr class="removed"><td class="mark">&minus;</td><td><pre>  %fc1: f32[128,m] = bias_add' in fold
    # the fused node says what it replaced, in the graph and beside its code
    assert "batchnorm + relu (fused)" in text
    assert "fused from: <code>%bn1: f32[128,m]" in text and "<code>%relu1: f32[128,m] = relu %bn1</code>" in text
    files = {"numpy": ["mlp_numpy.py"], "cuda": ["mlp_cuda.cu", "mlp_cuda.py"]}[target]
    assert [a for a in files if f'<div class="fname">{a}</div>' not in text] == []
    if target == "cuda":  # the target's own lowering fuses the loss with its gradient: said beside it
        assert "lowered by the target from:" in text
    assert 'id="training"' not in text  # nothing trained yet


def test_trained_checkpoint_report_has_the_curves_and_stop_reason(tmp_path, capsys):
    X, y = _data()
    model = bg.compile(bg.mlp([8, 16, 3]), seed=0)
    model.fit(X, y, optimizer=bg.optim.Adam(lr=1e-2), epochs=3, batch_size=32, validation_data=(X[:40], y[:40]),
              verbose=False, callbacks=[bg.callbacks.EarlyStopping("val_loss", patience=0, min_delta=10.0)])
    assert model.history.stop_reason and len(model.history) == 2
    ck = tmp_path / "run.npz"
    model.save(ck)
    out = tmp_path / "run.html"
    assert main(["report", str(ck), "--out", str(out)]) == 0
    assert f"wrote report {out}" in capsys.readouterr().out
    text = out.read_text()
    check_report(text, bg.TRAINING_PIPELINE)
    training = text[text.index('id="training"'):]
    assert "checkpoint run.npz" in text and model.history.stop_reason.replace("'", "&#39;") in training
    titles = [t.split(">")[1].split("<")[0] for t in training.split('<text class="ctitle"')[1:]]
    assert titles == ["loss", "accuracy", "learning rate"]
    assert training.count('class="line train"') == 1 and training.count('class="line val"') == 2
    rows = training[training.index("<tbody>"):training.index("</tbody>")]
    assert rows.count("<tr>") == 2
    # a resumed model goes on with the same history
    again = bg.load(ck)
    assert [r["epoch"] for r in again.history] == [1, 2] and again.history.stop_reason == model.history.stop_reason


def test_fit_report_writes_the_page_at_the_end_and_says_where(tmp_path, capsys):
    X, y = _data()
    model = bg.compile(bg.mlp([8, 16, 3]), seed=0)
    out = tmp_path / "fit.html"
    model.fit(X, y, optimizer=bg.optim.SGD(lr=0.1), epochs=2, batch_size=32, report=out)
    assert f"wrote report {out}" in capsys.readouterr().err  # where fit prints its epochs
    text = out.read_text()
    check_report(text, bg.TRAINING_PIPELINE)
    assert "ran all 2 epochs" in text and text.count('<text class="ctitle"') == 2  # loss and lr: no validation
    with pytest.raises(OSError, match="fit report"):
        model.fit(X, y, epochs=1, report=tmp_path / "missing" / "r.html")


def test_train_writes_the_html_report_and_says_where(tmp_path, capsys):
    out = tmp_path / "train.html"
    assert main(["train", "--epochs", "2", "--quiet", "--no-save", "--html", str(out)]) == 0
    assert f"wrote HTML report {out}" in capsys.readouterr().out.splitlines()
    text = out.read_text()
    check_report(text, bg.TRAINING_PIPELINE)
    training = text[text.index('id="training"'):]
    assert training[training.index("<tbody>"):training.index("</tbody>")].count("<tr>") == 2  # both epochs
    assert main(["train", "--epochs", "1", "--quiet", "--no-save", "--html", str(tmp_path / "no" / "r.html")]) == 2


def test_onnx_file_report(tmp_path, capsys):
    need("onnx")
    X, y = _data()
    model = bg.compile(bg.mlp([8, 6, 3]), seed=1)
    model.fit(X, y, optimizer=bg.optim.Adam(1e-2), epochs=1, batch_size=16, verbose=False)
    path = tmp_path / "m.onnx"
    bg.to_onnx(model, str(path))
    out = tmp_path / "onnx.html"
    assert main(["report", str(path), "--out", str(out), "--layout", "builtin"]) == 0
    text = out.read_text()
    check_report(text, bg.TRAINING_PIPELINE)
    assert "ONNX file m.onnx" in text and "layout: builtin" in text


def test_pytorch_model_report(tmp_path):
    torch = need("torch")
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).eval()
    imported = bg.from_torch(net, 6)
    path = bg.report(imported, tmp_path / "torch.html", target="cuda")
    check_report(Path(path).read_text(), bg.TRAINING_PIPELINE)
    model = imported.compile()  # a compiled model works as well
    check_report(Path(bg.report(model, tmp_path / "m.html")).read_text(), bg.TRAINING_PIPELINE)


def test_convolutional_graph_report(tmp_path):
    g = bg.Graph("cnn")
    x, y = g.input("x", (1, 8, 8)), g.labels("y", 10)
    h = g.relu(g.batchnorm(g.conv(x, 4, 3, name="c1"), name="bn1"))
    g.softmax_cross_entropy(g.matmul(g.flatten(g.maxpool(h, 2)), 10, name="out"), y)
    text = Path(bg.report(g, tmp_path / "cnn.html", passes=["fold_bias", "dce"])).read_text()
    check_report(text, ["fold_bias", "dce"])
    assert "conv" in text and "removed c1.b" in text


def test_text_from_files_is_escaped():
    g = bg.Graph("g")
    x, y = g.input("x", 4), g.labels("y", 2)
    g.softmax_cross_entropy(g.matmul(x, 2, name="o"), y)
    text = build_html(g, source="<img src=x onerror=alert(1)>")
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text


def test_code_map_covers_every_step_from_the_renderers_plans():
    built = build_programs(bg.mlp([8, 6, 3]))
    for target in ("numpy", "cuda"):
        rendered = bg.get_target(target).render(built.programs, "f32", "mlp", docs=PROGRAM_DOCS)
        for code in map_code(rendered):
            plan = rendered.plans[code.name]
            for k, step in enumerate(plan.steps):
                lines = code.lines_of(k)
                assert lines, (target, code.name, step.node.name)
                file, first = lines[0]
                text = rendered.sources[file].splitlines()[first - 1].strip()
                assert text.endswith(format_node(step.node))
            owned = [(p.file, p.first + i) for p in code.parts for i, o in enumerate(p.owner) if o is not None]
            assert len(owned) == len(set(owned))
    numpy_code = map_code(bg.get_target("numpy").render(built.programs, "f32", "mlp", docs=PROGRAM_DOCS))
    fwd = next(c for c in numpy_code if c.name == "forward")
    lines = fwd.parts[0].lines
    k = next(k for k, n in enumerate(fwd.graph.nodes) if n.op == "matmul")
    body = [lines[ln - fwd.parts[0].first] for _, ln in fwd.lines_of(k)]
    assert body[0].strip().startswith("# %") and "np.matmul" in body[1] and len(body) == 2


def test_ir_diff_pairs_rewritten_lines_by_the_values_they_bind():
    before = "graph g {\n  %a: f32[2] = relu %x\n  %b: f32[2] = tanh %a\n}"
    after = "graph g {\n  %b: f32[2] = sigmoid %x\n  %c: f32[2] = relu %b\n}"
    kinds = [(d.kind, d.text.strip()) for d in ir_diff(before, after)]
    assert ("removed", "%a: f32[2] = relu %x") in kinds and ("rewritten", "%b: f32[2] = sigmoid %x") in kinds
    assert ("added", "%c: f32[2] = relu %b") in kinds and kinds[0] == ("same", "graph g {")


@pytest.mark.parametrize("layout", ["builtin", "graphviz"])
def test_both_layouts_draw_every_value_kind(layout):
    if layout == "graphviz" and shutil.which("dot") is None:
        pytest.skip("Graphviz's dot is not installed: only the built-in layout is tested")
    g = bg.run_pipeline(bg.mlp([8, 6, 3]), bg.TRAINING_PIPELINE).graph
    svg, used = graph_svg(g, "t", layout)
    assert used == layout and svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert "batchnorm + relu (fused)" in svg
    if layout == "builtin":
        for kind in ("input", "param", "state", "op fused", "loss", "output"):
            assert f'class="box {kind}"' in svg, kind
        assert 'class="edge batch"' in svg and 'class="edge learned"' in svg
    else:
        assert 'id="t-' in svg and "<?xml" not in svg


def test_report_refuses_a_bad_target_and_an_output_that_is_the_model(tmp_path, capsys):
    assert main(["report", MLP, "--out", str(tmp_path / "r.html"), "--target", "nope"]) == 2
    assert "--target nope: no such target" in capsys.readouterr().err
    assert main(["report", MLP, "--out", MLP]) == 2
    assert "are the same file" in capsys.readouterr().err
