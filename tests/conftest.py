"""Test set-up: 8 simulated CPU devices, so data parallelism is exercised on any machine."""
import os
import tempfile

# Must be set before JAX initialises its backend.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the xdist workers and the subprocesses the end-to-end
# tests start: the same renderers and train steps then compile once per machine, not per process.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), "recon3d_jax_test_jax_cache"))

import pytest  # noqa: E402

import slurm_cluster  # noqa: E402  (tests/, on sys.path beside this conftest)


def crash_metric_writes_at(monkeypatch, step: int, prefix: str = "") -> None:
  """Makes writing the metrics row of `step` (the first whose keys start with `prefix`) raise
  KeyboardInterrupt: a crash mid-run, after the checkpoints before it (undo with
  monkeypatch.undo())."""
  from recon3d_jax import writers
  original_write = writers.MetricWriter.write

  def write(self, at, scalars):
    if at == step and any(k.startswith(prefix) for k in scalars):
      raise KeyboardInterrupt("simulated crash")
    original_write(self, at, scalars)

  monkeypatch.setattr(writers.MetricWriter, "write", write)


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory):
  """The `runlocal` default config with a session-wide data dir (the dataset is built once)."""
  from configs import default
  config = default.get_config("runlocal")
  config.data.data_dir = str(tmp_path_factory.mktemp("data_dir"))
  return config


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
  """A local single-node Slurm for the tests marked `slurm`, torn down after the session.

  Skips (with the reason and the daemons' log tails) where it cannot start: Slurm not
  installed, not root, or the daemons fail. Never leaves a daemon or job behind.
  """
  cluster = slurm_cluster.Cluster(tmp_path_factory.mktemp("slurm"))
  try:
    cluster.start()
  except slurm_cluster.Unavailable as e:
    cluster.stop()
    pytest.skip(str(e))
  except BaseException:
    cluster.stop()
    raise
  try:
    yield cluster
  finally:
    cluster.stop()
