"""Image files in and out, and the conversions between them and tensors.

Everything latentx reads or writes as a picture goes through here, with Pillow doing the file
formats (PNG, JPEG, BMP, TIFF, WebP, ...). Tensors follow the generators' convention: float32
[3, H, W] in [−1, 1]; arrays are numpy (H, W, 3) uint8.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from latentx._atomic import atomic_write_bytes

__all__ = ["IMAGE_SUFFIXES", "read_image", "image_size", "array_to_tensor", "to_uint8", "write_png",
           "encode_png", "resize_square", "outline_box", "list_images"]

PathLike = Union[str, os.PathLike]

# What a folder given to ``latentx project`` is searched for (compared lower-case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# EXIF orientations 5–8 are transposes: the displayed image's width is the stored height.
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)


def _open(path: PathLike) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"image {os.fspath(path)!r} does not exist") from None
    except (OSError, Image.DecompressionBombError) as e:  # UnidentifiedImageError is an OSError
        raise ValueError(f"image {os.fspath(path)!r} cannot be read as an image ({e})") from None


def read_image(path: PathLike) -> Tensor:
    """Read an image file → float32 [3, H, W] in [−1, 1], as a viewer shows it: the EXIF
    orientation of a camera JPEG is applied (boxes are given in displayed pixels); grey is
    repeated into three channels, alpha dropped, palettes expanded, 16-bit grey scaled."""
    with _open(path) as im:
        try:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                a = np.asarray(im).astype(np.uint16)
            elif im.mode == "I":  # 32-bit integer grey: Pillow's mode for most 16-bit PNGs
                a = np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
            elif im.mode == "F":
                a = np.asarray(im, dtype=np.float32)
            elif im.mode in ("L", "RGB"):
                a = np.asarray(im)
            else:
                a = np.asarray(im.convert("RGB"))
        except OSError as e:  # a truncated or corrupt file fails when the pixels are decoded
            raise ValueError(f"image {os.fspath(path)!r} cannot be decoded ({e})") from None
    return array_to_tensor(a, os.fspath(path))


def image_size(path: PathLike) -> tuple[int, int]:
    """(H, W) of an image file as :func:`read_image` returns it, from its header only (no
    pixels are decoded: cheap for checking thousands of boxes before a run)."""
    with _open(path) as im:
        w, h = im.size
        try:
            orientation = im.getexif().get(0x0112, 1)  # 0x0112: the EXIF Orientation tag
        except Exception:  # a malformed EXIF block: exif_transpose will ignore it as well
            orientation = 1
    return (w, h) if orientation in _TRANSPOSED_ORIENTATIONS else (h, w)


def array_to_tensor(a: np.ndarray, name: str = "image") -> Tensor:
    """(H, W), (H, W, 3) or (H, W, 4) array → float32 [3, H, W] in [−1, 1]. uint8 spans
    0..255, uint16 0..65535, floats must lie in [0, 1]; grey is repeated, alpha dropped."""
    a = np.asarray(a)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"{name}: expected an RGB image (H, W, 3), got shape {a.shape}")
    a = a[:, :, :3]
    if a.dtype == np.uint8:
        x = a.astype(np.float32) / 127.5 - 1
    elif a.dtype == np.uint16:
        x = a.astype(np.float32) / 32767.5 - 1
    else:
        x = a.astype(np.float32)
        if not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1.0 + 1e-6):
            raise ValueError(f"{name}: float images must lie in [0, 1]")
        x = 2 * np.minimum(x, 1.0) - 1
    return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1).contiguous()


def to_uint8(image: Tensor) -> np.ndarray:
    """[3, H, W] in [−1, 1] (clamped) → (H, W, 3) uint8."""
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"to_uint8: image must be a tensor [3, H, W], got "
                         f"{tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__}")
    x = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 0).numpy()


def encode_png(image: np.ndarray) -> bytes:
    """An 8-bit RGB (H, W, 3) or grey (H, W) array as PNG bytes."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise TypeError(f"write_png: image must be uint8, got {a.dtype}")
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise ValueError(f"write_png: image must be (H, W) or (H, W, 3), got {a.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: PathLike, image: np.ndarray) -> None:
    """Write an 8-bit RGB (H, W, 3) or grey (H, W) array as a PNG file, atomically and durably
    (a results folder whose ``result.json`` exists holds whole pictures, even after a crash)."""
    atomic_write_bytes(path, encode_png(image))


def resize_square(image: Tensor, size: int) -> Tensor:
    """[3, h, w] → [3, size, size]: nearest-neighbour when enlarging by an integer factor ≥ 2
    (crisp pixels for small generator outputs), antialiased bilinear otherwise."""
    h = image.shape[-1]
    mode = "nearest" if size >= 2 * h and size % h == 0 else "bilinear"
    kwargs = {} if mode == "nearest" else {"align_corners": False, "antialias": True}
    return torch.nn.functional.interpolate(image[None].float(), size=(size, size), mode=mode, **kwargs)[0]


def outline_box(image: np.ndarray, box: Sequence[float], color=(255, 40, 40), width: int = 2) -> np.ndarray:
    """A copy of (H, W, 3) uint8 ``image`` with the rectangle ``box`` (x0, y0, x1, y1 in
    pixels, clipped to the image) drawn ``width`` pixels wide, inside the box."""
    out = image.copy()
    h, w = out.shape[:2]
    x0, y0, x1, y1 = [int(round(v)) for v in box]
    x0, x1 = max(0, min(w - 1, x0)), max(0, min(w - 1, x1 - 1))
    y0, y1 = max(0, min(h - 1, y0)), max(0, min(h - 1, y1 - 1))
    for k in range(width):
        out[min(h - 1, y0 + k), x0:x1 + 1] = color
        out[max(0, y1 - k), x0:x1 + 1] = color
        out[y0:y1 + 1, min(w - 1, x0 + k)] = color
        out[y0:y1 + 1, max(0, x1 - k)] = color
    return out


def list_images(folder: PathLike) -> list[Path]:
    """The image files directly in ``folder`` (by suffix, :data:`IMAGE_SUFFIXES`; hidden files
    skipped), sorted by name so every process and every rerun sees the same order."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
