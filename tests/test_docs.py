"""The README stays true: its example runs, and the IR and code it shows are what bngraph prints."""
import runpy
from pathlib import Path

import bngraph as bg

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _blocks(lang=""):
    """The fenced code blocks of the README whose info string is ``lang``."""
    blocks, current = [], None
    for line in README.splitlines():
        if line.startswith("```"):
            if current is None:
                current = [] if line[3:].strip() == lang else False
            else:
                if current is not False:
                    blocks.append("\n".join(current))
                current = None
        elif isinstance(current, list):
            current.append(line)
    return blocks


def test_quickstart_example_runs(capsys):
    runpy.run_path(str(REPO / "examples" / "quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "// IR after fuse_bn" in out and "removed fc1.b (128 parameters)" in out


def test_readme_ir_lines_are_printed_by_bngraph():
    ns = runpy.run_path(str(REPO / "examples" / "quickstart.py"), run_name="not_main")
    g = ns["g"]
    before, after = str(g), str(bg.run_pipeline(g, bg.TRAINING_PIPELINE).graph)
    ir_blocks = [b for b in _blocks() if "= matmul %fc1.W, %x" in b]
    assert len(ir_blocks) == 2
    for block, text in zip(ir_blocks, (before, after)):
        for line in block.strip("\n").splitlines():
            assert line in text.splitlines(), line


def test_readme_generated_code_is_what_emit_prints():
    src = bg.emit(runpy.run_path(str(REPO / "examples" / "mlp.py"))["model"]())["mlp_numpy.py"]
    (block,) = [b for b in _blocks("python") if "bn1_mean" in b and "np.einsum" in b]
    for line in block.strip("\n").splitlines():
        if "..." not in line:  # the node comment is abbreviated in the README
            assert line in src.splitlines(), line
