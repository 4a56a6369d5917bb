"""The embedded default: primitives rendered on the fly, a ResNet-10 encoder, the `normal` arm.

Usage:
  python -m recon3d_jax.main --config=configs/default.py --workdir=/tmp/run
  python -m recon3d_jax.main --config=configs/default.py:arm=depth --workdir=/tmp/run_depth
  python -m recon3d_jax.main --config=configs/default.py:runlocal --workdir=/tmp/tiny

`runlocal` shrinks everything to a smoke test (seconds of training; used by the tests).
"""
from recon3d_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, arm="normal", encoder="resnet10", seed=0,
                             supervision="clean", benchmark="primitives")
  c = config_lib.ml_collections.ConfigDict()
  c.seed = arg.seed
  # A name in recon3d_jax.arms.ARMS, the table of what each arm trains and switches on.
  c.arm = arg.arm

  c.data = dict(
      # A named benchmark (recon3d_jax/data/benchmarks.py): domain, variant, held-out families.
      benchmark=arg.benchmark,
      data_dir="./data_dir",  # TFDS data dir; built on first use, then reused.
      build_seed=0,  # Seed of the procedurally generated dataset (not of training).
      num_train=2000,
      num_validation=100,
      num_test=200,
      image_size=64,
      num_surface_points=2048,
      num_uniform_points=2048,
      num_near_points=2048,
      points_per_step=512,  # Occupancy query points sampled per instance per step.
      # Quality of the 2.5D training targets: "clean", a level (minimal|low|medium|high|
      # extreme), "uniform", or a mixture "minimal:0.5,extreme:0.5" (recon3d_jax/data/corrupt.py).
      supervision=arg.supervision,
      voxel_resolution=32,
      curriculum=False,  # Train on supervision levels easy to hard (pipeline.CurriculumSampler).
      max_level="",  # Drop training instances whose level is above this one ("" keeps all).
      mesh_dir="",  # `meshes` benchmarks: a folder of .off/.obj/.ply files; "" = assets/meshes.
      on_bad_mesh="fail",  # Or "skip" meshes that are not watertight, empty or unreadable.
  )
  c.model = dict(
      encoder=arg.encoder, encoder_width=32, code_dim=128, head_width=32,
      decoder="occupancy",  # occupancy (implicit, at query points) | voxel (32^3 grid).
      # The occupancy decoder also reads the 2.5D head's features under each point's pixel:
      # it learns shape much faster (benchmarks/RESULTS.md, "Recipe").
      pixel_aligned=True,
      decoder_hidden=128, decoder_blocks=3,
      decoder_frequencies=0)  # Octaves of Fourier features of the query points (0: raw xyz).
  c.loss = dict(normal_weight=1.0, depth_weight=1.0, silhouette_weight=0.1)
  # 3D-R-DEP (arm=full) and its ablations: each component switches off separately.
  c.rdep = dict(
      # Encoder initialised from a stage-1 run (arm=stage1; pass its workdir as init_from), then
      # a learned projection to projection_dim feeds the 3D decoder. Off: encoder from scratch.
      feature_extraction=True,
      projection_dim=128,
      # Learned scorer (hidden width scorer_hidden) -> w = softmax(s / temperature) over the
      # global batch, multiplying the per-instance weighted_terms. Off: the plain batch mean.
      adaptive_weighting=True,
      scorer_hidden=64,
      temperature=1.0,
      weighted_terms=("occupancy", "normal", "depth", "silhouette"),
      # + kl_weight * KL(w || uniform). Off: nothing stops weights collapsing onto easy instances.
      regularization=True,
      kl_weight=0.5,
  )
  c.init_from = ""  # Workdir of a stage-1 run whose encoder initialises this one (arm=full).
  c.optimizer = dict(learning_rate=2e-3, weight_decay=1e-4, warmup_steps=50, clip_norm=1.0)

  c.batch_size = 32  # Global batch, split over all devices.
  c.total_steps = 500  # Sized so `make run` finishes in minutes on a 2-core CPU.
  c.log_every_steps = 25
  c.eval_every_steps = 250  # Validation losses + IoU during training.
  c.checkpoint_every_steps = 100
  c.keep_checkpoints = 3

  c.eval = dict(
      # Mesh grid for marching cubes, by MISE (recon3d_jax/mise.py) at the validation threshold:
      # a coarse grid of mise_resolution0 cells per side over the 1.1 box, evaluated everywhere,
      # then mise_upsampling_steps 2x refinements near the surface. 32, 2: 129 points per side
      # (cells of 0.0086, finer than tau = 0.01); steps 0 is the dense resolution0 + 1 grid.
      mise_resolution0=32,
      mise_upsampling_steps=2,
      num_pred_points=2048,  # Area-uniform samples on the predicted mesh.
      threshold_candidates=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),  # Chosen on validation.
      max_instances=200,  # Per split, for the final evaluation.
      batch_size=32,
      num_picture_instances=6,
      # Timed repeats of the cost measurement written to eval/summary.json (recon3d_jax/cost.py:
      # parameters, latency, step time, peak memory); 0 skips it.
      cost_repeats=5,
  )

  if arg.runlocal:
    c.data.update(num_train=48, num_validation=8, num_test=8, image_size=32,
                  num_surface_points=512, num_uniform_points=512, num_near_points=512,
                  points_per_step=256)
    # The smoke scale keeps the global-code decoder, so a switch to the voxel decoder is valid.
    c.model.update(encoder_width=8, code_dim=32, head_width=8, decoder_hidden=32,
                   decoder_blocks=2, pixel_aligned=False)
    c.rdep.update(projection_dim=32, scorer_hidden=16)
    c.optimizer.warmup_steps = 2
    c.batch_size = 8
    c.total_steps = 8
    c.log_every_steps = 2
    c.eval_every_steps = 4
    c.checkpoint_every_steps = 4
    c.eval.update(mise_resolution0=8, mise_upsampling_steps=1, num_pred_points=512,
                  max_instances=8, batch_size=8, num_picture_instances=2, cost_repeats=0)
  return c
