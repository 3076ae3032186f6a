"""Subcommands of the `videoats` CLI, one module each (see `videoats.cli`)."""
