"""`curate attribute IMAGE... --storage DIR`: which indexed creators' styles an image (a generation, any file) shows.

One JSON line per image, `{"path", "creators": [{"creator", "share", "similarity"}], "unattributed",
"index_version", "descriptor"}`: the input of a royalties ledger. The shares and `unattributed` sum to 1, and the
same index version gives the same line for the same bytes (the descriptor is computed exactly as
`style_embeddings` computes it; `curation.style.creators` says how the shares are calibrated).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif", ".heic"}


def image_paths(paths: list[str]) -> list[str]:
    """Files as given; directories searched recursively for image files (sorted)."""
    out = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out += sorted(str(f) for f in path.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        else:
            out.append(p)
    return out


def attribute_files(storage: str, paths: list[str], top: int = 5, style_weights: str | None = None,
                    style_model: str = "") -> list[dict[str, Any]]:
    """Attribution of each file against the storage's creator index (errors are reported per file).

    Args:
        style_weights: the local weights of a `clip` / `csd` index's descriptor (its name holds only their hash;
            relative paths resolve under `ATELIER_WEIGHTS_DIR`), and `style_model` the open_clip architecture of a
            `clip` checkpoint file. Unused by the bundled default.

    Raises:
        SystemExit: no creator index under `storage`, or style weights missing or not the index's.
    """
    from assets.creator_style_index import load_creator_index
    from curation.features import EMBED_SIDE, _reduce
    from curation.image_io import load_rgb_reduced
    from curation.style.descriptor import config_from_name, load_style_embedder
    from orchestration.storage import TableStore

    index = load_creator_index(TableStore(storage))
    if index is None:
        raise SystemExit(f"no creator index under {storage}: run `curate run --select '*creator_style_index'` first")
    if style_weights:
        from orchestration.resources import ModelSettings

        style_weights = ModelSettings().resolve(style_weights)
    try:
        config = config_from_name(index.descriptor, weights=style_weights, model=style_model, batch_size=1)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"creator index under {storage}: {exc}") from exc
    embedder = load_style_embedder(config)
    version = index.version()
    results = []
    for path in image_paths(paths):
        line: dict[str, Any] = {"path": path}
        try:
            image = _reduce(load_rgb_reduced(Path(path).read_bytes(), 2 * EMBED_SIDE))
        except Exception as exc:  # an unreadable file is that file's answer, not the batch's
            line["error"] = f"{type(exc).__name__}: {exc}"
            results.append(line)
            continue
        style, _ = embedder.embed([image])
        line.update(index.attribute(style, top=top)[0])
        line.update({"index_version": version, "descriptor": index.descriptor})
        results.append(line)
    return results


def cmd_attribute(args: argparse.Namespace) -> int:
    """The subcommand: JSON lines (`--json`) or one readable line per image."""
    results = attribute_files(args.storage, args.images, args.top, args.style_weights, args.style_model)
    for r in results:
        if args.json or "error" in r:
            print(json.dumps(r, ensure_ascii=False), file=sys.stdout if "error" not in r else sys.stderr)
            continue
        shares = ", ".join(f"{c['creator']} {c['share']:.1%} (sim {c['similarity']:.3f})" for c in r["creators"])
        print(f"{r['path']}: unattributed {r['unattributed']:.1%}; {shares}  [index {r['index_version']}]")
    return 1 if any("error" in r for r in results) else 0


def add_parser(sub) -> None:
    """Register `attribute` on the `curate` subparsers."""
    import os

    p = sub.add_parser("attribute", help="one JSON line per image: creators whose style it shows, with shares")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or directories (searched recursively)")
    p.add_argument("--storage", default=os.environ.get("ATELIER_STORAGE", "data"), help="storage root (dir/URI)")
    p.add_argument("--top", type=int, default=5, help="creators that compete for the shares (default 5)")
    p.add_argument("--json", action="store_true", help="JSON lines (the royalties-ledger input)")
    p.add_argument("--style-weights", default=os.environ.get("ATELIER_STYLE_WEIGHTS"), metavar="PATH",
                   help="weights of a clip/csd style index (its descriptor names only their hash)")
    p.add_argument("--style-model", default="", metavar="ARCH",
                   help="open_clip architecture of a clip checkpoint file (e.g. ViT-L-14-quickgelu)")
    p.set_defaults(func=cmd_attribute)
