"""What nbval compares in the notebooks (notebooks/conftest.py), and the make targets that run it.

The hook is checked twice: its rules on their own, and inside a real nbval run on small
notebooks whose stored outputs differ from what their cells print only in float bits (they must
pass, and fail without the hook) or in what a reader relies on (they must fail).
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
HOOK = ROOT / "notebooks" / "conftest.py"
PLOTLY = "application/vnd.plotly.v1+json"


def _rules():
    spec = importlib.util.spec_from_file_location("nbval_rules", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rules = _rules()


def _bdata(values, dtype="f8"):
    return {"dtype": dtype, "bdata": base64.b64encode(np.asarray(values, dtype=dtype).tobytes()).decode()}


def _figure(y, name="loss", title="max |.| = 2.5e-07", x_title="step t", mode="lines"):
    return {"data": [{"type": "scatter", "name": name, "mode": mode, "x": [1, 2, 3], "y": _bdata(y)}],
            "layout": {"title": {"text": title}, "xaxis": {"title": {"text": x_title}, "type": "log"},
                       "yaxis": {"range": [0, 1.05]}}}


Y = [0.1 + 0.2, 1 / 3, 2 / 3]


def test_figures_that_differ_only_in_float_bits_have_one_structure():
    one_ulp = np.nextafter(np.array(Y), 1.0)
    assert (one_ulp != np.array(Y)).all()
    assert rules.structure(_figure(Y)) == rules.structure(_figure(one_ulp, title="max |.| = 1.9e-07"))


@pytest.mark.parametrize("changed", [
    dict(name="surprise"), dict(mode="markers"), dict(title="max |.| over 3 levels = 2.5e-07"),
    dict(x_title="step"), dict(y=Y + [1.0]),
])
def test_a_figure_whose_traces_or_titles_change_has_another_structure(changed):
    assert rules.structure(_figure(Y)) != rules.structure(_figure(**{"y": Y, **changed}))


def test_figure_structure_keeps_integers_in_strings_and_array_shapes():
    assert rules.structure("level 3 (C=64), step 250, lr 1e-3, a = 0.25") == "level 3 (C=64), step 250, lr <number>, a = <number>"
    heatmap = {"z": {"dtype": "f4", "bdata": _bdata(np.zeros((4, 8)), "f4")["bdata"], "shape": "4, 8"}}
    assert rules.structure(heatmap) == {"z": {"dtype": "f4", "shape": "4,8"}}
    assert rules.structure({"y": _bdata(np.zeros(5), "f4")}) == {"y": {"dtype": "f4", "shape": "5"}}


@pytest.mark.parametrize("stored, new, same", [
    ("loss 0.3926 +- 0.0121", "loss 0.3927 +- 0.0120", True),   # rounding flipped the last digit
    ("loss 0.3926", "loss 0.3928", False),                      # two units: a real change
    ("recorded 250 steps: 0.0463", "recorded 251 steps: 0.0463", False),  # integers are exact
    ("level 1: 0.98", "level 2: 0.98", False),
    ("ratio 1.0000", "ratio 0.9999", True),
    ("gap 1.2e-07", "gap 1.3e-07", True),
    ("gap 1.2e-07", "gap 2.4e-07", False),
    ("[0.034  0.0321]", "[0.0341 0.0321]", True),               # numpy drops a zero; the finer unit counts
    ("[0.034  0.0321]", "[0.0352 0.0321]", False),
    ("[1.   0.5 ]", "[0.99 0.5 ]", True),                       # numpy's "1." has the other number's precision
    ("[1.  0. ]", "[0.  1. ]", False),
    ("   off  0.3926\nprinted  0.5301", "off 0.3926\nprinted 0.5301", True),  # column alignment
    ("a 0.39", "a 0.39 0.1", False),
])
def test_printed_decimals_may_differ_by_one_unit_in_their_last_digit(stored, new, same):
    assert rules.same_text(stored, new) is same


# --- nbval itself, on small notebooks --------------------------------------------------------

FIGURE_CELL = """import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
pio.renderers.default = "plotly_mimetype"
y = np.array([0.1, 0.2, 0.3]) * 3
go.Figure(go.Scatter(x=[1, 2, 3], y=y, name="three tenths", mode="lines"),
          layout_title_text=f"max |.| = {float(y[2] - 0.9):.1e}").show()"""
TEXT_CELL = 'print(f"loss {0.39264:.4f} after {250} steps")'


def _executed(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(FIGURE_CELL), nbformat.v4.new_code_cell(TEXT_CELL)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    return nb.cells


def _cell(source, output):
    return nbformat.v4.new_code_cell(source, execution_count=1, outputs=[output])


def _write(path, cells):
    path.parent.mkdir(exist_ok=True)
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def _with_figure(figure_output, change):
    out = copy.deepcopy(figure_output)
    change(out["data"][PLOTLY])
    return out


def _with_text(text_output, text):
    out = copy.deepcopy(text_output)
    out["text"] = text
    return out


def _next_bits(figure):
    trace = figure["data"][0]
    y = np.frombuffer(base64.b64decode(trace["y"]["bdata"]), dtype=trace["y"]["dtype"])
    trace["y"]["bdata"] = base64.b64encode(np.nextafter(y, np.inf).tobytes()).decode()
    figure["layout"]["title"]["text"] = "max |.| = 1.0e-16"


def test_nbval_with_the_hook_passes_float_bits_and_fails_real_differences(tmp_path):
    figure_cell, text_cell = _executed(tmp_path)
    (figure,), (text,) = figure_cell.outputs, text_cell.outputs
    assert isinstance(figure["data"][PLOTLY]["data"][0]["y"], dict), "plotly stored y as a list: no float bits to test"
    assert text["text"] == "loss 0.3926 after 250 steps\n"

    bits = _with_figure(figure, _next_bits)
    renamed = _with_figure(figure, lambda f: f["data"][0].update(name="three"))
    longer = _with_figure(figure, lambda f: f["data"][0].update(x=[1, 2, 3, 4]))
    agree = [_cell(FIGURE_CELL, bits), _cell(TEXT_CELL, _with_text(text, "loss 0.3927 after 250 steps\n"))]
    _write(tmp_path / "checked" / "agree.ipynb", agree)
    _write(tmp_path / "checked" / "differ.ipynb", [
        _cell(FIGURE_CELL, renamed), _cell(FIGURE_CELL, longer),
        _cell(TEXT_CELL, _with_text(text, "loss 0.3928 after 250 steps\n")),
        _cell(TEXT_CELL, _with_text(text, "loss 0.3926 after 251 steps\n"))])
    _write(tmp_path / "control" / "agree.ipynb", copy.deepcopy(agree))  # no hook in this folder
    shutil.copy(HOOK, tmp_path / "checked" / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")

    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-c", "pytest.ini", "--rootdir", ".",
                           "--nbval", "--nbval-current-env", "-q", "-rA", "checked", "control"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    outcomes = {cell: outcome for outcome, cell in re.findall(r"^(PASSED|FAILED) (\S+::Cell \d+)", done.stdout, re.MULTILINE)}
    assert outcomes == {
        "checked/agree.ipynb::Cell 0": "PASSED", "checked/agree.ipynb::Cell 1": "PASSED",
        "checked/differ.ipynb::Cell 0": "FAILED", "checked/differ.ipynb::Cell 1": "FAILED",
        "checked/differ.ipynb::Cell 2": "FAILED", "checked/differ.ipynb::Cell 3": "FAILED",
        "control/agree.ipynb::Cell 0": "FAILED", "control/agree.ipynb::Cell 1": "FAILED",
    }, done.stdout[-4000:]


# --- make -----------------------------------------------------------------------------------

def _make(*args, **kw):
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True, **kw)


def test_make_test_runs_the_notebooks_again_with_portable_kernels():
    lines = _make("-n", "test").stdout.splitlines()
    suite = lines.index(".venv/bin/python -m pytest")
    portable = [i for i, line in enumerate(lines) if line.endswith(".venv/bin/python -m pytest notebooks/")]
    assert len(portable) == 1 and portable[0] > suite, lines
    assert "ATEN_CPU_CAPABILITY=default" in lines[portable[0]].split(), lines[portable[0]]
    commands = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert commands[-1] == "make test"


def test_make_experiment_runs_one_as_written_and_refuses_a_missing_name():
    run = _make("-n", "experiment", "NAME=capacity", "ARGS=--quick --seeds 2")
    assert run.returncode == 0 and run.stdout.splitlines()[-1] == ".venv/bin/python -m nlviz.experiments capacity --quick --seeds 2"
    missing = _make("experiment")
    assert missing.returncode == 2 and missing.stdout == ""
    assert len(missing.stderr.splitlines()) == 1 and "NAME is missing" in missing.stderr, missing.stderr


def test_install_says_what_it_does_only_when_it_installs(tmp_path):
    fresh = _make("-n", "install", f"VENV={tmp_path / 'fresh'}").stdout.splitlines()
    say = [i for i, line in enumerate(fresh) if line.startswith("echo ") and "the first time" in line]
    pip = [i for i, line in enumerate(fresh) if " -m pip install " in line]
    assert say and pip and say[0] < pip[0], fresh
    done = tmp_path / "done"
    (done / "bin").mkdir(parents=True)
    (done / "bin" / "python").touch()
    (done / ".installed").touch()  # newer than requirements.txt and pyproject.toml
    again = _make("-n", "install", f"VENV={done}").stdout
    assert "the first time" not in again and "pip install" not in again, again
