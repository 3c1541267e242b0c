"""The phantom's imaging model: frames, raster primitives, pose and warp, exposure.

The phantom (:mod:`diffvqa.data.phantom.simulator`) draws a subject's anatomy (:mod:`~diffvqa.data.phantom.anatomy`) and
findings (:mod:`~diffvqa.data.phantom.findings`) as attenuation on a canonical canvas, then images each study by
pulling the canvas through the study's pose and exposing it. This module holds what they share: the canvas and
its chest units, soft-edged raster primitives, the pose affines and the warp, and the detector. Everything is
vectorised numpy (PIL only draws the vessel tree, in the anatomy).

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
from dataclasses import dataclass

import numpy as np
from PIL import Image

AIR = 0.72  # attenuation removed by a unit of aerated lung: lungs end up ~0.2 against ~1 for soft tissue
MU = 1.5  # detector response: I = 1 - exp(-MU * D), normalised so that D = D_WHITE is white
D_WHITE = 1.6
SIDES = ("right", "left")  # index = side; the patient's right is the image's left


def soft_step(z: np.ndarray) -> np.ndarray:
    """Smooth 0 -> 1 step; z in units of the edge width (0.5 at z = 0)."""
    return 0.5 + 0.5 * np.tanh(z)


# ----------------------------------------------------------------------------------------------------------
# the canvas


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


# ----------------------------------------------------------------------------------------------------------
# small raster helpers


def blur(a: np.ndarray, passes: int = 1) -> np.ndarray:
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


def disc(cv: Canvas, out: np.ndarray, X0: float, Y0: float, r: float, value: float = 1.0) -> None:
    """Add a soft disc of radius r (chest units) to ``out`` in place, inside its bounding window only."""
    rows, cols = cv.window(X0, Y0, r)
    d = np.hypot(cv.X[rows, cols] - X0, cv.Y[rows, cols] - Y0)
    out[rows, cols] += value * soft_step((r - d) / cv.edge)


def segment(cv: Canvas, out: np.ndarray, p0, p1, half_width: float, value: float = 1.0) -> None:
    """Add a soft line segment (capsule) from p0 to p1 (chest units) to ``out`` in place."""
    (x0, y0), (x1, y1) = p0, p1
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    rows, cols = cv.window(cx, cy, math.hypot(x1 - x0, y1 - y0) / 2 + half_width)
    X, Y = cv.X[rows, cols], cv.Y[rows, cols]
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((X - x0) * dx + (Y - y0) * dy) / max(dx * dx + dy * dy, 1e-12), 0, 1)
    d = np.hypot(X - x0 - t * dx, Y - y0 - t * dy)
    out[rows, cols] += value * soft_step((half_width - d) / cv.edge)


def ellipse(cv: Canvas, X0, Y0, a, b, angle=0.0, soft: float = 1.0) -> np.ndarray:
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
    I = blur(I.astype(np.float32), 1)
    I = I + ex.noise * (0.6 + 0.4 * I) * rng.standard_normal(I.shape, dtype=np.float32)
    return np.round(np.clip(I, 0, 1) * 255).astype(np.uint8)
