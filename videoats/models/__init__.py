"""Model families, one file each; importing this package registers them all."""
from .registry import create_model, list_models, register_model  # noqa: F401
from . import timesformer, vit, xvit  # noqa: F401,E402  (registration side effects)
