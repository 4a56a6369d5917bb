"""Sweeps as data: expand a study config into runs, and keep each run's state on disk.

A study config (configs/study/*.py) declares `get_config(arg)` (the base config),
`sweep(arg)` (dicts of dotted-key overrides, one per run) and what the report reads
(`PRIMARY_METRIC`, `BASELINE_ARM`, `OURS_ARM`, `TABLES`; kept in the manifest as "study"). This
module turns them into runs:

    SWEEP_DIR/manifest.json          config spec, study settings, base config, id -> overrides
    SWEEP_DIR/runs/<id>/             the run's workdir (train.train_and_evaluate writes here)
    SWEEP_DIR/runs/<id>/DONE         written atomically after the results: the run is finished
    SWEEP_DIR/runs/<id>/ERROR        the traceback of the last failed attempt
    SWEEP_DIR/runs/<id>/LOCK         {pid, host, job}: an attempt is running; refreshed every
                                     HEARTBEAT_S seconds
    SWEEP_DIR/runs/<id>/log.txt      the run's logs (local backend)

A run id is a hash of its overrides (order-independent), so relaunching a sweep finds its runs.
An override value that is a dict refers to another run of the same sweep (its overrides): the
value becomes that run's workdir, and the run depends on it (e.g. `init_from` of arm=full names
its stage1 run). Dependencies run first; a run whose dependency failed fails as blocked.

Nothing here imports JAX at module level: the launcher process stays JAX-free so that it can
spawn workers safely. `_train` imports the training code inside the worker.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import socket
import sys
import threading
import time
import traceback
from typing import Any, Iterable, Mapping, Sequence

import ml_collections
from absl import logging

from recon3d_jax import config_lib, packing, writers

MANIFEST = "manifest.json"
DONE, ERROR, LOCK = "DONE", "ERROR", "LOCK"
HEARTBEAT_S = 60  # A running attempt touches its LOCK this often...
STALE_AFTER_S = 600  # ...so a LOCK untouched this long belongs to a dead attempt on any host.
STATES = ("done", "running", "failed", "pending")


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a sweep: overrides as declared (references are dicts) and the ids it needs."""
  id: str
  overrides: dict
  depends_on: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Study:
  """A loaded study config: spec "path.py[:arg]", its module, base config and runs in order
  (every run after its dependencies)."""
  spec: str
  module: Any
  base: ml_collections.ConfigDict
  runs: tuple[Run, ...]

  @property
  def settings(self) -> dict:
    """The study's declared analysis settings (stored in the manifest for the report)."""
    return dict(primary_metric=self.module.PRIMARY_METRIC,
                baseline_arm=self.module.BASELINE_ARM, ours_arm=self.module.OURS_ARM,
                tables=list(self.module.TABLES))


# ---------------------------------------------------------------------------------------------
# Run ids and sweep expansion.
# ---------------------------------------------------------------------------------------------
def run_id(overrides: Mapping[str, Any]) -> str:
  """Stable 12-hex-digit id of a run's overrides: independent of key order, nested included."""
  text = json.dumps(_plain(overrides), sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def _plain(value):
  """Overrides -> JSON-able values (tuples become lists, nested mappings plain dicts)."""
  if isinstance(value, Mapping):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def expand(base: ml_collections.ConfigDict, sweep: Iterable[Mapping[str, Any]]) -> list[Run]:
  """Validates a sweep's overrides against `base` and returns its runs, dependencies first.

  Raises ConfigError (before anything runs) for an unknown key (with near matches), a run
  declared twice, or a reference to a run that is not in the sweep.
  """
  declared: dict[str, dict] = {}
  for overrides in sweep:
    overrides = _plain(overrides)
    # A reference is checked as the string it becomes (the referenced run's id stands in for
    # its workdir).
    config_lib.apply_overrides(base, {k: run_id(v) if isinstance(v, dict) else v
                                      for k, v in overrides.items()})
    rid = run_id(overrides)
    if rid in declared:
      raise config_lib.ConfigError(f"the sweep declares run {overrides} twice; expected each "
                                   "set of overrides once")
    declared[rid] = overrides
  runs = {}
  for rid, overrides in declared.items():
    deps = []
    for key, value in overrides.items():
      if isinstance(value, dict):
        dep = run_id(value)
        if dep not in declared:
          raise config_lib.ConfigError(
              f"run {overrides}: {key}={value} refers to a run that is not in the sweep; "
              "expected the overrides of another run of the same sweep")
        deps.append(dep)
    runs[rid] = Run(rid, overrides, tuple(deps))
  ordered: list[Run] = []
  seen: set[str] = set()

  def visit(rid):
    if rid not in seen:
      seen.add(rid)
      for dep in runs[rid].depends_on:
        visit(dep)
      ordered.append(runs[rid])

  for rid in runs:
    visit(rid)
  return ordered


def load_study(spec: str) -> Study:
  """Loads "configs/study/main.py[:arg]": its base config and runs (validated)."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise config_lib.ConfigError(f"study config {path!r} does not exist; expected a .py file "
                                 "declaring get_config(arg) and sweep(arg)")
  name = "study_" + hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:8]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  required = ("get_config", "sweep", "PRIMARY_METRIC", "BASELINE_ARM", "OURS_ARM", "TABLES")
  missing = [a for a in required if not hasattr(module, a)]
  if missing:
    raise config_lib.ConfigError(f"study config {path!r} lacks {missing}; expected "
                                 f"{', '.join(required)}")
  try:
    study_tables({"tables": list(module.TABLES)})
  except config_lib.ConfigError as e:
    raise config_lib.ConfigError(f"study config {path!r}: {e}") from None
  base = module.get_config(arg or None)
  return Study(spec, module, base, tuple(expand(base, module.sweep(arg or None))))


# The tables recon3d_jax.study.report builds, by their keys in report.json, in report order; a
# study config declares the ones it is for (`TABLES`). "power" comes last: it reads the others.
TABLE_NAMES = ("table1_main", "table1b_pairwise", "table2_benchmarks", "table3_levels",
               "table4_ablation", "table5_scaling", "table6_overhead", "architectures",
               "negatives", "negatives_ensemble", "power")


def study_tables(settings: dict) -> list[str]:
  """The tables a study declared (its manifest's "study" settings), in report order;
  ConfigError for a name the report does not know."""
  # Manifests written before study configs declared their tables have none: the report then
  # tries every table, and each appears only where the sweep has its runs.
  names = settings.get("tables", list(TABLE_NAMES))
  unknown = [n for n in names if n not in TABLE_NAMES]
  if unknown:
    raise config_lib.ConfigError(f"study tables {unknown}: expected names among "
                                 f"{list(TABLE_NAMES)}")
  return [n for n in TABLE_NAMES if n in names]


# ---------------------------------------------------------------------------------------------
# Manifest and per-run configs.
# ---------------------------------------------------------------------------------------------
def run_dir(sweep_dir: str, rid: str) -> str:
  return os.path.join(os.path.abspath(sweep_dir), "runs", rid)


def write_manifest(sweep_dir: str, study: Study) -> dict:
  """Writes SWEEP_DIR/manifest.json; refuses a sweep dir holding another sweep's base config."""
  base = json.loads(study.base.to_json())
  path = os.path.join(sweep_dir, MANIFEST)
  if os.path.exists(path):
    old = read_manifest(sweep_dir)
    # Only the data location may move: finished and new runs must share every other setting
    # (evaluation included), so that one report never mixes them.
    differing = config_lib.differing_keys(old["base"], base, ignore=("data.data_dir",))
    if differing:
      raise config_lib.ConfigError(
          f"sweep dir {sweep_dir!r} holds runs of a different base config (differs at "
          f"{differing[:5]}); expected the same study config, or use a new --sweep_dir")
  manifest = dict(config=study.spec, study=study.settings, base=base,
                  runs={r.id: dict(overrides=r.overrides, depends_on=list(r.depends_on))
                        for r in study.runs})
  os.makedirs(os.path.join(sweep_dir, "runs"), exist_ok=True)
  writers.atomic_write(path, json.dumps(manifest, indent=2))
  return manifest


def read_manifest(sweep_dir: str) -> dict:
  path = os.path.join(sweep_dir, MANIFEST)
  if not os.path.exists(path):
    raise config_lib.ConfigError(f"sweep dir {sweep_dir!r} has no {MANIFEST}; expected a "
                                 "directory made by launch/sweep.py")
  return writers.read_json(path, "the manifest of a sweep (written by launch/sweep.py)")


def run_config(manifest: dict, rid: str, sweep_dir: str) -> ml_collections.ConfigDict:
  """The full config of run `rid`: base + overrides, references resolved to workdirs."""
  return _full_config(ml_collections.ConfigDict(manifest["base"]),
                      manifest["runs"][rid]["overrides"], sweep_dir)


def _full_config(base: ml_collections.ConfigDict, overrides: dict,
                 sweep_dir: str) -> ml_collections.ConfigDict:
  return config_lib.apply_overrides(base, {
      k: run_dir(sweep_dir, run_id(v)) if isinstance(v, dict) else v
      for k, v in overrides.items()})


def check_values(study: Study, sweep_dir: str) -> None:
  """Raises ConfigError naming the first run whose full config has a bad value (what
  experiment.validate checks, beyond the keys `expand` checks), before anything is written or
  launched. Validating imports JAX, so it runs in a spawned process."""
  configs = {r.id: _full_config(study.base, r.overrides, sweep_dir).to_dict()
             for r in study.runs}
  with _spawn().Pool(1) as pool:
    pool.apply(validate_configs, (configs,))


def validate_configs(configs: dict[str, dict]) -> None:
  """experiment.validate on each run id -> config dict; a ConfigError names the run."""
  from recon3d_jax import experiment  # Imports JAX: only ever in a spawned process.
  for rid, config in configs.items():
    try:
      experiment.validate(ml_collections.ConfigDict(config))
    except config_lib.ConfigError as e:
      raise config_lib.ConfigError(f"run {rid}: {e}") from None


# ---------------------------------------------------------------------------------------------
# Locks.
# ---------------------------------------------------------------------------------------------
def _job_token() -> str | None:
  """Identifies a Slurm job across requeues (same array job and task), else None."""
  env = os.environ
  if "SLURM_ARRAY_JOB_ID" in env:
    return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
  return env.get("SLURM_JOB_ID")


def _pid_alive(pid: int) -> bool:
  """Whether process `pid` of this host is running (a zombie, never reaped, is not)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Exists, owned by someone else.
    return True
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rpartition(")")[2].split()[0] != "Z"
  except OSError:  # No procfs (not Linux): trust kill.
    return True


def lock_is_stale(path: str) -> bool:
  """A LOCK whose holder is gone: a dead pid on this host, an earlier attempt of this Slurm
  job (requeued), or no heartbeat for STALE_AFTER_S seconds (any host)."""
  try:
    with open(path) as f:
      holder = json.load(f)
    age = time.time() - os.path.getmtime(path)
  except (OSError, ValueError):
    return True  # Vanished or half-written by a dead writer.
  token = _job_token()
  if token is not None and holder.get("job") == token:
    return True
  if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder["pid"])):
    return True
  return age > STALE_AFTER_S


class RunLock:
  """Exclusive lock on one run (O_CREAT|O_EXCL of WORKDIR/LOCK) with a heartbeat thread.

  `acquire()` returns False if a live attempt holds it; a stale lock is taken over.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK)
    self._stop = threading.Event()
    self._thread = None

  def acquire(self) -> bool:
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    for _ in range(2):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
      except FileExistsError:
        if not lock_is_stale(self.path):
          return False
        logging.warning("Taking over the stale lock %s.", self.path)
        _remove(self.path)
        continue
      with os.fdopen(fd, "w") as f:
        json.dump(dict(pid=os.getpid(), host=socket.gethostname(), job=_job_token(),
                       time=time.time()), f)
      self._thread = threading.Thread(target=self._heartbeat, daemon=True)
      self._thread.start()
      return True
    return False

  def _heartbeat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        os.utime(self.path)
      except OSError:
        return

  def release(self) -> None:
    self._stop.set()
    _remove(self.path)


def _remove(path: str) -> None:
  try:
    os.remove(path)
  except FileNotFoundError:
    pass


# ---------------------------------------------------------------------------------------------
# Run states.
# ---------------------------------------------------------------------------------------------
def run_state(sweep_dir: str, rid: str) -> str:
  """"done" | "running" | "failed" | "pending", from the markers in the run's workdir."""
  workdir = run_dir(sweep_dir, rid)
  if os.path.exists(os.path.join(workdir, DONE)):
    return "done"
  lock = os.path.join(workdir, LOCK)
  if os.path.exists(lock) and not lock_is_stale(lock):
    return "running"
  if os.path.exists(os.path.join(workdir, ERROR)):
    return "failed"
  return "pending"


def status(sweep_dir: str) -> dict[str, list[str]]:
  """State -> run ids (manifest order) for every run of the sweep."""
  result = {s: [] for s in STATES}
  for rid in read_manifest(sweep_dir)["runs"]:
    result[run_state(sweep_dir, rid)].append(rid)
  return result


def format_status(sweep_dir: str) -> str:
  states = status(sweep_dir)
  lines = [", ".join(f"{s}: {len(states[s])}" for s in STATES)]
  for rid in states["failed"]:
    lines.append(f"failed {rid}: {error_summary(sweep_dir, rid)}")
  return "\n".join(lines)


def error_summary(sweep_dir: str, rid: str) -> str:
  """The first line of a failed run's ERROR file: the exception (or why it was blocked)."""
  with open(os.path.join(run_dir(sweep_dir, rid), ERROR)) as f:
    return f.readline().strip()


def mark_failed(sweep_dir: str, rid: str, message: str) -> None:
  """Records a failure outside the run itself (blocked, or its worker died)."""
  workdir = run_dir(sweep_dir, rid)
  os.makedirs(workdir, exist_ok=True)
  writers.atomic_write(os.path.join(workdir, ERROR), message.rstrip() + "\n")


# ---------------------------------------------------------------------------------------------
# Executing one run (inside a worker: a spawned process or a Slurm job).
# ---------------------------------------------------------------------------------------------
def run_pack(sweep_dir: str, rids: Sequence[str], process_index: int = 0,
             process_count: int = 1) -> dict[str, str]:
  """Runs (or resumes) runs `rids` as one pack (train.train_and_evaluate_pack; one run alone
  through train.train_and_evaluate). Returns id -> "done", "skipped" (already done), "locked"
  (another attempt is live), "blocked" (a dependency is not done) or "failed" (ERROR written).

  Runs that are done, locked or blocked drop out and the others train. Never raises for a
  failure of the runs themselves: the traceback goes to each WORKDIR/ERROR. The processes of a
  multi-process job (after distributed.initialize) all call it: process 0 alone takes the locks
  and writes DONE and ERROR, and all train the runs it chose.
  """
  results: dict[str, str] = {}
  locks: list[RunLock] = []
  writer = process_index == 0
  try:
    manifest = read_manifest(sweep_dir)
    for rid in rids if writer else []:
      workdir = run_dir(sweep_dir, rid)
      if os.path.exists(os.path.join(workdir, DONE)):
        results[rid] = "skipped"
        continue
      lock = RunLock(workdir)
      if not lock.acquire():
        logging.warning("Run %s is being run by another process (%s); skipping it.", rid,
                        lock.path)
        results[rid] = "locked"
        continue
      locks.append(lock)
      if os.path.exists(os.path.join(workdir, DONE)):  # Finished while we waited for the lock.
        results[rid] = "skipped"
        continue
      _remove(os.path.join(workdir, ERROR))
      for dep in manifest["runs"][rid]["depends_on"]:
        if not os.path.exists(os.path.join(run_dir(sweep_dir, dep), DONE)):
          mark_failed(sweep_dir, rid, f"blocked: dependency {dep} is "
                      f"{run_state(sweep_dir, dep)}, expected done")
          results[rid] = "blocked"
          break
    if process_count > 1:
      from recon3d_jax import distributed  # pylint: disable=import-outside-toplevel
      results = distributed.value_of_process_0(results)
    todo = [rid for rid in rids if rid not in results]
    if todo:
      results.update(_train(sweep_dir, manifest, todo, writer))
    return results
  finally:
    for lock in locks:
      lock.release()


def _train(sweep_dir: str, manifest: dict, rids: list[str], writer: bool = True
           ) -> dict[str, str]:
  """Trains runs `rids` (locked, not done) together; writes DONE or ERROR for each (if
  `writer`)."""
  configs = [run_config(manifest, rid, sweep_dir) for rid in rids]
  workdirs = [run_dir(sweep_dir, rid) for rid in rids]
  start = time.time()
  try:
    from recon3d_jax import train  # Imports JAX: only ever inside a worker.
    if len(rids) == 1:
      train.train_and_evaluate(configs[0], workdirs[0])
    else:
      train.train_and_evaluate_pack(configs, workdirs)
  except Exception as e:  # pylint: disable=broad-except
    logging.exception("Run(s) %s failed.", rids)
    packed = f" (packed with {rids})" if len(rids) > 1 else ""
    for rid in rids if writer else []:  # The exception first: what --status and report show.
      mark_failed(sweep_dir, rid, f"{type(e).__name__}: {e}{packed}\n\n{traceback.format_exc()}")
    return dict.fromkeys(rids, "failed")
  for workdir in workdirs if writer else []:
    writers.atomic_write(os.path.join(workdir, DONE), json.dumps(dict(
        host=socket.gethostname(), finished=time.time(), attempt_s=time.time() - start,
        packed_with=len(rids))))
  return dict.fromkeys(rids, "done")


def plan_packs(manifest: dict, sweep_dir: str, rids: Sequence[str],
               pack_size: int) -> list[list[str]]:
  """Groups runs `rids` into packs of at most `pack_size` that can train as one program
  (packing.signature) and are at the same checkpoint step. Runs with dependencies, and runs
  that failed before (so that one run's failure cannot stop the others again), run alone."""
  def key(rid):
    if manifest["runs"][rid]["depends_on"] or run_state(sweep_dir, rid) == "failed":
      return None
    sig = packing.signature(run_config(manifest, rid, sweep_dir).to_dict())
    return None if sig is None else (sig, latest_checkpoint_step(run_dir(sweep_dir, rid)))
  return [[rids[i] for i in pack] for pack in packing.group([key(r) for r in rids], pack_size)]


def latest_checkpoint_step(workdir: str) -> int:
  """The newest step under WORKDIR/checkpoints (Orbax's step folders), 0 if none; JAX-free."""
  try:
    return max((int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()),
               default=0)
  except FileNotFoundError:
    return 0


EXIT_CODES = {"done": 0, "skipped": 0, "failed": 1, "blocked": 1, "locked": 3}


def limit_threads(threads: int, cpus: list[int] | None) -> None:
  """Limits this process's compute threads; call before JAX is imported.

  Pins the process to `cpus` (Linux) and caps the BLAS/OpenMP pools; with one thread XLA's
  multi-threaded Eigen is switched off as well.
  """
  if "jax" in sys.modules:
    raise RuntimeError("limit_threads must run before JAX is imported")
  for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(threads)
  if threads == 1:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_multi_thread_eigen=false").strip()
  if cpus and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, cpus)


def share_compilation_cache(sweep_dir: str) -> None:
  """Points this process at the sweep's persistent XLA cache; call before JAX is imported.

  Runs of a sweep mostly differ in seed, data or loss weights, so many of their programs are
  identical: a run reuses what an earlier run compiled instead of compiling it again (on CPU,
  compilation is a large share of a small run).
  """
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(sweep_dir, "jax_cache"))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def worker_main(sweep_dir: str, pack: list[str], threads: int, cpus: list[int] | None) -> None:
  """Entry of a spawned local worker: limits threads, logs to the first run's WORKDIR/log.txt
  (the others' log.txt point there), runs the pack."""
  limit_threads(threads, cpus)
  share_compilation_cache(sweep_dir)
  log_path = os.path.join(run_dir(sweep_dir, pack[0]), "log.txt")
  for rid in pack:
    os.makedirs(run_dir(sweep_dir, rid), exist_ok=True)
    if rid != pack[0]:
      with open(os.path.join(run_dir(sweep_dir, rid), "log.txt"), "a") as f:
        f.write(f"Packed with runs {pack}: the log is {log_path}\n")
  log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
  os.dup2(log, 1)
  os.dup2(log, 2)
  from recon3d_jax import writers  # After limit_threads: imports JAX's neighbours.
  writers.setup_logging()
  sys.exit(max(EXIT_CODES[r] for r in run_pack(sweep_dir, pack).values()))


def build_datasets(data_configs: list[dict]) -> None:
  """Builds every distinct dataset once (in a spawned process, before the workers fan out).

  A config that fails to build is logged and skipped: its runs fail with their own error.
  """
  from recon3d_jax.data import pipeline  # Imports JAX: only ever in a spawned process.
  for data in data_configs:
    try:
      pipeline.load_sources(ml_collections.ConfigDict(data))
    except Exception:  # pylint: disable=broad-except
      logging.exception("Building the dataset of %s failed; its runs will report it.", data)


# ---------------------------------------------------------------------------------------------
# Backends.
# ---------------------------------------------------------------------------------------------
def _spawn():
  import multiprocessing  # pylint: disable=import-outside-toplevel
  return multiprocessing.get_context("spawn")  # Never fork: workers import JAX.


def prepare_data(manifest: dict, sweep_dir: str) -> None:
  """Builds the datasets of the unfinished runs in one spawned process, then returns."""
  distinct = {}
  for rid in manifest["runs"]:
    if run_state(sweep_dir, rid) != "done":
      data = run_config(manifest, rid, sweep_dir).data.to_dict()
      distinct[json.dumps(data, sort_keys=True)] = data
  if distinct:
    process = _spawn().Process(target=build_datasets, args=(list(distinct.values()),))
    process.start()
    process.join()


def run_local(sweep_dir: str, workers: int, pack_size: int = 1,
              poll_s: float = 0.2) -> dict[str, list[str]]:
  """Runs every unfinished run of the manifest in packs of at most `pack_size` (plan_packs),
  `workers` spawned processes at a time.

  Each pack gets its own process (a crash or SIGKILL costs that pack only) pinned to its share
  of the CPUs. Dependencies run first; dependents of a failed run fail as blocked. Returns the
  final `status`.
  """
  manifest = read_manifest(sweep_dir)
  cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
  threads = max(1, (len(cpus) if cpus else os.cpu_count() or 1) // workers)
  slots = [cpus[i * threads:(i + 1) * threads] if cpus and len(cpus) >= workers else None
           for i in range(workers)]
  todo = plan_packs(manifest, sweep_dir, [rid for rid in manifest["runs"]
                                          if run_state(sweep_dir, rid) != "done"], pack_size)
  running: dict[tuple[str, ...], tuple[Any, int]] = {}  # pack -> (process, slot)
  ctx = _spawn()
  while todo or running:
    for pack in list(todo):
      free = [s for s in range(workers) if s not in {slot for _, slot in running.values()}]
      if not free:
        break
      # Only a pack of one has dependencies (plan_packs).
      deps = {d: run_state(sweep_dir, d) for d in manifest["runs"][pack[0]]["depends_on"]}
      if any(s == "failed" for s in deps.values()):
        failed = [d for d, s in deps.items() if s == "failed"]
        mark_failed(sweep_dir, pack[0], f"blocked: dependency {failed} failed")
        todo.remove(pack)
      elif all(s == "done" for s in deps.values()):
        process = ctx.Process(target=worker_main, args=(sweep_dir, pack, threads,
                                                        slots[free[0]]))
        process.start()
        running[tuple(pack)] = (process, free[0])
        todo.remove(pack)
        logging.info("Started %s.", "; ".join(
            f"run {rid} ({manifest['runs'][rid]['overrides']})" for rid in pack))
      elif not running and all(d not in {r for p in todo for r in p}
                               for d, s in deps.items() if s != "done"):
        logging.warning("Run %s waits on %s, run by another launcher; relaunch later.", pack[0],
                        [d for d, s in deps.items() if s != "done"])
        todo.remove(pack)
    for pack, (process, _) in list(running.items()):
      if process.exitcode is None:
        continue
      del running[pack]
      for rid in pack:
        state = run_state(sweep_dir, rid)
        if process.exitcode != 0 and state == "pending":  # Died without writing ERROR.
          mark_failed(sweep_dir, rid, f"the worker process died (exit code {process.exitcode})")
          state = "failed"
        logging.info("Run %s: %s.", rid, state)
    time.sleep(poll_s)
  return status(sweep_dir)


class SlurmRun:
  """submitit-checkpointable callable running one pack of runs (a run id, or a list of ids):
  requeued on preemption or timeout.

  Resuming needs no state here: each run restarts from its workdir's checkpoint.
  """

  def __init__(self, sweep_dir: str):
    self.sweep_dir = os.path.abspath(sweep_dir)

  def __call__(self, pack: str | Sequence[str]) -> str:
    share_compilation_cache(self.sweep_dir)  # Takes effect if JAX is not imported yet.
    # pylint: disable=import-outside-toplevel
    import jax

    from recon3d_jax import distributed, writers
    writers.setup_logging()
    distributed.initialize()  # A job of several tasks: they are the processes of its runs.
    results = run_pack(self.sweep_dir, [pack] if isinstance(pack, str) else list(pack),
                       jax.process_index(), jax.process_count())
    bad = {rid: r for rid, r in results.items() if r in ("failed", "blocked")}
    if bad:  # The job fails too, so Slurm agrees with --status.
      rid, result = next(iter(bad.items()))
      if not distributed.is_writer():  # Process 0 writes the ERROR file and raises with it.
        raise RuntimeError(f"run {rid} {result} (process 0's error says why)")
      with open(os.path.join(run_dir(self.sweep_dir, rid), ERROR)) as f:
        raise RuntimeError(f"run {rid} {result}:\n{f.read()}")
    return results[pack] if isinstance(pack, str) else ",".join(results.values())

  def checkpoint(self, pack: str | Sequence[str]):
    import submitit  # pylint: disable=import-outside-toplevel
    return submitit.helpers.DelayedSubmission(SlurmRun(self.sweep_dir), pack)


def slurm_executor(sweep_dir: str, *, partition: str | None, time_min: int, gpus: int,
                   cpus: int, mem_gb: int, array_parallelism: int, nodes: int = 1,
                   tasks_per_node: int = 1):
  """A submitit Slurm executor for SWEEP_DIR/slurm: job arrays capped at `array_parallelism`
  running tasks, USR2 `signal_delay_s` before the time limit so a job checkpoints and requeues.

  A job of `nodes` x `tasks_per_node` tasks runs each pack as that many jax.distributed
  processes (SlurmRun); `gpus` and `mem_gb` are per node, `cpus` per task. JAX's Slurm
  detection gives each task the GPU numbered by its SLURM_LOCALID, so on GPUs tasks_per_node
  = gpus.
  """
  import submitit  # pylint: disable=import-outside-toplevel
  executor = submitit.AutoExecutor(folder=os.path.join(sweep_dir, "slurm", "%j"),
                                   cluster="slurm")
  executor.update_parameters(
      name="recon3d_sweep", timeout_min=time_min, gpus_per_node=gpus, cpus_per_task=cpus,
      mem_gb=mem_gb, slurm_array_parallelism=array_parallelism, slurm_signal_delay_s=120,
      nodes=nodes, tasks_per_node=tasks_per_node,
      **({"slurm_partition": partition} if partition else {}))
  return executor


class SubmissionError(RuntimeError):
  """Slurm refused a submission: sbatch's message, and the jobs submitted before it."""


def submit_slurm(sweep_dir: str, executor, pack_size: int = 1) -> list:
  """Submits the unfinished runs as job arrays, one per dependency layer, one job per pack of
  at most `pack_size` runs (plan_packs); returns the jobs.

  `executor` is a configured submitit executor (its slurm_array_parallelism caps each array).
  On Slurm a layer starts after the previous one ends (dependency=afterany; a run whose
  dependency failed then fails as blocked). Other executors (e.g. submitit's debug executor)
  run jobs in submission order. Raises SubmissionError if sbatch refuses a layer.
  """
  from submitit.core.utils import FailedJobError  # pylint: disable=import-outside-toplevel
  manifest = read_manifest(sweep_dir)
  depth: dict[str, int] = {}
  for rid, run in manifest["runs"].items():  # Manifest order puts dependencies first.
    depth[rid] = 1 + max((depth[d] for d in run["depends_on"]), default=-1)
  todo = [rid for rid in manifest["runs"] if run_state(sweep_dir, rid) != "done"]
  jobs, previous = [], []
  for layer in sorted({depth[rid] for rid in todo}):
    ids = [rid for rid in todo if depth[rid] == layer]
    packs = [p[0] if len(p) == 1 else p for p in plan_packs(manifest, sweep_dir, ids, pack_size)]
    if getattr(executor, "cluster", None) == "slurm":
      extra = {"requeue": True}  # Slurm may requeue the job itself too (node failure).
      if previous:
        extra["dependency"] = "afterany:" + ":".join(
            sorted({j.job_id.split("_")[0] for j in previous}))
      executor.update_parameters(slurm_additional_parameters=extra)
    try:
      previous = executor.map_array(SlurmRun(sweep_dir), packs)
    except FailedJobError as e:
      submitted = [j.job_id for j in jobs] or "nothing"
      raise SubmissionError(
          f"Slurm refused layer {layer} ({len(ids)} run{'s' * (len(ids) != 1)}): "
          f"{str(e).strip()}; expected resources its partition has (see sinfo; --slurm_gpus=0 "
          f"where nodes have no GPU). Already submitted: {submitted}.") from e
    jobs += previous
    logging.info("Submitted %d runs in %d jobs (layer %d): %s", len(ids), len(packs), layer,
                 [j.job_id for j in previous])
  return jobs
