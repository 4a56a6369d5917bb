"""Ensembles of finished runs (a negative result of the study): average K models' predictions.

    python -m recon3d_jax.study.ensemble --sweep_dir=DIR --members=3

Runs of a sweep that differ only in their seed form a cell; each cell's finished runs, sorted by
seed, are cut into consecutive groups of K (leftovers unused). An ensemble's prediction for an
instance is the mean of its members' occupancy probabilities (query points, voxels) and depth
maps, and the renormalised mean of their normal maps. It is evaluated exactly like one run
(evaluate.instance_metrics), with its occupancy threshold chosen on the validation split from the
averaged probabilities; its mesh comes from MISE on the mean probability (evaluate.mesh_grids
with all members), which refines near the ensemble's surface, not near each member's. Results:
DIR/ensembles/<cell>-<g>/eval/{validation,test}.jsonl (rows like a run's), eval/summary.json, and
members.json, written last (an ensemble without it is unfinished). recon3d_jax.study.report compares
each ensemble with its single models.
"""
from __future__ import annotations

import json
import os

import numpy as np
from absl import flags, logging

from recon3d_jax import cli, config_lib, writers
from recon3d_jax.study import sweeps


def groups(sweep_dir: str, members: int) -> list[tuple[str, list[str]]]:
  """(name, run ids) of every ensemble of `members` finished runs of one cell, by seed."""
  if members < 2:
    raise config_lib.ConfigError(f"--members={members}: expected at least 2")
  manifest = sweeps.read_manifest(sweep_dir)
  cells: dict[str, list[tuple]] = {}
  for rid, run in manifest["runs"].items():
    if sweeps.run_state(sweep_dir, rid) == "done":
      cell = {k: v for k, v in run["overrides"].items() if k not in config_lib.REPLICATE_KEYS}
      cells.setdefault(sweeps.run_id(cell), []).append((run["overrides"].get("seed", 0), rid))
  out = []
  for cell, runs in cells.items():
    ids = [rid for _, rid in sorted(runs)]
    out += [(f"{cell}-{g}", ids[g * members:(g + 1) * members])
            for g in range(len(ids) // members)]
  return out


def average(preds: list[dict]) -> dict:
  """Mean of members' `evaluate.predict` outputs; normals renormalised to unit length."""
  out = {k: np.mean([p[k] for p in preds], axis=0)
         for k in ("occ_prob", "voxel_prob", "depth") if k in preds[0]}
  normal = np.mean([p["normal"] for p in preds], axis=0)
  out["normal"] = normal / np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-8)
  return out


def evaluate_ensemble(workdirs: list[str], out_dir: str) -> dict:
  """Evaluates the ensemble of `workdirs` into OUT_DIR/eval; returns the test summary."""
  from recon3d_jax import (  # pylint: disable=import-outside-toplevel
      baselines, evaluate, experiment, metrics, sharding)
  from recon3d_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  mesh = sharding.make_mesh()
  members = [experiment.load(w, mesh=mesh) for w in workdirs]
  config = members[0][2]
  for workdir, (_, _, c) in zip(workdirs, members):
    differing = config_lib.differing_keys(
        config.to_dict(), c.to_dict(),
        ignore=(*config_lib.REPLICATE_KEYS, *config_lib.NON_DEFINING_KEYS))
    if differing:
      raise config_lib.ConfigError(f"run {workdir!r} differs from {workdirs[0]!r} in "
                                   f"{differing[:5]}; expected runs that differ only in seed")
  sources = pipeline.load_sources(config.data)

  def predictions(split):
    for batch in pipeline.eval_batches(sources[split], config.eval.batch_size,
                                       config.eval.max_instances):
      yield batch, average([evaluate.predict(m, p, batch, mesh, config.data.voxel_resolution)
                            for m, p, _ in members])

  config_lib.validate_eval(config)
  probs, labels = [], []
  for batch, pred in predictions("validation"):
    probs.extend(pred["voxel_prob"].reshape(len(pred["voxel_prob"]), -1))
    labels.extend(baselines.voxel_labels(batch))
  threshold = metrics.select_threshold(probs, labels, list(config.eval.threshold_candidates))
  summary = {"threshold": threshold, "members": workdirs,
             "mesh_grid": evaluate.mesh_grid_summary(config.eval)}
  os.makedirs(os.path.join(out_dir, "eval"), exist_ok=True)
  for split in ("validation", "test"):
    rows = []
    for batch, pred in predictions(split):
      grid, evaluated = evaluate.mesh_grids([(m, p) for m, p, _ in members], batch, mesh,
                                            threshold, config.eval)
      pred = dict(pred, grid=grid, mise_points=evaluated)
      for i in range(len(batch["image"])):
        example = {k: v[i] for k, v in batch.items()}
        rng = np.random.default_rng([config.seed, int(example["index"])])
        row = {"index": int(example["index"]), "kind": int(example["kind"])}
        row.update(evaluate.instance_metrics({k: v[i] for k, v in pred.items()}, example,
                                             threshold, config.eval.num_pred_points, rng))
        rows.append(row)
    writers.atomic_write(os.path.join(out_dir, "eval", f"{split}.jsonl"),
                         "".join(json.dumps(r) + "\n" for r in rows))
    summary[split] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]
                      if k not in ("index", "kind")}
  writers.atomic_write(os.path.join(out_dir, "eval", "summary.json"),
                       json.dumps(summary, indent=2))
  return summary["test"]


def run(sweep_dir: str, members: int) -> list[str]:
  """Evaluates every unfinished ensemble of the sweep; returns the names of all of them."""
  names = []
  for name, ids in groups(sweep_dir, members):
    out_dir = os.path.join(sweep_dir, "ensembles", name)
    names.append(name)
    if os.path.exists(os.path.join(out_dir, "members.json")):
      continue
    summary = evaluate_ensemble([sweeps.run_dir(sweep_dir, r) for r in ids], out_dir)
    writers.atomic_write(os.path.join(out_dir, "members.json"),
                         json.dumps({"members": ids}))
    logging.info("Ensemble %s of %s: F@0.02 %.4f.", name, ids, summary["fscore@0.02"])
  return names


FLAGS = flags.FLAGS


def main(argv) -> None:
  cli.no_arguments(argv)
  writers.setup_logging()
  names = run(FLAGS.sweep_dir, FLAGS.members)
  print(f"{len(names)} ensembles in {os.path.join(FLAGS.sweep_dir, 'ensembles')}")


if __name__ == "__main__":
  flags.DEFINE_string("sweep_dir", None, "Sweep directory (launch/sweep.py --sweep_dir).")
  flags.DEFINE_integer("members", 3, "Runs (seeds) per ensemble.")
  flags.mark_flag_as_required("sweep_dir")
  cli.run(main)
