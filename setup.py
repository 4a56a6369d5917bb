"""Installs recon3d_jax. `pip install -e .[test]` adds the test dependencies."""
import setuptools

INSTALL_REQUIRES = [
    "jax[cpu]>=0.7,<0.13",
    "flax>=0.10,<0.13",
    "optax>=0.2.4,<0.3",
    "orbax-checkpoint>=0.11,<0.13",
    "chex>=0.1.88,<0.2",
    "absl-py>=2.1,<3",
    "ml_collections>=1.0,<2",
    "tensorflow-datasets>=4.9.7,<5",  # used without TensorFlow: array_record + data_source
    "array_record>=0.7,<0.9",
    "importlib_resources>=6",  # TFDS needs it to locate a builder defined in a package.
    "grain>=0.2.10,<0.3",
    "numpy>=1.26,<3",
    "scipy>=1.15,<2",
    "scikit-image>=0.24,<0.27",
    "trimesh>=4.4,<6",
    "tensorboardX>=2.6,<3",
    "tqdm>=4.66,<5",
    "matplotlib>=3.8,<4",
    "submitit>=1.5,<2",  # Slurm backend of launch/sweep.py.
]

setuptools.setup(
    name="recon3d_jax",
    version="0.1.0",
    description="Single-image 3D reconstruction with depth / normal supervision, in JAX.",
    packages=setuptools.find_packages(include=["recon3d_jax", "recon3d_jax.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # rtree: trimesh's ray caster and `contains`, the references of the mesh renderer.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "statsmodels>=0.14,<0.16", "rtree>=1.3,<2",
                 "nbclient>=0.10,<0.12", "nbformat>=5.9,<6", "ipykernel>=6.29,<8"],
        # The PyTorch peer of benchmarks/torch_peer.py (CPU build).
        "benchmark": ["torch==2.13.0", "rtree>=1.3,<2"],
    },
)
