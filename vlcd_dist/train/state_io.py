"""Nested training state (optimizer states, scaler states) as safetensors + JSON, no pickle.

The lowest room of the harness: the backends write their trainees' optimizer state with it and
the checkpointer reads it back, so neither needs the other to do so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from vlcd_dist.errors import VlcdError
from vlcd_dist.io import save_tensors, write_text


class CheckpointError(VlcdError):
    """A checkpoint cannot be written or read."""


def flatten_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "") -> Any:
    """A JSON-ready copy of ``obj`` with every tensor moved into ``tensors`` (by a dotted name)
    and replaced by ``{"__tensor__": name}``. Non-string dict keys and tuples are kept exact."""
    if isinstance(obj, torch.Tensor):
        name = prefix or "value"
        tensors[name] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": name}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {
                k: flatten_state(v, tensors, f"{prefix}.{k}" if prefix else k)
                for k, v in obj.items()
            }
        return {
            "__items__": [
                [k, flatten_state(v, tensors, f"{prefix}.{k}" if prefix else str(k))]
                for k, v in obj.items()
            ]
        }
    if isinstance(obj, tuple):
        return {
            "__tuple__": [flatten_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
        }
    if isinstance(obj, list):
        return [flatten_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    raise CheckpointError(f"cannot store {type(obj).__name__} at {prefix!r} without pickle")


def unflatten_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__items__"}:
            return {k: unflatten_state(v, tensors) for k, v in obj["__items__"]}
        if set(obj) == {"__tuple__"}:
            return tuple(unflatten_state(v, tensors) for v in obj["__tuple__"])
        return {k: unflatten_state(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unflatten_state(v, tensors) for v in obj]
    return obj


def save_state(obj: Any, folder: Path, stem: str) -> None:
    """Write ``obj`` as ``stem.safetensors`` (its tensors) + ``stem.json`` (the rest)."""
    tensors: dict[str, torch.Tensor] = {}
    structure = flatten_state(obj, tensors)
    if tensors:
        save_tensors(tensors, folder / f"{stem}.safetensors")
    write_text(folder / f"{stem}.json", json.dumps(structure))


def load_state(folder: Path, stem: str) -> Any:
    """Read what :func:`save_state` wrote."""
    structure = json.loads((folder / f"{stem}.json").read_text())
    file = folder / f"{stem}.safetensors"
    tensors = load_file(str(file)) if file.exists() else {}
    return unflatten_state(structure, tensors)
