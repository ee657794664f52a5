"""Parameter counts of every registered student and of the teacher towers (random init).

Nothing is downloaded: backbones are built with random weights, BERT-base from a default
BertConfig (its architecture, not its weights), MiniLM from the packaged folder.

Usage: python bench/model_sizes.py [--embed-dim 512]
"""

from __future__ import annotations

import argparse
import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from vlcd_dist.models import ImageTower, create_student, list_students  # noqa: E402


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def text_encoders() -> list[tuple[str, nn.Module]]:
    from transformers import AutoModel, BertConfig, BertModel

    from vlcd_dist.models import packaged_minilm_path

    bert = BertModel(BertConfig(), add_pooling_layer=False)  # bert-base-uncased's shape
    minilm = AutoModel.from_pretrained(packaged_minilm_path())
    minilm.pooler = None  # the text tower drops it too
    return [("bert-base-uncased (text)", bert), ("all-MiniLM-L6-v2 (text)", minilm)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embed-dim", type=int, default=512, help="teacher d")
    args = parser.parse_args()
    d = args.embed_dim
    logging.basicConfig(level=logging.ERROR)
    torch.manual_seed(0)

    rows: list[tuple[str, int, int]] = []
    for name in list_students():
        student = create_student(name, embed_dim=d)
        counts = student.num_params()
        rows.append((f"{name} (student)", counts["backbone"], counts["projection"]))
    tower = ImageTower("resnet50", d, weights="none")
    rows.append(("resnet50 (teacher image)", count(tower.backbone), count(tower.proj)))
    for name, encoder in text_encoders():
        hidden = int(encoder.config.hidden_size)
        rows.append((name, count(encoder), hidden * d))

    print(f"Parameters (projection to d={d}; classifier heads excluded)")
    print(f"{'model':<34} {'backbone':>12} {'projection':>11} {'total':>12}")
    for name, backbone, proj in rows:
        print(f"{name:<34} {backbone:>12,} {proj:>11,} {backbone + proj:>12,}")


if __name__ == "__main__":
    main()
