"""Plant plausible bugs in a scratch copy of the package, one at a time, and check that the tests catch each.

A test suite that passes proves little until it is seen to fail on the bugs it exists for. Each plant below
is one small change of the video ATS semantics or of its accounting, the kind a refactor could make; the
script copies `videoats/` and `tests/` to a temporary folder, applies one plant, runs the chosen tests there
(stopping at the first failure) and reports which test caught it. Run it after changing ATS or its tests:

    python tools/plant_bugs.py                      # every plant, against tests/test_video_ats_reference.py
    python tools/plant_bugs.py tube_no_frame_norm --tests tests/test_static.py
    python tools/plant_bugs.py -k "not compiled"    # pytest's -k, to run part of the tests
    python tools/plant_bugs.py --list

It exits non-zero when a plant goes uncaught or no longer applies (the code it edits has changed: update the
plant), and first checks that the tests pass on the unchanged copy.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TESTS = ["tests/test_video_ats_reference.py"]


@dataclass(frozen=True)
class Plant:
    name: str
    what: str
    edits: Tuple[Tuple[str, str, str], ...]  # (file, text, replacement): the text must occur exactly once


PLANTS = [
    Plant("tube_no_frame_norm", "tube sums raw scores over frames (no per-frame normalisation)",
          (("videoats/ats/stage.py", "per_frame = scores / scores.sum(dim=2, keepdim=True).clamp_min(1e-12)",
            "per_frame = scores"),)),
    Plant("joint_one_frame_reference", "joint draws against a one-frame reference grid (L0 + 1, not T x L0 + 1)",
          (("videoats/ats/stage.py", "rows, ref = scores.reshape(b, t * l), t * slots0 + 1",
            "rows, ref = scores.reshape(b, t * l), slots0 + 1"),)),
    Plant("tube_clip_reference", "tube draws against the clip's token count instead of its locations",
          (("videoats/ats/stage.py", "rows, ref = tube_scores(scores), slots0 + 1",
            "rows, ref = tube_scores(scores), t * slots0 + 1"),)),
    Plant("temporal_absent_keys", "TimeSformer's temporal attention lets absent tokens in as zero-valued keys",
          (("videoats/ats/stage.py", "return (rows | ~rows.any(dim=-1, keepdim=True))[:, None, None, :]",
            "return torch.ones_like(rows)[:, None, None, :]"),)),
    Plant("masked_keys_after_sample", "in the masked layout the kept queries attend to the kept tokens only, "
                                      "not to every token present before the sample",
          (("videoats/models/layers.py", "        gather, layout = run.layout(block, keep)\n",
            "        gather, layout = run.layout(block, keep)\n        if gather is None:\n"
            "            mask = layout.frame_mask\n"),)),
    Plant("xvit_shift_over_slots", "X-ViT shifts keys/values between slots, not locations, in ragged layouts",
          (("videoats/models/xvit.py", "part = torch.cat([part[:, :, :1], layout.aligned(part[:, :, 1:])], dim=2)",
            "part = part"),
           ("videoats/models/xvit.py", "part = torch.cat([part[:, :, :1], layout.unaligned(part[:, :, 1:])], dim=2)",
            "part = part"))),
    Plant("masked_absent_rows_computed", "the masked layout computes qkv for absent tokens too (so X-ViT's shift "
                                         "hands their stale keys/values to the neighbouring frames)",
          (("videoats/ats/core.py", "                                key_rows=present_rows(keys))",
            "                                key_rows=None)"),)),
    Plant("xvit_scores_unshifted", "X-ViT scores tokens with the keys/values before the frame shift",
          (("videoats/models/layers.py", "        k, v = kv_hook(k, v, layout)\n",
            "        unshifted, (k, v) = (k, v), kv_hook(k, v, layout)\n"),
           ("videoats/models/layers.py", "keep = run.sample(block, q[:, :, :1], k, v, attn.scale",
            "keep = run.sample(block, q[:, :, :1], *(unshifted if kv_hook is not None else (k, v)), attn.scale"))),
    Plant("min_tokens_ignored", "the min_tokens floor is not applied",
          (("videoats/ats/sampler.py", "k = k.clamp(min=float(min_tokens)).round()", "k = k.round()"),
           ("videoats/ats/sampler.py", "return round(max(k, float(min_tokens)))", "return round(k)"))),
    Plant("budget_draws_when_not_binding", "a budget that does not bind draws the budget, not the reference count",
          (("videoats/ats/sampler.py", "draws = torch.where(k >= n, float(reference - 1), k - 1)",
            "draws = k - 1"),
           ("videoats/ats/sampler.py", "return max(reference - 1 if k >= present else k - 1, 2)",
            "return max(k - 1, 2)"))),
    Plant("cls_not_counted", "the budget's present count leaves out the CLS",
          (("videoats/ats/stage.py", "n = host_draws(budget, rows.shape[1] + 1, ref, min_tokens)",
            "n = host_draws(budget, rows.shape[1], ref, min_tokens)"),
           ("videoats/ats/stage.py", "n = num_samples(budget, present.sum(dim=1) + 1, ref, min_tokens)",
            "n = num_samples(budget, present.sum(dim=1), ref, min_tokens)"))),
    Plant("random_keys_by_slot", "the random baseline keys slots instead of tokens (so a pruned layout draws "
                                 "other tokens than the masked one)",
          (("videoats/ats/core.py", "random_keys(cfg.seed, block, self.location, self.slots0,",
            "random_keys(cfg.seed, block, torch.arange(self.location.shape[2]).expand_as(self.location), "
            "self.slots0,"),)),
    Plant("static_width_short", "the static layout's width is one slot under the most a row can keep",
          (("videoats/ats/sampler.py", "return slots if k >= slots + 1 else min(slots, max(k - 1, 2))",
            "return slots if k >= slots + 1 else min(slots, max(k - 2, 2))"),)),
    Plant("trim_never_masks", "the trim layout drops its mask when samples keep different counts",
          (("videoats/ats/core.py", "every_kept = fewest == width", "every_kept = True"),)),
    Plant("gflops_temporal_pairs", "per-sample GFLOPs count temporal pairs as frames x present, not present^2",
          (("videoats/flops.py", "total += blk.t_pair * (per_loc ** 2).sum(dim=1)",
            "total += blk.t_pair * per_loc.sum(dim=1) * t"),)),
    Plant("gflops_no_score_row", "per-sample GFLOPs leave out the ATS scoring row",
          (("videoats/flops.py", "                total += blk.score * (1 + n).sum(dim=1)\n",
            "                pass\n"),)),
    Plant("evit_fused_unweighted", "EViT's fused token sums the dropped tokens without their attention weights",
          (("videoats/ats/reducers.py", "weight = torch.where(dropped, attn, torch.ones_like(attn))",
            "weight = torch.ones_like(attn)"),)),
    Plant("evit_tube_slot_per_frame", "EViT in tube ranks by each frame's attention, not the tube score",
          (("videoats/ats/reducers.py",
            "rank = tube_scores(a)[:, None, :].expand(b, t, l) if variant == \"tube\" else a", "rank = a"),)),
    Plant("evit_keeps_kept_queries_only", "EViT computes only the kept queries, as ATS does, before fusing",
          (("videoats/models/layers.py", "    if run is not None and run.after_attention:\n",
            "    if run is not None and run.after_attention and False:\n"),)),
    Plant("tome_partition_by_location", "ToMe splits sources and destinations by location, not by present rank",
          (("videoats/ats/reducers.py", "number = here.long().cumsum(dim=2) - 1", "number = slot"),)),
    Plant("tome_no_proportional_attention", "ToMe's merged tokens get no log(size) bias in frame attention",
          (("videoats/ats/reducers.py", "sizes.reshape(b * t, w)], dim=1).log()",
            "sizes.reshape(b * t, w)], dim=1).clamp_max(1).log()"),)),
    Plant("tome_no_temporal_sizes", "ToMe's sizes do not bias TimeSformer's temporal attention",
          (("videoats/ats/core.py", "temporal=self.divided and t > 1)", "temporal=False)"),)),
    Plant("gflops_tome_no_matching", "per-sample GFLOPs leave out ToMe's matching",
          (("videoats/flops.py", "total += blk.match * merges", "total += 0 * merges"),)),
]


def _apply(root: str, plant: Plant) -> Optional[str]:
    """Edit the copy at `root`; returns why the plant no longer applies, or None."""
    for path, text, replacement in plant.edits:
        full = os.path.join(root, path)
        with open(full) as f:
            source = f.read()
        if source.count(text) != 1:
            return f"{path}: the text to change occurs {source.count(text)} times (expected once)"
        with open(full, "w") as f:
            f.write(source.replace(text, replacement))
    return None


def _run_tests(root: str, tests: List[str], select: Optional[str] = None) -> Tuple[bool, str]:
    """(passed, the first failing test id or the last line of pytest's output)."""
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    cmd += ["-k", select] if select else []
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out, flags=re.M)
    tail = out.strip().splitlines()[-1] if out.strip() else ""
    return proc.returncode == 0, failed[0] if failed else tail


def _copy(into: str) -> str:
    root = os.path.join(into, "repo")
    for name in ("videoats", "tests", "configs", "setup.cfg", "setup.py"):
        src = os.path.join(ROOT, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(root, name), ignore=shutil.ignore_patterns("__pycache__"))
        elif os.path.exists(src):
            shutil.copy(src, os.path.join(root, name))
    return root


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plants", nargs="*", help="plant names (default: all)")
    parser.add_argument("--tests", nargs="+", default=DEFAULT_TESTS, help="test files or ids to run")
    parser.add_argument("-k", dest="select", help="pytest's -k expression, to run part of the tests")
    parser.add_argument("--list", action="store_true", help="list the plants and stop")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.list:
        for p in PLANTS:
            print(f"{p.name:32s} {p.what}")
        return 0
    known = {p.name: p for p in PLANTS}
    unknown = [n for n in args.plants if n not in known]
    if unknown:
        print(f"unknown plant(s) {unknown}; `--list` shows them", file=sys.stderr)
        return 2
    chosen = [known[n] for n in args.plants] or PLANTS
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        passed, why = _run_tests(_copy(os.path.join(tmp, "base")), args.tests, args.select)
        if not passed:
            print(f"the tests fail on the unchanged code ({why}): fix that first", file=sys.stderr)
            return 1
        for plant in chosen:
            root = _copy(os.path.join(tmp, plant.name))
            problem = _apply(root, plant)
            if problem:
                results.append(dict(plant=plant.name, caught=False, by=None, problem=problem))
            else:
                passed, why = _run_tests(root, args.tests, args.select)
                results.append(dict(plant=plant.name, caught=not passed, by=why if not passed else None))
            r = results[-1]
            if not args.json:
                verdict = "caught by " + r["by"] if r["caught"] else "NOT CAUGHT " + (r.get("problem") or "")
                print(f"{plant.name:32s} {verdict}", flush=True)
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(dict(tests=args.tests, results=results), indent=2))
    return 0 if all(r["caught"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
