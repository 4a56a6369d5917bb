"""Bad input at every command-line entry ends in one clear line, not a traceback (issue 18).

Each case runs an entry as `python -m ...` would, with its own flags, but in a process forked
from one forkserver that has imported the heavy libraries once: a case costs a fork and the
package's own imports (under a second), not a fresh interpreter importing JAX (3-5 s here).
"""
import errno
import glob
import json
import multiprocessing
import os
import runpy
import shutil
import subprocess
import sys
import warnings

import pytest

from recon3d_jax import cli, config_lib, writers
from recon3d_jax.data import pipeline
from recon3d_jax.study import sweeps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN, EVALUATE, REPORT = "recon3d_jax.main", "recon3d_jax.evaluate", "recon3d_jax.study.report"
ENSEMBLE = "recon3d_jax.study.ensemble"
BUILD, SHOW, SWEEP = "recon3d_jax.data.build", "recon3d_jax.data.show", "launch/sweep.py"
CONFIG = "--config=configs/default.py:runlocal"


def _run_entry(entry: str, argv: list[str], out_path: str) -> None:
  """Child: runs `entry` (a module, or a script path) with argv, stdout and stderr to out_path."""
  fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
  os.dup2(fd, 1)
  os.dup2(fd, 2)
  os.chdir(REPO)
  sys.argv = [entry, *argv]
  warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module was imported before.
  if entry.endswith(".py"):
    runpy.run_path(entry, run_name="__main__")
  else:
    runpy.run_module(entry, run_name="__main__", alter_sys=True)


@pytest.fixture(scope="module")
def forkserver():
  context = multiprocessing.get_context("forkserver")
  # Libraries only: some package modules start JAX's CPU backend (threads) on import, and a
  # process with those threads must not fork.
  context.set_forkserver_preload(["jax", "flax", "optax", "orbax.checkpoint", "grain.python",
                                  "tensorflow_datasets", "tensorboardX", "matplotlib.pyplot"])
  return context


def run(forkserver, tmp_path, entry, *argv):
  """(exit code, output) of the entry."""
  out = tmp_path / "output.txt"
  process = forkserver.Process(target=_run_entry, args=(entry, list(argv), str(out)))
  process.start()
  process.join(timeout=120)
  if process.exitcode is None:
    process.kill()
    pytest.fail(f"{entry} {argv} did not finish in 120 s")
  return process.exitcode, out.read_text()


def assert_one_clear_error(code, output, *named):
  """Non-zero exit; the error is at most two lines at the end, starts with "error: ", names
  every string of `named`; no traceback."""
  assert code != 0, output
  assert "Traceback" not in output, output
  lines = output.strip().splitlines()
  start = max(i for i, line in enumerate(lines) if line.startswith("error: "))
  assert len(lines) - start <= 2, output
  message = "\n".join(lines[start:])
  for text in named:
    assert text in message, f"{text!r} not in {message!r}"


# ---------------------------------------------------------------------------------------------
# Files the cases use.
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """Bad files: a config and a study with a syntax error, garbage JSON, a damaged run, a bad
  mesh folder, a sweep with finished runs (for the report)."""
  d = tmp_path_factory.mktemp("bad")
  (d / "syntax.py").write_text("def get_config(:\n")
  (d / "study.py").write_text(STUDY.format(runs=[{"arm": "vanilla"}, {"model.encodr": "x"}]))
  (d / "values.py").write_text(STUDY.format(runs=[{"arm": "vanilla"}, {"arm": "telepathy"}]))
  (d / "tables.py").write_text(STUDY.format(runs=[{"arm": "vanilla"}]).replace(
      '("table1_main",)', '("table1_main", "table7_typo")'))
  (d / "garbage").mkdir()
  (d / "garbage" / "config.json").write_text('{"arm": "norm')
  (d / "garbage" / sweeps.MANIFEST).write_text("\x00\x01 not json")
  from configs import default
  config = default.get_config("runlocal")
  config.data.data_dir = str(d / "data")
  for name in ("untrained", "damaged"):
    (d / name).mkdir()
    (d / name / "config.json").write_text(config.to_json())
  (d / "damaged" / "checkpoints" / "4").mkdir(parents=True)
  (d / "damaged" / "checkpoints" / "4" / "state").write_text("half a copy")
  (d / "meshes").mkdir()
  (d / "meshes" / "x.obj").write_text("not a mesh\n")
  (d / "a_file").write_text("")
  (d / "dangling").symlink_to(d / "gone")
  _finished_sweep(d / "sweep")
  return d


STUDY = '''
from configs import default
PRIMARY_METRIC, BASELINE_ARM, OURS_ARM = "fscore@0.02", "vanilla", "normal"
TABLES = ("table1_main",)

def get_config(arg=None):
  return default.get_config("runlocal")

def sweep(arg=None):
  yield from {runs!r}
'''


def _finished_sweep(sweep_dir):
  """A sweep dir with one finished run and its per-instance rows (no training)."""
  overrides = {"arm": "vanilla", "seed": 0}
  rid = sweeps.run_id(overrides)
  run = sweep_dir / "runs" / rid
  (run / "eval").mkdir(parents=True)
  (sweep_dir / sweeps.MANIFEST).write_text(json.dumps(dict(
      config="study.py", base={"arm": "normal", "seed": 0, "data": {"benchmark": "primitives"}},
      study=dict(primary_metric="fscore@0.02", baseline_arm="vanilla", ours_arm="normal"),
      runs={rid: dict(overrides=overrides, depends_on=[])})))
  metrics = ["iou", "accuracy", "ece", "chamfer_l1", "chamfer_l2", "normal_consistency",
             "depth_abs_rel", "depth_rmse", "depth_delta1", "normal_mean_deg"] + [
                 f"{m}@{tau}" for m in ("precision", "recall", "fscore")
                 for tau in (0.01, 0.02, 0.05)]
  row = dict({m: 0.5 for m in metrics}, index=0, kind=0)
  (run / "eval" / "test.jsonl").write_text(json.dumps(row) + "\n")
  (run / "eval" / "summary.json").write_text("{}")
  (run / sweeps.DONE).write_text("{}")


# ---------------------------------------------------------------------------------------------
# The table: (entry, argv, strings the message must name). `{d}` is the folder of `files`.
# ---------------------------------------------------------------------------------------------
CASES = [
    # python -m recon3d_jax.main
    (MAIN, [], ["--workdir", "must have a value"]),
    (MAIN, ["--config={d}/missing.py", "--workdir={d}/w"], ["{d}/missing.py", "No such file"]),
    (MAIN, ["--config={d}/syntax.py", "--workdir={d}/w"], ["{d}/syntax.py, line 1", "syntax"]),
    (MAIN, ["--config=configs/default.py:arm", "--workdir={d}/w"], ["'arm' needs a value"]),
    (MAIN, ["--config=configs/default.py:runlocl", "--workdir={d}/w"],
     ["'runlocl'", "did you mean 'runlocal'", "expected one of"]),
    (MAIN, ["--config=configs/default.py:seed=abc", "--workdir={d}/w"],
     ["seed='abc'", "expected a int"]),
    (MAIN, ["--config=configs/default.py:runlocal,arm=telepathy", "--workdir={d}/w"],
     ["config.arm='telepathy'", "expected one of"]),
    (MAIN, [CONFIG, "--workdir={d}/w", "--config.data.num_trian=5"],
     ["no config field", "num_trian", "num_train"]),
    (MAIN, [CONFIG, "--workdir={d}/w", "--config.data.num_train=abc"],
     ["--config.data.num_train=abc"]),
    (MAIN, [CONFIG, "--workdir={d}/w", "--config.data.num_train=-5"],
     ["config.data.num_train=-5", "expected a positive integer"]),
    (MAIN, [CONFIG, "--workdir={d}/w", "--config.eval.threshold_candidates=()"],
     ["config.eval.threshold_candidates=()", "expected a non-empty list"]),
    (MAIN, [CONFIG, "--workdir={d}/w", "--config.eval.threshold_candidates=(0.5,1.5)"],
     ["(0.5, 1.5)", "in (0, 1)"]),
    (MAIN, [CONFIG, "--workdir={d}/w", "--config.data.data_dir="],
     ["config.data.data_dir=''", "expected the folder"]),
    (MAIN, [CONFIG, "--workdir={d}/w", "--config.data.data_dir={d}/dangling"],
     ["config.data.data_dir='{d}/dangling': a broken symbolic link to '{d}/gone'"]),
    (MAIN, [CONFIG, "--workdir={d}/w", "--config.data.data_dir={d}/a_file"],
     ["config.data.data_dir='{d}/a_file': not a folder"]),
    (MAIN, [CONFIG, "--workdir={d}/w", "--config.optimizer.warmup_steps=8"],
     ["config.optimizer.warmup_steps=8", "expected 0 <= warmup_steps < total_steps=8"]),
    (MAIN, [CONFIG, "--workdir={d}/w", "--config.data.mesh_dir={d}/nowhere"],
     ["config.data.mesh_dir='{d}/nowhere'", "expected an existing folder"]),
    (MAIN, [CONFIG, "--workdir={d}/a_file/run"], ["'{d}/a_file/run' cannot be created"]),
    (MAIN, [CONFIG, "--workdir={d}/garbage"],
     ["{d}/garbage/config.json is not valid JSON", "expected the config"]),
    (MAIN, [CONFIG, "--workdir={d}/w", "extra"], ["unexpected arguments ['extra']"]),
    (MAIN, [CONFIG, "--workdir={d}/w", "--config.data.supervision=medium-rare"],
     ["config.data.supervision='medium-rare'"]),
    (MAIN, [CONFIG, "--workdir={d}/w", "--config.model.decoder=voxels"],
     ["config.model.decoder='voxels'", "expected one of"]),
    (MAIN, [CONFIG, "--workdir={d}/w", "--config.data.benchmark=meshes",
            "--config.data.mesh_dir={d}/meshes", "--config.data.data_dir={d}/data"],
     ["{d}/meshes"]),
    (MAIN, [CONFIG, "--workdir={d}/w", "--coordinator_address=localhost:1", "--num_processes=2"],
     ["--coordinator_address --num_processes given without --process_id", "expected all three"]),
    (MAIN, [CONFIG, "--workdir={d}/w", "--coordinator_address=127.0.0.1:1", "--num_processes=2",
            "--process_id=1", "--distributed_timeout_s=1"],
     ["--coordinator_address='127.0.0.1:1'", "no coordinator reachable after 1 s"]),
    # python -m recon3d_jax.evaluate
    (EVALUATE, [], ["expected --workdir=DIR"]),
    (EVALUATE, ["--workdir={d}/w2"], ["'{d}/w2' has no config.json"]),
    (EVALUATE, ["--workdir={d}/garbage"], ["{d}/garbage/config.json is not valid JSON"]),
    (EVALUATE, ["--workdir={d}/untrained"], ["'{d}/untrained' has no checkpoint"]),
    (EVALUATE, ["--workdir={d}/damaged"],
     ["no checkpoint in {d}/damaged/checkpoints can be read", "steps [4]", "expected"]),
    (EVALUATE, ["--workdir={d}/w", CONFIG], ["--config and --out go with --baselines_only"]),
    (EVALUATE, ["--baselines_only", "--untrained", "--workdir={d}/w"],
     ["expected exactly one of"]),
    (EVALUATE, ["--baselines_only", "--config={d}/missing.py", "--out={d}/o"],
     ["{d}/missing.py", "No such file"]),
    # python -m recon3d_jax.study.report
    (REPORT, [], ["--sweep_dir", "must have a value"]),
    (REPORT, ["--sweep_dir={d}/nowhere"], ["'{d}/nowhere' has no manifest.json"]),
    (REPORT, ["--sweep_dir={d}/garbage"],
     ["{d}/garbage/manifest.json is not valid JSON", "expected the manifest"]),
    (REPORT, ["--sweep_dir={d}/sweep", "--metric=iuo"],
     ["metric 'iuo'", "expected one of", "'fscore@0.02'"]),
    (REPORT, ["--sweep_dir={d}/sweep", "--n_resamples=many"], ["--n_resamples=many"]),
    # python -m recon3d_jax.study.ensemble
    (ENSEMBLE, [], ["--sweep_dir", "must have a value"]),
    (ENSEMBLE, ["--sweep_dir={d}/sweep", "--members=1"], ["--members=1", "expected at least 2"]),
    (ENSEMBLE, ["--sweep_dir={d}/garbage"], ["{d}/garbage/manifest.json is not valid JSON"]),
    # python -m recon3d_jax.data.build
    (BUILD, [], ["--benchmark is required"]),
    (BUILD, ["--benchmark=primitivs"], ["--benchmark='primitivs'", "expected 'all' or names"]),
    (BUILD, ["--benchmark=primitives", "--image_sizes=-64"],
     ["--image_sizes='-64'", "expected positive multiples of 16"]),
    (BUILD, ["--benchmark=primitives", "--image_sizes=sixty"],
     ["--image_sizes='sixty'", "expected comma-separated integers"]),
    (BUILD, ["--benchmark=primitives", "--workers=0"], ["--workers=0", "not a positive integer"]),
    (BUILD, ["--benchmark=primitives", "--num_train=-5"],
     ["--num_train=-5", "not a positive integer"]),
    (BUILD, ["--benchmark=primitives", "--data_dir="], ["--data_dir=''", "expected the folder"]),
    (BUILD, ["--benchmark=primitives", "--on_bad_mesh=maybe"], ["--on_bad_mesh=maybe", "fail"]),
    (BUILD, ["--benchmark=meshes", "--mesh_dir={d}/meshes", "--data_dir={d}/data"],
     ["{d}/meshes"]),
    # python -m recon3d_jax.data.show
    (SHOW, [], ["--benchmark=None", "expected one of"]),
    (SHOW, ["--benchmark=primitives", "--num=0"], ["--num=0", "expected 1..32"]),
    (SHOW, ["--benchmark=primitives", "--image_size=30"],
     ["--image_size=30", "expected a positive multiple of 16"]),
    (SHOW, ["--benchmark=primitives", "--split=dev"], ["--split=dev", "train"]),
    (SHOW, ["--benchmark=meshes", "--mesh_dir={d}/nowhere"],
     ["--mesh_dir='{d}/nowhere'", "expected an existing folder"]),
    (SHOW, ["--benchmark=meshes", "--mesh_dir={d}/meshes"], ["mesh folder '{d}/meshes'"]),
    # python launch/sweep.py
    (SWEEP, [], ["--sweep_dir", "must have a value"]),
    (SWEEP, ["--config={d}/missing.py", "--sweep_dir={d}/s"],
     ["study config '{d}/missing.py' does not exist"]),
    (SWEEP, ["--config={d}/syntax.py", "--sweep_dir={d}/s"], ["{d}/syntax.py, line 1"]),
    (SWEEP, ["--config={d}/study.py", "--sweep_dir={d}/s"],
     ["'model.encodr'", "did you mean 'model.encoder'"]),
    (SWEEP, ["--config={d}/tables.py", "--sweep_dir={d}/s"],
     ["study config '{d}/tables.py'", "['table7_typo']", "expected names among"]),
    (SWEEP, ["--config={d}/study.py", "--sweep_dir={d}/s", "--workers=0"],
     ["--workers=0", "not a positive integer"]),
    (SWEEP, ["--config={d}/study.py", "--sweep_dir={d}/s", "--backend=cloud"],
     ["--backend=cloud", "local"]),
    (SWEEP, ["--config={d}/study.py", "--sweep_dir={d}/garbage", "--status"],
     ["{d}/garbage/manifest.json is not valid JSON"]),
]


@pytest.mark.parametrize("entry, argv, named", CASES,
                         ids=[f"{i}-{e.split('.')[-1] if e != SWEEP else 'sweep'}"
                              for i, (e, _, _) in enumerate(CASES)])
def test_bad_input_ends_in_one_clear_line(forkserver, files, tmp_path, entry, argv, named):
  fill = lambda s: s.replace("{d}", str(files))
  code, output = run(forkserver, tmp_path, entry, *map(fill, argv))
  assert_one_clear_error(code, output, *map(fill, named))


def test_there_are_at_least_40_cases():
  assert len(CASES) >= 40 and {entry for entry, _, _ in CASES} == {
      MAIN, EVALUATE, REPORT, ENSEMBLE, BUILD, SHOW, SWEEP}


def test_the_traceback_is_behind_an_environment_variable(forkserver, files, tmp_path,
                                                        monkeypatch):
  argv = ["--config=configs/default.py:arm", f"--workdir={files}/w"]
  assert "Traceback" not in run(forkserver, tmp_path, MAIN, *argv)[1]
  env = dict(os.environ, **{cli.TRACEBACK_ENV: "1"})
  result = subprocess.run([sys.executable, "-m", MAIN, *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode != 0 and "Traceback" in result.stderr


@pytest.mark.slow
def test_a_sweep_with_a_bad_override_value_launches_nothing(files, tmp_path):
  """The value check imports JAX in a spawned process: a real subprocess, end to end."""
  sweep_dir = tmp_path / "sweep"
  result = subprocess.run([sys.executable, SWEEP, f"--config={files}/values.py",
                           f"--sweep_dir={sweep_dir}"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
  assert_one_clear_error(result.returncode, result.stderr, "config.arm='telepathy'",
                         f"run {sweeps.run_id({'arm': 'telepathy'})}", "expected one of")
  assert not sweep_dir.exists()


# ---------------------------------------------------------------------------------------------
# Disks: full and read-only (a small tmpfs; needs root, skipped elsewhere).
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
  mount = tmp_path / "disk"
  mount.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                    capture_output=True).returncode:
    pytest.skip("cannot mount a tmpfs here (needs root)")
  try:
    yield mount
  finally:
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_says_so(forkserver, files, small_disk, tmp_path):
  with open(small_disk / "filler", "wb", buffering=0) as f:
    with pytest.raises(OSError, match="No space left"):
      while True:
        f.write(b"\0" * 4096)
  code, output = run(forkserver, tmp_path, REPORT, f"--sweep_dir={files}/sweep",
                     f"--out={small_disk}/report")
  assert_one_clear_error(code, output, "No space left on device")


def test_a_read_only_disk_is_named(forkserver, small_disk, tmp_path):
  subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
  code, output = run(forkserver, tmp_path, MAIN, CONFIG, f"--workdir={small_disk}/run",
                     f"--config.data.data_dir={tmp_path}/data")
  assert_one_clear_error(code, output, f"'{small_disk}/run' cannot be created",
                         "Read-only file system")


# ---------------------------------------------------------------------------------------------
# The wrapper's message, for errors libraries wrap.
# ---------------------------------------------------------------------------------------------
def _message(error):
  with pytest.raises(SystemExit) as exit_:
    cli.exit_with(error)
  return exit_.value.code


def _wrapped(outer, inner):
  try:
    try:
      raise inner
    except Exception:
      raise outer
  except Exception as e:
    return e


def test_the_message_is_the_error_that_says_what_went_wrong():
  assert _message(config_lib.ConfigError("config.x=1: expected 2")) == (
      "error: config.x=1: expected 2")
  # A full disk is named however deep a storage library wraps it.
  full = OSError(errno.ENOSPC, "No space left on device", "/d/ckpt")
  assert _message(_wrapped(ValueError("write failed:\nsee below"), full)) == (
      "error: No space left on device (writing /d/ckpt)")
  # A multi-line wrapper gives way to the one-line error inside it.
  assert _message(_wrapped(ValueError("Error whilst parsing:\n\nTraceback ..."),
                           config_lib.ConfigError("bad arg"))) == "error: bad arg"
  # An unexpected kind of error is named, with where its traceback is.
  assert _message(KeyError("x")) == (f"error: KeyError: x\n({cli.TRACEBACK_ENV}=1 prints the "
                                     "traceback)")


# ---------------------------------------------------------------------------------------------
# Damaged files that a run reads.
# ---------------------------------------------------------------------------------------------
def test_a_damaged_dataset_is_named_with_how_to_rebuild_it(tiny_config, tmp_path):
  pipeline.load_sources(tiny_config.data)  # The shared dataset, built once per session.
  shutil.copytree(tiny_config.data.data_dir, tmp_path / "data")
  data = config_lib.apply_overrides(tiny_config, {"data.data_dir": str(tmp_path / "data")}).data
  folder = pipeline.get_builder(data).data_dir
  damaged = f"the dataset in {folder} is damaged .*delete that folder to rebuild it"
  with open(glob.glob(os.path.join(folder, "*-train.array_record*"))[0], "r+b") as f:
    f.seek(100)
    f.write(b"garbage!" * 100)
  with pytest.raises(config_lib.ConfigError, match=damaged + "$"):
    pipeline.load_sources(data)
  os.remove(os.path.join(folder, "dataset_info.json"))
  with pytest.raises(config_lib.ConfigError, match=damaged) as error:
    pipeline.load_sources(data)
  assert "dataset_info.json missing" in str(error.value)


def test_a_torn_last_metrics_line_is_dropped_and_a_garbled_one_named(tmp_path):
  rows = [{"step": 2, "loss": 1.0}, {"step": 4, "loss": 0.5}]
  text = "".join(json.dumps(r) + "\n" for r in rows)
  (tmp_path / "metrics.jsonl").write_text(text + '{"step": 6, "lo')
  assert writers.read_metrics(str(tmp_path)) == rows
  (tmp_path / "metrics.jsonl").write_text('{"step": 2, "lo\n' + text)
  with pytest.raises(config_lib.ConfigError, match="metrics.jsonl line 1 is not JSON"):
    writers.read_metrics(str(tmp_path))
