"""Model families, one file each (blocks, family record, builders); importing this package registers them.

`ats_patch.py` turns ATS on for any of them (and for a timm ViT); `build.py` builds the model a config
describes.
"""
from .ats_patch import apply_ats  # noqa: F401
from .registry import create_model, family_of, family_of_name, list_models  # noqa: F401
from . import cvt, psvit, timesformer, vit, xvit  # noqa: F401,E402  (registration side effects)
