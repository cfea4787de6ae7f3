"""Build the bundled sample corpus, deterministically, from the licensed images of ../shared/data/corpus_dev.

    python examples/make_corpus.py [--shared ../shared/data/corpus_dev] [--out examples/corpus]

Drops written (each is one partition of `source_images`):
  photos/       real CC0 / public-domain / CC-BY-4.0 photos (downscaled), with a metadata.jsonl sidecar
  variants/     near-duplicates (re-encode, resize, crop, flip, grayscale), an exact copy, images with text, odd modes
                (CMYK, 16-bit, palette+transparency, animated GIF/WebP, EXIF-rotated), a wrong extension, sidecars
  hostile/      zero bytes, truncated files, non-image bytes, SVG, a decompression bomb, a tiny image, an orphan
                sidecar, a symlink leaving the drop
  webdataset/   img2dataset-layout tar shards, one with hostile member paths, one truncated
  manifest.parquet  a Parquet manifest: image bytes, relative paths, a missing path, a URL, an empty row
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont, ImageOps

HERE = Path(__file__).resolve().parent
MAX_SIDE = 384
EXCLUDED = {"red_cartoon"}  # distributed "with permission", not under an open licence: not redistributed here


def _jpeg(img: Image.Image, quality: int = 85, **kw) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB" if img.mode not in ("RGB", "L", "CMYK") else img.mode).save(buf, "JPEG", quality=quality,
                                                                                  optimize=False, **kw)
    return buf.getvalue()


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=False, **kw)
    return buf.getvalue()


def _shrink(img: Image.Image) -> Image.Image:
    img = img.copy()
    img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return img


def _licence(record: dict) -> str:
    if "dreambooth" in record["file"]:
        return "CC-BY-4.0 (google/dreambooth)"
    return record["item_licence"]


def build_photos(shared: Path, out: Path) -> dict[str, Image.Image]:
    out.mkdir(parents=True)
    records = [json.loads(line) for line in (shared / "metadata.jsonl").read_text().splitlines() if line.strip()]
    kept: dict[str, Image.Image] = {}
    lines = []
    for rec in records:
        stem = Path(rec["file"]).stem
        if stem.split("__")[0] in EXCLUDED:
            continue
        img = Image.open(shared / rec["file"])
        img.load()
        small = _shrink(img)
        if stem == "text" or small.mode in ("RGBA", "LA", "P"):  # keep line art and transparency lossless
            name, data = f"{stem}.png", _png(small)
        else:
            name, data = f"{stem}.jpg", _jpeg(small)
        (out / name).write_bytes(data)
        kept[stem] = Image.open(io.BytesIO(data)).convert("RGB")
        lines.append(json.dumps({
            "file_name": name,
            "title": rec.get("title"),
            "caption": rec.get("caption_from_source"),
            "licence": _licence(rec),
            "credit": rec.get("credit"),
            "original": f"{rec['source_repo']}@{rec['commit'][:12]}:{rec['file']}",
            "note": f"downscaled to at most {MAX_SIDE} px",
        }, ensure_ascii=False))
    (out / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return kept


def _text_image(lines: list[str], size: tuple[int, int], bg: tuple[int, int, int], fg: tuple[int, int, int],
                font_size: int) -> Image.Image:
    img = Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=font_size)
    y = size[1] // 6
    for line in lines:
        draw.text((size[0] // 12, y), line, fill=fg, font=font)
        y += int(font_size * 1.5)
    return img


def build_variants(photos: dict[str, Image.Image], photo_dir: Path, out: Path) -> None:
    out.mkdir(parents=True)
    base, other = photos["chelsea"], photos["dog__04"]
    w, h = base.size
    # near-duplicates of one photo
    (out / "chelsea_q40.jpg").write_bytes(_jpeg(base, quality=40))
    (out / "chelsea_half.jpg").write_bytes(_jpeg(base.resize((w // 2, h // 2), Image.Resampling.BILINEAR)))
    (out / "chelsea_crop80.jpg").write_bytes(_jpeg(base.crop((w // 10, h // 10, w - w // 10, h - h // 10))))
    (out / "chelsea_flip.jpg").write_bytes(_jpeg(ImageOps.mirror(base)))
    (out / "dog_gray.jpg").write_bytes(_jpeg(ImageOps.grayscale(other)))
    # an exact copy under another name (same bytes as photos/coffee.jpg)
    shutil.copyfile(photo_dir / "coffee.jpg", out / "coffee_copy.jpg")
    # images with text, for OCR-first captions
    (out / "sign_open.png").write_bytes(_png(_text_image(["OPEN 24 HOURS", "Fresh bread daily"], (384, 192),
                                                         (250, 245, 230), (20, 20, 20), 28)))
    (out / "poster_lecture.jpg").write_bytes(_jpeg(_text_image(
        ["Public Lecture", "The Hubble Deep Field", "Tuesday 7 pm, Room 204"], (384, 256), (15, 30, 80),
        (255, 255, 255), 24), quality=90))
    (out / "poster_lecture.txt").write_text("A poster announcing a public astronomy lecture.\n")
    (out / "poster_lecture.json").write_text(json.dumps({"title": "Lecture poster", "tags": ["poster", "astronomy"],
                                                         "licence": "CC0-1.0 (generated by make_corpus.py)"}))
    # odd modes, each kept with a normalisation note
    (out / "coffee_cmyk.jpg").write_bytes(_jpeg(photos["coffee"].convert("CMYK")))
    gray16 = (np.asarray(ImageOps.grayscale(photos["camera"]), dtype=np.uint16) * 257).astype(np.uint16)
    (out / "camera_16bit.png").write_bytes(_png(Image.fromarray(gray16)))
    pal = photos["coins"].convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    (out / "coins_palette_transparent.png").write_bytes(_png(pal, transparency=0))
    frames = [ImageOps.posterize(photos["rocket"], bits).convert("P", palette=Image.Palette.ADAPTIVE)
              for bits in (8, 4, 2)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=200, loop=0)
    (out / "rocket_animated.gif").write_bytes(buf.getvalue())
    buf = io.BytesIO()
    rgb_frames = [photos["astronaut"].rotate(angle) for angle in (0, 8, 16)]
    rgb_frames[0].save(buf, "WEBP", save_all=True, append_images=rgb_frames[1:], duration=150, quality=70,
                       method=0)
    (out / "astronaut_animated.webp").write_bytes(buf.getvalue())
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: a viewer rotates it 90 degrees clockwise
    exif[0x010F] = "ExampleCam"
    (out / "rocket_rotated_exif.jpg").write_bytes(_jpeg(photos["rocket"].transpose(Image.Transpose.ROTATE_90),
                                                         exif=exif.tobytes()))
    # the bytes win over the extension
    (out / "horse_really_png.jpg").write_bytes(_png(photos["horse"]))
    # sidecars that are not clean
    (out / "gravel_latin1.jpg").write_bytes(_jpeg(photos["gravel"]))
    (out / "gravel_latin1.txt").write_bytes("Gravier gris, photographié à Liège".encode("latin-1"))
    (out / "grass_big_sidecar.jpg").write_bytes(_jpeg(photos["grass"]))
    (out / "grass_big_sidecar.json").write_text(json.dumps({"caption": "grass " * 5000}))
    (out / "brick_bad_json.jpg").write_bytes(_jpeg(photos["brick"]))
    (out / "brick_bad_json.json").write_text('{"caption": "a brick wall", ')


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose header claims an enormous size."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(
        b"IEND", b"")


def build_hostile(photos: dict[str, Image.Image], out: Path) -> None:
    out.mkdir(parents=True)
    good = _jpeg(photos["astronaut"])
    (out / "zero_bytes.jpg").write_bytes(b"")
    (out / "truncated.jpg").write_bytes(good[: len(good) // 2])
    png = _png(photos["coins"])
    (out / "truncated.png").write_bytes(png[: len(png) // 3])
    (out / "not_an_image.jpg").write_bytes(b"This is a text file wearing a .jpg extension.\n" * 4)
    (out / "page.png").write_bytes(b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n")
    (out / "vector.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
                                    '<circle cx="32" cy="32" r="30"/></svg>\n')
    (out / "bomb.png").write_bytes(_bomb_png(100_000, 100_000))
    (out / "tiny.png").write_bytes(_png(photos["horse"].resize((8, 8))))
    corrupt = bytearray(good)
    rng = np.random.default_rng(7)
    corrupt[600:] = rng.integers(0, 256, len(corrupt) - 600, dtype=np.uint8).tobytes()
    (out / "corrupt_body.jpg").write_bytes(bytes(corrupt))
    (out / "orphan.json").write_text(json.dumps({"caption": "metadata for an image that is not here"}))
    os.symlink("../../make_corpus.py", out / "escapes_root.jpg")


def _add(tf: tarfile.TarFile, name: str, data: bytes, kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mtime, info.uid, info.gid, info.mode, info.type, info.linkname = 0, 0, 0, 0o644, kind, link
    tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def build_webdataset(photos: dict[str, Image.Image], out: Path) -> None:
    out.mkdir(parents=True)
    subjects = ["cat__04", "teapot__03", "vase__04", "clock__05", "can__03", "duck_toy__00"]
    with tarfile.open(out / "shard-00000.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
        for i, stem in enumerate(subjects):
            key = f"{i:05d}"
            _add(tf, f"{key}.jpg", _jpeg(photos[stem]))
            _add(tf, f"{key}.json", json.dumps({"key": key, "caption": stem.split("__")[0].replace("_", " "),
                                                "url": f"https://example.org/{stem}.jpg",
                                                "licence": "CC-BY-4.0 (google/dreambooth)"}).encode())
            _add(tf, f"{key}.txt", f"a photo of a {stem.split('__')[0].replace('_', ' ')}".encode())
        _add(tf, "../escape.jpg", _jpeg(photos["cat__04"]))
        _add(tf, "/etc/evil.jpg", _jpeg(photos["cat__04"]))
        _add(tf, "00099.jpg", b"", kind=tarfile.SYMTYPE, link="/etc/passwd")
        _add(tf, "00100.json", json.dumps({"caption": "a record whose image failed to download"}).encode())
    with tarfile.open(out / "shard-00001.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
        for i, stem in enumerate(["dog2__00", "dog3__05", "dog5__01", "dog6__00"]):
            _add(tf, f"{100 + i:05d}.jpg", _jpeg(photos[stem]))
            _add(tf, f"{100 + i:05d}.txt", f"a photo of a dog ({stem})".encode())
    whole = (out / "shard-00001.tar").read_bytes()
    (out / "shard-00001.tar").write_bytes(whole[: int(len(whole) * 0.6)])  # cut mid-member: a truncated download


def build_manifest(photos: dict[str, Image.Image], out_file: Path) -> None:
    rows = [
        {"image": _jpeg(photos[stem]), "path": None, "caption": cap, "licence": "CC-BY-4.0 (google/dreambooth)"}
        for stem, cap in (("backpack__00", "a backpack"), ("berry_bowl__03", "a bowl of berries"),
                          ("monster_toy__01", "a monster toy"), ("robot_toy__01", "a robot toy"))
    ]
    rows += [
        {"image": None, "path": "photos/chelsea.jpg", "caption": "the same cat, referenced by path", "licence": None},
        {"image": None, "path": "photos/does_not_exist.jpg", "caption": "a missing file", "licence": None},
        {"image": None, "path": "https://example.org/remote.jpg", "caption": "never downloaded", "licence": None},
        {"image": None, "path": None, "caption": "a row with no image at all", "licence": None},
    ]
    table = pa.Table.from_pylist(rows, schema=pa.schema([("image", pa.binary()), ("path", pa.string()),
                                                         ("caption", pa.string()), ("licence", pa.string())]))
    pq.write_table(table, out_file, row_group_size=4)


def build_probe_set(ai_dev: Path, out: Path) -> None:
    """AI-generated examples for the demo's `ai_image_probe` (ComfyUI's examples, "permission for any use").

    The screenshot of a node graph (lora.png) is left out: it is not a generated image.
    """
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for path in sorted((ai_dev / "ai" / "comfyui-examples").glob("*.png")):
        if path.name == "lora.png":
            continue
        img = _shrink(Image.open(path).convert("RGB"))
        (out / f"{path.stem}.jpg").write_bytes(_jpeg(img))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared" / "data" / "corpus_dev")
    parser.add_argument("--out", type=Path, default=HERE / "corpus")
    args = parser.parse_args()
    attribution = (args.out / "ATTRIBUTION.md").read_text() if (args.out / "ATTRIBUTION.md").exists() else None
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    photos = build_photos(args.shared, args.out / "photos")
    build_variants(photos, args.out / "photos", args.out / "variants")
    build_hostile(photos, args.out / "hostile")
    build_webdataset(photos, args.out / "webdataset")
    build_manifest(photos, args.out / "manifest.parquet")
    if attribution:
        (args.out / "ATTRIBUTION.md").write_text(attribution)
    ai_dev = args.shared.parent / "ai_dev"
    if ai_dev.is_dir():
        build_probe_set(ai_dev, HERE / "probe" / "ai")


if __name__ == "__main__":
    main()
