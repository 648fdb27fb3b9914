"""Image decoding, face detection and cropping for the FER runtime (no torch).

* :func:`decode_image` turns encoded bytes, a file path or an array into an RGB ``uint8``
  ``(H, W, 3)`` array, raising :class:`ImageDecodeError` for anything undecodable;
* :class:`FaceDetector` finds frontal faces with OpenCV's Haar cascade
  (``haarcascade_frontalface_default.xml``, shipped with ``opencv-python-headless`` 4.x);
* :func:`crop_with_margin` cuts a face box out with a margin, clipped to the image.

Boxes are ``(x, y, w, h)`` integer tuples in pixel coordinates of the image they came from.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TypeAlias

import cv2
import numpy as np

Box: TypeAlias = tuple[int, int, int, int]
ImageInput: TypeAlias = bytes | bytearray | memoryview | str | os.PathLike[str] | np.ndarray

CASCADE_FILE = "haarcascade_frontalface_default.xml"
_OPENCV_HINT = 'install OpenCV 4.x: pip install "opencv-python-headless>=4.9,<5"'

__all__ = [
    "CASCADE_FILE",
    "Box",
    "DetectorUnavailableError",
    "FaceDetector",
    "ImageDecodeError",
    "ImageInput",
    "as_rgb",
    "crop_with_margin",
    "decode_image",
]


class ImageDecodeError(ValueError):
    """Bytes or a file that do not decode to an image (empty, truncated, not an image)."""


class DetectorUnavailableError(RuntimeError):
    """OpenCV lacks ``CascadeClassifier`` or its cascade files (OpenCV 5.x dropped them)."""


def as_rgb(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Validate an RGB(A)/grayscale ``uint8`` array and return it as contiguous ``(H, W, 3)``.

    Accepts ``(H, W)``, ``(H, W, 1)`` (grayscale, replicated), ``(H, W, 3)`` (RGB, kept) and
    ``(H, W, 4)`` (RGBA, alpha dropped). Anything else raises :class:`ValueError`.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{what} must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 (0..255 RGB), got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        out = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 3:
        out = image
    elif image.ndim == 3 and image.shape[2] == 4:
        out = image[:, :, :3]
    else:
        raise ValueError(
            f"{what} must be (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) grayscale, "
            f"got shape {image.shape}"
        )
    if out.shape[0] == 0 or out.shape[1] == 0:
        raise ValueError(f"{what} is empty: shape {image.shape}")
    return np.ascontiguousarray(out)


def _decode_bytes(data: bytes | bytearray | memoryview, where: str) -> np.ndarray:
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size == 0:
        raise ImageDecodeError(f"{where}: no data (0 bytes)")
    try:
        # IMREAD_COLOR: always 8-bit BGR (grayscale replicated, alpha dropped, 16-bit scaled).
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageDecodeError(f"{where}: cannot decode image ({exc})") from exc
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.size == 0:
        raise ImageDecodeError(
            f"{where}: not a decodable image ({buf.size} bytes; empty, truncated or "
            "unsupported format)"
        )
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def decode_image(data: ImageInput) -> np.ndarray:
    """Any supported image input -> RGB ``uint8`` ``(H, W, 3)`` (C-contiguous).

    ``data`` is encoded image bytes (PNG, JPEG... whatever OpenCV decodes), a path to such a
    file, or an array (see :func:`as_rgb`; arrays are taken to be RGB already).

    Raises :class:`ImageDecodeError` (a :class:`ValueError`) for empty or undecodable bytes,
    :class:`FileNotFoundError` for a missing path and :class:`ValueError` for arrays of the
    wrong dtype or shape.
    """
    if isinstance(data, np.ndarray):
        return as_rgb(data)
    if isinstance(data, bytes | bytearray | memoryview):
        return _decode_bytes(data, "image bytes")
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        if not path.is_file():
            if path.exists():
                raise ImageDecodeError(f"{path}: not a file")
            raise FileNotFoundError(f"image file not found: {path}")
        return _decode_bytes(path.read_bytes(), str(path))
    raise TypeError(
        f"image must be encoded bytes, a path or a uint8 numpy array, got {type(data).__name__}"
    )


def crop_with_margin(
    image: np.ndarray, box: Sequence[int], margin: float
) -> tuple[np.ndarray, Box]:
    """Cut ``box`` grown by ``margin`` (fraction of its width/height, each side) out of ``image``.

    ``image`` is ``(H, W, C)`` (or ``(H, W)``); ``box`` is ``(x, y, w, h)``. Returns the crop
    (a view into ``image``, ``(h', w', C)``) and the crop's box ``(x, y, w, h)`` after clipping
    to the image. Raises :class:`ValueError` for a box with ``w`` or ``h`` <= 0 or one that
    lies entirely outside the image.
    """
    if len(box) != 4:
        raise ValueError(f"box must be (x, y, w, h), got {box!r}")
    x, y, w, h = (round(float(v)) for v in box)
    if w <= 0 or h <= 0:
        raise ValueError(f"box width and height must be positive, got {(x, y, w, h)}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    height, width = image.shape[:2]
    mx, my = round(margin * w), round(margin * h)
    x0, y0 = max(0, x - mx), max(0, y - my)
    x1, y1 = min(width, x + w + mx), min(height, y + h + my)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {(x, y, w, h)} lies outside the {width}x{height} image")
    return image[y0:y1, x0:x1], (x0, y0, x1 - x0, y1 - y0)


def clip_box(box: Sequence[int], width: int, height: int) -> Box:
    """``box`` ``(x, y, w, h)`` clipped to a ``width`` x ``height`` image (ValueError if empty)."""
    _, clipped = crop_with_margin(np.empty((height, width), np.uint8), box, 0.0)
    return clipped


class FaceDetector:
    """Frontal face detection with OpenCV's Haar cascade.

    ``scale_factor``, ``min_neighbors`` and ``min_size`` are passed to
    ``cv2.CascadeClassifier.detectMultiScale``; ``cascade`` is a path to another cascade XML
    (default: :data:`CASCADE_FILE` from ``cv2.data.haarcascades``). Calling the detector is the
    same as :meth:`detect`, so any ``rgb -> boxes`` callable can stand in for it.

    Needs OpenCV 4.x (5.x has no ``CascadeClassifier``): a :class:`DetectorUnavailableError`
    says so.
    """

    def __init__(
        self,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: tuple[int, int] = (24, 24),
        cascade: str | os.PathLike[str] | None = None,
    ) -> None:
        if scale_factor <= 1.0:
            raise ValueError(f"scale_factor must be > 1, got {scale_factor}")
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_size = (int(min_size[0]), int(min_size[1]))
        classifier_cls = getattr(cv2, "CascadeClassifier", None)
        if classifier_cls is None:
            raise DetectorUnavailableError(
                f"OpenCV {cv2.__version__} has no cv2.CascadeClassifier (face detection): "
                + _OPENCV_HINT
            )
        if cascade is None:
            data = getattr(cv2, "data", None)
            folder = getattr(data, "haarcascades", None)
            if not folder:
                raise DetectorUnavailableError(
                    f"OpenCV {cv2.__version__} ships no Haar cascades (cv2.data.haarcascades): "
                    + _OPENCV_HINT
                )
            path = Path(folder) / CASCADE_FILE
        else:
            path = Path(cascade)
        if not path.is_file():
            raise DetectorUnavailableError(
                f"Haar cascade file not found: {path}; pass cascade=<path to {CASCADE_FILE}> "
                "or " + _OPENCV_HINT
            )
        classifier = classifier_cls(str(path))
        if classifier.empty():
            raise DetectorUnavailableError(f"OpenCV could not load the Haar cascade {path}")
        self.cascade_path = path
        self._classifier = classifier

    def detect(self, rgb: np.ndarray) -> list[Box]:
        """Faces in an RGB ``uint8`` ``(H, W, 3)`` (or grayscale ``(H, W)``) image.

        Returns ``(x, y, w, h)`` boxes, largest area first; an empty list when none is found.
        """
        image = as_rgb(rgb)
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        found = self._classifier.detectMultiScale(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=self.min_size,
        )
        boxes: list[Box] = [
            (int(x), int(y), int(w), int(h)) for x, y, w, h in np.asarray(found).reshape(-1, 4)
        ]
        boxes.sort(key=lambda b: (-b[2] * b[3], b[1], b[0]))
        return boxes

    __call__ = detect

    def __repr__(self) -> str:
        return (
            f"FaceDetector(scale_factor={self.scale_factor}, min_neighbors={self.min_neighbors}, "
            f"min_size={self.min_size}, cascade={str(self.cascade_path)!r})"
        )
