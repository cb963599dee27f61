"""Saving: formats, metadata round trips, colour, alpha, atomic writes; the output-size check."""

from __future__ import annotations

import os
import stat
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from pipeline.errors import ImageError, OutputTooLarge
from pipeline.io import _exif, _png16, pixels
from pipeline.io.icc import is_srgb
from pipeline.io.load import (
    bleed_transparent,
    check_output_size,
    load_image,
    read_parameters_text,
    read_run_info,
)
from pipeline.io.save import save_image
from pipeline.metadata import RunInfo, format_infotext
from pipeline.params import UpscaleParams
from tests.unit import imagegen as gen

FORMATS = ["png", "jpg", "webp"]


def _info(prompt: str = 'a café at dusk, 日本語 ✓, "quoted", commas') -> RunInfo:
    return RunInfo(
        params=UpscaleParams(mode="creative", prompt=prompt, seed=42, scale_factor=2.5),
        engine="local/creative",
        models={"upscaler": "realesrgan-x4plus", "checkpoint": "juggernaut_reborn"},
        source_size=(96, 64),
        output_size=(240, 160),
        clarifier_version="0.1.0",
    )


def _camera_jpeg(tmp_path: Path, orientation: int = 6, icc: bytes | None = None) -> Path:
    """A camera-like JPEG: Make/Model, DateTimeOriginal, GPS, a rotation, maybe a profile."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "Canon", "EOS R5", orientation
    exif[0x0131] = "Camera firmware 1.0"
    exif.get_ifd(0x8769)[0x9003] = "2024:05:01 12:00:00"  # DateTimeOriginal
    exif.get_ifd(0x8769)[0xA002] = 64
    exif.get_ifd(0x8825)[0x0002] = (
        TiffImagePlugin.IFDRational(Fraction(48)),
        TiffImagePlugin.IFDRational(Fraction(51)),
        TiffImagePlugin.IFDRational(Fraction(12)),
    )
    path = tmp_path / "camera.jpg"
    image = Image.fromarray(gen.photo()).transpose(Image.Transpose.ROTATE_90)
    options = {"icc_profile": icc} if icc else {}
    image.save(path, exif=exif.tobytes(), quality=95, **options)
    return path


# --- metadata -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_run_info_round_trips_exactly(tmp_path: Path, fmt: str) -> None:
    info = _info()
    path = save_image(tmp_path / f"out.{fmt}", gen.photo(), info=info)
    assert path == tmp_path / f"out.{fmt}"
    assert read_run_info(path) == info
    assert read_parameters_text(path) == format_infotext(info)


def test_run_info_round_trips_in_16bit_png(tmp_path: Path) -> None:
    info = _info()
    picture = gen.photo16()
    path = save_image(tmp_path / "out.png", picture, info=info)
    assert read_run_info(path) == info
    loaded = load_image(path)
    assert loaded.rgb.dtype == np.uint16
    np.testing.assert_array_equal(loaded.rgb, picture)
    with Image.open(path) as im:  # A1111 and other readers find it where Pillow puts it
        assert im.info["parameters"] == format_infotext(info)


def test_a1111_compatible_storage(tmp_path: Path) -> None:
    info = _info()
    text = format_infotext(info)
    jpg = save_image(tmp_path / "out.jpg", gen.photo(), info=info)
    with Image.open(jpg) as im:
        comment = im.getexif().get_ifd(0x8769)[0x9286]
    assert comment == b"UNICODE\0" + text.encode("utf-16-be")
    png = save_image(tmp_path / "out.png", gen.photo(), info=info)
    chunks = [t for t, _ in _png16.iter_chunks(png.open("rb"))]
    assert b"iTXt" in chunks  # not Latin-1, so not tEXt
    ascii_png = save_image(tmp_path / "ascii.png", gen.photo(), info=_info("plain words"))
    assert b"tEXt" in [t for t, _ in _png16.iter_chunks(ascii_png.open("rb"))]
    with Image.open(png) as im:
        assert im.info["parameters"] == text


@pytest.mark.parametrize(
    "comment",
    [
        b"UNICODE\0" + "héllo ✓".encode("utf-16-le"),
        b"UNICODE\0" + "héllo ✓".encode("utf-16"),
        b"ASCII\0\0\0" + "héllo ✓".encode(),
        b"\0" * 8 + "héllo ✓".encode(),
        "héllo ✓".encode(),
    ],
)
def test_user_comment_reader_is_lenient(tmp_path: Path, comment: bytes) -> None:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = comment
    path = tmp_path / "a1111.jpg"
    Image.fromarray(gen.photo()).save(path, exif=exif.tobytes())
    assert read_parameters_text(path) == "héllo ✓"


def test_a1111_infotext_without_clarifier_key_seeds_a_run(tmp_path: Path) -> None:
    text = "a cat\nNegative prompt: blurry\nSteps: 30, Sampler: Euler a, CFG scale: 7, Seed: 9"
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = _exif.encode_user_comment(text)
    path = tmp_path / "a1111.jpg"
    Image.fromarray(gen.photo()).save(path, exif=exif.tobytes())
    run = read_run_info(path)
    assert run is not None
    assert (run.params.prompt, run.params.num_inference_steps, run.params.seed) == ("a cat", 30, 9)
    assert read_run_info(gen.save(tmp_path / "plain.png", gen.photo())) is None


@pytest.mark.parametrize("fmt", FORMATS)
def test_source_exif_survives_upright(tmp_path: Path, fmt: str) -> None:
    loaded = load_image(_camera_jpeg(tmp_path))
    assert loaded.rgb.shape == (64, 96, 3)  # upright after Orientation 6
    big = np.repeat(np.repeat(loaded.rgb, 2, axis=0), 2, axis=1)
    path = save_image(tmp_path / f"out.{fmt}", big, info=_info(), source=loaded.source)
    with Image.open(path) as im:
        exif = im.getexif()
        assert im.size == (192, 128)
    assert (exif[0x010F], exif[0x0110], exif[0x0112]) == ("Canon", "EOS R5", 1)
    assert exif.get_ifd(0x8769)[0x9003] == "2024:05:01 12:00:00"
    assert exif.get_ifd(0x8769)[0xA002] == 192  # the new width, not the camera's
    assert float(exif.get_ifd(0x8825)[0x0002][0]) == 48
    assert read_run_info(path) == _info()
    again = load_image(path)  # Orientation 1: no second rotation
    assert again.rgb.shape == (128, 192, 3)


def test_orientation_is_reset_in_xmp_too(tmp_path: Path) -> None:
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="8" '
        b'exif:PixelXDimension="64"/></x:xmpmeta>'
    )
    path = tmp_path / "x.jpg"
    Image.fromarray(gen.photo()).save(path, xmp=xmp)
    loaded = load_image(path)
    out = save_image(tmp_path / "out.jpg", loaded.rgb, source=loaded.source)
    with Image.open(out) as im:
        written = im.info["xmp"]
    assert b'tiff:Orientation="1"' in written and b'exif:PixelXDimension="64"' in written


def test_jpeg_exif_limit_drops_the_maker_note(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x010F] = "Nikon"
    exif.get_ifd(0x8769)[0x927C] = b"N" * 60_000  # MakerNote
    path = tmp_path / "maker.png"
    Image.fromarray(gen.photo()).save(path, exif=exif.tobytes())
    source = load_image(path).source
    info = _info("x" * 3000)
    jpg = save_image(tmp_path / "out.jpg", gen.photo(), info=info, source=source)
    assert read_run_info(jpg) == info
    with Image.open(jpg) as im:
        assert im.getexif()[0x010F] == "Nikon"
        assert 0x927C not in im.getexif().get_ifd(0x8769)
    png = save_image(tmp_path / "out.png", gen.photo(), info=info, source=source)
    with Image.open(png) as im:
        assert len(im.getexif().get_ifd(0x8769)[0x927C]) == 60_000


# --- colour ---------------------------------------------------------------------------------------


def _in_gamut_p3(tmp_path: Path, name: str, profile: bytes) -> tuple[Path, np.ndarray]:
    """An sRGB photo converted into ``profile`` and stored with it: loading gives it back."""
    srgb = gen.photo("coffee")
    stored = gen.cms_convert(Image.fromarray(srgb), gen.srgb_profile(), profile)
    path = tmp_path / name
    Image.fromarray(stored).save(path, icc_profile=profile)
    return path, stored


@pytest.mark.parametrize("fmt", FORMATS)
def test_non_srgb_profile_round_trips(tmp_path: Path, fmt: str) -> None:
    path, stored = _in_gamut_p3(tmp_path, "p3.png", gen.display_p3())
    loaded = load_image(path)
    out = save_image(tmp_path / f"out.{fmt}", loaded.rgb, source=loaded.source, quality=100)
    with Image.open(out) as im:
        assert im.info["icc_profile"] == gen.display_p3()
        written = np.asarray(im.convert("RGB"))
    again = load_image(out).rgb.astype(int)
    if fmt == "png":
        assert int(np.abs(written.astype(int) - stored).max()) <= 2  # back in P3 numbers
        assert int(np.abs(again - loaded.rgb).max()) <= 2
    else:  # lossy, with chroma subsampling: compare on average
        assert np.abs(written.astype(int) - stored).mean() < 5
        assert np.abs(again - loaded.rgb).mean() < 5


def test_16bit_non_srgb_profile_round_trips(tmp_path: Path) -> None:
    path, _ = _in_gamut_p3(tmp_path, "p3.png", gen.display_p3())
    loaded = load_image(path)
    as16 = loaded.rgb.astype(np.uint16) * 257
    out = save_image(tmp_path / "out16.png", as16, source=loaded.source)
    again = load_image(out)
    assert again.rgb.dtype == np.uint16
    assert again.source.icc_profile == gen.display_p3()
    assert int(np.abs(again.rgb.astype(int) - as16).max()) <= 40  # < 1/6 of an 8-bit level


def test_srgb_tagged_profile_is_embedded_as_is(tmp_path: Path) -> None:
    profile = gen.rgb_profile(((0.64, 0.33), (0.30, 0.60), (0.15, 0.06)), name="camera sRGB")
    picture = gen.photo()
    path = tmp_path / "s.jpg"
    Image.fromarray(picture).save(path, icc_profile=profile, quality=95)
    loaded = load_image(path)
    out = save_image(tmp_path / "out.png", loaded.rgb, source=loaded.source)
    with Image.open(out) as im:
        assert im.info["icc_profile"] == profile
        np.testing.assert_array_equal(np.asarray(im), loaded.rgb)


@pytest.mark.parametrize("source_kind", ["cmyk", "untagged", "none"])
def test_other_sources_get_an_srgb_profile(tmp_path: Path, source_kind: str) -> None:
    source = None
    if source_kind == "cmyk":
        path = tmp_path / "c.jpg"
        Image.fromarray(gen.photo()).convert("CMYK").save(path, icc_profile=gen.cmyk_profile())
        source = load_image(path).source
    elif source_kind == "untagged":
        source = load_image(gen.save(tmp_path / "u.png", gen.photo())).source
    out = save_image(tmp_path / "out.jpg", gen.photo(), source=source)
    with Image.open(out) as im:
        assert im.mode == "RGB"
        assert is_srgb(im.info["icc_profile"])


# --- grayscale, alpha, depth ----------------------------------------------------------------------


def test_grayscale_sources_stay_grayscale(tmp_path: Path) -> None:
    gray = gen.photo()[:, :, 0]
    alpha = gen.alpha_mask(96, 64)
    loaded = load_image(gen.save(tmp_path / "la.png", np.dstack([gray, alpha]), "LA"))
    png = save_image(tmp_path / "out.png", loaded.rgb, loaded.alpha, source=loaded.source)
    jpg = save_image(tmp_path / "out.jpg", loaded.rgb, loaded.alpha, source=loaded.source)
    webp = save_image(tmp_path / "out.webp", loaded.rgb, loaded.alpha, source=loaded.source)
    with Image.open(png) as a, Image.open(jpg) as b, Image.open(webp) as c:
        assert (a.mode, b.mode, c.mode) == ("LA", "L", "RGBA")
        np.testing.assert_array_equal(np.asarray(a), np.dstack([gray, alpha]))


def test_16bit_gray_saves_as_16bit_gray(tmp_path: Path) -> None:
    ramp = gen.gradient16()
    loaded = load_image(gen.save(tmp_path / "g16.png", ramp))
    out = save_image(tmp_path / "out.png", loaded.rgb, source=loaded.source)
    with Image.open(out) as im:
        assert im.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(im), ramp)


def test_gray_profile_round_trips(tmp_path: Path) -> None:
    gray = gen.photo()[:, :, 1]
    path = tmp_path / "g.png"
    Image.fromarray(gray, "L").save(path, icc_profile=gen.gray_profile(1.8))
    loaded = load_image(path)
    out = save_image(tmp_path / "out.png", loaded.rgb, source=loaded.source)
    with Image.open(out) as im:
        assert im.mode == "L" and im.info["icc_profile"] == gen.gray_profile(1.8)
        assert int(np.abs(np.asarray(im).astype(int) - gray).max()) <= 1


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_alpha_is_kept(tmp_path: Path, fmt: str) -> None:
    picture, alpha = gen.photo(), gen.alpha_mask(96, 64)
    out = save_image(tmp_path / f"out.{fmt}", picture, alpha)
    loaded = load_image(out)
    np.testing.assert_array_equal(loaded.alpha, alpha)
    if fmt == "png":
        np.testing.assert_array_equal(loaded.rgb, picture)


def test_16bit_alpha_png(tmp_path: Path) -> None:
    picture, alpha = gen.photo16(), gen.alpha_mask(96, 64, np.uint16)
    loaded = load_image(save_image(tmp_path / "out.png", picture, alpha))
    np.testing.assert_array_equal(loaded.rgb, picture)
    np.testing.assert_array_equal(loaded.alpha, alpha)
    with_8bit_alpha = load_image(save_image(tmp_path / "b.png", picture, alpha >> 8))
    assert with_8bit_alpha.alpha.dtype == np.uint16


def test_jpeg_puts_alpha_over_white(tmp_path: Path) -> None:
    picture = np.zeros((64, 96, 3), np.uint8)
    picture[:, :48] = (200, 20, 20)
    alpha = np.zeros((64, 96), np.uint8)
    alpha[:, :48] = 255
    out = save_image(tmp_path / "out.jpg", picture, alpha, quality=100)
    with Image.open(out) as im:
        written = np.asarray(im).astype(int)
    assert np.abs(written[:, 60:] - 255).max() <= 2  # transparent → white, not black
    assert np.abs(written[8:-8, 8:40] - (200, 20, 20)).max() <= 4


def test_16bit_is_rounded_to_8bit() -> None:
    values = np.array([0, 128, 129, 257 * 100 + 128, 257 * 100 + 129, 65535], np.uint16)
    np.testing.assert_array_equal(pixels.to_8bit(values), [0, 0, 1, 100, 101, 255])


def test_16bit_to_jpeg_and_webp(tmp_path: Path) -> None:
    picture = gen.photo16()
    for fmt in ("jpg", "webp"):
        out = save_image(tmp_path / f"o.{fmt}", picture, quality=100)
        loaded = load_image(out)
        assert loaded.rgb.dtype == np.uint8
        assert np.abs(loaded.rgb.astype(int) - picture / 257).mean() < 4  # a small, busy photo


# --- file handling --------------------------------------------------------------------------------


def test_format_comes_from_the_suffix_or_fixes_it(tmp_path: Path) -> None:
    picture = gen.photo()
    assert save_image(tmp_path / "a.JPEG", picture) == tmp_path / "a.JPEG"
    assert save_image(tmp_path / "b.png", picture, fmt="jpg") == tmp_path / "b.jpg"
    assert save_image(tmp_path / "c", picture, fmt="webp") == tmp_path / "c.webp"
    assert save_image(tmp_path / "d.v2", picture, fmt="png") == tmp_path / "d.v2.png"
    for name, fmt in (("a.JPEG", "JPEG"), ("b.jpg", "JPEG"), ("c.webp", "WEBP")):
        with Image.open(tmp_path / name) as im:
            assert im.format == fmt
    with pytest.raises(ImageError, match="output format"):
        save_image(tmp_path / "e.tif", picture)
    with pytest.raises(ImageError, match="png, jpg and webp"):
        save_image(tmp_path / "e.png", picture, fmt="gif")


def test_parent_folders_are_created(tmp_path: Path) -> None:
    out = save_image(tmp_path / "a" / "b" / "c.png", gen.photo())
    assert out.is_file()
    if os.name == "posix":
        umask = os.umask(0)
        os.umask(umask)
        assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize(
    ("rgb", "alpha", "words"),
    [
        (np.zeros((4, 4, 3), np.float32), None, "uint8 or uint16"),
        (np.zeros((4, 4, 4), np.uint8), None, "H×W×3"),
        (np.zeros((0, 4, 3), np.uint8), None, "H×W×3"),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), np.uint8), "alpha"),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.int32), "alpha"),
    ],
)
def test_bad_arrays_are_refused(tmp_path: Path, rgb, alpha, words: str) -> None:
    with pytest.raises(ImageError, match=words):
        save_image(tmp_path / "x.png", rgb, alpha)
    assert list(tmp_path.iterdir()) == []


def test_bad_quality_and_folder_in_the_way(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="quality"):
        save_image(tmp_path / "x.jpg", gen.photo(), quality=0)
    (tmp_path / "taken.png").mkdir()
    with pytest.raises(ImageError, match="folder"):
        save_image(tmp_path / "taken.png", gen.photo())


@pytest.mark.parametrize("depth", [8, 16])
def test_failed_save_leaves_no_temp_file_and_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, depth: int
) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"the previous output")

    def half_then_fail(image_or_fp, fp_or_pixels=None, *args, **kwargs):
        fp = fp_or_pixels if hasattr(fp_or_pixels, "write") else image_or_fp
        fp.write(b"\x89PNG half written")
        raise OSError(28, "No space left on device")

    if depth == 8:
        monkeypatch.setattr(Image.Image, "save", half_then_fail)
        picture = gen.photo()
    else:
        monkeypatch.setattr(_png16, "encode", half_then_fail)
        picture = gen.photo16()
    with pytest.raises(ImageError, match="No space left on device") as caught:
        save_image(target, picture, info=_info())
    assert caught.value.path == str(target)
    assert target.read_bytes() == b"the previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_save_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "out.webp"
    target.write_bytes(b"old")
    save_image(target, gen.photo())
    with Image.open(target) as im:
        assert im.format == "WEBP"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.webp"]


# --- output size ----------------------------------------------------------------------------------


def test_output_cap_boundary_is_inclusive() -> None:
    params = UpscaleParams(scale_factor=2)
    assert check_output_size(4000, 4000, params, 64_000_000) == (8000, 8000)
    with pytest.raises(OutputTooLarge) as caught:
        check_output_size(4000, 4000, params, 63_999_999, path="in.png")
    message = str(caught.value)
    assert isinstance(caught.value, ImageError) and caught.value.path == "in.png"
    for words in ("8000×8000", "64,000,000 pixels", "64.0 MP", "63,999,999", "1.5", "6000×6000"):
        assert words in message, message
    assert "largest scale factor that fits is 1.5" in message


def test_output_cap_follows_the_multi_pass_sizes() -> None:
    params = UpscaleParams(mode="creative", scale_factor=4)
    assert check_output_size(1000, 1000, params, 16_000_000) == (4000, 4000)
    with pytest.raises(OutputTooLarge, match="fits is 3 "):
        check_output_size(1000, 1000, params, 10_000_000)
    with pytest.raises(OutputTooLarge, match="fits is 2 "):
        check_output_size(1000, 1000, UpscaleParams(scale_factor=2.3), 4_100_000)


def test_output_cap_when_nothing_fits() -> None:
    with pytest.raises(OutputTooLarge, match="even a scale factor of 1"):
        check_output_size(9000, 9000, UpscaleParams(scale_factor=2), 64_000_000)


# --- transparency fill ----------------------------------------------------------------------------


def test_bleed_keeps_opaque_pixels_and_fills_from_neighbours() -> None:
    rgb = np.zeros((40, 90, 3), np.uint8)
    rgb[:, :30] = (220, 30, 30)  # opaque red on the left
    rgb[:, 60:] = (30, 30, 220)  # opaque blue on the right
    alpha = np.zeros((40, 90), np.uint8)
    alpha[:, :30] = 255
    alpha[:, 60:] = 255
    alpha[:, 29] = 128  # a soft edge pixel keeps its colour too
    out = bleed_transparent(rgb, alpha)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    np.testing.assert_array_equal(out[:, :30], rgb[:, :30])
    np.testing.assert_array_equal(out[:, 60:], rgb[:, 60:])
    hole = out[:, 30:60].astype(int)
    assert (hole.sum(axis=2) > 150).all()  # no black left
    assert (hole[:, 0, 0] > 150).all() and (hole[:, 0, 2] < 100).all()  # red next to red
    assert (hole[:, -1, 2] > 150).all() and (hole[:, -1, 0] < 100).all()  # blue next to blue
    assert np.abs(np.diff(hole, axis=1)).max() < 40  # a smooth fill, no hard seam


def test_bleed_on_a_photo_and_edge_cases() -> None:
    picture = gen.photo16()
    alpha = gen.alpha_mask(96, 64, np.uint16)
    garbage = picture.copy()
    garbage[alpha == 0] = 0
    out = bleed_transparent(garbage, alpha)
    visible = alpha > 0.02 * 65535
    np.testing.assert_array_equal(out[visible], garbage[visible])
    # Each filled pixel is much closer to the nearest visible colour than to the black it had.
    from scipy import ndimage

    rows, cols = ndimage.distance_transform_edt(~visible, return_indices=True)[1]
    nearest = garbage[rows, cols][~visible].astype(float)
    assert np.abs(out[~visible] - nearest).mean() < 0.3 * np.abs(nearest).mean()
    opaque = np.full((64, 96), 65535, np.uint16)
    np.testing.assert_array_equal(bleed_transparent(picture, opaque), picture)
    clear = np.zeros((64, 96), np.uint16)
    np.testing.assert_array_equal(bleed_transparent(picture, clear), picture)


def test_source_parameters_are_not_passed_off_as_the_outputs(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    exif.get_ifd(0x8769)[0x9286] = _exif.encode_user_comment("how the source was made")
    path = tmp_path / "a1111.jpg"
    Image.fromarray(gen.photo()).save(path, exif=exif.tobytes())
    assert read_parameters_text(path) == "how the source was made"
    source = load_image(path).source
    for fmt in FORMATS:
        out = save_image(tmp_path / f"out.{fmt}", gen.photo(), source=source)
        assert read_parameters_text(out) is None
        with Image.open(out) as im:
            assert im.getexif()[0x010F] == "Canon"
