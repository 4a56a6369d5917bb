"""The default model's kernels, JAX (XLA) against PyTorch eager on the same CPU, same process.

    python benchmarks/kernel_peer.py [--repeats=9]

Explains benchmarks/torch_peer.py's ratio kernel by kernel: forward + backward of a 3x3
convolution at the shapes of the ResNet-10 encoder and the 2.5D head, of one matrix product of
the occupancy decoder's size, and of a 6-layer residual MLP like the decoder. Prints one JSON
object per kernel: median milliseconds per framework (after a warm-up call) and their ratio.
Needs the `benchmark` extra (torch).
"""
import json
import os

import jax
import jax.numpy as jnp
import torch
from absl import app, flags

from recon3d_jax import cost

_REPEATS = flags.DEFINE_integer("repeats", 9, "Timed calls per kernel and framework.")

# (B, H, C_in, C_out): the encoder's first stage, the head's 32x32 level (upsampled + skip), the
# encoder's second stage.
CONV_SHAPES = ((32, 32, 32, 32), (32, 32, 64, 32), (32, 16, 64, 64))
POINTS, WIDTH = 32 * 512, 128  # Decoder rows (batch x points per instance) and width.


def _jax_conv(shape):
  b, h, c, f = shape
  x = jax.random.normal(jax.random.key(0), (b, h, h, c))
  w = 0.05 * jax.random.normal(jax.random.key(1), (3, 3, c, f))

  def loss(x, w):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(y * y)
  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  return lambda: grad(x, w)


def _torch_conv(shape):
  b, h, c, f = shape
  x = torch.randn(b, c, h, h, requires_grad=True)
  conv = torch.nn.Conv2d(c, f, 3, padding=1, bias=False)
  return lambda: (conv(x) ** 2).sum().backward()


def _jax_mlp(layers: int):
  x = jax.random.normal(jax.random.key(0), (POINTS, WIDTH))
  ws = [0.05 * jax.random.normal(jax.random.key(i + 1), (WIDTH, WIDTH)) for i in range(layers)]

  def loss(ws, x):
    h = x
    for i in range(0, layers - 1, 2):
      h = h + jax.nn.relu(jax.nn.relu(h) @ ws[i]) @ ws[i + 1]
    if layers % 2:
      h = jax.nn.relu(h) @ ws[-1]
    return jnp.sum(h)
  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  return lambda: grad(ws, x)


def _torch_mlp(layers: int):
  x = torch.randn(POINTS, WIDTH, requires_grad=True)
  ws = [(0.05 * torch.randn(WIDTH, WIDTH)).requires_grad_() for _ in range(layers)]

  def step():
    h = x
    for i in range(0, layers - 1, 2):
      h = h + torch.relu(torch.relu(h) @ ws[i]) @ ws[i + 1]
    if layers % 2:
      h = torch.relu(h) @ ws[-1]
    h.sum().backward()
  return step


def main(argv):
  del argv
  torch.set_num_threads(os.cpu_count() or 1)
  print(json.dumps(dict(benchmark="machine", cores=os.cpu_count(),
                        torch_num_threads=torch.get_num_threads(), jax_version=jax.__version__,
                        torch_version=torch.__version__, loadavg=os.getloadavg())))
  kernels = [(f"conv3x3_fwd_bwd_{'x'.join(map(str, s))}", _jax_conv(s), _torch_conv(s))
             for s in CONV_SHAPES]
  kernels += [("matmul_fwd_bwd_16384x128x128", _jax_mlp(1), _torch_mlp(1)),
              ("residual_mlp6_fwd_bwd_16384x128", _jax_mlp(6), _torch_mlp(6))]
  for name, jax_fn, torch_fn in kernels:
    jax_ms, torch_ms = (1000 * cost.median_seconds(fn, _REPEATS.value)
                        for fn in (jax_fn, torch_fn))
    print(json.dumps(dict(benchmark=name, jax_ms=round(jax_ms, 2), torch_ms=round(torch_ms, 2),
                          jax_over_torch_time=round(jax_ms / torch_ms, 2))), flush=True)
  print(json.dumps(dict(benchmark="loadavg_after", value=os.getloadavg())))


if __name__ == "__main__":
  app.run(main)
