"""Dataset rendering throughput of the SDF domains, with all 3D ground truth.

    python benchmarks/render_throughput.py [--domains=primitives,compounds,organic]
        [--image_sizes=64,128] [--repeats=5] [--chunks=8]

Prints one JSON object per (domain, image size): samples/s of synth.generate_batch as the TFDS
builder runs it (builder.generate_in_order: chunks of builder.generation_chunk keys, the first
alone, then builder.RENDER_THREADS at once) with the default variant and config sizes, the median
of `repeats` timed runs of `chunks` chunks after a warm-up (compilation) run; `one_thread` is the
same with one chunk at a time, timed alternately with it (shared machines are noisy); and the
machine load (/proc/loadavg) before and after.
"""
import functools
import json
import os
import time

import jax.numpy as jnp
import numpy as np
from absl import app, flags

from recon3d_jax.data import builder, synth, variants

_DOMAINS = flags.DEFINE_list("domains", ["primitives", "compounds", "organic"], "Domains.")
_IMAGE_SIZES = flags.DEFINE_list("image_sizes", ["64", "128"], "Image sizes (pixels).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions after one warm-up.")
_CHUNKS = flags.DEFINE_integer("chunks", 8, "Chunks of keys per timed repetition.")

SIZES = dict(num_surface_points=2048, num_uniform_points=2048, num_near_points=2048,
             voxel_resolution=32)  # configs/default.py


def _generate(indices, *, domain, image_size):
  keys = synth.sample_keys(0, "train", jnp.asarray(indices))
  return synth.generate_batch(keys, domain=domain, variant=variants.VARIANTS["default"],
                              families=None, image_size=image_size, **SIZES)


def _samples_per_s(generate, chunks, threads) -> float:
  start = time.perf_counter()
  for _ in builder.generate_in_order(generate, chunks, threads):
    pass
  return sum(len(c) for c in chunks) / (time.perf_counter() - start)


def measure(domain: str, image_size: int, repeats: int, num_chunks: int) -> dict:
  size = builder.generation_chunk(domain)
  chunks = [np.arange(i * size, (i + 1) * size) for i in range(num_chunks)]
  generate = functools.partial(_generate, domain=domain, image_size=image_size)
  load_before = os.getloadavg()
  start = time.perf_counter()
  generate(chunks[0])
  compile_s = time.perf_counter() - start
  rates = {builder.RENDER_THREADS: [], 1: []}
  for _ in range(repeats):
    for threads, values in rates.items():
      values.append(_samples_per_s(generate, chunks, threads))
  return dict(benchmark="render_samples_per_s", domain=domain, image_size=image_size,
              value=float(np.median(rates[builder.RENDER_THREADS])),
              one_thread=float(np.median(rates[1])), threads=builder.RENDER_THREADS,
              samples_per_s=rates[builder.RENDER_THREADS], one_thread_samples_per_s=rates[1],
              chunk=size, warmup_s=compile_s, loadavg_before=load_before,
              loadavg_after=os.getloadavg(), cpu_count=os.cpu_count(), **SIZES)


def main(argv):
  del argv
  for domain in _DOMAINS.value:
    for size in _IMAGE_SIZES.value:
      print(json.dumps(measure(domain, int(size), _REPEATS.value, _CHUNKS.value)), flush=True)


if __name__ == "__main__":
  app.run(main)
