"""Reading images the same way everywhere: EXIF rotation applied, every common mode converted to RGB.

Collections mix CMYK scans, palette GIFs, RGBA cut-outs, 16-bit PNGs and phone photos with EXIF
orientation; they are converted here, not rejected. Only modes with no meaningful RGB rendering fail.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from celadon.errors import CeladonError

Image.MAX_IMAGE_PIXELS = 200_000_000  # large museum scans are legitimate; refuse only absurd sizes

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
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "missing_file", "file does not exist")
    data = path.read_bytes()
    if not data:
        raise ImageReadError(path, "zero_size", "file is empty (0 bytes)")
    return data


def _decode(path: str | Path, data: bytes) -> tuple[Image.Image, str]:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            mode = img.mode
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img, path), mode
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(path, "corrupt", "not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
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
