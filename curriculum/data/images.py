"""Safe image loading: every failure becomes one clear ImageError, never a library traceback."""

from __future__ import annotations

import warnings

from PIL import Image, UnidentifiedImageError


class ImageError(Exception):
    """An image could not be used; the message names the path and the reason."""


CHECKS = ("exists", "header", "full")


def check_image(path: str, level: str) -> None:
    """Raise ImageError unless the image passes `level`: `header` opens it (format, size, bomb limit), `full` decodes it."""
    if level == "full":
        load_image(path)
    elif level == "header":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path):
                    pass
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageError(f"image {path} is too large (decompression bomb limit {Image.MAX_IMAGE_PIXELS} pixels): {e}") from None
        except UnidentifiedImageError:
            raise ImageError(f"image {path} is not a readable image file") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"image {path} is corrupt or unreadable: {e}") from None


def load_image(path: str) -> Image.Image:
    """Open, fully decode and convert an image to RGB, respecting Pillow's decompression-bomb limit."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; we enforce the limit itself.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                return im.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"image {path} is too large (decompression bomb limit {Image.MAX_IMAGE_PIXELS} pixels): {e}") from None
    except FileNotFoundError:
        raise ImageError(f"image {path} does not exist") from None
    except UnidentifiedImageError:
        raise ImageError(f"image {path} is not a readable image file") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"image {path} is corrupt or unreadable: {e}") from None
