"""Safe image loading: every failure becomes one clear ImageError, never a library traceback.

An image is a file path or an embedded-image reference (see `embedded`); both load the same way.
"""

from __future__ import annotations

import io
import os
import struct
import warnings

from PIL import Image, UnidentifiedImageError

from curriculum.data.embedded import EmbeddedImage, is_embedded, read_bytes


class ImageError(Exception):
    """An image could not be used; the message names the path and the reason."""


CHECKS = ("exists", "header", "full")


def check_image(image: str | EmbeddedImage, level: str) -> None:
    """Raise ImageError unless the image passes `level`: `header` opens it (format, size, bomb limit) and checks that
    it is whole (a truncated copy or download), `full` decodes it."""
    if level in ("header", "full"):
        _open(image, full=level == "full")


def load_image(image: str | EmbeddedImage) -> Image.Image:
    """Open, fully decode and convert an image to RGB, respecting Pillow's decompression-bomb limit."""
    return _open(image, full=True)


def _open(image: str | EmbeddedImage, *, full: bool) -> Image.Image | None:
    label, source = _source(image)
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; we enforce the limit itself.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                if not full:
                    _check_whole(im, source, label)
                    return None
                im.load()
                return im.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"image {label} is too large (decompression bomb limit {Image.MAX_IMAGE_PIXELS} pixels): {e}") from None
    except FileNotFoundError:
        raise ImageError(f"image {label} does not exist") from None
    except UnidentifiedImageError:
        raise ImageError(f"image {label} is not a readable image file") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"image {label} is corrupt or unreadable: {e}") from None


# JPEG's end-of-image marker; encoders may pad a few bytes after it.
_JPEG_END, _JPEG_TAIL = b"\xff\xd9", 1024


def _check_whole(im: Image.Image, source, label: str) -> None:
    """Raise ImageError when the file ends before its image data does, without decoding pixels.

    PNG: every chunk's CRC up to IEND (Pillow's verify); JPEG: the end-of-image marker at the end;
    other formats: Pillow's verify where the format has one.
    """
    if im.format == "JPEG":
        if isinstance(source, str):
            with open(source, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - _JPEG_TAIL))
                tail = f.read()
        else:
            tail = source.getbuffer()[-_JPEG_TAIL:].tobytes()
        if _JPEG_END not in tail:
            raise ImageError(f"image {label} is truncated: its JPEG data has no end marker")
        return
    try:
        im.verify()
    except (OSError, SyntaxError, ValueError, struct.error) as e:
        raise ImageError(f"image {label} is truncated or corrupt: {e}") from None


def _source(image: str | EmbeddedImage):
    """(label for messages, what PIL opens) for a path, a reference string or an EmbeddedImage."""
    if isinstance(image, str) and not is_embedded(image):
        return image, image
    embedded = image if isinstance(image, EmbeddedImage) else EmbeddedImage.parse(image)
    data = embedded.data
    if data is None:
        try:
            data = read_bytes(embedded)
        except (OSError, KeyError, IndexError, ValueError) as e:
            raise ImageError(f"image {embedded.describe()} cannot be read: {e}") from None
    return embedded.describe(), io.BytesIO(data)
