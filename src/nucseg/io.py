"""Reading images of any DSB-like kind and writing outputs atomically.

Every reader raises `ImageError` naming the file and the problem, so a stage can report bad
inputs by name instead of dying with a bare decoder traceback.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
_UMASK = os.umask(0)  # read once at import: temp files are created 0600, outputs get the usual mode
os.umask(_UMASK)


class ImageError(ValueError):
    """An input image that cannot be used; the message names the file."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def problem_of(err: Exception) -> str:
    """What went wrong with one input, in a line: an `ImageError`'s problem, a `ValueError`'s
    message, any other error with its type (a bug or a model failure rather than bad input)."""
    if isinstance(err, ImageError):
        return err.problem
    message = str(err).splitlines()[0] if str(err) else ""
    return message if isinstance(err, ValueError) else f"{type(err).__name__}: {message}".rstrip(": ")


def read_image(path: str | Path) -> np.ndarray:
    """Image as stored (uint8/uint16/float), RGB(A) channel order, 2-D or 3-D."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(path, "file not found")
    return decode_image(path.read_bytes(), path)


TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def decode_image(data: bytes, name: str | Path = "image") -> np.ndarray:
    """`read_image` for bytes already in memory (an upload, a DataFrame cell); `name` is what
    error messages call it. TIFFs are recognised by their signature, whatever the name says."""
    if len(data) == 0:
        raise ImageError(name, "file is empty (0 bytes)")
    if bytes(data[:4]) in TIFF_MAGIC:
        image = _read_tiff(data)  # tifffile sees every page and sample; OpenCV only the first page
    else:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if image is not None and image.ndim == 3 and image.shape[2] in (3, 4):
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB if image.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
    if image is None:
        raise ImageError(name, "cannot decode image (corrupt or not an image file)")
    if image.size == 0:
        raise ImageError(name, f"image has no pixels (shape {image.shape})")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3):
        raise ImageError(name, f"expected a 2-D or 3-D image, got shape {image.shape}")
    if image.ndim == 3 and image.shape[2] not in (3, 4):
        raise ImageError(name, f"expected 1, 3 or 4 channels, got {image.shape[2]}")
    return image


def _read_tiff(data: bytes) -> np.ndarray | None:
    import io as _io

    import tifffile

    try:
        return tifffile.imread(_io.BytesIO(data))
    except Exception:  # noqa: BLE001 - any decoder failure means "corrupt"
        return None


def is_grey(image: np.ndarray) -> bool:
    """True for single-channel images and for colour images whose channels are identical."""
    if image.ndim == 2:
        return True
    rgb = image[..., :3]
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Three channels whatever came in: grey is repeated, alpha is dropped."""
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    return image[..., :3]


def normalize_image(image: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Float32 RGB in [0, 1] by percentile scaling, so 8-bit, 16-bit, grey and RGBA look alike."""
    rgb = to_rgb(image).astype(np.float32)
    lo, hi = np.percentile(rgb, [low, high])
    if hi <= lo:
        lo, hi = float(rgb.min()), float(rgb.max())
    if hi <= lo:
        return np.zeros(rgb.shape, np.float32)
    return np.clip((rgb - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)


def read_mask(path: str | Path) -> np.ndarray:
    """Boolean mask of one nucleus (any non-zero pixel of the first channel)."""
    mask = read_image(path)
    if mask.ndim == 3:
        mask = mask[..., 0]
    return mask > 0


def image_id_of(path: Path) -> str:
    return path.stem


def find_images(folder: str | Path) -> list[tuple[str, Path]]:
    """(id, path) of every image in a DSB-layout folder (`<id>/images/<id>.png`) or a flat folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: input folder not found")
    found: list[tuple[str, Path]] = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and (entry / "images").is_dir():
            files = sorted(p for p in (entry / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if files:
                found.append((entry.name, files[0]))
        elif entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES:
            found.append((image_id_of(entry), entry))
    return found


def iter_dsb(folder: str | Path) -> Iterator[tuple[str, Path, Path]]:
    """(id, image folder, masks folder) of each sample folder in DSB layout."""
    for entry in sorted(Path(folder).iterdir()):
        if entry.is_dir():
            yield entry.name, entry / "images", entry / "masks"


# ---- atomic writers: a half-written output never carries the final name ----

def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename it: a full disk
    or a crash leaves the old file (or none), never a truncated one. A failed write raises
    OSError naming `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(err.errno, f"cannot write ({err.strerror or err}); nothing was written under this name",
                      str(path)) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path: str | Path, frame) -> None:
    atomic_write_text(path, frame.to_csv(index=False))


def encode_png(image: np.ndarray, name: str | Path = "image") -> bytes:
    """PNG bytes of an RGB, grey, uint8 or uint16 array."""
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    try:
        ok, encoded = cv2.imencode(".png", image)
    except cv2.error:
        ok = False
    if not ok:
        raise ValueError(f"{name}: PNG encoding failed for array {image.shape} {image.dtype}")
    return encoded.tobytes()


def write_png(path: str | Path, image: np.ndarray) -> None:
    atomic_write_bytes(path, encode_png(image, path))


def write_npz(path: str | Path, **arrays: np.ndarray) -> None:
    import io as _io

    buffer = _io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
