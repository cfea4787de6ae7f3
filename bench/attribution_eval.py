"""Creator attribution, leave-one-out: top-1 / top-5 creator accuracy, and the `unattributed` share of unseen styles.

    .venv/bin/python bench/style_eval.py            # renders and embeds, saves bench/results/style_vectors.npz
    .venv/bin/python bench/attribution_eval.py [--vectors bench/results/style_vectors.npz] [--calibration 60]

No creator-labelled artworks are available offline, so each synthetic style of `bench/style_eval.py` is a creator
(9 creators x 37 images, every image a different photo: a creator's images share a style, not a content).
- Seen creators: each image is attributed against an index built WITHOUT it (its creator's prototypes rebuilt from
  the other 36, the calibration redone on that index, with `--calibration` leave-one-out samples): top-1 / top-5 of
  the creator ranking against chance (1/9, 5/9), and the image's `unattributed` share.
- Unseen creators: for each creator, an index of the 8 others; every image of the left-out creator is attributed,
  and its `unattributed` share is what a royalties ledger would not pay anyone.
The same protocol with the content embedding as the descriptor shows what the style descriptor adds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.style.creators import CreatorIndexConfig, build_creator_index  # noqa: E402


def evaluate(vectors: np.ndarray, labels: np.ndarray, names: list[str], config: CreatorIndexConfig) -> dict:
    ids = [f"{i:064x}" for i in range(len(vectors))]
    vec = dict(zip(ids, vectors, strict=True))
    creators = {sid: (names[labels[i]], names[labels[i]]) for i, sid in enumerate(ids)}
    top1 = top5 = 0
    seen_u, unseen_u, unseen_top = [], [], []
    for i, sid in enumerate(ids):
        without = {s: c for s, c in creators.items() if s != sid}
        index, _ = build_creator_index(without, vec, "bench", config)
        result = index.attribute(vectors[i:i + 1], top=len(names))[0]
        ranked = [c["creator"] for c in result["creators"]]
        truth = names[labels[i]]
        top1 += ranked[0] == truth
        top5 += truth in ranked[:5]
        seen_u.append(result["unattributed"])
    for c, name in enumerate(names):
        others = {s: v for s, v in creators.items() if v[0] != name}
        index, _ = build_creator_index(others, vec, "bench", config)
        members = np.flatnonzero(labels == c)
        for r in index.attribute(vectors[members], top=5):
            unseen_u.append(r["unattributed"])
            unseen_top.append(r["creators"][0]["share"])
    n = len(ids)
    return {"top1": top1 / n, "top5": top5 / n, "seen_unattributed_mean": float(np.mean(seen_u)),
            "seen_unattributed_over_half": float(np.mean(np.array(seen_u) > 0.5)),
            "unseen_unattributed_mean": float(np.mean(unseen_u)),
            "unseen_unattributed_over_half": float(np.mean(np.array(unseen_u) > 0.5)),
            "unseen_top_share_mean": float(np.mean(unseen_top))}


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", default=str(repo / "bench" / "results" / "style_vectors.npz"))
    parser.add_argument("--calibration", type=int, default=60)
    parser.add_argument("--out", default=str(repo / "bench" / "results" / "attribution_eval.md"))
    args = parser.parse_args()
    data = np.load(args.vectors)
    names = [str(s) for s in data["styles"]]
    labels = data["style_label"]
    config = CreatorIndexConfig(calibration_samples=args.calibration)
    lines = [f"{len(names)} creators x {np.bincount(labels).min()} images, chance top-1 {1 / len(names):.3f}, "
             f"top-5 {min(5, len(names)) / len(names):.3f}; {args.calibration} LOO calibration samples per index.",
             "", "| descriptor | top-1 | top-5 | unattributed, seen creator (mean / share > 0.5) | unattributed, "
             "unseen creator (mean / share > 0.5) | unseen: top creator's share | seconds |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for title, key in (("style descriptor", "style"), ("content embedding", "content")):
        t0 = time.perf_counter()
        m = evaluate(data[key].astype(np.float32), labels, names, config)
        lines.append(f"| {title} | {m['top1']:.3f} | {m['top5']:.3f} | {m['seen_unattributed_mean']:.3f} / "
                     f"{m['seen_unattributed_over_half']:.3f} | {m['unseen_unattributed_mean']:.3f} / "
                     f"{m['unseen_unattributed_over_half']:.3f} | {m['unseen_top_share_mean']:.3f} | "
                     f"{time.perf_counter() - t0:.0f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
