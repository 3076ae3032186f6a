#!/usr/bin/env python
"""PySlowFast-style training entry: `python tools/train_net.py --cfg FILE [--resume] [KEY VALUE ...]`.

Kept for users of the TimeSformer/X-ViT repositories; it is `videoats train` under another name. Several
processes: `torchrun --standalone --nproc_per_node 2 tools/train_net.py --cfg FILE` (several machines: see
`videoats train --help`).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from videoats.cli import train_net_main as main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
