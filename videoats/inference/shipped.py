"""What ships inside the package, by name: the model (`--checkpoint demo` or `zoo:demo`, listed by
`videoats models`, run at the ATS setting its provenance states) and the configs (`--config
synthetic/benchmark`: `videoats/configs/<name>.yaml`, package data).

Why a name: a pip-only user has no checkout path to type, and the file lives wherever pip put the package.
Why the provenance's ATS setting: the shipped model was fine-tuned with ATS at one budget and is run (in the
demo, in the README's figures) at another, chosen on the validation split; `infer`, `visualize` and the
Python API must answer with the model the README describes, so the stored training config alone is not
what they run. The files are package data (setup.cfg package_data), so a wheel install has them as well as
a checkout; pip unpacks wheels into folders, so these are real files that torch and safetensors can open.
"""
from __future__ import annotations

import json
import os
from importlib.resources import files
from typing import List, Optional

from ..errors import VideoATSError

DEMO_DIR = files("videoats") / "assets" / "demo"
CHECKPOINT = DEMO_DIR / "timesformer_tiny_synthetic.safetensors"
PROVENANCE = DEMO_DIR / "provenance.json"
NAMES = ("demo",)  # what --checkpoint accepts for the shipped file (also as zoo:demo)
CONFIG_DIR = files("videoats") / "configs"  # the repository's configs/, installed with the package
ATS_KEYS = ("ATS.BLOCKS", "ATS.TOKENS", "ATS.VARIANT")


def provenance() -> dict:
    """What the shipped checkpoint is, how it was made and how it is run (provenance.json)."""
    if not CHECKPOINT.is_file() or not PROVENANCE.is_file():
        raise VideoATSError(f"the demo checkpoint is missing from {DEMO_DIR}; this videoats install is "
                            "incomplete: reinstall it (pip install --force-reinstall videoats, or pip install -e . "
                            "from a checkout)")
    with open(PROVENANCE) as f:
        return json.load(f)


def resolve(name: str) -> Optional[str]:
    """The shipped file's path for `demo` / `zoo:demo`, else None (any other name or path)."""
    bare = name[len("zoo:"):] if name.startswith("zoo:") else name
    if bare in NAMES and not os.path.exists(name):
        provenance()  # a clear line when the install lacks the file
        return str(CHECKPOINT)
    return None


def is_shipped(path: Optional[str]) -> bool:
    return bool(path) and os.path.abspath(str(path)) == os.path.abspath(str(CHECKPOINT))


def ats_overrides() -> List[str]:
    """KEY VALUE overrides for the ATS setting the shipped model is run at (blocks, budget, variant)."""
    ats = provenance().get("ats", {})
    pairs = (("ATS.BLOCKS", ats.get("blocks")), ("ATS.TOKENS", ats.get("tokens")), ("ATS.VARIANT", ats.get("variant")))
    return [item for key, value in pairs if value is not None for item in (key, str(value))]


def listing() -> List[dict]:
    """The shipped model as `videoats models` lists it."""
    p = provenance()
    ats = p.get("ats", {})
    return [dict(name="demo", model=p["model"], path=str(CHECKPOINT), classes=p["synthetic"]["num_classes"],
                 what=f"{p['what'].split(';')[0]}; run with ATS {ats.get('variant', '')} at budget "
                      f"{', '.join(str(t) for t in ats.get('tokens', []))}")]


def config_path(name: str) -> str:
    """`name` itself when it is a file, else the packaged config it names (`synthetic/benchmark`, with or
    without `.yaml`); an unknown name comes back unchanged, for the config loader to report as missing.

    Why: a pip-only user has no checkout and so no configs/ folder to point at; the names are the paths
    under the repository's configs/, so a checkout's `--config configs/synthetic/benchmark.yaml` and an
    installed package's `--config synthetic/benchmark` are the same file."""
    if os.path.isfile(name):
        return name
    bare = name[:-len(".yaml")] if name.endswith(".yaml") else name
    bare = bare[len("configs/"):] if bare.startswith("configs/") else bare
    candidate = CONFIG_DIR / f"{bare}.yaml"
    return str(candidate) if candidate.is_file() else name


def config_names() -> List[str]:
    """The packaged configs' names, sorted (`synthetic/benchmark`, ...)."""
    root = str(CONFIG_DIR)
    names = []
    for folder, _, found in os.walk(root, followlinks=True):
        for file_name in found:
            if file_name.endswith(".yaml"):
                names.append(os.path.relpath(os.path.join(folder, file_name), root)[:-len(".yaml")])
    return sorted(n.replace(os.sep, "/") for n in names)
