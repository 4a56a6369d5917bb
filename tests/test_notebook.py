"""notebooks/quickstart.ipynb executes end to end on two tiny runs, so it cannot rot."""
import copy
import os

import nbclient
import nbformat
import pytest

from recon3d_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quickstart_notebook_runs_on_two_tiny_runs(tiny_config, tmp_path, monkeypatch):
  workdirs = []
  for seed in (0, 1):
    config = copy.deepcopy(tiny_config)
    config.seed = seed
    workdirs.append(str(tmp_path / f"seed{seed}"))
    train.train_and_evaluate(config, workdirs[-1])
  monkeypatch.setenv("RECON3D_RUN_A", workdirs[0])
  monkeypatch.setenv("RECON3D_RUN_B", workdirs[1])
  notebook = nbformat.read(os.path.join(REPO, "notebooks", "quickstart.ipynb"), as_version=4)
  nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": REPO}}).execute()
  outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  figures = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(figures) == 2  # The samples and the mesh, shown inline.
  assert "F@0.02, A - B:" in outputs[-1]["text"]
