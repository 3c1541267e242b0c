"""Image reading (JPEG/PNG/DICOM), draft decoding, resize + pad and the coordinate conventions."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_dicom
from PIL import Image

from diffvqa.data.images import Geometry, ImageReadError, is_dicom, load_image, read_image, resize_pad


def _smooth(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    image = 0.5 + 0.25 * np.sin(x / 23.0) * np.cos(y / 31.0) + 0.02 * rng.standard_normal((h, w))
    return np.clip(image, 0, 1).astype(np.float32)


def _blob(h: int, w: int, cx: float, cy: float, sigma: float) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2)).astype(np.float32)


def _centroid(image: np.ndarray) -> tuple[float, float]:
    y, x = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    w = image / image.sum()
    return float((x * w).sum()), float((y * w).sum())


@pytest.mark.parametrize("shape", [(300, 250), (250, 300), (97, 203)])
def test_resize_pad_geometry_maps_points_where_pixels_went(shape):
    h, w = shape
    cx, cy = 0.61 * w, 0.37 * h
    out, geometry = resize_pad(_blob(h, w, cx, cy, sigma=0.05 * max(h, w)), 64)
    assert out.shape == (64, 64) and out.dtype == np.float32
    assert max(geometry.resized_h, geometry.resized_w) == 64
    # centred padding, zeros outside the content
    assert geometry.pad_top == (64 - geometry.resized_h) // 2 and geometry.pad_left == (64 - geometry.resized_w) // 2
    mask = np.zeros((64, 64), bool)
    geometry.content(mask)[...] = True
    assert np.all(out[~mask] == 0)
    expected = geometry.to_cache(cx, cy)
    np.testing.assert_allclose(_centroid(out), expected, atol=0.02)
    # inverse maps
    np.testing.assert_allclose(geometry.from_cache(*expected), (cx, cy), atol=1e-9)
    u, v = geometry.to_normalised(cx, cy)
    np.testing.assert_allclose(geometry.from_normalised(u, v), (cx, cy), atol=1e-9)


@pytest.mark.parametrize("shape, size", [((300, 250), 64), ((97, 203), 64), ((120, 120), 48), ((2544, 3056), 128)])
def test_content_box_is_the_pixels_whose_centre_lies_in_the_image(shape, size):
    h, w = shape  # portrait, landscape (odd padding), square, MIMIC-like landscape
    geometry = Geometry.fit(h, w, size)
    y0, x0, y1, x1 = geometry.content_box()
    assert all(isinstance(v, int) for v in (y0, x0, y1, x1))
    # the centre rule, from the map alone: the image's outer pixel edges (-0.5 and n - 0.5) in cache pixels
    left, top = geometry.to_cache(-0.5, -0.5)
    right, bottom = geometry.to_cache(w - 0.5, h - 0.5)
    centres = np.arange(size)
    rows = np.flatnonzero((centres > top) & (centres < bottom))
    cols = np.flatnonzero((centres > left) & (centres < right))
    assert (y0, x0, y1, x1) == (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
    # and where the pixels went: a white image fills exactly the box, the letterbox stays black
    out, _ = resize_pad(np.ones((h, w), np.float32), size)
    inside = np.zeros((size, size), bool)
    inside[y0:y1, x0:x1] = True
    assert np.all(out[inside] > 0.99) and np.all(out[~inside] == 0)
    if h == w:
        assert (y0, x0, y1, x1) == (0, 0, size, size)
    else:  # the long side spans the frame, the short side is padded
        assert (y1 - y0 == size) == (h > w) and (x1 - x0 == size) == (w > h)


def test_normalised_coordinates_follow_align_corners_false():
    geometry = Geometry.fit(100, 100, 10)  # no padding, scale 0.1
    # cache pixel j <-> (2j + 1) / S - 1; the frame's outer edges are -1 and +1
    x_orig, _ = geometry.from_cache(np.arange(10), 0)
    u, _ = geometry.to_normalised(x_orig, 0)
    np.testing.assert_allclose(u, (2 * np.arange(10) + 1) / 10 - 1)
    edge, _ = geometry.to_normalised(-0.5, 0)  # the left edge of original pixel 0
    assert edge == pytest.approx(-1.0)
    to_normalised = np.array([[0.2, 0, 0.1 - 1], [0, 0.2, 0.1 - 1], [0, 0, 1]])  # 2 / S, 1 / S - 1
    np.testing.assert_allclose(geometry.normalised_matrix(), to_normalised @ geometry.cache_matrix())


def test_cache_frame_round_trip():
    geometry = Geometry.fit(90, 60, 32)
    original = _blob(90, 60, 20, 50, 6)
    cached = geometry.to_cache_frame(original)
    back = geometry.to_original(cached)
    assert back.shape == (90, 60)
    assert np.abs(back - original).mean() < 0.02
    with pytest.raises(ValueError, match="expected an"):
        geometry.to_cache_frame(np.zeros((60, 90), np.float32))


def test_jpeg_png_and_draft_decoding(tmp_path):
    h, w = 1200, 1000
    image = _smooth(h, w)
    jpg, png16 = tmp_path / "x.jpg", tmp_path / "x.png"
    Image.fromarray((image * 255).round().astype(np.uint8)).save(jpg, quality=95)
    Image.fromarray((image * 65535).round().astype(np.uint16)).save(png16)

    full = read_image(jpg)
    assert full.shape == (h, w) and full.dtype == np.float32 and 0 <= full.min() and full.max() <= 1
    assert np.abs(full - image).mean() < 0.01
    sixteen = read_image(png16)
    np.testing.assert_allclose(sixteen, image, atol=1 / 65535)

    reduced = read_image(jpg, draft_size=64)  # 1/8 decode still >= 2 * 64 on the long side
    assert reduced.shape == (150, 125)
    drafted, g1 = load_image(jpg, 64, draft=True)
    exact, g2 = load_image(jpg, 64, draft=False)
    assert g1 == g2 and g1.orig_h == h and g1.orig_w == w
    assert np.abs(drafted - exact).mean() < 0.5 / 255  # not visibly worse
    assert np.abs(drafted - exact).max() < 4 / 255


def test_unreadable_names_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(ImageReadError, match="broken.jpg"):
        read_image(bad)
    with pytest.raises(ValueError, match="missing.jpg"):
        load_image(tmp_path / "missing.jpg", 32)


def test_dicom_monochrome1_16bit_is_inverted_and_scaled(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 65536, (40, 30)).astype(np.uint16)
    path = tmp_path / "image.dcm"
    write_dicom(path, pixels, "MONOCHROME1", 16)
    image = read_image(path)
    np.testing.assert_allclose(image, 1.0 - pixels / 65535.0, atol=1e-6)


def test_dicom_monochrome2_12bit_window(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 4096, (30, 40)).astype(np.uint16)
    path = tmp_path / "no_suffix"  # recognised by the DICM magic
    write_dicom(path, pixels, "MONOCHROME2", 12, WindowCenter=2048, WindowWidth=1024)
    assert is_dicom(path)
    image = read_image(path)
    # DICOM PS3.3 C.11.2.1.2.1 linear window, into [0, 1]
    center, width = 2048, 1024
    expected = np.clip((pixels - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(image, expected, atol=1e-6)
    # without a window: 12-bit values scaled by BitsStored
    write_dicom(tmp_path / "raw.dcm", pixels, "MONOCHROME2", 12)
    np.testing.assert_allclose(read_image(tmp_path / "raw.dcm"), pixels / 4095.0, atol=1e-6)
    out, geometry = load_image(tmp_path / "raw.dcm", 16)
    assert out.shape == (16, 16) and (geometry.orig_h, geometry.orig_w) == (30, 40)
