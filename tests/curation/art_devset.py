"""A dev set for dedup precision on non-photographic images: distinct pictures nobody would call duplicates, and
true near-copies of them. Shared by `tests/curation/test_dedup_art.py` and `bench/dedup_art_eval.py` so the test and
the BENCHMARKS figures measure the same thing.

Distinct pictures, each from its own seed: abstract gradients (linear and radial, 2-3 stops), flat-colour
compositions (a few rectangles, discs and triangles), line art (strokes and outlines on paper), pixel art (a
mirrored sprite on a palette, upscaled with nearest neighbour), rendered UI screenshots (window chrome, a sidebar,
lines of text, buttons) and posters (a background, shapes, a headline and a subline of words), plus every real image
of `../shared/data` large enough to look at (photos, AI-generated artworks, a cartoon, receipts).

These are the images the embedded CNN embedding places close together (issue 14: cosine 0.91-0.94 between unrelated
flat compositions), so they test whether a semantic candidate is verified before removal. Several kinds share a
template on purpose (every UI screenshot has the same chrome, every poster a headline), as a real crawl does.

Copies (the positives): JPEG re-encode, resize, centre/off-centre crop, horizontal flip, a solid border, a
watermark text, each applied to the original (never to another copy).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

KINDS = ("gradient", "flat", "line_art", "pixel_art", "ui", "poster")
COPY_KINDS = ("jpeg", "resize", "crop", "hflip", "border", "watermark")
WORDS = ("ATELIER", "SUMMER", "NIGHT", "MARKET", "JAZZ", "FESTIVAL", "OPEN", "STUDIO", "GARDEN", "SALE", "RIVER",
         "MODERN", "FORM", "LIGHT", "VOID", "ECHO", "NORTH", "PAPER", "GLASS", "CITY", "ORBIT", "BLOOM", "SIGNAL",
         "DRIFT", "settings", "profile", "search", "upload", "library", "history", "export", "share", "account",
         "inbox", "drafts", "archive", "billing", "members", "reports", "calendar")
REAL_MIN_SIDE = 128
"""Real files smaller than this (the metadata parsers' test crops, the OCR word crops) are not pictures to judge."""


@dataclass
class Item:
    """One image of the dev set: its encoded bytes, the group of its original and what made it."""

    name: str
    group: int  # index of the original: copies share their original's group
    kind: str  # the original's kind (a KINDS entry or "real")
    copy: str  # "original" or a COPY_KINDS entry
    data: bytes


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=max(8, int(size)))


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _size(rng: np.random.Generator) -> tuple[int, int]:
    w = int(rng.integers(384, 641))
    return w, int(w * rng.choice([0.625, 0.75, 1.0, 1.25, 1.5]))


def gradient(rng: np.random.Generator) -> Image.Image:
    w, h = _size(rng)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * np.pi)
        t = (x - w / 2) * np.cos(angle) + (y - h / 2) * np.sin(angle)
    else:
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        t = np.hypot(x - cx, y - cy)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    stops = np.array([_colour(rng) for _ in range(int(rng.integers(2, 4)))], np.float32)
    pos = np.linspace(0, 1, len(stops))
    rgb = np.stack([np.interp(t, pos, stops[:, c]) for c in range(3)], axis=-1)
    if rng.random() < 0.3:  # a grain, as painted or printed gradients have
        rgb += rng.normal(0, 6, rgb.shape)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


def flat(rng: np.random.Generator) -> Image.Image:
    w, h = _size(rng)
    img = Image.new("RGB", (w, h), _colour(rng))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 7))):
        x0, y0 = rng.uniform(-0.2, 0.9) * w, rng.uniform(-0.2, 0.9) * h
        x1, y1 = x0 + rng.uniform(0.15, 0.7) * w, y0 + rng.uniform(0.15, 0.7) * h
        shape = rng.integers(0, 3)
        if shape == 0:
            draw.rectangle((x0, y0, x1, y1), fill=_colour(rng))
        elif shape == 1:
            draw.ellipse((x0, y0, x1, y1), fill=_colour(rng))
        else:
            draw.polygon([(x0, y1), (x1, y1), (rng.uniform(x0, x1), y0)], fill=_colour(rng))
    return img


def line_art(rng: np.random.Generator) -> Image.Image:
    w, h = _size(rng)
    paper = tuple(int(v) for v in rng.integers(225, 256, 3))
    img = Image.new("RGB", (w, h), paper)
    draw = ImageDraw.Draw(img)
    ink = tuple(int(v) for v in rng.integers(0, 60, 3))
    for _ in range(int(rng.integers(3, 9))):
        n = int(rng.integers(3, 8))
        points = [(float(rng.uniform(0.05, 0.95) * w), float(rng.uniform(0.05, 0.95) * h)) for _ in range(n)]
        if rng.random() < 0.3:
            x0, y0 = points[0]
            r = rng.uniform(0.05, 0.25) * min(w, h)
            draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), outline=ink, width=int(rng.integers(2, 6)))
        else:
            draw.line(points, fill=ink, width=int(rng.integers(2, 7)), joint="curve")
    return img


def pixel_art(rng: np.random.Generator) -> Image.Image:
    side = int(rng.choice([12, 16, 20, 24]))
    palette = np.array([_colour(rng) for _ in range(int(rng.integers(3, 7)))], np.uint8)
    half = rng.integers(0, len(palette), (side, (side + 1) // 2))
    half[rng.random(half.shape) < 0.35] = 0  # background pixels, so a figure stands out
    sprite = np.concatenate([half, half[:, ::-1][:, side % 2:]], axis=1)  # mirrored, as sprites are
    scale = int(rng.integers(16, 28))
    return Image.fromarray(palette[sprite], "RGB").resize((side * scale, side * scale), Image.Resampling.NEAREST)


def _words(rng: np.random.Generator, k: int) -> str:
    return " ".join(str(w) for w in rng.choice(WORDS, size=k))


def ui(rng: np.random.Generator) -> Image.Image:
    w, h = int(rng.integers(560, 721)), int(rng.integers(380, 481))
    dark = rng.random() < 0.4
    bg = (32, 34, 40) if dark else (246, 247, 249)
    fg = (220, 222, 228) if dark else (30, 32, 38)
    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, w, 28), fill=(60, 62, 70) if dark else (222, 224, 228))  # the shared chrome
    for k, c in enumerate([(237, 106, 94), (245, 191, 79), (98, 197, 84)]):
        draw.ellipse((10 + 20 * k, 8, 22 + 20 * k, 20), fill=c)
    side = int(rng.integers(120, 200))
    accent = _colour(rng)
    if rng.random() < 0.7:
        draw.rectangle((0, 28, side, h), fill=(44, 46, 54) if dark else (234, 236, 240))
        for k in range(int(rng.integers(4, 10))):
            y = 44 + 30 * k
            if k == int(rng.integers(0, 4)):
                draw.rectangle((6, y - 4, side - 6, y + 20), fill=accent)
            draw.text((16, y), _words(rng, 1), font=_font(15), fill=fg)
        left = side + 20
    else:
        left = 20
    y = 44
    draw.text((left, y), _words(rng, 2).title(), font=_font(int(rng.integers(22, 32))), fill=fg)
    y += 50
    while y < h - 60:
        if rng.random() < 0.2:
            bw = int(rng.integers(80, 160))
            draw.rounded_rectangle((left, y, left + bw, y + 30), radius=6, fill=accent)
            draw.text((left + 10, y + 7), _words(rng, 1), font=_font(14), fill=(255, 255, 255))
            y += 44
        else:
            draw.text((left, y), _words(rng, int(rng.integers(3, 8))), font=_font(14), fill=fg)
            y += 24
    return img


def poster(rng: np.random.Generator) -> Image.Image:
    w = int(rng.integers(400, 561))
    h = int(w * rng.uniform(1.3, 1.5))
    img = gradient(rng).resize((w, h)) if rng.random() < 0.4 else Image.new("RGB", (w, h), _colour(rng))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = rng.uniform(0, 0.7) * w, rng.uniform(0.2, 0.7) * h
        r = rng.uniform(0.1, 0.35) * w
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x0 + r, y0 + r), fill=_colour(rng))
    ink = _colour(rng)
    title = _words(rng, int(rng.integers(1, 3))).upper()
    size = int(w * rng.uniform(0.1, 0.16))
    draw.text((w * 0.07, h * rng.uniform(0.05, 0.2)), title, font=_font(size), fill=ink)
    draw.text((w * 0.07, h * 0.85), _words(rng, 4), font=_font(size * 0.35), fill=ink)
    return img


MAKERS = {"gradient": gradient, "flat": flat, "line_art": line_art, "pixel_art": pixel_art, "ui": ui,
          "poster": poster}


def real_images(data_root: Path) -> list[tuple[str, Image.Image]]:
    """Every image under `data_root` (`../shared/data`) whose short side is at least REAL_MIN_SIDE, sorted by
    path, in RGB with its EXIF orientation applied."""
    from PIL import ImageOps

    out = []
    for path in sorted(data_root.rglob("*")):
        if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
            continue
        with Image.open(path) as img:
            if min(img.size) < REAL_MIN_SIDE:
                continue
            rgb = ImageOps.exif_transpose(img).convert("RGB")
        if max(rgb.size) > 1024:  # the transforms do not need camera resolution
            rgb.thumbnail((1024, 1024), Image.Resampling.LANCZOS)
        out.append((str(path.relative_to(data_root)), rgb))
    return out


def encode(img: Image.Image, fmt: str = "PNG", quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": quality} if fmt == "JPEG" else {"compress_level": 1}))
    return buf.getvalue()


def make_copy(img: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image | bytes:
    """A true near-copy of `img` (bytes for the re-encode, whose bytes are the point)."""
    w, h = img.size
    if kind == "jpeg":
        return encode(img, "JPEG", int(rng.integers(45, 80)))
    if kind == "resize":
        f = rng.uniform(0.4, 0.7)
        return img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.LANCZOS)
    if kind == "crop":
        frac = rng.uniform(0.06, 0.15)
        cw, ch = round(w * (1 - 2 * frac)), round(h * (1 - 2 * frac))
        x = int(rng.integers(0, w - cw + 1))
        y = int(rng.integers(0, h - ch + 1))
        return img.crop((x, y, x + cw, y + ch))
    if kind == "hflip":
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if kind == "border":
        b = max(2, round(min(w, h) * rng.uniform(0.03, 0.08)))
        out = Image.new("RGB", (w + 2 * b, h + 2 * b), _colour(rng) if rng.random() < 0.5 else (255, 255, 255))
        out.paste(img, (b, b))
        return out
    if kind == "watermark":
        layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        text = "© " + str(rng.choice(["artstation", "atelier.art", "my_portfolio", "stock preview"]))
        size = max(10, min(w, h) // 14)
        x = float(rng.uniform(0.03, 0.5)) * w
        y = float(rng.choice([0.04, 0.88])) * h
        draw.text((x, y), text, font=_font(size), fill=(255, 255, 255, 170), stroke_width=1,
                  stroke_fill=(0, 0, 0, 120))
        return Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB")
    raise ValueError(kind)


def generate(per_kind: int, seed: int = 0, data_root: Path | None = None, copies_per_original: int = 2,
             real_limit: int | None = None) -> Iterator[Item]:
    """The dev set, original by original: `per_kind` synthetic pictures of each of KINDS (interleaved), then the
    real images of `data_root`, each followed by its copies. Copy kinds rotate so that each is applied about
    equally often to every kind of original."""
    originals: list[tuple[str, str, Image.Image | None, int]] = []
    for k in range(per_kind):
        for kind_index, kind in enumerate(KINDS):
            originals.append((f"{kind}_{k:04d}", kind, None, k * len(KINDS) + kind_index))
    reals = real_images(data_root) if data_root is not None and data_root.is_dir() else []
    for name, img in reals[:real_limit]:
        originals.append((name, "real", img, -1))
    for group, (name, kind, img, stream) in enumerate(originals):
        rng = np.random.default_rng([seed, group])
        if img is None:
            img = MAKERS[kind](np.random.default_rng([seed, 1_000_003, stream]))
        yield Item(name, group, kind, "original", encode(img))
        for c in range(copies_per_original):
            copy_kind = COPY_KINDS[(group + c * 3) % len(COPY_KINDS)]
            made = make_copy(img, copy_kind, rng)
            yield Item(f"{name}#{copy_kind}", group, kind, copy_kind,
                       made if isinstance(made, bytes) else encode(made))


def write(items: list[Item], out: Path) -> None:
    """Save a generated set as files plus `labels.jsonl` (to look at the images)."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "labels.jsonl").open("w") as fh:
        for k, it in enumerate(items):
            ext = "jpg" if it.data[:2] == b"\xff\xd8" else "png"
            file = f"{k:05d}_{it.kind}_{it.copy}.{ext}"
            (out / file).write_bytes(it.data)
            fh.write(json.dumps({"file": file, "name": it.name, "group": it.group, "kind": it.kind,
                                 "copy": it.copy}) + "\n")


def features(items: list[Item], threads: int = 1, batch: int = 64):
    """The items through the production feature path (`FeatureExtractor.process_batch`), as one features table."""
    import hashlib

    import pyarrow as pa

    from curation.embedding import EmbeddingConfig
    from curation.features import FeatureConfig, FeatureExtractor

    extractor = FeatureExtractor(FeatureConfig(embedding=EmbeddingConfig(threads=threads)))
    extractor.setup()
    tables = []
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        sizes = []
        for it in chunk:
            with Image.open(io.BytesIO(it.data)) as img:
                sizes.append(img.size)
        n = len(chunk)
        tables.append(extractor.process_batch(pa.table({
            "sample_id": [hashlib.sha256(it.data).hexdigest() for it in chunk],
            "source": ["art_devset"] * n,
            "source_uri": [it.name for it in chunk],
            "width": pa.array([w for w, _ in sizes], pa.int32()),
            "height": pa.array([h for _, h in sizes], pa.int32()),
            "byte_size": pa.array([len(it.data) for it in chunk], pa.int64()),
            "format": ["JPEG" if it.data[:2] == b"\xff\xd8" else "PNG" for it in chunk],
            "image": pa.array([it.data for it in chunk], pa.binary()),
        })))
    return pa.concat_tables(tables)


def candidates(table):
    """`curation.dedup.Candidates` of a features table, as the dedup asset builds them."""
    import pyarrow.compute as pc

    from curation.dedup import Candidates
    from curation.features import embedding_matrix, orientation_matrix

    return Candidates(
        sample_ids=table.column("sample_id").to_pylist(), source_uris=table.column("source_uri").to_pylist(),
        orientations=orientation_matrix(table), embeddings=embedding_matrix(table),
        pixels=pc.multiply(table.column("width").cast("int64"), table.column("height").cast("int64")).to_numpy(),
        byte_size=table.column("byte_size").to_numpy(), thumbnails=table.column("verify_thumbnail").to_pylist())


@dataclass
class Outcome:
    """What a dedup run did to a labelled set."""

    false_removals: int  # rows removed as a copy of a row of ANOTHER group: distinct pictures lost
    copies_found: int  # rows removed as a copy of a row of their own group
    copies: int  # rows that should be removed: group size - 1, summed over groups
    rows: int
    groups: int
    missed_by_kind: dict[str, int]  # copy kind -> copies kept although their group has a kept row

    @property
    def recall(self) -> float:
        return self.copies_found / max(self.copies, 1)

    @property
    def distinct_removed(self) -> float:
        return self.false_removals / max(self.groups, 1)


def outcome(items: list[Item], keep, decisions) -> Outcome:
    """Score a keep mask and its dedup decisions against the groups of `items` (source uri = item name)."""
    group_of = {it.name: it.group for it in items}
    false_removals = found = 0
    for d in decisions:
        if group_of[d.details["representative_uri"]] == group_of[d.source_uri]:
            found += 1
        else:
            false_removals += 1
    sizes: dict[int, int] = {}
    kept: dict[int, int] = {}
    for it, k in zip(items, keep, strict=True):
        sizes[it.group] = sizes.get(it.group, 0) + 1
        kept[it.group] = kept.get(it.group, 0) + bool(k)
    missed: dict[str, int] = {}
    for it, k in zip(items, keep, strict=True):
        if k and kept[it.group] > 1 and it.copy != "original":
            missed[it.copy] = missed.get(it.copy, 0) + 1
    return Outcome(false_removals, found, sum(s - 1 for s in sizes.values()), len(items), len(sizes), missed)
