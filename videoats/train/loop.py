"""Training and fine-tuning (dense or with ATS) on one CPU, one GPU, or many GPUs over several machines.

One process per device, launched by torchrun (no launcher of our own); gloo on CPU, nccl on GPU:

    videoats train --config CFG [KEY VALUE ...]                                   # one process
    torchrun --standalone --nproc_per_node 2 -m videoats.cli train --config CFG     # 2 processes, 1 machine
    # N machines with G GPUs each: the same command on every machine, NODE = 0..N-1, MASTER = machine 0
    torchrun --nnodes N --nproc_per_node G --node_rank NODE --rdzv_backend c10d \\
        --rdzv_endpoint MASTER:29500 --rdzv_id JOB -m videoats.cli train --config CFG

TRAIN.BATCH_SIZE is per process; TRAIN.GLOBAL_BATCH_SIZE (if set) is reached by gradient accumulation,
so the same recipe gives the same optimisation on 1 or 64 processes. SOLVER.BASE_LR is for that global batch.

Outputs in OUTPUT_DIR: `checkpoints/last.pt` (weights + everything needed to continue: optimizer,
schedule, scaler, per-rank RNG states, data position) and `checkpoints/best.pt` (best val top-1),
`metrics.jsonl`, `tensorboard/`, `config.yaml`, and `test/` (the final multi-view evaluation). Only rank 0
writes. A run continues from `last.pt` with `--resume` or TRAIN.AUTO_RESUME, and ends with the same weights
as if it had never stopped (see `distributed.py` for why the random draws allow that).
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from ..atomic import atomic_write_text
from ..checkpoint import load_weights, save_checkpoint
from ..config import cfg_to_yaml
from ..data import build_dataset, build_loader, collate_views
from ..errors import VideoATSError
from ..evaluation.evaluate import evaluate
from ..evaluation.report import videos_text
from ..models.build import build_from_cfg
from ..paths import check_output_dir, require_data_dir
from ..runner import Runner, merge
from ..runtime import all_gather_objects, all_reduce_sum, barrier, rank_world, resolve_device
from .log import RunLog, ats_stats, cost_row, epoch_line, num, progress_bar
from .optim import WarmupCosine, build_optimizer, precision_setup
from .seeding import ResumableSampler, SeededItems, rng_state, seed_step, set_rng_state, worker_threads
from .state import TrainState, read_state


def _paths(out: str) -> Dict[str, str]:
    return {"out": out, "last": os.path.join(out, "checkpoints", "last.pt"),
            "best": os.path.join(out, "checkpoints", "best.pt"), "metrics": os.path.join(out, "metrics.jsonl"),
            "tensorboard": os.path.join(out, "tensorboard"), "config": os.path.join(out, "config.yaml"),
            "test": os.path.join(out, "test")}


# ---------------------------------------------------------------------------------------------- checks


def _datasets(cfg):
    """Every split the run will read, built (annotations parsed) before the first step."""
    require_data_dir(cfg)
    train_set = build_dataset(cfg, "train")
    if len(train_set.label_names) != int(cfg.MODEL.NUM_CLASSES):
        raise VideoATSError(f"the training annotation names {len(train_set.label_names)} classes but "
                            f"MODEL.NUM_CLASSES is {cfg.MODEL.NUM_CLASSES}; set MODEL.NUM_CLASSES "
                            f"{len(train_set.label_names)} (or DATA.LABELS_FILE to the full class list)")
    val_set = build_dataset(cfg, "val") if int(cfg.TRAIN.EVAL_PERIOD) > 0 else None
    if cfg.TRAIN.FINAL_TEST:
        build_dataset(cfg, cfg.TEST.SPLIT)  # only to fail now, not after hours of training
    for ds in (val_set,):
        if ds is not None and list(ds.label_names) != list(train_set.label_names):
            raise VideoATSError(f"{ds.split} annotation has other class names than the training one; set "
                                "DATA.LABELS_FILE so that every split uses the same class list")
    return train_set, val_set


def _check_shapes(cfg, arch, say) -> None:
    frames, size = getattr(arch, "num_frames", None), getattr(arch, "img_size", None)
    if frames and frames != int(cfg.DATA.NUM_FRAMES):
        say(f"warning: {cfg.MODEL.NAME} is built for {frames} frames but DATA.NUM_FRAMES is "
            f"{cfg.DATA.NUM_FRAMES}; its time embedding is interpolated")
    if size and size != int(cfg.DATA.TRAIN_CROP_SIZE):
        say(f"warning: {cfg.MODEL.NAME} is built for {size} px but DATA.TRAIN_CROP_SIZE is "
            f"{cfg.DATA.TRAIN_CROP_SIZE}; its position embedding is interpolated")


def _accumulation(cfg, world: int) -> int:
    per_step = int(cfg.TRAIN.BATCH_SIZE) * world
    want = int(cfg.TRAIN.GLOBAL_BATCH_SIZE)
    if want <= 0:
        return 1
    if want % per_step:
        raise VideoATSError(f"TRAIN.GLOBAL_BATCH_SIZE {want} is not a multiple of TRAIN.BATCH_SIZE "
                            f"{cfg.TRAIN.BATCH_SIZE} x {world} process(es) = {per_step}")
    return want // per_step


def _init_weights(net: nn.Module, path: str, label_names, log) -> Optional[str]:
    report = load_weights(net, path, allow_head_reset=True, what="TRAIN.CHECKPOINT_FILE")
    theirs = report.metadata.get("label_names")
    if theirs and len(theirs) == len(label_names) and list(theirs) != list(label_names):
        log(f"warning: {path} was trained with other class names (or order) than this dataset's")
    return report.summary()


def model_name(net) -> str:
    return getattr(net, "model_name", type(net).__name__)


@torch.no_grad()
def validate(net: nn.Module, loader, device, autocast) -> dict:
    """Clip-level top-1 on the val split (one centre clip per video), each video counted once over ranks.
    The views go through `runner.Runner` (one pass per loader batch), as evaluation's do."""
    was = net.training
    net.eval()
    try:
        table = Runner(net, device, autocast=autocast).collect(
            (b["video"], b["video_index"], b["label"]) for b in loader if b["video"].numel())
    finally:
        net.train(was)
    views = merge(all_gather_objects(table.packed()))
    n = int(views["labels"].numel())
    out = {"top1": 0.0, "loss": 0.0, "videos": n}
    if n:
        logits, labels = views["logits"], views["labels"]
        losses = F.cross_entropy(logits, labels, reduction="none")
        out.update(top1=100.0 * int((logits.argmax(dim=1) == labels).sum()) / n, loss=sum(losses.tolist()) / n)
        row = cost_row(views["gflops"], views["kept"])
        out.update({"kept_tokens": dict(sorted(row["kept_tokens"].items()))} if "kept_tokens" in row else {},
                   gflops_per_sample=row["gflops_per_sample"])
    return out


# ---------------------------------------------------------------------------------------------- one epoch


@dataclass
class Run:
    """What every step of a run uses: the model (and its DDP wrapper), optimisation, data, where to log."""

    net: nn.Module
    model: nn.Module  # `net`, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    schedule: WarmupCosine
    scaler: Optional[object]
    autocast: Callable
    criterion: nn.Module
    loader: torch.utils.data.DataLoader
    sampler: ResumableSampler
    device: torch.device
    batches: int  # micro-batches per epoch and process
    steps_per_epoch: int
    log: RunLog


def train_epoch(run: Run, state: TrainState, cfg, epochs: int, progress: bool, rank: int,
                save_last: Callable[[str], None]) -> dict:
    """Train `state.epoch` from `state.step_in_epoch` to its end (optimizer steps of `accum` micro-batches,
    logged every LOG_PERIOD steps, `last.pt` every TRAIN.CHECKPOINT_STEPS); returns the epoch's row."""
    t0 = time.perf_counter()
    epoch, accum, world = state.epoch, state.accum, state.world
    run.sampler.set_epoch(epoch, start=state.step_in_epoch * accum * state.batch)
    batches_left = iter(run.loader)
    run.model.train()
    bar = progress_bar(progress and rank == 0, run.steps_per_epoch, state.step_in_epoch,
                       f"epoch {epoch + 1}/{epochs}")
    for step in range(state.step_in_epoch, run.steps_per_epoch):
        global_step = epoch * run.steps_per_epoch + step
        lr = run.schedule.apply(global_step)
        seed_step(int(cfg.SEED), epoch, step, rank)
        micro = min(accum, run.batches - step * accum)
        run.optimizer.zero_grad(set_to_none=True)
        stats = {}
        for m in range(micro):
            b = next(batches_left)
            video = b["video"].to(run.device, non_blocking=True)
            labels = b["label"].to(run.device, non_blocking=True)
            sync = m == micro - 1 or world == 1
            with (contextlib.nullcontext() if sync else run.model.no_sync()):
                with run.autocast():
                    logits = run.model(video)
                loss = run.criterion(logits.float(), labels)
                if m == micro - 1 and (global_step + 1) % int(cfg.LOG_PERIOD) == 0:
                    stats = ats_stats(run.net, video)  # before backward (recomputation re-records)
                scaled = loss / micro
                (run.scaler.scale(scaled) if run.scaler is not None else scaled).backward()
            n = float(labels.shape[0])
            lv = float(loss.detach())
            right = float((logits.detach().argmax(dim=1) == labels).sum())
            state.epoch_sums.add(lv, right, n)
            state.window.add(lv, 0.0, n)
        if run.scaler is not None:
            run.scaler.unscale_(run.optimizer)
        if cfg.SOLVER.CLIP_GRAD > 0:
            torch.nn.utils.clip_grad_norm_(run.net.parameters(), float(cfg.SOLVER.CLIP_GRAD))
        if run.scaler is not None:
            run.scaler.step(run.optimizer)
            run.scaler.update()
        else:
            run.optimizer.step()
        done = global_step + 1
        if done % int(cfg.LOG_PERIOD) == 0:
            loss_sum, count = all_reduce_sum([state.window.loss, state.window.count], run.device)
            state.window.loss = state.window.count = 0.0
            run.log.record("train", done, epoch=epoch + 1, loss=loss_sum / max(count, 1), lr=lr, **stats)
        if bar is not None:
            bar.set_postfix(loss=f"{lv:.3f}", lr=f"{lr:.2e}")
            bar.update(1)
        period = int(cfg.TRAIN.CHECKPOINT_STEPS)
        if period > 0 and (step + 1) % period == 0 and step + 1 < run.steps_per_epoch:
            state.step_in_epoch = step + 1
            save_last("step")
    if bar is not None:
        bar.close()
    e = state.epoch_sums
    loss_sum, correct, count = all_reduce_sum([e.loss, e.correct, e.count], run.device)
    return {"epoch": epoch + 1, "loss": loss_sum / max(count, 1), "top1": 100.0 * correct / max(count, 1),
            "lr": run.schedule.lr(max(0, (epoch + 1) * run.steps_per_epoch - 1)),
            "seconds": round(time.perf_counter() - t0, 2)}


# ---------------------------------------------------------------------------------------------- the run


def train(cfg, resume: bool = False, progress: bool = True, echo: Optional[Callable[[str], None]] = None) -> dict:
    """Train or fine-tune as the config says; returns a summary (rank 0's view on every rank).

    Every input is checked before the first step: data folder and annotations, class count, batch
    arithmetic, precision, initial or resume checkpoint. Call inside a started process group (or none).
    """
    started = time.perf_counter()
    if not cfg.TRAIN.ENABLE:
        raise VideoATSError("TRAIN.ENABLE is False in this config: nothing to train (evaluate with `videoats eval`)")
    rank, world = rank_world()
    main = rank == 0
    echo = echo or (lambda text: print(text, file=sys.stderr, flush=True))
    say = echo if main else (lambda text: None)
    device = resolve_device(cfg)
    autocast, scaler = precision_setup(cfg.SOLVER.MIXED_PRECISION, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    paths = _paths(check_output_dir(cfg.OUTPUT_DIR, "OUTPUT_DIR") if main else
                   os.path.abspath(os.path.expanduser(cfg.OUTPUT_DIR)))
    train_set, val_set = _datasets(cfg)
    label_names = list(train_set.label_names)
    batch, epochs = int(cfg.TRAIN.BATCH_SIZE), int(cfg.TRAIN.EPOCHS)
    state = TrainState(world=world, batch=batch, accum=_accumulation(cfg, world), seed=int(cfg.SEED))
    accum = state.accum

    sampler = ResumableSampler(train_set, world, rank, int(cfg.SEED), shuffle=True)
    batches = sampler.num_samples // batch
    if batches == 0:
        raise VideoATSError(f"{len(train_set)} training videos over {world} process(es) is less than one "
                            f"batch of TRAIN.BATCH_SIZE {batch} per process; lower TRAIN.BATCH_SIZE")
    steps_per_epoch = -(-batches // accum)
    warmup_steps = int(round(float(cfg.SOLVER.WARMUP_EPOCHS) * steps_per_epoch))

    net = build_from_cfg(cfg, for_training=True)  # seeds the process: the same initial weights everywhere
    _check_shapes(cfg, net, say)
    saved = None
    if resume and not os.path.isfile(paths["last"]):
        raise VideoATSError(f"--resume: no checkpoint to resume from at {paths['last']} (check OUTPUT_DIR)")
    if (resume or bool(cfg.TRAIN.AUTO_RESUME)) and os.path.isfile(paths["last"]):
        saved = read_state(paths["last"])
        try:
            net.load_state_dict(saved["state_dict"], strict=True)
        except RuntimeError as e:
            raise VideoATSError(f"cannot resume from {paths['last']}: it is not a {cfg.MODEL.NAME} with "
                                f"{cfg.MODEL.NUM_CLASSES} classes ({str(e).splitlines()[0][:160]}); use another "
                                "OUTPUT_DIR for a new run")
    init_report = None
    if saved is None and cfg.TRAIN.CHECKPOINT_FILE:
        init_report = _init_weights(net, cfg.TRAIN.CHECKPOINT_FILE, label_names, say)
    elif saved is not None and cfg.TRAIN.CHECKPOINT_FILE:
        say(f"resuming: TRAIN.CHECKPOINT_FILE {cfg.TRAIN.CHECKPOINT_FILE} is not used (the run's own weights are)")
    if cfg.MODEL.ACT_CHECKPOINT:
        if not hasattr(net, "set_grad_checkpointing"):
            raise VideoATSError(f"MODEL.ACT_CHECKPOINT: {type(net).__name__} cannot recompute its blocks")
        net.set_grad_checkpointing(True)
        say("activation checkpointing on every block")
    net.to(device)
    model = net
    if world > 1:
        model = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda"
                                                    else None)
    optimizer = build_optimizer(net, cfg.SOLVER)
    schedule = WarmupCosine(optimizer, cfg.SOLVER.BASE_LR, cfg.SOLVER.MIN_LR, warmup_steps, steps_per_epoch * epochs)
    if saved is not None:
        ts = saved["train_state"]
        state = TrainState.from_dict(ts, optimizer, schedule, scaler)
        state.check_layout(world, batch, accum, paths["last"], say)
        rngs = ts.get("rng") or []
        if len(rngs) == world:
            set_rng_state(rngs[rank])
    global_step = state.epoch * steps_per_epoch + state.step_in_epoch
    log = RunLog(paths, main, global_step if saved is not None else None, echo)
    if main:
        atomic_write_text(paths["config"], cfg_to_yaml(cfg))
        say(f"train {model_name(net)} on {len(train_set)} videos ({len(label_names)} classes), {world} process(es) "
            f"on {device.type}, batch {batch} x {world} x {accum} accumulation = {batch * world * accum} per "
            f"step, {steps_per_epoch} steps/epoch, {epochs} epochs, output {paths['out']}")
        if saved is not None:
            where = (f"all {epochs} epochs already done" if state.epoch >= epochs else
                     f"epoch {state.epoch + 1}, step {state.step_in_epoch} of {steps_per_epoch}")
            say(f"resumed from {paths['last']}: {where}")
            log.record("resume", global_step, epoch=state.epoch, step_in_epoch=state.step_in_epoch)
        elif init_report:
            say(f"initial weights {cfg.TRAIN.CHECKPOINT_FILE}: {init_report}")

    workers = int(cfg.DATA.NUM_WORKERS)
    loader = torch.utils.data.DataLoader(
        SeededItems(train_set, int(cfg.SEED)), batch_size=batch, sampler=sampler, drop_last=True,
        num_workers=workers, collate_fn=collate_views, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0, worker_init_fn=worker_threads if workers > 0 else None)
    val_loader = None
    if val_set is not None:
        vs = DistributedSampler(val_set, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
        val_loader = build_loader(val_set, batch, sampler=vs, num_workers=workers, pin_memory=device.type == "cuda")
    run = Run(net, model, optimizer, schedule, scaler, autocast,
              nn.CrossEntropyLoss(label_smoothing=float(cfg.SOLVER.LABEL_SMOOTHING)), loader, sampler, device,
              batches, steps_per_epoch, log)

    def save_last(where: str) -> None:
        rngs = all_gather_objects(rng_state())
        if not main:
            return
        ts = state.to_dict(steps_per_epoch, optimizer, schedule, scaler, rngs)
        _save(paths["last"], net, cfg, label_names, {"epoch": state.epoch, "train_state": ts})
        log.record("checkpoint", ts["global_step"], epoch=state.epoch, step_in_epoch=state.step_in_epoch, where=where)

    last_val = None
    steps_done_before = state.epoch * steps_per_epoch + state.step_in_epoch  # by the run this one resumes
    try:
        while state.epoch < epochs:
            row = train_epoch(run, state, cfg, epochs, progress, rank, save_last)
            state.epoch, state.step_in_epoch = state.epoch + 1, 0
            state.epoch_sums = type(state.epoch_sums)()
            epoch = state.epoch
            if val_loader is not None and (epoch % int(cfg.TRAIN.EVAL_PERIOD) == 0 or epoch == epochs):
                last_val = row["val"] = validate(net, val_loader, device, autocast)
                if state.best["top1"] is None or last_val["top1"] > state.best["top1"]:
                    state.best = {"top1": last_val["top1"], "epoch": epoch}
                    if main:
                        _save(paths["best"], net, cfg, label_names, {"epoch": epoch, "val_top1": last_val["top1"]})
            log.record("epoch", epoch * steps_per_epoch, **row)
            say(epoch_line(row, epochs))
            if epoch % max(1, int(cfg.TRAIN.CHECKPOINT_PERIOD)) == 0 or epoch == epochs:
                save_last("epoch")
        barrier()
        result = {"output_dir": paths["out"], "model": model_name(net), "epochs": epochs,
                  "steps": epochs * steps_per_epoch, "world_size": world, "global_batch": batch * world * accum,
                  "last_checkpoint": paths["last"], "best": {**state.best, "checkpoint": paths["best"]
                                                             if os.path.exists(paths["best"]) else None},
                  "val": last_val, "metrics_log": paths["metrics"], "resumed": saved is not None,
                  "steps_this_run": epochs * steps_per_epoch - steps_done_before}
        if cfg.TRAIN.FINAL_TEST:
            result["test"], error = _final_test(cfg, result, paths, epochs * steps_per_epoch, log, say, progress)
            if error:
                result["error"] = error
    finally:
        log.close()
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def _final_test(cfg, result: dict, paths: Dict[str, str], step: int, log: RunLog, say, progress: bool):
    """The multi-view evaluation of the best (else last) checkpoint on the test split: (summary, error)."""
    ckpt = result["best"]["checkpoint"] or paths["last"]
    say(f"final test on the {cfg.TEST.SPLIT} split with {ckpt}")
    doc = evaluate(cfg, checkpoint=ckpt, output_dir=paths["test"], progress=progress)
    video, coverage = doc["metrics"]["video"], doc["coverage"]
    test = {"checkpoint": ckpt, "top1": video["top1"], "top5": video["top5"], "num_videos": video["num_videos"],
            "expected_videos": coverage["expected_videos"], "videos": videos_text(coverage),
            "gflops_per_view": doc["gflops"]["per_view"], "views": doc["protocol"]["views"], "results": paths["test"]}
    log.record("test", step, **{k: v for k, v in test.items() if isinstance(v, (int, float))})
    say(f"test top-1 {num(video['top1'])}%  top-5 {num(video['top5'])}%  on {videos_text(coverage)}; "
        f"{doc['protocol']['views']} views, {num(doc['gflops']['per_view'], 3)} GFLOPs/view")
    return test, doc.get("error")


def _save(path: str, net, cfg, label_names, extra: dict) -> None:
    save_checkpoint(path, net, config=cfg, label_names=label_names, extra=extra)
