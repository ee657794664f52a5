"""Placenta shards from a user's manifest, and the built-in synthetic set."""

from __future__ import annotations

import csv
import json
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli
from PIL import Image

from vlcd_dist.data.placenta import assign_split
from vlcd_dist.data.stream import ShardLoader, StreamConfig, iter_tar
from vlcd_dist.data.synthetic_placenta import TASKS, make_sample

# Deliberately not the placenta tasks: nothing in the code may assume them.
MADE_UP_TASKS = ["villitis_grade", "cord_knot", "zeta"]


def _write_images(root: Path, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        sub = root / f"case{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        name = f"case{i % 4}/photo.{i}.{'png' if i % 5 == 0 else 'jpg'}"  # dots in names too
        Image.fromarray(rng.integers(0, 256, (40 + i, 60, 3), dtype=np.uint8)).save(root / name)
        names.append(name)
    return names


def _manifest_rows(names: list[str]) -> list[dict]:
    rows = []
    for i, name in enumerate(names):
        row = {"image": name, "report": f"Report number {i}. Finding {i % 3}, ünïcode ok."}
        row["study_id"] = f"study{i // 2}"  # two photographs per study
        for j, task in enumerate(MADE_UP_TASKS):
            row[task] = str((i + j) % 2 if j < 2 else int(i % 5 == 0))
        rows.append(row)
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _stream_all(out: Path, split: str) -> dict[str, dict]:
    cfg = StreamConfig(
        shards=str(out),
        split=split,
        batch_size=4,
        image_size=(32, 32),
        train=False,
        shuffle=False,
        num_workers=0,
    )
    loader = ShardLoader(cfg, rank=0, world=1)
    seen = {}
    for batch in loader:
        assert batch["tasks"] == loader.tasks
        for k, text, lab in zip(batch["key"], batch["text"], batch["labels"], strict=True):
            assert k not in seen
            seen[k] = {"text": text, "labels": dict(zip(batch["tasks"], lab.tolist(), strict=True))}
    return seen


def test_manifest_roundtrip_with_made_up_tasks(tmp_path):
    images = tmp_path / "images"
    names = _write_images(images, 30)
    rows = _manifest_rows(names)
    manifest = tmp_path / "manifest.csv"
    _write_csv(manifest, rows)
    out = tmp_path / "out"
    assert (
        run_cli(
            f"shards placenta --manifest {manifest} --images {images} --out {out} --shard-size 4 --workers 1 --quiet --test-fraction 0.3"
        )
        == 0
    )

    info = json.loads((out / "info.json").read_text())
    assert info["tasks"] == MADE_UP_TASKS
    sizes = json.loads((out / "sizes.json").read_text())
    assert sum(sizes.values()) == 30
    assert info["splits"]["train"] + info["splits"]["test"] == 30

    streamed = {**_stream_all(out, "train"), **_stream_all(out, "test")}
    assert len(streamed) == 30
    # Every key, report and label came back intact, and each study sits on one side only.
    by_source = {}
    study_side = defaultdict(set)
    for url in sorted(out.glob("*.tar")):
        for raw in iter_tar(str(url)):
            meta = json.loads(raw["json"])
            by_source[meta["source"]] = (raw["__key__"], meta)
            study_side[meta["study_id"]].add(meta["split"])
            assert url.name.startswith(f"placenta-{meta['split']}-")
    assert all(len(sides) == 1 for sides in study_side.values())
    for row in rows:
        key, meta = by_source[row["image"]]
        assert streamed[key]["text"] == row["report"]
        want = {t: float(row[t]) for t in MADE_UP_TASKS}
        assert streamed[key]["labels"] == want
        assert meta["labels"] == {t: int(row[t]) for t in MADE_UP_TASKS}
        assert meta["study_id"] == row["study_id"]


def test_manifest_jsonl_with_split_and_task_selection(tmp_path):
    images = tmp_path / "images"
    names = _write_images(images, 8)
    rows = _manifest_rows(names)
    for i, row in enumerate(rows):
        row["split"] = "test" if i >= 6 else "train"
        row["zeta"] = int(row["zeta"])  # JSON numbers work as labels too
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out"
    assert (
        run_cli(
            f"shards placenta --manifest {manifest} --images {images} --out {out} --tasks zeta,cord_knot --workers 1 --quiet"
        )
        == 0
    )
    info = json.loads((out / "info.json").read_text())
    assert info["tasks"] == ["zeta", "cord_knot"]
    assert info["splits"] == {"train": 6, "test": 2}
    test = _stream_all(out, "test")
    assert len(test) == 2
    assert all(set(v["labels"]) == {"zeta", "cord_knot"} for v in test.values())


def test_every_bad_row_kind_is_listed_and_nothing_written(tmp_path, capsys):
    images = tmp_path / "images"
    names = _write_images(images, 8)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    rows = _manifest_rows(names)
    rows[1]["image"] = "case9/missing.jpg"  # row 3: missing file
    rows[2]["image"] = "broken.jpg"  # row 4: unreadable
    rows[3]["report"] = "   "  # row 5: empty report
    rows[4]["cord_knot"] = "2"  # row 6: label not 0/1
    rows[5]["zeta"] = "yes"  # row 7: label not 0/1
    rows[6]["image"] = rows[0]["image"]  # row 8: duplicate of row 2
    manifest = tmp_path / "bad.csv"
    _write_csv(manifest, rows)
    out = tmp_path / "out"
    code = run_cli(
        f"shards placenta --manifest {manifest} --images {images} --out {out} --workers 1 --quiet"
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "6 problem(s)" in err
    expected = [
        ("row 3, field 'image'", "file not found"),
        ("row 4, field 'image'", "unreadable image"),
        ("row 5, field 'report'", "empty report"),
        ("row 6, field 'cord_knot'", "'2'"),
        ("row 7, field 'zeta'", "'yes'"),
        ("row 8, field 'image'", "first used in row 2"),
    ]
    for where, what in expected:
        line = next((ln for ln in err.splitlines() if where in ln), None)
        assert line is not None, f"no problem reported at {where}:\n{err}"
        assert what in line
    assert not out.exists() or not list(out.glob("*.tar"))

    # --skip-bad writes the two good rows (rows 2 and 9) and names the skipped ones.
    assert (
        run_cli(
            f"shards placenta --manifest {manifest} --images {images} --out {out} --workers 1 --quiet --skip-bad"
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "skipping 6 bad row(s)" in err and "row 8, field 'image'" in err
    assert sum(json.loads((out / "sizes.json").read_text()).values()) == 2


def test_images_outside_the_root_are_refused_with_their_row_numbers(tmp_path, capsys, monkeypatch):
    images = tmp_path / "images"
    names = _write_images(images, 4)
    # Readable photographs outside the root: a refusal cannot be an unreadable file.
    secrets = _write_images(tmp_path / "elsewhere", 4)
    elsewhere = (tmp_path / "elsewhere").resolve()
    (images / "case0" / "link.jpg").symlink_to(elsewhere / secrets[2])
    (images / "out").symlink_to(elsewhere / "case3", target_is_directory=True)
    # Inside, though spelt with '..' or reached through a symlink: accepted.
    inside = _write_images(tmp_path / "more", 2)
    (images / "extra").mkdir()
    (images / "extra" / "a.jpg").write_bytes((tmp_path / "more" / inside[1]).read_bytes())
    (images / "extra" / "b").symlink_to(images / "case1", target_is_directory=True)
    to_root = "../" * len(images.resolve().parts[1:])  # from --images up to /
    escapes = {
        3: ("../elsewhere/" + secrets[1], elsewhere / secrets[1]),
        4: (to_root + "etc/passwd", Path("/etc/passwd")),
        5: (str(elsewhere / secrets[0]), elsewhere / secrets[0]),  # absolute
        6: ("case0/link.jpg", elsewhere / secrets[2]),  # a symlinked file
        7: ("out/" + Path(secrets[3]).name, elsewhere / secrets[3]),  # a symlinked folder
    }
    rows = _manifest_rows([names[0]] + [e[0] for e in escapes.values()] + names[1:])
    # (extra/b/photo.1.jpg is names[1] again: a copy, which the split keeps on its side.)
    rows += _manifest_rows(["case2/../extra/a.jpg", "extra/b/" + Path(names[1]).name])
    manifest = tmp_path / "escapes.csv"
    _write_csv(manifest, rows)
    out = tmp_path / "out"
    from vlcd_dist.data import placenta

    opened = []
    real_inspect = placenta.inspect_image
    monkeypatch.setattr(placenta, "inspect_image", lambda p: opened.append(p) or real_inspect(p))
    cmd = f"shards placenta --manifest {manifest} --images {images} --out {out} --workers 1 --quiet"
    assert run_cli(cmd) == 2
    err = capsys.readouterr().err
    assert f"{len(escapes)} problem(s) in {manifest}; nothing was written" in err
    problems = [ln.strip() for ln in err.splitlines() if ln.startswith("  escapes.csv row")]
    assert problems == [
        f"escapes.csv row {row}, field 'image': {image!r} resolves to {target}, outside "
        f"--images {images}; a manifest may only name photographs under its images folder. "
        "Fix the path, or pass --allow-outside-images if it is meant"
        for row, (image, target) in escapes.items()
    ]
    assert not out.exists() or not list(out.glob("*.tar"))
    # Nothing outside the root was even opened.
    assert len(opened) == len(rows) - len(escapes)
    assert all(p.resolve().is_relative_to(images.resolve()) for p in opened)

    # --skip-bad writes the rows inside (the '..' and the symlink that stay in, too).
    assert run_cli(cmd + " --skip-bad") == 0
    err = capsys.readouterr().err
    assert f"skipping {len(escapes)} bad row(s)" in err
    assert sum(json.loads((out / "sizes.json").read_text()).values()) == len(rows) - 5

    # --allow-outside-images: every row that is a photograph is written; /etc/passwd is not one.
    out2 = tmp_path / "out2"
    cmd2 = cmd.replace(str(out), str(out2)) + " --allow-outside-images --skip-bad"
    assert run_cli(cmd2) == 0
    err = capsys.readouterr().err
    assert "skipping 1 bad row(s)" in err and "escapes.csv row 4, field 'image'" in err
    assert "outside --images" not in err
    assert sum(json.loads((out2 / "sizes.json").read_text()).values()) == len(rows) - 1
    sources = set()
    for url in out2.glob("*.tar"):
        sources |= {json.loads(raw["json"])["source"] for raw in iter_tar(str(url))}
    assert {escapes[r][0] for r in (3, 5, 6, 7)} <= sources


def _copies(images: Path, names: list[str]) -> tuple[str, str]:
    """Two copies of photographs under new names: names[1]'s bytes as copy/a.jpg, and
    names[2] decoded and saved again losslessly as copy/b.png."""
    (images / "copy").mkdir()
    (images / "copy" / "a.jpg").write_bytes((images / names[1]).read_bytes())
    with Image.open(images / names[2]) as img:
        img.convert("RGB").save(images / "copy" / "b.png")
    return "copy/a.jpg", "copy/b.png"


def test_a_photograph_on_both_sides_of_the_split_is_refused(tmp_path, capsys):
    images = tmp_path / "images"
    names = _write_images(images, 6)  # names[1] and names[2] are JPEGs
    copy_a, copy_b = _copies(images, names)
    rows = _manifest_rows([*names, copy_a, copy_b])
    for i, row in enumerate(rows):
        row["study_id"] = f"study{i}"
        row["split"] = "test" if i >= 6 else "train"  # both copies (rows 8, 9) in test
    manifest = tmp_path / "m.csv"
    _write_csv(manifest, rows)
    out = tmp_path / "out"
    cmd = f"shards placenta --manifest {manifest} --images {images} --out {out} --workers 1 --quiet"
    assert run_cli(cmd) == 2
    err = capsys.readouterr().err
    assert "4 problem(s)" in err
    lines = [ln.strip() for ln in err.splitlines() if "same photograph" in ln]
    # Each copy's row names the rows and files on the other side (header = row 1).
    expected = {
        3: f"as row 8 ('{copy_a}')",
        4: f"as row 9 ('{copy_b}')",
        8: f"as row 3 ('{names[1]}')",
        9: f"as row 4 ('{names[2]}')",
    }
    assert len(lines) == 4
    for row_no, other in expected.items():
        line = next(ln for ln in lines if f"row {row_no}, field 'image'" in ln)
        assert other in line and "other split" in line
    assert not list(out.glob("*.tar"))

    # --skip-bad leaves every copy out, on both sides.
    assert run_cli(cmd + " --skip-bad") == 0
    info = json.loads((out / "info.json").read_text())
    assert info["splits"] == {"train": 4, "test": 0}
    assert info["duplicate_photos"] == []


def test_copies_within_one_split_are_written_and_named(tmp_path, capsys):
    images = tmp_path / "images"
    names = _write_images(images, 6)
    copy_a, copy_b = _copies(images, names)
    rows = _manifest_rows([*names, copy_a, copy_b])
    for i, row in enumerate(rows):
        row["study_id"] = f"study{i}"
        row["split"] = "train"
    manifest = tmp_path / "m.csv"
    _write_csv(manifest, rows)
    out = tmp_path / "out"
    cmd = f"shards placenta --manifest {manifest} --images {images} --out {out} --workers 1 --quiet"
    assert run_cli(cmd) == 0
    err = capsys.readouterr().err
    assert "warning: 2 photograph(s) appear more than once within one split" in err
    assert f"train: row 3 ('{names[1]}'), row 8 ('{copy_a}')" in err
    assert f"train: row 4 ('{names[2]}'), row 9 ('{copy_b}')" in err
    info = json.loads((out / "info.json").read_text())
    assert info["duplicate_photos"] == [[names[1], copy_a], [names[2], copy_b]]
    assert info["splits"] == {"train": 8, "test": 0}


def test_automatic_split_keeps_copies_of_a_photograph_on_one_side(tmp_path):
    images = tmp_path / "images"
    names = _write_images(images, 24)
    # Every photograph twice, the copy under another name and in a study of its own.
    (images / "copy").mkdir()
    copies = []
    for i, name in enumerate(names):
        copy = f"copy/{i}{Path(name).suffix}"
        (images / copy).write_bytes((images / name).read_bytes())
        copies.append(copy)
    rows = _manifest_rows(names + copies)
    for i, row in enumerate(rows):
        row["study_id"] = f"study{i}"
    manifest = tmp_path / "m.csv"
    _write_csv(manifest, rows)
    out = tmp_path / "out"
    assert (
        run_cli(
            f"shards placenta --manifest {manifest} --images {images} --out {out} --workers 1 --quiet --test-fraction 0.5"
        )
        == 0
    )
    side = {}
    for url in out.glob("*.tar"):
        for raw in iter_tar(str(url)):
            meta = json.loads(raw["json"])
            side[meta["source"]] = meta["split"]
    assert len(side) == 48
    assert {side[n] for n in names} == {"train", "test"}  # a real split
    assert all(side[n] == side[c] for n, c in zip(names, copies, strict=True))


def test_manifest_level_errors_are_explained(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("img,text,a\nx.jpg,hello,1\n")
    assert (
        run_cli(f"shards placenta --manifest {manifest} --images {tmp_path} --out {tmp_path / 'o'}")
        == 2
    )
    err = capsys.readouterr().err
    assert "missing required column(s) ['image', 'report']" in err and "'img'" in err
    manifest.write_text("image,report,a\nx.jpg,hello,1\n")
    assert (
        run_cli(
            f"shards placenta --manifest {manifest} --images {tmp_path} --out {tmp_path / 'o'} --tasks b"
        )
        == 2
    )
    assert "not columns" in capsys.readouterr().err


def test_split_is_grouped_stratified_and_deterministic():
    rng = np.random.default_rng(3)
    groups = {f"s{i}": [int(rng.random() < 0.3), int(rng.random() < 0.1)] for i in range(1000)}
    test = assign_split(groups, 0.2, seed=7)
    assert test == assign_split(groups, 0.2, seed=7)
    assert test != assign_split(groups, 0.2, seed=8)
    assert abs(len(test) - 200) <= 1
    # Each label pattern gets its share of test studies, to within one.
    patterns = defaultdict(list)
    for sid, vec in groups.items():
        patterns[tuple(vec)].append(sid in test)
    for flags in patterns.values():
        assert abs(sum(flags) - 0.2 * len(flags)) <= 1.0 + 1e-9


def test_synthetic_set_is_deterministic_and_consistent(placenta_shards, tmp_path):
    info = json.loads((placenta_shards / "info.json").read_text())
    assert info["tasks"] == list(TASKS) and info["samples"] == 48
    sizes = json.loads((placenta_shards / "sizes.json").read_text())
    assert sum(sizes.values()) == 48
    assert any(n.startswith("placenta-test-") for n in sizes)

    # Same seed, same bytes: rewrite one shard elsewhere and compare.
    again = tmp_path / "again"
    assert (
        run_cli(
            f"shards placenta --synthetic 48 --image-size 128x96 --shard-size 6 --out {again} --workers 1 --quiet"
        )
        == 0
    )
    for name in sizes:
        assert (again / name).read_bytes() == (placenta_shards / name).read_bytes()

    # The image is 128x96 and the report states every positive finding it was drawn with.
    for raw in iter_tar(str(sorted(placenta_shards.glob("placenta-train-*.tar"))[0])):
        img = Image.open(__import__("io").BytesIO(raw["jpg"]))
        assert img.size == (128, 96)
        meta = json.loads(raw["json"])
        text = raw["txt"].decode()
        assert len([s for s in text.split(". ") if s]) >= 5  # one sentence per finding
        for task, label in meta["labels"].items():
            assert (meta["severity"][task] > 0) == bool(label)


def test_synthetic_reports_agree_with_labels():
    markers = {
        "meconium": (
            "meconium staining of",
            "meconium pigment",
            "meconium-laden macrophages in",
            "meconium exposure",
        ),
        "fir": ("funisitis with", "chorionic vasculitis and", "acute funisitis ("),
        "mir": ("acute chorionitis", "subchorionitis", "chorion laeve ("),
        "chorioamnionitis": ("chorioamnionitis with", "chorioamnionitis,", "plate consistent with"),
        "sepsis": ("neonatal sepsis,", "early-onset sepsis", "treated for sepsis"),
    }
    counts = np.zeros(len(TASKS))
    for i in range(300):
        case, image, report = make_sample(11, i, size=(64, 48))
        assert image.shape == (48, 64, 3)
        low = report.lower()
        for j, task in enumerate(TASKS):
            mentioned = any(m in low for m in markers[task])
            assert mentioned == bool(case.labels[task]), (task, case.labels, report)
            counts[j] += case.labels[task]
        sev = [t for t in TASKS if case.labels[t]]
        for t in sev:
            s = case.severity[t]
            assert 0.15 <= s <= 1.0
    prevalence = counts / 300
    assert (prevalence > 0.08).all() and (prevalence < 0.5).all(), prevalence


def test_synthetic_image_shows_the_finding():
    """A severe finding changes the photograph: meconium turns the disc greener."""
    from vlcd_dist.data.synthetic_placenta import Case, render_case

    rng_case = np.random.default_rng(0)
    from vlcd_dist.data.synthetic_placenta import sample_case

    base = sample_case(rng_case)
    for t in TASKS:
        base.severity[t] = 0.0
    stained = Case(**{**base.__dict__, "severity": {**base.severity, "meconium": 1.0}})
    clean_img = render_case(base, np.random.default_rng(5), (128, 96)).astype(float)
    stained_img = render_case(stained, np.random.default_rng(5), (128, 96)).astype(float)
    green_minus_red = lambda im: (im[..., 1] - im[..., 0]).mean()  # noqa: E731
    assert green_minus_red(stained_img) > green_minus_red(clean_img) + 2.0


def test_truncated_tar_member_in_written_shard_is_detectable(placenta_shards, tmp_path):
    """Shards are plain tars readable by the standard library (no webdataset needed)."""
    name = sorted(placenta_shards.glob("*.tar"))[0]
    with tarfile.open(name) as tar:
        exts = sorted({m.name.split(".", 1)[1] for m in tar.getmembers()})
    assert exts == ["jpg", "json", "txt"]


@pytest.mark.parametrize("bad", ["0.5", "", "-1"])
def test_bad_label_values(tmp_path, bad, capsys):
    images = tmp_path / "images"
    names = _write_images(images, 2)
    manifest = tmp_path / "m.csv"
    _write_csv(
        manifest,
        [
            {"image": names[0], "report": "ok.", "t": bad},
            {"image": names[1], "report": "ok.", "t": "1"},
        ],
    )
    assert (
        run_cli(
            f"shards placenta --manifest {manifest} --images {images} --out {tmp_path / 'o'} --quiet --workers 1"
        )
        == 2
    )
    assert "row 2, field 't': label must be 0 or 1" in capsys.readouterr().err
