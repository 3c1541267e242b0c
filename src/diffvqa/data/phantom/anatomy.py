"""The phantom's anatomy: one subject's chest, drawn once as attenuation on the canonical canvas.

:func:`sample_anatomy` draws a subject's proportions (lungs, heart, ribs, hila, ...; :class:`Anatomy`, in chest
units) and :func:`render_static` rasterises everything that does not change between the subject's studies
(body, lungs, ribs, clavicles, spine, trachea, hila, lung markings; :class:`Static`). Frames, chest units and
the intensity model: :mod:`diffvqa.data.phantom.imaging`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from diffvqa.data.phantom.imaging import AIR, Canvas, blur, disc, ellipse, segment, smooth_noise, soft_step

# ----------------------------------------------------------------------------------------------------------
# the subject's proportions


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


def hemidiaphragm(an: Anatomy, side: int, s):
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
    base = (yc + 0.01) if flat_base else hemidiaphragm(an, side, s)
    e = cv.edge
    field_ = soft_step((Y - top) / e) * soft_step((base - Y) / e) * soft_step((s_lat - s) / e)
    s_med = an.s_med * (0.8 + 0.3 * np.clip(t, 0, 1))  # the upper mediastinum is narrower
    return (field_ * soft_step((s - s_med) / e)).astype(np.float32)


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
    return blur(np.asarray(image, dtype=np.float32), 1)


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
            breast = ellipse(cv, X0, Y0, 0.17, 0.13, soft=6.0) * soft_step((Y0 + 0.05 - Y) / 0.04)
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
        pts = [
            (an.mid + sign * s, an.clav_y - 0.3 * (s - 0.05) + 0.018 * math.sin(2 * math.pi * (s - 0.05) / 0.35))
            for s in np.linspace(0.05, 0.40, 9)
        ]
        clav = np.zeros(cv.shape, np.float32)
        for p0, p1 in zip(pts[:-1], pts[1:], strict=True):
            segment(cv, clav, p0, p1, 0.014)
        bones += 0.22 * np.clip(clav, 0, 1)
        disc(cv, bones, an.mid + sign * (wl + an.wall + 0.05), min(an.y_apex) - 0.07, 0.07, 0.12)  # humeral head

    curve = an.mid + an.scoliosis * np.sin(np.pi * (Y - min(an.y_apex)) / 0.9)
    dx = np.abs(X - curve)
    spine = soft_step((0.042 - dx) / e).astype(np.float32)
    phase = (Y / an.vertebra) % 1.0
    endplate = 0.8 + 0.2 * soft_step((np.abs(phase - 0.5) - 0.42) / 0.03)
    pedicle = np.exp(-(((dx - 0.028) / 0.007) ** 2 + ((phase - 0.3) * an.vertebra / 0.009) ** 2))
    bones += spine * (0.07 * endplate) + 0.03 * pedicle * spine

    trachea = np.zeros(cv.shape, np.float32)
    carina = min(an.hilum_y) - 0.06
    segment(cv, trachea, (an.mid, -1.0), (an.mid, carina), 0.02)
    for sign, dx_ in ((-1, 0.07), (1, 0.085)):
        segment(cv, trachea, (an.mid, carina), (an.mid + sign * dx_, carina + 0.07), 0.012)
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
        disc(cv, hila, an.mid + (1 if side else -1) * (an.s_med + 0.035), an.hilum_y[side], 0.028, 0.1)
    s = np.abs(xr)
    thorax = soft_step((np.where(xr > 0, hemidiaphragm(an, 1, s), hemidiaphragm(an, 0, s)) - Y) / e).astype(np.float32)
    texture = smooth_noise(rng, cv.shape, 24)
    base = tissue + bones - AIR * air - 0.3 * trachea + blur(hila, 2) + 0.03 * (texture - 0.5) * lung_any
    return Static(base, air, lungs, ribs, vessels, texture, spine, thorax)
