"""The canonical label order and each data set's mapping to it (defined here and nowhere
else)."""

from __future__ import annotations

#: The one canonical label order (index = class id used everywhere in this package).
EXPRESSIONS: tuple[str, ...] = (
    "neutral",
    "happiness",
    "sadness",
    "surprise",
    "fear",
    "disgust",
    "anger",
)

#: RAF-DB basic ``list_patition_label.txt`` labels 1..7 -> canonical names.
RAFDB_LABELS: dict[int, str] = {
    1: "surprise",
    2: "fear",
    3: "disgust",
    4: "happiness",
    5: "sadness",
    6: "anger",
    7: "neutral",
}

#: FER2013 ``emotion`` 0..6 -> canonical names.
FER2013_LABELS: dict[int, str] = {
    0: "anger",
    1: "disgust",
    2: "fear",
    3: "happiness",
    4: "sadness",
    5: "surprise",
    6: "neutral",
}

#: AffectNet ``expression`` 0..6 -> canonical names (7..10 are excluded, see below).
AFFECTNET_LABELS: dict[int, str] = {
    0: "neutral",
    1: "happiness",
    2: "sadness",
    3: "surprise",
    4: "fear",
    5: "disgust",
    6: "anger",
}

#: AffectNet ``expression`` values that are valid but not one of the seven expressions.
AFFECTNET_EXCLUDED: dict[int, str] = {
    7: "contempt",
    8: "none",
    9: "uncertain",
    10: "non-face",
}

#: Class-folder names (lower case) accepted by :func:`load_folder` -> canonical names.
FOLDER_ALIASES: dict[str, str] = {
    **{name: name for name in EXPRESSIONS},
    "neutrality": "neutral",
    "happy": "happiness",
    "joy": "happiness",
    "sad": "sadness",
    "surprised": "surprise",
    "fearful": "fear",
    "afraid": "fear",
    "disgusted": "disgust",
    "angry": "anger",
}

FER2013_USAGE: dict[str, str] = {
    "Training": "train",
    "PublicTest": "val",
    "PrivateTest": "test",
}

FER2013_PIXELS = 48 * 48

FER2013_PIXELS = 48 * 48


def label_index(name: str) -> int:
    """Index of the canonical expression ``name`` in :data:`EXPRESSIONS`."""
    return EXPRESSIONS.index(name)
