"""OCR: text lines with confidence, box and script, in reading order, from a PIL image.

Two backends behind one protocol (`OcrEngine`: `setup()`, `read()`, `read_batch()`):

- `RapidOcrEngine` (default, offline): the PP-OCRv6 small detection and recognition ONNX models bundled in the
  `rapidocr` wheel, run through its onnxruntime sessions, with our own pre- and post-processing. Raw PP-OCRv6
  splits some printed lines into fragments (a lone "@" or "-" becomes its own box, or a box repeats the last
  letter of its neighbour: "k km/h"), misses text that fills a tight crop, and misreads some glyphs at some text
  sizes ("quick" -> "qbuick" at 40-48 px). The pipeline here:

  1. detection on a copy padded with the image's border colour (text touching the edge is found) and scaled so
     that the longer side is `det_max_side` at most, small images upscaled by up to `max_upscale`;
  2. fragments on one baseline (vertical overlap, a gap below `merge_gap` line heights) are merged into one line;
  3. every line is cut from the ORIGINAL image (not the detector's copy) with a margin and resized to the
     recogniser's height with area interpolation when shrinking and cubic when enlarging (the recogniser's own
     bilinear shrink aliases large glyphs); optionally (`second_pass`, off by default) a second crop with a wider
     margin is read too and the reading with the higher mean confidence wins;
  4. when nothing is detected in a small image that is not tall (a tight word crop), it is read as one line;
  5. readings below `min_score` are dropped (and counted), the rest sorted into reading order.

- `PaddleOcrEngine` (production, `paddle` extra): PaddleOCR 3.x with local model directories only.

Reading order: lines are grouped into rows when their vertical extents overlap by at least half the smaller
height (or one's vertical centre lies inside the other); rows go top to bottom by their mean centre, lines within a
row left to right.

Language tag (`script_of`): the majority Unicode script of the letters in a line, from the first word of each
letter's Unicode name: 'latin', 'cyrillic', 'greek', 'arabic', 'hebrew', 'devanagari', 'thai', 'cjk' (Han
ideographs, kana and hangul together) or 'other'; 'und' (undetermined) when the line has no letters (digits and
punctuation only). Ties go to the script listed first here.
"""

from __future__ import annotations

import logging
import os
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

__all__ = ["DETECTION_FIELDS", "OcrConfig", "OcrEngine", "OcrLine", "OcrResult", "PaddleOcrEngine", "RapidOcrEngine",
           "detection_key", "load_engine", "reading_order", "script_of"]


@dataclass(frozen=True)
class OcrConfig:
    """Backend choice, confidence filter, detection and recognition settings."""

    backend: str = "rapidocr"
    """'rapidocr' (embedded PP-OCRv6 ONNX models, offline) or 'paddleocr' (PaddleOCR 3.x, local model dirs)."""
    min_score: float = 0.6
    """Lines whose recognition confidence (mean character probability) is below this are dropped and counted."""
    min_short_score: float = 0.9
    """Readings with fewer than two letters or digits ("8", "m", one CJK glyph) need this confidence: on photos,
    texture read as a lone glyph scores 0.6-0.8, and every kept line becomes a quote the caption must contain."""
    det_max_side: int = 1280
    """The detector sees a copy whose longer side is at most this many pixels (cost grows with area)."""
    det_min_side: int = 640
    """Images whose longer side is below this are upscaled for detection (small text is found more reliably)."""
    max_upscale: float = 3.0
    """Largest upscaling factor applied to a small image before detection."""
    det_pad: float = 0.25
    """Border added before detection, as a fraction of the shorter side (at least 8 px), in the border's colour."""
    det_thresh: float = 0.3
    """DB detector: pixel probability above which a pixel is text."""
    det_box_thresh: float = 0.5
    """DB detector: mean probability inside a box below which the box is discarded."""
    det_unclip_ratio: float = 1.6
    """DB detector: how far a shrunk text region is expanded back into a box."""
    merge_lines: bool = True
    """Merge detected fragments that sit on one baseline into one line before recognition."""
    merge_gap: float = 1.0
    """Largest horizontal gap between two fragments to merge, in line heights (columns further apart stay apart)."""
    rec_height: int = 48
    """Line crops are resized to this height before recognition (the PP-OCR recogniser's input height)."""
    crop_margin: float = 0.1
    """Margin added around a line box when cutting it out, as a fraction of the line height."""
    second_pass: bool = False
    """Also read each line from a crop with a wider margin (`second_margin`) and keep the more confident reading.
    Off by default: on ocr_dev receipts the wider crop lets neighbouring rows in and the more confident reading is
    not always the right one (CER 0.035 -> 0.046); on the printed set it changed nothing."""
    second_margin: float = 0.3
    """Margin of the second-pass crop, as a fraction of the line height."""
    whole_image_fallback: bool = True
    """Also read a small, not tall image (a word crop) whole as one line, and keep that reading when it is at least
    as confident as the detected lines on average (or nothing was detected)."""
    fallback_max_side: int = 256
    """The whole-image reading applies only to images whose longer side is at most this (not to photos)."""
    use_angle_cls: bool = False
    """Run the 0/180 degree text-line orientation classifier (upside-down text; costs time)."""
    det_model_dir: str | None = None
    """PaddleOCR: local text detection model directory (required for the paddleocr backend)."""
    rec_model_dir: str | None = None
    """PaddleOCR: local text recognition model directory (required for the paddleocr backend)."""
    cls_model_dir: str | None = None
    """PaddleOCR: local text-line orientation model directory (needed only with `use_angle_cls`)."""
    device: str = "cpu"
    """Inference device: 'cpu', or 'cuda' / 'gpu:0' (onnxruntime CUDA provider or Paddle GPU)."""
    threads: int = 0
    """Intra-op CPU threads per engine; 0 lets the runtime decide (give Ray actors 1-2)."""


@dataclass(frozen=True)
class OcrLine:
    """One line of text: what it says, how sure the recogniser is, where it is and its script."""

    text: str
    score: float
    box: list[list[float]]
    """Four corners [[x, y], ...] clockwise from top-left, in the input image's pixels."""
    language: str

    def to_dict(self) -> dict:
        """JSON-ready dict with `text`, `score`, `box`, `language`."""
        return {"text": self.text, "score": round(float(self.score), 5),
                "box": [[round(float(x), 1), round(float(y), 1)] for x, y in self.box], "language": self.language}


@dataclass(frozen=True)
class OcrResult:
    """Lines in reading order, their text joined by newlines, and how many low-confidence lines were dropped."""

    text: str
    lines: list[OcrLine] = field(default_factory=list)
    dropped_low_confidence: int = 0

    def to_json(self) -> dict:
        """`{"text": ..., "lines": [{"text", "score", "box", "language"}, ...]}`."""
        return {"text": self.text, "lines": [line.to_dict() for line in self.lines]}


DETECTION_FIELDS = ("det_max_side", "det_min_side", "max_upscale", "det_pad", "det_thresh", "det_box_thresh",
                    "det_unclip_ratio")


def detection_key(config: OcrConfig) -> str | None:
    """Identity of the text detection `config` gives (None where detection cannot be shared: PaddleOCR detects
    inside its own pipeline). Boxes found under one key are reused by any engine with the same key."""
    if config.backend != "rapidocr":
        return None
    import hashlib
    import json

    fields = {name: getattr(config, name) for name in DETECTION_FIELDS}
    return "ppocrv6-det:" + hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


class OcrEngine(Protocol):
    """What every OCR backend provides."""

    config: OcrConfig

    def setup(self) -> None:
        """Load the models (once per process or Ray actor)."""

    def read(self, image: Image.Image, boxes=None) -> OcrResult:
        """OCR one image (with `boxes`: text boxes found earlier under the same `detection_key`)."""

    def read_batch(self, images: Sequence[Image.Image]) -> list[OcrResult]:
        """OCR several images, one result each, in order."""


_SCRIPTS = {"LATIN": "latin", "CYRILLIC": "cyrillic", "GREEK": "greek", "ARABIC": "arabic", "HEBREW": "hebrew",
            "DEVANAGARI": "devanagari", "THAI": "thai", "CJK": "cjk", "HIRAGANA": "cjk", "KATAKANA": "cjk",
            "HANGUL": "cjk"}
_SCRIPT_ORDER = ["latin", "cyrillic", "greek", "arabic", "hebrew", "devanagari", "thai", "cjk", "other"]


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def script_of(text: str) -> str:
    """The majority script of the letters in `text` (see the module docstring); 'und' without letters.

    Args:
        text: a recognised line.
    """
    counts: dict[str, int] = {}
    for ch in text:
        if not unicodedata.category(ch).startswith("L"):
            continue
        words = unicodedata.name(ch, "").split()
        if words[:1] in (["FULLWIDTH"], ["HALFWIDTH"]):
            words = words[1:]
        script = _SCRIPTS.get(words[0], "other") if words else "other"
        counts[script] = counts.get(script, 0) + 1
    if not counts:
        return "und"
    return max(_SCRIPT_ORDER, key=lambda s: (counts.get(s, 0), -_SCRIPT_ORDER.index(s)))


def _extent(box: np.ndarray) -> tuple[float, float, float, float]:
    return float(box[:, 0].min()), float(box[:, 1].min()), float(box[:, 0].max()), float(box[:, 1].max())


def _same_row(a: tuple, b: tuple) -> bool:
    """Two (x0, y0, x1, y1) extents share a row: enough vertical overlap, or one's centre inside the other."""
    overlap = min(a[3], b[3]) - max(a[1], b[1])
    smaller = max(1e-6, min(a[3] - a[1], b[3] - b[1]))
    ca, cb = (a[1] + a[3]) / 2, (b[1] + b[3]) / 2
    return overlap >= 0.5 * smaller or a[1] <= cb <= a[3] or b[1] <= ca <= b[3]


def reading_order(boxes: Sequence[np.ndarray]) -> list[int]:
    """Indices of `boxes` in reading order: rows top to bottom, left to right within a row.

    Args:
        boxes: quadrilaterals, each (4, 2).

    Returns:
        a permutation of range(len(boxes)).
    """
    extents = [_extent(np.asarray(b, dtype=np.float64)) for b in boxes]
    by_centre = sorted(range(len(boxes)), key=lambda i: ((extents[i][1] + extents[i][3]) / 2, extents[i][0]))
    rows: list[list[int]] = []
    for i in by_centre:
        for row in rows:
            if any(_same_row(extents[i], extents[j]) for j in row):
                row.append(i)
                break
        else:
            rows.append([i])
    rows.sort(key=lambda r: (float(np.mean([(extents[j][1] + extents[j][3]) / 2 for j in r])),
                             min(extents[j][0] for j in r)))
    return [i for row in rows for i in sorted(row, key=lambda j: (extents[j][0], extents[j][1]))]


def _finish(texts: Sequence[str], scores: Sequence[float], boxes: Sequence[np.ndarray], min_score: float,
            min_short_score: float = 0.0) -> OcrResult:
    """Drop empty and low-confidence readings (short ones need `min_short_score`), sort into reading order, tag
    scripts."""
    keep, dropped = [], 0
    for text, score, box in zip(texts, scores, boxes, strict=True):
        text = text.strip()
        if not text:
            continue
        if score < min_score or score < min_short_score and sum(c.isalnum() for c in text) < 2:
            dropped += 1
            continue
        keep.append((text, float(score), np.asarray(box, dtype=np.float64).reshape(4, 2)))
    order = reading_order([k[2] for k in keep])
    lines = [OcrLine(text=keep[i][0], score=keep[i][1], box=keep[i][2].tolist(), language=script_of(keep[i][0]))
             for i in order]
    return OcrResult(text="\n".join(line.text for line in lines), lines=lines, dropped_low_confidence=dropped)


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


def _order_quad(points: np.ndarray) -> np.ndarray:
    """Four corners clockwise from top-left."""
    pts = points[np.argsort(points[:, 0], kind="stable")]
    left, right = pts[:2], pts[2:]
    tl, bl = left[np.argsort(left[:, 1], kind="stable")]
    tr, br = right[np.argsort(right[:, 1], kind="stable")]
    return np.array([tl, tr, br, bl], dtype=np.float64)


def _quad_size(q: np.ndarray) -> tuple[float, float]:
    width = max(np.linalg.norm(q[1] - q[0]), np.linalg.norm(q[2] - q[3]))
    height = max(np.linalg.norm(q[3] - q[0]), np.linalg.norm(q[2] - q[1]))
    return float(width), float(height)


def merge_fragments(boxes: Sequence[np.ndarray], max_gap: float) -> list[np.ndarray]:
    """Merge boxes that sit on one baseline and are at most `max_gap` line heights apart, left to right.

    Two boxes merge when their vertical extents overlap by at least 60% of the smaller height, their heights differ
    by less than 1.6x, and the horizontal gap between them (negative when they overlap) is below `max_gap` times
    the larger height. Merging repeats until nothing changes; a merged box is the minimum-area rectangle around both.

    Args:
        boxes: quadrilaterals (4, 2) in one coordinate frame.
        max_gap: the gap bound in line heights.

    Returns:
        the merged quadrilaterals, clockwise from top-left.
    """
    import cv2

    quads = [_order_quad(np.asarray(b, dtype=np.float64)) for b in boxes]
    changed = True
    while changed and len(quads) > 1:
        changed = False
        quads.sort(key=lambda q: (q[:, 0].min(), q[:, 1].min()))
        for i in range(len(quads)):
            a = _extent(quads[i])
            ha = a[3] - a[1]
            for j in range(i + 1, len(quads)):
                b = _extent(quads[j])
                hb = b[3] - b[1]
                overlap = min(a[3], b[3]) - max(a[1], b[1])
                if overlap < 0.6 * min(ha, hb) or max(ha, hb) > 1.6 * max(1e-6, min(ha, hb)):
                    continue
                gap = max(a[0], b[0]) - min(a[2], b[2])
                if gap > max_gap * max(ha, hb):
                    continue
                rect = cv2.minAreaRect(np.concatenate([quads[i], quads[j]]).astype(np.float32))
                merged = _order_quad(cv2.boxPoints(rect).astype(np.float64))
                quads = [q for k, q in enumerate(quads) if k not in (i, j)] + [merged]
                changed = True
                break
            if changed:
                break
    return quads


def crop_line(rgb: np.ndarray, quad: np.ndarray, margin: float, height: int) -> np.ndarray:
    """Cut a line out of `rgb` along its quadrilateral, with a margin, at a fixed height.

    The margin is `margin` x the line height on every side (replicated border outside the image). Shrinking uses
    area interpolation and enlarging cubic, so glyphs keep their shape at the recogniser's input height.

    Args:
        rgb: the image (H, W, 3) uint8.
        quad: four corners clockwise from top-left, in `rgb`'s pixels.
        margin: margin as a fraction of the line height.
        height: output height in pixels.

    Returns:
        the crop (height, w, 3) uint8; tall boxes (height >= 1.5 x width) are rotated to horizontal first.
    """
    import cv2

    width, line_h = _quad_size(quad)
    width, line_h = max(width, 1.0), max(line_h, 1.0)
    pad = margin * min(line_h, width)
    out_w, out_h = max(1, round(width + 2 * pad)), max(1, round(line_h + 2 * pad))
    target = np.array([[pad, pad], [pad + width, pad], [pad + width, pad + line_h], [pad, pad + line_h]],
                      dtype=np.float32)
    matrix = cv2.getPerspectiveTransform(quad.astype(np.float32), target)
    crop = cv2.warpPerspective(rgb, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if crop.shape[0] >= 1.5 * crop.shape[1]:
        crop = np.ascontiguousarray(np.rot90(crop))
    scale = height / crop.shape[0]
    size = (max(1, round(crop.shape[1] * scale)), height)
    return cv2.resize(crop, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)


def _border_colour(rgb: np.ndarray) -> tuple[int, int, int]:
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    return tuple(int(v) for v in np.median(border, axis=0))


class RapidOcrEngine:
    """PP-OCRv6 (rapidocr's bundled ONNX models) with line merging, normalised line crops and a second pass."""

    def __init__(self, config: OcrConfig = OcrConfig()):
        self.config = config
        self._ocr = None
        self._det = None
        self._rec = None
        self._cls = None
        self._lock = threading.Lock()

    def setup(self) -> None:
        """Build the onnxruntime sessions from the models inside the rapidocr wheel (no download)."""
        with self._lock:
            if self._ocr is not None:
                return
            from rapidocr import RapidOCR

            cfg = self.config
            threads = cfg.threads if cfg.threads > 0 else -1
            use_cuda = cfg.device.startswith(("cuda", "gpu"))
            params = {"Global.use_cls": cfg.use_angle_cls, "Global.log_level": "critical",
                      "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                      "EngineConfig.onnxruntime.use_cuda": use_cuda,
                      "Det.thresh": cfg.det_thresh, "Det.box_thresh": cfg.det_box_thresh,
                      "Det.unclip_ratio": cfg.det_unclip_ratio,
                      # we size the detector's input ourselves: never upscale beyond it
                      "Det.limit_type": "max", "Det.limit_side_len": 100_000}
            ocr = RapidOCR(params=params)
            # rapidocr 3.10 builds its sessions lazily; build them now, once (setup() runs once per actor)
            self._det = ocr._load_det_model()
            self._rec = ocr._load_rec_model()
            self._cls = ocr._load_cls_model() if cfg.use_angle_cls else None
            self._ocr = ocr

    # -- stages ------------------------------------------------------------------------------------------------

    def _detect(self, rgb: np.ndarray) -> list[np.ndarray]:
        """Text boxes in `rgb`'s pixels."""
        import cv2

        cfg = self.config
        h, w = rgb.shape[:2]
        pad = max(8, round(cfg.det_pad * min(h, w)))
        padded = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=_border_colour(rgb))
        ph, pw = padded.shape[:2]
        longest = max(ph, pw)
        if longest > cfg.det_max_side:
            factor = cfg.det_max_side / longest
        elif longest < cfg.det_min_side:
            factor = min(cfg.max_upscale, cfg.det_min_side / longest)
        else:
            factor = 1.0
        size = (max(32, round(pw * factor / 32) * 32), max(32, round(ph * factor / 32) * 32))
        interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
        scaled = cv2.resize(padded, size, interpolation=interp)
        det = self._det(scaled)
        if det.boxes is None or len(det.boxes) == 0:
            return []
        quads = np.asarray(det.boxes, dtype=np.float64)
        quads[..., 0] = quads[..., 0] * (pw / size[0]) - pad
        quads[..., 1] = quads[..., 1] * (ph / size[1]) - pad
        quads[..., 0] = np.clip(quads[..., 0], 0, w)
        quads[..., 1] = np.clip(quads[..., 1], 0, h)
        return [_order_quad(q) for q in quads if min(_quad_size(_order_quad(q))) >= 2]

    def _recognise(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        """Read line crops one by one (no padding to a batch's widest crop, so a reading never depends on others)."""
        from rapidocr.ch_ppocr_rec import TextRecInput

        if self._cls is not None and crops:
            crops = list(self._cls(crops).img_list)
        out = []
        for crop in crops:
            res = self._rec(TextRecInput(img=[crop], return_word_box=False))
            out.append((str(res.txts[0]), float(res.scores[0])))
        return out

    def detect(self, image: Image.Image) -> np.ndarray:
        """Text boxes only (no recognition): float array (n, 4, 2), corners clockwise from top-left, in the image's
        pixels. What `read(image, boxes=...)` takes, so one detection serves the legibility signals and OCR."""
        if self._ocr is None:
            self.setup()
        rgb = _to_rgb_array(image)
        if rgb.shape[0] < 2 or rgb.shape[1] < 2:
            return np.empty((0, 4, 2), np.float64)
        quads = self._detect(rgb)
        return np.asarray(quads, dtype=np.float64).reshape(-1, 4, 2)

    def read(self, image: Image.Image, boxes: np.ndarray | Sequence | None = None) -> OcrResult:
        """OCR one image.

        Args:
            image: any PIL image (converted to RGB).
            boxes: text boxes already found in this image by `detect` under the same `detection_key` (the
                exclusion stage's); None detects them here.

        Returns:
            the lines kept, in reading order, and the number dropped for low confidence.
        """
        if self._ocr is None:
            self.setup()
        cfg = self.config
        rgb = _to_rgb_array(image)
        h, w = rgb.shape[:2]
        if h < 2 or w < 2:
            return OcrResult(text="")
        if boxes is None:
            quads = self._detect(rgb)
        else:
            quads = [np.asarray(q, dtype=np.float64).reshape(4, 2) for q in np.asarray(boxes, np.float64)
                     .reshape(-1, 4, 2)]
        if quads and cfg.merge_lines:
            quads = merge_fragments(quads, cfg.merge_gap)
        margins = [cfg.crop_margin] + ([cfg.second_margin] if cfg.second_pass else [])
        readings = [self._recognise([crop_line(rgb, q, m, cfg.rec_height) for q in quads]) for m in margins]
        best = [max((r[i] for r in readings), key=lambda t: t[1]) for i in range(len(quads))]
        if cfg.whole_image_fallback and w >= 0.5 * h and max(h, w) <= cfg.fallback_max_side:
            # A word crop: the detector, tuned for pages and photos, clips or splits a word that fills the image
            # ("GRAND" -> "CRAND" + "LOTEL"), while the recogniser reads the whole crop well. The whole reading
            # replaces the detected lines when it is at least as confident as they are on average.
            whole = self.read_line(image)
            mean = sum(b[1] for b in best) / len(best) if best else 0.0
            if whole.text and whole.score >= mean:
                quads, best = [np.asarray(whole.box, dtype=np.float64)], [(whole.text, whole.score)]
        return _finish([b[0] for b in best], [b[1] for b in best], quads, cfg.min_score, cfg.min_short_score)

    def read_line(self, image: Image.Image) -> OcrLine:
        """Recognise an image known to hold one line of text (a box found elsewhere): no detection.

        The image is read as is and, with `second_pass`, with a `second_margin` border of replicated edge pixels;
        the more confident reading wins. No `min_score` filter: the caller decides.

        Args:
            image: a line or word crop.
        """
        if self._ocr is None:
            self.setup()
        cfg = self.config
        rgb = _to_rgb_array(image)
        h, w = rgb.shape[:2]
        quad = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
        margins = [0.0, cfg.second_margin] if cfg.second_pass else [0.0]
        text, score = max(self._recognise([crop_line(rgb, quad, m, cfg.rec_height) for m in margins]),
                          key=lambda t: t[1])
        return OcrLine(text=text.strip(), score=score, box=quad.tolist(), language=script_of(text))

    def read_batch(self, images: Sequence[Image.Image]) -> list[OcrResult]:
        """OCR several images (each independently: the same image always gives the same result).

        Args:
            images: PIL images.
        """
        return [self.read(im) for im in images]


_PADDLE_HINT = ("the 'paddleocr' backend needs PaddleOCR 3.x and PaddlePaddle: install the `paddle` extra "
                "(`pip install -e '.[paddle]'`, i.e. the `paddleocr` and `paddlepaddle` packages)")


class PaddleOcrEngine:
    """PaddleOCR 3.x (PP-OCRv5/v6) from local model directories; never downloads.

    The detection and recognition model directories must be given (`det_model_dir`, `rec_model_dir`, and
    `cls_model_dir` with `use_angle_cls`); document orientation and unwarping are off. PaddleX's model-hoster
    connectivity check is disabled before import.
    """

    def __init__(self, config: OcrConfig):
        self.config = config
        self._pipeline = None

    def _missing_dirs(self) -> list[str]:
        cfg = self.config
        needed = {"det_model_dir": cfg.det_model_dir, "rec_model_dir": cfg.rec_model_dir}
        if cfg.use_angle_cls:
            needed["cls_model_dir"] = cfg.cls_model_dir
        return [f"{name}={value!r}" for name, value in needed.items() if not value or not os.path.isdir(value)]

    def setup(self) -> None:
        """Check the model directories, import PaddleOCR and build its pipeline.

        Raises:
            RuntimeError: paddleocr / paddle is not installed, or a model directory is missing.
        """
        if self._pipeline is not None:
            return
        cfg = self.config
        missing = self._missing_dirs()
        os.environ.setdefault("PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK", "True")
        try:
            from paddleocr import PaddleOCR
        except ImportError as exc:
            detail = f"; also missing local model directories: {', '.join(missing)}" if missing else ""
            raise RuntimeError(f"cannot import paddleocr ({exc}): {_PADDLE_HINT}{detail}") from exc
        if missing:
            raise RuntimeError("PaddleOCR runs from local model directories only (it would otherwise download); "
                               f"missing or not a directory: {', '.join(missing)}")
        kwargs = {}
        if cfg.threads > 0:
            kwargs["cpu_threads"] = cfg.threads
        device = "gpu:0" if cfg.device == "cuda" else cfg.device.replace("cuda", "gpu")
        self._pipeline = PaddleOCR(
            text_detection_model_dir=cfg.det_model_dir,
            text_recognition_model_dir=cfg.rec_model_dir,
            textline_orientation_model_dir=cfg.cls_model_dir if cfg.use_angle_cls else None,
            use_doc_orientation_classify=False,
            use_doc_unwarping=False,
            use_textline_orientation=cfg.use_angle_cls,
            text_det_limit_side_len=cfg.det_max_side,
            text_det_limit_type="max",
            text_det_thresh=cfg.det_thresh,
            text_det_box_thresh=cfg.det_box_thresh,
            text_det_unclip_ratio=cfg.det_unclip_ratio,
            text_rec_score_thresh=0.0,  # we filter (and count) low-confidence lines ourselves
            device=device,
            **kwargs,
        )

    def _convert(self, res) -> OcrResult:
        texts = list(res["rec_texts"])
        scores = [float(s) for s in res["rec_scores"]]
        boxes = [_order_quad(np.asarray(p, dtype=np.float64).reshape(-1, 2)[:4]) if len(p) == 4
                 else _bbox_quad(np.asarray(p, dtype=np.float64).reshape(-1, 2)) for p in res["rec_polys"]]
        return _finish(texts, scores, boxes, self.config.min_score, self.config.min_short_score)

    def read(self, image: Image.Image, boxes=None) -> OcrResult:
        """OCR one image (see `RapidOcrEngine.read`); PaddleOCR always detects itself, so `boxes` is not used
        (`detection_key` is None for this backend and no caller passes any)."""
        return self.read_batch([image])[0]

    def read_batch(self, images: Sequence[Image.Image]) -> list[OcrResult]:
        """OCR several images with one `predict` call; PaddleOCR takes BGR arrays."""
        if self._pipeline is None:
            self.setup()
        arrays = [np.ascontiguousarray(_to_rgb_array(im)[:, :, ::-1]) for im in images]
        if not arrays:
            return []
        results = self._pipeline.predict(arrays if len(arrays) > 1 else arrays[0])
        return [self._convert(r) for r in results]


def _bbox_quad(points: np.ndarray) -> np.ndarray:
    x0, y0 = points.min(0)
    x1, y1 = points.max(0)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def load_engine(config: OcrConfig = OcrConfig()) -> OcrEngine:
    """The engine for `config.backend`, not yet set up (call `setup()` where the models should load).

    Args:
        config: OCR settings.

    Raises:
        ValueError: unknown backend.
    """
    if config.backend == "rapidocr":
        return RapidOcrEngine(config)
    if config.backend == "paddleocr":
        return PaddleOcrEngine(config)
    raise ValueError(f"unknown OCR backend {config.backend!r}: expected 'rapidocr' or 'paddleocr'")
