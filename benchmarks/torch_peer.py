"""Training throughput of the default model: JAX vs the same model in PyTorch, one process, one CPU.

    pip install -e '.[benchmark]'   # torch (CPU build)
    python benchmarks/torch_peer.py [--config=configs/default.py] [--rounds=6] [--steps=5]
                                    [--threads=N] [--compile]

The PyTorch model below mirrors recon3d_jax.models layer for layer for the ResNet encoders
(stride-2 3x3 stem and basic blocks with GroupNorm, U-Net 2.5D head with bilinear upsampling,
FiLM occupancy decoder), as do the loss (the config's arm, one of the core arms of
recon3d_jax.arms) and the optimizer (global-norm clipping, AdamW, warmup + cosine schedule).
Before timing, the JAX parameters are copied into the PyTorch model and both compute the outputs,
the loss and the gradient norm of the same batch: they must agree, so both sides train the same
function with the same parameters.

Both run in this process on the same cores: --threads pins the process to that many cores
(sched_setaffinity, which sizes XLA's CPU thread pool when JAX starts its backend) and sets
torch.set_num_threads to match. Timing rounds alternate (JAX, PyTorch, JAX, PyTorch, ...) so that
load from other processes hits both alike; each round times --steps consecutive train steps on
one synthetic batch of the config's shapes. Prints one JSON object per line.
"""
import json
import math
import os
import platform
import time

import jax
import numpy as np
import torch
import torch.nn.functional as F
from absl import app, flags
from ml_collections import config_flags
from torch import nn

from recon3d_jax import arms, cost, experiment, losses, sharding

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Config file.")
_ROUNDS = flags.DEFINE_integer("rounds", 6, "Timed rounds per framework (interleaved).")
_STEPS = flags.DEFINE_integer("steps", 5, "Train steps per timed round.")
_THREADS = flags.DEFINE_integer("threads", None, "Cores for both frameworks (default: all "
                                "cores this process may use).")
_COMPILE = flags.DEFINE_bool("compile", False, "Also time torch.compile (inductor) as a peer.")

# Blocks per stage of the mirrored encoders (recon3d_jax.models.ENCODERS).
STAGE_SIZES = {"resnet10": (1, 1, 1, 1), "resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


# ---------------------------------------------------------------------------------------------
# The model, in NCHW. Names follow the Flax modules so that parameters can be copied across.
# ---------------------------------------------------------------------------------------------
def group_norm(channels: int) -> nn.GroupNorm:
  """As models.resnet.group_norm: gcd(8, C) groups; Flax's epsilon."""
  return nn.GroupNorm(math.gcd(8, channels), channels, eps=1e-6)


class SameConv(nn.Conv2d):
  """Conv2d with Flax's "SAME" padding: total pad max((out-1)*s + k - in, 0), the extra pixel
  at the bottom/right (a stride-2 3x3 conv on an even size pads 0 before, 1 after). Symmetric
  padding goes to the convolution itself; only the asymmetric case pays for an F.pad copy."""

  def forward(self, x):
    before, after = [], []
    for size, k, s in zip(x.shape[2:], self.kernel_size, self.stride):
      total = max((-(-size // s) - 1) * s + k - size, 0)
      before.append(total // 2)
      after.append(total - total // 2)
    if before != after:
      x = F.pad(x, [before[1], after[1], before[0], after[0]])
      before = [0, 0]
    return F.conv2d(x, self.weight, self.bias, self.stride, before)


class BasicBlock(nn.Module):
  def __init__(self, in_ch: int, features: int, strides: int):
    super().__init__()
    self.conv1 = SameConv(in_ch, features, 3, strides, bias=False)
    self.norm1 = group_norm(features)
    self.conv2 = SameConv(features, features, 3, 1, bias=False)
    self.norm2 = group_norm(features)
    self.project = in_ch != features or strides != 1
    if self.project:
      self.conv_proj = SameConv(in_ch, features, 1, strides, bias=False)
      self.norm_proj = group_norm(features)

  def forward(self, x):
    y = F.relu(self.norm1(self.conv1(x)))
    y = self.norm2(self.conv2(y))
    if self.project:
      x = self.norm_proj(self.conv_proj(x))
    return F.relu(x + y)


class ResNetEncoder(nn.Module):
  def __init__(self, stage_sizes, width: int, code_dim: int):
    super().__init__()
    self.stem = SameConv(3, width, 3, 2, bias=False)
    self.stem_norm = group_norm(width)
    self.blocks = nn.ModuleList()
    self.stage_ends = []
    in_ch = width
    for i, num_blocks in enumerate(stage_sizes):
      for j in range(num_blocks):
        self.blocks.append(BasicBlock(in_ch, width * 2**i, 2 if i > 0 and j == 0 else 1))
        in_ch = width * 2**i
      self.stage_ends.append(len(self.blocks) - 1)
    self.code = nn.Linear(in_ch, code_dim)

  def forward(self, images):
    x = F.relu(self.stem_norm(self.stem(images)))
    features = []
    for i, block in enumerate(self.blocks):
      x = block(x)
      if i in self.stage_ends:
        features.append(x)
    return self.code(x.mean(dim=(2, 3))), features


class DepthNormalHead(nn.Module):
  def __init__(self, feature_channels, width: int, depth_offset: float):
    super().__init__()
    self.depth_offset = depth_offset
    self.convs, self.norms = nn.ModuleList(), nn.ModuleList()
    in_ch = feature_channels[-1]
    for skip_ch in reversed(feature_channels[:-1]):
      self.convs.append(SameConv(in_ch + skip_ch, width, 3, 1, bias=False))
      self.norms.append(group_norm(width))
      in_ch = width
    self.depth = nn.Conv2d(width, 1, 1)
    self.normal = nn.Conv2d(width, 3, 1)
    self.mask = nn.Conv2d(width, 1, 1)

  def forward(self, features, out_hw):
    x = features[-1]
    for skip, conv, norm in zip(reversed(features[:-1]), self.convs, self.norms):
      x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
      x = F.relu(norm(conv(torch.cat([x, skip], dim=1))))
    maps = torch.cat([self.depth(x), self.normal(x), self.mask(x)], dim=1)
    maps = F.interpolate(maps, size=out_hw, mode="bilinear", align_corners=False)
    normal = maps[:, 1:4]
    normal = normal * torch.rsqrt(torch.clamp((normal * normal).sum(1, keepdim=True), min=1e-12))
    return dict(depth=maps[:, 0] + self.depth_offset, normal=normal, mask_logits=maps[:, 4])


class FiLMBlock(nn.Module):
  def __init__(self, code_dim: int, hidden: int):
    super().__init__()
    self.film = nn.Linear(code_dim, 2 * hidden)
    self.dense1 = nn.Linear(hidden, hidden)
    self.dense2 = nn.Linear(hidden, hidden)

  def forward(self, h, code):
    scale, shift = self.film(code)[:, None].chunk(2, dim=-1)
    y = self.dense1(F.relu(h)) * (1 + scale) + shift
    return h + self.dense2(F.relu(y))


class OccupancyDecoder(nn.Module):
  def __init__(self, code_dim: int, hidden: int, num_blocks: int):
    super().__init__()
    self.embed = nn.Linear(3, hidden)
    self.blocks = nn.ModuleList(FiLMBlock(code_dim, hidden) for _ in range(num_blocks))
    self.out = nn.Linear(hidden, 1)

  def forward(self, points, code):
    h = self.embed(points)
    for block in self.blocks:
      h = block(h, code)
    return self.out(F.relu(h))[..., 0]


class ReconModel(nn.Module):
  """images (B,3,H,W), points (B,M,3) -> dict(depth (B,H,W), normal (B,3,H,W), mask_logits
  (B,H,W), occ_logits (B,M), code (B,code_dim)); as models.ReconModel."""

  def __init__(self, encoder: str, encoder_width: int, code_dim: int, head_width: int,
               decoder_hidden: int, decoder_blocks: int, depth_offset: float = 2.2):
    super().__init__()
    stages = STAGE_SIZES[encoder]
    self.backbone = ResNetEncoder(stages, encoder_width, code_dim)
    self.head = DepthNormalHead([encoder_width * 2**i for i in range(len(stages))],
                                head_width, depth_offset)
    self.occupancy = OccupancyDecoder(code_dim, decoder_hidden, decoder_blocks)

  def forward(self, images, points):
    code, features = self.backbone(images)
    outputs = self.head(features, images.shape[2:])
    outputs.update(occ_logits=self.occupancy(points, code), code=code)
    return outputs


def total_loss(outputs: dict, batch: dict, weights: dict) -> torch.Tensor:
  """losses.total_loss (plain batch mean) in NCHW: normal maps (B,3,H,W), others as there."""
  def masked_mean(values, valid):
    return (values * valid).sum((1, 2)) / valid.sum((1, 2)).clamp(min=1)

  mask = batch["mask"]
  dot = (outputs["normal"] * batch["normal"]).sum(1)
  norms = (outputs["normal"] ** 2).sum(1) * (batch["normal"] ** 2).sum(1)
  terms = dict(
      occupancy=F.binary_cross_entropy_with_logits(
          outputs["occ_logits"], batch["occ"], reduction="none").mean(-1),
      normal=masked_mean(1 - dot * torch.rsqrt(norms.clamp(min=1e-12)), mask),
      depth=masked_mean((outputs["depth"] - batch["depth"]).abs(), mask),
      silhouette=F.binary_cross_entropy_with_logits(
          outputs["mask_logits"], mask, reduction="none").mean((1, 2)))
  return sum(weights[k] * terms[k] for k in losses.TERMS).mean()


def make_optimizer(net: nn.Module, config) -> tuple[torch.optim.Optimizer, object]:
  """AdamW with experiment.make_optimizer's schedule (linear warmup, cosine decay to 1%)."""
  o = config.optimizer
  opt = torch.optim.AdamW(net.parameters(), lr=o.learning_rate, weight_decay=o.weight_decay,
                          betas=(0.9, 0.999), eps=1e-8)

  def factor(step):
    if step < o.warmup_steps:
      return step / o.warmup_steps
    t = min(step - o.warmup_steps, config.total_steps - o.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * t / (config.total_steps - o.warmup_steps)))
    return 0.01 + 0.99 * cosine

  return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def make_train_step(net, optimizer, weights, clip_norm: float, compile_model: bool = False):
  """step(batch) -> dict(loss, grad_norm, param_norm): experiment.make_train_step's update."""
  opt, schedule = optimizer
  forward = torch.compile(net) if compile_model else net

  def step(batch):
    opt.zero_grad(set_to_none=True)
    loss = total_loss(forward(batch["image"], batch["points"]), batch, weights)
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(net.parameters(), clip_norm)
    opt.step()
    schedule.step()
    with torch.no_grad():
      param_norm = torch.sqrt(sum((p * p).sum() for p in net.parameters()))
    return dict(loss=loss.detach(), grad_norm=grad_norm, param_norm=param_norm)

  return step


# ---------------------------------------------------------------------------------------------
# Flax <-> PyTorch.
# ---------------------------------------------------------------------------------------------
def flax_to_torch_names(net: ReconModel) -> dict:
  """PyTorch parameter name -> (Flax path tuple, converter) for ReconModel."""
  mapping = {}

  def conv(torch_prefix, flax_path, bias=False):
    mapping[torch_prefix + ".weight"] = (flax_path + ("kernel",),
                                         lambda k: k.transpose(3, 2, 0, 1))  # HWIO -> OIHW.
    if bias:
      mapping[torch_prefix + ".bias"] = (flax_path + ("bias",), None)

  def norm(torch_prefix, flax_path):
    mapping[torch_prefix + ".weight"] = (flax_path + ("scale",), None)
    mapping[torch_prefix + ".bias"] = (flax_path + ("bias",), None)

  def dense(torch_prefix, flax_path):
    mapping[torch_prefix + ".weight"] = (flax_path + ("kernel",), lambda k: k.T)
    mapping[torch_prefix + ".bias"] = (flax_path + ("bias",), None)

  stages = ("backbone", "ResNetStages_0")
  conv("backbone.stem", stages + ("stem",))
  norm("backbone.stem_norm", stages + ("GroupNorm_0",))
  for i, block in enumerate(net.backbone.blocks):
    path = stages + (f"BasicBlock_{i}",)
    conv(f"backbone.blocks.{i}.conv1", path + ("Conv_0",))
    norm(f"backbone.blocks.{i}.norm1", path + ("GroupNorm_0",))
    conv(f"backbone.blocks.{i}.conv2", path + ("Conv_1",))
    norm(f"backbone.blocks.{i}.norm2", path + ("GroupNorm_1",))
    if block.project:
      conv(f"backbone.blocks.{i}.conv_proj", path + ("Conv_2",))
      norm(f"backbone.blocks.{i}.norm_proj", path + ("GroupNorm_2",))
  dense("backbone.code", ("backbone", "code"))
  for i in range(len(net.head.convs)):
    conv(f"head.convs.{i}", ("head", f"Conv_{i}"))
    norm(f"head.norms.{i}", ("head", f"GroupNorm_{i}"))
  for name in ("depth", "normal", "mask"):
    conv(f"head.{name}", ("head", name), bias=True)
  dense("occupancy.embed", ("occupancy", "embed"))
  for i in range(len(net.occupancy.blocks)):
    path = ("occupancy", f"FiLMBlock_{i}")
    dense(f"occupancy.blocks.{i}.film", path + ("film",))
    dense(f"occupancy.blocks.{i}.dense1", path + ("Dense_0",))
    dense(f"occupancy.blocks.{i}.dense2", path + ("Dense_1",))
  dense("occupancy.out", ("occupancy", "out"))
  return mapping


def load_flax_params(net: ReconModel, params) -> None:
  """Copies Flax parameters (nested dict of numpy arrays) into `net`; every parameter of both
  sides must be used exactly once."""
  mapping = flax_to_torch_names(net)
  torch_names = {name for name, _ in net.named_parameters()}
  flax_paths = {tuple(k.key for k in path) for path, _ in
                jax.tree_util.tree_flatten_with_path(params)[0]}
  used = {path for path, _ in mapping.values()}
  if set(mapping) != torch_names or used != flax_paths:
    raise AssertionError(
        f"parameter mapping mismatch: PyTorch unmapped {sorted(torch_names - set(mapping))}, "
        f"Flax unmapped {sorted(flax_paths - used)}, unknown {sorted(used - flax_paths)}")
  state = {}
  for name, (path, convert) in mapping.items():
    value = params
    for key in path:
      value = value[key]
    value = np.array(value)  # A writable copy: torch.from_numpy shares memory.
    state[name] = torch.from_numpy(np.ascontiguousarray(convert(value) if convert else value))
  net.load_state_dict(state)


def to_torch_batch(batch: dict) -> dict:
  """NHWC numpy batch (cost.synthetic_batch) -> NCHW torch tensors."""
  out = {k: torch.from_numpy(np.array(v)) for k, v in batch.items()}
  out["image"] = out["image"].permute(0, 3, 1, 2).contiguous()
  out["normal"] = out["normal"].permute(0, 3, 1, 2).contiguous()
  return out


def count_params(net: nn.Module) -> int:
  return sum(p.numel() for p in net.parameters())


# ---------------------------------------------------------------------------------------------
# The benchmark.
# ---------------------------------------------------------------------------------------------
def check_equivalence(model, params, net, batch_np: dict, weights: dict, n: int = 4) -> dict:
  """Outputs, loss and gradient norm of both models on the first n instances of the batch;
  raises AssertionError unless they agree."""
  small = {k: v[:n] for k, v in batch_np.items()}

  def loss_fn(p):
    outputs = model.apply({"params": p}, small["image"], small["points"])
    return losses.total_loss(outputs, small, weights)[0], outputs

  (jax_loss, jax_out), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  jax_grad_norm = float(np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads))))

  small_torch = to_torch_batch(small)
  net.zero_grad(set_to_none=True)
  torch_out = net(small_torch["image"], small_torch["points"])
  torch_loss = total_loss(torch_out, small_torch, weights)
  torch_loss.backward()
  torch_grad_norm = float(torch.sqrt(sum((p.grad ** 2).sum() for p in net.parameters())))
  net.zero_grad(set_to_none=True)

  diffs = {}
  for key in ("depth", "normal", "mask_logits", "occ_logits", "code"):
    value = torch_out[key].detach().numpy()
    if key == "normal":
      value = value.transpose(0, 2, 3, 1)
    diffs[key] = float(np.max(np.abs(np.asarray(jax_out[key]) - value)))
  result = dict(instances=n, max_abs_output_diff=diffs, jax_loss=float(jax_loss),
                torch_loss=torch_loss.item(), jax_grad_norm=jax_grad_norm,
                torch_grad_norm=torch_grad_norm)
  if (max(diffs.values()) > 1e-3
      or not math.isclose(result["jax_loss"], result["torch_loss"], rel_tol=1e-4)
      or not math.isclose(jax_grad_norm, torch_grad_norm, rel_tol=1e-3)):
    raise AssertionError(f"the PyTorch model does not mirror the JAX one: {result}")
  return result


def _check_mirrored(config) -> None:
  """Raises UsageError unless the config's model and arm are the ones mirrored here."""
  m = config.model
  problems = []
  if m.encoder not in STAGE_SIZES:
    problems.append(f"config.model.encoder={m.encoder!r} (mirrored: {sorted(STAGE_SIZES)})")
  if m.get("decoder", "occupancy") != "occupancy" or m.get("pixel_aligned", False):
    problems.append(f"config.model.decoder={m.get('decoder')!r}, pixel_aligned="
                    f"{m.get('pixel_aligned')!r} (mirrored: the plain occupancy decoder)")
  if config.arm not in arms.core_arms():
    problems.append(f"config.arm={config.arm!r} (mirrored: {', '.join(arms.core_arms())})")
  if problems:
    raise app.UsageError("the PyTorch peer does not mirror " + "; ".join(problems))


def torch_model(config) -> ReconModel:
  m = config.model
  return ReconModel(m.encoder, m.encoder_width, m.code_dim, m.head_width, m.decoder_hidden,
                    m.decoder_blocks)


def _pin_cores(threads: int | None) -> int:
  """Restricts this process to `threads` cores (before JAX starts its backend)."""
  cores = sorted(os.sched_getaffinity(0))
  if threads is not None:
    if not 1 <= threads <= len(cores):
      raise app.UsageError(f"--threads={threads}: expected 1..{len(cores)} (cores available)")
    cores = cores[:threads]
    os.sched_setaffinity(0, cores)
  return len(cores)


def _loadavg() -> str:
  with open("/proc/loadavg") as f:
    return f.read().strip()


def main(argv):
  del argv
  threads = _pin_cores(_THREADS.value)
  torch.set_num_threads(threads)
  config = _CONFIG.value
  _check_mirrored(config)
  print(json.dumps(dict(
      benchmark="machine", platform=platform.platform(), cores=threads,
      torch_num_threads=torch.get_num_threads(), torch_version=torch.__version__,
      jax_version=jax.__version__, jax_devices=[str(d) for d in jax.devices()],
      xla_flags=os.environ.get("XLA_FLAGS", ""), loadavg=_loadavg())))

  mesh = sharding.make_mesh(jax.devices()[:1])
  model, tx = experiment.build_model(config), experiment.make_optimizer(config)
  state = experiment.create_train_state(config, model, tx, mesh)
  weights = experiment.loss_weights_for(config)
  jax_step = experiment.jit_train_step(experiment.make_train_step(model, tx, weights), mesh)
  batch_np = cost.synthetic_batch(config, config.batch_size)
  jax_batch = sharding.shard_batch(batch_np, mesh)

  net = torch_model(config)
  load_flax_params(net, jax.tree.map(np.asarray, state["params"]))
  jax_params, torch_params = experiment.count_params(state["params"]), count_params(net)
  if jax_params != torch_params:
    raise AssertionError(f"parameter counts differ: JAX {jax_params}, PyTorch {torch_params}")
  check = check_equivalence(model, state["params"], net, batch_np, weights)
  print(json.dumps(dict(benchmark="equivalence", params=jax_params, **check)))

  torch_batch = to_torch_batch(batch_np)
  clip = config.optimizer.clip_norm
  peers = {"torch_eager": make_train_step(net, make_optimizer(net, config), weights, clip)}
  if _COMPILE.value:
    compiled_net = torch_model(config)
    compiled_net.load_state_dict(net.state_dict())
    peers["torch_compile"] = make_train_step(
        compiled_net, make_optimizer(compiled_net, config), weights, clip, compile_model=True)

  holder = {"state": state}

  def run_jax(n):
    for _ in range(n):
      holder["state"], stats = jax_step(holder["state"], jax_batch)
    jax.block_until_ready(stats)

  def torch_runner(step):
    def run(n):
      for _ in range(n):
        step(torch_batch)
    return run

  runners = {"jax": run_jax, **{name: torch_runner(step) for name, step in peers.items()}}
  for name, run in runners.items():  # Warm-up: compilation, allocators, first-step effects.
    start = time.perf_counter()
    run(2)
    print(json.dumps(dict(benchmark="warmup_2_steps_s", framework=name,
                          value=time.perf_counter() - start)))

  times = {name: [] for name in runners}
  for _ in range(_ROUNDS.value):
    for name, run in runners.items():
      start = time.perf_counter()
      run(_STEPS.value)
      times[name].append((time.perf_counter() - start) / _STEPS.value)

  steps_per_s = {name: 1 / float(np.median(t)) for name, t in times.items()}
  for name, t in times.items():
    print(json.dumps(dict(
        benchmark="train_steps_per_s", framework=name, encoder=config.model.encoder,
        batch_size=config.batch_size, image_size=config.data.image_size,
        points_per_step=config.data.points_per_step, arm=config.arm, params=jax_params,
        value=steps_per_s[name], images_per_s=config.batch_size * steps_per_s[name],
        step_s_per_round=t)))
  for name in peers:
    print(json.dumps(dict(benchmark=f"ratio_jax_over_{name}_steps_per_s",
                          value=steps_per_s["jax"] / steps_per_s[name])))
  print(json.dumps(dict(benchmark="loadavg_after", value=_loadavg())))


if __name__ == "__main__":
  app.run(main)
