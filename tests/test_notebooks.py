"""The notebooks under notebooks/: stored without outputs, and each executed from top to bottom
(a copy, with nbclient, in a fresh kernel) on the demo model, or on the tiny random fallback model
while the demo model is not bundled, within a time limit."""
import copy
import os
import pathlib
import time

import pytest

import ctxlookup

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NAMES = ["01_quickstart.ipynb", "02_replicate_paper.ipynb", "03_an_neuron.ipynb"]
CELL_TIMEOUT = 300
REQUIRE = os.environ.get("CTXLOOKUP_STRICT_TESTS") == "1"  # set by `make test`, which installs them: fail, never skip


def _deps():
    try:
        import ipykernel  # noqa: F401
        import nbclient  # noqa: F401
        import nbformat  # noqa: F401
    except ImportError as e:
        msg = f"{e.name} is not installed (make deps installs nbclient, nbformat, ipykernel)"
        pytest.fail(msg) if REQUIRE else pytest.skip(msg)


def test_the_notebooks_are_there_and_stripped():
    import json

    assert [p.name for p in NOTEBOOKS] == NAMES
    for p in NOTEBOOKS:
        nb = json.loads(p.read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "python3"
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, f"{p.name}: outputs not stripped"
            assert "attachments" not in cell or not cell["attachments"]


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, tmp_path, monkeypatch):
    _deps()
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(str(ROOT / "notebooks" / name), as_version=4)
    run = copy.deepcopy(nb)
    # the kernel imports this checkout's ctxlookup and writes only under tmp_path
    pkg = os.path.dirname(os.path.dirname(ctxlookup.__file__))
    monkeypatch.setenv("PYTHONPATH", pkg + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("CTXLOOKUP_NOTEBOOK_OUT", str(tmp_path / "work"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    t0 = time.perf_counter()
    client = NotebookClient(run, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}})
    client.execute()
    wall = time.perf_counter() - t0
    nbformat.write(run, str(tmp_path / name))  # the executed copy, for a look
    errors = [o for c in run.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    outputs = [o for c in run.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure was drawn"
    assert all(c.execution_count for c in run.cells if c.cell_type == "code")
    print(f"{name}: {wall:.0f} s, kernel start included")  # tests never assert timings (a loaded CI machine)
    # the repository's copy is untouched
    assert nbformat.read(str(ROOT / "notebooks" / name), as_version=4) == nb
