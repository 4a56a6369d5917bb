"""Dataset rendering throughput of the SDF domains, with all 3D ground truth.

    python benchmarks/render_throughput.py [--domains=primitives,compounds,organic]
        [--image_sizes=64,128] [--repeats=5]

Prints one JSON object per (domain, image size): samples/s of synth.generate_batch in chunks
of keys as the TFDS builder calls it (builder.generation_chunk) with the default variant and
config sizes, the median of `repeats` timed calls after a warm-up (compilation) call, and the
machine load (/proc/loadavg) before and after, since shared machines are noisy.
"""
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from recon3d_jax.data import builder, synth, variants

_DOMAINS = flags.DEFINE_list("domains", ["primitives", "compounds", "organic"], "Domains.")
_IMAGE_SIZES = flags.DEFINE_list("image_sizes", ["64", "128"], "Image sizes (pixels).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions after one warm-up.")

SIZES = dict(num_surface_points=2048, num_uniform_points=2048, num_near_points=2048,
             voxel_resolution=32)  # configs/default.py


def measure(domain: str, image_size: int, repeats: int) -> dict:
  chunk = builder.generation_chunk(domain)
  keys = synth.sample_keys(0, "train", jnp.arange(chunk))

  def run():
    return synth.generate_batch(keys, domain=domain, variant=variants.VARIANTS["default"],
                                families=None, image_size=image_size, **SIZES)

  load_before = os.getloadavg()
  start = time.perf_counter()
  jax.block_until_ready(run())
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(run())
    times.append(time.perf_counter() - start)
  return dict(benchmark="render_samples_per_s", domain=domain, image_size=image_size,
              value=chunk / float(np.median(times)), times_s=times, warmup_s=compile_s,
              loadavg_before=load_before, loadavg_after=os.getloadavg(),
              cpu_count=os.cpu_count(), **SIZES)


def main(argv):
  del argv
  for domain in _DOMAINS.value:
    for size in _IMAGE_SIZES.value:
      print(json.dumps(measure(domain, int(size), _REPEATS.value)), flush=True)


if __name__ == "__main__":
  app.run(main)
