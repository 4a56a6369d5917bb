"""Settings shared by the study configs (docs/DESIGN.md section 6): one config per table.

Every study config declares, before any run:
- `get_config(arg)`: the base config; `sweep(arg)`: dicts of dotted-key overrides, one per run.
- `PRIMARY_METRIC`: the per-instance metric the report calls "F1": F@tau with tau = 0.02
  (unit-cube units, docs/DESIGN.md section 7). Precision/recall are precision@tau/recall@tau.
- `BASELINE_ARM` / `OURS_ARM`: the two arms the report compares (vanilla vs full, 3D-R-DEP).
- `TABLES`: the report's tables for this study, by their keys in report.json
  (`recon3d_jax.study.sweeps.TABLE_NAMES`);
  "power" gives the seed-level power of the comparisons of the others.

Arguments (`configs/study/main.py:runlocal,seeds=2`):
- `runlocal`: the embedded scale for a 2-core CPU (32 px, the default widths, 1,500 steps of 16,
  2,000 training / 100 test instances, 10 seeds of the core arms and 3 of the others, 2
  benchmarks); without it, the full scale for GPUs (64 px, 20k steps, 5 seeds).
- `seeds`: number of seeds per cell (0 keeps the scale's default).
"""
from configs import default
from recon3d_jax import arms, config_lib

PRIMARY_METRIC = "fscore@0.02"
BASELINE_ARM = "vanilla"
OURS_ARM = "full"
ARMS = arms.study_arms()
# The controlled comparison (same model, loss weights differ): the most seeds.
CORE_ARMS = arms.core_arms()
LEVELS = ("minimal", "low", "medium", "high", "extreme")
RDEP_COMPONENTS = ("feature_extraction", "adaptive_weighting", "regularization")


def parse(arg, **extra):
  return config_lib.parse_arg(arg, runlocal=False, seeds=0, **extra)


def get_config(arg, supervision: str = "clean"):
  """The study-wide base config at the embedded or the full scale, with 2.5D labels of this
  quality (`config.data.supervision`)."""
  # Both scales keep the default model (pixel-aligned decoder, widths of configs/default.py).
  c = default.get_config()
  c.arm = BASELINE_ARM
  c.data.supervision = supervision
  if arg.runlocal:
    # The smallest recipe found to reconstruct beyond recognition on this CPU (test IoU at least
    # 0.15 over mean_shape; benchmarks/RESULTS.md, "Recipe"): 32 px, 2,000 shapes,
    # 1,500 steps of 16.
    c.data.update(image_size=32, num_train=2000, num_validation=32, num_test=100,
                  points_per_step=256)
    c.eval.max_instances = 100
    # Meshes on 65 points per side (cells of 0.017, finer than tau = 0.02).
    c.eval.update(mise_resolution0=16, mise_upsampling_steps=2, cost_repeats=0)
    c.batch_size = 16
    c.total_steps = 1500
    c.log_every_steps = 50
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
    c.optimizer.warmup_steps = 50
  else:
    c.data.num_train = 10_000
    c.data.num_validation = 200
    c.data.num_test = 500
    c.batch_size = 64
    c.total_steps = 20_000
    c.log_every_steps = 100
    c.eval_every_steps = 2_000
    c.checkpoint_every_steps = 1_000
    c.optimizer.warmup_steps = 500
    c.eval.max_instances = 500
  return c


def seeds(arg, core: bool = False) -> range:
  """Seeds per cell: `seeds=N` if given; else at the embedded scale 10 for the core arms (a
  seed-level permutation test then reaches p = 0.002) and 3 for the others; 5 at full scale."""
  if arg.seeds:
    return range(arg.seeds)
  if arg.runlocal:
    return range(10 if core else 3)
  return range(5)


def benchmarks(arg) -> tuple[str, ...]:
  if arg.runlocal:
    return ("primitives", "compounds")
  return ("primitives", "compounds", "organic", "meshes")


def with_stage1(run: dict) -> list[dict]:
  """[run] plus, for a 3D-R-DEP arm with feature extraction, its stage1 (2.5D-only pretraining)
  run: the same overrides with the pretraining arm and no 3D-R-DEP switches; `init_from` refers
  to it."""
  arm = run.get("arm", BASELINE_ARM)
  if not arms.needs_stage1(arm, run.get("rdep.feature_extraction", True)):
    return [run]
  stage1 = {k: v for k, v in run.items() if not k.startswith("rdep.")}
  stage1["arm"] = arms.pretraining_arm()
  return [stage1, dict(run, init_from=stage1)]


def unique(runs):
  """Drops repeats (e.g. one stage1 run shared by several full variants), keeping order."""
  seen = []
  for run in runs:
    if run not in seen:
      seen.append(run)
      yield run
