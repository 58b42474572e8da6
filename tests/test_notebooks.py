"""Every notebook runs top to bottom (on a slice of the bundled data, in a temp workspace)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
#: notebooks that train models or replay policies (1-2 minutes each on 2 cores) run in the
#: slow step, so the default suite stays inside its 15 minutes
SLOW = {"03_interest_tags.ipynb", "04_explore_exploit.ipynb"}
CASES = [
    pytest.param(p, marks=pytest.mark.slow, id=p.name)
    if p.name in SLOW
    else pytest.param(p, id=p.name)
    for p in NOTEBOOKS
]


@pytest.mark.parametrize("path", CASES)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("PROFILER_NOTEBOOK_LIMIT", "300")
    monkeypatch.setenv("PROFILER_NOTEBOOK_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=600, resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert list((tmp_path / "ws").rglob("manifest.json")), "the notebook built no workspace"
