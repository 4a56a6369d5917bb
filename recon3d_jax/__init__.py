"""recon3d_jax: single-image 3D reconstruction with 2.5D (depth / normal) supervision."""
