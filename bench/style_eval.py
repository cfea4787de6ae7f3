"""Same-style retrieval across different content: the style descriptor against the content embedding.

    .venv/bin/python bench/style_eval.py [--photos ../shared/data/corpus_dev/images] [--threads 2]
                                         [--out bench/results/style_eval.md]

Every photo of `corpus_dev` (16 scikit-image samples, 21 DreamBooth subjects) goes through 9 deterministic
renditions (`style_renditions.STYLES`: the photo itself, OpenCV stylization, pencil sketch, a Kuwahara oil filter,
halftone, pixelation, posterization, a watercolour-like filter, a cartoon filter); no labelled artworks are
available offline, so every style is synthetic. Both embeddings come from one open-NSFW forward pass
(`OpenNsfwStyleEmbedder.embed`, the production path of `style_embeddings`), the content one being the global-pool
output that `image_features` stores.

Style retrieval: each image queries a gallery WITHOUT the other renditions of its own photo (so content cannot
help); relevant = the same style (36 per query). Content retrieval: the gallery WITHOUT the other photos in the
query's own style; relevant = the same photo in another style (8 per query). mAP@10 = mean over queries of
(1 / min(R, 10)) * sum_{k<=10} P@k * rel_k. Ablations: the descriptor's blocks alone, and the descriptor centred
by the gallery mean (what a fitted index could add). The style layers were chosen on the even-numbered photos; the
odd-numbered half is reported on its own as well (its galleries hold only odd photos). `--save` keeps the vectors
for `bench/attribution_eval.py`.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from style_renditions import STYLES, fit  # noqa: E402

from curation.style.descriptor import StyleConfig, l2_rows, load_style_embedder  # noqa: E402


def photos(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def render_all(paths: list[Path]) -> tuple[list[Image.Image], np.ndarray, np.ndarray]:
    """(images, content label, style label) of every (photo, style)."""
    images, content, style = [], [], []
    for c, path in enumerate(paths):
        rgb = fit(np.asarray(Image.open(path).convert("RGB")))
        for s, fn in enumerate(STYLES.values()):
            images.append(Image.fromarray(fn(rgb)))
            content.append(c)
            style.append(s)
    return images, np.array(content), np.array(style)


def map_at_k(vectors: np.ndarray, relevant: np.ndarray, excluded: np.ndarray, k: int = 10) -> float:
    """mAP@k of cosine retrieval; `relevant[i, j]` and `excluded[i, j]` (the query itself is always excluded)."""
    sims = vectors @ vectors.T
    sims[excluded] = -np.inf
    np.fill_diagonal(sims, -np.inf)
    aps = []
    for i in range(len(vectors)):
        order = np.argsort(-sims[i], kind="stable")[:k]
        hits = relevant[i, order] & np.isfinite(sims[i, order])
        n_rel = int((relevant[i] & ~excluded[i]).sum()) - int(relevant[i, i])
        if n_rel == 0:
            continue
        precision = np.cumsum(hits) / np.arange(1, k + 1)
        aps.append(float((precision * hits).sum() / min(n_rel, k)))
    return float(np.mean(aps))


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=str(repo.parent / "shared" / "data" / "corpus_dev" / "images"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(repo / "bench" / "results" / "style_eval.md"))
    parser.add_argument("--save", default=str(repo / "bench" / "results" / "style_vectors.npz"))
    args = parser.parse_args()

    paths = photos(Path(args.photos))
    t0 = time.perf_counter()
    images, content, style = render_all(paths)
    t_render = time.perf_counter() - t0
    embedder = load_style_embedder(StyleConfig(threads=args.threads))
    projector = embedder.projector
    t0 = time.perf_counter()
    stats, pooled = [], []
    for start in range(0, len(images), 16):
        layers, pool = embedder.activations(images[start:start + 16])
        stats.append(projector.statistics(layers))
        pooled.append(pool)
    t_embed = time.perf_counter() - t0
    stats = np.concatenate(stats)
    descriptor = projector.project(stats)
    content_emb = l2_rows(np.concatenate(pooled))

    # block layout of `statistics`: per layer [mean C, std C, cov r(r+1)/2]
    r = embedder.config.gram_channels
    masks = {"mean+std": [], "covariance": []}
    for c in (layer.shape[0] for layer in projector.reductions):
        masks["mean+std"] += [True] * (2 * c) + [False] * (r * (r + 1) // 2)
        masks["covariance"] += [False] * (2 * c) + [True] * (r * (r + 1) // 2)
    variants = {
        "style descriptor (pipeline, 256-d float16)": l2_rows(descriptor.astype(np.float16).astype(np.float32)),
        "style: mean+std blocks only": projector.project(stats * np.array(masks["mean+std"])),
        "style: covariance blocks only": projector.project(stats * np.array(masks["covariance"])),
        "style: centred by the gallery mean": l2_rows(descriptor - descriptor.mean(axis=0)),
        "content embedding (open-NSFW pool, image_features)": content_emb,
        "content embedding centred by the gallery mean": l2_rows(content_emb - content_emb.mean(axis=0)),
    }
    same_style = style[:, None] == style[None, :]
    same_content = content[:, None] == content[None, :]
    rows = []
    held = content % 2 == 1  # the layers were chosen on the even photos
    for name, vecs in variants.items():
        sub = np.ix_(held, held)
        rows.append((name, map_at_k(vecs, same_style, same_content), map_at_k(vecs, same_content, same_style),
                     map_at_k(vecs[held], same_style[sub], same_content[sub]),
                     map_at_k(vecs[held], same_content[sub], same_style[sub])))
    rng = np.random.default_rng(0)
    chance = map_at_k(l2_rows(rng.standard_normal(descriptor.shape)), same_style, same_content)
    chance_c = map_at_k(l2_rows(rng.standard_normal(descriptor.shape)), same_content, same_style)
    per_style = []
    for s, name in enumerate(STYLES):
        q = style == s
        sims_s = descriptor[q] @ descriptor.T
        sims_c = content_emb[q] @ content_emb.T
        per_style.append((name, _class_map(sims_s, q, same_style, same_content),
                          _class_map(sims_c, q, same_style, same_content)))

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    lines = [f"Machine: {cpu}, {__import__('os').cpu_count()} cores (nproc), {args.threads} onnxruntime threads; "
             f"{date(2026, 12, 2).isoformat()}.",
             f"{len(paths)} photos x {len(STYLES)} styles = {len(images)} images; rendering {t_render:.1f} s, "
             f"embedding (one pass: style + content) {t_embed:.1f} s = {len(images) / t_embed:.1f} images/s.", "",
             "| descriptor | style mAP@10 (other content only) | content mAP@10 (other styles only) | "
             "style, odd photos only | content, odd photos only |",
             "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {name} | {s:.3f} | {c:.3f} | {hs:.3f} | {hc:.3f} |" for name, s, c, hs, hc in rows]
    lines += [f"| chance (random vectors) | {chance:.3f} | {chance_c:.3f} | | |", "",
              "| style | style mAP@10: style descriptor | style mAP@10: content embedding |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {s:.3f} | {c:.3f} |" for name, s, c in per_style]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    np.savez(args.save, style=descriptor, content=content_emb, stats=stats, style_label=style, content_label=content,
             styles=np.array(list(STYLES)))


def _class_map(sims: np.ndarray, query_mask: np.ndarray, same_style: np.ndarray, same_content: np.ndarray,
               k: int = 10) -> float:
    """Style mAP@k of the queries in `query_mask`, given their similarity rows."""
    aps = []
    for row, i in zip(sims, np.flatnonzero(query_mask), strict=True):
        row = row.copy()
        row[same_content[i]] = -np.inf
        order = np.argsort(-row, kind="stable")[:k]
        hits = same_style[i, order]
        n_rel = int((same_style[i] & ~same_content[i]).sum())
        precision = np.cumsum(hits) / np.arange(1, k + 1)
        aps.append(float((precision * hits).sum() / min(n_rel, k)))
    return float(np.mean(aps))


if __name__ == "__main__":
    main()
