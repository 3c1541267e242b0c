"""The phantom's findings: what each of the 22 finding kinds adds to a study, and its ground-truth region.

A :class:`Lesion` is one finding of one subject, its geometry drawn once (:func:`sample_lesion`) so that a
finding that stays renders identically between visits and only a level change alters it. :func:`render_canonical`
composes one study in the canonical frame: the subject's static anatomy (:mod:`diffvqa.data.phantom.anatomy`),
the per-visit heart, aorta, gastric bubble and scapulae, and each finding present, and returns the attenuation
and a soft region per finding (the masks before the threshold). Frames and conventions:
:mod:`diffvqa.data.phantom.imaging`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from diffvqa.data.phantom.anatomy import Anatomy, Static, hemidiaphragm, lung_field, lung_point, ribs_layer
from diffvqa.data.phantom.imaging import AIR, Canvas, blur, disc, ellipse, segment, soft_step

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
        name: the official finding name (the vocabulary of ``docs/data.md``).
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
        disc(cv, density, X0, Y0, max(radius, r_min), 0.5)
        disc(cv, mask, X0, Y0, max(1.5 * radius, 2.2 / cv.k))
    return Layer(density, np.clip(mask, 0, 1))


def render_atelectasis(cv, an, st, lesion: Lesion, sev: float) -> Layer:
    """Atelectasis: a linear / plate-like band just above the hemidiaphragm, or a retrocardiac density."""
    density = np.zeros(cv.shape, np.float32)
    region = np.zeros(cv.shape, np.float32)
    for side, _t, r, length, amp, tilt in lesion.params["blobs"]:
        if lesion.zone == "retrocardiac":
            X0, Y0 = lung_point(an, side, 0.86, 0.15)
            disc(cv, density, X0, Y0, 0.035 + 0.03 * sev, 1.0)
            disc(cv, region, X0, Y0, 0.035 + 0.03 * sev, 1.0)
            continue
        sign = 1 if side == 1 else -1
        s0 = an.s_med + r * (an.lung(side)[0] - an.s_med)
        half = length * (0.5 + 0.5 * sev) / 2
        thick = {"linear": 0.006, "plate-like": 0.011}.get(lesion.type, 0.016) * (0.8 + 0.5 * sev)
        thick = max(thick, 1.0 / cv.k)
        lift = 0.03 + 0.02 * amp
        ends = [s0 - half, s0 + half]
        pts = [(an.mid + sign * s, float(hemidiaphragm(an, side, s)) - lift - tilt * (s - s0)) for s in ends]
        segment(cv, density, pts[0], pts[1], thick)
        segment(cv, region, pts[0], pts[1], max(thick, 2.5 / cv.k))  # a band of stable width for the mask
    lungs = _lungs_of(st, lesion.sides)
    shape = np.clip(density, 0, 1) * lungs
    look = blur(shape, 1) * (0.6 + 0.5 * st.texture)
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
                segment(cv, lines, (X0 - sign * 0.03, Y0), (X0, Y0), 0.6 / cv.k)
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
    Y0 = float(hemidiaphragm(an, 1, 0.1)) - 0.5 * b
    return ellipse(cv, X0, Y0, a, b, an.heart_tilt, soft=3.0)  # cardiac motion blurs its border


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
        disc(cv, knob, an.mid + 0.9 * an.s_med + knob_dx, an.knob_y, knob_r)
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
        y_low = float(hemidiaphragm(an, 1, 0.05))
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
    by = float(hemidiaphragm(an, 1, 0.5 * wl)) + 0.02 + 0.035 * bubble_scale
    bubble = st.cached(
        ("bubble", bubble_scale),
        lambda: (
            ellipse(cv, bx, by, 0.055 * bubble_scale, 0.035 * bubble_scale) * soft_step((by + 0.01 - cv.Y) / cv.edge)
        ),
    )
    D -= 0.35 * bubble
    if "gastric" in by_kind:
        masks[by_kind["gastric"][0].name] = bubble

    def make_scapulae():
        out = np.zeros(cv.shape, np.float32)
        for side in (0, 1):
            X0, Y0 = lung_point(an, side, 0.25, 0.92)
            out += ellipse(cv, X0, Y0, 0.07, 0.17, (1 if side else -1) * 0.25)
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
            disc(cv, mask, an.mid + sign * p["s"], rib_y, max(0.03, 3 / cv.k))
            masks[lesion.name] = mask
        elif lesion.kind == "hernia":
            r = 0.04 + 0.03 * sev
            hx, hy = an.mid + lesion.params["dx"], float(hemidiaphragm(an, 1, 0.05)) - r - 0.01
            sac = ellipse(cv, hx, hy, r, r)
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
