"""Pictures of what the model looked at: heat-map overlays, mask contours and labelled panels.

Pure functions on numpy arrays and Pillow images (no torch, no matplotlib), shared by ``diffvqa ask`` and the
HTML report. Conventions: a gray image is an (S, S) float array in [0, 1] (bright = dense, as in the JPGs);
a heat map is an (S, S) float array in [0, 1] (a CAM or the shared mask M, in the same frame as the image it
is drawn on); a mask is an (S, S) bool array. Outputs are RGB ``PIL.Image``s of the same S x S size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from diffvqa.data.images import to_uint8

__all__ = [
    "INFERNO_STOPS",
    "BOX_COLOR",
    "apply_colormap",
    "colorbar",
    "draw_outlines",
    "heat_overlay",
    "mask_contour_overlay",
    "mask_outline",
    "panel",
    "resize_array",
    "to_rgb",
    "to_uint8",
]

# matplotlib's perceptually uniform 'inferno' sampled at 0, 1/8, ..., 1 (RGB, 0-255); linear in between.
# Monotone in lightness, so a heat map still reads correctly in gray scale and for colour-blind readers.
INFERNO_STOPS = np.array(
    [
        [0, 0, 4],
        [31, 12, 72],
        [85, 15, 109],
        [136, 34, 106],
        [186, 54, 85],
        [227, 89, 51],
        [249, 140, 10],
        [249, 201, 50],
        [252, 255, 164],
    ],
    dtype=np.float64,
)
CONTOUR_COLOR = (0, 230, 118)  # a green that no inferno value takes
BOX_COLOR = (0, 190, 255)  # a cyan that neither inferno nor the contour takes: a dataset's boxes


def _lut(stops: np.ndarray) -> np.ndarray:
    """(256, 3) uint8 lookup table interpolating ``stops`` (K, 3) evenly spaced over [0, 1]."""
    positions = np.linspace(0.0, 1.0, len(stops))
    levels = np.linspace(0.0, 1.0, 256)
    table = np.stack([np.interp(levels, positions, stops[:, c]) for c in range(3)], axis=1)
    return np.clip(np.rint(table), 0, 255).astype(np.uint8)


_INFERNO_LUT = _lut(INFERNO_STOPS)


def _check_map(name: str, array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected an (S, S) array, got shape {array.shape}")
    return array


def apply_colormap(heat: np.ndarray) -> np.ndarray:
    """Colour a heat map (H, W) in [0, 1] (values outside are clipped, NaN counts as 0) -> (H, W, 3) uint8."""
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float64), nan=0.0)
    return _INFERNO_LUT[to_uint8(heat)]


def to_rgb(gray: np.ndarray) -> np.ndarray:
    """A gray image (H, W) in [0, 1] -> (H, W, 3) uint8."""
    return np.repeat(to_uint8(_check_map("gray", gray))[..., None], 3, axis=2)


def heat_overlay(gray: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """Blend a colour-mapped heat map over a gray image: ``(1 - alpha) * gray + alpha * inferno(heat)``.

    The usual Grad-CAM picture: cold regions darken towards black-purple, hot ones turn orange-yellow.

    Args:
        gray: (S, S) in [0, 1].
        heat: (S, S) in [0, 1], same frame as ``gray``.
        alpha: opacity of the heat map, in [0, 1].

    Returns:
        RGB image, S x S.
    """
    gray, heat = _check_map("gray", gray), _check_map("heat", heat)
    if gray.shape != heat.shape:
        raise ValueError(f"heat_overlay: gray {gray.shape} and heat {heat.shape} differ in shape")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"heat_overlay: alpha={alpha} must be in [0, 1]")
    blend = (1.0 - alpha) * to_rgb(gray).astype(np.float64) + alpha * apply_colormap(heat).astype(np.float64)
    return Image.fromarray(np.clip(np.rint(blend), 0, 255).astype(np.uint8), "RGB")


def mask_outline(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """The inner boundary of a bool mask (H, W): mask pixels within ``thickness`` steps (4-neighbourhood) of
    a pixel outside it; the frame's border counts as outside."""
    mask = _check_map("mask", mask).astype(bool)
    eroded = mask.copy()
    for _ in range(max(1, thickness)):
        padded = np.pad(eroded, 1, constant_values=False)
        eroded = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~eroded


def mask_contour_overlay(
    base: np.ndarray | Image.Image,
    mask: np.ndarray,
    color: tuple[int, int, int] = CONTOUR_COLOR,
    thickness: int = 1,
) -> Image.Image:
    """Outline a region (e.g. the phantom's ground-truth change mask) on an image.

    Args:
        base: a gray (S, S) array in [0, 1], or an image (e.g. a :func:`heat_overlay`) of S x S pixels.
        mask: (S, S) bool, the region; its boundary is drawn in ``color``.
        thickness: outline width in pixels.

    Returns:
        RGB image, S x S.
    """
    rgb = np.array(base.convert("RGB")) if isinstance(base, Image.Image) else to_rgb(base)
    mask = _check_map("mask", mask)
    if rgb.shape[:2] != mask.shape:
        raise ValueError(f"mask_contour_overlay: image {rgb.shape[:2]} and mask {mask.shape} differ in shape")
    rgb[mask_outline(mask, thickness)] = color
    return Image.fromarray(rgb, "RGB")


def draw_outlines(
    image: Image.Image,
    polygons: Sequence[Sequence[tuple[float, float]]],
    scale: float = 1.0,
    offset: tuple[float, float] = (0.0, 0.0),
    color: tuple[int, int, int] = BOX_COLOR,
    width: int = 1,
    size: tuple[float, float] | None = None,
) -> Image.Image:
    """Draw closed outlines (e.g. a dataset's boxes, as corner lists) on ``image``, in place; returns it.

    Corners are pixel coordinates of the map's frame (x right, y down, pixel centres at integers); ``scale`` maps
    them to the picture's pixels (its size / the map's) and ``offset`` moves them (a panel's place in a strip).
    ``size`` (width, height): the drawn picture's extent from ``offset``; corners beyond it are pulled onto its edge
    (default: the whole image).
    """
    draw = ImageDraw.Draw(image)
    width_px, height_px = size if size is not None else (image.width - offset[0], image.height - offset[1])
    for corners in polygons:
        points = [
            (
                min(max((x + 0.5) * scale - 0.5, 0.0), width_px - 1) + offset[0],
                min(max((y + 0.5) * scale - 0.5, 0.0), height_px - 1) + offset[1],
            )
            for x, y in corners
        ]
        draw.line([*points, points[0]], fill=color, width=width)
    return image


def resize_array(array: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W) map to (size, size) for display: bool masks by nearest neighbour (stay bool), float
    maps bilinearly (float32)."""
    array = _check_map("array", array)
    if array.shape == (size, size):
        return array
    if array.dtype == bool:
        image = Image.fromarray(array.astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST)
        return np.asarray(image) > 127
    image = Image.fromarray(np.ascontiguousarray(array, dtype=np.float32))
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


def colorbar(width: int = 256, height: int = 12) -> Image.Image:
    """The heat colour scale, 0 (left) to 1 (right), as an RGB strip."""
    ramp = np.broadcast_to(np.linspace(0.0, 1.0, width), (height, width))
    return Image.fromarray(apply_colormap(ramp), "RGB")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # a scalable font when Pillow has FreeType
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text``, cut with an ellipsis so that it fits in ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def panel(
    images: Sequence[Image.Image],
    titles: Sequence[str],
    gap: int = 8,
    font_size: int = 14,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """A labelled row: each image under its title, ``gap`` pixels apart, on ``background``.

    Images of different heights are top-aligned; a title too wide for its image is cut with an ellipsis.

    Returns:
        RGB image.
    """
    if len(images) != len(titles):
        raise ValueError(f"panel: {len(images)} images but {len(titles)} titles")
    if not images:
        raise ValueError("panel: no images")
    font = _font(font_size)
    title_h = font_size + 8
    width = sum(im.width for im in images) + gap * (len(images) + 1)
    height = max(im.height for im in images) + title_h + 2 * gap
    canvas = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(canvas)
    x = gap
    for image, title in zip(images, titles, strict=True):
        text = _fit_text(draw, str(title), font, image.width)
        offset = (image.width - draw.textlength(text, font=font)) / 2
        draw.text((x + offset, gap), text, fill=(30, 30, 30), font=font)
        canvas.paste(image.convert("RGB"), (x, gap + title_h))
        x += image.width + gap
    return canvas
