"""The documentation's notebooks run top to bottom in a real Jupyter kernel (nbclient, ipykernel), at a tiny budget:
a notebook that breaks fails here. Each notebook's first cell reads the budget and the folders from the environment
(OPTBENCH_NOTEBOOK_STEPS, OPTBENCH_NOTEBOOK_DATA, OPTBENCH_NOTEBOOK_OUT), so what runs here is the notebook as a reader
gets it, with 2 steps instead of a few hundred (3 evaluations a run, not 11: the evaluations, on 22,000
images each, are what a notebook's runs cost)."""

import json

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO

NOTEBOOKS = sorted((REPO / "docs" / "notebooks").glob("*.ipynb"))
# run directories each notebook trains: the lecturer's 3 optimizers, the researcher's 3 optimizers x 3 seeds
RUNS = {"lecturer.ipynb": 3, "researcher.ipynb": 9}


def test_the_docs_have_the_lecturers_and_the_researchers_notebooks():
    assert {p.name for p in NOTEBOOKS} >= set(RUNS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_notebook_runs_in_a_kernel_and_draws(path, mnist_root, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("OPTBENCH_NOTEBOOK_STEPS", "2")
    monkeypatch.setenv("OPTBENCH_NOTEBOOK_DATA", str(mnist_root))
    monkeypatch.setenv("OPTBENCH_NOTEBOOK_OUT", str(out))
    notebook = nbformat.read(path, as_version=4)
    # a cell that raises fails the test (CellExecutionError, with the cell and its traceback)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    printed = "".join(o.get("text", "") for o in outputs).splitlines()
    assert any(line.startswith("2 steps per run") for line in printed)  # the budget the test asked for
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= (1 if path.name == "lecturer.ipynb" else 2)  # the curves drawn inline
    summaries = [json.loads(p.read_text()) for p in out.rglob("summary.json")]
    assert len(summaries) == RUNS.get(path.name, len(summaries)) and summaries
    assert {s["status"] for s in summaries} == {"completed"} and all(s["step"] == 2 for s in summaries)
