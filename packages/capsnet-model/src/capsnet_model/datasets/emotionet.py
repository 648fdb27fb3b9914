"""EmotioNet: the challenge's AU lists (``dataFile_*.txt``), basic emotions read off the AUs.

Layout implemented (the EmotioNet challenge distribution, folder
``emotioNet_challenge_files_server_challenge_1.2_aws``):

- the labelled lists are text files ``dataFile_<number>.txt``, one image per line, no header,
  fields separated by tabs: the image URL
  (``https://s3.us-east-2.amazonaws.com/emotionet/Images/<folder>/<file>.jpg``), a second
  field this loader does not read, then one occurrence code per action unit, AU1 to AU60 in
  order: ``1`` present, ``0`` absent, ``999`` not coded;
- the images, downloaded from those URLs, under ``image_root`` by their path below
  ``Images/`` (``<folder>/<file>.jpg``), or by file name alone in one flat folder.

The layout was established from public code that reads these files (the field order, the
tab, the AU1..AU60 columns and the 999 code; what the second field holds is not documented
there), not from a format description by the data set's authors. The lists carry AUs, no
emotion label: the category is read off them with the prototypical AUs of
:data:`EMOTIONET_CATEGORIES` (see :func:`emotionet_category`). A list that carries the
category itself can be read with ``emotion_column``; the columns are configurable.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np

from capsnet_model.datasets.collect import Collector, check_split, require_dir
from capsnet_model.datasets.csvfile import not_utf8, parse_int
from capsnet_model.datasets.labels import (
    EMOTIONET_CATEGORIES,
    EMOTIONET_LABELS,
    EMOTIONET_UNKNOWN,
    label_index,
)
from capsnet_model.datasets.samples import FERDataset, ImageSize, OnError
from capsnet_model.datasets.sources import (
    DatasetLayoutError,
    DatasetSource,
    SplitLayout,
    register_dataset,
)

#: The distribution's list files.
LIST_PATTERN = "dataFile_*.txt"
#: Folders under ``root`` searched for the lists when ``root`` holds none itself (case
#: ignored): the distribution's ``emotioNet_challenge_files_server_challenge_1.2_aws`` & co.
LISTS_FOLDER_PREFIX = "emotionet_challenge_files"
#: Image folders looked for beside the lists when no ``image_root`` is given.
IMAGE_FOLDERS = ("Images", "images")
#: AU columns in a distribution line (AU1..AU60).
AU_COUNT = 60
#: 1-based columns of the distribution's lines: the image URL, then AU1 (after one field).
IMAGE_COLUMN = 1
FIRST_AU_COLUMN = 3
#: Share of the images (picked by a hash of their path) that form the ``test`` split.
TEST_FRACTION = 0.1
SPLITS = ("train", "test")

_PROTOTYPES = {name: frozenset(aus) for name, aus in EMOTIONET_CATEGORIES.items()}
# Every prototype AU must have a column, so a line needs at least up to this AU.
_LAST_USED_AU = max(max(aus) for aus in EMOTIONET_CATEGORIES.values())
_HASH_BUCKETS = 10_000


@dataclass(frozen=True)
class Category:
    """What a line's AUs say: ``name`` (an :data:`EMOTIONET_CATEGORIES` key) when one category
    is the most specific match; else why there is none (``excluded``: a valid line that shows
    no single category; ``unknown``: AUs coded 999 decide it)."""

    name: str | None = None
    excluded: str | None = None
    unknown: str | None = None


def emotionet_category(codes: Mapping[int, int], *, unknown_as_absent: bool = False) -> Category:
    """Returns the EmotioNet category that the AU occurrence ``codes`` (AU number -> 0, 1 or
    999) show.

    A category matches when all its prototypical AUs are present (1); extra AUs are allowed
    (a smile with AU6 is still happy). Of the matches the most specific wins: one whose AUs
    are not a strict subset of another match's (AUs 1, 2, 12, 25 are happily surprised, not
    happy). No match: excluded as ``no emotion category``; two or more equally specific:
    excluded as ``ambiguous``. When a category's AUs are all 1 or 999 with at least one 999,
    whether it matches is unknown, and so is the answer: ``unknown`` (unless
    ``unknown_as_absent``, which reads 999 as 0, as some EmotioNet tools do).
    """
    present = {au for au, code in codes.items() if code == 1}
    if not unknown_as_absent:
        unknown = {au for au, code in codes.items() if code == EMOTIONET_UNKNOWN}
        for name, aus in _PROTOTYPES.items():
            if aus <= present | unknown and not aus <= present:
                missing = ", ".join(f"AU{au}" for au in sorted(aus & unknown))
                return Category(
                    unknown=f"{missing} coded {EMOTIONET_UNKNOWN} (not coded), so whether the "
                    f"face is {name} (AUs {'+'.join(map(str, sorted(aus)))}) is unknown"
                )
    matched = [name for name, aus in _PROTOTYPES.items() if aus <= present]
    specific = [a for a in matched if not any(_PROTOTYPES[a] < _PROTOTYPES[b] for b in matched)]
    if not specific:
        return Category(excluded="no emotion category")
    if len(specific) > 1:
        return Category(excluded="ambiguous")
    return Category(name=specific[0])


def _natural_key(path: Path) -> tuple[Any, ...]:
    """``dataFile_999`` before ``dataFile_1000``."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name))


def find_lists(root: Path, pattern: str = LIST_PATTERN) -> list[Path]:
    """Returns the list files at ``root``: ``root`` itself when it is a file, else the files
    matching ``pattern`` in ``root`` or, when it has none, in its first
    ``emotioNet_challenge_files*`` subfolder that has some (DatasetLayoutError when none)."""
    if root.is_file():
        return [root]
    require_dir(root, "EmotioNet list folder")
    subfolders = (p for p in root.iterdir() if p.is_dir())
    folders = [
        root,
        *sorted(p for p in subfolders if p.name.lower().startswith(LISTS_FOLDER_PREFIX)),
    ]
    for folder in folders:
        files = sorted((p for p in folder.glob(pattern) if p.is_file()), key=_natural_key)
        if files:
            return files
    looked = ", ".join(str(f) for f in folders)
    raise DatasetLayoutError(
        f"no EmotioNet list files ({pattern}) under {root} (looked in {looked})"
    )


def default_image_root(lists: Path) -> Path:
    """Returns where the images are by default: ``Images`` (or ``images``) in the folder given
    as root or holding the lists, else that folder."""
    bases = [lists] if lists.is_dir() else [lists.parent]
    bases.append(bases[0].parent)  # the lists may sit in emotioNet_challenge_files*/
    for base in bases:
        for name in IMAGE_FOLDERS:
            if (base / name).is_dir():
                return base / name
    return bases[0]


def image_path(field: str) -> str | None:
    """Returns the image's path relative to the image root (``<folder>/<file>.jpg``) from a
    list's image field (a URL, or a relative path): the part below the last ``Images/``
    folder, else a URL's file name or the relative path itself; None when it names no file
    or climbs out of the root."""
    text = field.strip()
    if "://" in text:
        parts = [p for p in unquote(urlsplit(text).path).split("/") if p]
        is_url = True
    else:
        parts = [p for p in text.replace("\\", "/").split("/") if p and p != "."]
        is_url = False
    if not parts or ".." in parts or (not is_url and text.startswith(("/", "\\"))):
        return None
    folders = [i for i, p in enumerate(parts[:-1]) if p.lower() == "images"]
    if folders:
        parts = parts[folders[-1] + 1 :]
    elif is_url:
        parts = parts[-1:]
    return "/".join(parts)


def in_test_split(relative: str, test_fraction: float = TEST_FRACTION) -> bool:
    """Whether the image at ``relative`` (as :func:`image_path` gives it) is in the ``test``
    split: a hash of the path, so the split does not depend on the order or grouping of the
    list files and an image listed twice stays on one side."""
    bucket = zlib.crc32(relative.encode("utf-8", "surrogateescape")) % _HASH_BUCKETS
    return bucket < round(test_fraction * _HASH_BUCKETS)


def _normalise_category(text: str) -> str:
    return " ".join(text.strip().lower().replace("_", " ").replace("-", " ").split())


def _check_options(
    test_fraction: float, image_column: int, first_au_column: int, emotion_column: int | None
) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    for name, value in (
        ("image_column", image_column),
        ("first_au_column", first_au_column),
        ("emotion_column", emotion_column),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{name} must be a 1-based column number, got {value!r}")
        if value is not None and value < 1:
            raise ValueError(f"{name} must be a 1-based column number, got {value}")
    if emotion_column is not None and emotion_column == image_column:
        raise ValueError(f"emotion_column and image_column are both column {image_column}")
    aus = range(first_au_column, first_au_column + AU_COUNT)
    if emotion_column is None and image_column in aus:
        raise ValueError(
            f"image_column {image_column} falls among the AU columns "
            f"({first_au_column}..{first_au_column + AU_COUNT - 1})"
        )


def _au_codes(fields: list[str], first_au_column: int) -> dict[int, int] | str:
    """Returns AU number -> code from a line's AU fields, or what is wrong with them."""
    start = first_au_column - 1
    least, most = start + _LAST_USED_AU, start + AU_COUNT
    if not least <= len(fields) <= most:
        return (
            f"{len(fields)} fields, expected {least} to {most} (AU1, AU2, ... occurrence codes "
            f"from column {first_au_column} on)"
        )
    codes: dict[int, int] = {}
    for au, text in enumerate(fields[start:], start=1):
        code = parse_int(text)
        if code not in (0, 1, EMOTIONET_UNKNOWN):
            return f"AU{au} is {text.strip()!r}, expected 0, 1 or {EMOTIONET_UNKNOWN}"
        codes[au] = code
    return codes


def _read_lines(path: Path, out: Collector) -> Iterator[tuple[str, list[str]]]:
    """Yields ``(where, fields)`` for each non-blank UTF-8 line of the list file ``path``."""
    # surrogateescape keeps a stray byte from ending the whole read: it becomes one bad row.
    with path.open(encoding="utf-8-sig", errors="surrogateescape") as handle:
        for line_no, line in enumerate(handle, start=1):
            text = line.rstrip("\r\n").rstrip("\t ")
            if not text.strip():
                continue
            where = f"{path}, line {line_no}"
            bad = not_utf8(text)
            if bad is not None:
                out.error(where, f"bad row: not UTF-8 text ({bad})")
                continue
            # The distribution separates fields with tabs; a list re-saved with spaces reads too.
            yield where, (text.split("\t") if "\t" in text else text.split())


def load_emotionet(
    lists: str | Path,
    split: str | None = None,
    *,
    image_root: str | Path | None = None,
    on_error: OnError = "raise",
    verify_images: bool = False,
    progress: bool = True,
    transform: Callable[[np.ndarray], Any] | None = None,
    image_size: ImageSize | None = None,
    test_fraction: float = TEST_FRACTION,
    unknown_as_absent: bool = False,
    image_column: int = IMAGE_COLUMN,
    first_au_column: int = FIRST_AU_COLUMN,
    emotion_column: int | None = None,
    pattern: str = LIST_PATTERN,
) -> FERDataset:
    """Returns the EmotioNet images whose AUs show one of the six basic emotions.

    ``lists``: one list file, or a folder holding ``dataFile_*.txt`` (or a folder holding
    ``emotioNet_challenge_files*/`` with them); see the module docstring for the line layout.
    Images: ``image_root/<path below Images/ in the URL>``, else ``image_root/<file name>``
    (``image_root`` defaults to :func:`default_image_root`). Whole images, not face crops.

    Labels: :func:`emotionet_category` of the AU codes, mapped by :data:`EMOTIONET_LABELS`
    (happy, sad, fearful, angry, surprised, disgusted); compound categories, lines with no
    category and ambiguous lines are left out and counted in ``dataset.excluded``. A line
    whose category hinges on AUs coded 999 has no usable label: an ``unknown label`` row
    error (raised, or skipped with ``on_error="skip"``), unless ``unknown_as_absent``.
    With ``emotion_column`` (1-based) the category is read from that column instead (an
    EmotioNet category name, any case, ``_`` or ``-`` for spaces; ``999`` or empty: unknown).

    ``split``: ``"train"``, ``"test"`` (``test_fraction`` of the images, chosen by a hash of
    their path: :func:`in_test_split`) or ``None`` (all). The challenge's own test images are
    not public, so this split is the loader's, not the data set's.
    """
    if split is not None:
        check_split(split, SPLITS, "EmotioNet")
    _check_options(test_fraction, image_column, first_au_column, emotion_column)
    root = Path(lists)
    files = find_lists(root, pattern)
    images = Path(image_root) if image_root else default_image_root(root)
    require_dir(images, "EmotioNet image root directory")
    out = Collector(on_error, verify_images, progress)
    needed = max(image_column, emotion_column or 0)
    for path in files:
        for where, fields in _read_lines(path, out):
            if len(fields) < needed:
                out.error(where, f"bad row: {len(fields)} fields, expected at least {needed}")
                continue
            relative = image_path(fields[image_column - 1])
            if relative is None:
                field = fields[image_column - 1].strip()
                out.error(where, f"bad row: {field!r} in column {image_column} names no image")
                continue
            if emotion_column is not None:
                category = _read_category(fields[emotion_column - 1], emotion_column)
                if isinstance(category, str):
                    out.error(where, category)
                    continue
            else:
                codes = _au_codes(fields, first_au_column)
                if isinstance(codes, str):
                    out.error(where, f"bad row: {codes}")
                    continue
                category = emotionet_category(codes, unknown_as_absent=unknown_as_absent)
            if category.unknown is not None:
                out.error(where, f"unknown label: {category.unknown}")
                continue
            if split is not None and in_test_split(relative, test_fraction) != (split == "test"):
                continue
            if category.name is None or category.name not in EMOTIONET_LABELS:
                out.excluded[category.name or category.excluded or "no emotion category"] += 1
                continue
            candidates = [images / relative, images / Path(relative).name]
            image = next((p for p in candidates if p.is_file()), candidates[0])
            out.add_file(image, label_index(EMOTIONET_LABELS[category.name]), where)
    source = files[0] if len(files) == 1 else files[0].parent
    return out.finish("emotionet", split, source, transform=transform, image_size=image_size)


def _read_category(text: str, column: int) -> Category | str:
    """Returns the category a list's emotion column names (``999`` or empty: unknown), or
    the row error when it names none."""
    value = _normalise_category(text)
    if value in ("", str(EMOTIONET_UNKNOWN)):
        return Category(unknown=f"emotion column {column} is {text.strip()!r} (not coded)")
    if value not in EMOTIONET_CATEGORIES:
        valid = ", ".join(EMOTIONET_CATEGORIES)
        return (
            f"label out of range: emotion {text.strip()!r} in column {column} is not an "
            f"EmotioNet category ({valid})"
        )
    return Category(name=value)


def _load_root(
    root: Path, split: str | None, *, image_root: str | Path | None = None, **kwargs: Any
) -> FERDataset:
    """Returns :func:`load_emotionet` of the lists at ``root`` for a registry call."""
    return load_emotionet(root, split, image_root=image_root, **kwargs)


SOURCE = register_dataset(
    DatasetSource(
        name="emotionet",
        load=_load_root,
        layout=SplitLayout(train="train", test="test"),
        title="EmotioNet (six basic emotions read off the AU lists; 10 % of images as test set)",
        root=(
            "a folder holding the dataFile_*.txt lists (or an emotioNet_challenge_files* "
            "folder with them), or one list file"
        ),
        root_example="/path/to/EmotioNet",
        root_is_dir=False,
        path_options={"image_root": "/path/to/EmotioNet/Images"},
        default_split=None,
    )
)
