"""Multi-process runs on JAX's distributed runtime: one process per host, process 0 coordinates.

    distributed.initialize(coordinator_address, num_processes, process_id)  # or all unset
    ... jax.devices() is now every process's devices; sharding.make_mesh() spans them.

Explicit flags start the runtime; without them a Slurm job step of several tasks (srun, or a
submitit job with tasks_per_node > 1) starts it from Slurm's environment (JAX's own cluster
detection); otherwise nothing happens and the run is the usual single process. On CPU the
processes' collectives go through gloo (JAX's default `jax_cpu_collectives_implementation`).
Only `is_writer()` (process 0) writes logs, pictures, metrics and eval files; every process
saves and restores its part of the Orbax checkpoints.
"""
from __future__ import annotations

import json
import os
import socket
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from recon3d_jax import config_lib

DEFAULT_TIMEOUT_S = 300  # How long processes wait for the coordinator and for each other.


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1,
               timeout_s: int = DEFAULT_TIMEOUT_S) -> None:
  """Starts jax.distributed from the explicit arguments (all three or none), else from Slurm's
  environment when the job step has several tasks; a no-op for a single process.

  Raises ConfigError for an incomplete or inconsistent set of arguments, and when a process other
  than 0 cannot reach the coordinator within `timeout_s`. (A coordinator whose peers never all
  arrive is ended by JAX itself after `timeout_s`: DEADLINE_EXCEEDED in RegisterTask.)
  """
  unset = {"coordinator_address": "", "num_processes": 0, "process_id": -1}
  explicit = {"coordinator_address": coordinator_address, "num_processes": num_processes,
              "process_id": process_id}
  given = [k for k, v in explicit.items() if v != unset[k]]
  if not given:
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_NODELIST" in os.environ:
      logging.info("Starting jax.distributed from Slurm: task %s of %s.",
                   os.environ.get("SLURM_PROCID"), os.environ["SLURM_NTASKS"])
      jax.distributed.initialize(cluster_detection_method="slurm",
                                 initialization_timeout=timeout_s)
    return
  if len(given) < 3:
    missing = sorted(set(explicit) - set(given))
    raise config_lib.ConfigError(f"--{' --'.join(given)} given without --{' --'.join(missing)}; "
                                 "expected all three flags of a multi-process run, or none")
  if not 0 <= process_id < num_processes:
    raise config_lib.ConfigError(f"--process_id={process_id}: expected 0 <= process_id < "
                                 f"--num_processes={num_processes}")
  if num_processes == 1:
    return
  if process_id != 0:  # JAX aborts the process (no Python error) on an unreachable coordinator.
    _wait_for_coordinator(coordinator_address, timeout_s)
  logging.info("Starting jax.distributed: process %d of %d, coordinator %s (waiting up to %d s "
               "for all processes).", process_id, num_processes, coordinator_address, timeout_s)
  jax.distributed.initialize(coordinator_address, num_processes, process_id,
                             initialization_timeout=timeout_s)


def _wait_for_coordinator(address: str, timeout_s: float) -> None:
  """Returns once a TCP connection to HOST:PORT succeeds; ConfigError after timeout_s."""
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise config_lib.ConfigError(f"--coordinator_address={address!r}: expected HOST:PORT")
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise config_lib.ConfigError(
            f"--coordinator_address={address!r}: no coordinator reachable after {timeout_s} s "
            f"({e.strerror or e}); expected process 0 of the run listening there") from None
      time.sleep(0.5)


def is_writer() -> bool:
  """Whether this process writes the run's files (logs, pictures, metrics, eval, config.json)."""
  return jax.process_index() == 0


def check_same_everywhere(configs, workdirs) -> None:
  """Raises ConfigError (in every process) unless all processes train the same configs into the
  same workdirs, naming the first process and the keys that differ from process 0's."""
  if jax.process_count() == 1:
    return
  runs = [{"workdir": w, "config": json.loads(c.to_json())} for c, w in zip(configs, workdirs)]
  mine = json.dumps(runs[0] if len(runs) == 1 else {f"run{k}": r for k, r in enumerate(runs)},
                    sort_keys=True)
  everyone = _allgather_text(mine)
  for index, theirs in enumerate(everyone):
    if theirs != everyone[0]:
      first, other = json.loads(everyone[0]), json.loads(theirs)
      keys = config_lib.differing_keys(first, other, ignore=())
      details = ", ".join(f"{k}: process 0 has {config_lib.flatten(first).get(k)!r}, process "
                          f"{index} has {config_lib.flatten(other).get(k)!r}" for k in keys[:5])
      raise config_lib.ConfigError(f"the processes were given different configs or workdirs "
                                   f"({details}); expected the same command line in every "
                                   "process")


def value_of_process_0(value):
  """Process 0's `value` (a JSON value) in every process: a decision one process takes for all."""
  return json.loads(_allgather_text(json.dumps(value))[0])


def _allgather_text(text: str) -> list[str]:
  """Every process's `text`, in process order (one all-gather of the lengths, one of the bytes)."""
  data = np.frombuffer(text.encode(), np.uint8)
  lengths = multihost_utils.process_allgather(np.int32(len(data)))
  padded = np.zeros(int(np.max(lengths)), np.uint8)
  padded[:len(data)] = data
  rows = multihost_utils.process_allgather(padded)
  return [bytes(row[:n]).decode() for row, n in zip(rows, lengths)]
