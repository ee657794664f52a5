"""Reading weight files without unpickling, and fingerprinting weights.

Weights come as safetensors, or as PyTorch files read with ``torch.load(weights_only=True)``;
nothing here ever runs pickle on arbitrary objects.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from vlcd_dist.errors import VlcdError


class ModelError(VlcdError, ValueError):
    """A model cannot be built as configured (bad config value, weights, or unreachable hub)."""


# Names a folder may use for its weights, most preferred first (timm/HF hub, open_clip, plain).
WEIGHT_FILE_NAMES = (
    "model.safetensors",
    "open_clip_model.safetensors",
    "pytorch_model.bin",
    "open_clip_pytorch_model.bin",
    "model.pth",
    "model.pt",
)
# Containers that training scripts wrap a state_dict in.
_WRAPPER_KEYS = ("state_dict", "model", "module", "state_dict_ema")


def resolve_weights_file(path: str | Path) -> Path:
    """The weight file to read for ``path``: the file itself, or the weight file of a folder.

    A folder must hold one of :data:`WEIGHT_FILE_NAMES` or exactly one ``*.safetensors``.
    """
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for name in WEIGHT_FILE_NAMES:
            if (path / name).is_file():
                return path / name
        candidates = sorted(path.glob("*.safetensors"))
        if len(candidates) == 1:
            return candidates[0]
        raise ModelError(
            f"no weight file in folder {path}: expected one of {', '.join(WEIGHT_FILE_NAMES)} "
            "or a single *.safetensors file; pass the file itself instead"
        )
    raise ModelError(
        f"weights path {path} does not exist; give an existing .safetensors/.pth file or a "
        "folder holding one"
    )


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weight file or folder, on CPU, never unpickling arbitrary objects.

    ``.safetensors`` is read with safetensors; anything else with
    ``torch.load(weights_only=True)``. A state_dict nested under a usual wrapper key
    ("state_dict", "model", ...) is unwrapped, and a DDP ``module.`` prefix is stripped.
    """
    file = resolve_weights_file(path)
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: object = load_file(str(file), device="cpu")
    else:
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    while isinstance(state, Mapping) and not any(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        inner = next((state[k] for k in _WRAPPER_KEYS if k in state), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, Mapping):
        raise ModelError(f"{file} does not hold a state_dict (found {type(state).__name__})")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def load_into(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
    ignore_prefixes: Iterable[str] = (),
) -> None:
    """Copy ``state`` into ``module``, strictly except for keys under ``ignore_prefixes``.

    ``ignore_prefixes`` lists heads the module deliberately lacks (a classifier dropped with
    ``num_classes=0``). Missing or unexpected keys raise, naming ``source`` and a few keys.
    """
    prefixes = tuple(p if p.endswith(".") else p + "." for p in ignore_prefixes)
    kept = {k: v for k, v in state.items() if not (prefixes and k.startswith(prefixes))}
    expected = module.state_dict()
    missing = [k for k in expected if k not in kept]
    unexpected = [k for k in kept if k not in expected]
    mismatched = [
        f"{k}: {tuple(kept[k].shape)} vs {tuple(expected[k].shape)}"
        for k in kept
        if k in expected and kept[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        raise ModelError(
            f"weights from {source} do not fit {type(module).__name__}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(mismatched)} of another shape (e.g. {mismatched[:2]}); "
            "check that the file was saved from the same architecture"
        )
    module.load_state_dict(kept, strict=True)


def state_dict_hash(module: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) over the names, dtypes, shapes and bytes of a state_dict's tensors.

    Any change to a weight, a buffer in the state_dict, or a dtype changes the hash; device
    placement does not. Keys are visited in sorted order so module construction order is moot.
    """
    state = module.state_dict() if isinstance(module, nn.Module) else module
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        # A uint8 view gives the raw bytes for every dtype, bf16 included (numpy lacks bf16).
        raw = tensor.to("cpu").contiguous().reshape(-1).view(torch.uint8)
        digest.update(raw.numpy().tobytes())
    return digest.hexdigest()
