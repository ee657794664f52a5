"""Evaluation on plain arrays and frozen encoders: AUC and bootstrap intervals (:mod:`.metrics`),
linear probes (:mod:`.probes`) and the heads file that keeps them with their operating points
(:mod:`.heads`), zero-shot scoring (:mod:`.zeroshot`), degraded test images (:mod:`.robustness`),
size and speed (:mod:`.efficiency`) and feature extraction over ranks (:mod:`.features`). Nothing
here imports the training harness, accelerate or deepspeed."""
