"""Adaptive Token Sampling: one core (`core.py`, `stage.py`, `sampler.py`) that every backbone calls.

A leaf: it imports nothing of videoats but `errors`, and knows no backbone. Turning ATS on for a model
(`videoats.apply_ats`) lives with the models, in `videoats/models/ats_patch.py`; `kept_tokens(model)`
tells what the last forward pass kept.
"""
from __future__ import annotations

from .core import ATSConfig, kept_tokens, token_masks

__all__ = ["ATSConfig", "kept_tokens", "token_masks"]
