"""What ships inside the package can be named: the model (`demo`, `zoo:demo`) and the configs
(`synthetic/benchmark`), so that a pip-only user, who has no checkout, can run, evaluate and train with them."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from videoats.cli import main
from videoats.config import load_config
from videoats.inference import shipped

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_config_by_name_is_the_repository_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here: only the package can answer
    for name in ("synthetic/benchmark_ats", "synthetic/benchmark_ats.yaml", "configs/synthetic/benchmark_ats.yaml"):
        path = shipped.config_path(name)
        with open(path) as f, open(os.path.join(ROOT, "configs", "synthetic", "benchmark_ats.yaml")) as g:
            assert f.read() == g.read()
    cfg = load_config(shipped.config_path("synthetic/benchmark_ats"))  # its _BASE_ chain resolves beside it
    assert list(cfg.ATS.TOKENS) == [0.7] and cfg.MODEL.NAME == "timesformer_tiny_8x64"
    assert shipped.config_path("no/such") == "no/such"  # left for the loader to report
    names = shipped.config_names()
    on_disk = sorted(f"{d}/{f[:-5]}" for d in os.listdir(os.path.join(ROOT, "configs"))
                     if os.path.isdir(os.path.join(ROOT, "configs", d))
                     for f in os.listdir(os.path.join(ROOT, "configs", d)) if f.endswith(".yaml"))
    assert names == on_disk


def test_commands_take_config_and_model_names(tmp_path, monkeypatch, capsys, vt):
    monkeypatch.chdir(tmp_path)
    video = vt.index_video(tmp_path / "v.mp4", 40)
    assert main(["infer", video, "--config", "synthetic/benchmark_ats", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "timesformer_tiny_8x64" and out["ats"]["tokens"] == 0.7
    assert main(["models", "timesformer_tiny_8x64", "--configs", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in listing["shipped"]] == ["demo"] and "synthetic/benchmark" in listing["configs"]
    assert main(["infer", video, "--config", "no/such"]) == 2
    assert "no/such" in capsys.readouterr().err


@pytest.mark.slow  # builds a wheel: about 10 s
@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="setuptools is needed to build")
def test_the_wheel_carries_the_configs(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "setup.cfg", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src)
    shutil.copytree(os.path.join(ROOT, "videoats"), src / "videoats", symlinks=True,  # the link itself, as git has it
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(os.path.join(ROOT, "configs"), src / "configs")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot build a wheel offline here: {done.stderr.strip().splitlines()[-1:]}")
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "videoats/configs/synthetic/benchmark.yaml" in names
    assert "videoats/configs/synthetic/benchmark_ats.yaml" in names
