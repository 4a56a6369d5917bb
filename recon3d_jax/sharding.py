"""Where the batch is sharded: a 1-D device mesh `data`, batches split along axis 0 over it.

Parameters and optimizer state are replicated; `jax.jit` with these shardings inserts the
gradient all-reduce itself (pmap-style data parallelism, without pmap). Works unchanged on one
device, on simulated CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=8) and on
several hosts (each process passes its own slice of the global batch).
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh named `data` over `devices` (default: all devices of all processes)."""
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh, axis: int = 0) -> NamedSharding:
  """Split along `axis` over `data` (axis 1 for packed batches, whose axis 0 is the stream)."""
  return NamedSharding(mesh, P(*[None] * axis, "data"))


def shard_batch(batch: dict, mesh: Mesh, axis: int = 0) -> dict:
  """Places this process's slice of the global batch on the mesh, split along `axis`."""
  sharding = data_sharded(mesh, axis)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def pad_batch(batch: dict, multiple: int) -> tuple[dict, int]:
  """Pads axis 0 (repeating the last row) to a multiple of `multiple`; returns (batch, real n)."""
  n = len(next(iter(batch.values())))
  pad = -n % multiple
  return jax.tree.map(lambda x: np.concatenate([x, np.repeat(x[-1:], pad, 0)]), batch), n
