"""What a training run reports: metrics.jsonl, TensorBoard scalars, progress bars and console lines.

Only rank 0 writes. Each metrics line carries the optimizer step it describes, which is what lets a
resumed run cut both logs back to its checkpoint instead of reporting the steps it redoes twice.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable, Dict, Optional

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from ..atomic import atomic_write_text
from ..runner import account


class RunLog:
    """metrics.jsonl + TensorBoard + console, rank 0 only. On resume both logs are cut back to the
    checkpoint's step, so that steps a killed run did after its last checkpoint are not reported twice."""

    def __init__(self, paths, enabled: bool, resume_step: Optional[int], echo: Callable[[str], None]):
        self.enabled, self.echo = enabled, echo
        self.path, self.tb = paths["metrics"], None
        if not enabled:
            return
        os.makedirs(paths["out"], exist_ok=True)
        if resume_step is not None and os.path.exists(self.path):
            kept = []
            with open(self.path) as f:
                for line in f:
                    try:
                        if int(json.loads(line).get("step", 0)) <= resume_step:
                            kept.append(line if line.endswith("\n") else line + "\n")
                    except ValueError:
                        pass  # a line cut by the kill
            atomic_write_text(self.path, "".join(kept))
        elif resume_step is None and os.path.exists(self.path):
            os.remove(self.path)
        self.tb = SummaryWriter(paths["tensorboard"], purge_step=resume_step if resume_step else None)

    def record(self, event: str, step: int, **values) -> None:
        if not self.enabled:
            return
        row = {"event": event, "step": int(step), "time": round(time.time(), 3), **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for key, value in flat(values, event).items():
                self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def flat(values: dict, prefix: str) -> Dict[str, float]:
    out = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}/{k}"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch",):
            out[f"{prefix}/{k}"] = float(v)
    return out


def ats_stats(net, video) -> dict:
    """Mean kept tokens per ATS stage and mean GFLOPs per sample of the last forward pass (`runner.account`).
    Every model the registry builds has a cost model, so an error here is a defect: it is raised, not logged
    as an empty row."""
    out = account(net, video)
    return cost_row(out.gflops, out.kept)


def cost_row(gflops, kept) -> dict:
    """The GFLOPs and kept tokens a log row shows, of a step's batch or of a whole validation (`runner`'s
    per-view GFLOPs and block -> kept tokens): their means, blocks as "block{b}"."""
    row = {"gflops_per_sample": float(gflops.mean())}
    if kept:
        row["kept_tokens"] = {f"block{b}": float(k.float().mean()) for b, k in sorted(kept.items())}
    return row


def progress_bar(enabled: bool, total: int, initial: int, desc: str):
    if not enabled or not sys.stderr.isatty():
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, leave=False,
                file=sys.stderr)


def num(x, nd=1) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def epoch_line(row: dict, epochs: int) -> str:
    text = (f"epoch {row['epoch']}/{epochs}  loss {row['loss']:.4f}  train top-1 {row['top1']:.1f}%  "
            f"lr {row['lr']:.2e}  {row['seconds']:.1f}s")
    val = row.get("val")
    if val:
        text += f"  |  val top-1 {val['top1']:.1f}% ({val['videos']} videos)  loss {val['loss']:.4f}"
        if val.get("gflops_per_sample") is not None:
            text += f"  {val['gflops_per_sample']:.4f} GFLOPs/clip"
        if val.get("kept_tokens"):
            text += "  kept " + " ".join(f"{b}:{k:.1f}" for b, k in val["kept_tokens"].items())
    return text
