"""Sweeps: run ids, validation, locks, dependencies, the local backend end to end, Slurm."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import ml_collections
import pytest
import submitit
from submitit.core import test_core

from recon3d_jax import config_lib
from recon3d_jax.study import report, sweeps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STUDY = '''
from configs import default
PRIMARY_METRIC, BASELINE_ARM, OURS_ARM = "fscore@0.02", "vanilla", "normal"
TABLES = ("table1_main",)

def get_config(arg=None):
  c = default.get_config("runlocal")
  c.data.data_dir = {data_dir!r}
  return c

def sweep(arg=None):
  yield from {runs!r}
'''


def _study(path, runs, data_dir="unused"):
  path.write_text(STUDY.format(runs=runs, data_dir=str(data_dir)))
  return str(path)


# ---------------------------------------------------------------------------------------------
# Run ids, validation, dependencies.
# ---------------------------------------------------------------------------------------------
def test_run_id_is_stable_and_independent_of_key_order():
  a = sweeps.run_id({"arm": "depth", "seed": 1, "init_from": {"arm": "x", "seed": 1}})
  b = sweeps.run_id({"init_from": {"seed": 1, "arm": "x"}, "seed": 1, "arm": "depth"})
  assert a == b and len(a) == 12
  assert a != sweeps.run_id({"arm": "depth", "seed": 2, "init_from": {"arm": "x", "seed": 1}})
  assert sweeps.run_id({"seed": 1}) != sweeps.run_id({"seed": "1"})


def test_misspelt_key_is_rejected_before_anything_runs(tmp_path):
  spec = _study(tmp_path / "study.py", [{"arm": "vanilla"}, {"model.encodr": "resnet18"}])
  with pytest.raises(config_lib.ConfigError, match="model.encodr.*did you mean 'model.encoder'"):
    sweeps.load_study(spec)
  result = subprocess.run([sys.executable, "launch/sweep.py", f"--config={spec}",
                           f"--sweep_dir={tmp_path / 'sweep'}"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
  assert result.returncode != 0 and "did you mean 'model.encoder'" in result.stderr
  assert not (tmp_path / "sweep").exists()


def test_references_become_dependencies_resolved_to_workdirs(tmp_path):
  base = ml_collections.ConfigDict({"arm": "vanilla", "seed": 0, "init_from": ""})
  stage1 = {"arm": "stage1", "seed": 3}
  full = {"arm": "full", "seed": 3, "init_from": stage1}
  runs = sweeps.expand(base, [full, stage1, {"arm": "vanilla", "seed": 3}])
  assert [r.overrides["arm"] for r in runs] == ["stage1", "full", "vanilla"]  # Deps first.
  assert runs[1].depends_on == (sweeps.run_id(stage1),)
  manifest = {"base": base.to_dict(), "runs": {r.id: {"overrides": r.overrides} for r in runs}}
  config = sweeps.run_config(manifest, sweeps.run_id(full), str(tmp_path))
  assert config.init_from == str(tmp_path / "runs" / sweeps.run_id(stage1))
  with pytest.raises(config_lib.ConfigError, match="not in the sweep"):
    sweeps.expand(base, [full])
  with pytest.raises(config_lib.ConfigError, match="twice"):
    sweeps.expand(base, [stage1, dict(stage1)])


def test_failed_dependency_blocks_its_dependents(tmp_path):
  base = ml_collections.ConfigDict({"arm": "vanilla", "seed": 0, "init_from": ""})
  stage1 = {"arm": "stage1", "seed": 0}
  full = {"arm": "full", "seed": 0, "init_from": stage1}
  study = sweeps.Study("fake", None, base, tuple(sweeps.expand(base, [stage1, full])))
  manifest = dict(config="fake", base=base.to_dict(),
                  runs={r.id: dict(overrides=r.overrides, depends_on=list(r.depends_on))
                        for r in study.runs})
  os.makedirs(tmp_path / "runs")
  (tmp_path / sweeps.MANIFEST).write_text(json.dumps(manifest))
  sweeps.mark_failed(str(tmp_path), sweeps.run_id(stage1), "boom")
  assert sweeps.run_local(str(tmp_path), workers=1, poll_s=0.01)["failed"] == [
      sweeps.run_id(stage1), sweeps.run_id(full)]
  error = (tmp_path / "runs" / sweeps.run_id(full) / sweeps.ERROR).read_text()
  assert "blocked" in error and sweeps.run_id(stage1) in error


# ---------------------------------------------------------------------------------------------
# Locks.
# ---------------------------------------------------------------------------------------------
def test_lock_refuses_a_second_attempt_and_takes_over_stale_locks(tmp_path):
  first = sweeps.RunLock(str(tmp_path))
  assert first.acquire()
  assert not sweeps.RunLock(str(tmp_path)).acquire()  # This process is alive.
  first.release()
  assert sweeps.RunLock(str(tmp_path)).acquire()
  lock = tmp_path / sweeps.LOCK

  dead = subprocess.Popen(["true"])
  dead.wait()
  lock.write_text(json.dumps(dict(pid=dead.pid, host=socket.gethostname(), job=None)))
  assert sweeps.RunLock(str(tmp_path)).acquire()  # Dead pid on this host: stale.

  lock.write_text(json.dumps(dict(pid=1, host="elsewhere", job=None)))
  assert not sweeps.RunLock(str(tmp_path)).acquire()  # Fresh heartbeat on another host.
  old = time.time() - sweeps.STALE_AFTER_S - 1
  os.utime(lock, (old, old))
  assert sweeps.RunLock(str(tmp_path)).acquire()  # No heartbeat for too long: stale.


# ---------------------------------------------------------------------------------------------
# The local backend, end to end.
# ---------------------------------------------------------------------------------------------
def _launch(spec, sweep_dir, *flags, **kwargs):
  return subprocess.Popen(
      [sys.executable, "launch/sweep.py", f"--config={spec}", f"--sweep_dir={sweep_dir}",
       *flags], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      start_new_session=True, **kwargs)


@pytest.mark.slow
def test_local_sweep_survives_a_kill_and_a_failing_run(tiny_config, tmp_path):
  """Packed (--pack_size=4): the four good runs train as one program, the bad one alone."""
  good = [{"arm": arm, "seed": seed} for arm in ("vanilla", "normal") for seed in (0, 1)]
  # Valid values (the launcher checks them), but no stage-1 run there: fails inside its run.
  bad = {"arm": "full", "seed": 0, "init_from": "/nonexistent/stage1"}
  spec = _study(tmp_path / "study.py", good + [bad], tiny_config.data.data_dir)
  sweep_dir = tmp_path / "sweep"
  ids = [sweeps.run_id(r) for r in good]
  start = time.time()

  # 1. One worker; SIGKILL the whole launcher once the first run has saved a checkpoint.
  first = _launch(spec, sweep_dir, "--workers=1", "--pack_size=4")
  checkpoint = sweep_dir / "runs" / ids[0] / "checkpoints" / "4"
  while not checkpoint.exists():
    assert first.poll() is None, first.stdout.read()
    time.sleep(0.05)
  os.killpg(first.pid, signal.SIGKILL)
  first.wait()
  deadline = time.time() + 30
  while sweeps.status(str(sweep_dir))["running"]:  # Until the kill reaches the worker.
    assert time.time() < deadline
    time.sleep(0.1)
  print(f"killed after {time.time() - start:.1f} s")
  assert not (sweep_dir / "runs" / ids[0] / sweeps.DONE).exists()
  assert f"Packed with runs {ids}" in (sweep_dir / "runs" / ids[3] / "log.txt").read_text()
  assert sweeps.status(str(sweep_dir))["pending"] == [sweeps.run_id(r) for r in good + [bad]]

  # 2. Relaunch: the killed run resumes, the bad one fails, the others finish.
  # Runs the kill left at different steps resume in different packs.
  second = _launch(spec, sweep_dir, "--workers=2", "--pack_size=4")
  output = second.communicate(timeout=600)[0]
  assert second.returncode != 0 and "error: 1 of 5 runs failed" in output, output
  print(f"relaunch finished after {time.time() - start:.1f} s")
  assert "Resumed from step" in (sweep_dir / "runs" / ids[0] / "log.txt").read_text()
  states = sweeps.status(str(sweep_dir))
  assert sorted(states["done"]) == sorted(ids) and states["failed"] == [sweeps.run_id(bad)]
  error = (sweep_dir / "runs" / sweeps.run_id(bad) / sweeps.ERROR).read_text()
  assert "/nonexistent/stage1" in error
  status = subprocess.run([sys.executable, "launch/sweep.py", f"--config={spec}",
                           f"--sweep_dir={sweep_dir}", "--status"], cwd=REPO,
                          capture_output=True, text=True, timeout=60).stdout
  assert "done: 4, running: 0, failed: 1, pending: 0" in status
  assert (f"failed {sweeps.run_id(bad)}: ConfigError: config.init_from='/nonexistent/stage1'"
          in status)

  # 3. Relaunch again: finished runs are skipped (their DONE markers are untouched).
  done_times = [os.path.getmtime(sweep_dir / "runs" / i / sweeps.DONE) for i in ids]
  third = _launch(spec, sweep_dir, "--workers=2", "--nobuild_data")
  assert third.communicate(timeout=300)[0]
  assert done_times == [os.path.getmtime(sweep_dir / "runs" / i / sweeps.DONE) for i in ids]
  print(f"tiny sweep wall time (3 launches): {time.time() - start:.1f} s")

  out = report.write_report(str(sweep_dir), n_resamples=999)
  text = (tmp_path / "sweep" / "report" / "REPORT.md").read_text()
  assert "Table 1" in text and f"`{sweeps.run_id(bad)}` failed" in text
  with open(os.path.join(out, "report.json")) as f:
    main = {d["arm"]: d for d in json.load(f)["tables"]["table1_main"]}
  assert main["normal"]["fscore@0.02"]["n_seeds"] == 2
  assert main["normal"]["fscore@0.02"]["n_instances"] == 2 * tiny_config.eval.max_instances


# ---------------------------------------------------------------------------------------------
# Slurm through submitit.
# ---------------------------------------------------------------------------------------------
def _fake_sweep(tmp_path, runs):
  base = ml_collections.ConfigDict({"arm": "vanilla", "seed": 0, "init_from": ""})
  study = sweeps.Study("fake", type("M", (), dict(PRIMARY_METRIC="f", BASELINE_ARM="vanilla",
                                                  OURS_ARM="full", TABLES=())),
                       base, tuple(sweeps.expand(base, runs)))
  sweeps.write_manifest(str(tmp_path), study)
  return study


def test_debug_executor_runs_a_checkpointable_job(tmp_path, monkeypatch):
  from recon3d_jax import train
  calls = []
  monkeypatch.setattr(train, "train_and_evaluate", lambda config, workdir: calls.append(
      (config.arm, workdir)))
  stage1 = {"arm": "stage1", "seed": 0}
  full = {"arm": "full", "seed": 0, "init_from": stage1}
  _fake_sweep(tmp_path, [stage1, full])
  jobs = sweeps.submit_slurm(str(tmp_path), submitit.DebugExecutor(tmp_path / "slurm"))
  assert [j.result() for j in jobs] == ["done", "done"]
  assert calls == [("stage1", sweeps.run_dir(str(tmp_path), sweeps.run_id(stage1))),
                   ("full", sweeps.run_dir(str(tmp_path), sweeps.run_id(full)))]
  assert sweeps.status(str(tmp_path))["done"] == [sweeps.run_id(stage1), sweeps.run_id(full)]
  requeued = sweeps.SlurmRun(str(tmp_path)).checkpoint("some_id")
  assert isinstance(requeued, submitit.helpers.DelayedSubmission)
  assert isinstance(requeued.function, sweeps.SlurmRun) and requeued.args == ("some_id",)


def test_slurm_job_of_a_failed_or_blocked_run_fails(tmp_path, monkeypatch):
  """So that Slurm's job state agrees with --status (the failed runs' jobs end FAILED)."""
  from recon3d_jax import train

  def fail(config, workdir):
    raise ValueError("boom")

  monkeypatch.setattr(train, "train_and_evaluate", fail)
  stage1 = {"arm": "stage1", "seed": 0}
  full = {"arm": "full", "seed": 0, "init_from": stage1}
  _fake_sweep(tmp_path, [stage1, full])
  job = sweeps.SlurmRun(str(tmp_path))
  with pytest.raises(RuntimeError, match=f"run {sweeps.run_id(stage1)} failed:\nValueError"):
    job(sweeps.run_id(stage1))
  with pytest.raises(RuntimeError, match=f"run {sweeps.run_id(full)} blocked:\nblocked"):
    job(sweeps.run_id(full))


def test_slurm_submission_has_array_cap_requeue_and_dependency(tmp_path):
  stage1 = [{"arm": "stage1", "seed": s} for s in range(3)]
  full = [{"arm": "full", "seed": s, "init_from": r} for s, r in enumerate(stage1)]
  _fake_sweep(tmp_path, stage1 + full)
  mock = test_core.MockedSubprocess(known_cmds=["srun"])
  with mock.context():
    executor = sweeps.slurm_executor(str(tmp_path), partition="gpu", time_min=60, gpus=1,
                                     cpus=4, mem_gb=16, array_parallelism=2)
    jobs = sweeps.submit_slurm(str(tmp_path), executor)
  assert len(jobs) == 6
  first, second = (submitit.SlurmJob(tmp_path / "slurm" / "%j", jobs[i].job_id.split("_")[0])
                   .paths.submission_file.read_text() for i in (0, 3))
  for text in (first, second):
    assert "#SBATCH --array=0-2%2" in text
    assert "#SBATCH --requeue" in text
    assert "#SBATCH --signal=USR2@120" in text
    assert "#SBATCH --partition=gpu" in text
  assert "dependency" not in first
  assert f"#SBATCH --dependency=afterany:{jobs[0].job_id.split('_')[0]}" in second


def test_slurm_submission_of_multi_process_runs_has_nodes_and_tasks(tmp_path):
  _fake_sweep(tmp_path, [{"arm": "normal", "seed": 0}])
  mock = test_core.MockedSubprocess(known_cmds=["srun"])
  with mock.context():
    executor = sweeps.slurm_executor(str(tmp_path), partition="gpu", time_min=60, gpus=4,
                                     cpus=4, mem_gb=16, array_parallelism=2, nodes=2,
                                     tasks_per_node=4)
    jobs = sweeps.submit_slurm(str(tmp_path), executor)
  text = submitit.SlurmJob(tmp_path / "slurm" / "%j", jobs[0].job_id.split("_")[0]
                           ).paths.submission_file.read_text()
  for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
               "#SBATCH --cpus-per-task=4"):
    assert line in text, text
  assert "srun" in text  # The tasks are started by srun: Slurm's environment per process.


def test_only_process_0_of_a_multi_process_pack_writes_markers(tmp_path, monkeypatch):
  """Every process trains the runs process 0 claimed; process 1 takes no lock and writes no
  DONE (process 0's claim reaches it through distributed.value_of_process_0)."""
  from recon3d_jax import distributed, train
  calls = []
  monkeypatch.setattr(train, "train_and_evaluate", lambda config, workdir: calls.append(workdir))
  run = {"arm": "normal", "seed": 0}
  _fake_sweep(tmp_path, [run])
  rid, workdir = sweeps.run_id(run), sweeps.run_dir(str(tmp_path), sweeps.run_id(run))
  monkeypatch.setattr(distributed, "value_of_process_0", lambda value: {})  # Nothing claimed.
  locks = []
  real_acquire = sweeps.RunLock.acquire
  monkeypatch.setattr(sweeps.RunLock, "acquire",
                      lambda self: locks.append(self.path) or real_acquire(self))
  assert sweeps.run_pack(str(tmp_path), [rid], process_index=1, process_count=2) == {
      rid: "done"}
  assert calls == [workdir] and locks == []
  assert not os.path.exists(os.path.join(workdir, sweeps.DONE))
  assert sweeps.run_pack(str(tmp_path), [rid], process_index=0, process_count=2) == {
      rid: "done"}
  assert calls == [workdir] * 2 and locks == [os.path.join(workdir, sweeps.LOCK)]
  assert os.path.exists(os.path.join(workdir, sweeps.DONE))


@pytest.mark.parametrize("name", ["main", "levels", "scaling", "architectures", "overhead",
                                  "ablation", "negatives"])
def test_every_study_config_expands_to_valid_runs_at_both_scales(name):
  """Each committed study loads and validates (keys, values, stage-1 links, tables the report
  knows) at both scales."""
  for arg in ("runlocal", ""):
    study = sweeps.load_study(f"configs/study/{name}.py" + (f":{arg}" if arg else ""))
    assert study.runs and len({r.id for r in study.runs}) == len(study.runs)
    assert sweeps.study_tables(study.settings)


def test_main_study_gives_the_core_comparison_ten_seeds_at_the_embedded_scale():
  study = sweeps.load_study("configs/study/main.py:runlocal")
  seeds = {}
  for r in study.runs:
    key = (r.overrides["arm"], r.overrides["data.benchmark"])
    seeds.setdefault(key, set()).add(r.overrides["seed"])
  for (arm, _), s in seeds.items():
    assert len(s) == (10 if arm in ("vanilla", "normal", "depth", "both") else 3), arm
  # Seed-major: the first 8 runs are seed 0's core arms on both benchmarks.
  assert [r.overrides["seed"] for r in study.runs[:8]] == [0] * 8
