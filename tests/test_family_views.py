"""Without a config, a model's views follow its family record: frames, crop size and the normalisation of
its released weights, the same for `infer` and `flops --input`."""
from __future__ import annotations

import pytest

from videoats.inference.predictor import load_predictor


@pytest.mark.parametrize("name,mean,std", [
    ("timesformer_tiny_8x32", 0.45, 0.225),  # TimeSformer's release
    ("xvit_tiny_8x32", 0.5, 0.5),            # X-ViT's release
])
def test_infer_normalises_as_the_family_was_trained(name, mean, std):
    p = load_predictor(model_name=name)
    assert p.cfg.DATA.MEAN == [mean] * 3 and p.cfg.DATA.STD == [std] * 3
    assert p.cfg.DATA.NUM_FRAMES == 8 and p.cfg.DATA.TEST_CROP_SIZE == 32
    assert p.settings().mean == (mean,) * 3


def test_a_command_line_normalisation_wins():
    p = load_predictor(model_name="xvit_tiny_8x32", opts=["DATA.MEAN", "[0.4,0.4,0.4]", "DATA.STD", "[0.2,0.2,0.2]"])
    assert p.cfg.DATA.MEAN == [0.4] * 3 and p.cfg.DATA.STD == [0.2] * 3
