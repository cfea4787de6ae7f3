"""Generator-metadata dev set: every encoding each tool uses, written through PNG, JPEG and WebP with Pillow.

Shared by `tests/curation/test_ai_metadata_devset.py` and `bench/ai_metadata_eval.py`. Each case is (tool, encoding,
format, bytes). EXIF blocks are built byte by byte here (`exif_block`: either byte order, tags in IFD0 or the Exif
IFD, any type), because generators write them with piexif or their own code, not Pillow's writer; payloads default to
the formats the tools document (A1111/SD.Next infotext, ComfyUI API prompt + UI workflow, SwarmUI
`sui_image_params`, InvokeAI, Fooocus, NovelAI), and `real_payloads` swaps in the payloads of the real generator
outputs in `../shared/data/ai_dev` when that folder exists.

How each tool writes its data (from their save code):
- AUTOMATIC1111 / Forge / SD.Next: PNG `parameters` tEXt; JPEG/WebP: Exif IFD UserComment, `UNICODE` charset with
  big-endian UTF-16 (piexif's `UserComment.dump(..., encoding="unicode")`) in a little-endian EXIF block.
- ComfyUI: PNG `prompt` and `workflow` text chunks (JSON); WebP/JPEG save nodes: IFD0 Model (0x0110) =
  "prompt:<json>", Make (0x010F) = "workflow:<json>", or ImageDescription / UserComment = "Workflow: <json>".
- SwarmUI: PNG `parameters` = JSON {"sui_image_params": ...}; JPEG/WebP: the same JSON in UserComment.
- NovelAI: PNG Software="NovelAI", Comment=JSON (+ an alpha-LSB stealth copy); Fooocus: PNG `parameters` JSON +
  `fooocus_scheme`, JPEG/WebP: Software + UserComment; InvokeAI: PNG `invokeai_metadata` (PNG only).
- XMP: IPTC DigitalSourceType, CreatorTool, or the infotext in exif:UserComment (Draw Things style).
- stealth pnginfo: alpha or RGB least significant bits (lossless PNG / WebP only: JPEG destroys it by design).
"""

from __future__ import annotations

import gzip
import io
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

A1111 = ("a lighthouse on a cliff at dusk, oil painting, dramatic sky\nNegative prompt: blurry, lowres\n"
         "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 3141592653, Size: 768x512, Model hash: "
         "31e35c80fc, Model: sd_xl_base_1.0, Version: v1.7.0")
A1111_JA = ("夕暮れの灯台、油絵\nNegative prompt: ぼやけた\n"
            "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x512, Model hash: 6ce0161689")
SDNEXT = ("portrait of a fox in a tweed jacket\nNegative prompt: text, watermark\nSteps: 20, Seed: 1934572091, "
          "Sampler: Default, CFG scale: 6, Size: 1024x1024, Parser: Native, Model: juggernautXL_v9, "
          "Model hash: c9e3e68f89, Backend: Diffusers, App: SD.Next, Version: 8f20e8b, Operations: txt2img")
COMFY_PROMPT = {"3": {"class_type": "KSampler", "inputs": {"seed": 156680208700286, "steps": 20, "cfg": 8,
                                                           "model": ["4", 0]}},
                "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.ckpt"}},
                "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a bottle with a galaxy inside"}}}
COMFY_WORKFLOW = {"last_node_id": 9, "links": [], "version": 0.4,
                  "nodes": [{"id": 3, "type": "KSampler", "widgets_values": [1, "fixed", 20]},
                            {"id": 4, "type": "CheckpointLoaderSimple"}]}
SWARM = {"sui_image_params": {"prompt": "a red panda astronaut", "model": "OfficialStableDiffusion/sd_xl_base_1.0",
                              "seed": 1234, "steps": 30, "cfgscale": 7, "width": 1024, "height": 1024,
                              "swarm_version": "0.9.2.1"},
         "sui_extra_data": {"date": "2024-05-01", "generation_time": "3.1 sec"}}
FOOOCUS = {"prompt": "a cozy cabin in the snow", "negative_prompt": "", "styles": "['Fooocus V2']",
           "performance": "Speed", "steps": 30, "resolution": "(1152, 896)", "version": "Fooocus v2.3.1"}
INVOKE = {"generation_mode": "txt2img", "positive_prompt": "a watercolor city", "seed": 7, "steps": 30,
          "model": {"name": "stable-diffusion-v1-5"}, "app_version": "3.6.0"}
NOVELAI = {"prompt": "1girl, masterpiece", "steps": 28, "scale": 5.0, "seed": 1, "sampler": "k_euler_ancestral",
           "uc": "lowres"}

FORMATS = ("PNG", "JPEG", "WEBP")

# EXIF tags
IMAGE_DESCRIPTION, MAKE, MODEL, SOFTWARE, EXIF_IFD, USER_COMMENT, XP_COMMENT = (
    0x010E, 0x010F, 0x0110, 0x0131, 0x8769, 0x9286, 0x9C9C)
ASCII, UNDEFINED, BYTE, LONG = 2, 7, 1, 4


def user_comment(text: str, charset: str) -> bytes:
    """An EXIF UserComment: 8-byte charset prefix, then the text in that charset."""
    if charset == "ascii":
        return b"ASCII\0\0\0" + text.encode("ascii", "replace")
    if charset == "unicode-be":
        return b"UNICODE\0" + text.encode("utf-16-be")
    if charset == "unicode-le":
        return b"UNICODE\0" + text.encode("utf-16-le")
    if charset == "unicode-bom":
        return b"UNICODE\0" + text.encode("utf-16")  # BOM + native order
    if charset == "jis":
        return b"JIS\0\0\0\0\0" + text.encode("iso2022_jp")
    if charset == "jis-sjis":
        return b"JIS\0\0\0\0\0" + text.encode("shift_jis")
    if charset == "undefined":
        return b"\0" * 8 + text.encode("utf-8")
    if charset == "none":  # no prefix at all: the raw text
        return text.encode("utf-8")
    raise ValueError(charset)


def exif_block(ifd0: dict[int, tuple[int, bytes]], exif_ifd: dict[int, tuple[int, bytes]] | None = None,
               big_endian: bool = False) -> bytes:
    """A TIFF-structured EXIF block (what JPEG APP1 after "Exif\\0\\0", the PNG eXIf chunk and WebP's EXIF chunk
    hold): IFD0 entries, and an Exif sub-IFD when given. Values are (type, raw bytes); ASCII gets its NUL here."""
    e = ">" if big_endian else "<"
    entries0 = dict(ifd0)
    if exif_ifd:
        entries0[EXIF_IFD] = (LONG, b"")  # offset patched below

    def ifd_size(entries):
        return 2 + 12 * len(entries) + 4

    def data_size(entries):
        total = 0
        for typ, raw in entries.values():
            n = len(raw) + (1 if typ == ASCII else 0)
            total += n + (n & 1) if n > 4 else 0
        return total

    off0 = 8
    off_exif = off0 + ifd_size(entries0) + data_size(entries0)

    def write(entries, start, exif_offset=None):
        head = struct.pack(e + "H", len(entries))
        data = b""
        data_at = start + ifd_size(entries)
        for tag in sorted(entries):
            typ, raw = entries[tag]
            if tag == EXIF_IFD:
                head += struct.pack(e + "HHI", tag, LONG, 1) + struct.pack(e + "I", exif_offset)
                continue
            if typ == ASCII:
                raw = raw + b"\0"
            count = len(raw)
            if count <= 4:
                head += struct.pack(e + "HHI", tag, typ, count) + raw.ljust(4, b"\0")
            else:
                head += struct.pack(e + "HHI", tag, typ, count) + struct.pack(e + "I", data_at + len(data))
                data += raw + (b"\0" if count & 1 else b"")
        return head + struct.pack(e + "I", 0) + data

    out = (b"MM\0*" if big_endian else b"II*\0") + struct.pack(e + "I", off0)
    out += write(entries0, off0, off_exif)
    if exif_ifd:
        out += write(exif_ifd, off_exif)
    return out


def base_image(seed: int = 0, size: tuple[int, int] = (320, 256)) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[1], 0:size[0]]
    rgb = np.stack([x * 255 // size[0], y * 255 // size[1], (x + y + 40 * seed) % 256], -1)
    rgb = rgb + rng.integers(0, 30, rgb.shape)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


def hide_stealth(img: Image.Image, text: str, mode: str = "alpha", compressed: bool = True) -> Image.Image:
    """The stealth-pnginfo extension's layout: signature, 32-bit length in bits, payload; column-major LSBs."""
    payload = gzip.compress(text.encode()) if compressed else text.encode()
    kind = ("png" if mode == "alpha" else "rgb") + ("comp" if compressed else "info")
    bits = np.unpackbits(np.frombuffer(f"stealth_{kind}".encode() + (len(payload) * 8).to_bytes(4, "big")
                                       + payload, np.uint8))
    if mode == "alpha":
        arr = np.array(img.convert("RGBA"))
        plane = np.ascontiguousarray(arr[..., 3].swapaxes(0, 1)).reshape(-1)
        plane[: len(bits)] = (plane[: len(bits)] & 0xFE) | bits
        arr[..., 3] = plane.reshape(arr.shape[1], arr.shape[0]).swapaxes(0, 1)
        return Image.fromarray(arr, "RGBA")
    arr = np.array(img.convert("RGB"))
    flat = np.ascontiguousarray(arr.swapaxes(0, 1)).reshape(-1)
    flat[: len(bits)] = (flat[: len(bits)] & 0xFE) | bits
    return Image.fromarray(np.ascontiguousarray(flat.reshape(arr.shape[1], arr.shape[0], 3).swapaxes(0, 1)), "RGB")


def save(img: Image.Image, fmt: str, exif: bytes | None = None, xmp: str | None = None,
         text: dict[str, str] | None = None) -> bytes:
    """Encode with Pillow; PNG text chunks via PngInfo (iTXt when not Latin-1), EXIF/XMP where the format has them."""
    buf = io.BytesIO()
    kwargs: dict = {}
    if exif is not None:
        kwargs["exif"] = exif
    if xmp is not None:
        kwargs["xmp"] = xmp.encode()
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        for key, value in (text or {}).items():
            try:
                value.encode("latin-1")
                info.add_text(key, value)
            except UnicodeEncodeError:
                info.add_itxt(key, value)
        if xmp is not None:
            info.add_itxt("XML:com.adobe.xmp", xmp)
            kwargs.pop("xmp")
        kwargs["pnginfo"] = info
    elif fmt == "JPEG":
        img = img.convert("RGB")
        kwargs["quality"] = 92
        if exif is not None:  # APP1 holds the "Exif\0\0" identifier, then the TIFF structure
            kwargs["exif"] = b"Exif\0\0" + exif
    elif fmt == "WEBP":
        kwargs["lossless"] = True
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def xmp_packet(inner: str) -> str:
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
            '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">' + inner +
            '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>')


@dataclass(frozen=True)
class Case:
    tool: str
    encoding: str
    fmt: str
    data: bytes


@dataclass
class Payloads:
    a1111: str = A1111
    sdnext: str = SDNEXT
    comfy_prompt: str = json.dumps(COMFY_PROMPT)
    comfy_workflow: str = json.dumps(COMFY_WORKFLOW)
    swarm: str = json.dumps(SWARM)
    fooocus: str = json.dumps(FOOOCUS)
    invoke: str = json.dumps(INVOKE)
    novelai: str = json.dumps(NOVELAI)
    source: str = "documented formats"


def real_payloads(ai_dev: Path) -> Payloads | None:
    """The payloads of real generator outputs in `ai_dev` (A1111, ComfyUI, Fooocus, InvokeAI, NovelAI); SwarmUI and
    SD.Next keep the documented ones (no real sample of theirs is in the folder)."""
    if not ai_dev.is_dir():
        return None

    def text(name: str) -> dict:
        with Image.open(ai_dev / "ai" / name) as im:
            return dict(getattr(im, "text", {}) or {})

    try:
        a1111 = text("sd-parsers/automatic1111_cropped.png")["parameters"]
        comfy = text("comfyui-examples/sdxlturbo_example.png")
        fooocus = text("sd-parsers/fooocus1_cropped.png")
        invoke = text("sd-parsers/invokeai_imeta1.png")
        novel = text("sd-parsers/novelai1_cropped.png")
    except (OSError, KeyError):
        return None
    return Payloads(a1111=a1111, comfy_prompt=comfy["prompt"], comfy_workflow=comfy["workflow"],
                    fooocus=fooocus.get("parameters", Payloads.fooocus), invoke=invoke.get("invokeai_metadata",
                                                                                          Payloads.invoke),
                    novelai=novel.get("Comment", Payloads.novelai), source=str(ai_dev))


def cases(payloads: Payloads | None = None, seed: int = 0) -> list[Case]:
    """Every (tool, encoding) through every format that can carry it."""
    p = payloads or Payloads()
    img = base_image(seed)
    out: list[Case] = []

    def add(tool, encoding, fmts=FORMATS, image=None, **kw):
        for fmt in fmts:
            out.append(Case(tool, encoding, fmt, save(image or img, fmt, **kw)))

    def uc(text, charset, where="exif_ifd", big_endian=False):
        raw = user_comment(text, charset)
        if where == "ifd0":
            return exif_block({USER_COMMENT: (UNDEFINED, raw)}, big_endian=big_endian)
        return exif_block({}, {USER_COMMENT: (UNDEFINED, raw)}, big_endian=big_endian)

    add("automatic1111", "png:parameters", ("PNG",), text={"parameters": p.a1111})
    for charset in ("unicode-be", "unicode-le", "unicode-bom", "ascii", "undefined", "none"):
        for where in ("exif_ifd", "ifd0"):
            for be in (False, True):
                add("automatic1111", f"exif:UserComment[{charset},{where},{'MM' if be else 'II'}]",
                    exif=uc(p.a1111, charset, where, be))
    for charset in ("unicode-be", "jis", "jis-sjis", "undefined"):
        add("automatic1111", f"exif:UserComment[{charset},japanese prompt]", exif=uc(A1111_JA, charset))
    add("automatic1111", "exif:ImageDescription", exif=exif_block({IMAGE_DESCRIPTION: (ASCII, p.a1111.encode())}))
    add("automatic1111", "exif:XPComment", exif=exif_block({XP_COMMENT: (BYTE, p.a1111.encode("utf-16-le"))}))
    add("sdnext", "png:parameters", ("PNG",), text={"parameters": p.sdnext})
    add("sdnext", "exif:UserComment[unicode-be]", exif=uc(p.sdnext, "unicode-be"))

    add("comfyui", "png:prompt+workflow", ("PNG",), text={"prompt": p.comfy_prompt, "workflow": p.comfy_workflow})
    add("comfyui", "png:workflow only", ("PNG",), text={"workflow": p.comfy_workflow})
    add("comfyui", "exif:Model=prompt:/Make=workflow:",
        exif=exif_block({MODEL: (ASCII, ("prompt:" + p.comfy_prompt).encode()),
                         MAKE: (ASCII, ("workflow:" + p.comfy_workflow).encode())}))
    add("comfyui", "exif:ImageDescription=Workflow:",
        exif=exif_block({IMAGE_DESCRIPTION: (ASCII, ("Workflow: " + p.comfy_workflow).encode())}))
    add("comfyui", "exif:UserComment=Prompt:",
        exif=uc("Prompt: " + p.comfy_prompt, "unicode-be"))

    add("swarmui", "png:parameters json", ("PNG",), text={"parameters": p.swarm})
    add("swarmui", "png:sui_image_params", ("PNG",), text={"sui_image_params": p.swarm})
    add("swarmui", "exif:UserComment json", exif=uc(p.swarm, "unicode-be"))

    add("fooocus", "png:parameters+fooocus_scheme", ("PNG",), text={"parameters": p.fooocus, "fooocus_scheme": "a1111"
                                                                     if not p.fooocus.lstrip().startswith("{")
                                                                     else "fooocus"})
    add("fooocus", "exif:Software+UserComment",
        exif=exif_block({SOFTWARE: (ASCII, b"Fooocus v2.3.1")}, {USER_COMMENT: (UNDEFINED, user_comment(
            p.fooocus, "unicode-be"))}))
    add("invokeai", "png:invokeai_metadata", ("PNG",), text={"invokeai_metadata": p.invoke})
    add("novelai", "png:Software+Comment", ("PNG",), text={"Software": "NovelAI", "Comment": p.novelai})
    add("novelai", "exif:Software", exif=exif_block({SOFTWARE: (ASCII, b"NovelAI")}))

    add("xmp", "DigitalSourceType", xmp=xmp_packet(
        '<rdf:Description xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" Iptc4xmpExt:DigitalSource'
        'Type="http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"/>'))
    add("xmp", "CreatorTool", xmp=xmp_packet(
        '<rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:CreatorTool="Midjourney"/>'))
    add("xmp", "exif:UserComment infotext", xmp=xmp_packet(
        '<rdf:Description xmlns:exif="http://ns.adobe.com/exif/1.0/"><exif:UserComment><rdf:Alt><rdf:li '
        'xml:lang="x-default">' + p.a1111.replace("&", "&amp;").replace("<", "&lt;") +
        '</rdf:li></rdf:Alt></exif:UserComment></rdf:Description>'))

    for mode in ("alpha", "rgb"):
        for compressed in (True, False):
            stealth = hide_stealth(img, p.a1111, mode, compressed)
            add("stealth", f"{mode} lsb{' gzip' if compressed else ''}", ("PNG", "WEBP"), image=stealth)
    return out


def negatives(seed: int = 0) -> list[Case]:
    """Camera and editor metadata that must not read as a generator, through every format."""
    img = base_image(seed + 1)
    out = []
    for fmt in FORMATS:
        out.append(Case("none", "camera exif", fmt, save(img, fmt, exif=exif_block(
            {MAKE: (ASCII, b"NIKON CORPORATION"), MODEL: (ASCII, b"NIKON D750"),
             SOFTWARE: (ASCII, b"Adobe Photoshop Lightroom Classic 13.0")},
            {USER_COMMENT: (UNDEFINED, user_comment("Sunset over the lake, 2019", "unicode-be"))}))))
        out.append(Case("none", "editor xmp", fmt, save(img, fmt, xmp=xmp_packet(
            '<rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:CreatorTool="GIMP 2.10"/>'))))
        out.append(Case("none", "prompt-like caption", fmt, save(img, fmt, text={"Description": "a prompt for my "
                                                                                "students: draw a cat"},
                                                                 exif=exif_block({IMAGE_DESCRIPTION: (
                                                                     ASCII, b"Workflow: shot, edit, print")}))))
    return out
