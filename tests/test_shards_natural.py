"""Natural-image shards and the resumable, atomic shard writer."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest
from helpers import run_cli
from PIL import Image

from vlcd_dist.data.stream import iter_tar
from vlcd_dist.data.writer import ShardJob, write_shards


def test_skimage_source_cuts_real_photographs(tmp_path):
    out = tmp_path / "sk"
    assert (
        run_cli(
            f"shards natural --count 30 --shard-size 8 --image-size 64 --out {out} --workers 2 --quiet"
        )
        == 0
    )
    sizes = json.loads((out / "sizes.json").read_text())
    assert sizes == {f"natural-{i:06d}.tar": n for i, n in enumerate([8, 8, 8, 6])}
    images = [
        np.asarray(Image.open(io.BytesIO(r["jpg"])))
        for t in sorted(out.glob("*.tar"))
        for r in iter_tar(str(t))
    ]
    assert len(images) == 30 and all(im.shape == (64, 64, 3) for im in images)
    # Random crops of photographs differ from each other, and are not flat.
    assert len({im.tobytes() for im in images}) == 30
    assert np.mean([im.std() for im in images]) > 10


def test_folder_source_keeps_class_folder_and_converts_png(tmp_path):
    src = tmp_path / "imagenet" / "train"
    rng = np.random.default_rng(0)
    for cls in ("n01440764", "n01443537"):
        (src / cls).mkdir(parents=True)
        for i in range(3):
            arr = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
            Image.fromarray(arr).save(src / cls / f"img{i}.{'png' if i == 2 else 'JPEG'}")
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(src / "loose.jpg")
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert (
        run_cli(
            f"shards natural --source {src} --out {out} --shard-size 4 --image-size 0 --workers 1 --quiet"
        )
        == 0
    )
    raws = [r for t in sorted(out.glob("*.tar")) for r in iter_tar(str(t))]
    assert len(raws) == 7
    by_key = {r["__key__"]: r for r in raws}
    assert by_key["n01440764_img0"]["cls"] == b"n01440764"
    assert "cls" not in by_key["loose"]
    # JPEGs are copied byte for byte when no resizing is asked for; PNGs become JPEG.
    assert by_key["n01440764_img0"]["jpg"] == (src / "n01440764" / "img0.JPEG").read_bytes()
    assert Image.open(io.BytesIO(by_key["n01443537_img2"]["jpg"])).format == "JPEG"


def test_folder_source_shrinks_to_image_size(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(src / "big.jpg")
    out = tmp_path / "out"
    assert (
        run_cli(f"shards natural --source {src} --out {out} --image-size 100 --workers 1 --quiet")
        == 0
    )
    raw = next(iter_tar(str(out / "natural-000000.tar")))
    assert Image.open(io.BytesIO(raw["jpg"])).size == (133, 100)


def _make(i: int) -> dict:
    return {"__key__": f"k{i:04d}", "txt": f"sample {i}"}


def test_interrupted_write_resumes_without_redoing_complete_shards(tmp_path):
    jobs = lambda: [ShardJob(f"t-{s:06d}.tar", list(range(s * 5, s * 5 + 5))) for s in range(4)]  # noqa: E731
    fp = {"kind": "test"}
    info = write_shards(
        tmp_path, jobs(), _make, total=20, workers=2, fingerprint=fp, info={}, progress=False
    )
    assert info["samples"] == 20 and info["reused_shards"] == 0
    first = {p.name: p.read_bytes() for p in tmp_path.glob("*.tar")}
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.tar")}

    # Simulate a crash: one shard never finished (only its partial file exists).
    (tmp_path / "t-000002.tar").unlink()
    (tmp_path / ".t-000002.tar.partial").write_bytes(b"half a tar")
    info = write_shards(
        tmp_path, jobs(), _make, total=20, workers=1, fingerprint=fp, info={}, progress=False
    )
    assert info["reused_shards"] == 3 and info["samples"] == 20
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.tar")} == first
    for name in ("t-000000.tar", "t-000001.tar", "t-000003.tar"):
        assert (tmp_path / name).stat().st_mtime_ns == mtimes[name]
    assert not list(tmp_path.glob(".*.partial"))


def test_other_settings_in_the_same_folder_are_refused(tmp_path, capsys):
    args = [
        "shards",
        "natural",
        "--source",
        "synthetic",
        "--count",
        "4",
        "--image-size",
        "16",
        "--out",
        tmp_path,
        "--workers",
        "1",
        "--quiet",
    ]
    assert run_cli(*args) == 0
    assert run_cli(*args, "--seed", "5") == 2
    err = capsys.readouterr().err
    assert "differs in: seed" in err and "--overwrite" in err
    assert run_cli(*args, "--seed", "5", "--overwrite") == 0
    assert json.loads((tmp_path / "info.json").read_text())["seed"] == 5


def test_writer_memory_stays_bounded_with_a_lazy_job_stream(tmp_path):
    pulled = []

    def jobs():
        for s in range(40):
            pulled.append(s)
            yield ShardJob(f"m-{s:06d}.tar", [s])

    info = write_shards(
        tmp_path, jobs(), _make, total=40, workers=2, fingerprint={}, info={}, progress=False
    )
    assert info["shards"] == 40 and pulled == list(range(40))


def test_every_written_shard_is_a_complete_tar(natural_shards):
    for path in natural_shards.glob("*.tar"):
        with tarfile.open(path) as tar:
            assert len(tar.getmembers()) == 8
    assert not [p for p in os.listdir(natural_shards) if p.endswith(".partial")]


def test_help_explains_every_option(capsys):
    for kind in ("natural", "placenta"):
        with pytest.raises(SystemExit):
            run_cli(f"shards {kind} --help")
        out = capsys.readouterr().out
        for flag in ("--out", "--shard-size", "--seed", "--workers"):
            assert flag in out
    assert "--skip-bad" in out and "--test-fraction" in out and "--synthetic" in out


def test_a_photo_with_an_exif_rotation_is_written_and_read_upright(tmp_path) -> None:
    """A phone photo stored landscape with orientation 6 (turn 90 degrees to view): the shard
    bytes are upright with no tag left, resized or not, and decode_rgb (what the shard stream and
    vlcd predict use) reads the original upright too."""
    import io

    import numpy as np
    from PIL import Image

    from vlcd_dist.data.imaging import decode_rgb
    from vlcd_dist.data.natural import ORIENTATION_TAG, load_resized

    pixels = np.zeros((60, 100, 3), np.uint8)
    pixels[:, :50] = 255  # stored: the left half white; upright (turned clockwise): the top half
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[ORIENTATION_TAG] = 6
    path = tmp_path / "phone.jpg"
    img.save(path, exif=exif.tobytes(), quality=95)

    shown = decode_rgb(path, (32, 32))
    assert shown.size == (60, 100)  # (width, height): portrait
    top, bottom = np.asarray(shown)[:50].mean(), np.asarray(shown)[50:].mean()
    assert top > 200 and bottom < 50
    for max_side, size in ((0, (60, 100)), (40, (40, 67))):
        data, reencoded = load_resized(path, max_side)
        stored = Image.open(io.BytesIO(data))
        assert reencoded and stored.size == size
        assert stored.getexif().get(ORIENTATION_TAG) is None
        upright = np.asarray(stored.convert("L"), dtype=float)
        assert upright[: size[1] // 2 - 2].mean() > 200 > 50 > upright[size[1] // 2 + 2 :].mean()
