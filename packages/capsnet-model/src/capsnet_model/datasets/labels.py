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

#: EmotioNet's emotion categories -> their prototypical action units: the 6 basic and 17
#: compound categories of Du, Tao & Martinez (PNAS 2014), the table public EmotioNet tools use
#: to read a category off an image's AUs (EmotioNet's lists carry AUs, no category).
EMOTIONET_CATEGORIES: dict[str, tuple[int, ...]] = {
    "happy": (12, 25),
    "sad": (4, 15),
    "fearful": (1, 4, 20, 25),
    "angry": (4, 7, 24),
    "surprised": (1, 2, 25, 26),
    "disgusted": (9, 10, 17),
    "happily sad": (4, 6, 12, 25),
    "happily surprised": (1, 2, 12, 25),
    "happily disgusted": (10, 12, 25),
    "sadly fearful": (1, 4, 15, 25),
    "sadly angry": (4, 7, 15),
    "sadly surprised": (1, 4, 25, 26),
    "sadly disgusted": (4, 10),
    "fearfully angry": (4, 20, 25),
    "fearfully surprised": (1, 2, 5, 20, 25),
    "fearfully disgusted": (1, 4, 10, 20, 25),
    "angrily surprised": (4, 25, 26),
    "disgustedly surprised": (1, 2, 5, 10),
    "happily fearful": (1, 2, 12, 25, 26),
    "angrily disgusted": (4, 10, 17),
    "awed": (1, 2, 5, 25),
    "appalled": (4, 9, 10),
    "hatred": (4, 7, 10),
}

#: EmotioNet's six basic categories -> canonical names. The compound ones have no canonical
#: class (they are left out and counted); EmotioNet has no neutral category.
EMOTIONET_LABELS: dict[str, str] = {
    "happy": "happiness",
    "sad": "sadness",
    "fearful": "fear",
    "angry": "anger",
    "surprised": "surprise",
    "disgusted": "disgust",
}

#: EmotioNet's code for an action unit that was not coded (1: present, 0: absent).
EMOTIONET_UNKNOWN = 999

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
