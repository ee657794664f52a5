"""Pipelines of stages (``vlcd demo``, ``vlcd sweep``): each stage runs as its own process,
launched the way a user would launch it (:mod:`.launch`); nothing here imports the CLI."""
