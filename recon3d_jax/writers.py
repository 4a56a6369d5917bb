"""Metric writer (metrics.jsonl + TensorBoard) and the entry points' logging set-up."""
from __future__ import annotations

import json
import logging as std_logging
import os
import time

import numpy as np
import tensorboardX
from absl import logging

from recon3d_jax import config_lib

# Key of the cumulative seconds of the training loop (evaluation after training excluded) that
# train.py adds to each metrics row: learning curves against wall time read it.
TRAIN_SECONDS = "time/train_s"


def setup_logging() -> None:
  """INFO logs, minus Orbax's per-checkpoint chatter (its warnings and errors stay)."""
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= std_logging.WARNING or "/orbax/" not in r.pathname)


class MetricWriter:
  """Appends {"step", "time", **scalars} lines to WORKDIR/metrics.jsonl and TB event files.

  With enabled=False it writes nothing: the processes of a multi-process run other than 0 call
  it as process 0 does.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self._path = os.path.join(workdir, "metrics.jsonl")
    self._tb = (tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard")) if enabled
                else None)

  def write(self, step: int, scalars: dict) -> None:
    if self._tb is None:
      return
    scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
    with open(self._path, "a") as f:
      f.write(json.dumps({"step": int(step), "time": time.time(), **scalars}) + "\n")
    for key, value in scalars.items():
      self._tb.add_scalar(key.replace("@", "_at_"), value, step)  # TB tags cannot hold "@".
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def atomic_write(path: str, text: str) -> None:
  """Writes text to path through a temporary file: a reader never sees half a file, and
  concurrent writers (processes) never share a temporary file."""
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "w") as f:
      f.write(text)
  except OSError as e:  # A failed write (a full disk) does not name the file; this does.
    raise OSError(e.errno, e.strerror, path) from None
  os.replace(tmp, path)


def read_metrics(workdir: str) -> list[dict]:
  """The rows of WORKDIR/metrics.jsonl, in order. A torn last line (a process killed while
  writing it) is dropped with a warning, so that the run resumes; a garbled line before it is a
  ConfigError naming the file and the line."""
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    lines = [(number, line) for number, line in enumerate(f, 1) if line.strip()]
  rows = []
  for number, line in lines:
    try:
      rows.append(json.loads(line))
    except ValueError:
      if number != lines[-1][0]:
        raise config_lib.ConfigError(f"{path} line {number} is not JSON ({line[:60]!r}...); "
                                     "expected one JSON object per line") from None
      logging.warning("%s: dropping its torn last line %r (an interrupted write).", path,
                      line[:60])
  return rows


def read_json(path: str, expected: str):
  """The JSON value in `path`; a file that is not JSON (garbled, half-copied) is a ConfigError
  naming it and what it should hold (`expected`)."""
  with open(path) as f:
    try:
      return json.load(f)
    except ValueError as e:
      raise config_lib.ConfigError(f"{path} is not valid JSON ({e}); expected {expected}") from None
