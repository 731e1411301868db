"""Reading images the same way everywhere: EXIF rotation applied, every common mode converted to RGB.

Collections mix CMYK scans, palette GIFs, RGBA cut-outs, 16-bit PNGs and phone photos with EXIF
orientation; they are converted here, not rejected. Only modes with no meaningful RGB rendering fail.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from celadon.errors import CeladonError

# Large museum scans are legitimate, decompression bombs (a 76 KB PNG declaring 625 megapixels) are not:
# every decode checks the declared size against this limit before it allocates anything. Pillow's own
# guard is off because celadon's limit replaces it (one setting, `--max-pixels`, one message).
DEFAULT_MAX_PIXELS = 100_000_000
_limits = {"max_pixels": DEFAULT_MAX_PIXELS}
Image.MAX_IMAGE_PIXELS = None

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
THUMBNAIL = 16
SUPPORTED_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
     "I", "I;16", "I;16B", "I;16L", "I;16N"}
)


class ImageReadError(CeladonError):
    """The file is not a usable image; `kind` names the problem class for reports."""

    def __init__(self, path: str | Path, kind: str, detail: str):
        super().__init__(f"{path}: {detail}")
        self.kind = kind
        self.detail = detail


def set_max_pixels(limit: int) -> None:
    """The largest image (width x height) any command decodes; larger files are row errors."""
    if int(limit) <= 0:
        raise CeladonError(f"--max-pixels {limit}: give a positive number of pixels, e.g. 100000000")
    _limits["max_pixels"] = int(limit)


def max_pixels() -> int:
    return _limits["max_pixels"]


def _to_rgb(img: Image.Image, path: str | Path) -> Image.Image:
    if img.mode not in SUPPORTED_MODES:
        raise ImageReadError(path, "unsupported_mode", f"unsupported image mode {img.mode!r}; save it as 8-bit RGB")
    if img.mode.startswith("I"):
        # 16/32-bit greyscale: scale the full range to 8 bits instead of clipping at 255.
        array = np.asarray(img, dtype=np.float64)
        top = 65535.0 if array.max() > 255 else 255.0
        img = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparency on white, as a museum photo on a white page would look.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Decode fully, apply EXIF orientation and return RGB; raise `ImageReadError` naming the problem."""
    return _decode(path, _read_bytes(path))[0]


def _read_bytes(path: str | Path) -> bytes:
    """The file's bytes, refusing what is not a regular file before anything blocks (a FIFO) or loops."""
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageReadError(path, "symlink_loop", "symbolic link loop (the link points back at itself); "
                                 "replace it with the image file") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            dangling = os.path.islink(path)
            what = "symbolic link points to a file that does not exist" if dangling else "file does not exist"
            raise ImageReadError(path, "missing_file", what) from None
        raise ImageReadError(path, "unreadable", f"cannot be read ({exc.strerror}); fix its permissions") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageReadError(path, "not_a_file", "is a folder, not an image file; list the images inside it")
    if not stat.S_ISREG(info.st_mode):
        raise ImageReadError(path, "not_a_file", "is a special file (device, pipe or socket), not an image")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageReadError(path, "unreadable", f"cannot be read ({exc.strerror}); fix its permissions") from None
    if not data:
        raise ImageReadError(path, "zero_size", "file is empty (0 bytes)")
    return data


def _decode(path: str | Path, data: bytes) -> tuple[Image.Image, str]:
    try:
        with warnings.catch_warnings(), Image.open(io.BytesIO(data)) as img:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if img.width * img.height > max_pixels():
                raise ImageReadError(path, "too_large", (
                    f"image declares {img.width}x{img.height} = {img.width * img.height / 1e6:.0f} megapixels, "
                    f"over the {max_pixels() / 1e6:.0f} MP limit (a decompression bomb or an oversized scan); "
                    "downscale it, or raise --max-pixels if it is genuine"))
            img.load()
            mode = img.mode
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img, path), mode
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(path, "corrupt", "not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, MemoryError) as exc:
        message = str(exc)
        kind = "truncated" if "truncated" in message.lower() else "corrupt"
        detail = f"image cannot be decoded ({message}); re-export or replace the file"
        raise ImageReadError(path, kind, detail) from None


@dataclass(frozen=True)
class ImageInfo:
    """What one pass over an image learns: size, source mode, exact and perceptual hashes, a thumbnail."""

    width: int
    height: int
    mode: str
    sha256: str
    phash: int
    thumbnail: bytes  # THUMBNAIL x THUMBNAIL RGB uint8: confirms pHash candidates (see duplicates.py)


def inspect_image(path: str | Path) -> ImageInfo:
    """Decode the image once and hash it (file bytes for exact, pHash of the RGB image for near duplicates)."""
    data = _read_bytes(path)  # read once: hashed for exact duplicates, decoded for the rest
    img, mode = _decode(path, data)
    digest = hashlib.sha256(data).hexdigest()
    thumb = img.resize((THUMBNAIL, THUMBNAIL), Image.BILINEAR).tobytes()
    return ImageInfo(img.width, img.height, mode, digest, perceptual_hash(img), thumb)


def perceptual_hash(img: Image.Image) -> int:
    """64-bit DCT perceptual hash (imagehash.phash) as an int, for Hamming-distance comparisons."""
    return int(str(imagehash.phash(img)), 16)


def prepare_square(img: Image.Image, size: int, source_size: int = 0) -> np.ndarray:
    """The one way a classifier's images are sized: with `source_size`, first to that square (the resolution
    synthetic images are generated at), then to `size`, so real photos and synthetic images reach the network
    from the same resolution through the same resize; without it, straight to `size`."""
    if source_size:
        img = Image.fromarray(resize_square(img, source_size))
    return resize_square(img, size)


def resize_square(img: Image.Image, size: int) -> np.ndarray:
    """Shorter side to `size`, centre crop to a square: what every later crop starts from."""
    scale = size / min(img.size)
    w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
    img = img.resize((w, h), Image.BILINEAR, reducing_gap=3.0)
    left, top = (w - size) // 2, (h - size) // 2
    return np.array(img.crop((left, top, left + size, top + size)), dtype=np.uint8)  # a writable copy
