"""The training harness: backends, the trainer loop, the stages, the eval stage, checkpoints,
preemption, optimizers and logging.

Entry points are the ``vlcd train-teacher | predistill | distill | eval`` commands
(:mod:`vlcd_dist.cli.stages`). The library underneath (data, models, losses, anchors,
evaluation) never imports this package, so it stays usable without a launcher
(docs/architecture.md).
"""
