"""Image decoding, face detection and cropping for the FER runtime (no torch).

* :func:`decode_image` turns encoded bytes, a file path or an array into an RGB ``uint8``
  ``(H, W, 3)`` array, raising :class:`ImageDecodeError` for anything undecodable and
  :class:`ImageTooLargeError` for an image over the pixel limit -- read from the header, before
  decoding, by :mod:`fer_images` (decompression bombs);
* :class:`FaceDetector` finds frontal faces with OpenCV's Haar cascade
  (``haarcascade_frontalface_default.xml``, shipped with ``opencv-python-headless`` 4.x), on a
  copy scaled down to at most ``max_side`` pixels so its cost and memory stay bounded;
* :class:`ThreadLocalDetector` gives each thread its own :class:`FaceDetector` (OpenCV's
  cascade classifier is not safe to share between threads), so one detector can serve a pool;
* :func:`crop_with_margin` cuts a face box out with a margin, clipped to the image.

A *detector* is any callable ``rgb -> [(x, y, w, h), ...]`` (:data:`Detector`).

Boxes are ``(x, y, w, h)`` integer tuples in pixel coordinates of the image they came from.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeAlias

import cv2
import numpy as np

from fer_images import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    ImageTooLargeError,
    check_pixels,
    decode_rgb,
    read_rgb,
)

Box: TypeAlias = tuple[int, int, int, int]
ImageInput: TypeAlias = bytes | bytearray | memoryview | str | os.PathLike[str] | np.ndarray
#: A face detector: RGB ``uint8`` ``(H, W, 3)`` -> ``(x, y, w, h)`` boxes.
Detector: TypeAlias = Callable[[np.ndarray], Sequence[Sequence[int]]]

CASCADE_FILE = "haarcascade_frontalface_default.xml"
#: Longest side of the copy the face detector searches (larger images are scaled down first).
DETECT_MAX_SIDE = 2048
_OPENCV_HINT = 'install OpenCV 4.x: pip install "opencv-python-headless>=4.9,<5"'

__all__ = [
    "CASCADE_FILE",
    "DEFAULT_MAX_PIXELS",
    "DETECT_MAX_SIDE",
    "Box",
    "Detector",
    "DetectorUnavailableError",
    "FaceDetector",
    "ImageDecodeError",
    "ImageInput",
    "ImageTooLargeError",
    "ThreadLocalDetector",
    "as_rgb",
    "crop_with_margin",
    "decode_image",
]


class DetectorUnavailableError(RuntimeError):
    """OpenCV lacks ``CascadeClassifier`` or its cascade files (OpenCV 5.x dropped them)."""


def shrunk(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float]:
    """Returns ``(image, scale)``: ``image`` resized (area interpolation) so that its longer
    side is ``max_side``, and the factor applied; the image itself and 1.0 when it is no larger
    or ``max_side`` is None. A detector divides the boxes it finds by ``scale``."""
    height, width = image.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return image, 1.0
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


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


def decode_image(data: ImageInput, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Any supported image input -> RGB ``uint8`` ``(H, W, 3)`` (C-contiguous).

    ``data`` is encoded image bytes (the formats of :data:`fer_images.SUPPORTED_FORMATS`), a
    path to such a file, or an array (see :func:`as_rgb`; arrays are taken to be RGB already).

    Raises :class:`ImageTooLargeError` for an image over ``max_pixels`` (default 40 MP;
    ``None``: no limit) -- for bytes and files before anything is decoded --,
    :class:`ImageDecodeError` (a :class:`ValueError`) for empty, undecodable or unsupported
    bytes, :class:`FileNotFoundError` for a missing path and :class:`ValueError` for arrays of
    the wrong dtype or shape.
    """
    if isinstance(data, np.ndarray):
        rgb = as_rgb(data)
        check_pixels(rgb.shape[1], rgb.shape[0], max_pixels, "image array")
        return rgb
    if isinstance(data, bytes | bytearray | memoryview):
        return decode_rgb(data, max_pixels=max_pixels)
    if isinstance(data, str | os.PathLike):
        return read_rgb(data, max_pixels=max_pixels)
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

    An image whose longer side exceeds ``max_side`` (default :data:`DETECT_MAX_SIDE`, ``None``:
    never) is searched on a copy scaled down to that side, and the boxes are scaled back: the
    cascade's time and memory grow with the pixel count (on a 2-core x86 machine a 40 MP image
    takes 5 s and 2.3 GB at full size, 0.25 s and 0.3 GB at 2048 px), while the faces that the
    scaling loses (under ``24 * side / max_side`` pixels) are too small to classify anyway.

    Needs OpenCV 4.x (5.x has no ``CascadeClassifier``): a :class:`DetectorUnavailableError`
    says so.
    """

    def __init__(
        self,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: tuple[int, int] = (24, 24),
        cascade: str | os.PathLike[str] | None = None,
        max_side: int | None = DETECT_MAX_SIDE,
    ) -> None:
        if scale_factor <= 1.0:
            raise ValueError(f"scale_factor must be > 1, got {scale_factor}")
        if max_side is not None and max_side < 32:
            raise ValueError(f"max_side must be >= 32 or None, got {max_side}")
        self.max_side = max_side
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
        image, scale = shrunk(as_rgb(rgb), self.max_side)
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        found = self._classifier.detectMultiScale(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=tuple(max(1, round(v * scale)) for v in self.min_size),
        )
        boxes: list[Box] = [
            (round(x / scale), round(y / scale), round(w / scale), round(h / scale))
            for x, y, w, h in np.asarray(found).reshape(-1, 4).tolist()
        ]
        boxes.sort(key=lambda b: (-b[2] * b[3], b[1], b[0]))
        return boxes

    __call__ = detect

    def __repr__(self) -> str:
        return (
            f"FaceDetector(scale_factor={self.scale_factor}, min_neighbors={self.min_neighbors}, "
            f"min_size={self.min_size}, max_side={self.max_side}, "
            f"cascade={str(self.cascade_path)!r})"
        )


class ThreadLocalDetector:
    """A thread-safe detector: one detector per calling thread, made on its first call.

    OpenCV's cascade classifier keeps scratch state while it searches, so one
    :class:`FaceDetector` must not serve two threads at once. ``factory`` makes each thread's
    detector (default: :class:`FaceDetector` with its default settings, so the boxes equal a
    plain ``FaceDetector()``'s); a factory error (:class:`DetectorUnavailableError`) surfaces
    on the first call, like the detector's own.
    """

    def __init__(self, factory: Callable[[], Detector] = FaceDetector) -> None:
        self.factory = factory
        self._local = threading.local()

    def __call__(self, rgb: np.ndarray) -> Sequence[Sequence[int]]:
        """The calling thread's detector's boxes for ``rgb``."""
        detector = getattr(self._local, "detector", None)
        if detector is None:
            detector = self._local.detector = self.factory()
        return detector(rgb)

    def __repr__(self) -> str:
        name = getattr(self.factory, "__qualname__", repr(self.factory))
        return f"ThreadLocalDetector(factory={name})"
