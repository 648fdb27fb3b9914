"""Image decoding that refuses decompression bombs (numpy + OpenCV, no torch).

* :func:`probe` -> :class:`ImageInfo`: format, width and height from the header alone;
* :func:`decode_rgb` / :func:`read_rgb`: bytes or a file -> RGB ``uint8`` ``(H, W, 3)``, after
  checking the header's size against a pixel limit (:data:`DEFAULT_MAX_PIXELS`, 40 MP);
* :func:`check_pixels`: the same limit for arrays already in memory.

Errors: :class:`ImageDecodeError` (a ``ValueError``) for anything that is not a decodable image of
a supported format, :class:`ImageTooLargeError` (a subclass) for one over the limit.
"""

from importlib import metadata as _metadata

from fer_images.decode import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageTooLargeError,
    check_pixels,
    decode_rgb,
    read_rgb,
)
from fer_images.probe import SUPPORTED_FORMATS, ImageDecodeError, ImageInfo, probe

__version__ = _metadata.version("fer-images")

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_FORMATS",
    "ImageDecodeError",
    "ImageInfo",
    "ImageTooLargeError",
    "__version__",
    "check_pixels",
    "decode_rgb",
    "probe",
    "read_rgb",
]
