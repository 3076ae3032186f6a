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
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import zoo
from ..errors import VideoATSError
from ..paths import check_output_dir, require_data_dir
from . import distributed as D
from .optim import WarmupCosine, build_optimizer, precision_setup
from .train_log import RunLog, ats_stats, epoch_line, num, progress_bar

STATE_VERSION = 1


def _paths(out: str) -> Dict[str, str]:
    return {"out": out, "last": os.path.join(out, "checkpoints", "last.pt"),
            "best": os.path.join(out, "checkpoints", "best.pt"), "metrics": os.path.join(out, "metrics.jsonl"),
            "tensorboard": os.path.join(out, "tensorboard"), "config": os.path.join(out, "config.yaml"),
            "test": os.path.join(out, "test")}


# ---------------------------------------------------------------------------------------------- checks


def _datasets(cfg):
    """Every split the run will read, built (annotations parsed) before the first step."""
    from ..data import build_dataset

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


def build_train_model(cfg) -> nn.Module:
    from .. import create_model
    from ..config import ats_from_cfg

    kw = {}
    if cfg.MODEL.ATTENTION_TYPE:
        kw["attention_type"] = cfg.MODEL.ATTENTION_TYPE
    if cfg.MODEL.DROP_PATH_RATE is not None:
        kw["drop_path_rate"] = float(cfg.MODEL.DROP_PATH_RATE)
    if cfg.MODEL.DROPOUT_RATE is not None:
        kw["dropout_rate"] = float(cfg.MODEL.DROPOUT_RATE)
    D.seed_everything(int(cfg.SEED))  # the same initial weights on every rank and every run
    return create_model(cfg.MODEL.NAME, num_classes=int(cfg.MODEL.NUM_CLASSES), ats=ats_from_cfg(cfg), **kw)


def _init_weights(net: nn.Module, path: str, label_names, log) -> Optional[str]:
    from .. import load_checkpoint

    path = zoo.resolve(path)  # zoo:NAME -> the cached file
    if not os.path.exists(path):
        raise VideoATSError(f"TRAIN.CHECKPOINT_FILE not found: {path}")
    try:
        report = load_checkpoint(net, path, allow_head_reset=True)
    except VideoATSError:
        raise
    except (RuntimeError, KeyError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise VideoATSError(f"TRAIN.CHECKPOINT_FILE {path} does not fit model {cfg_name(net)}: {first[:200]}")
    theirs = report.metadata.get("label_names")
    if theirs and len(theirs) == len(label_names) and list(theirs) != list(label_names):
        log(f"warning: {path} was trained with other class names (or order) than this dataset's")
    return report.summary()


def cfg_name(net) -> str:
    return getattr(net, "model_name", type(net).__name__)


def _read_state(path: str) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means the file cannot continue a run
        raise VideoATSError(f"cannot resume from {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    if not isinstance(obj, dict) or "train_state" not in obj or "state_dict" not in obj:
        raise VideoATSError(f"cannot resume from {path}: it holds no training state (was it written by "
                            "`videoats train`?); start a new OUTPUT_DIR or pass it as TRAIN.CHECKPOINT_FILE")
    return obj


# ---------------------------------------------------------------------------------------------- validation


@torch.no_grad()
def validate(net: nn.Module, loader, device, autocast) -> dict:
    """Clip-level top-1 on the val split (one centre clip per video), each video counted once over ranks."""
    was = net.training
    net.eval()
    rows, kept_sum, gflops = {}, {}, []
    try:
        for batch in loader:
            if not batch["video"].numel():
                continue
            video = batch["video"].to(device, non_blocking=True)
            with autocast():
                logits = net(video)
            logits, labels = logits.float().cpu(), batch["label"]
            losses = F.cross_entropy(logits, labels, reduction="none")
            stats = ats_stats(net, video)
            per = stats.get("gflops_per_sample")
            for i, v in enumerate(batch["video_index"].tolist()):
                rows[v] = (bool(logits[i].argmax() == labels[i]), float(losses[i]))
            gflops.append((per, video.shape[0]) if per is not None else None)
            for b, k in stats.get("kept_tokens", {}).items():
                s, n = kept_sum.get(b, (0.0, 0))
                kept_sum[b] = (s + k * video.shape[0], n + video.shape[0])
    finally:
        net.train(was)
    parts = D.all_gather_objects((rows, kept_sum, gflops))
    merged, kept, g = {}, {}, []
    for r, k, gg in parts:
        merged.update(r)
        for b, (s, n) in k.items():
            kept[b] = (kept.get(b, (0.0, 0))[0] + s, kept.get(b, (0.0, 0))[1] + n)
        g += [x for x in gg if x is not None]
    n = len(merged)
    out = {"top1": 100.0 * sum(c for c, _ in merged.values()) / max(n, 1),
           "loss": sum(l for _, l in merged.values()) / max(n, 1), "videos": n}
    if kept:
        out["kept_tokens"] = {b: s / max(c, 1) for b, (s, c) in sorted(kept.items())}
    if g:
        out["gflops_per_sample"] = sum(x * c for x, c in g) / sum(c for _, c in g)
    return out


# ---------------------------------------------------------------------------------------------- the run


def train(cfg, resume: bool = False, progress: bool = True, echo: Optional[Callable[[str], None]] = None) -> dict:
    """Train or fine-tune as the config says; returns a summary (rank 0's view on every rank).

    Every input is checked before the first step: data folder and annotations, class count, batch
    arithmetic, precision, initial or resume checkpoint. Call inside a started process group (or none).
    """
    from ..config import cfg_to_yaml
    from ..atomic import atomic_write_text

    started = time.perf_counter()
    if not cfg.TRAIN.ENABLE:
        raise VideoATSError("TRAIN.ENABLE is False in this config: nothing to train (evaluate with `videoats eval`)")
    rank, world = D.rank_world()
    main = rank == 0
    echo = echo or (lambda text: print(text, file=sys.stderr, flush=True))
    say = echo if main else (lambda text: None)
    device = D.resolve_device(cfg)
    autocast, scaler = precision_setup(cfg.SOLVER.MIXED_PRECISION, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    paths = _paths(check_output_dir(cfg.OUTPUT_DIR, "OUTPUT_DIR") if main else
                   os.path.abspath(os.path.expanduser(cfg.OUTPUT_DIR)))
    train_set, val_set = _datasets(cfg)
    label_names = list(train_set.label_names)
    accum = _accumulation(cfg, world)
    batch = int(cfg.TRAIN.BATCH_SIZE)
    epochs = int(cfg.TRAIN.EPOCHS)

    sampler = D.ResumableSampler(train_set, world, rank, int(cfg.SEED), shuffle=True)
    batches = sampler.num_samples // batch
    if batches == 0:
        raise VideoATSError(f"{len(train_set)} training videos over {world} process(es) is less than one "
                            f"batch of TRAIN.BATCH_SIZE {batch} per process; lower TRAIN.BATCH_SIZE")
    steps_per_epoch = -(-batches // accum)
    total_steps = steps_per_epoch * epochs
    warmup_steps = int(round(float(cfg.SOLVER.WARMUP_EPOCHS) * steps_per_epoch))

    net = build_train_model(cfg)
    _check_shapes(cfg, net, say)
    state = None
    want_resume = resume or bool(cfg.TRAIN.AUTO_RESUME)
    if resume and not os.path.isfile(paths["last"]):
        raise VideoATSError(f"--resume: no checkpoint to resume from at {paths['last']} (check OUTPUT_DIR)")
    if want_resume and os.path.isfile(paths["last"]):
        state = _read_state(paths["last"])
        try:
            net.load_state_dict(state["state_dict"], strict=True)
        except RuntimeError as e:
            raise VideoATSError(f"cannot resume from {paths['last']}: it is not a {cfg.MODEL.NAME} with "
                                f"{cfg.MODEL.NUM_CLASSES} classes ({str(e).splitlines()[0][:160]}); use another "
                                "OUTPUT_DIR for a new run")
    init_report = None
    if state is None and cfg.TRAIN.CHECKPOINT_FILE:
        init_report = _init_weights(net, cfg.TRAIN.CHECKPOINT_FILE, label_names, say)
    elif state is not None and cfg.TRAIN.CHECKPOINT_FILE:
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
    schedule = WarmupCosine(optimizer, cfg.SOLVER.BASE_LR, cfg.SOLVER.MIN_LR, warmup_steps, total_steps)
    criterion = nn.CrossEntropyLoss(label_smoothing=float(cfg.SOLVER.LABEL_SMOOTHING))

    # where the run stands
    epoch, step_in_epoch, best, sums, window = 0, 0, {"top1": None, "epoch": None}, [0.0, 0.0, 0.0], [0.0, 0.0]
    if state is not None:
        ts = state["train_state"]
        optimizer.load_state_dict(ts["optimizer"])
        schedule.load_state_dict(ts["scheduler"])
        if scaler is not None and ts.get("scaler"):
            scaler.load_state_dict(ts["scaler"])
        epoch, step_in_epoch = int(ts["epoch"]), int(ts["step_in_epoch"])
        best, sums, window = dict(ts["best"]), list(ts["epoch_sums"]), list(ts["window_sums"])
        layout = (ts["world_size"], ts["batch_size"], ts["accum"])
        if layout != (world, batch, accum):
            if step_in_epoch:
                raise VideoATSError(f"{paths['last']} was written in the middle of an epoch by {layout[0]} "
                                    f"process(es) x batch {layout[1]} x {layout[2]} accumulation; resume with "
                                    "the same layout (or from an end-of-epoch checkpoint)")
            say("warning: resuming with another process/batch layout: the data order differs from the "
                "original run from here on")
        rngs = ts.get("rng") or []
        if len(rngs) == world:
            D.set_rng_state(rngs[rank])
    global_step = epoch * steps_per_epoch + step_in_epoch
    log = RunLog(paths, main, global_step if state is not None else None, echo)
    if main:
        atomic_write_text(paths["config"], cfg_to_yaml(cfg))
        say(f"train {cfg_name(net)} on {len(train_set)} videos ({len(label_names)} classes), {world} process(es) "
            f"on {device.type}, batch {batch} x {world} x {accum} accumulation = {batch * world * accum} per "
            f"step, {steps_per_epoch} steps/epoch, {epochs} epochs, output {paths['out']}")
        if state is not None:
            where = (f"all {epochs} epochs already done" if epoch >= epochs else
                     f"epoch {epoch + 1}, step {step_in_epoch} of {steps_per_epoch}")
            say(f"resumed from {paths['last']}: {where}")
            log.record("resume", global_step, epoch=epoch, step_in_epoch=step_in_epoch)
        elif init_report:
            say(f"initial weights {cfg.TRAIN.CHECKPOINT_FILE}: {init_report}")

    workers = int(cfg.DATA.NUM_WORKERS)
    loader = torch.utils.data.DataLoader(
        D.SeededItems(train_set, int(cfg.SEED)), batch_size=batch, sampler=sampler, drop_last=True,
        num_workers=workers, collate_fn=_collate, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0, worker_init_fn=D.worker_threads if workers > 0 else None)
    val_loader = None
    if val_set is not None:
        from torch.utils.data.distributed import DistributedSampler

        from ..data import build_loader

        vs = DistributedSampler(val_set, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
        val_loader = build_loader(val_set, batch, sampler=vs, num_workers=workers,
                                  pin_memory=device.type == "cuda")

    def save_last(next_epoch: int, next_step: int, where: str) -> None:
        rngs = D.all_gather_objects(D.rng_state())
        if not main:
            return
        ts = {"version": STATE_VERSION, "epoch": next_epoch, "step_in_epoch": next_step,
              "global_step": next_epoch * steps_per_epoch + next_step, "optimizer": optimizer.state_dict(),
              "scheduler": schedule.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
              "rng": rngs, "best": best, "epoch_sums": sums, "window_sums": window, "world_size": world,
              "batch_size": batch, "accum": accum, "seed": int(cfg.SEED)}
        _save(paths["last"], net, cfg, label_names, {"epoch": next_epoch, "train_state": ts})
        log.record("checkpoint", ts["global_step"], epoch=next_epoch, step_in_epoch=next_step, where=where)

    last_val = None
    try:
        while epoch < epochs:
            t0 = time.perf_counter()
            sampler.set_epoch(epoch, start=step_in_epoch * accum * batch)
            batches_left = iter(loader)
            model.train()
            bar = progress_bar(progress and main, steps_per_epoch, step_in_epoch, f"epoch {epoch + 1}/{epochs}")
            for step in range(step_in_epoch, steps_per_epoch):
                global_step = epoch * steps_per_epoch + step
                lr = schedule.apply(global_step)
                D.seed_step(int(cfg.SEED), epoch, step, rank)
                micro = min(accum, batches - step * accum)
                optimizer.zero_grad(set_to_none=True)
                stats = {}
                for m in range(micro):
                    b = next(batches_left)
                    video = b["video"].to(device, non_blocking=True)
                    labels = b["label"].to(device, non_blocking=True)
                    sync = m == micro - 1 or world == 1
                    with (contextlib.nullcontext() if sync else model.no_sync()):
                        with autocast():
                            logits = model(video)
                        loss = criterion(logits.float(), labels)
                        if m == micro - 1 and (global_step + 1) % int(cfg.LOG_PERIOD) == 0:
                            stats = ats_stats(net, video)  # before backward (recomputation re-records)
                        scaled = loss / micro
                        (scaler.scale(scaled) if scaler is not None else scaled).backward()
                    n = float(labels.shape[0])
                    lv = float(loss.detach())
                    right = float((logits.detach().argmax(dim=1) == labels).sum())
                    sums[0] += lv * n
                    sums[1] += right
                    sums[2] += n
                    window[0] += lv * n
                    window[1] += n
                if scaler is not None:
                    scaler.unscale_(optimizer)
                if cfg.SOLVER.CLIP_GRAD > 0:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), float(cfg.SOLVER.CLIP_GRAD))
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                done = global_step + 1
                if done % int(cfg.LOG_PERIOD) == 0:
                    loss_sum, count = D.all_reduce_sum(window, device)
                    window = [0.0, 0.0]
                    log.record("train", done, epoch=epoch + 1, loss=loss_sum / max(count, 1), lr=lr, **stats)
                if bar is not None:
                    bar.set_postfix(loss=f"{lv:.3f}", lr=f"{lr:.2e}")
                    bar.update(1)
                period = int(cfg.TRAIN.CHECKPOINT_STEPS)
                if period > 0 and (step + 1) % period == 0 and step + 1 < steps_per_epoch:
                    save_last(epoch, step + 1, "step")
            if bar is not None:
                bar.close()
            loss_sum, correct, count = D.all_reduce_sum(sums, device)
            row = {"epoch": epoch + 1, "loss": loss_sum / max(count, 1), "top1": 100.0 * correct / max(count, 1),
                   "lr": schedule.lr(max(0, (epoch + 1) * steps_per_epoch - 1)),
                   "seconds": round(time.perf_counter() - t0, 2)}
            epoch += 1
            step_in_epoch, sums = 0, [0.0, 0.0, 0.0]
            eval_now = val_loader is not None and (epoch % int(cfg.TRAIN.EVAL_PERIOD) == 0 or epoch == epochs)
            if eval_now:
                last_val = validate(net, val_loader, device, autocast)
                row["val"] = last_val
                if best["top1"] is None or last_val["top1"] > best["top1"]:
                    best = {"top1": last_val["top1"], "epoch": epoch}
                    if main:
                        _save(paths["best"], net, cfg, label_names, {"epoch": epoch, "val_top1": last_val["top1"]})
            log.record("epoch", epoch * steps_per_epoch, **row)
            say(epoch_line(row, epochs))
            if epoch % max(1, int(cfg.TRAIN.CHECKPOINT_PERIOD)) == 0 or epoch == epochs:
                save_last(epoch, 0, "epoch")
        D.barrier()
        result = {"output_dir": paths["out"], "model": cfg_name(net), "epochs": epochs,
                  "steps": epochs * steps_per_epoch, "world_size": world, "global_batch": batch * world * accum,
                  "last_checkpoint": paths["last"], "best": {**best, "checkpoint": paths["best"]
                                                             if os.path.exists(paths["best"]) else None},
                  "val": last_val, "metrics_log": paths["metrics"], "resumed": state is not None}
        if cfg.TRAIN.FINAL_TEST:
            from .evaluate import evaluate
            from .report import videos_text

            ckpt = result["best"]["checkpoint"] or paths["last"]
            say(f"final test on the {cfg.TEST.SPLIT} split with {ckpt}")
            doc = evaluate(cfg, checkpoint=ckpt, output_dir=paths["test"], progress=progress)
            video, coverage = doc["metrics"]["video"], doc["coverage"]
            result["test"] = {"checkpoint": ckpt, "top1": video["top1"], "top5": video["top5"],
                              "num_videos": video["num_videos"], "expected_videos": coverage["expected_videos"],
                              "videos": videos_text(coverage), "gflops_per_view": doc["gflops"]["per_view"],
                              "views": doc["protocol"]["views"], "results": paths["test"]}
            if doc.get("error"):
                result["error"] = doc["error"]
            log.record("test", epochs * steps_per_epoch, **{k: v for k, v in result["test"].items()
                                                           if isinstance(v, (int, float))})
            say(f"test top-1 {num(video['top1'])}%  top-5 {num(video['top5'])}%  on {videos_text(coverage)}; "
                f"{doc['protocol']['views']} views, {num(doc['gflops']['per_view'], 3)} GFLOPs/view")
    finally:
        log.close()
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def _collate(items):
    from ..data import collate_views

    return collate_views(items)


def _save(path: str, net, cfg, label_names, extra: dict) -> None:
    from ..checkpoint import save_checkpoint

    save_checkpoint(path, net, config=cfg, label_names=label_names, extra=extra)
