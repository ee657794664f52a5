"""Rendering what the stages measured: one typed eval report, tables for Markdown and HTML,
figures, the HTML page of a run, and the sweep's summary files."""
