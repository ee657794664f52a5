"""The training harness: recipes, the Accelerate backend, stages, checkpoints, logging, eval.

Entry points are the ``vlcd train-teacher | predistill | distill | eval | demo`` commands
(:mod:`vlcd_dist.train.cli`). The library underneath (models, losses, data) never imports
this package, so it stays usable without a launcher.
"""
