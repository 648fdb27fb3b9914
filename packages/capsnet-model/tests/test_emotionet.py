"""EmotioNet loader on tiny fixtures in the challenge distribution's layout: tab-separated
``dataFile_*.txt`` lists (image URL, a second field, AU1..AU60 codes 0/1/999, no header) in
``emotioNet_challenge_files_server_challenge_1.2_aws/``, images under ``Images/<folder>/``."""

from __future__ import annotations

import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from capsnet_model.datasets import (
    EMOTIONET_CATEGORIES,
    EMOTIONET_LABELS,
    EXPRESSIONS,
    DatasetError,
    get_dataset,
    load_dataset,
    load_emotionet,
)
from capsnet_model.datasets.emotionet import emotionet_category, image_path, in_test_split
from capsnet_model.datasets.sources import DatasetLayoutError
from capsnet_model.synthetic import render_face

LISTS = "emotioNet_challenge_files_server_challenge_1.2_aws"
URL = "https://s3.us-east-2.amazonaws.com/emotionet/Images/{}"

# AUs present in faces of each basic category (the prototypes, the smile with AU6 added).
HAPPY, SAD, SURPRISED = (6, 12, 25), (4, 15), (1, 2, 25, 26)
DISGUSTED, FEARFUL, ANGRY = (9, 10, 17), (1, 4, 20, 25), (4, 7, 24)


def au_line(
    relative: str,
    present: tuple[int, ...] = (),
    unknown: tuple[int, ...] = (),
    count: int = 60,
) -> str:
    """One list line: the image URL, the second field, then AU1..AU<count> codes."""
    codes = [
        "1" if au in present else "999" if au in unknown else "0" for au in range(1, count + 1)
    ]
    return "\t".join([URL.format(relative), "0", *codes])


def write_face(path: Path, label: int = 1, size: int = 24) -> Path:
    """A tiny synthetic face showing canonical expression ``label``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    face = render_face(label, np.random.default_rng(label), size)
    assert cv2.imwrite(str(path), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    return path


def make_emotionet(
    root: Path, files: dict[str, list[str]], images: dict[str, int] | None = None
) -> Path:
    """Writes the list files (name -> lines) under ``root/<LISTS>/`` and one face per image
    (path below ``Images/`` -> canonical label) under ``root/Images/``; returns the lists'
    folder."""
    lists = root / LISTS
    lists.mkdir(parents=True, exist_ok=True)
    for name, lines in files.items():
        (lists / name).write_text("".join(line + "\n" for line in lines))
    for relative, label in (images or {}).items():
        write_face(root / "Images" / relative, label)
    return lists


def idx(name: str) -> int:
    return EXPRESSIONS.index(name)


# --------------------------------------------------------------------------- labels


def test_the_six_basic_categories_map_onto_the_canonical_labels() -> None:
    assert len(EMOTIONET_CATEGORIES) == 23  # 6 basic + 17 compound
    assert set(EMOTIONET_LABELS) == {
        "happy",
        "sad",
        "fearful",
        "angry",
        "surprised",
        "disgusted",
    }
    assert set(EMOTIONET_LABELS.values()) == set(EXPRESSIONS) - {"neutral"}
    # no two categories share a prototype, so an exact match is never ambiguous
    assert len({frozenset(aus) for aus in EMOTIONET_CATEGORIES.values()}) == 23
    assert EMOTIONET_CATEGORIES["happily surprised"] == (1, 2, 12, 25)


@pytest.mark.parametrize(
    ("present", "unknown", "expected"),
    [
        ((12, 25), (), "happy"),
        (HAPPY, (), "happy"),  # an extra AU (6, Duchenne smile) keeps the category
        (SAD, (), "sad"),
        (SURPRISED, (), "surprised"),
        (DISGUSTED, (), "disgusted"),
        (FEARFUL, (), "fearful"),
        (ANGRY, (), "angry"),
        ((1, 2, 12, 25), (), "happily surprised"),  # the most specific match, not happy
        ((1, 2, 12, 25, 26), (), "happily fearful"),
        ((), (), "excluded: no emotion category"),
        ((12,), (), "excluded: no emotion category"),
        ((1, 2, 5, 25, 26), (), "excluded: ambiguous"),  # surprised and awed, neither inside
        ((4, 15), (7,), "unknown"),  # AU7 would make it sadly angry
        ((12, 25), (1, 2), "unknown"),  # AU1+AU2 would make it happily surprised
        ((12, 25), (43, 60), "happy"),  # no category uses AU43 or AU60
        ((), (1, 2, 4), "excluded: no emotion category"),  # no category fits in 999s alone
    ],
)
def test_the_category_is_the_most_specific_prototype_that_the_aus_hold(
    present: tuple[int, ...], unknown: tuple[int, ...], expected: str
) -> None:
    codes = {au: 1 if au in present else 999 if au in unknown else 0 for au in range(1, 61)}
    category = emotionet_category(codes)
    if expected == "unknown":
        assert category.name is None and category.unknown is not None
        assert "999" in category.unknown
    elif expected.startswith("excluded: "):
        assert category.name is None and category.excluded == expected.removeprefix("excluded: ")
    else:
        assert category.name == expected and category.unknown is None


def test_unknown_as_absent_reads_999_as_absent() -> None:
    codes = {au: 1 if au in SAD else 999 if au == 7 else 0 for au in range(1, 61)}
    assert emotionet_category(codes).unknown is not None
    assert emotionet_category(codes, unknown_as_absent=True).name == "sad"


def test_image_paths_come_from_the_url_below_images() -> None:
    assert image_path(URL.format("N_0000000001/N_0000000001_00001.jpg")) == (
        "N_0000000001/N_0000000001_00001.jpg"
    )
    assert image_path("http://cbcsnas01.ece.ohio-state.edu/EmotioNet/Images/a/b%20c.jpg") == (
        "a/b c.jpg"
    )
    assert image_path("https://example.org/x/y/z.jpg") == "z.jpg"  # no Images/: the file name
    assert image_path("faces/z.jpg") == "faces/z.jpg"  # a relative path stays as it is
    for bad in ("", "   ", "https://example.org/", "../z.jpg", "a/../../z.jpg", "/abs/z.jpg"):
        assert image_path(bad) is None, bad


# --------------------------------------------------------------------------- loading


def test_emotionet_loads_the_basic_categories_and_counts_the_rest(tmp_path: Path) -> None:
    rows = [
        ("f1/happy.jpg", HAPPY),
        ("f1/sad.jpg", SAD),
        ("f1/surprised.jpg", SURPRISED),
        ("f2/disgusted.jpg", DISGUSTED),
        ("f2/fearful.jpg", FEARFUL),
        ("f2/angry.jpg", ANGRY),
        ("f3/compound.jpg", (1, 2, 12, 25)),
        ("f3/nothing.jpg", ()),
        ("f3/ambiguous.jpg", (1, 2, 5, 25, 26)),
    ]
    images = {rel: 1 for rel, _ in rows}
    make_emotionet(tmp_path, {"dataFile_1001.txt": [au_line(r, p) for r, p in rows]}, images)
    ds = load_emotionet(tmp_path)  # the folder holding emotioNet_challenge_files*/
    assert ds.name == "emotionet" and ds.split is None
    assert [EXPRESSIONS[label] for label in ds.labels] == [
        "happiness",
        "sadness",
        "surprise",
        "disgust",
        "fear",
        "anger",
    ]
    assert ds.excluded == {"happily surprised": 1, "no emotion category": 1, "ambiguous": 1}
    assert ds.skipped == []
    assert ds.class_counts()["neutral"] == 0
    image, label = ds[0]
    assert image.dtype == np.uint8 and image.shape == (24, 24, 3) and label == idx("happiness")
    assert ds.samples[1].image == tmp_path / "Images" / "f1" / "sad.jpg"
    assert ds.samples[1].where == f"{tmp_path / LISTS / 'dataFile_1001.txt'}, line 2"


def test_emotionet_reads_every_list_file_in_number_order(tmp_path: Path) -> None:
    files = {
        "dataFile_1000.txt": [au_line("a/2.jpg", SAD)],
        "dataFile_999.txt": [au_line("a/1.jpg", HAPPY)],
        "notes.txt": ["not a list"],
    }
    lists = make_emotionet(tmp_path, files, {"a/1.jpg": 1, "a/2.jpg": 2})
    ds = load_emotionet(lists, image_root=tmp_path / "Images")
    assert [EXPRESSIONS[label] for label in ds.labels] == ["happiness", "sadness"]
    one = load_emotionet(lists / "dataFile_1000.txt")  # one list file; Images/ found above it
    assert one.labels == [idx("sadness")]


def test_emotionet_split_is_a_hash_of_the_image_path(tmp_path: Path) -> None:
    names = [f"f{k % 3}/img_{k:03d}.jpg" for k in range(60)]
    lines = [au_line(name, HAPPY) for name in names]
    make_emotionet(tmp_path, {"dataFile_1.txt": lines}, dict.fromkeys(names, 1))
    train = load_emotionet(tmp_path, "train")
    test = load_emotionet(tmp_path, "test")
    rel = [str(s.image.relative_to(tmp_path / "Images")) for s in train.samples]
    rel_test = [str(s.image.relative_to(tmp_path / "Images")) for s in test.samples]
    # the documented rule, computed here independently: crc32(path) % 10000 < 1000
    expected = [n for n in names if zlib.crc32(n.encode()) % 10_000 < 1_000]
    assert rel_test == expected and 0 < len(expected) < len(names)
    assert sorted(rel + rel_test) == sorted(names) and not set(rel) & set(rel_test)
    # another order and grouping of the lists leaves every image on its side
    other = tmp_path / "other"
    make_emotionet(other, {"dataFile_2.txt": lines[::-2], "dataFile_3.txt": lines[-2::-2]})
    again = load_emotionet(other, "test", image_root=tmp_path / "Images")
    assert sorted(str(s.image.relative_to(tmp_path / "Images")) for s in again.samples) == sorted(
        expected
    )
    wider = load_emotionet(tmp_path, "test", test_fraction=0.5)
    assert set(rel_test) <= {str(s.image.relative_to(tmp_path / "Images")) for s in wider.samples}
    assert all(in_test_split(n) == (n in expected) for n in names)


def test_emotionet_bad_split_and_options(tmp_path: Path) -> None:
    make_emotionet(tmp_path, {"dataFile_1.txt": [au_line("a/1.jpg", HAPPY)]}, {"a/1.jpg": 1})
    with pytest.raises(ValueError, match="unknown EmotioNet split 'val'; valid: train, test"):
        load_emotionet(tmp_path, "val")
    with pytest.raises(ValueError, match="test_fraction must be between 0 and 1"):
        load_emotionet(tmp_path, "test", test_fraction=1.0)
    with pytest.raises(ValueError, match="image_column 5 falls among the AU columns"):
        load_emotionet(tmp_path, image_column=5)
    with pytest.raises(ValueError, match="first_au_column must be a 1-based column number"):
        load_emotionet(tmp_path, first_au_column=0)
    with pytest.raises(ValueError, match="on_error"):
        load_emotionet(tmp_path, on_error="ignore")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- bad rows


def test_emotionet_unknown_label_names_file_and_line(tmp_path: Path) -> None:
    lines = [au_line("a/1.jpg", HAPPY), au_line("a/2.jpg", SAD, unknown=(7,))]
    lists = make_emotionet(tmp_path, {"dataFile_1.txt": lines}, {"a/1.jpg": 1, "a/2.jpg": 2})
    where = f"{lists / 'dataFile_1.txt'}, line 2"
    with pytest.raises(DatasetError) as info:
        load_emotionet(tmp_path)
    assert str(info.value).startswith(f"{where}: unknown label: AU7 coded 999")
    assert "sadly angry" in str(info.value)
    ds = load_emotionet(tmp_path, on_error="skip")
    assert ds.labels == [idx("happiness")]
    assert [(row.where, row.reason.split(":")[0]) for row in ds.skipped] == [
        (where, "unknown label")
    ]
    assert load_emotionet(tmp_path, unknown_as_absent=True).labels == [
        idx("happiness"),
        idx("sadness"),
    ]


def test_emotionet_bad_rows_name_file_and_line(tmp_path: Path) -> None:
    good = au_line("a/1.jpg", HAPPY)
    bad_code = au_line("a/2.jpg", HAPPY).replace("\t1\t", "\t2\t", 1)  # AU6 coded 2
    short = "\t".join(good.split("\t")[:20])
    no_image = au_line("../escape.jpg", HAPPY).replace(URL.format("../escape.jpg"), "")
    lines = [good, bad_code, short, no_image, au_line("a/3.jpg", SAD)]
    lists = make_emotionet(tmp_path, {"dataFile_1.txt": lines}, {"a/1.jpg": 1, "a/3.jpg": 2})
    path = lists / "dataFile_1.txt"
    with path.open("ab") as handle:
        handle.write(URL.format("a/\xff.jpg").encode("latin-1") + b"\t0\t1\n")
    with pytest.raises(DatasetError, match=rf"{path}, line 2: bad row: AU6 is '2', expected 0, 1"):
        load_emotionet(tmp_path)
    ds = load_emotionet(tmp_path, on_error="skip")
    assert [EXPRESSIONS[label] for label in ds.labels] == ["happiness", "sadness"]
    assert [row.where for row in ds.skipped] == [f"{path}, line {n}" for n in (2, 3, 4, 6)]
    reasons = [row.reason for row in ds.skipped]
    assert reasons[0].startswith("bad row: AU6 is '2'")
    assert reasons[1].startswith("bad row: 20 fields, expected 28 to 62")
    assert reasons[2] == "bad row: '' in column 1 names no image"
    assert reasons[3].startswith("bad row: not UTF-8 text (byte 0xff")
    assert ds.skip_reasons == {"bad row": 4}


def test_emotionet_missing_and_bad_images(tmp_path: Path) -> None:
    lines = [au_line(f"a/{k}.jpg", HAPPY) for k in range(1, 5)]
    lists = make_emotionet(tmp_path, {"dataFile_1.txt": lines}, {"a/1.jpg": 1, "a/4.jpg": 1})
    path = lists / "dataFile_1.txt"
    # a flat download: the file name alone under the image root is found too
    write_face(tmp_path / "Images" / "2.jpg")
    (tmp_path / "Images" / "a" / "4.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError) as info:
        load_emotionet(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{path}, line 3: missing image file: ")
    assert message.endswith(str(tmp_path / "Images" / "a" / "3.jpg"))
    ds = load_emotionet(tmp_path, on_error="skip")
    assert [s.image for s in ds.samples][:2] == [
        tmp_path / "Images" / "a" / "1.jpg",
        tmp_path / "Images" / "2.jpg",
    ]
    assert ds.skip_reasons == {"missing image file": 1}
    checked = load_emotionet(tmp_path, on_error="skip", verify_images=True)
    assert len(checked) == 2
    assert [(row.where, row.reason.split(":")[0]) for row in checked.skipped] == [
        (f"{path}, line 3", "missing image file"),
        (f"{path}, line 4", "bad image"),
    ]


def test_emotionet_empty_split_and_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="EmotioNet list folder not found"):
        load_emotionet(tmp_path / "nowhere")
    (tmp_path / LISTS).mkdir()
    with pytest.raises(DatasetLayoutError, match=r"no EmotioNet list files \(dataFile_\*\.txt\)"):
        load_emotionet(tmp_path)
    make_emotionet(tmp_path, {"dataFile_1.txt": [au_line("a/1.jpg", ())]}, {"a/1.jpg": 1})
    with pytest.raises(DatasetError, match=r"empty split None in emotionet data"):
        load_emotionet(tmp_path)
    with pytest.raises(DatasetError, match="EmotioNet image root directory not found"):
        load_emotionet(tmp_path, image_root=tmp_path / "nope")


def test_emotionet_lists_that_carry_the_category(tmp_path: Path) -> None:
    lines = [
        "\t".join([URL.format("a/1.jpg"), "Happily_Surprised"]),
        "\t".join([URL.format("a/2.jpg"), "sad"]),
        "\t".join([URL.format("a/3.jpg"), "999"]),
        "\t".join([URL.format("a/4.jpg"), "bored"]),
    ]
    make_emotionet(tmp_path, {"dataFile_1.txt": lines}, {f"a/{k}.jpg": 1 for k in range(1, 5)})
    ds = load_emotionet(tmp_path, emotion_column=2, on_error="skip")
    assert ds.labels == [idx("sadness")] and ds.excluded == {"happily surprised": 1}
    assert [row.reason.split(":")[0] for row in ds.skipped] == [
        "unknown label",
        "label out of range",
    ]
    assert "'bored' in column 2 is not an EmotioNet category" in ds.skipped[1].reason


# --------------------------------------------------------------------------- registry


def test_emotionet_is_registered_with_its_split_layout(tmp_path: Path) -> None:
    source = get_dataset("EmotioNet")
    assert source.name == "emotionet" and source.path_options == {
        "image_root": "/path/to/EmotioNet/Images"
    }
    assert source.splits(tmp_path) == {"train": "train", "test": "test"}  # val carved
    names = [f"x/{k}.jpg" for k in range(30)]
    make_emotionet(
        tmp_path, {"dataFile_7.txt": [au_line(n, SAD) for n in names]}, dict.fromkeys(names, 2)
    )
    assert source.locate(tmp_path, "train") == tmp_path  # the loader finds the lists
    train = load_dataset("emotionet", tmp_path, "train")
    test = load_dataset("emotionet", tmp_path, "test", image_root=tmp_path / "Images")
    assert len(train) + len(test) == 30 and len(load_dataset("emotionet", tmp_path)) == 30
