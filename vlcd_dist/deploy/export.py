"""A trained student as ONNX or TorchScript, with a sidecar JSON (input size, normalisation,
output, weight hashes), verified against eager PyTorch on sample images and timed beside it.
``vlcd export`` (:mod:`vlcd_dist.cli.export`, whose help says what is written) drives it;
nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlcd_dist.data.imaging import IMAGE_SUFFIXES
from vlcd_dist.errors import VlcdError
from vlcd_dist.io import write_json

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
DEFAULT_IMAGE_SIZE = (224, 224)
DEFAULT_OPSET = 17
SIDECAR_FORMAT = "vlcd-export/1"
INPUT_NAME = "images"
OUTPUT_NAME = "features"


@dataclass
class ExportSpec:
    """Which student to export and at what input size."""

    name: str
    """Registered student name or timm model name."""
    embed_dim: int
    """d, the output dimension of the student's projection."""
    image_size: tuple[int, int] | None
    """(H, W) of the exported input in pixels; None: the student's own size, else 224x224."""
    weights: Path | None
    """Safetensors of the whole student (an exported student or a plain state dict); None:
    random init."""
    config_file: Path | None = None
    """What --config named (a .json, a .safetensors or a folder), if anything."""
    stored: dict[str, Any] | None = None
    """The exported student's stored info (build, stage, step, ...) when ``weights`` has it."""


# ---------------------------------------------------------------------------------------------
# What to export
# ---------------------------------------------------------------------------------------------


def _image_size(value: object, where: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        value = [value, value]
    elif isinstance(value, (list, tuple)) and len(value) == 1:
        value = [value[0], value[0]]  # --image-size SIDE
    try:
        h, w = (int(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        h = w = -1
    if h < 8 or w < 8:
        raise VlcdError(f"{where}: image_size={value!r}; give [height, width] in pixels, >= 8")
    return h, w


def _follow_stored(
    stored: dict[str, Any],
    source: Path,
    student: str | None,
    embed_dim: int | None,
    image_size: tuple[int, int] | None,
) -> tuple[str, int, tuple[int, int] | None]:
    """(name, d, size) of an exported student: the stored values; an option that asks for
    something else is refused (the weights were trained for the stored ones)."""
    from vlcd_dist.models.exported import stored_image_size

    build = stored["build"]
    name, d, size = str(build["name"]), int(build["embed_dim"]), stored_image_size(stored)
    asked = {
        "--student": (student, name),
        "--embed-dim": (embed_dim, d),
        "--image-size": (image_size, size),
    }
    for option, (value, have) in asked.items():
        if value is not None and have is not None and value != have:
            shown = "x".join(map(str, have)) if isinstance(have, tuple) else have
            raise VlcdError(
                f"{option} {value!r} does not match {source}, which holds {name} with "
                f"embed_dim={d} trained at {_size_text(size)}; drop {option} to export it as "
                f"stored ({option.lstrip('-')} {shown})"
            )
    return name, d, size


def _size_text(size: tuple[int, int] | None) -> str:
    return "no stored size" if size is None else f"{size[0]}x{size[1]}"


def resolve_spec(
    student: str | None,
    config: Path | None,
    weights: Path | None,
    embed_dim: int | None,
    image_size: Sequence[int] | None,
) -> ExportSpec:
    """What to export, from training's files or from --student.

    config: what training wrote, as it wrote it: ``{name}.json`` (its ``.safetensors`` beside
    it holds the weights), the ``{name}.safetensors`` alone, or the export or stage folder
    (``student`` picks one when it holds several). weights: a ``.safetensors`` to load into
    ``--student``. An exported student's stored name, embed_dim and image size are used; an
    option asking for other values is refused. Only plain state dicts and random init need
    --embed-dim (else 512) and --image-size (else the student's own size, or 224x224).
    """
    from vlcd_dist.models.exported import read_student_info, resolve_student_file
    from vlcd_dist.models.weights import ModelError

    size = _image_size(list(image_size), "--image-size") if image_size else None
    stored: dict[str, Any] | None = None
    if config is not None:
        if weights is not None:
            raise VlcdError(
                f"--config {config} already names the weights; drop --weights (or drop --config "
                "and pass --student NAME --weights FILE)"
            )
        if not config.exists():
            raise VlcdError(
                f"--config {config}: no such file or folder; pass the {{student}}.json or "
                ".safetensors that training wrote into OUT/export/, or the stage's OUT folder"
            )
        try:
            described = read_student_info(config) if config.suffix == ".json" else None
            weights = resolve_student_file(config, student)
            stored = read_student_info(weights)
        except ModelError as exn:
            raise VlcdError(f"--config: {exn}") from exn
        if described is not None and described["build"] != stored["build"]:
            raise VlcdError(
                f"--config {config} describes {described['build']}, but {weights} beside it "
                f"holds {stored['build']}; they come from different runs: pass the "
                ".safetensors alone"
            )
    elif student is None:
        raise VlcdError(
            "give --config (the {student}.json or .safetensors training wrote, or its folder) "
            "or --student NAME"
        )
    elif weights is not None:
        if not weights.is_file():
            raise VlcdError(
                f"--weights {weights}: no such file; pass the {student}.safetensors that "
                f"training wrote (next to {student}.json), or leave out --weights to export a "
                "randomly initialised student"
            )
        from vlcd_dist.models.exported import try_student_info

        stored = try_student_info(weights)
    if stored is not None:
        assert weights is not None
        name, d, stored_size = _follow_stored(stored, weights, student, embed_dim, size)
        if stored_size is None and size is None:
            logger.warning(
                "%s stores no image size; exporting at %s (pass --image-size H W to choose)",
                weights,
                "the student's own size or 224x224",
            )
        return ExportSpec(name, d, size or stored_size, weights, config, stored)
    assert student is not None
    if weights is not None and embed_dim is None:
        raise VlcdError(
            f"--weights {weights} is a plain state dict without the stored build info that "
            "training writes; pass --embed-dim D (and --image-size H W), or pass training's "
            "file with --config"
        )
    if weights is not None and size is None:
        logger.warning(
            "--weights %s stores no image size; exporting at the student's own size or 224x224 "
            "(pass --image-size H W to choose)",
            weights,
        )
    return ExportSpec(student, embed_dim or 512, size, weights, config)


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_student(spec: ExportSpec) -> tuple[nn.Module, dict[str, Any]]:
    """The student in eval mode with its weights, and a record of where the weights came from.

    An exported student is rebuilt by :func:`~vlcd_dist.models.exported.load_exported_student`
    from its stored build info; otherwise ``spec`` says what to build.
    """
    from vlcd_dist.models import ModelError, create_student, list_students, state_dict_hash
    from vlcd_dist.models.exported import load_exported_student
    from vlcd_dist.models.weights import load_into, load_state_dict

    record: dict[str, Any] = {"file": None, "file_sha256": None, "random_init": True}
    try:
        if spec.stored is not None and spec.weights is not None:
            student, _ = load_exported_student(spec.weights, spec.image_size)
        else:
            student = create_student(
                spec.name, embed_dim=spec.embed_dim, image_size=spec.image_size
            )
    except ModelError as exn:
        raise VlcdError(
            f"--student {spec.name!r}: {exn}. Registered students: {list_students()}"
        ) from exn
    if spec.weights is None:
        logger.warning(
            "no weights given: exporting a randomly initialised %s; pass --config "
            "%s.safetensors (what training wrote) to export the trained student",
            spec.name,
            spec.name,
        )
    else:
        if spec.stored is None:
            try:
                load_into(student, load_state_dict(spec.weights), source=str(spec.weights))
            except ModelError as exn:
                raise VlcdError(
                    f"{exn}. --weights must be the whole student's state dict (backbone.* and "
                    f"proj.*) of {spec.name} with embed_dim={spec.embed_dim}"
                ) from exn
        record = {
            "file": str(spec.weights),
            "file_sha256": file_sha256(spec.weights),
            "random_init": False,
        }
    record["state_dict_sha256"] = state_dict_hash(student)
    return student.eval(), record


def check_onnx_input_size(name: str, student: nn.Module, size: tuple[int, int]) -> None:
    """Refuse an ONNX input size that a fixed-size student would have to resize internally.

    Such a student (EfficientFormer) resizes other sizes with antialiased bilinear
    interpolation, an op the ONNX exporter cannot express; say what to do instead.
    """
    native = getattr(student, "image_size", None)
    if native is not None and tuple(size) != tuple(native):
        h, w = native
        raise VlcdError(
            f"{name} takes {h}x{w} input and resizes {size[0]}x{size[1]} images inside the model "
            "with antialiasing, which ONNX cannot express; export with --image-size "
            f"{h} {w} (and resize images to {h}x{w} before the model), or use --format torchscript"
        )


def input_size(spec: ExportSpec, student: nn.Module) -> tuple[int, int]:
    """(H, W) of the exported input: asked for, else the student's fixed size, else 224x224."""
    return spec.image_size or getattr(student, "image_size", None) or DEFAULT_IMAGE_SIZE


# ---------------------------------------------------------------------------------------------
# Sample images
# ---------------------------------------------------------------------------------------------


Stats = tuple[Sequence[float], Sequence[float]]
"""(mean, std) per RGB channel of a model's input."""


def model_stats(model: nn.Module) -> Stats:
    """The (mean, std) a student normalises its [0, 1] input with (timm's pretrained_cfg of its
    backbone; ImageNet's for a model that states none)."""
    from vlcd_dist.data.imaging import IMAGENET_MEAN, IMAGENET_STD

    return tuple(getattr(model, "mean", IMAGENET_MEAN)), tuple(getattr(model, "std", IMAGENET_STD))


def _normalise(pixels: torch.Tensor, stats: Stats | None) -> torch.Tensor:
    from vlcd_dist.data.imaging import IMAGENET_MEAN, IMAGENET_STD
    from vlcd_dist.models.preprocess import ImageInput

    mean, std = stats or (IMAGENET_MEAN, IMAGENET_STD)
    return ImageInput(mean, std, what="export input")(pixels)


def random_images(
    n: int, size: tuple[int, int], seed: int = 0, stats: Stats | None = None
) -> torch.Tensor:
    """n deterministic random images [n, 3, H, W]: uniform pixels in [0, 1], then normalised
    with ``stats`` (mean, std; ImageNet's by default)."""
    pixels = torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(seed))
    return _normalise(pixels, stats)


def image_files(paths: Sequence[Path], limit: int) -> list[Path]:
    """Image files given directly or found (recursively) in given folders, sorted, <= limit."""
    found: list[Path] = []
    for p in paths:
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise VlcdError(f"--images {p}: no such file or folder")
    if not found:
        raise VlcdError(f"--images {[str(p) for p in paths]}: no {'/'.join(IMAGE_SUFFIXES)} files")
    return found[:limit]


def load_images(
    files: Sequence[Path], size: tuple[int, int], stats: Stats | None = None
) -> torch.Tensor:
    """Real images [n, 3, H, W], preprocessed exactly as the sidecar says (eval_transform to
    [0, 1], then normalised with ``stats``: the model's mean and std)."""
    from PIL import Image

    from vlcd_dist.data.transforms import eval_transform

    transform = eval_transform(size)
    batch = []
    for f in files:
        try:
            with Image.open(f) as img:
                batch.append(transform(img.convert("RGB")))
        except OSError as exn:
            raise VlcdError(f"--images: cannot read {f} as an image ({exn})") from exn
    return _normalise(torch.stack(batch), stats)


# ---------------------------------------------------------------------------------------------
# Exporters and runners: each runner maps images [B, 3, H, W] fp32 -> features [B, d] fp32.
# ---------------------------------------------------------------------------------------------

Runner = Callable[[torch.Tensor], torch.Tensor]


def _need(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exn:
        raise VlcdError(
            f"ONNX export needs the {module} package: pip install onnx onnxruntime "
            "(or the project's export extra)"
        ) from exn


def export_onnx(
    student: nn.Module,
    example: torch.Tensor,
    path: Path,
    opset: int,
    metadata: dict[str, str],
    output_names: Sequence[str] = (OUTPUT_NAME,),
) -> None:
    """Write ``student`` as ONNX with a dynamic batch axis on the input and on every output
    (``output_names``, in the order the module returns them), check it, store ``metadata`` in it.

    The legacy TorchScript-based exporter (dynamo=False) is used on purpose: in torch 2.14 the
    dynamo exporter needs the separate onnxscript package, while the legacy one exports these
    timm CNNs (and EfficientFormer's attention) with onnx alone and matches eager within 1e-7.
    """
    onnx = _need("onnx")
    with warnings.catch_warnings(), torch.no_grad():
        # The legacy exporter warns that it is legacy; that choice is deliberate (see above).
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            student,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(output_names),
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *output_names)},
            do_constant_folding=True,
        )
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    # Keep the preprocessing inside the file too, so it survives being copied without its sidecar.
    onnx.helper.set_model_props(model, metadata)
    onnx.save(model, str(path))


def onnx_runner(path: Path, threads: int) -> Runner:
    """Run the ONNX file with ONNX Runtime on CPU, ``threads`` intra-op threads."""
    ort = _need("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # One graph, no parallel branches worth a second pool; keeps the thread count honest.
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(images: torch.Tensor) -> torch.Tensor:
        out = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
        return torch.from_numpy(out)

    return run


def export_torchscript(student: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Write ``student`` as traced TorchScript.

    Tracing (not scripting) because timm models use Python features TorchScript's compiler
    rejects; the traced graph follows the branches taken for this input shape, which for these
    CNNs depend on nothing but the (fixed) image size. torch 2.14 marks TorchScript deprecated
    (FutureWarning); it still works and is what C++/libtorch deployments load, so the warning
    is silenced here rather than shown on every export.
    """
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", category=FutureWarning)
        # The student's resize-if-other-size branch is fixed by the (fixed) input size.
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        # check_trace=False: our own verification (fresh inputs, two batch sizes, vs eager)
        # is stricter than the tracer's re-run on the example, and skips a second trace.
        traced = torch.jit.trace(student, example, check_trace=False)
        torch.jit.save(traced, str(path))


def torchscript_runner(path: Path) -> Runner:
    """Run the TorchScript file as saved (reloaded, so the file itself is what is verified)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(images)

    return run


def eager_runner(student: nn.Module) -> Runner:
    """The reference: the PyTorch module, inference mode, fp32."""

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return student(images)

    return run


# ---------------------------------------------------------------------------------------------
# Verification and timing
# ---------------------------------------------------------------------------------------------


def max_abs_diff(
    eager: Runner, exported: Runner, batches: dict[str, torch.Tensor]
) -> tuple[dict[str, float], dict[str, float]]:
    """Largest |exported - eager| and largest |eager| over each named batch: ({name: diff},
    {name: scale})."""
    diffs, scales = {}, {}
    for name, images in batches.items():
        ref, out = eager(images), exported(images)
        if out.shape != ref.shape:
            raise VlcdError(
                f"exported model returned shape {tuple(out.shape)} on {name}, eager PyTorch "
                f"{tuple(ref.shape)}; the batch axis may not be dynamic"
            )
        diffs[name] = float((out.float() - ref.float()).abs().max())
        scales[name] = float(ref.float().abs().max())
    return diffs, scales


def time_pair(
    eager: Runner, exported: Runner, images: torch.Tensor, repeats: int, warmup: int
) -> dict[str, Any]:
    """Batch latency of eager vs exported, alternating which runs first each repeat.

    Returns milliseconds (medians), the speed-up (eager / exported) and the raw seconds.
    """
    runners = {"eager": eager, "exported": exported}
    for run in runners.values():
        for _ in range(warmup):
            run(images)
    raw: dict[str, list[float]] = {"eager": [], "exported": []}
    for r in range(repeats):
        # Alternating the order keeps a slow spell on a shared machine from favouring one side.
        order = ("eager", "exported") if r % 2 == 0 else ("exported", "eager")
        for key in order:
            start = time.perf_counter()
            runners[key](images)
            raw[key].append(time.perf_counter() - start)
    eager_ms = statistics.median(raw["eager"]) * 1e3
    exported_ms = statistics.median(raw["exported"]) * 1e3
    return {
        "batch_size": int(images.shape[0]),
        "repeats": repeats,
        "warmup": warmup,
        "eager_ms": eager_ms,
        "exported_ms": exported_ms,
        "speedup": eager_ms / exported_ms,
        "raw_s": raw,
    }


# ---------------------------------------------------------------------------------------------
# The whole export
# ---------------------------------------------------------------------------------------------


def preprocessing(
    size: tuple[int, int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> dict[str, Any]:
    """How an image must be turned into the model's input (what eval_transform does, then the
    model's own normalisation: ``mean``, ``std``, ImageNet's when not given)."""
    from vlcd_dist.data.imaging import IMAGENET_MEAN, IMAGENET_STD

    return {
        "height": size[0],
        "width": size[1],
        "layout": "NCHW",
        "dtype": "float32",
        "colour_order": "RGB",
        "value_range": [0.0, 1.0],
        "mean": [float(v) for v in (IMAGENET_MEAN if mean is None else mean)],
        "std": [float(v) for v in (IMAGENET_STD if std is None else std)],
        "resize": "cover-then-centre-crop",
        "interpolation": "bilinear",
        "steps": [
            "decode as RGB",
            "resize (bilinear) so the image covers HxW keeping its aspect ratio, centre-crop HxW",
            "scale uint8 pixels to [0, 1] (x / 255)",
            "normalise each channel: (x - mean) / std",
            "lay out as [batch, 3, H, W] float32",
        ],
    }


def _versions(fmt: str) -> dict[str, str]:
    import timm

    versions = {"torch": torch.__version__, "timm": timm.__version__}
    if fmt == "onnx":
        versions["onnx"] = _need("onnx").__version__
        versions["onnxruntime"] = _need("onnxruntime").__version__
    return versions


def write_model(
    student: nn.Module,
    fmt: str,
    name: str,
    size: tuple[int, int],
    path: Path,
    *,
    opset: int,
    prep: dict[str, Any],
    threads: int,
) -> Runner:
    """Export ``student`` to ``path`` in ``fmt`` and return a runner over the written file."""
    if fmt == "onnx":
        check_onnx_input_size(name, student, size)
    # Batch 2, not 1: a batch of one could let the tracer bake in size-1 shortcuts.
    example = random_images(2, size, seed=1, stats=(prep["mean"], prep["std"]))
    try:
        if fmt == "onnx":
            meta = {"vlcd_preprocessing": json.dumps(prep), "vlcd_student": name}
            export_onnx(student, example, path, opset, meta)
            return onnx_runner(path, threads)
        export_torchscript(student, example, path)
        return torchscript_runner(path)
    except VlcdError:
        raise
    except Exception as exn:  # noqa: BLE001 - exporters fail with many exception types
        raise VlcdError(
            f"{fmt} export of {name} failed ({type(exn).__name__}: {exn}); try the other "
            "--format" + (" or another --opset" if fmt == "onnx" else "")
        ) from exn


def verify(
    eager: Runner,
    exported: Runner,
    size: tuple[int, int],
    *,
    real: Sequence[Path],
    tolerance: float,
    what: str,
    stats: Stats | None = None,
) -> dict[str, Any]:
    """Compare on 4 random images (batch 4), 1 random image (batch 1: the batch axis really is
    dynamic) and the ``real`` image files; raise when a difference exceeds ``tolerance``.

    The tolerance is relative to the batch's largest |eager output| once that exceeds 1, and
    absolute below: a trained student's unnormalised embedding can reach 10^4, where float32
    rounding alone differs by 10^-3 (about 10^-7 of the value)."""
    batches = {
        "random_batch4": random_images(4, size, stats=stats),
        "random_batch1": random_images(1, size, stats=stats),
    }
    if real:
        batches["real_images"] = load_images(real, size, stats)
    diffs, scales = max_abs_diff(eager, exported, batches)
    relative = {k: diffs[k] / max(1.0, scales[k]) for k in diffs}
    worst = max(relative, key=lambda k: relative[k])
    if relative[worst] > tolerance:
        of = f" ({relative[worst]:.3g} of its largest output, {scales[worst]:.3g})"
        raise VlcdError(
            f"{what} differs from eager PyTorch by {diffs[worst]:.3g}"
            f"{of if scales[worst] > 1 else ''} on {worst} (tolerance {tolerance:g})"
        )
    return {
        "max_abs_diff": max(diffs.values()),
        "max_abs_diff_per_batch": diffs,
        "max_scaled_diff": relative[worst],
        "max_abs_output_per_batch": scales,
        "tolerance": tolerance,
        "images": {k: int(v.shape[0]) for k, v in batches.items()},
        "real_image_files": [str(f) for f in real],
        "passed": True,
    }


def export_student(
    spec: ExportSpec,
    fmt: str,
    out: Path,
    *,
    opset: int = DEFAULT_OPSET,
    images: Sequence[Path] = (),
    max_images: int = 16,
    tolerance: float = 1e-4,
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Export, verify and time one student; write the model file and its sidecar JSON.

    out: folder for ``{name}{suffix}`` and ``{name}.{fmt}.json``. images: real image files or
    folders to verify on, besides random ones. tolerance: max |exported - eager| allowed,
    relative to the largest |eager output| when that exceeds 1 (see :func:`verify`).
    repeats/warmup: batch-1 timing calls. threads: CPU threads of torch and ONNX Runtime.
    Returns the sidecar's content.
    """
    from vlcd_dist.evaluation.efficiency import available_cores, cpu_model

    if fmt not in FORMATS:
        raise VlcdError(f"--format {fmt!r}: use one of {FORMATS}")
    say = progress or (lambda _msg: None)
    threads = threads or available_cores()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        say(f"building {spec.name} (embed_dim {spec.embed_dim})")
        student, weights = build_student(spec)
        size = input_size(spec, student)
        prep = preprocessing(size, *model_stats(student))
        real = image_files(images, max_images) if images else []
        out.mkdir(parents=True, exist_ok=True)
        model_path = out / f"{spec.name}{SUFFIXES[fmt]}"
        say(f"exporting to {model_path}")
        exported = write_model(
            student, fmt, spec.name, size, model_path, opset=opset, prep=prep, threads=threads
        )
        eager = eager_runner(student)
        say(f"verifying against eager PyTorch (+{len(real)} real images)")
        try:
            check = verify(
                eager,
                exported,
                size,
                real=real,
                tolerance=tolerance,
                what=f"{fmt} export of {spec.name}",
                stats=model_stats(student),
            )
        except VlcdError as exn:
            raise VlcdError(
                f"{exn}; {model_path} is left for inspection and no sidecar was written. Try the "
                "other --format" + (" or another --opset" if fmt == "onnx" else "")
            ) from exn
        say(f"timing eager vs {fmt} at batch 1 ({repeats} repeats)")
        timing = time_pair(
            eager,
            exported,
            random_images(1, size, seed=2, stats=model_stats(student)),
            repeats,
            warmup,
        )
        timing.update(
            threads=threads,
            cpu_model=cpu_model(),
            exported_runtime="onnxruntime CPUExecutionProvider"
            if fmt == "onnx"
            else "torch.jit (CPU)",
        )
        sidecar = {
            "format": SIDECAR_FORMAT,
            "export_format": fmt,
            "model_file": model_path.name,
            "model_file_sha256": file_sha256(model_path),
            "student": {
                "name": spec.name,
                "embed_dim": spec.embed_dim,
                "arch": getattr(getattr(student, "backbone", None), "pretrained_cfg", {}).get(
                    "architecture", spec.name
                ),
                "config_file": str(spec.config_file) if spec.config_file else None,
                "stored": spec.stored,
            },
            "weights": weights,
            "preprocessing": prep,
            "input": {"name": INPUT_NAME, "shape": ["batch", 3, size[0], size[1]]},
            "output": {
                "name": OUTPUT_NAME,
                "shape": ["batch", spec.embed_dim],
                "dim": spec.embed_dim,
                "normalised": False,
                "note": "L2-normalise the features before cosine similarity or linear probes",
            },
            "opset": opset if fmt == "onnx" else None,
            "exporter": "torch.onnx.export(dynamo=False)" if fmt == "onnx" else "torch.jit.trace",
            "dynamic_axes": ["batch"] if fmt == "onnx" else None,
            "verification": check,
            "timing": timing,
            "versions": _versions(fmt),
        }
        write_json(out / f"{spec.name}.{fmt}.json", sidecar, indent=2)
        return sidecar
    finally:
        torch.set_num_threads(previous_threads)
