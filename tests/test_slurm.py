"""Sweeps through a real Slurm: job arrays and their cap, a failing run, --status, preemption.

Why: the mocked sbatch of test_sweep.py shows what is submitted, not that it runs; these tests
submit with launch/sweep.py --backend=slurm, as a user does, to the local cluster of the
`slurm` fixture (tests/slurm_cluster.py).
"""
import json
import os
import subprocess
import sys
import time

import pytest
import submitit

from recon3d_jax.study import sweeps
from test_sweep import REPO, _launch, _study

pytestmark = pytest.mark.slurm

# The local node has no GPU and little to spare: one CPU and 1 GB per job.
SLURM_FLAGS = ("--backend=slurm", "--slurm_gpus=0", "--slurm_cpus=1", "--slurm_mem_gb=1",
               "--slurm_time_min=30")
WAIT_S = 900  # Generous: the runs share a busy 2-core machine.


def _submit(slurm, spec, sweep_dir, *flags) -> str:
  """launch/sweep.py --backend=slurm (it submits and exits); returns its output."""
  launcher = _launch(spec, sweep_dir, *SLURM_FLAGS, *flags, env=slurm.env)
  output = launcher.communicate(timeout=300)[0]
  assert launcher.returncode == 0, output
  return output


def _wait_until(condition, what: str, slurm, timeout_s: float = WAIT_S) -> None:
  """Polls `condition`; on timeout fails with Slurm's queue and the daemons' logs (what to
  read first when a job never starts or never ends)."""
  deadline = time.time() + timeout_s
  while not condition():
    assert time.time() < deadline, (f"no {what} after {timeout_s} s; Slurm's queue: "
                                    f"{slurm.jobs()}\n{slurm.log_tails()}")
    time.sleep(0.2)


def _drain(slurm, timeout_s: float = WAIT_S) -> list[int]:
  """Waits until Slurm's queue is empty; returns the number of running jobs at each poll."""
  running = []

  def empty():
    jobs = slurm.jobs()
    running.append(sum(j["state"] == "RUNNING" for j in jobs))
    return not jobs

  _wait_until(empty, "empty queue", slurm, timeout_s)
  return running


def _most_at_once(records: list[dict]) -> int:
  """The most jobs running at one time according to Slurm's completion records."""
  spans = [(r["StartTime"], r["EndTime"]) for r in records]
  return max(sum(s <= start < e for s, e in spans) for start, _ in spans)


def _status(slurm, spec, sweep_dir) -> str:
  """launch/sweep.py --status's output: what a user sees, read from the sweep dir's markers."""
  return subprocess.run([sys.executable, "launch/sweep.py", f"--config={spec}",
                         f"--sweep_dir={sweep_dir}", "--status"], cwd=REPO, env=slurm.env,
                        capture_output=True, text=True, timeout=60).stdout


def test_launcher_reports_what_sbatch_refused(slurm, tmp_path):
  """The default --slurm_gpus=1 on this GPU-less node: one error line, not a traceback."""
  spec = _study(tmp_path / "study.py", [{"arm": "vanilla", "seed": 0}])
  launcher = _launch(spec, tmp_path / "sweep", "--backend=slurm", "--nobuild_data", env=slurm.env)
  output = launcher.communicate(timeout=120)[0]
  assert launcher.returncode != 0
  assert "error: Slurm refused layer 0 (1 run): sbatch: error:" in output, output
  assert "Already submitted: nothing." in output and "Traceback" not in output, output
  assert slurm.jobs() == []


@pytest.mark.slow
def test_slurm_sweep_caps_its_array_fails_a_bad_run_and_blocks_its_dependent(tiny_config, slurm,
                                                                             tmp_path):
  good = [{"arm": "vanilla", "seed": 0}, {"arm": "normal", "seed": 0}]
  # Valid values (the launcher checks them), but every label is `extreme` and the filter keeps
  # only `minimal` ones: fails inside its job.
  stage1 = {"arm": "stage1", "seed": 0, "data.supervision": "extreme",
            "data.max_level": "minimal"}
  full = {"arm": "full", "seed": 0, "init_from": stage1}  # The second dependency layer.
  spec = _study(tmp_path / "study.py", good + [stage1, full], tiny_config.data.data_dir)
  sweep_dir = tmp_path / "sweep"
  start = time.time()
  _submit(slurm, spec, sweep_dir, "--slurm_array_parallelism=2")
  running = _drain(slurm)
  print(f"4-run Slurm sweep, cap 2: {time.time() - start:.1f} s")

  # Layer 0 is an array of 3 runs (folders A, A_0..A_2); layer 1 the lone `full`, a plain job.
  array, dependent = sorted((name for name in os.listdir(sweep_dir / "slurm")
                             if name.isdigit()), key=int)
  records = slurm.completions()
  layer0 = [r for r in records if r.get("ArrayJobId") == array]
  (blocked,) = [r for r in records if r["JobId"] == dependent]
  # The node fits 4 such jobs; the array's cap of 2 is what holds the third back.
  assert sorted(r["JobState"] for r in layer0) == ["COMPLETED", "COMPLETED", "FAILED"]
  assert max(running) == 2 and _most_at_once(layer0) == 2, (running, layer0)
  assert blocked["StartTime"] >= max(r["EndTime"] for r in layer0)  # afterany held it back.
  assert blocked["JobState"] == "FAILED"  # Slurm agrees with --status below.

  for run in good:
    assert (sweep_dir / "runs" / sweeps.run_id(run) / sweeps.DONE).exists()
  status = _status(slurm, spec, sweep_dir)
  assert "done: 2, running: 0, failed: 2, pending: 0" in status, status
  assert (f"failed {sweeps.run_id(stage1)}: ValueError: data.max_level='minimal' keeps no "
          "training instance" in status), status
  assert f"failed {sweeps.run_id(full)}: blocked: dependency {sweeps.run_id(stage1)}" in status
  # submitit's view: results of the good runs, the errors of the others.
  jobs = [submitit.SlurmJob(sweep_dir / "slurm" / "%j", job_id)
          for job_id in (f"{array}_0", f"{array}_1", f"{array}_2", dependent)]
  assert [j.result() for j in jobs[:2]] == ["done", "done"]
  with pytest.raises(submitit.core.utils.FailedJobError, match="keeps no training instance"):
    jobs[2].result()
  with pytest.raises(submitit.core.utils.FailedJobError, match="blocked"):
    jobs[3].result()


def _metrics(workdir) -> list[dict]:
  """A run's logged metrics without the wall-clock fields (which differ between attempts)."""
  with open(workdir / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  return [{k: v for k, v in r.items() if k not in ("time", "time/train_s")} for r in rows]


@pytest.mark.slow
def test_requeued_slurm_job_resumes_to_the_uninterrupted_result(tiny_config, slurm, tmp_path):
  # Long enough that Slurm's kill (SIGTERM, then SIGKILL KillWait later) lands mid-training.
  run = {"arm": "normal", "seed": 0, "total_steps": 100, "checkpoint_every_steps": 10,
         "log_every_steps": 10, "eval_every_steps": 50}
  rid = sweeps.run_id(run)
  spec = _study(tmp_path / "study.py", [run], tiny_config.data.data_dir)
  requeued, reference = tmp_path / "requeued", tmp_path / "reference"
  start = time.time()
  _submit(slurm, spec, requeued)
  _submit(slurm, spec, reference, "--nobuild_data")  # The first launch built it.
  workdir = requeued / "runs" / rid
  _wait_until((workdir / "checkpoints" / "10").exists, "first checkpoint", slurm)
  # submitit submits a lone run as a plain job (no array).
  (job,) = [name for name in os.listdir(requeued / "slurm") if name[0].isdigit()]
  slurm.run("scontrol", "requeue", job)
  print(f"requeued {job} after {time.time() - start:.1f} s")
  # Killed and back in the queue: its LOCK is stale, so the run is pending, not running.
  _wait_until(lambda: [j["state"] for j in slurm.jobs() if j["id"] == job] == ["PENDING"],
              "requeued job pending", slurm)
  status = _status(slurm, spec, requeued)
  assert "done: 0, running: 0, failed: 0, pending: 1" in status, status
  _drain(slurm)
  print(f"requeue test: both runs done after {time.time() - start:.1f} s")

  log = (requeued / "slurm" / job / f"{job}_0_log.err").read_text()
  resumed = [int(line.rsplit(" ", 1)[1].rstrip(".")) for line in log.splitlines()
             if "Resumed from step" in line]
  assert resumed and 0 < resumed[-1] < run["total_steps"], log[-3000:]
  print(f"the requeued attempt resumed from step {resumed[-1]}")
  # jobcomp logs the killed attempt with the state it was left in (PENDING: requeued).
  states = [r["JobState"] for r in slurm.completions() if r["JobId"] == job]
  assert states == ["PENDING", "COMPLETED"], states
  assert (workdir / sweeps.DONE).exists() and (reference / "runs" / rid / sweeps.DONE).exists()
  assert _metrics(workdir) == _metrics(reference / "runs" / rid)
  for name in ("test.jsonl", "summary.json"):
    assert (workdir / "eval" / name).read_text() == (
        reference / "runs" / rid / "eval" / name).read_text(), name
  assert "done: 1, running: 0, failed: 0, pending: 0" in _status(slurm, spec, requeued)


@pytest.mark.slow
def test_two_task_slurm_job_trains_one_run_as_two_jax_processes(tiny_config, slurm, tmp_path):
  """--slurm_tasks_per_node=2: the job's two tasks start jax.distributed from Slurm's environment
  and train the run as two processes of one CPU device each, to the parameters of the same run
  trained here as one process on 2 devices (float32 tolerance: the all-reduce order differs)."""
  import jax
  import numpy as np

  from recon3d_jax import experiment, sharding, train
  run = {"arm": "normal", "seed": 0}
  rid = sweeps.run_id(run)
  spec = _study(tmp_path / "study.py", [run], tiny_config.data.data_dir)
  sweep_dir = tmp_path / "sweep"
  env = dict(slurm.env, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  launcher = _launch(spec, sweep_dir, *SLURM_FLAGS, "--slurm_tasks_per_node=2", env=env)
  output = launcher.communicate(timeout=300)[0]
  assert launcher.returncode == 0, output
  _drain(slurm)
  (job,) = [name for name in os.listdir(sweep_dir / "slurm") if name[0].isdigit()]
  logs = [(sweep_dir / "slurm" / job / f"{job}_{task}_log.err").read_text() for task in (0, 1)]
  assert "Starting jax.distributed from Slurm: task 0 of 2." in logs[0], logs[0][-3000:]
  assert (sweep_dir / "runs" / rid / sweeps.DONE).exists(), logs[0][-3000:]
  assert [r["JobState"] for r in slurm.completions() if r["JobId"] == job] == ["COMPLETED"]

  config = sweeps.run_config(sweeps.read_manifest(str(sweep_dir)), rid, str(sweep_dir))
  reference = train.train_and_evaluate(config, str(tmp_path / "reference"),
                                       sharding.make_mesh(jax.devices()[:2]))
  _, params, _ = experiment.load(str(sweep_dir / "runs" / rid))
  difference = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))
                         / max(np.max(np.abs(np.asarray(a))), np.finfo(np.float32).tiny))
                   for a, b in zip(jax.tree.leaves(reference["params"]), jax.tree.leaves(params)))
  print(f"2-task Slurm job vs 1 process: largest relative parameter difference {difference:.2g}")
  assert difference < 1e-4, f"largest relative parameter difference {difference:.2g}"
