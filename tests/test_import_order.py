"""Import order around a model load and a plot, each order in a fresh interpreter.

On a CUDA build, numpy imported before llama_cpp made llama_model_load_from_file
segfault, and matplotlib imported after it crashed `spec bench --plot` (docs/machine-notes.md,
"GPU"). spec loads llama.cpp's library when spec_cli is imported and draws plots in
a child process; these orders must load, decode and plot, and exit cleanly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

LOAD = """
from spec_cli.llama import Model
m = Model({path!r}, n_ctx=64, label="target")
ids = m.eval_argmax(m.tokenize("The capital of France is"), rows="last")
assert 0 <= int(ids[0]) < m.n_vocab
"""

PLOT = """
import matplotlib
matplotlib.use("Agg")
from matplotlib.figure import Figure
fig = Figure(figsize=(2, 2))
fig.subplots().plot([1, 2, 3], [1, 4, 9])
fig.savefig({png!r})
"""

ORDERS = {
    "numpy, matplotlib, then spec": "import numpy\nimport matplotlib.pyplot\n" + LOAD + PLOT,
    "spec, then numpy and matplotlib": "import spec_cli\n" + LOAD + "import numpy\n" + PLOT,
    "llama_cpp first, matplotlib after the load": "import llama_cpp\n" + LOAD + PLOT,
    "matplotlib before spec, plot before the load": "import matplotlib\n" + PLOT + LOAD,
}


@pytest.mark.parametrize("order", list(ORDERS))
def test_model_load_and_plot_in_any_import_order(order, gemma_path, tmp_path):
    png = tmp_path / "p.png"
    code = textwrap.dedent(ORDERS[order]).format(path=str(gemma_path), png=str(png)) + "\nprint('done')\n"
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, (order, proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.strip().endswith("done")
    assert png.stat().st_size > 0


def test_importing_spec_loads_llama_cpp_library_before_numpy():
    code = (
        "import sys\nimport spec_cli, spec_cli._preload as p\n"
        "print(p._handle is not None, 'numpy' in sys.modules, 'llama_cpp' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # the library is loaded, and neither numpy nor llama_cpp's Python package came with it
    assert proc.stdout.split() == ["True", "False", "False"]


def test_the_bench_plot_child_never_loads_llama_cpp():
    """`spec bench --plot` draws in a child started like this one: llama.cpp must stay out of it."""
    code = (
        "import sys, runpy\n"
        "import spec_cli._preload as p, spec_cli.bench.plot, matplotlib.figure\n"
        "print(p._handle is None, 'llama_cpp' in sys.modules)\n"
    )
    env = {**os.environ, "SPEC_NO_PRELOAD": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "False"]
