"""Foundation models as the frozen teacher: open_clip models and Hugging Face CLIPModels.

``teacher.source: open_clip`` (BiomedCLIP, PLIP-style, QuiltNet, any open_clip config) and
``teacher.source: hf_clip`` (any ``transformers.CLIPModel`` folder or hub name) give a teacher
with the same interface as this package's :class:`~vlcd_dist.models.teacher.VisionLanguageTeacher`
(see its docstring), which :class:`~vlcd_dist.models.teacher.FrozenTeacher` wraps unchanged:

* ``encode_image(images)``: [0, 1] images at data.image_size, resized to the model's input size
  and normalised with its own mean/std (:attr:`input`), then the library's own image encoder
  (``model.encode_image`` / ``model.get_image_features``);
* ``text``: what the text anchors embed sentences with (:class:`ForeignText`): the model's own
  tokenizer and context length, then ``model.encode_text`` / ``model.get_text_features``;
* ``text_hash()``: fingerprint of the text-tower weights, for the anchor cache;
* ``embed_dim``: the joint embedding width, which every student projects to.

Such a teacher is never trained here (``vlcd train-teacher`` skips it).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlcd_dist.models.preprocess import ImageInput
from vlcd_dist.models.towers import text_digest
from vlcd_dist.models.weights import ModelError, resolve_weights_file, state_dict_hash

logger = logging.getLogger(__name__)


def _features(out: Any) -> torch.Tensor:
    # transformers 5 returns a model output (the projected features in pooler_output), 4.x a tensor.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def first_mismatch(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> str:
    """The first key where a checkpoint and a model disagree, in the model's key order: missing,
    of another shape, or (after all of the model's keys) unexpected; "" when they agree."""
    for key, tensor in expected.items():
        if key not in state:
            return f"{key!r} is missing from the checkpoint"
        if tuple(state[key].shape) != tuple(tensor.shape):
            return (
                f"{key!r} has shape {tuple(state[key].shape)} in the checkpoint but "
                f"{tuple(tensor.shape)} in the model"
            )
    for key in state:
        if key not in expected:
            return f"{key!r} is in the checkpoint but not in the model"
    return ""


class ForeignText:
    """A foreign model's text tower as :mod:`vlcd_dist.anchors` uses one: ``tokenize(texts)``
    -> a dict of tensors, ``__call__(**batch)`` -> features [B, d], ``device``, ``embed_dim``,
    ``max_length`` (the context length) and the truncation record of
    :class:`~vlcd_dist.models.towers.TextTower` (``cut_texts``, ``truncated``)."""

    def __init__(
        self,
        owner: nn.Module,
        tokenize: Callable[[list[str]], dict[str, torch.Tensor]],
        encode: Callable[..., torch.Tensor],
        lengths: Callable[[list[str]], list[int]] | None,
        *,
        model_name: str,
        max_length: int,
        embed_dim: int,
        pooling: str,
    ) -> None:
        self._owner = owner
        self._tokenize = tokenize
        self._encode = encode
        self._lengths = lengths
        self.model_name = model_name
        self.max_length = int(max_length)
        self.embed_dim = int(embed_dim)
        self.pooling = pooling
        self.cut_texts: set[int] = set()
        """Digests of the distinct texts cut at the context length so far."""

    @property
    def device(self) -> torch.device:
        """Where the text weights are."""
        return next(self._owner.parameters()).device

    @property
    def training(self) -> bool:
        return self._owner.training

    def eval(self) -> ForeignText:
        self._owner.eval()
        return self

    def train(self, mode: bool = True) -> ForeignText:
        self._owner.train(mode)
        return self

    @property
    def truncated(self) -> int:
        """How many distinct texts have been cut at the context length so far."""
        return len(self.cut_texts)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The model's own tokenization of ``texts`` (cut texts are counted; the first logged)."""
        texts = list(texts)
        if self._lengths is not None:
            cut = {
                text_digest(t)
                for t, n in zip(texts, self._lengths(texts), strict=True)
                if n > self.max_length
            }
            if cut and not self.cut_texts:
                logger.warning(
                    "teacher text tower: a text longer than its context length of %d tokens was "
                    "truncated (%s); further truncations are counted, not logged",
                    self.max_length,
                    self.model_name,
                )
            self.cut_texts |= cut
        return self._tokenize(texts)

    def __call__(self, **batch: torch.Tensor) -> torch.Tensor:
        return self._encode(**batch)

    forward = __call__

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Raw strings -> features [B, d], on the tower's device."""
        device = self.device
        return self(**{k: v.to(device) for k, v in self.tokenize(texts).items()})


class _ForeignTeacher(nn.Module):
    """What the two foreign sources share; subclasses set ``model``, ``input`` and ``text``."""

    source = ""
    model: nn.Module
    input: ImageInput
    text: ForeignText

    def __init__(self, name: str, spec: str, weights: str | None, max_logit_scale: float):
        super().__init__()
        self.name = name
        self.arch = spec
        self.weights = weights
        self.max_logit_scale = float(max_logit_scale)

    @property
    def embed_dim(self) -> int:
        """d, the width of the joint embedding (every student projects to it)."""
        return self.text.embed_dim

    @property
    def logit_scale(self) -> torch.Tensor:
        """The model's learnt log logit scale (a scalar)."""
        return self.model.logit_scale.reshape(())

    def get_logit_scale(self) -> torch.Tensor:
        """exp(logit_scale) capped at max_logit_scale."""
        return self.logit_scale.exp().clamp(max=self.max_logit_scale)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [0, 1] -> z_T [B, d]: resized and normalised the model's way,
        then its own image encoder."""
        return self.image(self.input(images))

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Raw strings -> [B, d] with the model's own tokenizer."""
        return self.text.encode(texts)

    def image_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters of the image tower (what produces :meth:`encode_image`'s features)."""
        raise NotImplementedError

    def text_state(self) -> dict[str, torch.Tensor]:
        """The tensors that shape text features (what :meth:`text_hash` fingerprints)."""
        raise NotImplementedError

    def text_hash(self) -> str:
        """Fingerprint of the text tower's weights (the anchor cache checks it)."""
        return state_dict_hash(self.text_state())

    def train(self, mode: bool = True) -> _ForeignTeacher:
        # Dropout must never run: the teacher is a fixed function here.
        return super().train(False)


# ---------------------------------------------------------------------------------------------
# open_clip


def _open_clip() -> Any:
    try:
        import open_clip
    except ImportError as exn:
        raise ModelError(
            "teacher.source=open_clip needs open_clip: pip install 'vlcd-dist[teachers]' "
            "(or open_clip_torch)"
        ) from exn
    return open_clip


def resolve_open_clip_model(model: str) -> str:
    """The open_clip model name to build for ``teacher.open_clip.model``: a built-in config
    name, ``hf-hub:org/name``, ``local-dir:FOLDER``, a folder holding ``open_clip_config.json``
    (taken as ``local-dir:``) or a model-config JSON file (registered under its stem).

    An unknown name raises :class:`ModelError` listing the closest of ``open_clip.list_models()``.
    """
    open_clip = _open_clip()
    if model.startswith(("hf-hub:", "local-dir:")):
        return model
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "open_clip_config.json").is_file():
            raise ModelError(
                f"teacher.open_clip.model={model!r}: the folder has no open_clip_config.json "
                '({"model_cfg": ..., "preprocess_cfg": ...}, as hf-hub repositories hold)'
            )
        return f"local-dir:{path}"
    if path.suffix == ".json":
        if not path.is_file():
            raise ModelError(f"teacher.open_clip.model={model!r}: no such model-config file")
        open_clip.add_model_config(path)
        if path.stem not in open_clip.list_models():
            raise ModelError(
                f"teacher.open_clip.model={model!r}: not an open_clip model config (it needs "
                "embed_dim, vision_cfg and text_cfg)"
            )
        return path.stem
    if model not in open_clip.list_models():
        close = difflib.get_close_matches(model, open_clip.list_models(), n=5, cutoff=0.5)
        raise ModelError(
            f"teacher.open_clip.model={model!r} is not an open_clip model"
            + (f"; close ones: {close}" if close else "")
            + ". Give a name of open_clip.list_models(), hf-hub:org/name, a local folder with "
            "open_clip_config.json, or a model-config .json file"
        )
    return model


def _open_clip_token_lengths(tokenizer: Any) -> Callable[[list[str]], list[int]] | None:
    """Token counts of whole texts (start/end tokens included) for the tokenizer's kind."""
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is not None and callable(inner):  # HFTokenizer (e.g. BiomedCLIP's PubMedBERT)
        return lambda texts: [len(ids) for ids in inner(texts, truncation=False)["input_ids"]]
    if hasattr(tokenizer, "encode"):  # SimpleTokenizer: BPE ids plus start and end tokens
        return lambda texts: [len(tokenizer.encode(t)) + 2 for t in texts]
    return None


class OpenClipTeacher(_ForeignTeacher):
    """An open_clip model as the teacher (``teacher.source: open_clip``)."""

    source = "open_clip"

    def __init__(
        self,
        model: str,
        pretrained: str | None = None,
        *,
        name: str | None = None,
        max_logit_scale: float = 100.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        image_size: int | Sequence[int] | None = None,
    ) -> None:
        """model: see :func:`resolve_open_clip_model`. pretrained: an open_clip tag (e.g.
        "openai", downloaded), a local checkpoint (file or folder; safetensors or a torch file
        read with weights_only), "random" (warns), or None for a hub/local-dir model's own
        weights (a plain config name needs one; a hub/local-dir model refuses any other).

        mean, std: the input statistics, overriding what open_clip states for the model (its
        preprocess_cfg, or OpenAI's for a plain config name with a local checkpoint).
        image_size: (H, W) or one int to build the model for (open_clip's
        ``force_image_size``; the position embeddings of a checkpoint are resized to it) and to
        resize images to."""
        open_clip = _open_clip()
        resolved = resolve_open_clip_model(model)
        super().__init__(name or model, resolved, pretrained, max_logit_scale)
        schema = (
            resolved.split(":", 1)[0] if resolved.startswith(("hf-hub:", "local-dir:")) else None
        )
        if schema is not None and pretrained not in (None, "random"):
            raise ModelError(
                f"teacher.open_clip.pretrained={pretrained!r} would be ignored: "
                f"teacher.open_clip.model={model!r} is a {schema}: model, which brings its own "
                "weights. Drop pretrained (or set it to 'random'), or give an open_clip config "
                f"name as the model to load {pretrained!r} into it"
            )
        # Checked before open_clip sees them (ImageInput says what is wrong with a value).
        given = ImageInput(mean or (0, 0, 0), std or (1, 1, 1), what="teacher.open_clip")
        force: dict[str, Any] = {}
        if mean is not None:
            force["mean"] = given.mean_values
        if std is not None:
            force["std"] = given.std_values
        size = None if image_size is None else _pair(image_size)
        if size is not None and min(size) <= 0:
            raise ModelError(f"teacher.open_clip.image_size={list(size)}: give [height, width] > 0")
        if schema is None and pretrained is None:
            raise ModelError(
                f"teacher.open_clip.pretrained is not set for {model!r}: give a tag of "
                f"{open_clip.list_pretrained_tags_by_model(resolved)}, a local checkpoint, or "
                "'random'"
            )
        checkpoint: str | None = None
        if pretrained == "random":
            logger.warning("teacher %s: randomly initialised (pretrained='random')", resolved)
        elif schema == "local-dir":
            checkpoint = str(resolve_weights_file(resolved.split(":", 1)[1]))
        elif schema == "hf-hub":
            from open_clip.pretrained import download_pretrained_from_hf

            try:
                checkpoint = download_pretrained_from_hf(resolved.split(":", 1)[1])
            except Exception as exn:  # noqa: BLE001 - hub failures come as many types
                raise ModelError(
                    f"teacher.open_clip.model={model!r}: could not fetch its weights from the "
                    f"hub ({type(exn).__name__}: {exn}); without network, download the repo and "
                    "give its folder"
                ) from exn
        elif pretrained is not None and Path(pretrained).expanduser().exists():
            checkpoint = str(resolve_weights_file(pretrained))
        elif pretrained is not None:
            tags = open_clip.list_pretrained_tags_by_model(resolved)
            if pretrained not in tags:
                raise ModelError(
                    f"teacher.open_clip.pretrained={pretrained!r}: neither a file nor a tag of "
                    f"{resolved} (tags: {tags})"
                )
        try:
            built = open_clip.create_model(
                resolved,
                pretrained=pretrained if checkpoint is None and pretrained != "random" else None,
                load_weights=schema is None and checkpoint is None and pretrained != "random",
                pretrained_text=False,
                force_image_size=size,
                force_preprocess_cfg=force or None,
            )
        except RuntimeError as exn:
            raise ModelError(f"teacher {model!r}: open_clip could not build it ({exn})") from exn
        if checkpoint is not None:
            self._load(open_clip, built, checkpoint)
        self.model = built
        preprocess = open_clip.get_model_preprocess_cfg(built)
        self.input = ImageInput(
            preprocess["mean"],
            preprocess["std"],
            _pair(preprocess["size"]),
            what=f"teacher {model}",
        )
        tokenizer = open_clip.get_tokenizer(resolved)
        context = int(tokenizer.context_length)
        with torch.no_grad():
            width = int(built.encode_text(tokenizer([""])).shape[-1])
        self.text = ForeignText(
            self,
            lambda texts: {"text": tokenizer(texts)},
            lambda text: built.encode_text(text),
            _open_clip_token_lengths(tokenizer),
            model_name=resolved,
            max_length=context,
            embed_dim=width,
            pooling="open_clip",
        )
        self.requires_grad_(False)
        self.train(False)

    @staticmethod
    def _load(open_clip: Any, model: nn.Module, checkpoint: str) -> None:
        try:
            open_clip.load_checkpoint(model, checkpoint, strict=True, weights_only=True)
        except (RuntimeError, KeyError, ValueError) as exn:
            from open_clip.factory import load_state_dict

            state = load_state_dict(checkpoint, weights_only=True)
            where = first_mismatch(state, model.state_dict()) or str(exn).splitlines()[0]
            raise ModelError(
                f"teacher checkpoint {checkpoint} does not match the open_clip model config: "
                f"{where}. Check that teacher.open_clip.model names the architecture the "
                "checkpoint was saved from"
            ) from exn
        logger.info("teacher: loaded open_clip weights from %s", checkpoint)

    @property
    def image(self) -> nn.Module:
        """The image tower on normalised input at its own size (``model.visual``)."""
        return self.model.visual

    def image_parameters(self) -> Iterator[nn.Parameter]:
        """``model.visual``'s parameters (its projection included)."""
        return self.model.visual.parameters()

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [0, 1] -> ``model.encode_image`` of the model's own view."""
        return self.model.encode_image(self.input(images))

    def text_state(self) -> dict[str, torch.Tensor]:
        return {
            k: v
            for k, v in self.model.state_dict().items()
            if not k.startswith("visual.") and k not in ("logit_scale", "logit_bias")
        }


def _pair(size: object) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = (int(v) for v in size)  # type: ignore[union-attr]
    return h, w


# ---------------------------------------------------------------------------------------------
# Hugging Face CLIPModel


class _HFImage(nn.Module):
    """``get_image_features`` of a CLIPModel as a module (so forwards can be hooked, timed)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_clip", model)  # not a child: the weights stay the model's

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _features(self._clip.get_image_features(pixel_values=pixel_values))


class HFClipTeacher(_ForeignTeacher):
    """A Hugging Face ``transformers.CLIPModel`` as the teacher (``teacher.source: hf_clip``),
    e.g. PLIP (``vinid/plip``); its tokenizer and image processor come from the same folder."""

    source = "hf_clip"

    def __init__(
        self, model: str, *, name: str | None = None, max_logit_scale: float = 100.0
    ) -> None:
        """model: a local folder or a hub name (config.json, weights, tokenizer files and
        preprocessor_config.json, as ``save_pretrained`` writes them)."""
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        super().__init__(name or model, model, model, max_logit_scale)
        try:
            built, info = CLIPModel.from_pretrained(model, output_loading_info=True)
            tokenizer = AutoTokenizer.from_pretrained(model)
            processor = CLIPImageProcessor.from_pretrained(model)
        except OSError as exn:
            raise ModelError(
                f"teacher.hf_clip.model={model!r}: not a CLIPModel folder or reachable hub name "
                f"({exn}); give a folder written by CLIPModel.save_pretrained with its tokenizer "
                "and preprocessor_config.json"
            ) from exn
        except RuntimeError as exn:  # weights of another shape
            raise ModelError(
                f"teacher.hf_clip.model={model!r}: its weights do not match its config: "
                f"{str(exn).splitlines()[0]}"
            ) from exn
        problems = [
            f"{what} {keys[0]!r}"
            for what, keys in (
                ("missing", list(info.get("missing_keys", []))),
                (
                    "of another shape:",
                    [m[0] if isinstance(m, tuple) else m for m in info.get("mismatched_keys", [])],
                ),
                ("unexpected", list(info.get("unexpected_keys", []))),
            )
            if keys
        ]
        if problems:
            raise ModelError(
                f"teacher.hf_clip.model={model!r}: the weights do not match its config.json; "
                f"first mismatched key: {problems[0]}"
            )
        self.model = built
        crop = processor.crop_size or {}
        height = crop.get("height") if hasattr(crop, "get") else getattr(crop, "height", None)
        width = crop.get("width") if hasattr(crop, "get") else getattr(crop, "width", None)
        size = int(built.config.vision_config.image_size)
        self.input = ImageInput(
            processor.image_mean,
            processor.image_std,
            (int(height or size), int(width or size)),
            what=f"teacher {model}",
        )
        object.__setattr__(self, "_image", _HFImage(built))
        limit = int(built.config.text_config.max_position_embeddings)
        context = min(limit, int(tokenizer.model_max_length or limit))

        def tokenize(texts: list[str]) -> dict[str, torch.Tensor]:
            batch = tokenizer(
                texts, padding="longest", truncation=True, max_length=context, return_tensors="pt"
            )
            return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

        self.text = ForeignText(
            self,
            tokenize,
            lambda **batch: _features(built.get_text_features(**batch)),
            lambda texts: [len(i) for i in tokenizer(texts, truncation=False)["input_ids"]],
            model_name=model,
            max_length=context,
            embed_dim=int(built.config.projection_dim),
            pooling="clip_eos",
        )
        self.requires_grad_(False)
        self.train(False)

    @property
    def image(self) -> nn.Module:
        """The image tower on normalised input at its own size (``get_image_features``)."""
        return self._image

    def image_parameters(self) -> Iterator[nn.Parameter]:
        """The vision model's and the visual projection's parameters (``self.image`` holds the
        CLIPModel outside its children, so its own ``parameters()`` is empty)."""
        yield from self.model.vision_model.parameters()
        yield from self.model.visual_projection.parameters()

    def text_state(self) -> dict[str, torch.Tensor]:
        return {
            k: v
            for k, v in self.model.state_dict().items()
            if k.startswith(("text_model.", "text_projection."))
        }
