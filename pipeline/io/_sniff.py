"""What is this file? Suffix and signature knowledge, for format checks and error messages."""

from __future__ import annotations

__all__ = ["SUFFIX_FORMAT", "describe_content", "looks_heif"]

# Suffix → the container format Pillow reports for it (used to spot mislabelled files).
SUFFIX_FORMAT = {
    ".png": "PNG", ".apng": "PNG",
    ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG",
    ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP", ".dib": "BMP",
    ".gif": "GIF", ".avif": "AVIF", ".heic": "HEIF", ".heif": "HEIF",
    ".ppm": "PPM", ".pgm": "PPM", ".pbm": "PPM", ".pnm": "PPM", ".qoi": "QOI",
    ".jp2": "JPEG2000", ".j2k": "JPEG2000", ".ico": "ICO", ".psd": "PSD",
}  # fmt: skip

_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})


def looks_heif(head: bytes) -> bool:
    """Whether the first bytes of a file are those of a HEIC/HEIF photo."""
    return head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


def describe_content(head: bytes) -> str | None:
    """What a file that is not a readable image seems to be, for the error message."""
    signatures = (
        (b"%PDF", "a PDF document"), (b"PK\x03\x04", "a ZIP archive or an Office document"),
        (b"\x1f\x8b", "a gzip archive"), (b"Rar!", "a RAR archive"),
        (b"7z\xbc\xaf", "a 7-Zip archive"), (b"\x7fELF", "a program"),
        (b"MZ", "a Windows program"), (b"%!PS", "a PostScript/EPS file"),
        (b"\xc5\xd0\xd3\xc6", "an EPS file"), (b"ID3", "an MP3 audio file"),
        (b"OggS", "an Ogg media file"), (b"fLaC", "a FLAC audio file"),
        (b"\x1aE\xdf\xa3", "a Matroska/WebM video"), (b"SQLite format 3", "an SQLite database"),
        (b"\xff\x0a", "a JPEG XL image, which is not supported yet"),
        (b"\x00\x00\x00\x0cJXL ", "a JPEG XL image, which is not supported yet"),
    )  # fmt: skip
    for magic, what in signatures:
        if head.startswith(magic):
            return what
    if head[:4] == b"RIFF":
        return {b"WAVE": "a WAV audio file", b"AVI ": "an AVI video"}.get(head[8:12])
    if head[4:8] == b"ftyp":
        return "a video (MP4/MOV)"
    if b"\0" not in head:
        text = head.lstrip(b"\xef\xbb\xbf").lstrip().lower()
        printable = sum(32 <= b < 127 or b in b"\t\r\n" or b >= 128 for b in head)
        if text.startswith((b"<svg", b"<?xml")) and b"<svg" in head.lower():
            return "an SVG drawing (vector graphics; export it as PNG first)"
        if text.startswith((b"<!doctype html", b"<html")):
            return "a web page (HTML)"
        if printable >= 0.95 * len(head):
            return "a text file"
    return None
