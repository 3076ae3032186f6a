"""Inference on the user's own videos: a `Predictor` built from flags (`predictor.py`), answers per video or
per clip (`predict.py`), and pictures of the kept tokens (`visualize.py`)."""
