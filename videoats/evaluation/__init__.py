"""Multi-view evaluation on a dataset (`evaluate.py`): metrics, the results document and its files, plots."""
