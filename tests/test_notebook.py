"""The quickstart notebook runs headlessly (nbclient) with a short training."""
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "scripts" / (
    "quickstart.ipynb")


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  monkeypatch.setenv("QUICKSTART_STEPS", "30")
  monkeypatch.setenv("QUICKSTART_WORKDIR", str(tmp_path))
  monkeypatch.setenv("XLA_FLAGS", "")  # One CPU device, as on a laptop.
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  NotebookClient(notebook, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = "".join(o.get("text", "") for cell in notebook.cells
                    if cell.cell_type == "code" for o in cell.outputs)
  assert "ROMEO:" in outputs and "step 30" in outputs
  assert "best {'optimizer.learning_rate': " in outputs  # The search.
  assert (tmp_path / "checkpoints" / "30").is_dir()
  assert any(o.get("output_type") == "display_data"
             for cell in notebook.cells if cell.cell_type == "code"
             for o in cell.outputs)  # The loss plot.
