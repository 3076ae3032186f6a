#!/usr/bin/env python
"""PySlowFast-style test entry: `python tools/test_net.py --cfg FILE [--checkpoint PATH] [KEY VALUE ...]`.

Kept for users of the TimeSformer/X-ViT repositories; it is `videoats eval` under another name (torchrun works
the same way).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from videoats.cli import test_net_main as main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
