"""Configs (`_BASE_`, KEY VALUE overrides, validation) and the CLI's common contract."""
import argparse
import json

import pytest

from videoats.cli import build_parser, main
from videoats.config import ats_from_cfg, load_config
from videoats.errors import VideoATSError


def write(path, text):
    path.write_text(text)
    return str(path)


def test_base_inheritance_and_overrides(tmp_path):
    write(tmp_path / "base.yaml", "MODEL:\n  NAME: xvit_b16_16x224\nDATA:\n  NUM_FRAMES: 16\n  MEAN: [0.5, 0.5, 0.5]\n")
    child = write(tmp_path / "child.yaml", "_BASE_: base.yaml\nDATA:\n  NUM_FRAMES: 8\nATS:\n  ENABLE: true\n"
                                          "  BLOCKS: [4, 5]\n")
    cfg = load_config(child, ["TEST.BATCH_SIZE", "4", "ATS.TOKENS", "[0.5, 0.7]", "DATA.TARGET_FPS", "25"])
    assert cfg.MODEL.NAME == "xvit_b16_16x224"  # from the base
    assert cfg.DATA.NUM_FRAMES == 8  # the child wins
    assert cfg.DATA.MEAN == [0.5, 0.5, 0.5]
    assert cfg.TEST.BATCH_SIZE == 4 and cfg.DATA.TARGET_FPS == 25
    assert ats_from_cfg(cfg) == dict(blocks=[4, 5], tokens=[0.5, 0.7], variant="tube", drop_tokens=True,
                                     min_tokens=8, mode="trim", sampler="eager",
                                     selection="inverse_transform", seed=0)
    assert ats_from_cfg(load_config(None, [])) is None


@pytest.mark.parametrize("text,needle", [
    ("MODEL:\n  NAMEE: x\n", "'MODEL.NAMEE'"),
    ("FOO: 1\n", "'FOO'"),
    ("MODEL: 3\n", "'MODEL'"),
    ("MODEL:\n  NAME: [unclosed\n", "not valid YAML"),
    ("TEST:\n  AGGREGATION: vote\n", "vote"),
    ("_BASE_: missing.yaml\n", "missing.yaml"),
])
def test_bad_config_files_name_the_problem(tmp_path, text, needle):
    with pytest.raises(VideoATSError) as err:
        load_config(write(tmp_path / "c.yaml", text))
    assert needle in str(err.value)


@pytest.mark.parametrize("opts,needle", [
    (["TEST.BATCHSIZE", "4"], "'TEST.BATCHSIZE'"),
    (["TEST.BATCH_SIZE"], "no value"),
    (["TEST.BATCH_SIZE", "four"], "expects a int"),
    (["TEST", "1"], "section"),
    (["DATA.NUM_FRAMES", "0"], "at least 1"),
])
def test_bad_overrides_name_the_key(opts, needle):
    with pytest.raises(VideoATSError) as err:
        load_config(None, opts)
    assert needle in str(err.value)


def test_missing_config_file():
    with pytest.raises(VideoATSError, match="config file not found"):
        load_config("/nonexistent/cfg.yaml")


def test_every_subcommand_has_help_and_json():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"models", "convert", "flops", "eval", "train", "infer"} <= set(sub.choices)
    for name, p in sub.choices.items():
        flags = {s for a in p._actions for s in a.option_strings}
        assert "--json" in flags and "-h" in flags, name


def test_models_json(capsys):
    assert main(["models", "timesformer_8x224", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["models"][0]["params_m"] == 121.72


def test_user_errors_are_one_line_and_exit_2(capsys, tmp_path):
    cfg = write(tmp_path / "bad.yaml", "MODEL:\n  NAMEE: x\n")
    assert main(["train", "--config", cfg]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "MODEL.NAMEE" in err and "Traceback" not in err


def test_overrides_are_found_anywhere_on_the_line(tmp_path):
    from videoats.cli import split_overrides

    video = tmp_path / "TEST.MP4"  # an existing file that looks like a key stays a file
    video.write_bytes(b"")
    rest, opts = split_overrides(["infer", "a.mp4", "TEST.BATCH_SIZE", "4", "--json", str(video), "SEED", "-1",
                                  "--topk", "3", "ATS.ENABLE"])
    assert rest == ["infer", "a.mp4", "--json", str(video), "--topk", "3"]
    assert opts == ["TEST.BATCH_SIZE", "4", "SEED", "-1", "ATS.ENABLE"]  # the last has no value: the loader says so
    with pytest.raises(VideoATSError, match="no value"):
        load_config(None, opts)


def test_the_selection_flags_reach_the_config_and_the_count(capsys):
    """`--ats-selection`/`--ats-seed` are ATS.SELECTION/ATS.SEED for eval and infer, and the flops count runs
    the rule: random keeps the budget's count in every sample, 9 of 16 locations at the first block
    (0.6 x 17 tokens, CLS included), then the min_tokens floor of 8 (7 locations), then all 7 (a budget of
    8 that no longer binds), scoring nothing."""
    from videoats.commands._args import inference_overrides

    for argv in (["eval", "--ats-selection", "random", "--ats-seed", "7"],
                 ["infer", "clip.mp4", "--ats-selection", "random", "--ats-seed", "7"]):
        opts = inference_overrides(build_parser().parse_args(argv))
        assert ats_from_cfg(load_config(None, opts + ["ATS.ENABLE", "True", "ATS.BLOCKS", "[1]"]))["seed"] == 7
        assert opts[opts.index("ATS.SELECTION") + 1] == "random"
    assert main(["flops", "--model", "timesformer_tiny_8x32", "--ats-blocks", "1,2,3", "--ats-tokens", "0.6",
                 "--ats-selection", "random", "--ats-seed", "5", "--input", "random", "--json"]) == 0
    ats = json.loads(capsys.readouterr().out)["ats"]
    assert ats["config"]["selection"] == "random" and ats["config"]["seed"] == 5
    kept = {block: (v["min"], v["max"]) for block, v in ats["kept_tokens"].items()}
    assert kept == {"1": (72, 72), "2": (56, 56), "3": (56, 56)}
