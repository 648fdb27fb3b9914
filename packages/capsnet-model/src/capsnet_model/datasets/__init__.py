"""Facial expression data sets (RAF-DB, FER2013, AffectNet, EmotioNet, folders) in one label order.

Canonical label order
---------------------
Every loader maps its data set's own labels to :data:`EXPRESSIONS`, the single label order
used by the models and metrics in this package::

    0 neutral, 1 happiness, 2 sadness, 3 surprise, 4 fear, 5 disgust, 6 anger

The per-data-set mappings (:data:`RAFDB_LABELS`, :data:`FER2013_LABELS`,
:data:`AFFECTNET_LABELS`, :data:`EMOTIONET_LABELS` with :data:`EMOTIONET_CATEGORIES`,
:data:`FOLDER_ALIASES`) live in :mod:`.labels` and nowhere else.

Every loader returns a :class:`FERDataset` whose items are ``(image, label)``: ``image`` an
``uint8`` ``H x W x 3`` RGB array (grayscale input is replicated to three channels), resized
to ``image_size`` when given and then passed through ``transform`` when given (so it may be
a tensor); ``label`` an index into :data:`EXPRESSIONS`.

Bad input raises :class:`DatasetError` naming the file (and line) at fault. With
``on_error="skip"`` bad rows are dropped instead and recorded in ``dataset.skipped``; an
empty split is always an error. Text files are read as UTF-8 (a byte-order mark is allowed):
a row holding other bytes, or a CSV row with more or fewer fields than the header, is a bad
row like any other. ``verify_images=True`` decodes every image at load time, on a few threads
and with a progress bar for large sets, so that a bad image is raised or skipped there and
never surfaces in ``__getitem__`` (mid-epoch, where skipping is impossible).

Each source is registered once (:mod:`.sources`) with its loader and its split layout:
:func:`get_dataset` returns its :class:`DatasetSource`, :func:`list_datasets` the names,
:func:`load_dataset` loads one split by name, :func:`register_dataset` adds a source.

Modules: :mod:`.labels` (label order and mappings), :mod:`.samples` (samples, image reading,
:class:`FERDataset`), :mod:`.collect` (raise-or-skip, the image check), :mod:`.csvfile`
(label files and CSVs), :mod:`.sources` (the registry) and one module per source:
:mod:`.rafdb`, :mod:`.fer2013`, :mod:`.affectnet`, :mod:`.emotionet`, :mod:`.folder`
(imported here, in this order, which registers them).
"""

from __future__ import annotations

from capsnet_model.datasets.collect import VERIFY_PROGRESS_MIN
from capsnet_model.datasets.labels import (
    AFFECTNET_EXCLUDED,
    AFFECTNET_LABELS,
    EMOTIONET_CATEGORIES,
    EMOTIONET_LABELS,
    EMOTIONET_UNKNOWN,
    EXPRESSIONS,
    FER2013_LABELS,
    FER2013_PIXELS,
    FER2013_USAGE,
    FOLDER_ALIASES,
    RAFDB_LABELS,
    label_index,
)
from capsnet_model.datasets.samples import (
    IMAGE_SUFFIXES,
    ON_ERROR,
    Box,
    DatasetError,
    FERDataset,
    FERSample,
    ImageSize,
    OnError,
    SkippedRow,
    load_sample_image,
    read_image,
)
from capsnet_model.datasets.sources import (
    DatasetLayoutError,
    DatasetSource,
    SplitLayout,
    UnknownDatasetError,
    get_dataset,
    list_datasets,
    load_dataset,
    register_dataset,
)

# The source modules register themselves on import, in this order (list_datasets' order).
from capsnet_model.datasets.rafdb import load_rafdb  # isort: skip
from capsnet_model.datasets.fer2013 import load_fer2013  # isort: skip
from capsnet_model.datasets.affectnet import load_affectnet  # isort: skip
from capsnet_model.datasets.emotionet import load_emotionet  # isort: skip
from capsnet_model.datasets.folder import load_folder  # isort: skip

__all__ = [
    "AFFECTNET_EXCLUDED",
    "AFFECTNET_LABELS",
    "EMOTIONET_CATEGORIES",
    "EMOTIONET_LABELS",
    "EMOTIONET_UNKNOWN",
    "EXPRESSIONS",
    "FER2013_LABELS",
    "FER2013_PIXELS",
    "FER2013_USAGE",
    "FOLDER_ALIASES",
    "IMAGE_SUFFIXES",
    "ON_ERROR",
    "RAFDB_LABELS",
    "VERIFY_PROGRESS_MIN",
    "Box",
    "DatasetError",
    "DatasetLayoutError",
    "DatasetSource",
    "FERDataset",
    "FERSample",
    "ImageSize",
    "OnError",
    "SkippedRow",
    "SplitLayout",
    "UnknownDatasetError",
    "get_dataset",
    "label_index",
    "list_datasets",
    "load_affectnet",
    "load_dataset",
    "load_emotionet",
    "load_fer2013",
    "load_folder",
    "load_rafdb",
    "load_sample_image",
    "read_image",
    "register_dataset",
]
