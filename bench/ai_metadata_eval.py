"""Generator-metadata detection per tool, encoding and format (PNG, JPEG, WebP).

    PYTHONPATH=. .venv/bin/python bench/ai_metadata_eval.py [--code-root DIR] [--out bench/results/ai_metadata_eval.md]

Files from `tests/curation/ai_metadata_devset.py`: every encoding each tool writes, through every format that can
carry it, once with the payloads the tools document and once with the payloads of the real generator outputs in
`../shared/data/ai_dev` (A1111, ComfyUI, Fooocus, InvokeAI, NovelAI). Detection = what `exclusion_signals` runs:
`metadata_signals` on the ingest metadata (`probe_image(..., with_metadata=True)`) plus `stealth_signals` on the
decoded pixels. Negatives: the dev set's camera/editor files and every real photo of `corpus_dev` and `ai_dev/real`.
`--code-root` imports `curation` from another checkout (e.g. a `git worktree` of the previous commit) to measure the
detector before a change on the same files. Takes ~20 s.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import io
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--code-root", default=str(REPO))
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--out", default="bench/results/ai_metadata_eval.md")
    args = parser.parse_args()
    sys.path.insert(0, args.code_root)
    from PIL import Image

    from curation.ai_metadata import metadata_signals, stealth_signals
    from curation.image_io import ProbeLimits, probe_image

    # the dev set always comes from this checkout (by path: --code-root has its own `tests` package)
    spec = importlib.util.spec_from_file_location("ai_metadata_devset",
                                                  REPO / "tests" / "curation" / "ai_metadata_devset.py")
    devset = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = devset
    spec.loader.exec_module(devset)
    cases, negatives, real_payloads = devset.cases, devset.negatives, devset.real_payloads

    def detect(data: bytes) -> list[str]:
        facts = probe_image(data, ProbeLimits(min_side=1), with_metadata=True)
        found = metadata_signals({"embedded": facts.metadata or {}, "sidecar": {}})
        img = Image.open(io.BytesIO(data))
        img.load()
        return found + (stealth_signals(img) if img.mode in ("RGB", "RGBA") else [])

    start = time.time()
    data = Path(args.data)
    sets = [("documented", cases())]
    real = real_payloads(data / "ai_dev")
    if real is not None:
        sets.append(("real ai_dev", cases(real)))
    lines = [f"ai metadata detection, {datetime.date.today()}, {os.cpu_count()} cores, code from {args.code_root}",
             "", "| payloads | tool | PNG | JPEG | WEBP | missed encodings |", "| --- | --- | --- | --- | --- | --- |"]
    totals = defaultdict(lambda: [0, 0])
    for name, dev in sets:
        per = defaultdict(lambda: defaultdict(lambda: [0, 0]))
        missed = defaultdict(list)
        for case in dev:
            hit = bool(detect(case.data))
            cell = per[case.tool][case.fmt]
            cell[0] += hit
            cell[1] += 1
            totals[name][0] += hit
            totals[name][1] += 1
            if not hit:
                missed[case.tool].append(f"{case.encoding} ({case.fmt})")
        for tool, fmts in per.items():
            cells = [f"{fmts[f][0]}/{fmts[f][1]}" if fmts[f][1] else "-" for f in ("PNG", "JPEG", "WEBP")]
            lines.append(f"| {name} | {tool} | {' | '.join(cells)} | {'; '.join(missed[tool][:6]) or ''} |")
    false_pos, photos = [], 0
    for case in negatives():
        photos += 1
        if detect(case.data):
            false_pos.append(f"{case.encoding} ({case.fmt})")
    for root in (data / "corpus_dev" / "images", data / "ai_dev" / "real"):
        for path in sorted(root.rglob("*")) if root.is_dir() else []:
            if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"):
                photos += 1
                if detect(path.read_bytes()):
                    false_pos.append(path.name)
    lines += ["", *[f"{name}: {hit}/{n} files detected" for name, (hit, n) in totals.items()],
              f"negatives: {len(false_pos)}/{photos} flagged {false_pos}", f"runtime {time.time() - start:.0f} s"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
