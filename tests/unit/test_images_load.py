"""Loading good images: every format, orientation, colour profile, bit depth and alpha kind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps, PngImagePlugin, features

from pipeline.io import _png16, load
from pipeline.io.load import load_image, probe_image
from tests.unit import imagegen as gen

ROOT = Path(__file__).resolve().parents[2]


def _diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max())


# --- formats --------------------------------------------------------------------------------------

LOSSLESS = [
    ("png", {}),
    ("webp", {"lossless": True}),
    ("tif", {}),
    ("tiff", {"compression": "tiff_lzw"}),
    ("bmp", {}),
    ("ppm", {}),
]


@pytest.mark.parametrize(("suffix", "options"), LOSSLESS)
def test_lossless_formats_load_exactly(tmp_path: Path, suffix: str, options: dict) -> None:
    picture = gen.photo("coffee")
    path = gen.save(tmp_path / f"coffee.{suffix}", picture, **options)
    loaded = load_image(path)
    assert loaded.rgb.dtype == np.uint8
    assert loaded.rgb.shape == (64, 96, 3)
    np.testing.assert_array_equal(loaded.rgb, picture)
    assert loaded.alpha is None
    assert loaded.warnings == []
    assert (loaded.source.width, loaded.source.height) == (96, 64)


LOSSY = [("jpg", {"quality": 95}), ("webp", {"quality": 90}), ("gif", {})]
if features.check("avif"):
    LOSSY.append(("avif", {"quality": 90}))


@pytest.mark.parametrize(("suffix", "options"), LOSSY)
def test_lossy_formats_match_the_decoder_and_the_picture(
    tmp_path: Path, suffix: str, options: dict
) -> None:
    picture = gen.photo("chelsea")
    path = gen.save(tmp_path / f"chelsea.{suffix}", picture, **options)
    loaded = load_image(path)
    with Image.open(path) as im:
        reference = np.asarray(im.convert("RGB"))
    assert loaded.rgb.dtype == np.uint8
    np.testing.assert_array_equal(loaded.rgb, reference)
    tolerance = 25 if suffix == "gif" else 8  # GIF has 256 colours
    assert np.abs(loaded.rgb.astype(int) - picture).mean() < tolerance


def test_bytes_input_and_format_names(tmp_path: Path) -> None:
    picture = gen.photo()
    path = gen.save(tmp_path / "a.jpg", picture, quality=90)
    loaded = load_image(path.read_bytes())
    assert loaded.source.path is None and loaded.source.format == "JPEG"
    np.testing.assert_array_equal(loaded.rgb, load_image(path).rgb)


def test_probe_reads_the_header_only(tmp_path: Path) -> None:
    path = gen.oriented_jpeg(tmp_path / "o.jpg", gen.photo(), 6, make="Canon")
    info = probe_image(path)
    assert (info.format, info.mode, info.bit_depth, info.frames) == ("JPEG", "RGB", 8, 1)
    assert (info.width, info.height) == (96, 64)  # stored 64×96, shown upright
    assert not info.grayscale and not info.has_alpha
    exif = Image.Exif()
    exif.load(info.exif)
    assert exif[0x0112] == 1 and exif[0x010F] == "Canon"
    assert "exif=" not in repr(info)  # binary fields are kept out of the repr


# --- orientation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_gives_the_same_upright_pixels(
    tmp_path: Path, orientation: int
) -> None:
    upright = gen.photo("astronaut")
    path = gen.oriented_jpeg(tmp_path / f"o{orientation}.png", upright, orientation, make="Nikon")
    loaded = load_image(path)
    np.testing.assert_array_equal(loaded.rgb, upright)
    with Image.open(path) as im:  # and Pillow's own reading agrees
        np.testing.assert_array_equal(loaded.rgb, np.asarray(ImageOps.exif_transpose(im)))
    exif = Image.Exif()
    exif.load(loaded.source.exif)
    assert exif[0x0112] == 1 and exif[0x010F] == "Nikon"
    assert (loaded.source.width, loaded.source.height) == (96, 64)


@pytest.mark.parametrize("orientation", [3, 6, 7])
def test_orientation_in_lossy_formats(tmp_path: Path, orientation: int) -> None:
    upright = gen.photo("astronaut")
    for suffix in ("jpg", "webp"):
        path = gen.oriented_jpeg(tmp_path / f"o.{suffix}", upright, orientation)
        loaded = load_image(path)
        assert loaded.rgb.shape == upright.shape
        assert np.abs(loaded.rgb.astype(int) - upright).mean() < 3


def test_xmp_orientation_is_used_when_exif_has_none(tmp_path: Path) -> None:
    upright = gen.photo()
    xmp = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description '
        'tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    )
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp)
    path = tmp_path / "x.png"
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(path, pnginfo=info)
    loaded = load_image(path)
    np.testing.assert_array_equal(loaded.rgb, upright)
    assert b'tiff:Orientation="1"' in loaded.source.xmp


# --- colour ---------------------------------------------------------------------------------------


def _tagged(tmp_path: Path, name: str, profile: bytes, picture: np.ndarray) -> Path:
    path = tmp_path / name
    options = {"quality": 100} if name.endswith(".jpg") else {}
    Image.fromarray(picture).save(path, icc_profile=profile, **options)
    return path


@pytest.mark.parametrize(
    ("name", "profile"),
    [("p3.png", gen.display_p3()), ("adobe.jpg", gen.adobe_rgb()), ("p3.webp", gen.display_p3())],
)
def test_embedded_rgb_profiles_are_converted_to_srgb(tmp_path: Path, name: str, profile) -> None:
    path = _tagged(tmp_path, name, profile, gen.photo("coffee"))
    loaded = load_image(path)
    with Image.open(path) as im:
        reference = gen.cms_convert(im.convert("RGB"), profile, gen.srgb_profile())
    assert _diff(loaded.rgb, reference) <= 1
    assert loaded.source.icc_profile == profile
    assert _diff(loaded.rgb, np.asarray(Image.open(path).convert("RGB"))) > 10  # it did change


@pytest.mark.parametrize(
    "profile",
    [gen.srgb_profile(), gen.rgb_profile(((0.64, 0.33), (0.30, 0.60), (0.15, 0.06)), name="sRGB")],
)
def test_srgb_tagged_images_are_not_touched(tmp_path: Path, profile: bytes) -> None:
    picture = gen.photo()
    loaded = load_image(_tagged(tmp_path, "s.png", profile, picture))
    np.testing.assert_array_equal(loaded.rgb, picture)
    assert loaded.source.icc_profile == profile


def test_cmyk_with_profile_converts_like_littlecms(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(gen.photo()).convert("CMYK").save(path, icc_profile=gen.cmyk_profile())
    loaded = load_image(path)
    with Image.open(path) as im:
        assert im.mode == "CMYK"
        reference = gen.cms_convert(im, gen.cmyk_profile(), gen.srgb_profile())
    assert loaded.source.mode == "CMYK"
    assert _diff(loaded.rgb, reference) <= 1
    assert loaded.warnings == []


def test_cmyk_without_profile_loads_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.tif"
    Image.fromarray(gen.photo()).convert("CMYK").save(path)
    loaded = load_image(path)
    with Image.open(path) as im:
        np.testing.assert_array_equal(loaded.rgb, np.asarray(im.convert("RGB")))
    assert any("CMYK" in w and "profile" in w for w in loaded.warnings)


def test_gray_profile_is_applied(tmp_path: Path) -> None:
    gray = gen.photo()[:, :, 1]
    path = tmp_path / "g.png"
    Image.fromarray(gray, "L").save(path, icc_profile=gen.gray_profile(1.8))
    loaded = load_image(path)
    reference = gen.cms_convert(
        Image.fromarray(gray, "L"), gen.gray_profile(1.8), gen.srgb_profile()
    )
    assert loaded.source.grayscale
    assert _diff(loaded.rgb, reference) <= 1


def test_damaged_profile_is_ignored_with_a_warning(tmp_path: Path) -> None:
    picture = gen.photo()
    path = tmp_path / "bad_icc.png"
    Image.fromarray(picture).save(path, icc_profile=b"\0" * 40 + b"acsp" + b"\1" * 200)
    loaded = load_image(path)
    np.testing.assert_array_equal(loaded.rgb, picture)
    assert any("colour profile" in w for w in loaded.warnings)


def test_16bit_profile_conversion_keeps_precision(tmp_path: Path) -> None:
    picture = gen.photo16()
    path = tmp_path / "p3_16.png"
    gen.png16(path, picture)
    # Add the profile as an iCCP chunk after IHDR.
    data = path.read_bytes()
    path.write_bytes(
        data[:33] + gen.png_chunks([_png16.iccp_chunk(gen.display_p3())])[8:] + data[33:]
    )
    loaded = load_image(path)
    assert loaded.rgb.dtype == np.uint16
    reference = gen.cms_convert(
        Image.fromarray(((picture.astype(np.uint32) + 128) // 257).astype(np.uint8)),
        gen.display_p3(),
        gen.srgb_profile(),
    )
    # The reference sees inputs rounded to 8 bits; slopes up to ~2 in the transform double that.
    assert np.abs(loaded.rgb / 257 - reference).max() <= 2.5
    assert len(np.unique(loaded.rgb)) > 2 * len(np.unique(reference))  # not 8-bit in disguise


# --- bit depth ------------------------------------------------------------------------------------


def test_16bit_gray_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = gen.gradient16()
    path = tmp_path / "g16.png"
    Image.fromarray(ramp).save(path)
    loaded = load_image(path)
    assert loaded.source.bit_depth == 16 and loaded.source.grayscale
    assert loaded.rgb.dtype == np.uint16
    np.testing.assert_array_equal(loaded.rgb[:, :, 0], ramp)
    np.testing.assert_array_equal(loaded.rgb[:, :, 2], ramp)
    assert loaded.rgb.max() == 65535 and np.median(loaded.rgb) > 30000  # Pillow's L is all 255


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_16bit_gray_tiff(tmp_path: Path, mode: str) -> None:
    ramp = gen.gradient16()
    path = tmp_path / "g16.tif"
    data = ramp.astype("<u2" if mode == "I;16" else ">u2").tobytes()
    Image.frombytes(mode, ramp.shape[::-1], data).save(path)
    with Image.open(path) as im:
        assert im.mode == mode
    loaded = load_image(path)
    assert loaded.source.mode == mode and loaded.source.bit_depth == 16
    np.testing.assert_array_equal(loaded.rgb[:, :, 1], ramp)


@pytest.mark.parametrize("use_opencv", [True, False])
@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_rgb_png_keeps_every_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_opencv: bool, channels: int
) -> None:
    picture = gen.photo16()
    alpha = gen.alpha_mask(96, 64, np.uint16)
    stored = np.dstack([picture, alpha]) if channels == 4 else picture
    path = gen.png16(tmp_path / "rgb16.png", stored)
    if not use_opencv:
        monkeypatch.setattr(_png16, "opencv", lambda: None)
    loaded = load_image(path)
    assert loaded.rgb.dtype == np.uint16 and loaded.source.bit_depth == 16
    np.testing.assert_array_equal(loaded.rgb, picture)
    if channels == 4:
        np.testing.assert_array_equal(loaded.alpha, alpha)
    else:
        assert loaded.alpha is None


def test_16bit_gray_alpha_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gray = gen.gradient16(64, 16)
    alpha = gen.alpha_mask(64, 16, np.uint16)
    path = tmp_path / "ga16.png"
    with path.open("wb") as fp:
        _png16.encode_numpy(fp, np.dstack([gray, alpha]))
    with Image.open(path) as im:
        assert im.mode == "RGBA"  # Pillow would give only the high bytes
    for opencv in (True, False):
        if not opencv:
            monkeypatch.setattr(_png16, "opencv", lambda: None)
        loaded = load_image(path)
        assert loaded.source.grayscale and loaded.source.has_alpha
        np.testing.assert_array_equal(loaded.rgb[:, :, 0], gray)
        np.testing.assert_array_equal(loaded.alpha, alpha)


def test_16bit_rgb_tiff(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cv2

    picture = gen.photo16()
    path = tmp_path / "rgb16.tif"
    assert cv2.imwrite(str(path), np.ascontiguousarray(picture[:, :, ::-1]))
    loaded = load_image(path)
    assert loaded.rgb.dtype == np.uint16
    np.testing.assert_array_equal(loaded.rgb, picture)
    monkeypatch.setattr(_png16, "opencv", lambda: None)
    fallback = load_image(path)
    assert fallback.rgb.dtype == np.uint8
    assert _diff(fallback.rgb, picture >> 8) <= 1  # the high bytes, not garbage
    assert any("8 bits" in w for w in fallback.warnings)


def test_32bit_integer_and_float_tiffs(tmp_path: Path) -> None:
    ramp = gen.gradient16().astype(np.int32)
    Image.fromarray(ramp, "I").save(tmp_path / "i.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "i.tif").rgb[:, :, 0], ramp)
    Image.fromarray((ramp / 65535).astype(np.float32), "F").save(tmp_path / "f.tif")
    loaded = load_image(tmp_path / "f.tif")
    assert loaded.rgb.dtype == np.uint16
    assert _diff(loaded.rgb[:, :, 0], ramp) <= 1


# --- alpha and palettes ---------------------------------------------------------------------------


def test_rgba_keeps_alpha_and_drops_opaque_alpha(tmp_path: Path) -> None:
    picture = gen.photo()
    alpha = gen.alpha_mask(96, 64)
    gen.save(tmp_path / "a.png", np.dstack([picture, alpha]))
    loaded = load_image(tmp_path / "a.png")
    np.testing.assert_array_equal(loaded.rgb, picture)
    np.testing.assert_array_equal(loaded.alpha, alpha)
    gen.save(tmp_path / "opaque.png", np.dstack([picture, np.full((64, 96), 255, np.uint8)]))
    opaque = load_image(tmp_path / "opaque.png")
    assert opaque.source.has_alpha and opaque.alpha is None


def test_la_image(tmp_path: Path) -> None:
    gray = gen.photo()[:, :, 0]
    alpha = gen.alpha_mask(96, 64)
    gen.save(tmp_path / "la.png", np.dstack([gray, alpha]), "LA")
    loaded = load_image(tmp_path / "la.png")
    assert loaded.source.grayscale and loaded.source.mode == "LA"
    np.testing.assert_array_equal(loaded.rgb, np.repeat(gray[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(loaded.alpha, alpha)


@pytest.mark.parametrize("suffix", ["png", "gif"])
def test_palette_with_transparency(tmp_path: Path, suffix: str) -> None:
    indices = np.tile(np.arange(4, dtype=np.uint8).repeat(8), (10, 1))  # 10×32
    image = Image.fromarray(indices, "P")
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 0]
    image.putpalette(palette)
    image.save(tmp_path / f"p.{suffix}", transparency=2)
    loaded = load_image(tmp_path / f"p.{suffix}")
    expected = np.asarray(palette, np.uint8).reshape(4, 3)[indices]
    visible = indices != 2
    np.testing.assert_array_equal(loaded.rgb[visible], expected[visible])
    np.testing.assert_array_equal(loaded.alpha, np.where(visible, 255, 0))


def test_palette_without_transparency_and_gray_palette(tmp_path: Path) -> None:
    picture = gen.photo()
    Image.fromarray(picture).convert("P").save(tmp_path / "p.png")
    loaded = load_image(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as im:
        np.testing.assert_array_equal(loaded.rgb, np.asarray(im.convert("RGB")))
    assert loaded.alpha is None
    Image.fromarray(picture[:, :, 0]).convert("P").save(tmp_path / "gp.png")
    assert load_image(tmp_path / "gp.png").source.grayscale


def test_rgb_with_transparent_colour_key(tmp_path: Path) -> None:
    picture = gen.photo()
    picture[:8, :8] = (1, 2, 3)
    Image.fromarray(picture).save(tmp_path / "k.png", transparency=(1, 2, 3))
    loaded = load_image(tmp_path / "k.png")
    assert (loaded.alpha[:8, :8] == 0).all()
    assert (loaded.alpha == 0).sum() == (picture == (1, 2, 3)).all(axis=2).sum()


def test_bilevel_image(tmp_path: Path) -> None:
    bits = gen.photo()[:, :, 0] > 128
    Image.fromarray(bits).save(tmp_path / "b.bmp")
    loaded = load_image(tmp_path / "b.bmp")
    np.testing.assert_array_equal(loaded.rgb[:, :, 0], np.where(bits, 255, 0))
    assert loaded.source.grayscale


# --- animations -----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["gif", "webp", "png"])
def test_animated_files_use_the_first_frame(tmp_path: Path, suffix: str) -> None:
    frames = gen.animated(tmp_path / f"anim.{suffix}", frames=3)
    loaded = load_image(tmp_path / f"anim.{suffix}")
    np.testing.assert_array_equal(loaded.rgb, frames[0])
    assert loaded.source.frames == 3
    assert any("3 frames" in w and "first frame" in w for w in loaded.warnings)


def test_multipage_tiff_uses_the_first_page(tmp_path: Path) -> None:
    pages = [Image.fromarray(gen.photo(n)) for n in ("astronaut", "coffee")]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    loaded = load_image(tmp_path / "pages.tif")
    np.testing.assert_array_equal(loaded.rgb, np.asarray(pages[0]))
    assert any("2 pages" in w for w in loaded.warnings)


# --- module hygiene -------------------------------------------------------------------------------


def test_import_is_light() -> None:
    code = (
        "import sys, pipeline.io.load; "
        "heavy = [m for m in ('torch', 'cv2', 'PIL.ImageCms', 'PySide6') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_pillow_global_limit_is_restored(tmp_path: Path) -> None:
    before = Image.MAX_IMAGE_PIXELS
    load_image(gen.save(tmp_path / "a.png", gen.photo()))
    assert before == Image.MAX_IMAGE_PIXELS
    assert ".png" in load.SUPPORTED_SUFFIXES and ".jpeg" in load.SUPPORTED_SUFFIXES
    assert all(s == s.lower() and s.startswith(".") for s in load.SUPPORTED_SUFFIXES)
    assert ImageCms  # imported by the tests, not by the module (see test_import_is_light)
