"""Tiny foundation-model teachers written to local folders, random weights, nothing downloaded:
an open_clip ViT (a ``local-dir:`` folder as hf-hub repositories hold it) and a transformers
CLIPModel with a CLIPTokenizer built from open_clip's packaged BPE merges."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import torch

OPEN_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPEN_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
HF_MEAN = [0.5, 0.4, 0.3]
HF_STD = [0.2, 0.25, 0.3]
"""Normalisation each tiny model's config states (neither is ImageNet's)."""
OPEN_CLIP_DIM = 32
HF_DIM = 16
"""The joint embedding width of each (the students project to it)."""

OPEN_CLIP_CFG = {
    "embed_dim": OPEN_CLIP_DIM,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def write_open_clip(folder: Path, seed: int = 0) -> Path:
    """A tiny open_clip model in ``folder`` (open_clip_config.json + weights); returns it."""
    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_cfg": OPEN_CLIP_CFG,
        "preprocess_cfg": {"mean": OPEN_CLIP_MEAN, "std": OPEN_CLIP_STD},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


def write_hf_clip(folder: Path, seed: int = 0) -> Path:
    """A tiny transformers CLIPModel with tokenizer and image processor in ``folder``."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    byte_chars = list(bytes_to_unicode().values())
    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1:501]
    vocab = [
        *byte_chars,
        *(c + "</w>" for c in byte_chars),
        *("".join(m.split()) for m in merges),
        "<|startoftext|>",
        "<|endoftext|>",
    ]
    (folder / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=24
    )
    tokenizer.save_pretrained(folder)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 24,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
        projection_dim=HF_DIM,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=HF_MEAN,
        image_std=HF_STD,
    ).save_pretrained(folder)
    return folder
