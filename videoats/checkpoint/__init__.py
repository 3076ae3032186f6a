"""Checkpoints: load every published layout into our models, and save our own.

Recognised (by content, not by file name): official TimeSformer `.pyth` (`model_state`, `model.` keys),
`module.`-prefixed and bare state dicts, Hugging Face Timesformer (`model.safetensors` / `pytorch_model.bin`,
file or folder), official X-ViT `.pth`, timm ImageNet ViT weights (used to initialise video models as the
TimeSformer authors do), official CvT `.pth` and its Hugging Face conversions (`CvtForImageClassification`),
official PS-ViT `.pth`, and videoats checkpoints (`.safetensors` with JSON metadata, or a torch dict).
"""
from .files import read_checkpoint, save_checkpoint  # noqa: F401
from .layouts import (detect_layout, from_hf_cvt, to_hf_cvt, to_hf_timesformer, to_official_timesformer,  # noqa: F401
                      to_official_xvit)
from .loading import inspect_checkpoint, load_checkpoint, load_weights  # noqa: F401
from .pretrained import create_model  # noqa: F401
