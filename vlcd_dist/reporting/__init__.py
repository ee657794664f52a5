"""Rendering what the stages measured, from the typed eval report
(:mod:`vlcd_dist.evaluation.results`) and the sweep summary: tables built once for Markdown and
HTML (Jinja2 templates in ``templates/``), figures drawn with matplotlib (PNG and SVG), the
files of an eval folder, the HTML page of a run, and the sweep's summary files."""
