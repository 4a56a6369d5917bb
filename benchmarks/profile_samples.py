"""Where a domain's sample generation spends its time: CPU time per stage of the compiled program.

    python benchmarks/profile_samples.py [--domain=compounds] [--image_size=64] [--repeats=3]

Compiles synth.generate_batch's program for one chunk of keys (as render_throughput.py times
it) with each stage of the pipeline (the functions in STAGES) inside a jax.named_scope, runs it
`repeats` times under jax.profiler, and attributes every kernel's (thunk's) time in the trace to
the scopes of the HLO instruction it ran: its root's op_name, e.g.
`surface_points/csg_sdf_and_grad`. Prints one JSON object: wall ms per sample, the kernels' total
(more than the wall time where both cores ran kernels at once), ms per sample by scope path and
the slowest kernels. A kernel that XLA fused across stages counts for its root's stage.
"""
import collections
import functools
import glob
import gzip
import json
import os
import re
import tempfile
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from recon3d_jax.data import builder, synth, variants
from recon3d_jax.geometry import compact, csg, groundtruth, render

_DOMAIN = flags.DEFINE_string("domain", "compounds", "Domain (synth.DOMAINS).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "Image size (pixels).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Profiled runs after the warm-up.")
_TOP = flags.DEFINE_integer("top", 15, "Slowest kernels listed.")

SIZES = dict(num_surface_points=2048, num_uniform_points=2048, num_near_points=2048,
             voxel_resolution=32)  # configs/default.py
# Module-level functions the pipeline calls through their module, so that wrapping the module
# attribute scopes every call.
STAGES = ((groundtruth, "_shell_candidates"), (groundtruth, "surface_points"),
          (groundtruth, "occupancy_points"), (groundtruth, "voxelize"), (csg, "csg_sdf"),
          (csg, "csg_sdf_and_grad"), (csg, "project_to_surface"), (csg, "_surface_aabb"),
          (csg, "csg_normal"), (compact, "true_first"), (compact, "map_where"),
          (render, "render"))


def _scoped(fn, name):
  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    with jax.named_scope(name):
      return fn(*args, **kwargs)
  return wrapper


def _instruction_op_names(hlo_text: str) -> dict:
  """HLO instruction name -> op_name of what it computes (a fusion's: its root's)."""
  root_of = {}
  for m in re.finditer(r"\n(%[\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo_text, re.S):
    root = re.search(r'ROOT [^\n]*op_name="([^"]+)"', m.group(2))
    root_of[m.group(1)[1:]] = root.group(1) if root else ""
  names = {}
  for m in re.finditer(r"\n\s*(?:ROOT )?%([\w.\-]+) = [^\n]*", hlo_text):
    called = re.search(r"calls=%([\w.\-]+)", m.group(0))
    own = re.search(r'op_name="([^"]+)"', m.group(0))
    names[m.group(1)] = (root_of.get(called.group(1), "") if called
                         else own.group(1) if own else "")
  return names


def main(argv):
  del argv
  for module, name in STAGES:
    setattr(module, name, _scoped(getattr(module, name), name))
  domain = _DOMAIN.value
  chunk = builder.generation_chunk(domain)
  keys = synth.sample_keys(0, "train", jnp.arange(chunk))
  families = tuple(range(len(synth.DOMAINS[domain].families)))
  compiled = synth._generate_batch.lower(  # pylint: disable=protected-access
      keys, domain=domain, variant=variants.VARIANTS["default"], families=families,
      image_size=_IMAGE_SIZE.value, **SIZES).compile()
  op_names = _instruction_op_names(compiled.as_text())
  jax.block_until_ready(compiled(keys))
  repeats = _REPEATS.value
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(compiled(keys))
  wall = (time.perf_counter() - start) / repeats

  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(repeats):
        jax.block_until_ready(compiled(keys))
    trace_file, = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    with gzip.open(trace_file) as f:
      events = json.load(f)["traceEvents"]

  stage_names = {name for _, name in STAGES}
  by_scope, by_kernel = collections.Counter(), collections.Counter()
  for event in events:
    if (event.get("ph") != "X" or "hlo_op" not in event.get("args", {})
        or event["name"].startswith(("end:", "while", "conditional", "call"))):
      continue  # Control flow: its body's kernels are counted themselves.
    scopes = [s for s in re.split(r"[/()]", op_names.get(event["name"], "")) if s in stage_names]
    scope = "/".join(scopes) or "other"
    by_scope[scope] += event["dur"]
    by_kernel[f"{scope} {event['name']}"] += event["dur"]
  per_sample = 1e-3 / repeats / chunk  # Trace microseconds -> ms per sample.
  print(json.dumps(dict(
      benchmark="profile_samples", domain=domain, image_size=_IMAGE_SIZE.value, chunk=chunk,
      wall_ms_per_sample=1e3 * wall / chunk,
      kernels_ms_per_sample=sum(by_scope.values()) * per_sample,
      by_scope={k: round(v * per_sample, 3) for k, v in by_scope.most_common()},
      slowest_kernels={k: round(v * per_sample, 3) for k, v in by_kernel.most_common(_TOP.value)},
      loadavg=os.getloadavg()), indent=1))


if __name__ == "__main__":
  app.run(main)
