"""Is a near-duplicate candidate the same picture? Geometric and photometric verification on small thumbnails.

An embedding or a pHash proposes a candidate pair; neither proves that the two images show the same picture: the
CNN embedding puts unrelated flat-colour compositions at cosine 0.91-0.94, and pHash gives every linear gradient of
one direction the same 64 bits (issue 14). The check here accepts a pair only when one image can be mapped onto the
other and the mapped pixels agree:

1. Alignment hypotheses. Local features with geometric verification: ORB keypoints on both grayscale thumbnails,
   ratio-tested Hamming matches, a similarity transform (rotation, scale, translation) by RANSAC, kept when it has
   at least `min_inliers` inliers that are at least `min_inlier_ratio` of the matches. Matched against the image and
   its mirror image (ORB descriptors are not flip-invariant). Texture-poor pictures (gradients, flat colour) have
   too few keypoints for that, so the direct hypotheses join: the whole frame stretched onto the other's, in each of
   the 8 flips/rotations whose aspect ratio fits, with and without a uniform border trimmed off.
2. Photometric agreement, which every hypothesis must pass (so one shared template, the same UI chrome or the same
   font, never suffices): the second image warped into the first one's frame, both in YCbCr at `COMPARE_SIDE` px.
   Luma may differ by one gain and offset (brightness, contrast); chroma by one saturation factor about neutral
   (0 for a grayscale copy); no hue change. On a grid of cells over the overlap, a cell agrees when its mean
   residual is below the tolerances; the pair is the same picture when `min_agreement` of all cells and of the
   cells with structure (edges in either image) agree. Structured cells get their own share because most cells of
   line art or a screenshot are blank paper in both.

The overlap must cover most of the smaller picture (`min_overlap_small`) and a fair part of the larger one
(`min_overlap_large`, so a crop of 30% per side, 49% of the area, still counts and a thumbnail-sized detail does
not). The evidence (which hypothesis, inliers, agreement) goes into the ledger row of a removed duplicate.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

THUMB_SIDE = 160
"""Long side of the verification thumbnail stored with the features (ORB needs ~150 px to find its keypoints)."""
THUMB_QUALITY = 90
COMPARE_SIGMA = 1.0
"""Gaussian smoothing (thumbnail pixels) of both sides before the photometric comparison."""
CELLS = 10
"""Cells of the agreement grid along the long side."""
STRUCTURE = 12.0
"""Mean Sobel magnitude (|dx| + |dy| of luma) that makes a cell structured."""

SMOOTH_SHARE = 0.1
"""Pictures with fewer structured cells than this share are compared without a photometric fit."""
CLIPPED_SHARE = 0.02
"""The clipped-gain photometric model is tried only when b clips a channel on at least this share of the overlap:
it exists for brightened or contrasted copies, and its freedom is not needed (nor safe) on smooth gradients."""
OFFSET_SLACK = 60.0
"""How far the fitted offset may stray from the two standard edits: brightness (offset 0) and contrast about the
mean (offset (1 - gain) * mean, 80 for contrast 0.6 on a bright picture)."""
TEMPLATE_SCALES = np.geomspace(0.6, 1.0, 14)
"""Width of the inner picture as a share of the outer one's, searched by the correlation hypotheses (crops up to 20%
per side, borders up to 20% of the width)."""
TEMPLATE_MIN_PEAK = 0.6
"""Smallest correlation peak that becomes a hypothesis (it must still pass the photometric agreement)."""

_ORIENTATIONS = [(False, 0), (False, 1), (False, 2), (False, 3), (True, 0), (True, 1), (True, 2), (True, 3)]
"""(mirror first, quarter turns counter-clockwise) of the 8 dihedral orientations."""


@dataclass(frozen=True)
class VerifyConfig:
    """Thresholds of the same-picture check (defaults chosen on bench/dedup_art_eval.py and bench/dedup_eval.py)."""

    min_inliers: int = 12
    min_inlier_ratio: float = 0.25
    ratio_test: float = 0.8
    ransac_px: float = 3.0
    """RANSAC reprojection tolerance at thumbnail scale."""
    luma_tolerance: float = 8.0
    """Largest mean |residual| of luma in an agreeing cell (0-255 scale), after the gain/offset fit."""
    chroma_tolerance: float = 8.0
    """Largest mean |residual| of Cb and Cr in an agreeing cell, after the saturation fit."""
    min_agreement: float = 0.8
    """Share of cells (all, and structured ones) that must agree."""
    strong_inliers: int = 60
    strong_inlier_ratio: float = 0.5
    min_agreement_strong: float = 0.6
    """Share of agreeing cells needed when ORB found at least `strong_inliers` matches at `strong_inlier_ratio`."""
    min_refine: float = 0.2
    """The best hypothesis is refined by ECC when both its agreements reach this."""
    min_overlap_small: float = 0.85
    min_overlap_large: float = 0.4


def encode_thumbnail(rgb: Image.Image) -> bytes:
    """The verification thumbnail of an RGB image: at most THUMB_SIDE px, JPEG."""
    thumb = rgb.convert("RGB")
    thumb.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, "JPEG", quality=THUMB_QUALITY)
    return buf.getvalue()


def _ycbcr(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float32)
    y = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    cb = 128 - 0.168736 * rgb[..., 0] - 0.331264 * rgb[..., 1] + 0.5 * rgb[..., 2]
    cr = 128 + 0.5 * rgb[..., 0] - 0.418688 * rgb[..., 1] - 0.081312 * rgb[..., 2]
    return np.stack([y, cb, cr], axis=-1)


def _channel_max(x: np.ndarray) -> np.ndarray:
    """x.max(axis=-1) over 2 or 3 channels, elementwise: numpy's reduction over a short last axis was a third of
    the verification time."""
    out = np.maximum(x[..., 0], x[..., 1])
    return np.maximum(out, x[..., 2]) if x.shape[-1] == 3 else out


def _channel_min(x: np.ndarray) -> np.ndarray:
    """x.min(axis=-1) over 3 channels, elementwise (see `_channel_max`)."""
    return np.minimum(np.minimum(x[..., 0], x[..., 1]), x[..., 2])


def _rgb_from_ycbcr(ycc: np.ndarray) -> np.ndarray:
    y, cb, cr = ycc[..., 0], ycc[..., 1] - 128, ycc[..., 2] - 128
    return np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)


def _trim_box(rgb: np.ndarray, tolerance: float = 12.0) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) inside a uniform border of the corner colour, or None when there is no such border."""
    corner = rgb[0, 0].astype(np.float32)
    differs = _channel_max(np.abs(rgb.astype(np.float32) - corner)) > tolerance
    rows, cols = np.flatnonzero(differs.any(axis=1)), np.flatnonzero(differs.any(axis=0))
    if not len(rows) or not len(cols):
        return None
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    h, w = rgb.shape[:2]
    if box == (0, 0, w, h) or (box[2] - box[0]) < w / 2 or (box[3] - box[1]) < h / 2:
        return None
    return box


class Picture:
    """A decoded verification thumbnail and what the check derives from it (computed once, on first use)."""

    def __init__(self, data: bytes) -> None:
        with Image.open(io.BytesIO(data)) as img:
            self.rgb = np.asarray(img.convert("RGB"))
        self.h, self.w = self.rgb.shape[:2]
        self._orb: dict[bool, tuple] = {}
        self._trim: tuple | None | bool = False
        self._reference: tuple[np.ndarray, np.ndarray] | None = None

    def reference(self) -> tuple[np.ndarray, np.ndarray]:
        """(smoothed RGB, its YCbCr): this picture as the side others are warped onto, the same for every
        hypothesis of every pair it is in."""
        if self._reference is None:
            ref = _blur(self.rgb, COMPARE_SIGMA)
            self._reference = (ref, _ycbcr(ref))
        return self._reference

    @property
    def gray(self) -> np.ndarray:
        import cv2

        return cv2.cvtColor(self.rgb, cv2.COLOR_RGB2GRAY)

    def orb(self, mirrored: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """(keypoint xy in this picture's upright coordinates, descriptors) of the picture or its mirror image."""
        if mirrored not in self._orb:
            import cv2

            gray = self.gray[:, ::-1].copy() if mirrored else self.gray
            orb = cv2.ORB_create(nfeatures=400, scaleFactor=1.2, nlevels=5, edgeThreshold=15, patchSize=15,
                                 fastThreshold=10)
            keypoints, descriptors = orb.detectAndCompute(gray, None)
            xy = np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2)
            if mirrored:
                xy[:, 0] = self.w - 1 - xy[:, 0]  # back to upright coordinates: the map then includes the mirror
            self._orb[mirrored] = (xy, descriptors)
        return self._orb[mirrored]

    def trim(self) -> tuple[int, int, int, int] | None:
        if self._trim is False:
            self._trim = _trim_box(self.rgb)
        return self._trim  # type: ignore[return-value]


@dataclass
class Verdict:
    """The outcome of one check, with the evidence of the best hypothesis."""

    same: bool
    method: str = "none"  # "orb_ransac", "frame", "frame_trimmed" or "none"
    mirrored: bool = False
    inliers: int = 0
    inlier_ratio: float = 0.0
    agreement: float = 0.0
    structured_agreement: float = 0.0
    overlap: float = 0.0

    def details(self) -> dict:
        out = asdict(self)
        del out["same"]
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}


def _frame_map(src_box: tuple[float, float, float, float], dst_box: tuple[float, float, float, float],
               mirrored: bool, quarter_turns: int) -> np.ndarray:
    """2x3 affine that maps the source box, mirrored and turned, onto the destination box (stretching to fit)."""
    sx0, sy0, sx1, sy1 = src_box
    dx0, dy0, dx1, dy1 = dst_box
    # source box -> unit square, then the dihedral map inside the unit square, then unit square -> destination
    to_unit = np.array([[1 / (sx1 - sx0), 0, -sx0 / (sx1 - sx0)], [0, 1 / (sy1 - sy0), -sy0 / (sy1 - sy0)], [0, 0, 1]])
    d = np.eye(3)
    if mirrored:
        d = np.array([[-1, 0, 1], [0, 1, 0], [0, 0, 1]]) @ d
    for _ in range(quarter_turns):  # counter-clockwise quarter turn of the unit square: (u, v) -> (v, 1 - u)
        d = np.array([[0, 1, 0], [-1, 0, 1], [0, 0, 1]]) @ d
    from_unit = np.array([[dx1 - dx0, 0, dx0], [0, dy1 - dy0, dy0], [0, 0, 1]])
    # boxes are continuous (pixel k spans [k, k+1)); OpenCV puts pixel k's centre at k
    half = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    unhalf = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
    return (unhalf @ from_unit @ d @ to_unit @ half)[:2]


def _orb_hypotheses(a: Picture, b: Picture, config: VerifyConfig) -> list[tuple[np.ndarray, bool, int, float]]:
    """Similarity maps b -> a found by ORB + RANSAC, for b upright and mirrored: (map, mirrored, inliers, ratio)."""
    import cv2

    xy_a, des_a = a.orb(False)
    out = []
    if des_a is None or len(xy_a) < config.min_inliers:
        return out
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    for mirrored in (False, True):
        xy_b, des_b = b.orb(mirrored)
        if des_b is None or len(xy_b) < config.min_inliers:
            continue
        pairs = matcher.knnMatch(des_b, des_a, k=2)
        good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < config.ratio_test * p[1].distance]
        if len(good) < config.min_inliers:
            continue
        src = xy_b[[m.queryIdx for m in good]]
        dst = xy_a[[m.trainIdx for m in good]]
        matrix, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC,
                                                   ransacReprojThreshold=config.ransac_px, maxIters=2000,
                                                   confidence=0.995)
        if matrix is None:
            continue
        inliers = int(mask.sum())
        ratio = inliers / len(good)
        if inliers >= config.min_inliers and ratio >= config.min_inlier_ratio:
            out.append((matrix, mirrored, inliers, ratio))
    return out


def _frame_hypotheses(a: Picture, b: Picture) -> list[tuple[np.ndarray, bool, str]]:
    """Whole-frame maps b -> a in the orientations whose aspect ratio fits (within 12%), untrimmed and trimmed."""
    out = []
    full_a, full_b = (0, 0, a.w, a.h), (0, 0, b.w, b.h)
    boxes = [("frame", full_b, full_a)]
    # a border added to either side: trim it off that side (trimming both would cut a plain background too)
    ta, tb = a.trim(), b.trim()
    boxes += [("frame_trimmed", tb or full_b, full_a)] if tb else []
    boxes += [("frame_trimmed", full_b, ta or full_a)] if ta else []
    for method, src, dst in boxes:
        src_aspect = (src[2] - src[0]) / (src[3] - src[1])
        dst_aspect = (dst[2] - dst[0]) / (dst[3] - dst[1])
        for mirrored, turns in _ORIENTATIONS:
            aspect = src_aspect if turns % 2 == 0 else 1 / src_aspect
            if abs(np.log(aspect / dst_aspect)) <= np.log(1.12):
                out.append((_frame_map(src, dst, mirrored, turns), mirrored, method))
    return out


def _template_hypotheses(a: Picture, b: Picture) -> list[tuple[np.ndarray, bool, str]]:
    """Maps b -> a from normalised cross-correlation of one picture inside the other over a range of scales: b as
    a crop of a, or a inside b (b has a border or margin added). Crops of texture-poor pictures (a poster's
    background, a gradient) leave ORB too few keypoints, and a border of a colour the picture also has at its edge
    defeats the trim; the correlation peak needs neither."""
    import cv2

    out = []
    for inner, outer, inside in ((b, a, "b_in_a"), (a, b, "a_in_b")):
        best = (-1.0, None)
        gi, go = inner.gray.astype(np.float32), outer.gray.astype(np.float32)
        if gi.std() < 1.0 or go.std() < 1.0:
            continue
        for scale in TEMPLATE_SCALES:
            # the inner picture resized so that it spans `scale` of the outer picture's width
            factor = scale * outer.w / inner.w
            tw, th = round(inner.w * factor), round(inner.h * factor)
            if tw < 16 or th < 16 or tw > outer.w or th > outer.h:
                continue
            template = cv2.resize(gi, (tw, th), interpolation=cv2.INTER_AREA)
            if template.std() < 1.0:
                continue
            score = cv2.matchTemplate(go, template, cv2.TM_CCOEFF_NORMED)
            _, peak, _, (x, y) = cv2.minMaxLoc(score)
            if peak > best[0]:
                best = (peak, (factor, x, y))
        if best[1] is None or best[0] < TEMPLATE_MIN_PEAK:
            continue
        factor, x, y = best[1]
        inner_to_outer = np.array([[factor, 0, x + 0.5 * factor - 0.5], [0, factor, y + 0.5 * factor - 0.5]])
        if inside == "b_in_a":
            out.append((inner_to_outer, False, "template"))
        else:
            out.append((cv2.invertAffineTransform(inner_to_outer), False, "template"))
    return out


def _agreement(a: Picture, b: Picture, matrix: np.ndarray, config: VerifyConfig) -> tuple[float, float, float]:
    """(agreement over all cells, over structured cells, overlap) of b warped by `matrix` into a's frame."""
    import cv2

    zoom = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if not 0.2 <= zoom <= 5.0:  # RANSAC on a few clustered points can return a degenerate map
        return 0.0, 0.0, 0.0
    # both sides smoothed alike (b first by its shrink factor, so the warp does not alias), so that resampling
    # differences stay below the tolerances while a line of small text still shows
    src = _blur(b.rgb, 0.5 / zoom) if zoom < 0.7 else b.rgb
    warped = _blur(cv2.warpAffine(src, matrix, (a.w, a.h), flags=cv2.INTER_LINEAR), COMPARE_SIGMA)
    ref, ya = a.reference()
    valid = cv2.warpAffine(np.full((b.h, b.w), 255, np.uint8), matrix, (a.w, a.h), flags=cv2.INTER_NEAREST) > 0
    # resampled and smoothed edge pixels mix in the black outside
    margin = 2 * int(np.ceil(2 * COMPARE_SIGMA)) + 1
    valid = cv2.erode(valid.astype(np.uint8), np.ones((margin, margin), np.uint8)) > 0
    covered = float(valid.sum())
    b_area = zoom * zoom * b.w * b.h  # b's area in a's frame
    of_a, of_b = covered / (a.w * a.h), min(1.0, covered / max(b_area, 1.0))
    small, large = (of_a, of_b) if b_area >= a.w * a.h else (of_b, of_a)
    if small < config.min_overlap_small or large < config.min_overlap_large:
        return 0.0, 0.0, small
    yb = _ycbcr(warped)
    cell = max(8, round(max(a.w, a.h) / CELLS))
    weight = _cell_sums(valid.astype(np.float32), cell)
    used = weight >= 0.5 * cell * cell
    if not used.any():
        return 0.0, 0.0, small
    w = np.maximum(weight, 1.0)
    b_rgb = _rgb_from_ycbcr(yb)
    clipped = ((_channel_max(b_rgb) >= 250) | (_channel_min(b_rgb) <= 5))[valid].mean() >= CLIPPED_SHARE
    if not clipped and _agreement_bound(ya, yb, valid, w, used, cell, config) < config.min_refine:
        return 0.0, 0.0, small  # cannot pass, nor be the hypothesis worth refining: the residuals are not needed
    residuals = [_linear_residuals(ya, yb, valid)]
    if clipped:
        residuals.append(_clipped_gain_residuals(ref, yb, valid))
    edges = np.maximum(_edge_map(ya[..., 0]), _edge_map(yb[..., 0]))
    structured = (_cell_sums(edges * valid, cell) / w > STRUCTURE)[used]
    if structured.mean() < SMOOTH_SHARE:
        # a smooth picture (a gradient, a flat field) is its colours: a gain, offset or saturation fit would map
        # one two-stop gradient onto another, so it is compared as it is
        residuals = [(np.abs(yb[..., 0] - ya[..., 0]), _channel_max(np.abs(yb[..., 1:] - ya[..., 1:])))]
    best = (0.0, 0.0)
    for luma, chroma in residuals:  # the photometric model that explains b best
        ok = ((_cell_sums(luma * valid, cell) / w <= config.luma_tolerance)
              & (_cell_sums(chroma * valid, cell) / w <= config.chroma_tolerance))[used]
        shares = (float(ok.mean()), float(ok[structured].mean()) if structured.any() else 1.0)
        if min(shares) > min(best):
            best = shares
    return best[0], best[1], small


def _agreement_bound(ya: np.ndarray, yb: np.ndarray, valid: np.ndarray, w: np.ndarray, used: np.ndarray, cell: int,
                     config: VerifyConfig) -> float:
    """An upper bound on the share of cells that can agree, under the linear model and under the no-fit model of
    smooth pictures (the two models `_agreement` tries when nothing clips). A cell's mean |residual| is at least
    |its mean residual| (per channel, and the chroma residual is the larger of two), and mean residuals need only
    the cells' sums of each side: many distinct candidate pairs fail here at the cost of a few cell sums instead of
    the full residual maps (issue 12: verification is the dedup stage's super-linear cost)."""
    sums_a = [_cell_sums(ya[..., c] * valid, cell) / w for c in range(3)]
    sums_b = [_cell_sums(yb[..., c] * valid, cell) / w for c in range(3)]
    tol_l, tol_c = config.luma_tolerance, config.chroma_tolerance
    gain, offset = _gain_offset(ya[..., 0][valid], yb[..., 0][valid])
    linear = np.abs(sums_b[0] - gain * sums_a[0] - offset) <= tol_l
    ca, cb = ya[..., 1:][valid] - 128, yb[..., 1:][valid] - 128
    if not (np.abs(ca).mean() < 3.0 or np.abs(cb).mean() < 3.0):  # as in _linear_residuals: no chroma test else
        sat = float(np.clip((ca * cb).sum() / max(float((ca * ca).sum()), 1e-6), 0.5, 2.0))
        for c in (1, 2):
            linear &= np.abs((sums_b[c] - 128) - sat * (sums_a[c] - 128)) <= tol_c
    as_is = np.abs(sums_b[0] - sums_a[0]) <= tol_l
    for c in (1, 2):
        as_is &= np.abs(sums_b[c] - sums_a[c]) <= tol_c
    return float((linear | as_is)[used].mean())


def _gain_offset(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Least-squares b ~ gain * a + offset, gain kept mild and the offset near a brightness or contrast edit."""
    var = float(a.var())
    gain = float(np.clip(((a - a.mean()) * (b - b.mean())).mean() / var, 0.5, 2.0)) if var > 1.0 else 1.0
    about_mean = (1 - gain) * float(a.mean())
    low, high = min(0.0, about_mean) - OFFSET_SLACK, max(0.0, about_mean) + OFFSET_SLACK
    return gain, float(np.clip(b.mean() - gain * a.mean(), low, high))


def _linear_residuals(ya: np.ndarray, yb: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|luma| and |chroma| residuals of b against a under one luma gain and offset (brightness, contrast, both kept
    mild) and one saturation factor about neutral (none when either side is grayscale); no hue change."""
    gain, offset = _gain_offset(ya[..., 0][valid], yb[..., 0][valid])
    luma = np.abs(yb[..., 0] - (gain * ya[..., 0] + offset))
    ca, cb = ya[..., 1:][valid] - 128, yb[..., 1:][valid] - 128
    if np.abs(ca).mean() < 3.0 or np.abs(cb).mean() < 3.0:
        return luma, np.zeros_like(luma)
    sat = float(np.clip((ca * cb).sum() / max(float((ca * ca).sum()), 1e-6), 0.5, 2.0))
    return luma, _channel_max(np.abs((yb[..., 1:] - 128) - sat * (ya[..., 1:] - 128)))


def _clipped_gain_residuals(ref: np.ndarray, yb: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Residuals of b against a under b = clip(gain * a + offset) with ONE gain and offset for all three RGB
    channels, fitted where b clips no channel: a brightened or contrasted copy saturates its channels one by one,
    which shifts hue and no gain/offset in YCbCr explains. Two parameters for the whole picture, so one palette
    cannot be mapped onto another."""
    b_rgb = _rgb_from_ycbcr(yb)
    unclipped = valid & (_channel_min(b_rgb) > 5) & (_channel_max(b_rgb) < 250)
    if unclipped.sum() < 64:
        unclipped = valid
    gain, offset = _gain_offset(ref[unclipped].astype(np.float32).ravel(), b_rgb[unclipped].ravel())
    ym = _ycbcr(np.clip(gain * ref.astype(np.float32) + offset, 0, 255))
    return np.abs(yb[..., 0] - ym[..., 0]), _channel_max(np.abs(yb[..., 1:] - ym[..., 1:]))


def _cell_sums(x: np.ndarray, cell: int) -> np.ndarray:
    """Sums over a grid of cell x cell windows (the last row and column of cells may be partial)."""
    h, w = x.shape
    gy, gx = -(-h // cell), -(-w // cell)
    padded = np.zeros((gy * cell, gx * cell), np.float32)
    padded[:h, :w] = x
    return padded.reshape(gy, cell, gx, cell).sum(axis=(1, 3))


def _blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    k = 2 * int(np.ceil(2.5 * sigma)) + 1
    return cv2.GaussianBlur(rgb, (k, k), sigma)


def _edge_map(y: np.ndarray) -> np.ndarray:
    import cv2

    return np.abs(cv2.Sobel(y, cv2.CV_32F, 1, 0, ksize=3)) + np.abs(cv2.Sobel(y, cv2.CV_32F, 0, 1, ksize=3))


def _refine(a: Picture, b: Picture, matrix: np.ndarray) -> np.ndarray | None:
    """The map b -> a refined by ECC (dense intensity alignment), or None when it does not converge. A frame or
    ORB map can be a pixel off, which already fails every sharp edge of flat colour."""
    import cv2

    inverse = cv2.invertAffineTransform(matrix.astype(np.float32))  # ECC's warp maps a's pixels into b
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 40, 1e-4)
    try:
        _, warp = cv2.findTransformECC(a.gray.astype(np.float32), b.gray.astype(np.float32), inverse,
                                       cv2.MOTION_AFFINE, criteria, None, 3)
    except cv2.error:
        return None  # flat or uncorrelated: no alignment to be had
    return cv2.invertAffineTransform(warp)


def same_picture(a: Picture, b: Picture, config: VerifyConfig = VerifyConfig()) -> Verdict:
    """Whether b is a near-copy of a (re-encode, resize, crop, flip, rotation, border, overlay, exposure)."""
    best, best_matrix = Verdict(False), None
    candidates = [(m, mir, "orb_ransac", n, r) for m, mir, n, r in _orb_hypotheses(a, b, config)]
    candidates += [(m, mir, method, 0, 0.0) for m, mir, method in _frame_hypotheses(a, b)]
    candidates += [(m, mir, method, 0, 0.0) for m, mir, method in _template_hypotheses(a, b)]
    for matrix, mirrored, method, inliers, ratio in candidates:
        agree, structured, overlap = _agreement(a, b, matrix, config)
        # many consistent keypoint matches are themselves evidence; an overlay (a caption band, a logo) may then
        # cover more cells. Not for the frame or template maps, which any two pictures of one layout produce
        strong = inliers >= config.strong_inliers and ratio >= config.strong_inlier_ratio
        needed = config.min_agreement_strong if strong else config.min_agreement
        verdict = Verdict(min(agree, structured) >= needed, method, mirrored, inliers, ratio,
                          agree, structured, overlap)
        if verdict.same:
            return verdict
        if min(agree, structured) > min(best.agreement, best.structured_agreement):
            best, best_matrix = verdict, matrix
    if best_matrix is not None and min(best.agreement, best.structured_agreement) >= config.min_refine:
        refined = _refine(a, b, best_matrix)
        if refined is not None:
            agree, structured, overlap = _agreement(a, b, refined, config)
            if min(agree, structured) >= config.min_agreement:
                return Verdict(True, best.method + "+ecc", best.mirrored, best.inliers, best.inlier_ratio, agree,
                               structured, overlap)
    return best
