"""Reading one chest X-ray (JPEG/PNG/DICOM) as gray [0, 1] and fitting it into an S x S frame.

Coordinate conventions (used by the cache, the ground truth and the ``ask`` command):

* **original pixel coordinates** ``(x, y)``: x right, y down, pixel centres at integers, in the
  full-resolution image as stored on disk (the MIMIC-CXR-JPG frame, about 2500 x 3000).
* **cache pixel coordinates**: the same in the S x S frame produced by :func:`resize_pad`.
* **normalised coordinates** ``(u, v)`` in [-1, 1]: PyTorch's ``grid_sample``/``affine_grid`` with
  ``align_corners=False``: the centre of cache pixel ``j`` is ``(2j + 1) / S - 1``; -1 and +1 are the outer
  edges of the frame. u goes with x (width), v with y (height).

The resize is Pillow's bilinear filter, which widens its support by the reduction factor (an antialiased,
area-like reduction). Pillow maps output pixel ``j`` of a resize from ``n`` to ``m`` pixels to input
coordinate ``(j + 0.5) * n / m - 0.5``; :class:`Geometry` uses exactly that map, per axis, so masks and
points land where the pixels went.

Reduced-size JPEG decoding (``draft``): libjpeg can decode at 1/2, 1/4 or 1/8 scale straight from the DCT
coefficients, which skips most of the work of a full 2500 x 3000 decode. We decode at the smallest such scale
that still leaves at least ``DRAFT_MARGIN`` times the target size, then let the bilinear filter do the rest;
against a full decode this changes the S x S result by about 0.1-0.2 gray levels on average (of 255).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from diffvqa.errors import UserError

# The decoded (reduced) image keeps at least this many pixels per output pixel along the long side.
DRAFT_MARGIN = 2.0
RESIZE_METHOD = "pillow-bilinear-antialiased"

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1), Pillow's resize(box=...) source region


class ImageReadError(UserError):
    """An image file that cannot be decoded (missing, truncated, corrupt, unsupported)."""


@dataclass(frozen=True)
class Geometry:
    """Where an original image lies in its S x S cache frame.

    The image was resized to ``resized_h x resized_w`` (long side = S, aspect kept; ``scale`` = S / long side
    is the nominal factor, the exact per-axis factors are ``resized / orig``) and placed at
    ``(pad_top, pad_left)``; the rest of the frame is zero.
    """

    orig_h: int
    orig_w: int
    scale: float
    pad_top: int
    pad_left: int
    size: int
    resized_h: int
    resized_w: int

    @classmethod
    def fit(cls, orig_h: int, orig_w: int, size: int) -> Geometry:
        """The geometry :func:`resize_pad` uses for an ``orig_h x orig_w`` image and an S = ``size`` frame."""
        if orig_h < 1 or orig_w < 1 or size < 1:
            raise ValueError(f"cannot fit a {orig_h}x{orig_w} image into a {size}x{size} frame")
        scale = size / max(orig_h, orig_w)
        resized_h = min(size, max(1, round(orig_h * scale)))
        resized_w = min(size, max(1, round(orig_w * scale)))
        return cls(
            orig_h=int(orig_h),
            orig_w=int(orig_w),
            scale=float(scale),
            pad_top=(size - resized_h) // 2,
            pad_left=(size - resized_w) // 2,
            size=int(size),
            resized_h=int(resized_h),
            resized_w=int(resized_w),
        )

    @property
    def scale_x(self) -> float:
        return self.resized_w / self.orig_w

    @property
    def scale_y(self) -> float:
        return self.resized_h / self.orig_h

    def to_dict(self) -> dict:
        return asdict(self)

    # --- as 3 x 3 homogeneous matrices acting on column vectors [x, y, 1] ---
    def cache_matrix(self) -> np.ndarray:
        """(3, 3) float64: original pixel coordinates -> cache pixel coordinates."""
        sx, sy = self.scale_x, self.scale_y
        return np.array(
            [
                [sx, 0.0, 0.5 * sx - 0.5 + self.pad_left],
                [0.0, sy, 0.5 * sy - 0.5 + self.pad_top],
                [0.0, 0.0, 1.0],
            ]
        )

    def normalised_matrix(self) -> np.ndarray:
        """(3, 3) float64: original pixel coords -> normalised cache coords (align_corners=False)."""
        return _cache_to_normalised(self.size) @ self.cache_matrix()

    # --- point maps; x, y broadcast (scalars or arrays) ---
    def to_cache(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Original pixel coordinates -> cache pixel coordinates."""
        return _apply(self.cache_matrix(), x, y)

    def from_cache(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Cache pixel coordinates -> original pixel coordinates."""
        return _apply(np.linalg.inv(self.cache_matrix()), x, y)

    def to_normalised(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Original pixel coordinates -> normalised cache coordinates in [-1, 1]."""
        return _apply(self.normalised_matrix(), x, y)

    def from_normalised(self, u, v) -> tuple[np.ndarray, np.ndarray]:
        """Normalised cache coordinates -> original pixel coordinates."""
        return _apply(np.linalg.inv(self.normalised_matrix()), u, v)

    # --- maps between frames ---
    def content_box(self) -> tuple[int, int, int, int]:
        """``(y0, x0, y1, x1)``, end-exclusive: the cache pixels that hold image content, not letterbox padding.

        A pixel belongs to the content when its centre lies inside the original image's extent (its outer
        pixel edges mapped by :meth:`cache_matrix`). The resize sends those edges exactly onto the edges of
        the ``resized_h x resized_w`` block at ``(pad_top, pad_left)``, so no pixel is partly covered and the
        box is that block (what :meth:`content` slices).
        """
        return self.pad_top, self.pad_left, self.pad_top + self.resized_h, self.pad_left + self.resized_w

    def content(self, cache_map: np.ndarray) -> np.ndarray:
        """The image part of an (..., S, S) cache-frame array, unpadded: (..., resized_h, resized_w)."""
        y0, x0, y1, x1 = self.content_box()
        return cache_map[..., y0:y1, x0:x1]

    def to_cache_frame(self, image: np.ndarray) -> np.ndarray:
        """Resize + pad an (orig_h, orig_w) array of the original frame (e.g. a mask) like its image: (S, S)."""
        if image.shape != (self.orig_h, self.orig_w):
            raise ValueError(f"expected an ({self.orig_h}, {self.orig_w}) array, got shape {image.shape}")
        return _resize_pad(image, self, (0.0, 0.0, float(self.orig_w), float(self.orig_h)))

    def to_original(self, cache_map: np.ndarray) -> np.ndarray:
        """Resize an (S, S) cache-frame map (e.g. saliency) back to the (orig_h, orig_w) frame, float32."""
        if cache_map.shape != (self.size, self.size):
            raise ValueError(f"expected an ({self.size}, {self.size}) map, got shape {cache_map.shape}")
        content = Image.fromarray(np.ascontiguousarray(self.content(cache_map), dtype=np.float32))
        return np.asarray(content.resize((self.orig_w, self.orig_h), Image.Resampling.BILINEAR), dtype=np.float32)


def _cache_to_normalised(size: int) -> np.ndarray:
    """(3, 3): cache pixel j -> (2j + 1) / S - 1 on both axes."""
    return np.array([[2.0 / size, 0.0, 1.0 / size - 1.0], [0.0, 2.0 / size, 1.0 / size - 1.0], [0.0, 0.0, 1.0]])


def _apply(matrix: np.ndarray, x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2], matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2]


# ----------------------------------------------------------------------------------------------------------
# decoding


def is_dicom(path: str | Path) -> bool:
    """A ``.dcm`` name, or the ``DICM`` magic after the 128-byte preamble."""
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _pil_to_float(image: Image.Image) -> np.ndarray:
    """A Pillow image -> (H, W) float32 in [0, 1]; 16-bit grayscale keeps its 16 bits."""
    if image.mode.startswith("I;16"):
        return np.asarray(image, dtype=np.float32) / 65535.0
    if image.mode == "I":  # 16-bit PNGs open as "I" in some Pillow versions; values are 0..65535 then
        array = np.asarray(image, dtype=np.float32)
        top = 65535.0 if array.max(initial=0) <= 65535 else float(array.max())
        return np.clip(array / top, 0.0, 1.0)
    if image.mode == "F":
        return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def _decode_pil(path: Path, draft_size: int | None) -> tuple[np.ndarray, Box, tuple[int, int]]:
    """Decode with Pillow -> ((h, w) float32, box, (orig_h, orig_w)).

    ``box`` is the original frame in decoded-pixel units (Pillow's ``resize(box=...)`` convention).
    """
    with Image.open(path) as image:
        width, height = image.size
        box = (0.0, 0.0, float(width), float(height))
        if draft_size is not None:  # a no-op (None) for formats other than JPEG
            # Request >= DRAFT_MARGIN * target pixels along each side; libjpeg picks the smallest DCT scale
            # that keeps at least that. draft() returns the original frame's extent in the reduced image (e.g.
            # 312.5 px for 2500 / 8): the last reduced pixel may cover a partial block, so the resize must use
            # this box and not the reduced image's integer size.
            scale = DRAFT_MARGIN * draft_size / max(width, height)
            request = (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale)))
            result = image.draft("L", request)
            if result is not None:
                box = tuple(float(b) for b in result[1])
        image.load()
        return _pil_to_float(image), box, (height, width)


def _decode_dicom(path: Path) -> np.ndarray:
    """Decode a DICOM's first frame to (H, W) float32 in [0, 1], as a radiologist would see it.

    Only the group 0x0028 (image pixel, modality LUT, VOI LUT) elements and the file meta are read: no
    patient tags are read or returned. Order: stored values -> modality LUT / rescale -> VOI LUT or window ->
    scale by the output range of the last step (BitsStored for raw values) -> invert MONOCHROME1 (so that
    bright = dense in the result, as in the JPGs).
    """
    from pydicom import Dataset
    from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing, pixel_array

    ds = Dataset()
    array = pixel_array(path, ds_out=ds, index=0)
    if array.ndim == 3:  # colour: BT.601 luma
        array = array[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)

    # Modality LUT or rescale: the output range follows the same transform (as pydicom's apply_windowing).
    if ds.get("ModalityLUTSequence"):
        array = apply_modality_lut(array, ds)
        low, high = 0, 2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
    elif ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None:
        array = apply_modality_lut(array, ds)
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        low, high = sorted((low * slope + intercept, high * slope + intercept))

    voi = ds.get("VOILUTSequence")
    if voi and voi[0].get("LUTDescriptor") is not None and voi[0].get("LUTData") is not None:
        array = apply_voi(array, ds)
        low, high = 0, 2 ** int(voi[0].LUTDescriptor[2]) - 1
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        # apply_windowing maps into [low, high] of the (rescaled) stored range computed above.
        array = apply_windowing(array, ds)

    array = (np.asarray(array, dtype=np.float64) - low) / max(high - low, 1e-12)
    array = np.clip(array, 0.0, 1.0).astype(np.float32)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME1":
        array = 1.0 - array
    return array


def _decode(path: str | Path, draft_size: int | None) -> tuple[np.ndarray, Box, tuple[int, int]]:
    path = Path(path)
    try:
        if is_dicom(path):
            array = _decode_dicom(path)
            box, orig_hw = (0.0, 0.0, float(array.shape[1]), float(array.shape[0])), array.shape
        else:
            array, box, orig_hw = _decode_pil(path, draft_size)
    except Exception as exc:  # noqa: BLE001 - any decoder failure becomes one error type naming the file
        raise ImageReadError(f"{path}: cannot read the image ({type(exc).__name__}: {exc})") from exc
    if array.ndim != 2 or array.size == 0:
        raise ImageReadError(f"{path}: expected a 2-D grayscale image, got shape {array.shape}")
    return array, box, (int(orig_hw[0]), int(orig_hw[1]))


def read_image(path: str | Path, draft_size: int | None = None) -> np.ndarray:
    """Read a JPEG/PNG/DICOM as gray.

    Args:
        path: the image file; DICOM is recognised by a ``.dcm`` suffix or its ``DICM`` magic.
        draft_size: the side S the image will be resized to. For JPEGs this enables reduced-size decoding: the
            result is then smaller than the file (each side still >= ``DRAFT_MARGIN`` * the side it will be
            resized to). Use :func:`load_image` when the original frame's geometry matters.

    Returns:
        (H, W) float32 in [0, 1]; bright = dense (MONOCHROME1 DICOMs are inverted).

    Raises:
        ImageReadError (a ValueError) naming the file when it cannot be decoded.
    """
    return _decode(path, draft_size)[0]


def _resize_pad(image: np.ndarray, geometry: Geometry, box: Box) -> np.ndarray:
    resized = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32)).resize(
        (geometry.resized_w, geometry.resized_h), Image.Resampling.BILINEAR, box=box
    )
    out = np.zeros((geometry.size, geometry.size), dtype=np.float32)
    geometry.content(out)[...] = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    return out


def resize_pad(image: np.ndarray, size: int) -> tuple[np.ndarray, Geometry]:
    """Aspect-preserving resize (long side -> S, antialiased bilinear) and centred zero padding.

    Args:
        image: (H, W) float array in [0, 1].
        size: S.

    Returns:
        ((S, S) float32 in [0, 1], the :class:`Geometry` relating ``image``'s pixels to the frame).
    """
    if image.ndim != 2:
        raise ValueError(f"resize_pad expects an (H, W) image, got shape {image.shape}")
    geometry = Geometry.fit(image.shape[0], image.shape[1], size)
    box = (0.0, 0.0, float(image.shape[1]), float(image.shape[0]))
    return _resize_pad(image, geometry, box), geometry


def gray_float(image: Image.Image | np.ndarray, name: str = "image") -> np.ndarray:
    """An in-memory image -> (H, W) float32 in [0, 1], as :func:`read_image` gives for a file.

    A Pillow image is read as a file's pixels are (16-bit grayscale keeps its 16 bits, colour becomes luminance).
    An array may be (H, W) or (H, W, 3|4): uint8 counts 0..255, uint16 0..65535, bool 0/1, float must already lie
    in [0, 1] (anything else is a :class:`ImageReadError` naming ``name``: a silent rescale would change what
    the model sees).
    """
    if isinstance(image, Image.Image):
        return _pil_to_float(image)
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        if array.dtype != np.uint8:
            raise ImageReadError(f"{name}: a colour array must be uint8, got {array.dtype}; pass (H, W) gray")
        return _pil_to_float(Image.fromarray(np.ascontiguousarray(array[..., :3]), "RGB"))
    if array.ndim != 2 or min(array.shape) < 2:
        raise ImageReadError(f"{name}: expected an (H, W) gray or (H, W, 3) uint8 image, got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise ImageReadError(
                f"{name}: a float image must hold finite values in [0, 1], got range "
                f"[{np.nanmin(array):.4g}, {np.nanmax(array):.4g}]"
            )
        return array.astype(np.float32)
    raise ImageReadError(f"{name}: unsupported pixel type {array.dtype}; expected uint8, uint16, bool or float")


def load_image(path: str | Path, size: int, draft: bool = True) -> tuple[np.ndarray, Geometry]:
    """Read an image file straight into its S x S frame: :func:`read_image` + :func:`resize_pad`.

    With ``draft`` the JPEG is decoded at reduced size, and the geometry still refers to the file's
    full-resolution pixel frame (where ground-truth masks and transforms live).

    Returns:
        ((S, S) float32 in [0, 1], :class:`Geometry` of the original file's frame).
    """
    image, box, (orig_h, orig_w) = _decode(path, size if draft else None)
    geometry = Geometry.fit(orig_h, orig_w, size)
    return _resize_pad(image, geometry, box), geometry


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 with rounding (what the cache stores)."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
