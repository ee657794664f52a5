"""Worker for tests/test_text_features.py, started by torchrun with 2 gloo processes.

Every rank builds the locked-encoder text states of the same reports with real collectives
(:func:`vlcd_dist.anchors.report_state_table`) and writes them, with how many sentences it
embedded itself, to OUT/rank{r}.safetensors; the test compares them with one process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# 20 distinct sentences; report j holds sentences 3j .. 3j+4, so neighbours share two.
SENTENCES = [f"Finding number {i} is noted in the membranes." for i in range(20)]
SAMPLES = [(f"case-{j}", " ".join(SENTENCES[3 * j : 3 * j + 5])) for j in range(6)]


def main(out: Path) -> None:
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file

    from vlcd_dist import anchors
    from vlcd_dist.models import FrozenTeacher, create_teacher

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    embedded: list[int] = []
    real = anchors.embed_sentences

    def counting(teacher, sentences, **kwargs):
        embedded.append(len(sentences))
        return real(teacher, sentences, **kwargs)

    anchors.embed_sentences = counting
    torch.manual_seed(0)
    teacher = FrozenTeacher(create_teacher("tiny_resnet18_minilm"), autocast_dtype="float32")
    table = anchors.report_state_table(teacher, SAMPLES)
    assert table.keys == [k for k, _ in SAMPLES]
    save_file(
        {"states": table.anchors.contiguous(), "sentences": torch.tensor(sum(embedded))},
        str(out / f"rank{rank}.safetensors"),
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
