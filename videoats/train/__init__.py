"""Training and fine-tuning: the run (`loop.py`), its resumable state (`state.py`), optimiser and schedule
(`optim.py`), logs (`log.py`), and the seeds and data order that make a run resumable (`seeding.py`)."""
