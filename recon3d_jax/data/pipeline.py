"""Input pipeline: TFDS data source -> grain (shuffle, per-process slice, sample points, batch).

Training batches (per process, B = global batch / process count, M = points_per_step):
  image (B,H,W,3) float32 in [0,1]; depth (B,H,W); normal (B,H,W,3); mask (B,H,W) float32;
  depth_valid, normal_valid (B,H,W) float32: pixels whose 2.5D target exists (mask minus holes);
  level (B,) int32 supervision level index into corrupt.LEVELS, -1 for clean targets;
  points (B,M,3) viewer-centred query points, half uniform in the 1.1 box, half near the surface;
  occ (B,M) float32 inside/outside labels; voxels (B,R,R,R) uint8 [x,y,z] occupancy grid;
  depth_clean, normal_clean: the uncorrupted maps (inputs of the `oracle` arm only);
  index (B,) instance index in its split.
Only the training depth/normal targets are corrupted (docs/DESIGN.md section 5); input images and
every evaluation target stay clean. An instance's depth and normal targets come from one
simulated 2.5D acquisition: they share their holes and bias direction (the same random draws),
as maps from one sensor or estimator do; `both` then sees one consistent label pair.
Hooks for the paper's negative results: `data.max_level` drops training instances above a level,
`data.curriculum` orders training from easy to hard levels (`CurriculumSampler`).
The grain iterator's state is checkpointed with the model, so a resumed run sees exactly the
batches an uninterrupted run would.
"""
from __future__ import annotations

import sys
from typing import Iterator

import grain.python as grain
import jax
import numpy as np

from recon3d_jax.config_lib import ConfigError
from recon3d_jax.data import builder as builder_lib
from recon3d_jax.data import corrupt, synth

DOMAINS = synth.DOMAINS
SPLITS = ("train", "validation", "test")
CLEAN = "clean"  # config.data.supervision value for uncorrupted 2.5D targets.


def parse_supervision(spec: str) -> str | dict[str, float] | None:
  """config.data.supervision -> a corrupt.level_mixture spec, or None for clean targets.

  Accepted: "clean", a level name ("medium"), "uniform", or "minimal:0.5,extreme:0.5".
  """
  if spec == CLEAN:
    return None
  if ":" not in spec:
    corrupt.level_mixture(spec, 0, np.random.default_rng(0))  # Validates the name.
    return spec
  mixture = {}
  for item in spec.split(","):
    name, _, p = item.partition(":")
    try:
      mixture[name.strip()] = float(p)
    except ValueError:
      raise ValueError(f"supervision mixture item {item!r}: expected level:probability") from None
  corrupt.level_mixture(mixture, 0, np.random.default_rng(0))  # Validates names and sums.
  return mixture


def instance_levels(spec: str, num_instances: int, seed: int) -> np.ndarray | None:
  """(N,) level index of every training instance (fixed per dataset and seed), or None."""
  mixture = parse_supervision(spec)
  if mixture is None:
    return None
  return corrupt.level_mixture(mixture, num_instances, np.random.default_rng(seed))


def get_builder(data_config) -> builder_lib.Recon3dSynth:
  """The TFDS builder of `config.data` (see data/builder.py and data/benchmarks.py)."""
  return builder_lib.make_builder(builder_lib.SynthConfig.from_data_config(data_config),
                                  data_config.data_dir)


def load_sources(data_config) -> dict:
  """Builds the dataset on first use (with TFDS progress bars), then returns split -> source.

  A damaged dataset (a missing dataset_info.json, a missing, truncated or garbled record file)
  is a ConfigError naming its folder and suggesting a rebuild: here for what opening it and
  reading each split's first and last record finds, later for a garbled record read in training.
  """
  builder = get_builder(data_config)
  builder.download_and_prepare()
  try:
    sources = builder.as_data_source()
    if missing := [split for split in SPLITS if split not in sources]:
      raise FileNotFoundError(f"no {missing} split: is its dataset_info.json missing?")
    for source in sources.values():
      source[0], source[len(source) - 1]  # pylint: disable=pointless-statement
  except Exception as e:  # pylint: disable=broad-except  (TFDS, JSON and Riegeli errors alike)
    raise damaged_dataset(builder.data_dir, e) from e
  return {split: CheckedSource(source, builder.data_dir) for split, source in sources.items()}


def damaged_dataset(folder: str, error: Exception) -> ConfigError:
  """The error for a dataset that cannot be read: its folder, the reason, and the remedy."""
  reason = (str(error).strip().splitlines() or [""])[0][:200]
  return ConfigError(f"the dataset in {folder} is damaged ({type(error).__name__}: {reason}); "
                     "expected a complete dataset: delete that folder to rebuild it")


class CheckedSource(grain.RandomAccessDataSource):
  """`source`, whose unreadable records raise ConfigError naming the dataset's folder."""

  def __init__(self, source, folder: str):
    self.source = source
    self.folder = folder

  def __len__(self) -> int:
    return len(self.source)

  def __repr__(self) -> str:
    # Grain's checkpointed iterator state records the source's repr and refuses to restore into
    # another: this wrapper must not change it.
    return repr(self.source)

  def __getitem__(self, i: int):
    try:
      return self.source[i]
    except Exception as e:  # pylint: disable=broad-except
      raise damaged_dataset(self.folder, e) from e


def to_model_inputs(example: dict) -> dict:
  """uint8 storage -> float32 model inputs (works on one example or a batch)."""
  out = dict(example)
  out["image"] = example["image"].astype(np.float32) / 255.0
  out["mask"] = example["mask"].astype(np.float32)
  return out


def corrupt_targets(depth: np.ndarray, normal: np.ndarray, mask: np.ndarray, level: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, ...]:
  """One simulated 2.5D acquisition at `level`: depth (H,W), normal (H,W,3), mask (H,W) ->
  (depth, depth_valid, normal, normal_valid). Both maps use the same random draws, so they share
  their holes and bias direction."""
  acquisition = int(rng.integers(2 ** 63))
  depth, depth_valid = corrupt.corrupt_depth(depth, mask, level,
                                             np.random.default_rng(acquisition))
  normal, normal_valid = corrupt.corrupt_normals(normal, mask, level,
                                                 np.random.default_rng(acquisition))
  return depth, depth_valid, normal, normal_valid


class TrainExample(grain.RandomMapTransform):
  """Record -> training example: M query points (M/2 uniform, the rest near the surface) and,
  if `levels` is given, depth/normal targets corrupted at the instance's supervision level."""

  def __init__(self, num_points: int, levels: np.ndarray | None):
    self.num_points = num_points
    self.levels = levels

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    m_uniform = self.num_points // 2
    iu = rng.choice(len(element["points_uniform"]), m_uniform, replace=False)
    inear = rng.choice(len(element["points_near"]), self.num_points - m_uniform, replace=False)
    example = to_model_inputs(element)
    mask = example["mask"]
    depth, depth_valid = element["depth"], mask
    normal, normal_valid = element["normal"], mask
    level = -1
    if self.levels is not None:
      level = int(self.levels[element["index"]])
      depth, depth_valid, normal, normal_valid = corrupt_targets(depth, normal, mask, level, rng)
    return dict(
        image=example["image"], mask=mask, index=element["index"],
        depth=depth, depth_valid=depth_valid.astype(np.float32),
        normal=normal, normal_valid=normal_valid.astype(np.float32), level=np.int32(level),
        points=np.concatenate([element["points_uniform"][iu], element["points_near"][inear]]),
        occ=np.concatenate([element["occ_uniform"][iu],
                            element["occ_near"][inear]]).astype(np.float32),
        voxels=element["voxels"], depth_clean=element["depth"], normal_clean=element["normal"])


class SubsetSource(grain.RandomAccessDataSource):
  """The records of `source` at `positions` (e.g. the instances kept by `data.max_level`)."""

  def __init__(self, source, positions: np.ndarray):
    self.source = source
    self.positions = np.asarray(positions)

  def __len__(self) -> int:
    return len(self.positions)

  def __getitem__(self, i: int):
    return self.source[int(self.positions[i])]


class CurriculumSampler:
  """Grain sampler that unlocks supervision levels from easy to hard over the run.

  The run's `total_records` draws are cut into as many equal stages as the data has levels; in
  stage s, draws come from the instances whose level is among the s+1 easiest levels present,
  each stage pool visited in a fresh random order per pass. Draw j is a pure function of
  (seed, j), so the checkpointed loader state resumes it exactly.
  """

  def __init__(self, record_levels: np.ndarray, total_records: int, seed: int):
    self.record_levels = np.asarray(record_levels)
    self.stage_levels = np.unique(self.record_levels)
    self.stage_length = max(1, -(-total_records // len(self.stage_levels)))
    self.seed = seed
    self._cached = (None, None)  # ((stage, pass), permutation) of the last pool pass.

  def __len__(self) -> int:
    return sys.maxsize

  def _pool_order(self, stage: int, pass_index: int) -> np.ndarray:
    if self._cached[0] != (stage, pass_index):
      pool = np.flatnonzero(self.record_levels <= self.stage_levels[stage])
      rng = np.random.default_rng([self.seed, stage, pass_index])
      self._cached = ((stage, pass_index), rng.permutation(pool))
    return self._cached[1]

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    stage = min(index // self.stage_length, len(self.stage_levels) - 1)
    offset = index - stage * self.stage_length
    pool_size = int(np.sum(self.record_levels <= self.stage_levels[stage]))
    order = self._pool_order(stage, offset // pool_size)
    return grain.RecordMetadata(index=index, record_key=int(order[offset % pool_size]),
                                rng=np.random.Generator(np.random.Philox(key=self.seed + index)))


class ProcessSlice:
  """Grain sampler: this process's draws of `sampler`, whose draws form global batches of
  `global_batch` in order. Process p of P reads rows [p*b, (p+1)*b) of each, b = global_batch / P:
  its draw i is the global draw (i // b) * global_batch + p * b + i % b, with that draw's record
  and random generator, so the processes' batches together are the one-process global batch,
  point sampling included."""

  def __init__(self, sampler, global_batch: int, process_index: int, process_count: int):
    self.sampler = sampler
    self.global_batch = global_batch
    self.process_index = process_index
    self.process_count = process_count

  def __len__(self) -> int:
    return sys.maxsize  # Training samplers are infinite.

  def __repr__(self) -> str:
    # Grain's checkpointed state records it: a process refuses another process's loader state.
    return (f"ProcessSlice({self.sampler!r}, global_batch={self.global_batch}, "
            f"process={self.process_index}/{self.process_count})")

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    local = self.global_batch // self.process_count
    return self.sampler[(index // local) * self.global_batch + self.process_index * local
                        + index % local]


def train_loader(source, *, global_batch_size: int, points_per_step: int, seed: int,
                 supervision: str = CLEAN, max_level: str = "", curriculum: bool = False,
                 total_steps: int | None = None) -> grain.DataLoader:
  """Infinite shuffled loader over `source`; each JAX process loads its slice of every global
  batch (`ProcessSlice`).

  supervision: quality of the 2.5D training targets (see `parse_supervision`); instance levels
  are drawn once from `seed`. max_level: drop instances above this level. curriculum: easy to
  hard over `total_steps` steps (`CurriculumSampler`). Both need corrupted supervision.
  """
  levels = instance_levels(supervision, len(source), seed)
  if (max_level or curriculum) and levels is None:
    raise ValueError("data.max_level and data.curriculum act on supervision levels; expected "
                     f"data.supervision to be a level or a mixture, got {supervision!r}")
  process_count = jax.process_count()
  if global_batch_size % process_count:
    raise ValueError(f"batch_size={global_batch_size} is not divisible by the "
                     f"{process_count} JAX processes")
  if max_level:
    source = SubsetSource(source, _positions_at_most(source, levels, max_level))
  # One global order of draws for any process count; ProcessSlice gives each process its part.
  # (Grain's per-process sharding would give each process a different shuffle of its records.)
  shard = grain.ShardOptions(shard_index=0, shard_count=1, drop_remainder=True)
  if curriculum:
    if total_steps is None:
      raise ValueError("a curriculum needs total_steps to pace its stages")
    sampler = CurriculumSampler(_record_levels(source, levels), total_steps * global_batch_size,
                                seed)
  else:
    sampler = grain.IndexSampler(num_records=len(source), shard_options=shard, shuffle=True,
                                 num_epochs=None, seed=seed)
  if process_count > 1:
    sampler = ProcessSlice(sampler, global_batch_size, jax.process_index(), process_count)
  return grain.DataLoader(
      data_source=source, sampler=sampler, worker_count=0, shard_options=shard,
      operations=[TrainExample(points_per_step, levels),
                  grain.Batch(global_batch_size // process_count, drop_remainder=True)])


def _record_levels(source, levels: np.ndarray) -> np.ndarray:
  """(len(source),) level of each stored record (records are stored in hashed order)."""
  return levels[[int(source[i]["index"]) for i in range(len(source))]]


def _positions_at_most(source, levels: np.ndarray, max_level: str) -> np.ndarray:
  keep = corrupt.filter_max_level(_record_levels(source, levels), max_level)
  if not keep.any():
    raise ValueError(f"data.max_level={max_level!r} keeps no training instance")
  return np.flatnonzero(keep)


def eval_batches(source, batch_size: int, max_instances: int) -> Iterator[dict]:
  """In-order batches of whole records (all fields, model-ready) over the first instances.

  The last batch may be smaller; callers pad it to their device count.
  """
  count = min(len(source), max_instances)
  for start in range(0, count, batch_size):
    records = [source[i] for i in range(start, min(start + batch_size, count))]
    batch = {k: np.stack([r[k] for r in records]) for k in records[0]}
    yield to_model_inputs(batch)
