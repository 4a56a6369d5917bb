"""Models: the reconstruction model and the encoder registry it resolves encoder names through."""
from recon3d_jax.models.encoders import ENCODERS, get_encoder
from recon3d_jax.models.model import DECODERS, ReconModel, input_images

__all__ = ['DECODERS', 'ENCODERS', 'ReconModel', 'get_encoder', 'input_images']
