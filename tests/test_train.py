"""The training engine: schedule, accumulation, bad input, exact resume after kill -9, 2-process torchrun.

Everything runs a tiny TimeSformer on the tiny synthetic set of conftest (20 training videos); the
process-level tests (torchrun, kill -9) are the slow ones.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import videoats
from videoats.ats import kept_tokens
from videoats.cli import main as cli_main
from videoats.commands.train_cmd import fmt as train_fmt
from videoats.config import load_config
from videoats.errors import VideoATSError
from videoats.flops import analytic_gflops, sample_gflops
from videoats.train.log import ats_stats
from videoats.train.optim import lr_at

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "configs", "synthetic", "train_timesformer_tiny.yaml")


def opts(data, out, **extra):
    """KEY VALUE overrides for a seconds-long run on the tiny set."""
    base = {"DATA.PATH_TO_DATA_DIR": data, "OUTPUT_DIR": out, "DATA.SAMPLING_RATE": 2, "DATA.NUM_WORKERS": 0,
            "TRAIN.BATCH_SIZE": 2, "TRAIN.EPOCHS": 1, "TRAIN.EVAL_PERIOD": 1, "TRAIN.FINAL_TEST": False,
            "TEST.BATCH_SIZE": 8, "LOG_PERIOD": 1, "SOLVER.WARMUP_EPOCHS": 0.5, "SOLVER.BASE_LR": 0.001}
    base.update({k.replace("__", "."): v for k, v in extra.items()})
    return [str(x) for kv in base.items() for x in kv]


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    return e


def read_log(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def weights(out, name="last.pt"):
    return torch.load(os.path.join(out, "checkpoints", name), map_location="cpu", weights_only=True)


def run_train(data, out, **extra):
    from videoats.train.loop import train

    torch.set_num_threads(1)
    return train(load_config(RECIPE, opts(data, out, **extra)), progress=False, echo=lambda s: None)


# ---------------------------------------------------------------------------------------------- schedule


def test_warmup_cosine_by_hand():
    base, low = 0.1, 0.001
    assert lr_at(0, base, low, 4, 12) == pytest.approx(0.025)  # (0 + 1) / 4 of the base
    assert lr_at(2, base, low, 4, 12) == pytest.approx(0.075)
    assert lr_at(3, base, low, 4, 12) == pytest.approx(0.1)
    assert lr_at(4, base, low, 4, 12) == pytest.approx(0.1)  # cosine starts at the top
    assert lr_at(8, base, low, 4, 12) == pytest.approx(low + (base - low) * 0.5)  # half way
    assert lr_at(10, base, low, 4, 12) == pytest.approx(low + (base - low) * 0.5 * (1 + math.cos(math.pi * 0.75)))
    assert lr_at(12, base, low, 4, 12) == pytest.approx(low)
    assert lr_at(5, base, low, 0, 10) == pytest.approx(low + (base - low) * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_ats_stats_of_the_last_forward_pass_and_its_errors_raised():
    """The kept tokens and GFLOPs a training log reports are those of the batch just run; a batch the
    accounting cannot match (here: not the one the model last ran) is an error raised, not an empty row."""
    torch.manual_seed(0)
    model = videoats.create_model("timesformer_tiny_8x32", ats=dict(blocks=[1], tokens=0.5)).eval()
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        model(x)
    row = ats_stats(model, x)
    assert row["gflops_per_sample"] == pytest.approx(float(sample_gflops(model, x).mean()), rel=1e-12)
    assert row["kept_tokens"] == {"block1": pytest.approx(float(kept_tokens(model)[1].double().mean()))}
    with pytest.raises(VideoATSError, match="batch 2, not 1"):
        ats_stats(model, x[:1])
    dense = videoats.create_model("timesformer_tiny_8x32").eval()
    with torch.no_grad():
        dense(x)
    assert ats_stats(dense, x) == {"gflops_per_sample": pytest.approx(analytic_gflops(dense), rel=1e-12)}


def test_schedule_and_accumulation_in_the_engine(tiny_synthetic, tmp_path):
    """2 x batch 2 accumulated gives the update of batch 4 (SGD, dense, no dropout), and the logged rates
    follow the per-step schedule (20 videos / 4 = 5 steps, warm-up 0.4 epoch = 2 steps)."""
    common = dict(SOLVER__OPTIMIZER="sgd", SOLVER__BASE_LR=0.05, SOLVER__WARMUP_EPOCHS=0.4,
                  SOLVER__MIN_LR=0.0, TRAIN__EVAL_PERIOD=0)
    a = run_train(tiny_synthetic, str(tmp_path / "acc"), TRAIN__BATCH_SIZE=2, TRAIN__GLOBAL_BATCH_SIZE=4, **common)
    b = run_train(tiny_synthetic, str(tmp_path / "big"), TRAIN__BATCH_SIZE=4, **common)
    assert a["global_batch"] == b["global_batch"] == 4 and a["steps"] == b["steps"] == 5
    wa, wb = weights(a["output_dir"])["state_dict"], weights(b["output_dir"])["state_dict"]
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6, rtol=0), k
    rates = [r["lr"] for r in read_log(a["output_dir"]) if r["event"] == "train"]
    want = [lr_at(s, 0.05, 0.0, 2, 5) for s in range(5)]
    assert rates == pytest.approx(want)
    assert rates[:2] == pytest.approx([0.025, 0.05])
    assert rates[-1] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * 2 / 3)))


@pytest.mark.parametrize("name", ["timesformer_tiny_8x32", "xvit_tiny_8x32"])
def test_activation_checkpointing_and_bf16(name):
    """Recomputing blocks in backward gives the same gradients (ATS on, drop path on), and bf16 autocast
    trains on CPU."""
    from videoats import create_model
    from videoats.train.optim import precision_setup

    ats = dict(blocks=[1], tokens=0.5, variant="joint")
    x, y = torch.randn(2, 3, 8, 32, 32), torch.tensor([1, 2])
    grads = []
    for act in (False, True):
        torch.manual_seed(0)
        m = create_model(name, num_classes=10, ats=ats, drop_path_rate=0.2).train()
        m.set_grad_checkpointing(act)
        torch.manual_seed(1)
        torch.nn.functional.cross_entropy(m(x), y).backward()
        grads.append({k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], atol=1e-6), k
    autocast, scaler = precision_setup("bf16", torch.device("cpu"))
    with autocast():
        loss = torch.nn.functional.cross_entropy(m(x).float(), y)
    loss.backward()
    assert scaler is None and torch.isfinite(loss)


# ---------------------------------------------------------------------------------------------- bad input


def _one_line_error(capsys, argv, *needles):
    rc = cli_main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def test_bad_input_is_one_line_before_any_work(tiny_synthetic, tmp_path, capsys):
    out = str(tmp_path / "out")
    base = ["train", "--config", RECIPE]
    _one_line_error(capsys, base + opts(tiny_synthetic, out) + ["TRAIN.NOPE", "1"], "unknown config key", "TRAIN.NOPE")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text(f"_BASE_: {RECIPE}\nSOLVER:\n  LR: 0.1\n")
    _one_line_error(capsys, ["train", "--config", str(bad_yaml)] + opts(tiny_synthetic, out), "SOLVER.LR")
    _one_line_error(capsys, base + opts(str(tmp_path / "nowhere"), out), "data folder not found")
    # a checkpoint of another architecture (X-ViT weights for a TimeSformer)
    from videoats import create_model
    from videoats.checkpoint import save_checkpoint

    other = save_checkpoint(str(tmp_path / "xvit.pt"), create_model("xvit_tiny_8x32", num_classes=10))
    _one_line_error(capsys, base + opts(tiny_synthetic, out, TRAIN__CHECKPOINT_FILE=other), "X-ViT")
    _one_line_error(capsys, base + opts(tiny_synthetic, out, TRAIN__CHECKPOINT_FILE=str(tmp_path / "none.pt")),
                    "not found")
    _one_line_error(capsys, base + opts(tiny_synthetic, out, SOLVER__MIXED_PRECISION="fp16", DEVICE="cpu"), "fp16")
    _one_line_error(capsys, base + opts(tiny_synthetic, out, TRAIN__GLOBAL_BATCH_SIZE=3), "GLOBAL_BATCH_SIZE")
    _one_line_error(capsys, base + ["--resume"] + opts(tiny_synthetic, out), "no checkpoint to resume")
    assert not os.path.exists(out)  # nothing was started


# ---------------------------------------------------------------------------------------------- kill -9


def test_kill_9_mid_epoch_then_resume_gives_the_same_weights(tiny_synthetic, tmp_path):
    """10 steps an epoch, `last` every 4 steps; killed after step 6 of epoch 2 (resumes from its step 4).
    The killed run loads with a DataLoader worker, the reference without: items depend on (seed, epoch,
    index) only."""
    extra = dict(TRAIN__EPOCHS=2, TRAIN__CHECKPOINT_STEPS=4, TRAIN__EVAL_PERIOD=2, MODEL__DROP_PATH_RATE=0.1)
    ref = run_train(tiny_synthetic, str(tmp_path / "ref"), **extra)

    out = str(tmp_path / "killed")
    log = os.path.join(out, "metrics.jsonl")
    cmd = [sys.executable, "-m", "videoats.cli", "train", "--config", RECIPE, "--json"] + opts(
        tiny_synthetic, out, DATA__NUM_WORKERS=1, **extra)
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if os.path.exists(log) and any('"step": 16,' in line and '"train"' in line for line in open(log)):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    state = weights(out)["train_state"]
    assert (state["epoch"], state["step_in_epoch"]) == (1, 4), "the kill did not land mid-epoch after step 14"
    assert not any(r["event"] == "epoch" and r["epoch"] == 2 for r in read_log(out))

    resumed = run_train(tiny_synthetic, out, **extra)  # TRAIN.AUTO_RESUME finds checkpoints/last.pt
    assert resumed["resumed"]
    a, b = weights(ref["output_dir"]), weights(out)
    assert a["train_state"]["epoch"] == b["train_state"]["epoch"] == 2
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), f"{k}: max abs diff {(v - b['state_dict'][k]).abs().max()}"
    for k, v in a["train_state"]["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg"], b["train_state"]["optimizer"]["state"][k]["exp_avg"])
    steps = [r["step"] for r in read_log(out) if r["event"] == "train"]
    assert steps == list(range(1, 21))  # the steps after the checkpoint are logged once, not twice
    assert resumed["best"]["top1"] == ref["best"]["top1"]
    assert resumed["steps_this_run"] == 20 - 14 and ref["steps_this_run"] == 20
    assert "6 of them in this run" in train_fmt(resumed)
    # resuming the finished run trains nothing and says so (the final test runs again)
    again = run_train(tiny_synthetic, out, **extra)
    assert again["steps_this_run"] == 0 and weights(out)["state_dict"].keys() == b["state_dict"].keys()
    assert train_fmt(again).startswith("nothing left to train:")
    assert [r["step"] for r in read_log(out) if r["event"] == "train"] == steps


# ---------------------------------------------------------------------------------------------- torchrun


def test_torchrun_two_processes_train_resume_evaluate(tiny_synthetic, tmp_path):
    out = str(tmp_path / "ddp")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "-m", "videoats.cli", "train", "--config", RECIPE, "--json"]
    first = subprocess.run(launch + opts(tiny_synthetic, out), env=env(), capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    r1 = json.loads(first.stdout.strip().splitlines()[-1])
    assert r1["world_size"] == 2 and r1["steps"] == 5 and not r1["resumed"]  # 20 videos / (2 x 2)
    assert os.path.isfile(os.path.join(out, "checkpoints", "last.pt"))
    assert os.path.isfile(os.path.join(out, "checkpoints", "best.pt"))
    state = weights(out)["train_state"]
    assert state["epoch"] == 1 and len(state["rng"]) == 2 and state["world_size"] == 2
    assert sum(1 for ln in first.stderr.splitlines() if ln.startswith("epoch ")) == 1  # rank 0 only

    second = subprocess.run(launch + opts(tiny_synthetic, out, TRAIN__EPOCHS=2, TRAIN__FINAL_TEST=True),
                            env=env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    r2 = json.loads(second.stdout.strip().splitlines()[-1])
    assert r2["resumed"] and r2["steps"] == 10
    assert weights(out)["train_state"]["epoch"] == 2
    log = read_log(out)
    assert [r["step"] for r in log if r["event"] == "train"] == list(range(1, 11))
    assert [r["epoch"] for r in log if r["event"] == "epoch"] == [1, 2]
    assert all("top1" in r["val"] and r["val"]["videos"] == 10 for r in log if r["event"] == "epoch")
    assert any(r["event"] == "resume" for r in log)
    test = r2["test"]
    assert test["num_videos"] == 10 and test["gflops_per_view"] > 0
    assert test["checkpoint"] == r2["best"]["checkpoint"]  # the best checkpoint was tested, not the last
    with open(os.path.join(out, "test", "results.json")) as f:
        assert json.load(f)["coverage"]["evaluated_videos"] == 10
    # the reported accuracy is that of the test predictions, recounted from the file of predictions
    with open(os.path.join(out, "test", "predictions.jsonl")) as f:
        preds = [json.loads(line) for line in f]
    assert sorted(p["video_index"] for p in preds) == list(range(10))
    assert test["top1"] == pytest.approx(100 * sum(p["top5"][0]["index"] == p["label"] for p in preds) / 10)
    assert test["top5"] == pytest.approx(100 * sum(p["label"] in [t["index"] for t in p["top5"]] for p in preds) / 10)
    assert os.listdir(os.path.join(out, "tensorboard"))
