"""Rendering for the longitudinal chest X-ray phantom: one subject's anatomy and findings as attenuation maps.

:mod:`diffvqa.data.phantom` decides *what* each study shows (findings, levels, pose, exposure); this module
decides *how it looks*. Everything is vectorised numpy (PIL only draws the vessel tree).

Geometry conventions
    * Image pixels: x to the right, y down, pixel centres at integer coordinates (the ground-truth contract).
    * Canonical frame: a subject's anatomy as it would appear at identity pose, in image-pixel coordinates. It is
      rasterised on a canvas padded by ``pad`` pixels on every side: canvas[row, col] is canonical point
      (x, y) = (col - pad, row - pad), so a pose jitter never samples outside what was drawn.
    * Chest units: anatomy is described in X = (x - x0) / k, Y = (y - y0) / k with (x0, y0) the image centre and
      k pixels per unit (isotropic; k ~ the image width for a portrait image).
    * Sides: the patient's right is the image's left (radiographs are displayed as if facing the patient).
      Side index 0 = patient right (X < midline), 1 = patient left.
    * A study's pose A (2x3) maps canonical points to its image pixels. The image is the canvas *pulled* through
      A^-1 with bilinear interpolation, so the pair transform M = A_main @ A_ref^-1 is exact by construction.

Intensity: every structure adds attenuation D (soft tissue ~ 1, aerated lung ~ 0.2, bone +0.2); the detector
image is 1 - exp(-mu D), then exposure, gamma, blur and noise (:func:`expose`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw

AIR = 0.72  # attenuation removed by a unit of aerated lung: lungs end up ~0.2 against ~1 for soft tissue
MU = 1.5  # detector response: I = 1 - exp(-MU * D), normalised so that D = D_WHITE is white
D_WHITE = 1.6
SIDES = ("right", "left")  # index = side; the patient's right is the image's left


def soft_step(z: np.ndarray) -> np.ndarray:
    """Smooth 0 -> 1 step; z in units of the edge width (0.5 at z = 0)."""
    return 0.5 + 0.5 * np.tanh(z)


# ----------------------------------------------------------------------------------------------------------
# the canvas and the subject's anatomy


@dataclass
class Canvas:
    """The padded canonical raster of one image size, with chest coordinates per canvas pixel."""

    height: int
    width: int
    pad: int
    k: float  # pixels per chest unit
    X: np.ndarray  # (Hc, Wc) float32 chest units, x to the right
    Y: np.ndarray  # (Hc, Wc) float32 chest units, y down
    edge: float  # soft-edge width in chest units (~0.7 pixel)

    @property
    def shape(self) -> tuple[int, int]:
        return self.X.shape

    def to_canvas(self, X: float, Y: float) -> tuple[float, float]:
        """Chest units -> canvas (col, row)."""
        return (X * self.k + (self.width - 1) / 2 + self.pad, Y * self.k + (self.height - 1) / 2 + self.pad)

    def window(self, X: float, Y: float, radius: float) -> tuple[slice, slice]:
        """Canvas (rows, cols) slices of the square of half-side ``radius`` (chest units) around (X, Y)."""
        col, row = self.to_canvas(X, Y)
        r = radius * self.k + 2
        hc, wc = self.shape
        rows = slice(int(np.clip(math.floor(row - r), 0, hc)), int(np.clip(math.ceil(row + r) + 1, 0, hc)))
        cols = slice(int(np.clip(math.floor(col - r), 0, wc)), int(np.clip(math.ceil(col + r) + 1, 0, wc)))
        return rows, cols


@functools.lru_cache(maxsize=4)
def make_canvas(height: int, width: int) -> Canvas:
    """Canvas for ``height`` x ``width`` images: 10 % padding, k = min(W, H / 1.22) so a portrait frame holds
    the chest from the neck to the upper abdomen and a landscape frame shows background at the sides.
    Cached: callers must not write into its arrays."""
    pad = int(math.ceil(0.1 * max(height, width))) + 2
    k = min(width, height / 1.22)
    cols = (np.arange(width + 2 * pad, dtype=np.float32) - pad - (width - 1) / 2) / k
    rows = (np.arange(height + 2 * pad, dtype=np.float32) - pad - (height - 1) / 2) / k
    Y, X = np.meshgrid(rows, cols, indexing="ij")
    return Canvas(height, width, pad, float(k), X, Y, edge=0.7 / k)


@dataclass
class Anatomy:
    """One subject's anatomy in chest units (per-side tuples are indexed (right, left))."""

    mid: float  # body midline X
    w_lat: tuple[float, float]  # lateral half-width of each lung
    y_apex: tuple[float, float]
    y_cp: tuple[float, float]  # costophrenic angle (lowest lung point)
    dome_h: tuple[float, float]  # hemidiaphragm dome height above the costophrenic angle
    s_med: float  # medial lung border, distance from the midline
    wall: float  # chest-wall soft tissue beyond the lungs
    tissue: float  # body habitus (soft-tissue attenuation scale)
    heart_a: float  # heart semi-axes (long, short) and tilt (radians, long axis pointing down-left of patient)
    heart_b: float
    heart_tilt: float
    rib_y0: float  # first posterior rib at the spine; spacing, arc shape, spacing growth
    rib_sp: float
    rib_a: float
    rib_b: float
    rib_grow: float
    clav_y: float
    hilum_y: tuple[float, float]
    knob_y: float  # aortic knob
    vertebra: float  # vertebral period
    breasts: float  # breast shadow strength (0 = none)
    emphysema: float = 0.0  # 0 = none; chronic findings that reshape the anatomy are set before rendering
    scoliosis: float = 0.0  # spine curve amplitude, chest units (signed)

    def lung(self, side: int) -> tuple[float, float, float, float]:
        """(lateral half-width, apex Y, costophrenic Y, dome height) after emphysematous hyperinflation."""
        e = self.emphysema
        return (
            self.w_lat[side] * (1 + 0.04 * e),
            self.y_apex[side],
            self.y_cp[side] + 0.04 * e,
            self.dome_h[side] * (1 - 0.55 * e),
        )


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """A random adult chest: size, shape and position vary per subject."""
    u = rng.uniform
    dy = u(-0.04, 0.04)
    w = u(0.33, 0.39)
    apex = -0.40 + dy + u(-0.02, 0.02)
    height = u(0.64, 0.74)
    cp_right = apex + height
    dome = u(0.09, 0.14)
    return Anatomy(
        mid=u(-0.02, 0.02),
        w_lat=(w * u(0.97, 1.03), w * u(0.95, 1.01)),
        y_apex=(apex + u(-0.01, 0.01), apex + u(-0.01, 0.01)),
        y_cp=(cp_right, cp_right + u(0.0, 0.03)),
        dome_h=(dome + u(0.01, 0.03), dome),  # the right hemidiaphragm sits higher
        s_med=u(0.065, 0.085),
        wall=u(0.025, 0.05),
        tissue=u(0.85, 1.1),
        heart_a=u(0.40, 0.48) * w * 1.05,
        heart_b=u(0.12, 0.145) * w / 0.36,
        heart_tilt=math.radians(u(12, 28)),
        rib_y0=apex + u(-0.03, 0.0),
        rib_sp=u(0.058, 0.068) * height / 0.69,
        rib_a=u(0.2, 0.3),
        rib_b=u(1.4, 1.8),
        rib_grow=u(0.03, 0.07),
        clav_y=apex + u(0.02, 0.06),
        hilum_y=(apex + 0.34 * height, apex + 0.31 * height),
        knob_y=apex + u(0.17, 0.22) * height,
        vertebra=u(0.047, 0.055),
        breasts=u(0.5, 1.0) if rng.random() < 0.45 else 0.0,
    )


def lung_point(an: Anatomy, side: int, t: float, r: float) -> tuple[float, float]:
    """Chest point at fraction ``t`` from apex (0) to costophrenic angle (1), and ``r`` from medial (0) to
    lateral (1) across the lung at that height."""
    wl, ya, yc, _ = an.lung(side)
    s_lat = _lateral(wl, t)
    s = an.s_med + r * (s_lat - an.s_med)
    return an.mid + (s if side == 1 else -s), ya + t * (yc - ya)


def _lateral(wl, t):
    """Lateral lung border (distance from the midline) at height fraction t: a rounded apex, then a convex
    ribcage widest just above the costophrenic angle."""
    tc = np.clip(t / 0.75, 0.0, 1.0)
    return wl * (0.4 + 0.6 * (1 - (1 - tc) ** 2.5))


def _dome(an: Anatomy, side: int, s):
    """Hemidiaphragm: highest ~45 % of the way out, reaching the costophrenic angle laterally (a sharp angle)
    and dropping half as far medially (the cardiophrenic angle)."""
    wl, _, yc, dh = an.lung(side)
    peak = 0.45 * wl
    lateral = 1 - ((s - peak) / (wl - peak)) ** 2
    medial = 1 - 0.5 * ((peak - s) / peak) ** 2
    return yc - dh * np.where(s >= peak, lateral, medial)


def lung_field(
    cv: Canvas, an: Anatomy, side: int, inset: float = 0.0, reach: float = 0.45, flat_base: bool = False
) -> np.ndarray:
    """Soft mask (Hc, Wc) of one lung (0 on the other side).

    Args:
        inset: pull the lung away from its apical and lateral pleura by this much (chest units) at the apex,
            fading to nothing at height fraction ``reach``: the collapsed lung of a pneumothorax, an apical cap.
        flat_base: end at the costophrenic level instead of the dome (fluid collects in front of/behind it).
    """
    wl, ya, yc, _ = an.lung(side)
    X, Y = cv.X, cv.Y
    s = (X - an.mid) if side == 1 else (an.mid - X)
    t = (Y - ya) / (yc - ya)
    pull = inset * np.clip(1 - t / reach, 0, 1) ** 1.5 if inset else 0.0
    s_lat = _lateral(wl, t) - pull
    top = ya + pull + 1.6 * ((s - 0.38 * wl) / wl) ** 2  # the apex; steep laterally, it also shapes the upper wall
    base = (yc + 0.01) if flat_base else _dome(an, side, s)
    e = cv.edge
    field_ = soft_step((Y - top) / e) * soft_step((base - Y) / e) * soft_step((s_lat - s) / e)
    s_med = an.s_med * (0.8 + 0.3 * np.clip(t, 0, 1))  # the upper mediastinum is narrower
    return (field_ * soft_step((s - s_med) / e)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# small raster helpers


def _blur(a: np.ndarray, passes: int = 1) -> np.ndarray:
    """[1, 2, 1] / 4 separable blur, edges replicated."""
    for _ in range(passes):
        p = np.pad(a, 1, mode="edge")
        a = 0.25 * p[:-2, 1:-1] + 0.5 * p[1:-1, 1:-1] + 0.25 * p[2:, 1:-1]
        p = np.pad(a, 1, mode="edge")
        a = 0.25 * p[1:-1, :-2] + 0.5 * p[1:-1, 1:-1] + 0.25 * p[1:-1, 2:]
    return a.astype(np.float32)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Band-limited noise in [0, 1]: a coarse random grid (``cells`` across the width) upsampled bicubically."""
    h, w = shape
    grid = rng.random((max(2, round(cells * h / w)) + 3, cells + 3)).astype(np.float32)
    big = Image.fromarray(grid, mode="F").resize((w, h), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(big, dtype=np.float32), 0.0, 1.0)


def _disc(cv: Canvas, out: np.ndarray, X0: float, Y0: float, r: float, value: float = 1.0) -> None:
    """Add a soft disc of radius r (chest units) to ``out`` in place, inside its bounding window only."""
    rows, cols = cv.window(X0, Y0, r)
    d = np.hypot(cv.X[rows, cols] - X0, cv.Y[rows, cols] - Y0)
    out[rows, cols] += value * soft_step((r - d) / cv.edge)


def _segment(cv: Canvas, out: np.ndarray, p0, p1, half_width: float, value: float = 1.0) -> None:
    """Add a soft line segment (capsule) from p0 to p1 (chest units) to ``out`` in place."""
    (x0, y0), (x1, y1) = p0, p1
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    rows, cols = cv.window(cx, cy, math.hypot(x1 - x0, y1 - y0) / 2 + half_width)
    X, Y = cv.X[rows, cols], cv.Y[rows, cols]
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((X - x0) * dx + (Y - y0) * dy) / max(dx * dx + dy * dy, 1e-12), 0, 1)
    d = np.hypot(X - x0 - t * dx, Y - y0 - t * dy)
    out[rows, cols] += value * soft_step((half_width - d) / cv.edge)


def _ellipse(cv: Canvas, X0, Y0, a, b, angle=0.0, soft: float = 1.0) -> np.ndarray:
    """Soft filled ellipse (Hc, Wc) with semi-axes a (along ``angle``) and b, computed in its bounding window."""
    out = np.zeros(cv.shape, np.float32)
    rows, cols = cv.window(X0, Y0, max(a, b) + 4 * soft * cv.edge)
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = cv.X[rows, cols] - X0, cv.Y[rows, cols] - Y0
    p, q = (c * dx + s * dy) / a, (-s * dx + c * dy) / b
    rho = np.sqrt(p * p + q * q)
    out[rows, cols] = soft_step((1 - rho) * min(a, b) / (soft * cv.edge))
    return out


# ----------------------------------------------------------------------------------------------------------
# static anatomy (everything that does not change between a subject's studies)


@dataclass
class Static:
    """A subject's unchanging layers on the canvas, computed once and reused for each of its studies."""

    base: np.ndarray  # body tissue + bones - lung air (without the heart's displacement of lung)
    air: np.ndarray  # aerated-lung thickness (0..~1.2)
    lungs: tuple[np.ndarray, np.ndarray]  # soft lung masks (right, left)
    ribs: np.ndarray  # posterior + anterior rib attenuation (also inside ``base``)
    vessels: np.ndarray  # lung markings, already gated by the lungs (0..1, not inside ``base``)
    texture: np.ndarray  # smooth noise in [0, 1] for patchy findings
    spine: np.ndarray  # soft spine mask
    thorax: np.ndarray  # soft mask above the hemidiaphragms
    memo: dict = field(default_factory=dict)  # per-visit structures that repeat (heart at a size, aorta, ...)

    def cached(self, key, make):
        """``make()`` once per subject and ``key``: visits share views and levels, so most repeat."""
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]


def ribs_layer(cv: Canvas, an: Anatomy, fracture: dict | None = None) -> np.ndarray:
    """Posterior ribs as a phase field (one pass for all ribs) plus fainter anterior ribs.

    A posterior rib n runs from the spine, up a little and then down-laterally: its centreline is
    Y = y_n + f(s), f(s) = -a s + b s^2, with y_n spaced ``rib_sp`` growing by ``rib_grow`` per rib. The phase
    phi = n(Y - f(s)) is the (fractional) rib index at a pixel; ribs are where phi is near an integer.
    ``fracture`` = dict(side, rib, s, gap, shift) cuts rib ``rib`` at distance ``s`` from the midline and shifts
    the lateral fragment by ``shift`` of a rib spacing.
    """
    X, Y = cv.X, cv.Y
    s = np.abs(X - an.mid)
    y = Y - an.rib_y0 - (-an.rib_a * s + an.rib_b * s * s)
    c, sp = an.rib_grow, an.rib_sp
    phi = (np.sqrt(np.clip(1 + 2 * c * y / sp, 0, None)) - 1) / c
    phi = np.where(y < 0, y / sp, phi)
    wl = max(an.lung(0)[0], an.lung(1)[0])
    if fracture is not None:
        on_side = (X > an.mid) if fracture["side"] == 1 else (X < an.mid)
        near = np.exp(-(((phi - fracture["rib"]) / 0.45) ** 2)) * on_side
        lateral = soft_step((s - fracture["s"]) / cv.edge)
        phi = phi + fracture["shift"] * near * lateral
    d = np.abs(phi - np.round(phi))
    hw = 0.17
    width_px = sp * cv.k
    rib = soft_step((hw - d) * width_px / 0.7) * (0.75 + 0.25 * np.clip(d / hw, 0, 1) ** 4)  # brighter cortex
    count = soft_step((phi + 0.4) / 0.1) * soft_step((9.6 - phi) / 0.1)
    reach = soft_step((s - 0.03) / cv.edge / 2) * soft_step((wl + 0.55 * an.wall - s) / (3 * cv.edge))
    posterior = 0.13 * rib * count * reach
    if fracture is not None:
        on_side = (X > an.mid) if fracture["side"] == 1 else (X < an.mid)
        gap = soft_step((fracture["gap"] - np.abs(s - fracture["s"])) / cv.edge) * on_side
        posterior = posterior * (1 - gap * (np.abs(np.round(phi) - fracture["rib"]) < 0.5))
    # Anterior ribs descend medially from the lateral wall and fade at the costal cartilages.
    ya = Y - an.rib_y0 - 0.08 - 0.45 * (wl - s)
    pa = ya / (sp * 1.05)
    da = np.abs(pa - np.round(pa))
    anterior = soft_step((0.14 - da) * sp * cv.k / 1.2) * soft_step((pa + 0.4) / 0.1) * soft_step((6.6 - pa) / 0.1)
    anterior = anterior * soft_step((s - 0.14) / 0.03) * soft_step((wl - s) / (3 * cv.edge))
    return (posterior + 0.05 * anterior).astype(np.float32)


def _vessel_tree(cv: Canvas, an: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Lung markings: a random branching tree per hilum, drawn with PIL and blurred (0..1)."""
    image = Image.new("F", (cv.shape[1], cv.shape[0]), 0.0)
    draw = ImageDraw.Draw(image)
    k = cv.k
    for side in (0, 1):
        sign = 1 if side == 1 else -1
        hx, hy = an.mid + sign * (an.s_med + 0.045), an.hilum_y[side]
        # trunks: up, up-lateral, lateral, down-lateral, down (angles from "lateral", y down)
        stack = [(hx, hy, math.radians(a + rng.uniform(-8, 8)), rng.uniform(0.09, 0.13), 0.011, 0)
                 for a in (-75, -40, -5, 30, 65)]  # fmt: skip
        while stack:
            x, y, angle, length, width, depth = stack.pop()
            bend = rng.uniform(-0.25, 0.25)
            points = [(x, y)]
            for _ in range(2):
                angle += bend
                x, y = x + sign * math.cos(angle) * length / 2, y + math.sin(angle) * length / 2
                points.append((x, y))
            px = [cv.to_canvas(a, b) for a, b in points]
            w_px = width * k
            draw.line(px, fill=float(min(1.0, w_px / 2.5)), width=max(1, round(w_px)))
            if depth < 4:
                for turn in (-1, 1):
                    spread = math.radians(rng.uniform(15, 35))
                    stack.append((x, y, angle + turn * spread, length * rng.uniform(0.62, 0.8), width * 0.7, depth + 1))
    return _blur(np.asarray(image, dtype=np.float32), 1)


def render_static(cv: Canvas, an: Anatomy, rng: np.random.Generator) -> Static:
    """Body, lungs, ribs, clavicles, spine, trachea, hila and lung markings of one subject."""
    X, Y, e = cv.X, cv.Y, cv.edge
    xr = X - an.mid
    wl = max(an.lung(0)[0], an.lung(1)[0])
    y_sh = min(an.y_apex) + 0.03
    # shoulders and upper arms, sloping towards the neck
    half = wl + an.wall + 0.13 * soft_step((y_sh - Y) / 0.04) - 0.35 * np.clip(y_sh - 0.12 - Y, 0, None)
    body = soft_step((half - np.abs(xr)) / e)
    tissue = an.tissue * body * (0.5 + 0.5 * np.sqrt(np.clip(1 - (xr / half) ** 2, 0, 1)))
    tissue *= 0.93 + 0.14 * smooth_noise(rng, cv.shape, 5)  # uneven soft tissue: no two chests are alike
    if an.breasts:  # breast shadows over the lower lungs, with a sharp inferior edge
        for side in (0, 1):
            X0, Y0 = lung_point(an, side, 0.72, 0.7)
            breast = _ellipse(cv, X0, Y0, 0.17, 0.13, soft=6.0) * soft_step((Y0 + 0.05 - Y) / 0.04)
            tissue += 0.15 * an.breasts * breast * body

    lungs = (lung_field(cv, an, 0), lung_field(cv, an, 1))
    air = np.zeros(cv.shape, np.float32)
    for side in (0, 1):
        wls, ya, yc, _ = an.lung(side)
        s = np.abs(xr)
        t = np.clip((Y - ya) / (yc - ya), 0, 1)
        r = np.clip((s - an.s_med) / (_lateral(wls, t) - an.s_med), 0, 1)
        profile = (0.6 + 0.4 * np.sqrt(np.clip(4 * r * (1 - r), 0, 1))) * (0.82 + 0.18 * t)
        air += lungs[side] * profile * (1 + 0.2 * an.emphysema)

    bones = ribs_layer(cv, an)
    ribs = bones.copy()
    for side in (0, 1):  # clavicles: medial end by the spine, rising laterally with a gentle S
        sign = 1 if side == 1 else -1
        pts = [(an.mid + sign * s, an.clav_y - 0.3 * (s - 0.05) + 0.018 * math.sin(2 * math.pi * (s - 0.05) / 0.35))
               for s in np.linspace(0.05, 0.40, 9)]  # fmt: skip
        clav = np.zeros(cv.shape, np.float32)
        for p0, p1 in zip(pts[:-1], pts[1:], strict=True):
            _segment(cv, clav, p0, p1, 0.014)
        bones += 0.22 * np.clip(clav, 0, 1)
        _disc(cv, bones, an.mid + sign * (wl + an.wall + 0.05), min(an.y_apex) - 0.07, 0.07, 0.12)  # humeral head

    curve = an.mid + an.scoliosis * np.sin(np.pi * (Y - min(an.y_apex)) / 0.9)
    dx = np.abs(X - curve)
    spine = soft_step((0.042 - dx) / e).astype(np.float32)
    phase = (Y / an.vertebra) % 1.0
    endplate = 0.8 + 0.2 * soft_step((np.abs(phase - 0.5) - 0.42) / 0.03)
    pedicle = np.exp(-(((dx - 0.028) / 0.007) ** 2 + ((phase - 0.3) * an.vertebra / 0.009) ** 2))
    bones += spine * (0.07 * endplate) + 0.03 * pedicle * spine

    trachea = np.zeros(cv.shape, np.float32)
    carina = min(an.hilum_y) - 0.06
    _segment(cv, trachea, (an.mid, -1.0), (an.mid, carina), 0.02)
    for sign, dx_ in ((-1, 0.07), (1, 0.085)):
        _segment(cv, trachea, (an.mid, carina), (an.mid + sign * dx_, carina + 0.07), 0.012)
    trachea = np.clip(trachea, 0, 1)

    vessels = _vessel_tree(cv, an, rng)
    lung_any = np.clip(lungs[0] + lungs[1], 0, 1)
    periphery = np.ones(cv.shape, np.float32)
    if an.emphysema:  # pruned peripheral markings
        for side in (0, 1):
            hx = an.mid + (1 if side else -1) * (an.s_med + 0.045)
            periphery -= lungs[side] * 0.6 * an.emphysema * np.clip(np.hypot(X - hx, Y - an.hilum_y[side]) / 0.3, 0, 1)
    vessels = vessels * lung_any * periphery
    hila = np.zeros(cv.shape, np.float32)
    for side in (0, 1):
        _disc(cv, hila, an.mid + (1 if side else -1) * (an.s_med + 0.035), an.hilum_y[side], 0.028, 0.1)
    s = np.abs(xr)
    thorax = soft_step((np.where(xr > 0, _dome(an, 1, s), _dome(an, 0, s)) - Y) / e).astype(np.float32)
    texture = smooth_noise(rng, cv.shape, 24)
    base = tissue + bones - AIR * air - 0.3 * trachea + _blur(hila, 2) + 0.03 * (texture - 0.5) * lung_any
    return Static(base, air, lungs, ribs, vessels, texture, spine, thorax)


# ----------------------------------------------------------------------------------------------------------
# findings


KINDS = (
    "opacity", "nodule", "atelectasis", "effusion", "blunting", "ptx", "edema", "congestion", "hilar",
    "thickening", "heart", "aorta_arch", "aorta_desc", "gastric", "fracture", "hernia", "emphysema", "scoliosis",
)  # fmt: skip


@dataclass
class Lesion:
    """One finding of one subject. Geometry is fixed per subject, so a finding that stays renders identically
    and only a level change alters it.

    Attributes:
        name: the official finding name (DATA.md vocabulary).
        kind: the renderer (see ``KINDS``).
        sides: which lungs it involves, subset of (0, 1); () for midline findings.
        zone: where in the lung (apical, upper, mid, lower, base, mid to lower, retrocardiac) or "".
        type: its type word ("" if none); levels: ascending level words (() if none).
        location: the location phrase the QA uses ("" if none).
        params: geometry drawn by :func:`sample_lesion`.
    """

    name: str
    kind: str
    sides: tuple[int, ...]
    zone: str = ""
    type: str = ""
    levels: tuple[str, ...] = ()
    location: str = ""
    params: dict = field(default_factory=dict)

    def severity(self, level: int) -> float:
        """Level index -> severity in (0, 1]; 0.6 for findings without levels."""
        return (level + 1) / len(self.levels) if self.levels else 0.6


ZONES = {  # zone -> (t range from apex to base, r range medial to lateral)
    "apical": ((0.04, 0.12), (0.3, 0.7)),
    "upper": ((0.15, 0.32), (0.3, 0.75)),
    "mid": ((0.38, 0.55), (0.3, 0.75)),
    "lower": ((0.6, 0.78), (0.3, 0.75)),
    "base": ((0.78, 0.9), (0.35, 0.8)),
    "mid to lower": ((0.45, 0.82), (0.3, 0.75)),
    "retrocardiac": ((0.78, 0.9), (0.05, 0.3)),
}


def sample_lesion(lesion: Lesion, an: Anatomy, rng: np.random.Generator) -> Lesion:
    """Draw a lesion's geometry (blob positions, rib, meniscus shape, ...) once for its subject."""
    if lesion.kind not in KINDS:
        raise ValueError(f"finding {lesion.name!r}: unknown kind {lesion.kind!r}; expected one of {KINDS}")
    u = rng.uniform
    p: dict = {"seed": int(rng.integers(2**31))}
    kind = lesion.kind
    if kind in ("opacity", "nodule", "atelectasis"):
        (t0, t1), (r0, r1) = ZONES[lesion.zone or "mid"]
        n = {"focal": 1, "multifocal": 5, "patchy": 4, "dense": 2}.get(lesion.type, 3)
        if kind == "nodule":
            n = 3 if lesion.name == "calcification" else 1
        if kind == "atelectasis":
            n = 1
        blobs = []
        for side in lesion.sides:
            tc, rc = u(t0, t1), u(r0, r1)
            for _ in range(n):
                spread = 0.05 if kind == "nodule" else 0.35
                t = float(np.clip(tc + spread * u(-0.5, 0.5) * (t1 - t0 + 0.1), 0.03, 0.95))
                r = float(np.clip(rc + spread * u(-0.5, 0.5) * 0.8, 0.05, 0.9))
                if kind == "nodule":
                    t, r = tc + u(-0.02, 0.02) * (n > 1), rc + u(-0.04, 0.04) * (n > 1)
                radius = {"nodule": u(0.007, 0.012), "atelectasis": u(0.10, 0.15)}.get(kind, u(0.03, 0.055))
                blobs.append((side, t, r, radius, u(0.7, 1.0), u(-0.3, 0.3)))
        p["blobs"] = blobs
    elif kind == "effusion":
        p["meniscus"] = u(0.35, 0.5)
    elif kind == "ptx":
        p["taper"] = u(0.35, 0.55)
    elif kind == "fracture":
        side = lesion.sides[0]
        p.update(rib=int(rng.integers(3, 8)), r=u(0.6, 0.85), shift=u(0.1, 0.18))
        p["s"] = p["r"] * an.lung(side)[0]
    elif kind == "edema":
        p["lines"] = [(u(0.6, 0.92), u(0.0, 0.05)) for _ in range(5)]
    elif kind == "hernia":
        p["dx"] = u(0.0, 0.04)
    return replace(lesion, params=p)


@dataclass
class Layer:
    """What one finding contributes: attenuation, its soft region (the ground-truth mask before threshold)
    and optionally a multiplier on the lung markings (a pneumothorax has none)."""

    density: np.ndarray | None
    mask: np.ndarray
    vessel_gate: np.ndarray | None = None
    airspace: bool = False  # fills lung air: overlapping fills saturate at soft-tissue density, never beyond


def _blobs(cv: Canvas, an: Anatomy, lesion: Lesion, scale: float) -> np.ndarray:
    """Union-like sum of Gaussian blobs at the lesion's positions: 1 - exp(-1.5 sum g), in [0, 1)."""
    total = np.zeros(cv.shape, np.float32)
    for side, t, r, radius, amp, _ in lesion.params["blobs"]:
        X0, Y0 = lung_point(an, side, t, r)
        rad = radius * scale
        rows, cols = cv.window(X0, Y0, 3 * rad)
        d2 = (cv.X[rows, cols] - X0) ** 2 + (cv.Y[rows, cols] - Y0) ** 2
        total[rows, cols] += amp * np.exp(-d2 / (2 * rad * rad))
    return 1 - np.exp(-1.5 * total)


def _lungs_of(st: Static, sides) -> np.ndarray:
    out = np.zeros_like(st.lungs[0])
    for side in sides:
        out += st.lungs[side]
    return out


def render_opacity(cv, an, st, lesion: Lesion, sev: float) -> Layer:
    """Lung opacity / consolidation / pneumonia: blobs in a lobe, textured by type, confined to the lung."""
    shape = _blobs(cv, an, lesion, 0.7 + 0.6 * sev) * _lungs_of(st, lesion.sides)
    amp = {"ground-glass": 0.3, "dense": 0.85, "focal": 0.7}.get(lesion.type, 0.6) * (0.7 + 0.3 * sev)
    if lesion.type == "dense" or lesion.name == "consolidation":
        look = soft_step((shape * (0.6 + 0.8 * st.texture) - 0.45) / 0.08)
    elif lesion.type == "ground-glass":
        look = shape
    else:  # patchy: modulated by the subject's smooth texture
        look = shape * (0.45 + 0.9 * st.texture)
    density = AIR * st.air * np.clip(amp * look, 0, 0.95)  # fluid / cells fill the airspaces
    if lesion.name == "consolidation":  # air bronchograms: the airways stay dark inside the dense lung
        density -= 0.12 * look * np.clip(2 * st.vessels, 0, 1)
    return Layer(density, shape, airspace=True)


def render_nodule(cv, an, st, lesion: Lesion, sev: float) -> Layer:
    """Granuloma / calcification: small, very dense (calcified) nodules."""
    density = np.zeros(cv.shape, np.float32)
    mask = np.zeros(cv.shape, np.float32)
    r_min = 1.6 / cv.k  # keep every nodule (and its mask) at least a few pixels wide
    for side, t, r, radius, _, _ in lesion.params["blobs"]:
        X0, Y0 = lung_point(an, side, t, r)
        _disc(cv, density, X0, Y0, max(radius, r_min), 0.5)
        _disc(cv, mask, X0, Y0, max(1.5 * radius, 2.2 / cv.k))
    return Layer(density, np.clip(mask, 0, 1))


def render_atelectasis(cv, an, st, lesion: Lesion, sev: float) -> Layer:
    """Atelectasis: a linear / plate-like band just above the hemidiaphragm, or a retrocardiac density."""
    density = np.zeros(cv.shape, np.float32)
    region = np.zeros(cv.shape, np.float32)
    for side, _t, r, length, amp, tilt in lesion.params["blobs"]:
        if lesion.zone == "retrocardiac":
            X0, Y0 = lung_point(an, side, 0.86, 0.15)
            _disc(cv, density, X0, Y0, 0.035 + 0.03 * sev, 1.0)
            _disc(cv, region, X0, Y0, 0.035 + 0.03 * sev, 1.0)
            continue
        sign = 1 if side == 1 else -1
        s0 = an.s_med + r * (an.lung(side)[0] - an.s_med)
        half = length * (0.5 + 0.5 * sev) / 2
        thick = {"linear": 0.006, "plate-like": 0.011}.get(lesion.type, 0.016) * (0.8 + 0.5 * sev)
        thick = max(thick, 1.0 / cv.k)
        lift = 0.03 + 0.02 * amp
        ends = [s0 - half, s0 + half]
        pts = [(an.mid + sign * s, float(_dome(an, side, s)) - lift - tilt * (s - s0)) for s in ends]
        _segment(cv, density, pts[0], pts[1], thick)
        _segment(cv, region, pts[0], pts[1], max(thick, 2.5 / cv.k))  # a band of stable width for the mask
    lungs = _lungs_of(st, lesion.sides)
    shape = np.clip(density, 0, 1) * lungs
    look = _blur(shape, 1) * (0.6 + 0.5 * st.texture)
    density = AIR * st.air * np.clip(0.55 * look * (0.8 + 0.2 * sev), 0, 0.9)
    return Layer(density, np.clip(np.maximum(region, density), 0, 1) * lungs, airspace=True)


def render_effusion(cv, an, st, lesion: Lesion, sev: float) -> Layer:
    """Pleural effusion / blunting of the costophrenic angle: fluid filling the base up to a meniscus that
    climbs the lateral chest wall; its height grows with the level."""
    blunting = lesion.kind == "blunting"
    shape = np.zeros(cv.shape, np.float32)
    density = np.zeros(cv.shape, np.float32)
    for side in lesion.sides:
        wl, ya, yc, _ = an.lung(side)
        s = np.abs(cv.X - an.mid)
        rr = np.clip((s - an.s_med) / (wl - an.s_med), 0, 1)
        if blunting:
            h = 0.035
            top = yc - h * (0.15 + 0.85 * rr**4)
        else:
            h = 0.06 + 0.24 * sev
            m = lesion.params["meniscus"]
            top = yc - h * ((1 - m) + m * rr**1.5)
        fluid = lung_field(cv, an, side, flat_base=True) * soft_step((cv.Y - top) / 0.006)
        thick = np.clip((cv.Y - top) / (0.3 * h + 0.02), 0, 1)  # the layer of fluid thickens downward
        density += AIR * st.air * 0.95 * fluid * thick  # fluid replaces air: the dome's outline disappears
        shape += fluid * st.lungs[side]
    return Layer(density, shape, airspace=True)


def render_ptx(cv, an, st, lesion: Lesion, sev: float) -> Layer:
    """Pneumothorax: a lucent apical/lateral rim without lung markings, bounded by a thin visceral pleural line."""
    side = lesion.sides[0]
    depth = 0.025 + 0.075 * sev
    taper = lesion.params["taper"]
    collapsed = lung_field(cv, an, side, inset=depth, reach=taper)
    rim = np.clip(st.lungs[side] - collapsed, 0, 1)
    line = 4 * collapsed * (1 - collapsed) * (st.lungs[side] > 0.97)
    return Layer(0.2 * line - 0.14 * rim, rim, vessel_gate=1 - rim)


def render_edema(cv, an, st, lesion: Lesion, sev: float) -> Layer:
    """Edema: perihilar 'bat-wing' haze in both lungs, with Kerley B lines at the bases when interstitial."""
    sigma = 0.08 + 0.09 * sev
    haze = np.zeros(cv.shape, np.float32)
    lines = np.zeros(cv.shape, np.float32)
    for side in (0, 1):
        sign = 1 if side else -1
        hx = an.mid + sign * (an.s_med + 0.05)
        haze += np.exp(-((cv.X - hx) ** 2 + ((cv.Y - an.hilum_y[side]) / 1.3) ** 2) / (2 * sigma**2)) * st.lungs[side]
        if lesion.type == "interstitial":
            for t, inset in lesion.params["lines"]:
                X0, Y0 = lung_point(an, side, t, 1.0)
                X0 -= sign * inset * 0.2
                _segment(cv, lines, (X0 - sign * 0.03, Y0), (X0, Y0), 0.6 / cv.k)
    shape = np.clip(haze, 0, 1)
    haze = (0.25 + 0.35 * sev) * shape * (0.7 + 0.6 * st.texture) + 0.2 * lines
    return Layer(AIR * st.air * np.clip(haze, 0, 0.9), shape * soft_step((shape - 0.35) / 0.05), airspace=True)


def render_congestion(cv, an, st, lesion: Lesion, sev: float) -> Layer:
    """Vascular congestion (engorged markings, cephalised) / hilar congestion (enlarged, hazy hila)."""
    weight = np.zeros(cv.shape, np.float32)
    radius = 0.09 + 0.02 * sev if lesion.kind == "congestion" else 0.045 + 0.02 * sev
    for side in (0, 1):
        hx = an.mid + (1 if side else -1) * (an.s_med + 0.04)
        weight += np.exp(-((cv.X - hx) ** 2 + (cv.Y - an.hilum_y[side] + 0.03) ** 2) / (2 * radius**2))
    weight *= _lungs_of(st, (0, 1))
    if lesion.kind == "congestion":
        density = 0.11 * st.vessels * (0.8 + 1.5 * sev) * weight + 0.04 * weight
    else:
        density = (0.12 + 0.1 * sev) * weight * (0.8 + 0.4 * st.texture)
    return Layer(density, weight)


def render_thickening(cv, an, st, lesion: Lesion, sev: float) -> Layer:
    """Pleural thickening: an apical pleural cap. Its mask is a band twice as deep, so that a thin cap keeps a
    stable region (a few pixels) at any pose and image size."""
    cap = np.zeros(cv.shape, np.float32)
    region = np.zeros(cv.shape, np.float32)
    depth = max(0.022, 2.0 / cv.k)
    for side in lesion.sides:
        for d, out in ((depth, cap), (2 * depth, region)):
            inner = lung_field(cv, an, side, inset=d, reach=0.3)
            out += np.clip(st.lungs[side] - inner, 0, 1)
    return Layer(0.4 * cap, region)


def heart_field(cv: Canvas, an: Anatomy, scale: float) -> np.ndarray:
    """Cardiac silhouette: a tilted ellipse two-thirds left of the midline, resting on the left hemidiaphragm."""
    a, b = an.heart_a * scale, an.heart_b * (1 + 0.5 * (scale - 1))
    X0 = an.mid + 0.3 * a
    Y0 = float(_dome(an, 1, 0.1)) - 0.5 * b
    return _ellipse(cv, X0, Y0, a, b, an.heart_tilt, soft=3.0)  # cardiac motion blurs its border


def render_canonical(
    cv: Canvas, an: Anatomy, st: Static, present: list[tuple[Lesion, int]], view: str
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One study in the canonical frame.

    Args:
        present: the findings shown, each with its level index (-1 when it has no level).
        view: "PA" or "AP" (AP magnifies the heart and projects the scapulae over the lungs).

    Returns:
        (D, masks): attenuation (Hc, Wc) float32 and a soft region (Hc, Wc) per finding name.
    """
    by_kind = {lesion.kind: (lesion, level) for lesion, level in present}
    masks: dict[str, np.ndarray] = {}
    D = st.base.copy()

    scale = 1.07 if view == "AP" else 1.0
    if "heart" in by_kind:
        lesion, level = by_kind["heart"]
        scale *= 1.12 + 0.24 * lesion.severity(level)
    heart = st.cached(("heart", round(scale, 4)), lambda: heart_field(cv, an, scale))
    D += (AIR * st.air * 0.85 + 0.06 * st.thorax) * heart  # the heart displaces lung: a dense silhouette
    if "heart" in by_kind:
        masks[by_kind["heart"][0].name] = heart

    # Aorta: knob (arch) and the left margin of the descending aorta seen through the heart.
    knob_r, knob_dx = 0.03, 0.0
    if "aorta_arch" in by_kind:
        lesion, level = by_kind["aorta_arch"]
        knob_r, knob_dx = 0.03 * (1.35 + 0.35 * lesion.severity(level)), 0.02

    def make_knob():
        knob = np.zeros(cv.shape, np.float32)
        _disc(cv, knob, an.mid + 0.9 * an.s_med + knob_dx, an.knob_y, knob_r)
        return knob, AIR * 0.6 * knob * st.air

    knob, knob_density = st.cached(("knob", knob_r), make_knob)
    D += knob_density
    if "aorta_arch" in by_kind:
        masks[by_kind["aorta_arch"][0].name] = knob
    bulge = 0.0
    if "aorta_desc" in by_kind:
        lesion, level = by_kind["aorta_desc"]
        bulge = 0.025 + 0.03 * lesion.severity(level)

    def make_aorta():
        y_low = float(_dome(an, 1, 0.05))
        span = np.clip((cv.Y - an.knob_y) / (y_low - an.knob_y), 0, 1)
        wave = np.sin(np.pi * span) ** 2 * np.sin(2.5 * np.pi * span + 0.5) ** 2
        edge_x = an.mid + an.s_med + 0.005 + bulge * wave
        aorta = soft_step((edge_x - cv.X) / cv.edge) * soft_step((cv.X - an.mid - 0.01) / cv.edge)
        aorta = (aorta * soft_step(span * 40) * soft_step((1 - span) * 40)).astype(np.float32)
        return aorta, 0.03 * aorta + AIR * 0.5 * aorta * st.air

    aorta, aorta_density = st.cached(("aorta", bulge), make_aorta)
    D += aorta_density
    if "aorta_desc" in by_kind:
        masks[by_kind["aorta_desc"][0].name] = aorta

    # Gastric air bubble under the left hemidiaphragm, with a flat air-fluid level.
    bubble_scale = 1.0
    if "gastric" in by_kind:
        lesion, level = by_kind["gastric"]
        bubble_scale = 1.6 + 0.8 * lesion.severity(level)
    wl = an.lung(1)[0]
    bx = an.mid + 0.5 * wl
    by = float(_dome(an, 1, 0.5 * wl)) + 0.02 + 0.035 * bubble_scale
    bubble = st.cached(
        ("bubble", bubble_scale),
        lambda: (
            _ellipse(cv, bx, by, 0.055 * bubble_scale, 0.035 * bubble_scale) * soft_step((by + 0.01 - cv.Y) / cv.edge)
        ),
    )
    D -= 0.35 * bubble
    if "gastric" in by_kind:
        masks[by_kind["gastric"][0].name] = bubble

    def make_scapulae():
        out = np.zeros(cv.shape, np.float32)
        for side in (0, 1):
            X0, Y0 = lung_point(an, side, 0.25, 0.92)
            out += _ellipse(cv, X0, Y0, 0.07, 0.17, (1 if side else -1) * 0.25)
        return out

    D += (0.05 if view == "AP" else 0.015) * st.cached("scapulae", make_scapulae)

    gate = np.ones(cv.shape, np.float32)
    fill = np.zeros(cv.shape, np.float32)
    renderers = {
        "opacity": render_opacity,
        "nodule": render_nodule,
        "atelectasis": render_atelectasis,
        "effusion": render_effusion,
        "blunting": render_effusion,
        "ptx": render_ptx,
        "edema": render_edema,
        "congestion": render_congestion,
        "hilar": render_congestion,
        "thickening": render_thickening,
    }
    for lesion, level in present:
        sev = lesion.severity(level)
        if lesion.kind in renderers:
            layer = renderers[lesion.kind](cv, an, st, lesion, sev)
            if layer.airspace:
                fill += layer.density
            elif layer.density is not None:
                D += layer.density
            if layer.vessel_gate is not None:
                gate *= layer.vessel_gate
            masks[lesion.name] = layer.mask
        elif lesion.kind == "fracture":
            p = lesion.params
            gap = max(0.006, 1.0 / cv.k)
            fractured = ribs_layer(
                cv, an, dict(side=lesion.sides[0], rib=p["rib"], s=p["s"], gap=gap, shift=p["shift"])
            )
            D += fractured - st.ribs
            sign = 1 if lesion.sides[0] else -1
            rib_y = an.rib_y0 - an.rib_a * p["s"] + an.rib_b * p["s"] ** 2
            rib_y += an.rib_sp * (p["rib"] + an.rib_grow * p["rib"] ** 2 / 2)
            mask = np.zeros(cv.shape, np.float32)
            _disc(cv, mask, an.mid + sign * p["s"], rib_y, max(0.03, 3 / cv.k))
            masks[lesion.name] = mask
        elif lesion.kind == "hernia":
            r = 0.04 + 0.03 * sev
            hx, hy = an.mid + lesion.params["dx"], float(_dome(an, 1, 0.05)) - r - 0.01
            sac = _ellipse(cv, hx, hy, r, r)
            level_y = hy - 0.25 * r
            D += sac * (0.22 * soft_step((cv.Y - level_y) / cv.edge) - 0.2 * soft_step((level_y - cv.Y) / cv.edge))
            masks[lesion.name] = sac
        elif lesion.kind == "emphysema":
            masks[lesion.name] = _lungs_of(st, (0, 1))
        elif lesion.kind == "scoliosis":
            y0, y1 = min(an.y_apex) - 0.05, max(an.y_cp)  # the thoracic spine
            masks[lesion.name] = st.spine * soft_step((cv.Y - y0) / cv.edge) * soft_step((y1 - cv.Y) / cv.edge)
    D += np.minimum(fill, 0.95 * AIR * st.air * (1 - 0.85 * heart)) + 0.16 * st.vessels * gate  # air left to fill
    # A finding's region is where it reaches half its peak: normalise faint ones (a mild focal blob peaks below
    # 1) so the 0.5 threshold means the same in every visit and in the change-mask union.
    for name, region in masks.items():
        peak = float(region.max())
        if 0 < peak < 1:
            masks[name] = region / peak
    return D, masks


# ----------------------------------------------------------------------------------------------------------
# pose, warp and exposure


def pose_matrix(angle_deg: float, scale: float, shift: tuple[float, float], height: int, width: int) -> np.ndarray:
    """(2, 3) canonical -> image map: rotate by ``angle_deg`` and scale about the image centre, then shift
    by ``shift`` = (dx, dy) pixels."""
    c = np.array([(width - 1) / 2, (height - 1) / 2])
    a = math.radians(angle_deg)
    R = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    t = c + np.asarray(shift, float) - R @ c
    return np.concatenate([R, t[:, None]], axis=1)


def compose(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """(2, 3) affine of ``A`` after ``B`` (apply B, then A)."""
    A3, B3 = np.vstack([A, [0, 0, 1]]), np.vstack([B, [0, 0, 1]])
    return (A3 @ B3)[:2]


def invert(A: np.ndarray) -> np.ndarray:
    """(2, 3) inverse affine."""
    return np.linalg.inv(np.vstack([A, [0, 0, 1]]))[:2]


class Warp:
    """Bilinear pull of canvas fields into one study's image frame (pose ``A``: canonical -> image)."""

    def __init__(self, cv: Canvas, A: np.ndarray):
        h, w = cv.height, cv.width
        Ainv = invert(A)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
        col = Ainv[0, 0] * xs + Ainv[0, 1] * ys + Ainv[0, 2] + cv.pad
        row = Ainv[1, 0] * xs + Ainv[1, 1] * ys + Ainv[1, 2] + cv.pad
        hc, wc = cv.shape
        col = np.clip(col, 0, wc - 1.000001)
        row = np.clip(row, 0, hc - 1.000001)
        c0, r0 = np.floor(col).astype(np.int64), np.floor(row).astype(np.int64)
        fx, fy = (col - c0).astype(np.float32), (row - r0).astype(np.float32)
        self.index = (r0 * wc + c0).ravel()
        self.wc = wc
        self.weights = [
            ((1 - fy) * (1 - fx)).ravel(),
            ((1 - fy) * fx).ravel(),
            (fy * (1 - fx)).ravel(),
            (fy * fx).ravel(),
        ]
        self.shape = (h, w)

    def __call__(self, field_: np.ndarray) -> np.ndarray:
        f = field_.ravel()
        i, wc = self.index, self.wc
        w00, w01, w10, w11 = self.weights
        out = f[i] * w00 + f[i + 1] * w01 + f[i + wc] * w10 + f[i + wc + 1] * w11
        return out.reshape(self.shape)


@dataclass
class Exposure:
    """Acquisition of one study: beam hardness, detector gamma, window and noise."""

    gain: float = 1.0
    gamma: float = 1.0
    contrast: float = 1.0
    offset: float = 0.0
    noise: float = 0.012


def sample_exposure(rng: np.random.Generator) -> Exposure:
    u = rng.uniform
    return Exposure(u(0.85, 1.15), u(0.85, 1.15), u(0.9, 1.1), u(-0.04, 0.04), u(0.006, 0.02))


def expose(D: np.ndarray, ex: Exposure, rng: np.random.Generator) -> np.ndarray:
    """Attenuation in the image frame -> 8-bit radiograph (uint8, H x W)."""
    mu = MU * ex.gain
    I = (1 - np.exp(-mu * np.clip(D, 0, None))) / (1 - math.exp(-mu * D_WHITE))
    I = np.clip(I, 0, 1) ** ex.gamma
    I = ex.contrast * (I - 0.5) + 0.5 + ex.offset + 0.03
    I = _blur(I.astype(np.float32), 1)
    I = I + ex.noise * (0.6 + 0.4 * I) * rng.standard_normal(I.shape, dtype=np.float32)
    return np.round(np.clip(I, 0, 1) * 255).astype(np.uint8)
