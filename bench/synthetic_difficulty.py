"""How hard is the built-in synthetic placenta set?

Prints, per task: prevalence; the test AUC of a TF-IDF logistic regression from report to label
(the text must describe the findings: target >= 0.95); the test AUC of a logistic regression
on 16x16 raw pixels (the signal is in the image, but not linearly readable: target 0.55-0.90);
and, without a target, that of one on colour statistics (each channel's mean and standard
deviation and its mean over a 4x4 grid: how far plain colour goes, the reference for a
student's per-task AUC). Train/test are the splits written in the shards.

    python bench/synthetic_difficulty.py                       # writes 2000 samples to a temp dir
    python bench/synthetic_difficulty.py --shards shards/demo/placenta
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from vlcd_dist.cli import main as vlcd
from vlcd_dist.data.stream import iter_tar, resolve_shards


def load(folder: Path):
    data = {"train": ([], [], []), "test": ([], [], [])}
    shard_set = resolve_shards(str(folder))
    for url in shard_set.urls:
        for raw in iter_tar(url):
            meta = json.loads(raw["json"])
            img = Image.open(io.BytesIO(raw["jpg"])).convert("RGB").resize((16, 16), Image.BILINEAR)
            pixels, texts, labels = data[meta["split"]]
            pixels.append(np.asarray(img, np.float32).ravel() / 255.0)
            texts.append(raw["txt"].decode())
            labels.append([meta["labels"][t] for t in shard_set.tasks])
    return shard_set.tasks, {k: (np.stack(p), t, np.array(y)) for k, (p, t, y) in data.items()}


def colour_statistics(pixels: np.ndarray) -> np.ndarray:
    """[N, 16*16*3] pixels -> [N, 54]: per channel the mean, the standard deviation and the
    means of a 4x4 grid of 4x4-pixel cells."""
    img = pixels.reshape(-1, 16, 16, 3)
    grid = img.reshape(-1, 4, 4, 4, 4, 3).mean(axis=(2, 4)).reshape(len(img), -1)
    return np.concatenate([img.mean(axis=(1, 2)), img.std(axis=(1, 2)), grid], axis=1)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--shards", type=Path, help="placenta shard folder (default: write a new set)")
    ap.add_argument(
        "--count", type=int, default=2000, help="samples to write when --shards is absent"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.shards
        if folder is None:
            folder = Path(tmp) / "placenta"
            vlcd(
                [
                    "shards",
                    "placenta",
                    "--synthetic",
                    str(args.count),
                    "--seed",
                    str(args.seed),
                    "--out",
                    str(folder),
                    "--quiet",
                ]
            )
        tasks, data = load(folder)
    (xp_tr, tx_tr, y_tr), (xp_te, tx_te, y_te) = data["train"], data["test"]
    print(f"synthetic difficulty: {len(y_tr)} train / {len(y_te)} test samples")
    tfidf = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    t_tr, t_te = tfidf.fit_transform(tx_tr), tfidf.transform(tx_te)
    scaler = StandardScaler().fit(xp_tr)
    p_tr, p_te = scaler.transform(xp_tr), scaler.transform(xp_te)
    c_scaler = StandardScaler().fit(colour_statistics(xp_tr))
    c_tr = c_scaler.transform(colour_statistics(xp_tr))
    c_te = c_scaler.transform(colour_statistics(xp_te))
    ok = True
    print(
        f"{'task':<18} {'prevalence':>10} {'text AUC':>9} {'pixel AUC':>10} {'colour AUC':>11}"
        "  targets"
    )
    for j, task in enumerate(tasks):
        prevalence = float(np.concatenate([y_tr[:, j], y_te[:, j]]).mean())
        text = LogisticRegression(max_iter=2000).fit(t_tr, y_tr[:, j])
        text_auc = roc_auc_score(y_te[:, j], text.predict_proba(t_te)[:, 1])
        pix = LogisticRegression(max_iter=3000).fit(p_tr, y_tr[:, j])
        pix_auc = roc_auc_score(y_te[:, j], pix.predict_proba(p_te)[:, 1])
        colour = LogisticRegression(max_iter=3000).fit(c_tr, y_tr[:, j])
        colour_auc = roc_auc_score(y_te[:, j], colour.predict_proba(c_te)[:, 1])
        checks = [0.10 <= prevalence <= 0.50, text_auc >= 0.95, 0.55 <= pix_auc <= 0.90]
        ok &= all(checks)
        marks = " ".join("ok" if c else "MISSED" for c in checks)
        print(
            f"{task:<18} {prevalence:>10.3f} {text_auc:>9.3f} {pix_auc:>10.3f} "
            f"{colour_auc:>11.3f}  {marks}"
        )
    print(
        "targets: prevalence 0.10-0.50, text AUC >= 0.95, pixel AUC 0.55-0.90:",
        "all met" if ok else "NOT all met",
    )
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
