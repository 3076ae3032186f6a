"""What a non-editable install gets: the wheel carries the demo checkpoint and its provenance, an installed
copy reads them through importlib.resources, and the declared dependencies are what the package imports."""
import ast
import configparser
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_FILES = ("videoats/assets/demo/provenance.json", "videoats/assets/demo/timesformer_tiny_synthetic.safetensors")
# import name -> distribution name, where they differ
DIST_OF = {"PIL": "Pillow", "yaml": "pyyaml"}
# needed without an import statement naming them: torch.utils.tensorboard imports tensorboard
IMPLIED = {"tensorboard"}


def _requirement_names(lines: str):
    return {re.split(r"[<>=!;\s\[]", line.strip(), maxsplit=1)[0] for line in lines.strip().splitlines()
            if line.strip()}


def _setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    return cfg


def test_declared_dependencies_are_what_the_package_imports():
    imported = set()
    for folder, _, files in os.walk(os.path.join(ROOT, "videoats")):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        imported |= {a.name.split(".")[0] for a in node.names}
                    elif isinstance(node, ast.ImportFrom) and node.level == 0:
                        imported.add(node.module.split(".")[0])
    third_party = {DIST_OF.get(m, m) for m in imported - set(sys.stdlib_module_names) - {"videoats", "__future__"}}
    cfg = _setup_cfg()
    declared = _requirement_names(cfg["options"]["install_requires"])
    assert declared == third_party | IMPLIED
    extras = cfg["options.extras_require"]
    # einops: tests/reference_models.py; transformers: tests/test_cvt.py (the Hugging Face CvT as an oracle); the
    # docs extra, interpolated, so that the test command builds the docs
    assert _requirement_names(extras["test"]) == {"pytest", "einops", "transformers", "mkdocs", "mkdocs-material",
                                                  "mkdocstrings"}
    assert _requirement_names(extras["tools"]) == {"pytorchvideo"}  # tools/bench_loader.py


def test_starting_the_cli_loads_no_decoder_plotting_or_tensorboard():
    """They load when a command needs them, so a machine that only runs models (a GPU host with torch alone,
    plus the config's fvcore) can import the CLI, the benchmark's modules and every model."""
    probe = ("import sys\n"
             "class Refuse:\n"
             "    def find_spec(self, name, path, target=None):\n"
             "        if name.split('.')[0] in ('av', 'decord', 'matplotlib', 'tensorboard'):\n"
             "            raise ImportError('refused ' + name)\n"
             "sys.meta_path.insert(0, Refuse())\n"
             "import videoats.cli, videoats.figures, videoats.flops, videoats.profiling\n"
             "videoats.create_model('timesformer_tiny_8x32', ats=dict(blocks=[1]))\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def _copy_source(dst):
    """The files a build reads, so that building never writes into the shared checkout (build/, egg-info)."""
    for name in ("setup.py", "setup.cfg", "README.md"):
        shutil.copy(os.path.join(ROOT, name), dst)
    shutil.copytree(os.path.join(ROOT, "videoats"), os.path.join(dst, "videoats"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _can_build_wheels() -> bool:
    if importlib.util.find_spec("setuptools") is None:
        return False
    return bool(importlib.util.find_spec("wheel") or importlib.util.find_spec("setuptools.command.bdist_wheel"))


@pytest.mark.slow  # builds a wheel and installs it into a folder: about 10 s
def test_wheel_ships_the_demo_and_an_installed_copy_reads_it(tmp_path):
    src, dist, target = tmp_path / "src", tmp_path / "dist", tmp_path / "site"
    src.mkdir()
    _copy_source(src)
    # offline with the interpreter's own setuptools where it can build a wheel (bdist_wheel: setuptools 70.1+ or
    # the wheel package); a venv's bundled setuptools (none on Python 3.12+, 65.5 without `wheel` on 3.11)
    # cannot, and pip then builds in an isolated environment from the package index
    isolation = ["--no-build-isolation"] if _can_build_wheels() else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(dist),
                    str(src)], check=True, capture_output=True, text=True)
    (wheel,) = dist.glob("videoats-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert set(DEMO_FILES) <= names
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert any("Pillow" in r for r in requires)
    assert all("extra ==" in r for r in requires if "pytorchvideo" in r or "einops" in r)

    # install it into a folder of its own (no dependencies: they are this interpreter's, whether a venv, conda
    # or the system's) and use it from outside the checkout with this interpreter, that folder first on its
    # path, ahead of the editable install of the checkout
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, text=True)
    probe = ("import json, videoats\n"
             "from videoats.commands.demo import CHECKPOINT, _provenance\n"
             "from videoats.checkpoint import inspect_checkpoint\n"
             "info = inspect_checkpoint(str(CHECKPOINT))\n"
             "print(json.dumps({'package': videoats.__file__, 'checkpoint': str(CHECKPOINT),\n"
             "                  'model': _provenance()['model'], 'saved_as': info['metadata']['model_name'],\n"
             "                  'has_config': bool(info['metadata'].get('config'))}))\n")
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, check=True, capture_output=True,
                         text=True).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    installed = str(target)
    assert seen["package"].startswith(installed) and seen["checkpoint"].startswith(installed)
    assert seen["model"] == seen["saved_as"] == "timesformer_tiny_8x64" and seen["has_config"]
    # the console script the wheel declares (pip writes it with this interpreter's path)
    helped = subprocess.run([str(target / "bin" / "videoats"), "demo", "--help"], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert helped.returncode == 0 and "usage: videoats demo" in helped.stdout, helped.stderr[-2000:]
