"""Choose the deduplication thresholds (`curation.dedup.DedupConfig`) by measurement on labelled pairs.

    .venv/bin/python bench/dedup_eval.py [--corpus ../shared/data/corpus_dev] [--seed 0] [--threads 2]
                                         [--min-precision 0.98] [--out bench/results/dedup_eval.md]

Every real image of `corpus_dev` (the "originals") gets 25 deterministic transforms (JPEG re-encodes, resizes,
centre and off-centre crops, flip, rotation, blur, brightness/contrast/saturation, grayscale, a text caption, a
watermark). All variants go through the production feature path (`FeatureExtractor.process_batch`: `load_rgb`,
`_reduce`, canonical hashes, the open-NSFW embedding stored as float16), then every pair is labelled:

  positive       (original, one of its transforms)
  negative       any two variants of different originals
  hard negative  the subset of negatives whose originals are different subjects of the same class (six dogs, three
                 cats, four toys, two backpacks, two clocks): the near-misses that a real corpus is full of
  excluded       two transforms of the same original (neither label is clean: a 30% crop vs a 30% off-centre crop
                 may share little)

Per pair: canonical and plain pHash distance, canonical dHash distance, embedding cosine. Pairs are scored one by
one, as the edge rule of `curation.dedup` would score them, WITHOUT union-find. The pipeline's transitive closure
only adds merges: recall can rise, and one false edge joins two whole components, so its false merges can only grow.

The grid is perceptual-only (pHash 0..16, with or without a dHash confirmation), semantic-only (cosine 0.80..0.99)
and their OR (the pipeline's rule). The default is the configuration with the highest recall whose pairwise
precision over all positive + negative pairs is >= --min-precision (ties: higher precision, fewer hard-negative
false positives, then the stricter thresholds). Exact (sha256) edges are not evaluated: every transform changes the
bytes, and identical bytes are duplicates by definition.

Diagnostics next to the pipeline's canonical pHash: the plain (upright) pHash, and an orientation *search* (best
of one image's 8 dihedral pHashes against the other's upright one), which is what the canonical form approximates.
A bootstrap over the originals shows how stable the choice is with this few subjects.

Prints a markdown summary (defaults, per-transform recall, counts, machine, date, runtime) and writes it with the
full sweeps to --out; per-pair measures of positives and hard negatives go next to it as CSV. Takes ~2.5 min on 2
cores (feature extraction of ~960 images dominates).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Same-class, different-subject groups. DreamBooth classes come from its prompts_and_classes.txt; the two
# scikit-image photos that depict one of those classes (Chelsea the cat, the motion-blurred clock) join them.
HARD_GROUPS = {
    "dog": ["dog", "dog2", "dog3", "dog5", "dog6", "dog8"],
    "cat": ["cat", "cat2", "chelsea"],
    "toy": ["duck_toy", "monster_toy", "rc_car", "robot_toy"],
    "backpack": ["backpack", "backpack_dog"],
    "clock": ["clock", "clock_motion"],
}
CAPTIONS = ["WHEN THE DATASET", "HAS DUPLICATES", "LIMITED OFFER", "SHOP NOW -50%", "BEST PHOTO EVER",
            "NOT A DUPLICATE", "SUMMER VIBES 2024", "FOLLOW FOR MORE"]
PHASH_GRID = list(range(0, 17))
DHASH_GRID: list[int | None] = [None, 8, 10, 12, 14, 16, 20]


# ---------------------------------------------------------------------------------------------------------- images

def _encode(img: Image.Image, fmt: str, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=quality)
    else:
        # lossless, so the transform alone changes the pixels; stored (level 0) because deflate of ~500 full-size
        # images would otherwise be the largest cost of the run
        img.save(buf, "PNG", compress_level=0)
    return buf.getvalue()


def _crop(img: Image.Image, frac: float, corner: tuple[int, int] | None) -> Image.Image:
    """Remove `frac` of each side's length: centred, or keeping the window flush with a corner (off-centre)."""
    w, h = img.size
    cw, ch = round(w * (1 - frac)), round(h * (1 - frac))
    if corner is None:
        x, y = (w - cw) // 2, (h - ch) // 2
    else:
        x, y = corner[0] * (w - cw), corner[1] * (h - ch)
    return img.crop((x, y, x + cw, y + ch))


def _caption(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, float]:
    """Meme-style two-line caption (white, black outline) across the bottom; returns the covered area fraction."""
    w, h = img.size
    k = int(rng.integers(0, len(CAPTIONS) // 2))
    lines = CAPTIONS[2 * k : 2 * k + 2]
    out = img.copy()
    draw = ImageDraw.Draw(out)
    # largest size whose block fits 90% of the width and 18% of the height, so coverage lands in the 10-20% band
    size = max(8, h // 6)
    while size > 8:
        font = ImageFont.load_default(size=size)
        boxes = [draw.textbbox((0, 0), line, font=font, stroke_width=max(1, size // 12)) for line in lines]
        bw, bh = max(b[2] - b[0] for b in boxes), sum(b[3] - b[1] for b in boxes) + size // 4
        if bw <= 0.9 * w and bh <= 0.18 * h:
            break
        size -= max(1, size // 20)
    font = ImageFont.load_default(size=size)
    stroke = max(1, size // 12)
    boxes = [draw.textbbox((0, 0), line, font=font, stroke_width=stroke) for line in lines]
    bw, bh = max(b[2] - b[0] for b in boxes), sum(b[3] - b[1] for b in boxes) + size // 4
    y = h - bh - h // 30
    for line, box in zip(lines, boxes, strict=True):
        lw = box[2] - box[0]
        draw.text(((w - lw) // 2 - box[0], y - box[1]), line, font=font, fill=(255, 255, 255),
                  stroke_width=stroke, stroke_fill=(0, 0, 0))
        y += box[3] - box[1] + size // 4
    return out, bw * bh / (w * h)


def _watermark(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A semi-transparent logo (rounded badge + disc + initial) in a seeded corner, ~20% of the shorter side."""
    w, h = img.size
    side = max(16, min(w, h) // 5)
    margin = max(2, min(w, h) // 40)
    cx, cy = int(rng.integers(0, 2)), int(rng.integers(0, 2))
    x0 = margin if cx == 0 else w - side - margin
    y0 = margin if cy == 0 else h - side - margin
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    draw.rounded_rectangle((x0, y0, x0 + side, y0 + side), radius=side // 5, fill=(255, 255, 255, 120),
                           outline=(20, 20, 20, 160), width=max(1, side // 25))
    inset = side // 5
    draw.ellipse((x0 + inset, y0 + inset, x0 + side - inset, y0 + side - inset), fill=(200, 30, 30, 140))
    font = ImageFont.load_default(size=max(8, side // 3))
    draw.text((x0 + side // 2, y0 + side // 2), "A", font=font, fill=(255, 255, 255, 200), anchor="mm")
    return Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB")


def transforms(img: Image.Image, rng: np.random.Generator) -> list[tuple[str, bytes, dict]]:
    """The 25 (name, encoded bytes, notes) variants of one normalised original, in a fixed order."""
    w, h = img.size
    out: list[tuple[str, bytes, dict]] = []
    for q in (90, 70, 50, 30):
        out.append((f"jpeg_q{q}", _encode(img, "JPEG", q), {}))
    for pct in (50, 25):
        small = img.resize((max(1, w * pct // 100), max(1, h * pct // 100)), Image.Resampling.LANCZOS)
        out.append((f"resize_{pct}", _encode(small, "PNG"), {}))
    for pct in (10, 20, 30):
        out.append((f"crop_centre_{pct}", _encode(_crop(img, pct / 100, None), "PNG"), {}))
    for pct in (10, 20, 30):
        corner = (int(rng.integers(0, 2)), int(rng.integers(0, 2)))
        out.append((f"crop_offcentre_{pct}", _encode(_crop(img, pct / 100, corner), "PNG"), {}))
    out.append(("hflip", _encode(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG"), {}))
    out.append(("rot90", _encode(img.transpose(Image.Transpose.ROTATE_90), "PNG"), {}))
    for r in (2, 4):
        out.append((f"blur_r{r}", _encode(img.filter(ImageFilter.GaussianBlur(r)), "PNG"), {}))
    for name, enhancer in (("brightness", ImageEnhance.Brightness), ("contrast", ImageEnhance.Contrast),
                           ("saturation", ImageEnhance.Color)):
        for factor in (0.6, 1.4):
            out.append((f"{name}_{factor}", _encode(enhancer(img).enhance(factor), "PNG"), {}))
    out.append(("grayscale", _encode(img.convert("L"), "PNG"), {}))
    captioned, coverage = _caption(img, rng)
    out.append(("text_overlay", _encode(captioned, "PNG"), {"coverage": coverage}))
    out.append(("watermark", _encode(_watermark(img, rng), "PNG"), {}))
    return out


TRANSFORM_NAMES = ["jpeg_q90", "jpeg_q70", "jpeg_q50", "jpeg_q30", "resize_50", "resize_25", "crop_centre_10",
                   "crop_centre_20", "crop_centre_30", "crop_offcentre_10", "crop_offcentre_20", "crop_offcentre_30",
                   "hflip", "rot90", "blur_r2", "blur_r4", "brightness_0.6", "brightness_1.4", "contrast_0.6",
                   "contrast_1.4", "saturation_0.6", "saturation_1.4", "grayscale", "text_overlay", "watermark"]


# -------------------------------------------------------------------------------------------------------- features

@dataclass
class Variants:
    """Features of every variant: which original it came from and which transform ("original" for itself)."""

    subject: list[str]
    origin: np.ndarray  # index of the original
    transform: list[str]
    phash: np.ndarray  # canonical, as stored by the pipeline
    dhash: np.ndarray  # canonical
    phash_plain: np.ndarray
    phash_dihedral: np.ndarray  # (n, 8): pHash of each dihedral transform of the canonical thumbnail
    embeddings: np.ndarray
    caption_coverage: list[float]


def subject_of(file: str) -> str:
    """DreamBooth files are `<subject>__NN.jpg`; scikit-image files are named after their subject."""
    return Path(file).stem.split("__")[0]


def extract(corpus: Path, seed: int, threads: int) -> Variants:
    """Transform every original and run all variants through the production feature path, one original at a time
    (so at most 26 full-resolution images are held in memory)."""
    import pyarrow as pa

    from curation.embedding import EmbeddingConfig
    from curation.features import FeatureConfig, FeatureExtractor, embedding_matrix, orientation_matrix
    from curation.image_io import load_rgb

    records = [json.loads(line) for line in (corpus / "metadata.jsonl").read_text().splitlines() if line.strip()]
    extractor = FeatureExtractor(FeatureConfig(embedding=EmbeddingConfig(threads=threads)))
    extractor.setup()
    subject, origin, names, tables, coverage = [], [], [], [], []
    for k, rec in enumerate(records):
        data = (corpus / rec["file"]).read_bytes()
        # transforms start from the image as the pipeline sees it (EXIF orientation applied, RGB)
        rgb = load_rgb(data)
        rng = np.random.default_rng([seed, k])
        variants = [("original", data, {})] + transforms(rgb, rng)
        assert [v[0] for v in variants[1:]] == TRANSFORM_NAMES
        blobs = [v[1] for v in variants]
        n = len(blobs)
        table = pa.table({
            "sample_id": [hashlib.sha256(b).hexdigest() for b in blobs],
            "source": ["dedup_eval"] * n,
            "source_uri": [f"{rec['file']}#{v[0]}" for v in variants],
            "width": pa.array([0] * n, pa.int32()),
            "height": pa.array([0] * n, pa.int32()),
            "byte_size": pa.array([len(b) for b in blobs], pa.int64()),
            "format": ["PNG"] * n,
            "image": pa.array(blobs, pa.binary()),
        })
        # process_batch, not a re-implementation: the evaluation then follows any change to the production path
        # (including the float16 storage of embeddings); only the diagnostic hashes decode a second time
        tables.append(extractor.process_batch(table))
        subject += [subject_of(rec["file"])] * n
        origin += [k] * n
        names += [v[0] for v in variants]
        coverage += [v[2]["coverage"] for v in variants if "coverage" in v[2]]
    feats = pa.concat_tables(tables)

    def col(name: str) -> np.ndarray:
        return feats.column(name).to_numpy().astype(np.uint64)

    orientations = orientation_matrix(feats)
    # the pipeline's rule is the orientation search over `orientations`; the minimum over them (the "canonical"
    # hash the pipeline used before) and the full-resolution upright pHash are diagnostics
    return Variants(subject=subject, origin=np.array(origin), transform=names, phash=orientations.min(axis=1),
                    dhash=col("dhash"), phash_plain=col("phash"), phash_dihedral=orientations,
                    embeddings=embedding_matrix(feats), caption_coverage=coverage)


# ----------------------------------------------------------------------------------------------------------- pairs

@dataclass
class Pairs:
    """Per-pair measures of one label set (positives or negatives)."""

    i: np.ndarray
    j: np.ndarray
    phash: dict[str, np.ndarray]  # Hamming distance per pHash metric: canonical, plain, search
    dhash: np.ndarray  # canonical dHash Hamming distance
    cosine: np.ndarray

    def subset(self, mask: np.ndarray) -> Pairs:
        return Pairs(self.i[mask], self.j[mask], {k: d[mask] for k, d in self.phash.items()}, self.dhash[mask],
                     self.cosine[mask])


def build_pairs(v: Variants) -> tuple[Pairs, Pairs, int]:
    """Positives, negatives and the count of excluded (transform vs transform of one original) pairs."""
    n = len(v.transform)

    def hamming(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
        return np.bitwise_count(a[:, None] ^ (a if b is None else b)[None, :]).astype(np.int8)

    # the orientation search a canonical form is meant to stand for: best alignment of either image's 8
    # dihedral hashes with the other's upright hash, so no min-selection can pick inconsistent orientations
    # the pipeline's rule (`curation.dedup.orientation_pairs`): upright against upright within the threshold, or a
    # flipped/rotated hash of either image against the other's upright one within `DedupConfig.rotated_threshold`
    from curation.dedup import DedupConfig

    rotated = np.full((n, n), 64, dtype=np.int8)
    for k in range(1, 8):
        m = hamming(v.phash_dihedral[:, k], v.phash_dihedral[:, 0])
        rotated = np.minimum(rotated, np.minimum(m, m.T))
    upright = hamming(v.phash_dihedral[:, 0], v.phash_dihedral[:, 0])
    search = np.minimum(upright, np.where(rotated <= DedupConfig.rotated_threshold, rotated, 64)).astype(np.int8)
    dist = {"canonical": hamming(v.phash), "plain": hamming(v.phash_plain), "search": search}
    dh = hamming(v.dhash)
    cos = v.embeddings @ v.embeddings.T
    iu, ju = np.triu_indices(n, k=1)
    same = v.origin[iu] == v.origin[ju]
    is_orig = np.array([t == "original" for t in v.transform])
    pos = same & (is_orig[iu] | is_orig[ju])

    def take(mask: np.ndarray) -> Pairs:
        i, j = iu[mask], ju[mask]
        return Pairs(i, j, {k: d[i, j] for k, d in dist.items()}, dh[i, j], cos[i, j])

    return take(pos), take(~same), int((same & ~pos).sum())


# ----------------------------------------------------------------------------------------------------------- rules

@dataclass(frozen=True)
class Rule:
    """One grid point of the pipeline's edge rule; None disables a test. `metric` names the pHash distance:
    `canonical` is what the pipeline stores; `plain` and `search` are diagnostics only."""

    phash: int | None
    dhash: int | None
    semantic: float | None
    metric: str = "canonical"

    def edges(self, p: Pairs) -> np.ndarray:
        hit = np.zeros(len(p.i), dtype=bool)
        if self.phash is not None:
            perceptual = p.phash[self.metric] <= self.phash
            if self.dhash is not None:
                perceptual &= p.dhash <= self.dhash
            hit |= perceptual
        if self.semantic is not None:
            # float32 cosines vs the float32 threshold, as faiss compares them
            hit |= p.cosine >= np.float32(self.semantic)
        return hit

    def label(self) -> str:
        parts = []
        if self.phash is not None:
            name = "pHash" if self.metric == "canonical" else f"{self.metric} pHash"
            parts.append(f"{name}<={self.phash}" + (f" & dHash<={self.dhash}" if self.dhash is not None else ""))
        if self.semantic is not None:
            parts.append(f"cos>={self.semantic:.2f}")
        return " OR ".join(parts) or "nothing"

    def config(self) -> str:
        """As `DedupConfig` arguments."""
        return (f"phash_threshold={self.phash if self.phash is not None else -1}, dhash_threshold={self.dhash}, "
                f"semantic_threshold={self.semantic if self.semantic is not None else 'off (>1)'}")


class Grid:
    """Every rule's hits on every positive and on every negative that any rule can link (the others are never
    false positives), so any weighting of the pairs (the point estimate, a bootstrap resample) is two products."""

    def __init__(self, rules: list[Rule], pos: Pairs, neg: Pairs, neg_group: np.ndarray, sem_min: float) -> None:
        reach = neg.cosine >= np.float32(sem_min)
        for d in neg.phash.values():
            reach |= d <= max(PHASH_GRID)
        self.rules = rules
        self.neg = neg.subset(reach)
        self.neg_group = neg_group[reach]
        self.hard = self.neg_group != ""
        self.pos_hits = np.stack([r.edges(pos) for r in rules]).astype(np.float32)
        self.neg_hits = np.stack([r.edges(self.neg) for r in rules]).astype(np.float32)
        self.neg_hits_hard = np.ascontiguousarray(self.neg_hits[:, self.hard])
        self.phash_key = np.array([-1 if r.phash is None else r.phash for r in rules])
        self.sem_key = np.array([2.0 if r.semantic is None else r.semantic for r in rules])
        self.dhash_key = np.array([0 if r.dhash is None else 1 for r in rules])

    def counts(self, w_pos: np.ndarray, w_neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(true positives, false positives, hard false positives) per rule for pair weights."""
        return (self.pos_hits @ w_pos, self.neg_hits @ w_neg,
                self.neg_hits_hard @ w_neg[self.hard])

    def select(self, w_pos: np.ndarray, w_neg: np.ndarray, eligible: np.ndarray, min_precision: float) -> int:
        """Highest recall at precision >= min_precision; ties: precision, hard FPs, stricter thresholds, no dHash.
        -1 when nothing qualifies."""
        tp, fp, fp_hard = self.counts(w_pos, w_neg)
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-12), 1.0)
        ok = np.flatnonzero(eligible & (precision >= min_precision))
        if not len(ok):
            return -1
        recall = tp / w_pos.sum()
        order = np.lexsort((self.dhash_key[ok], -self.sem_key[ok], self.phash_key[ok], fp_hard[ok],
                            -precision[ok], -recall[ok]))
        return int(ok[order[0]])


@dataclass
class Score:
    rule: Rule
    tp: int
    fp: int
    fp_hard: int
    recall: float
    precision: float
    precision_hard: float
    per_transform: np.ndarray  # recall per transform
    fp_by_group: dict[str, int]


def score(grid: Grid, k: int, t_index: np.ndarray) -> Score:
    hits, neg_hits = grid.pos_hits[k], grid.neg_hits[k].astype(bool)
    tp, fp = int(hits.sum()), int(neg_hits.sum())
    fp_hard = int((neg_hits & grid.hard).sum())
    per = np.bincount(t_index, weights=hits, minlength=len(TRANSFORM_NAMES)) / np.bincount(
        t_index, minlength=len(TRANSFORM_NAMES))
    groups = {g: int((neg_hits & (grid.neg_group == g)).sum()) for g in HARD_GROUPS}
    return Score(grid.rules[k], tp, fp, fp_hard, tp / len(hits), tp / (tp + fp) if tp + fp else 1.0,
                 tp / (tp + fp_hard) if tp + fp_hard else 1.0, per, groups)


# ---------------------------------------------------------------------------------------------------------- report

def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def sweep_tables(grid: Grid, t_index: np.ndarray, min_precision: float, sem_grid: list[float]) -> list[str]:
    """Sections (a), (b), (c) of the full report."""
    index = {r: k for k, r in enumerate(grid.rules)}

    def s(rule: Rule) -> Score:
        return score(grid, index[rule], t_index)

    lines = ["## (a) perceptual only (no dHash confirmation)", "",
             "`canonical` is the pipeline's hash; `plain` (upright pHash) and `search` (best of 8 orientations) are "
             "diagnostics.", "",
             "| pHash <= | canonical recall | precision | FP | hard FP | plain recall | precision | search recall "
             "| precision |", "| ---: |" + " ---: |" * 8]
    for t in PHASH_GRID:
        c, p, q = (s(Rule(t, None, None, m)) for m in ("canonical", "plain", "search"))
        lines.append(f"| {t} | {pct(c.recall)} | {pct(c.precision)} | {c.fp} | {c.fp_hard} | {pct(p.recall)} | "
                     f"{pct(p.precision)} | {pct(q.recall)} | {pct(q.precision)} |")
    lines += ["", "## (b) semantic only (embedding cosine)", "",
              "| cos >= | recall | precision | FP | hard FP |", "| ---: | ---: | ---: | ---: | ---: |"]
    for sv in sem_grid:
        c = s(Rule(None, None, sv))
        lines.append(f"| {sv:.2f} | {pct(c.recall)} | {pct(c.precision)} | {c.fp} | {c.fp_hard} |")
    lines += ["", f"## (c) combined OR rule (canonical pHash): recall %, `*` where precision < {min_precision}", "",
              "In brackets the dHash confirmation that scores best in the cell (`-`: none).", "",
              "| pHash \\ cos | " + " | ".join(f"{t:.2f}" for t in sem_grid) + " |",
              "| ---: |" + " ---: |" * len(sem_grid)]
    for t in PHASH_GRID:
        row = []
        for sv in sem_grid:
            cands = [s(Rule(t, d, sv)) for d in DHASH_GRID]
            c = max(cands, key=lambda x: (x.precision >= min_precision, x.recall, x.precision))
            d = "-" if c.rule.dhash is None else str(c.rule.dhash)
            row.append(f"{100 * c.recall:.1f}" + ("*" if c.precision < min_precision else "") + f" [{d}]")
        lines.append(f"| {t} | " + " | ".join(row) + " |")
    return lines


def write_pairs_csv(path: Path, v: Variants, pos: Pairs, neg: Pairs, hard: np.ndarray) -> None:
    """Measures of every positive and hard-negative pair, to look at the misses and near-misses by name."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["label", "a", "b", "phash_canonical", "phash_plain", "phash_search", "dhash_canonical",
                    "cosine"])
        for label, p in (("positive", pos), ("hard_negative", neg.subset(hard))):
            for q in range(len(p.i)):
                w.writerow([label, f"{v.subject[p.i[q]]}#{v.transform[p.i[q]]}",
                            f"{v.subject[p.j[q]]}#{v.transform[p.j[q]]}", int(p.phash["canonical"][q]),
                            int(p.phash["plain"][q]), int(p.phash["search"][q]), int(p.dhash[q]),
                            f"{p.cosine[q]:.4f}"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "data" / "corpus_dev",
                    help="folder with metadata.jsonl and images/ (default: ../shared/data/corpus_dev)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the off-centre crops, captions, watermarks")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="onnxruntime threads")
    ap.add_argument("--min-precision", type=float, default=0.98, help="pairwise precision the default must reach")
    ap.add_argument("--sem-min", type=float, default=0.80)
    ap.add_argument("--sem-max", type=float, default=0.99)
    ap.add_argument("--sem-step", type=float, default=0.01)
    ap.add_argument("--bootstrap", type=int, default=1000, help="resamples of the originals for the stability line")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "dedup_eval.md",
                    help="full report (summary + sweeps); per-pair CSV written next to it")
    args = ap.parse_args()

    t0 = time.perf_counter()
    v = extract(args.corpus, args.seed, args.threads)
    t_feat = time.perf_counter() - t0
    pos, neg, excluded = build_pairs(v)
    # the original is always the lower index of its group, so the transform is the j side's
    t_index = np.array([TRANSFORM_NAMES.index(v.transform[j]) for j in pos.j])
    group_of = {s: g for g, members in HARD_GROUPS.items() for s in members}
    group = np.array([group_of.get(s, "") for s in v.subject], dtype=object)
    neg_group = np.where(group[neg.i] == group[neg.j], group[neg.i], "").astype(str)
    hard_all = neg_group != ""

    sem_grid = [round(float(x), 4) for x in np.arange(args.sem_min, args.sem_max + args.sem_step / 2,
                                                      args.sem_step)]
    rules = [Rule(t, d, None, m) for m in ("canonical", "plain", "search") for t in PHASH_GRID for d in DHASH_GRID]
    rules += [Rule(None, None, s) for s in sem_grid]
    rules += [Rule(t, d, s, m) for m in ("canonical", "search") for t in PHASH_GRID for d in DHASH_GRID
              for s in sem_grid]
    grid = Grid(rules, pos, neg, neg_group, args.sem_min)
    metric = np.array([r.metric for r in rules])
    is_perc = np.array([r.semantic is None for r in rules])
    is_sem = np.array([r.phash is None for r in rules])
    canonical = metric == "search"  # the pipeline's perceptual rule
    mp = args.min_precision
    ones_pos, ones_neg = np.ones(len(pos.i), np.float32), np.ones(len(grid.neg.i), np.float32)

    def pick(eligible: np.ndarray) -> Score | None:
        k = grid.select(ones_pos, ones_neg, eligible, mp)
        return None if k < 0 else score(grid, k, t_index)

    chosen = pick(canonical)
    _, _, fp_hard_all = grid.counts(ones_pos, ones_neg)
    zero_hard = pick(canonical & (fp_hard_all == 0))
    cols = [("chosen", chosen), ("perceptual only", pick(canonical & is_perc)), ("semantic only", pick(is_sem)),
            ("plain pHash only", pick((metric == "plain") & is_perc)),
            ("search pHash only", pick((metric == "search") & is_perc))]
    search_comb = pick(metric == "search")

    # stability: resample the originals (a pair weighs the product of its originals' multiplicities) and redo the
    # choice; with 37 originals one subject pair can decide a threshold
    rng = np.random.default_rng(args.seed)
    n_orig = int(v.origin.max()) + 1
    o_pos, o_ni, o_nj = v.origin[pos.i], v.origin[grid.neg.i], v.origin[grid.neg.j]
    picks, chosen_prec = [], []
    chosen_k = grid.rules.index(chosen.rule) if chosen else -1
    for _ in range(args.bootstrap):
        c = rng.multinomial(n_orig, np.full(n_orig, 1 / n_orig)).astype(np.float32)
        w_pos, w_neg = c[o_pos], c[o_ni] * c[o_nj]
        picks.append(grid.select(w_pos, w_neg, canonical, mp))
        if chosen_k >= 0:
            tp, fp, _ = grid.counts(w_pos, w_neg)
            chosen_prec.append(tp[chosen_k] / max(tp[chosen_k] + fp[chosen_k], 1e-12))
    t_sweep = time.perf_counter() - t0 - t_feat
    runtime = time.perf_counter() - t0

    n_hard = int(hard_all.sum())
    out: list[str] = ["# Dedup thresholds by measurement (`bench/dedup_eval.py`)", ""]
    if chosen is None:
        out.append(f"**No canonical configuration reaches pairwise precision >= {mp}.**")
    else:
        out += [f"**Chosen defaults** (max recall at pairwise precision >= {mp}): `{chosen.rule.config()}` "
                f"({chosen.rule.label()}): recall {pct(chosen.recall)}, precision {pct(chosen.precision)} "
                f"({chosen.tp} TP, {chosen.fp} FP); hard negatives: {chosen.fp_hard} FP of {n_hard} pairs (rate "
                f"{chosen.fp_hard / max(1, n_hard):.1e}; precision against hard negatives only "
                f"{pct(chosen.precision_hard)}; by class: "
                + ", ".join(f"{g} {n}" for g, n in chosen.fp_by_group.items()) + ")."]
    alts = [("no hard-negative FP at all", zero_hard)] + cols[1:] + [("combined with search pHash", search_comb)]
    out += ["", "Others, each at its own best thresholds: " + "; ".join(
        f"{name} `{s.rule.label()}` recall {pct(s.recall)} / precision {pct(s.precision)} / hard FP {s.fp_hard}"
        for name, s in alts if s is not None) + "."]
    if chosen is not None and args.bootstrap:
        found = [grid.rules[k] for k in picks if k >= 0]

        def share(values: list) -> str:
            tally = sorted({x: values.count(x) for x in set(values)}.items(), key=lambda x: -x[1])[:4]
            return ", ".join(f"{'off' if x is None else x} {pct(n / len(picks))}" for x, n in tally)

        out.append(f"Stability ({args.bootstrap} bootstrap resamples of the {n_orig} originals, same selection): "
                   f"the chosen rule wins {pct(sum(r == chosen.rule for r in found) / len(picks))}; semantic "
                   f"threshold picked: {share([r.semantic for r in found])}; pHash threshold: "
                   f"{share([r.phash for r in found])}; precision of the chosen rule: 5th percentile "
                   f"{pct(float(np.percentile(chosen_prec, 5)))}, below {mp} in "
                   f"{pct(float(np.mean(np.array(chosen_prec) < mp)))} of resamples.")
    shown = [(name, s) for name, s in cols if s is not None]
    out += ["", "| transform | " + " | ".join(name for name, _ in shown)
            + " | median pHash d (canonical / plain / search) | median cos | min cos |",
            "| --- |" + " ---: |" * (len(shown) + 3)]
    for k, name in enumerate(TRANSFORM_NAMES):
        m = t_index == k
        d = " / ".join(f"{np.median(pos.phash[x][m]):.0f}" for x in ("canonical", "plain", "search"))
        out.append(f"| {name} | " + " | ".join(pct(s.per_transform[k]) for _, s in shown)
                   + f" | {d} | {np.median(pos.cosine[m]):.3f} | {pos.cosine[m].min():.3f} |")
    out.append("| **all** | " + " | ".join(f"**{pct(s.recall)}**" for _, s in shown) + " | | | |")
    hn = neg.cosine[hard_all]
    even = all(np.all(p.phash["canonical"] % 2 == 0) for p in (pos, neg))
    out += ["", f"Pairs: {len(pos.i)} positive ({n_orig} originals x {len(TRANSFORM_NAMES)} transforms), "
            f"{len(neg.i)} negative ({len(neg.i) / len(pos.i):.0f} per positive), of which {n_hard} hard (same "
            f"class, different subject: {', '.join(f'{g} x{len(m)}' for g, m in HARD_GROUPS.items())}); "
            f"{excluded} transform-vs-transform pairs of one original excluded. Pairs are scored individually "
            "(no union-find transitivity: in the pipeline one false edge merges two whole components).",
            f"Negatives: max cosine {neg.cosine.max():.3f} (hard {hn.max():.3f}; medians: hard {np.median(hn):.3f}, "
            f"all {np.median(neg.cosine):.3f}); min canonical pHash distance {int(neg.phash['canonical'].min())} "
            f"(hard {int(neg.phash['canonical'][hard_all].min())})."
            + (" pHash distances are all even (imagehash splits 64 DCT terms at their median: 32 ones per hash), "
               "so thresholds 2k and 2k+1 are the same rule." if even else "")
            + f" The caption covers {pct(float(np.mean(v.caption_coverage)))} of the image on average.",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
            f"{time.strftime('%Y-%m-%d')}. Runtime {runtime:.0f} s (features of {len(v.transform)} images "
            f"{t_feat:.0f} s; {len(rules)} rules x {args.bootstrap} resamples {t_sweep:.0f} s)."]
    print("\n".join(out))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(out + [""] + sweep_tables(grid, t_index, mp, sem_grid)) + "\n")
    write_pairs_csv(args.out.with_name(args.out.stem + "_pairs.csv"), v, pos, neg, hard_all)
    print(f"\nFull sweeps: {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
