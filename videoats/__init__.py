"""videoats: Adaptive Token Sampling for video transformers."""
from .config import get_cfg, load_config  # noqa: F401
from .errors import VideoATSError  # noqa: F401
from .models import create_model, list_models  # noqa: F401

__version__ = "0.1.0"


def load_checkpoint(model, path_or_dir, **kwargs):
    """Load any checkpoint layout videoats knows into `model`; see `videoats.checkpoint`."""
    from .checkpoint import load_checkpoint as _load

    return _load(model, path_or_dir, **kwargs)
