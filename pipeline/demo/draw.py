"""What a demo image shows: the chest template, and on it what the study's report states.

Two halves. :func:`scene` reads a report's mentions and decides, once per study, what its images
show (finding, side, zone, size, status), so that the frontal and the lateral of a study agree.
:func:`render` draws a scene on the template of one view.

Rules (written to ``demo_truth/drawn.csv.gz`` and the ``drawn`` column of ``images.csv.gz``):

- A finding is drawn when the report mentions it as present, full strength, or as uncertain, at
  half strength (a hedged reading goes with a subtle film); findings mentioned only as absent, and
  unmentioned ones, draw nothing. A report without a positive or hedged drawable finding gets the
  bare template (plus the per-image noise every image gets).
- Side and zone come from the sentences that mention the finding: lobes (lingula: left middle),
  bases and basilar (lower), apical (apex), hila and hilar, retrocardiac, perihilar, bilateral and
  bibasilar (both sides), a bare left or right. A sentence naming several findings ("opacity at
  the left base may represent atelectasis") gives its place to all of them. When a finding's
  sentences name no place, the study's own draw stream picks one among those the phrase bank uses
  for that finding (lobes for consolidation, pneumonia, nodules, masses; bases for atelectasis and
  opacity; a side for effusion and pneumothorax).
- Size words of the sentences (tiny, small, mild, moderate, large, severe, "N mm", "N cm") scale
  the drawing.
- Frontal views (AP, PA, and images without a view position) follow the radiological convention:
  the patient's right is on the image's left (x < 0). Lateral views draw what projects: the heart,
  a posterior costophrenic meniscus for any effusion, haze, opacities and nodules at their height,
  tubes, wires and a pacemaker; no pneumothorax, no elevated hemidiaphragm, no mediastinal
  widening, and no sides.
- Not drawn at all: fractures, scarring, pleural thickening, emphysema, hiatal hernia, aortic
  calcification, degenerative changes (their text is there, their picture is not).

Pure numpy, no I/O. Coordinates are x and y in [-1, 1] over the columns and rows (y down).
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

STATUS_STRENGTH = {"present": 1.0, "uncertain": 0.5}
FOCAL = ("consolidation", "pneumonia", "atelectasis", "opacity")
LESIONS = ("nodule", "mass", "granuloma")
DEVICES = (
    "support_devices",
    "et_tube",
    "ng_tube",
    "central_line",
    "picc",
    "pacemaker",
    "sternotomy_wires",
    "chest_tube",
)
# Every finding key (phrases.yaml) that has a picture, in drawing order.
DRAWN_FINDINGS: tuple[str, ...] = (
    "cardiomegaly",
    "enlarged_cardiomediastinum",
    "edema",
    "vascular_congestion",
    *FOCAL,
    *LESIONS,
    "pleural_effusion",
    "elevated_hemidiaphragm",
    "pneumothorax",
    *DEVICES,
)
ZONES = ("apex", "upper", "middle", "lower", "hilar", "retrocardiac", "perihilar")
_SIDES = ("right", "left")
_SIGN = {"right": -1.0, "left": 1.0}  # patient's right on the image's left
# Places the phrase bank uses per finding, for sentences that name none.
_LOBES = (("right", "upper"), ("right", "middle"), ("right", "lower"), ("left", "upper"), ("left", "middle"))
_LOBES += (("left", "lower"),)
_BASES = (("right", "lower"), ("left", "lower"), ("both", "lower"))
_DEFAULT_PLACES = {
    "consolidation": _LOBES,
    "pneumonia": _LOBES,
    "nodule": _LOBES,
    "mass": _LOBES,
    "granuloma": _LOBES,
    "atelectasis": _BASES,
    "opacity": _BASES,
}
_SIDE_ZONE = {"atelectasis": "lower", "opacity": "lower", "consolidation": "lower", "pneumonia": "lower"}
_SIDE_ZONE |= {"nodule": "upper", "mass": "hilar", "granuloma": "upper"}
_SIZE_WORDS = (
    (re.compile(r"\b(tiny|trace|minimal)\b"), 0.15),
    (re.compile(r"\b(small|slight|mild|mildly)\b"), 0.3),
    (re.compile(r"\b(moderate|moderately)\b"), 0.6),
    (re.compile(r"\b(large|severe|marked|markedly|massive)\b"), 0.9),
)
# (pattern, side, zone): side "" when the pattern names none, "both" for both sides.
_PLACES = (
    (re.compile(r"\b(right|left) (upper|middle|lower) lobe"), None, None),
    (re.compile(r"\blingula"), "left", "middle"),
    (re.compile(r"\b(right|left)(?: lung)? base\b"), None, "lower"),
    (re.compile(r"\b(right|left) (?:basilar|basal)\b"), None, "lower"),
    (re.compile(r"\b(?:bibasilar|lung bases|bases)\b"), "both", "lower"),
    (re.compile(r"\b(right|left) apical\b"), None, "apex"),
    (re.compile(r"\bbiapical\b"), "both", "apex"),
    (re.compile(r"\b(right|left) hil(?:um|ar)\b"), None, "hilar"),
    (re.compile(r"\bhila\b"), "both", "hilar"),
    (re.compile(r"\bretrocardiac\b"), "left", "retrocardiac"),
    (re.compile(r"\bperihilar\b"), "both", "perihilar"),
    (re.compile(r"\bapical\b"), "", "apex"),
    (re.compile(r"\bbilateral(?:ly)?\b"), "both", ""),
    (re.compile(r"\b(right|left)\b"), None, ""),
)


@dataclass(frozen=True, slots=True)
class Drawn:
    """One thing an image shows.

    ``finding`` is the report's finding key (phrases.yaml); ``side`` right, left or "" (midline,
    or a lateral view); ``zone`` one of :data:`ZONES` or ""; ``size`` 0.15 (tiny) to 1 (large);
    ``status`` present or uncertain (drawn at half strength); ``detail`` a variant some devices
    need (central line route, ET tube tip in cm above the carina, an NG tube running off the film).
    """

    finding: str
    side: str = ""
    zone: str = ""
    size: float = 0.5
    status: str = "present"
    detail: str = ""

    def label(self) -> str:
        """``finding:side:zone:status`` as in the truth's ``drawn`` column."""
        return f"{self.finding}:{self.side}:{self.zone}:{self.status}"


# -- scene: report mentions -> what to draw ----------------------------------------------------------


def places(sentence: str) -> list[tuple[str, str]]:
    """(side, zone) pairs a sentence names, in order; side "both" or "" where it names no one side."""
    text = sentence.lower()
    found: list[tuple[int, str, str]] = []
    taken: list[tuple[int, int]] = []
    for pattern, side, zone in _PLACES:
        for m in pattern.finditer(text):
            if any(a < m.end() and m.start() < b for a, b in taken):
                continue  # part of a longer place already read ("left lower lobe" holds "left")
            taken.append((m.start(), m.end()))
            s = side if side is not None else m.group(1)
            z = zone if zone is not None else m.group(2)
            found.append((m.start(), s, z))
    return [(s, z) for _, s, z in sorted(found)]


def _size(sentences: Sequence[str], finding: str) -> float:
    text = " ".join(sentences).lower()
    if finding in LESIONS:
        if m := re.search(r"\b(\d+) mm\b", text):
            return min(1.0, max(0.15, int(m.group(1)) / 14))
        if m := re.search(r"\b(\d+(?:\.\d)?) cm\b", text):
            return min(1.0, max(0.2, float(m.group(1)) / (3.0 if finding == "nodule" else 7.5)))
    sizes = [v for pattern, v in _SIZE_WORDS if pattern.search(text)]
    return max(sizes) if sizes else 0.5


def _sides(hits: Sequence[tuple[str, str]]) -> list[str]:
    out: list[str] = []
    for side, _zone in hits:
        for s in _SIDES if side == "both" else (side,):
            if s and s not in out:
                out.append(s)
    return out


def _device(finding: str, sentences: Sequence[str], rng: random.Random) -> list[Drawn]:
    text = " ".join(sentences).lower()
    if finding == "support_devices":  # "lines and tubes": an ET tube and a right IJ line
        return [Drawn("support_devices", detail="et_tube"), Drawn("support_devices", "right", detail="ij")]
    if finding == "et_tube":
        m = re.search(r"(\d+(?:\.\d)?) cm", text)
        cm = float(m.group(1)) if m else (6.0 if "clavicles" in text else 4.0)
        return [Drawn("et_tube", detail=f"{cm:.1f}")]
    if finding == "ng_tube":
        long = "inferior edge" in text or "not seen" in text
        return [Drawn("ng_tube", detail="off_film" if long else "stomach")]
    if finding == "central_line":
        if "subclavian" in text:
            return [
                Drawn("central_line", "left" if "left subclavian" in text else "right", detail="subclavian")
            ]
        return [Drawn("central_line", "right", detail="ij")]
    if finding == "pacemaker":
        side = "right" if "right-sided" in text or "right chest wall" in text else "left"
        return [Drawn("pacemaker", side)]
    if finding == "sternotomy_wires":
        return [Drawn("sternotomy_wires")]
    sides = _sides([h for s in sentences for h in places(s)])  # picc, chest_tube
    return [Drawn(finding, sides[0] if sides else rng.choice(_SIDES))]


def scene(mentions: Iterable[object], rng: random.Random) -> tuple[Drawn, ...]:
    """What the images of one study show, from its report's mentions.

    ``mentions`` are :class:`pipeline.demo.text.Mention` (anything with ``finding``, ``status``
    and ``sentence``); ``rng`` is the study's own draw stream, used only for places the report
    does not name. Same mentions and stream state, same scene.
    """
    status: dict[str, str] = {}
    sentences: dict[str, list[str]] = {}
    for m in mentions:
        key, st = m.finding, m.status  # type: ignore[attr-defined]
        if st not in STATUS_STRENGTH or key not in DRAWN_FINDINGS:
            continue
        if status.get(key) != "present":
            status[key] = st
        sentences.setdefault(key, []).append(m.sentence)  # type: ignore[attr-defined]
    out: list[Drawn] = []
    for key in DRAWN_FINDINGS:
        if key not in status:
            continue
        st, sents = status[key], sentences[key]
        if key in DEVICES:
            out.extend(_device(key, sents, rng))
            continue
        size = _size(sents, key)
        hits = [h for s in sents for h in places(s)]
        if key in ("cardiomegaly", "enlarged_cardiomediastinum", "edema", "vascular_congestion"):
            out.append(Drawn(key, size=size, status=st))
        elif key in ("pleural_effusion", "pneumothorax", "elevated_hemidiaphragm"):
            sides = _sides(hits)
            if not sides:
                r = rng.random()
                sides = list(_SIDES) if key == "pleural_effusion" and r < 0.25 else [_SIDES[r < 0.6]]
            zone = {"pleural_effusion": "lower", "pneumothorax": "apex"}.get(key, "lower")
            out.extend(Drawn(key, s, zone, size, st) for s in sides)
        else:  # focal opacities and lesions
            spots: list[tuple[str, str]] = []
            if key == "nodule" and any("multiple" in s.lower() for s in sents):
                spots = rng.sample([(s, z) for s in _SIDES for z in ("upper", "middle", "lower")], 4)
            elif key == "granuloma" and any("granulomas" in s.lower() for s in sents):
                spots = rng.sample([(s, z) for s in _SIDES for z in ("upper", "middle", "lower")], 2)
            for side, zone in hits:
                zone = zone or _SIDE_ZONE[key]
                if zone == "perihilar":
                    spots.append(("both", "perihilar"))
                    continue
                for s in _SIDES if side == "both" else (side or rng.choice(_SIDES),):
                    if zone == "retrocardiac":
                        s = "left"
                    spots.append((s, zone))
            if not spots:
                side, zone = rng.choice(_DEFAULT_PLACES[key])
                spots = [(s, zone) for s in (_SIDES if side == "both" else (side,))]
            seen: set[tuple[str, str]] = set()
            for spot in spots:
                if spot not in seen and len(seen) < 4:
                    seen.add(spot)
                    out.append(Drawn(key, spot[0] if spot[0] != "both" else "", spot[1], size, st))
    return tuple(out)


_NOT_ON_LATERAL = frozenset({"pneumothorax", "elevated_hemidiaphragm", "enlarged_cardiomediastinum"})


def projected(findings: Sequence[Drawn], lateral: bool) -> tuple[Drawn, ...]:
    """What one view shows of a study's scene: all of it on a frontal; on a lateral, no
    pneumothorax, hemidiaphragm or mediastinum, no sides, and each remaining thing once."""
    if not lateral:
        return tuple(findings)
    out: list[Drawn] = []
    for d in findings:
        if d.finding in _NOT_ON_LATERAL:
            continue
        d = Drawn(d.finding, "", d.zone, d.size, d.status, d.detail)
        if d not in out:
            out.append(d)
    return tuple(out)


# -- render: template and drawings -----------------------------------------------------------------


def soft(e: np.ndarray, sharpness: float = 10.0) -> np.ndarray:
    """1 inside an ellipse (e < 1), 0 outside, with a soft edge."""
    return 1.0 / (1.0 + np.exp(np.minimum((e - 1.0) * sharpness, 60.0)))  # capped: no overflow warning


@dataclass(frozen=True)
class Anatomy:
    """The template of one shape and view, and the layers drawings need."""

    x: np.ndarray  # (1, columns)
    y: np.ndarray  # (rows, 1)
    base: np.ndarray  # the picture in [0, 1], markings included
    markings: np.ndarray  # lung vessel markings alone (added into base)
    lungs: np.ndarray  # soft lung mask
    px: float  # one pixel in x units


def _segments_layer(
    x: np.ndarray,
    y: np.ndarray,
    segments: Iterable[tuple[float, float, float, float, float, float]],
    px: float,
) -> np.ndarray:
    """Anti-aliased line segments (x0, y0, x1, y1, half_width, amplitude), each on its box."""
    out = np.zeros((y.shape[0], x.shape[1]), dtype=np.float32)
    xs, ys = x[0], y[:, 0]
    for x0, y0, x1, y1, hw, amp in segments:
        hw = max(hw, 0.6 * px)
        pad = hw + 2 * px
        c0, c1 = np.searchsorted(xs, [min(x0, x1) - pad, max(x0, x1) + pad])
        r0, r1 = np.searchsorted(ys, [min(y0, y1) - pad, max(y0, y1) + pad])
        if c0 >= c1 or r0 >= r1:
            continue
        bx, by = xs[c0:c1][None, :], ys[r0:r1][:, None]
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((bx - x0) * dx + (by - y0) * dy) / max(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
        d = np.hypot(bx - (x0 + t * dx), by - (y0 + t * dy))
        box = out[r0:r1, c0:c1]  # where lines cross, the denser shows (no bright knots)
        np.maximum(box, amp * np.clip(1.0 - (d - hw) / px, 0.0, 1.0), out=box)
    return out


def _polyline(
    points: Sequence[tuple[float, float]], hw: float, amp: float
) -> list[tuple[float, float, float, float, float, float]]:
    return [(a[0], a[1], b[0], b[1], hw, amp) for a, b in zip(points, points[1:], strict=False)]


def _markings(x: np.ndarray, y: np.ndarray, px: float) -> np.ndarray:
    """Vessels fanning out of each hilum, thinner and fainter toward the periphery."""
    rng = random.Random("clip2clinic-demo/markings")  # the same vessels on every image
    segments = []
    for sign in (-1.0, 1.0):
        hx, hy = sign * 0.2, -0.08
        for k in range(13):
            angle = np.deg2rad(-75 + k * 150 / 12 + rng.uniform(-5, 5))
            length = rng.uniform(0.45, 0.62)
            dx, dy = sign * np.cos(angle), np.sin(angle) * 1.5
            mid = (hx + dx * length * 0.45, hy + dy * length * 0.45)
            segments.append((hx, hy, *mid, 0.014, 0.07))
            for turn in (-0.35, 0.35):  # two branches, each forking again toward the pleura
                ca, sa = np.cos(turn), np.sin(turn)
                ex, ey = dx * ca - dy * sa * sign, dx * sa * sign + dy * ca
                end = (mid[0] + ex * length * 0.35, mid[1] + ey * length * 0.35)
                segments.append((*mid, *end, 0.008, 0.05))
                for turn2 in (-0.3, 0.3):
                    c2, s2 = np.cos(turn2), np.sin(turn2)
                    fx, fy = ex * c2 - ey * s2 * sign, ex * s2 * sign + ey * c2
                    segments.append(
                        (*end, end[0] + fx * length * 0.3, end[1] + fy * length * 0.3, 0.005, 0.04)
                    )
    return _segments_layer(x, y, segments, px)


@functools.lru_cache(maxsize=16)
def anatomy(rows: int, columns: int, lateral: bool) -> Anatomy:
    """A chest-like picture in [0, 1] (bright bone and soft tissue, dark lungs with vessel markings)."""
    y = np.linspace(-1.0, 1.0, rows, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, columns, dtype=np.float32)[None, :]
    px = 2.0 / max(columns - 1, 1)
    body = soft((x / 0.92) ** 2 + ((y - 0.05) / 1.15) ** 2, 6.0)
    img = 0.08 + 0.55 * body + 0.12 * (y + 1.0) / 2.0  # denser toward the abdomen
    if lateral:
        lungs = soft(((x + 0.05) / 0.5) ** 2 + ((y + 0.05) / 0.6) ** 2)
        spine = soft(((x - 0.62) / 0.12) ** 2 + (y / 1.1) ** 2)
        heart = soft(((x + 0.25) / 0.3) ** 2 + ((y - 0.35) / 0.3) ** 2)
        img = img - 0.38 * lungs + 0.3 * spine + 0.18 * heart
        markings = np.zeros_like(img)
    else:
        lungs = soft(((x + 0.4) / 0.28) ** 2 + ((y + 0.05) / 0.58) ** 2) + soft(
            ((x - 0.4) / 0.28) ** 2 + ((y + 0.05) / 0.58) ** 2
        )
        spine = soft((x / 0.07) ** 2 + (y / 1.2) ** 2)
        heart = soft(((x - 0.08) / 0.27) ** 2 + ((y - 0.3) / 0.26) ** 2)
        diaphragm = soft((x / 0.9) ** 2 + ((y - 1.05) / 0.4) ** 2)
        trachea = soft((x / 0.045) ** 2 + ((y + 0.75) / 0.5) ** 2, 6.0)  # air column down to the carina
        img = img - 0.4 * lungs + 0.22 * spine + 0.2 * heart + 0.2 * diaphragm - 0.14 * trachea
        ribs = 0.04 * (np.sin(y * 18.0) > 0.6) * np.clip(lungs, 0.0, 1.0)
        markings = _markings(x, y, px) * np.clip(lungs, 0.0, 1.0) * (1.0 - 0.8 * heart)
        img = img + ribs + markings
    f32 = np.float32
    return Anatomy(x, y, np.clip(img, 0.0, 1.0).astype(f32), markings.astype(f32), lungs.astype(f32), px)


# Zone centres (frontal: x for the patient's left, mirrored for the right; lateral: anterior < 0).
_FRONTAL_AT = {
    "apex": (0.42, -0.5),
    "upper": (0.42, -0.3),
    "middle": (0.3, 0.05),
    "lower": (0.42, 0.33),
    "hilar": (0.24, -0.06),
    "retrocardiac": (0.2, 0.36),
    "perihilar": (0.26, -0.02),
}
_LATERAL_AT = {
    "apex": (0.05, -0.5),
    "upper": (0.0, -0.3),
    "middle": (-0.3, 0.05),
    "lower": (0.2, 0.32),
    "hilar": (0.0, -0.05),
    "retrocardiac": (0.1, 0.35),
    "perihilar": (0.0, -0.02),
    "": (0.0, 0.0),
}


def _at(d: Drawn, lateral: bool, sign: float) -> tuple[float, float]:
    if lateral:
        return _LATERAL_AT[d.zone]
    fx, fy = _FRONTAL_AT[d.zone or "lower"]
    return sign * fx, fy


def _ellipse(a: Anatomy, cx: float, cy: float, rx: float, ry: float, sharpness: float) -> np.ndarray:
    return soft(((a.x - cx) / rx) ** 2 + ((a.y - cy) / ry) ** 2, sharpness)


def _side_lung(a: Anatomy, sign: float) -> np.ndarray:
    """The lung mask of one side (frontal views)."""
    return np.clip(a.lungs, 0.0, 1.0) * (sign * a.x > 0)


def _devices(d: Drawn, lateral: bool) -> list[tuple[float, float, float, float, float, float]]:
    """Line segments of one device (tubes and lines radiopaque, metal brighter)."""
    s = _SIGN.get(d.side, 1.0)
    kind = d.detail if d.finding == "support_devices" else d.finding
    if kind == "et_tube":
        tip = -0.25 - 0.04 * float(d.detail if d.finding == "et_tube" else 4.0)
        x0 = 0.1 if lateral else 0.0
        return _polyline([(x0, -1.0), (x0, tip)], 0.016, 0.3)
    if kind == "ng_tube":
        end = 1.0 if d.detail == "off_film" else 0.82
        if lateral:
            return _polyline([(0.2, -1.0), (0.25, 0.5), (0.15, end)], 0.01, 0.28)
        return _polyline([(0.02, -1.0), (0.03, 0.55), (0.3, 0.72), (0.38, end)], 0.01, 0.28)
    if kind in ("ij", "subclavian", "central_line", "picc"):
        if lateral:
            return _polyline([(0.05, -1.0), (-0.05, -0.6), (-0.08, -0.22)], 0.007, 0.28)
        if kind == "picc":
            return _polyline(
                [(s * 0.98, -0.42), (s * 0.6, -0.6), (s * 0.22, -0.55), (-0.08, -0.2)], 0.007, 0.28
            )
        if kind == "subclavian" or d.detail == "subclavian":
            return _polyline(
                [(s * 0.75, -0.66), (s * 0.3, -0.58), (-0.04, -0.45), (-0.08, -0.2)], 0.007, 0.28
            )
        return _polyline([(-0.3, -1.0), (-0.12, -0.62), (-0.08, -0.2)], 0.007, 0.28)
    if kind == "chest_tube":
        if lateral:
            return _polyline([(0.35, 0.45), (0.25, 0.0), (0.1, -0.45)], 0.014, 0.3)
        return _polyline([(s * 0.86, 0.4), (s * 0.62, 0.12), (s * 0.45, -0.45)], 0.014, 0.3)
    if kind == "pacemaker":
        gx, gy = (-0.45, -0.55) if lateral else (s * 0.55, -0.68)
        box = [
            (gx - 0.1 + 0.2 * k / 6, gy - 0.05, gx - 0.1 + 0.2 * k / 6, gy + 0.05, 0.02, 0.6)
            for k in range(7)
        ]
        leads = _polyline([(gx, gy), (-0.06, -0.35), (-0.1, 0.2)], 0.006, 0.35)
        leads += _polyline([(-0.06, -0.35), (0.1, 0.42)], 0.006, 0.35)
        return box + leads
    if kind == "sternotomy_wires":
        x0 = -0.5 if lateral else 0.0
        return [(x0 - 0.04, yy, x0 + 0.04, yy, 0.012, 0.55) for yy in np.linspace(-0.5, 0.15, 5)]
    return []


def render(a: Anatomy, findings: Sequence[Drawn], lateral: bool, rng: np.random.Generator) -> np.ndarray:
    """``a.base`` with ``findings`` drawn on it (a new array; values may leave [0, 1])."""
    img = a.base.astype(np.float32, copy=True)
    focal = np.zeros_like(img)  # coincident opacities do not add up: the densest one shows
    fluid = np.zeros_like(img)
    lines: list[tuple[float, float, float, float, float, float]] = []
    x, y = a.x, a.y
    lung = np.clip(a.lungs, 0.0, 1.0)
    for d in projected(findings, lateral):
        k = STATUS_STRENGTH[d.status]
        s = _SIGN.get(d.side, 1.0)
        z = d.size
        if d.finding == "cardiomegaly":
            if lateral:
                big = _ellipse(a, -0.2, 0.33, 0.3 * (1.2 + 0.25 * z), 0.3 * (1.1 + 0.15 * z), 10)
                img += 0.18 * k * np.clip(big - _ellipse(a, -0.25, 0.35, 0.3, 0.3, 10), 0, 1)
            else:
                big = _ellipse(a, 0.12, 0.3, 0.27 * (1.3 + 0.35 * z), 0.26 * (1.12 + 0.15 * z), 10)
                img += 0.24 * k * np.clip(big - _ellipse(a, 0.08, 0.3, 0.27, 0.26, 10), 0, 1)
        elif d.finding == "enlarged_cardiomediastinum":
            wide = _ellipse(a, 0.0, -0.38, 0.16 + 0.1 * z, 0.32, 10)
            img += 0.24 * k * np.clip(wide - _ellipse(a, 0.0, -0.38, 0.1, 0.32, 10), 0, 1)
        elif d.finding in ("edema", "vascular_congestion"):
            haze = 0.0
            for sign in (-1.0, 1.0):
                cx, cy = (0.0, 0.0) if lateral else (sign * 0.24, 0.0)
                rx, ry = (0.4, 0.4) if lateral else (0.2 + 0.06 * z, 0.3 + 0.05 * z)
                haze = np.maximum(haze, _ellipse(a, cx, cy, rx, ry, 3.0))
            if d.finding == "edema":
                img += (0.1 + 0.1 * z) * k * haze * lung
            img += (0.6 + 0.6 * z) * k * a.markings * haze  # engorged vessels
        elif d.finding in FOCAL or d.finding in LESIONS:
            for sign in (-1.0, 1.0) if d.zone == "perihilar" and not lateral else (s,):
                cx, cy = _at(d, lateral, sign)
                if d.finding == "atelectasis":  # plate-like: a flat band
                    blob = _ellipse(a, cx, cy, 0.17 + 0.05 * z, 0.035 + 0.03 * z, 4.0)
                    amp = 0.3
                elif d.finding == "consolidation":
                    blob = _ellipse(a, cx, cy, 0.12 + 0.05 * z, 0.11 + 0.05 * z, 5.0)
                    amp = 0.3
                elif d.finding == "pneumonia":  # patchy
                    blob = _ellipse(a, cx, cy, 0.13 + 0.05 * z, 0.12 + 0.05 * z, 4.0)
                    blob = blob * (0.6 + 0.4 * np.sin(7.0 * x + rng.uniform(0, 6)) * np.sin(9.0 * y))
                    amp = 0.3
                elif d.finding == "opacity":  # hazy
                    r = (0.16, 0.2) if d.zone == "perihilar" else (0.13 + 0.04 * z, 0.12 + 0.04 * z)
                    blob = _ellipse(a, cx, cy, *r, 3.0)
                    amp = 0.2
                elif d.finding == "nodule":
                    r = max(0.035 + 0.035 * z, 1.3 * a.px)
                    blob, amp = _ellipse(a, cx, cy, r, r, 8.0), 0.34
                elif d.finding == "mass":
                    r = 0.09 + 0.07 * z
                    lobes = 1.0 + 0.12 * np.sin(5.0 * np.arctan2(y - cy, x - cx) + rng.uniform(0, 6))
                    e = (((x - cx) / r) ** 2 + ((y - cy) / r) ** 2) / lobes
                    blob, amp = soft(e, 8.0), 0.32
                else:  # granuloma: small and calcified
                    r = max(0.025, 1.2 * a.px)
                    blob, amp = _ellipse(a, cx, cy, r, r, 8.0), 0.55
                limit = 1.0 if d.finding in LESIONS else np.minimum(lung * 1.5, 1.0)
                focal = np.maximum(focal, amp * k * blob * limit)
        elif d.finding == "pleural_effusion":
            h = 0.1 + 0.45 * z
            if lateral:  # posterior costophrenic meniscus, higher at the back
                side_mask = lung
                t = np.clip((x + 0.5) / 1.0, 0.0, 1.0)
            else:  # a meniscus in the base of that hemithorax, higher at the lateral wall
                side_mask = _side_lung(a, s)
                t = np.clip((s * x - 0.12) / 0.56, 0.0, 1.0)
            surface = 0.55 - h - 0.16 * t**2
            level = 1.0 / (1.0 + np.exp(np.minimum(-(y - surface) * 25.0, 60.0)))
            fluid = np.maximum(fluid, 0.4 * k * level * np.minimum(side_mask * 1.4, 1.0))
        elif d.finding == "elevated_hemidiaphragm":  # a higher dome on that side
            t = np.clip((s * x - 0.12) / 0.56, 0.0, 1.0)
            dome = 0.4 - 0.12 * z - 0.12 * (1.0 - (2 * t - 1) ** 2)
            side_mask = _side_lung(a, s)
            img += 0.34 * k * side_mask / (1.0 + np.exp(np.minimum(-(y - dome) * 25.0, 60.0)))
        elif d.finding == "pneumothorax":  # pleural line; beyond it no markings and more lucent
            f = 0.35 + 0.55 * z  # how far the lung has fallen away from the apex and the lateral wall
            cx, cy, rx, ry = (
                s * (0.4 - 0.1 * f),
                -0.05 + 0.14 * f,
                0.28 * (1 - 0.45 * f),
                0.58 * (1 - 0.28 * f),
            )
            e = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
            side_lung = _side_lung(a, s)
            gas = side_lung * (1.0 - soft(e, 30.0))
            img -= k * gas * (a.markings + 0.06)
            width = 1.5 * 2 * a.px / min(rx, ry)
            img += 0.14 * k * side_lung * np.exp(-(((e - 1.0) / width) ** 2)) * (e > 0.8)
        elif d.finding in DEVICES:
            lines.extend(_devices(d, lateral))
    img += focal + fluid
    if lines:
        img += _segments_layer(x, y, lines, a.px)
    return img
