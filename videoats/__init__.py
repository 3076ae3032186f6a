"""videoats: Adaptive Token Sampling for video transformers.

`Recognizer` is the inference API (a model loaded once, answering for video files, frames in memory and
streams of frames); `create_model`, `apply_ats` and `load_checkpoint` build and load models.
"""
from .api import Recognizer  # noqa: F401
from .checkpoint import create_model, load_checkpoint  # noqa: F401  (create_model: with pretrained=)
from .config import get_cfg, load_config  # noqa: F401
from .errors import VideoATSError  # noqa: F401
from .models import apply_ats, list_models  # noqa: F401

__version__ = "0.1.0"
