"""Data set loaders on tiny fixtures written in each data set's exact on-disk layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from capsnet_model.datasets import (
    AFFECTNET_LABELS,
    EXPRESSIONS,
    FER2013_LABELS,
    FOLDER_ALIASES,
    RAFDB_LABELS,
    DatasetError,
    FERDataset,
    FERSample,
    load_affectnet,
    load_dataset,
    load_fer2013,
    load_folder,
    load_rafdb,
)

# --------------------------------------------------------------------------- fixtures


def write_image(path: Path, height: int = 20, width: int = 16, gray: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shape = (height, width) if gray else (height, width, 3)
    assert cv2.imwrite(str(path), rng.integers(0, 256, shape, dtype=np.uint8))
    return path


def make_rafdb(root: Path, rows: list[tuple[str, int | str]], images: bool = True) -> Path:
    basic = root / "basic"
    label_file = basic / "EmoLabel" / "list_patition_label.txt"
    label_file.parent.mkdir(parents=True)
    (basic / "Image" / "aligned").mkdir(parents=True)
    label_file.write_text("".join(f"{name} {label}\n" for name, label in rows))
    if images:
        for name, _ in rows:
            write_image(basic / "Image" / "aligned" / f"{Path(name).stem}_aligned.jpg")
    return label_file


def fer_pixels(value: int = 7, count: int = 48 * 48) -> str:
    return " ".join(str((value + i) % 256) for i in range(count))


def make_fer2013(path: Path, rows: list[tuple[str, str, str]], spaced: bool = False) -> Path:
    header = "emotion, pixels, Usage" if spaced else "emotion,pixels,Usage"
    lines = [header] + [f"{e},{p},{u}" for e, p, u in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


AFFECTNET_HEADER = (
    "subDirectory_filePath,face_x,face_y,face_width,face_height,"
    "facial_landmarks,expression,valence,arousal"
)


def landmark_text(points: np.ndarray) -> str:
    """AffectNet's facial_landmarks cell: 136 numbers, x1;y1;x2;y2;..."""
    return ";".join(f"{v:.2f}" for v in np.asarray(points, np.float64).reshape(-1))


def make_affectnet(
    path: Path, rows: list[tuple[str, str, str]], landmarks: list[str] | None = None
) -> Path:
    """rows: (relative image path, "x,y,w,h", expression); landmarks: one cell per row
    (default: 68 points spread over the box)."""
    lines = [AFFECTNET_HEADER]
    for k, (rel, box, expression) in enumerate(rows):
        if landmarks is not None:
            marks = landmarks[k]
        else:
            x, y, w, h = (int(v) for v in box.split(","))
            grid = np.stack([np.linspace(x, x + w - 1, 68), np.linspace(y, y + h - 1, 68)], 1)
            marks = landmark_text(grid)
        lines.append(f'{rel},{box},"{marks}",{expression},0.5,-0.2')
    path.write_text("\n".join(lines) + "\n")
    return path


def name_of(label: int) -> str:
    return EXPRESSIONS[label]


# --------------------------------------------------------------------------- label order


def test_canonical_order_and_mappings_are_complete() -> None:
    assert EXPRESSIONS == (
        "neutral",
        "happiness",
        "sadness",
        "surprise",
        "fear",
        "disgust",
        "anger",
    )
    for mapping in (RAFDB_LABELS, FER2013_LABELS, AFFECTNET_LABELS):
        assert sorted(mapping.values()) == sorted(EXPRESSIONS)
    assert set(FOLDER_ALIASES.values()) == set(EXPRESSIONS)


# --------------------------------------------------------------------------- RAF-DB


def test_rafdb_labels_and_splits(tmp_path: Path) -> None:
    rows: list[tuple[str, int | str]] = [
        ("train_00001.jpg", 4),
        ("train_00002.jpg", 1),
        ("train_00003.jpg", 7),
        ("test_0001.jpg", 6),
        ("test_0002.jpg", 5),
    ]
    make_rafdb(tmp_path, rows)
    train = load_rafdb(tmp_path, "train")
    test = load_rafdb(tmp_path / "basic", "test")  # the basic folder itself works too
    assert [name_of(label) for label in train.labels] == ["happiness", "surprise", "neutral"]
    assert [name_of(label) for label in test.labels] == ["anger", "sadness"]
    image, label = train[0]
    assert image.dtype == np.uint8 and image.shape == (20, 16, 3)
    assert name_of(label) == "happiness"
    assert train.class_counts()["happiness"] == 1
    assert list(train.class_counts()) == list(EXPRESSIONS)
    assert sum(test.class_counts().values()) == 2


def test_rafdb_bad_split_name(tmp_path: Path) -> None:
    make_rafdb(tmp_path, [("train_00001.jpg", 4)])
    with pytest.raises(ValueError, match="valid: train, test"):
        load_rafdb(tmp_path, "val")


def test_rafdb_missing_root_and_label_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nowhere"):
        load_rafdb(tmp_path / "nowhere", "train")
    (tmp_path / "basic").mkdir()
    with pytest.raises(DatasetError, match="list_patition_label.txt"):
        load_rafdb(tmp_path, "train")


def test_rafdb_missing_image_names_file_and_line(tmp_path: Path) -> None:
    label_file = make_rafdb(tmp_path, [("train_00001.jpg", 4), ("train_00002.jpg", 3)])
    (tmp_path / "basic" / "Image" / "aligned" / "train_00002_aligned.jpg").unlink()
    with pytest.raises(DatasetError) as info:
        load_rafdb(tmp_path, "train")
    message = str(info.value)
    assert "train_00002_aligned.jpg" in message and f"{label_file}, line 2" in message


def test_rafdb_label_out_of_range(tmp_path: Path) -> None:
    make_rafdb(tmp_path, [("train_00001.jpg", 4), ("train_00002.jpg", 8)])
    with pytest.raises(DatasetError, match=r"line 2: label out of range"):
        load_rafdb(tmp_path, "train")
    ds = load_rafdb(tmp_path, "train", on_error="skip")
    assert len(ds) == 1 and len(ds.skipped) == 1
    assert ds.skip_reasons == {"label out of range": 1}


def test_rafdb_unreadable_and_truncated_images(tmp_path: Path) -> None:
    make_rafdb(tmp_path, [("train_00001.jpg", 4), ("train_00002.jpg", 3), ("train_00003.jpg", 2)])
    aligned = tmp_path / "basic" / "Image" / "aligned"
    (aligned / "train_00002_aligned.jpg").write_bytes(b"this is not a jpeg")
    data = (aligned / "train_00003_aligned.jpg").read_bytes()
    (aligned / "train_00003_aligned.jpg").write_bytes(data[: len(data) // 2])

    # Without verification the bad files surface when the item is read.
    lazy = load_rafdb(tmp_path, "train")
    assert len(lazy) == 3
    with pytest.raises(DatasetError, match=r"line 2: .*unreadable.*train_00002_aligned\.jpg"):
        lazy[1]
    with pytest.raises(DatasetError, match=r"line 3: truncated JPEG.*train_00003_aligned\.jpg"):
        lazy[2]

    with pytest.raises(DatasetError, match="train_00002_aligned.jpg"):
        load_rafdb(tmp_path, "train", verify_images=True)
    ds = load_rafdb(tmp_path, "train", verify_images=True, on_error="skip")
    assert len(ds) == 1 and len(ds.skipped) == 2
    assert ds.skip_reasons == {"bad image": 2}
    assert "train_00003_aligned.jpg" in ds.skipped[1].reason


def test_rafdb_empty_split(tmp_path: Path) -> None:
    make_rafdb(tmp_path, [("train_00001.jpg", 4)])
    with pytest.raises(DatasetError, match="empty split 'test'.*list_patition_label.txt"):
        load_rafdb(tmp_path, "test")
    # Everything skipped is an empty split too.
    make_rafdb(tmp_path / "b", [("train_00001.jpg", 9)])
    with pytest.raises(DatasetError, match=r"empty split 'train'.*1 rows skipped"):
        load_rafdb(tmp_path / "b", "train", on_error="skip")


def test_rafdb_malformed_row(tmp_path: Path) -> None:
    label_file = make_rafdb(tmp_path, [("train_00001.jpg", 4)])
    label_file.write_text("train_00001.jpg 4\nonly_one_token\n")
    with pytest.raises(DatasetError, match=r"line 2: bad row"):
        load_rafdb(tmp_path, "train")


# --------------------------------------------------------------------------- FER2013


@pytest.mark.parametrize("spaced", [False, True])
def test_fer2013_labels_splits_and_gray_to_rgb(tmp_path: Path, spaced: bool) -> None:
    csv_path = make_fer2013(
        tmp_path / "fer2013.csv",
        [
            ("3", fer_pixels(1), "Training"),
            ("0", fer_pixels(2), "PublicTest"),
            ("6", fer_pixels(3), "PrivateTest"),
        ],
        spaced=spaced,
    )
    train = load_fer2013(csv_path, "train")
    val = load_fer2013(csv_path, "val")
    test = load_fer2013(csv_path, "test")
    assert [name_of(x) for x in train.labels] == ["happiness"]
    assert [name_of(x) for x in val.labels] == ["anger"]
    assert [name_of(x) for x in test.labels] == ["neutral"]
    image, _ = train[0]
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    assert np.array_equal(image[..., 0], image[..., 2])
    assert image[0, 0, 0] == 1 and image[0, 1, 0] == 2


def test_fer2013_bad_pixels_and_labels(tmp_path: Path) -> None:
    csv_path = make_fer2013(
        tmp_path / "fer.csv",
        [
            ("3", fer_pixels(), "Training"),
            ("3", fer_pixels(count=2303), "Training"),
            ("3", fer_pixels(count=2303) + " x", "Training"),
            ("7", fer_pixels(), "Training"),
            ("2", fer_pixels().replace("7", "700", 1), "Training"),
        ],
    )
    with pytest.raises(DatasetError, match=r"fer\.csv, line 3: bad pixels: expected 2304"):
        load_fer2013(csv_path, "train")
    ds = load_fer2013(csv_path, "train", on_error="skip")
    assert len(ds) == 1
    assert [row.where.rsplit(" ", 1)[1] for row in ds.skipped] == ["3", "4", "5", "6"]
    assert ds.skip_reasons == {"bad pixels": 3, "label out of range": 1}


def test_fer2013_missing_file_column_and_bad_usage(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="missing.csv"):
        load_fer2013(tmp_path / "missing.csv", "train")
    bad = tmp_path / "nocol.csv"
    bad.write_text("emotion,pixels\n3," + fer_pixels() + "\n")
    with pytest.raises(DatasetError, match="lacks column.*Usage"):
        load_fer2013(bad, "train")
    csv_path = make_fer2013(tmp_path / "usage.csv", [("3", fer_pixels(), "Nonsense")])
    with pytest.raises(DatasetError, match=r"usage\.csv, line 2: bad row: Usage 'Nonsense'"):
        load_fer2013(csv_path, "train")
    with pytest.raises(ValueError, match="valid: train, val, test"):
        load_fer2013(csv_path, "training")


def test_fer2013_empty_split(tmp_path: Path) -> None:
    csv_path = make_fer2013(tmp_path / "fer.csv", [("3", fer_pixels(), "Training")])
    with pytest.raises(DatasetError, match="empty split 'test'"):
        load_fer2013(csv_path, "test")


# --------------------------------------------------------------------------- AffectNet


def test_affectnet_labels_crop_and_exclusions(tmp_path: Path) -> None:
    images = tmp_path / "Manually_Annotated_Images"
    write_image(images / "1" / "a.jpg", height=60, width=50)
    write_image(images / "2" / "b.png", height=30, width=30, gray=True)
    write_image(images / "3" / "c.jpg")
    csv_path = make_affectnet(
        tmp_path / "training.csv",
        [
            ("1/a.jpg", "10,5,20,30", "1"),
            ("2/b.png", "0,0,30,30", "6"),
            ("3/c.jpg", "0,0,10,10", "7"),
            ("3/c.jpg", "0,0,10,10", "10"),
        ],
    )
    ds = load_affectnet(csv_path, images, "train")
    assert [name_of(x) for x in ds.labels] == ["happiness", "anger"]
    assert ds.excluded == {"contempt": 1, "non-face": 1}
    crop, label = ds[0]
    assert crop.shape == (30, 20, 3) and name_of(label) == "happiness"
    full = cv2.cvtColor(cv2.imread(str(images / "1" / "a.jpg")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(crop, full[5:35, 10:30])
    gray, _ = ds[1]
    assert gray.shape == (30, 30, 3)
    assert ds.class_counts() == {**dict.fromkeys(EXPRESSIONS, 0), "happiness": 1, "anger": 1}


def test_affectnet_bad_rows(tmp_path: Path) -> None:
    images = tmp_path / "img"
    write_image(images / "1" / "a.jpg")
    csv_path = make_affectnet(
        tmp_path / "validation.csv",
        [
            ("1/a.jpg", "0,0,10,10", "0"),
            ("1/missing.jpg", "0,0,10,10", "0"),
            ("1/a.jpg", "0,0,10,10", "11"),
            ("1/a.jpg", "0,0,-4,10", "2"),
        ],
    )
    with pytest.raises(DatasetError, match=r"validation\.csv, line 3: missing image.*missing\.jpg"):
        load_affectnet(csv_path, images)
    ds = load_affectnet(csv_path, images, on_error="skip")
    assert len(ds) == 1
    assert ds.skip_reasons == {"missing image file": 1, "label out of range": 1, "bad face box": 1}
    with pytest.raises(DatasetError, match="AffectNet image root directory not found"):
        load_affectnet(csv_path, tmp_path / "nope")


def test_affectnet_box_outside_image(tmp_path: Path) -> None:
    images = tmp_path / "img"
    write_image(images / "a.jpg")
    csv_path = make_affectnet(tmp_path / "t.csv", [("a.jpg", "500,500,10,10", "3")])
    ds = load_affectnet(csv_path, images)
    with pytest.raises(DatasetError, match=r"t\.csv, line 2: face box"):
        ds[0]


# --------------------------------------------------------------------------- folders


def test_folder_aliases_case_and_splits(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "Happy" / "1.jpg")
    write_image(tmp_path / "train" / "ANGRY" / "2.png")
    write_image(tmp_path / "train" / "sad" / "3.jpg", gray=True)
    write_image(tmp_path / "train" / "surprised" / "4.jpg")
    write_image(tmp_path / "train" / "neutral" / "5.jpg")
    (tmp_path / "train" / "neutral" / "notes.txt").write_text("ignored")
    write_image(tmp_path / "test" / "Fear" / "6.jpg")
    train = load_folder(tmp_path, "train")
    counts = train.class_counts()
    assert counts == {
        "neutral": 1,
        "happiness": 1,
        "sadness": 1,
        "surprise": 1,
        "fear": 0,
        "disgust": 0,
        "anger": 1,
    }
    assert len(load_folder(tmp_path, "test")) == 1
    for i in range(len(train)):
        image, _ = train[i]
        assert image.shape == (20, 16, 3)


def test_folder_errors(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "contempt" / "1.jpg")
    with pytest.raises(DatasetError, match="unknown expression folder.*contempt.*accepted.*happy"):
        load_folder(tmp_path, "train")
    with pytest.raises(DatasetError, match="split directory not found.*available: train"):
        load_folder(tmp_path, "val")
    (tmp_path / "empty" / "happy").mkdir(parents=True)
    with pytest.raises(DatasetError, match="empty split 'empty'"):
        load_folder(tmp_path, "empty")
    with pytest.raises(DatasetError, match="not found"):
        load_folder(tmp_path / "absent", "train")


def test_folder_skip_unreadable(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "happy" / "1.jpg")
    (tmp_path / "train" / "happy" / "2.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError, match=r"2\.png"):
        load_folder(tmp_path, "train", verify_images=True)
    ds = load_folder(tmp_path, "train", verify_images=True, on_error="skip")
    assert len(ds) == 1 and ds.skipped[0].where.endswith("2.png")


# --------------------------------------------------------------------------- dataset / dispatch


def test_resize_transform_and_dataloader(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "happy" / "1.jpg", height=40, width=30)
    write_image(tmp_path / "train" / "disgust" / "2.jpg", height=10, width=12)

    def to_tensor(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(image).permute(2, 0, 1).float() / 255

    ds = load_folder(tmp_path, "train", image_size=24, transform=to_tensor)
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    images, labels = next(iter(loader))
    assert images.shape == (2, 3, 24, 24)
    assert sorted(name_of(int(x)) for x in labels) == ["disgust", "happiness"]
    rect = load_folder(tmp_path, "train", image_size=(16, 8))
    assert rect[0][0].shape == (16, 8, 3)


def test_in_memory_samples_and_bad_label() -> None:
    gray = np.zeros((5, 6), dtype=np.uint8)
    ds = FERDataset([FERSample(gray, 2, box=(1, 1, 3, 2))])
    image, label = ds[0]
    assert image.shape == (2, 3, 3) and label == 2
    with pytest.raises(DatasetError, match="out of range"):
        FERDataset([FERSample(gray, 7, where="mem")])


def test_load_dataset_dispatch(tmp_path: Path) -> None:
    make_rafdb(tmp_path / "raf", [("train_00001.jpg", 4), ("test_0001.jpg", 1)])
    assert len(load_dataset("RAF-DB", tmp_path / "raf", "test")) == 1
    csv_path = make_fer2013(tmp_path / "fer.csv", [("3", fer_pixels(), "PrivateTest")])
    assert len(load_dataset("fer2013", csv_path, "test")) == 1
    write_image(tmp_path / "img" / "a.jpg")
    aff = make_affectnet(tmp_path / "aff.csv", [("a.jpg", "0,0,4,4", "5")])
    ds = load_dataset("affectnet", aff, image_root=tmp_path / "img")
    assert name_of(ds.labels[0]) == "disgust"
    write_image(tmp_path / "folders" / "train" / "fear" / "a.jpg")
    assert len(load_dataset("folder", tmp_path / "folders")) == 1
    with pytest.raises(ValueError, match="valid: rafdb, fer2013, affectnet, emotionet, folder"):
        load_dataset("ckplus", tmp_path)
    # Without image_root, the images are looked for next to the CSV file.
    with pytest.raises(DatasetError, match=r"aff\.csv, line 2: missing image file: .*a\.jpg"):
        load_dataset("affectnet", aff)
    with pytest.raises(ValueError, match="on_error"):
        load_dataset("folder", tmp_path / "folders", on_error="ignore")


def test_affectnet_landmarks_follow_the_crop_and_resize(tmp_path: Path) -> None:
    images = tmp_path / "img"
    write_image(images / "a.jpg", height=60, width=50)
    points = np.stack([np.linspace(12, 28, 68), np.linspace(8, 30, 68)], 1)
    csv_path = make_affectnet(
        tmp_path / "t.csv",
        [("a.jpg", "10,5,20,30", "1"), ("a.jpg", "10,5,20,30", "2")],
        landmarks=[landmark_text(points), ""],
    )
    ds = load_affectnet(csv_path, images)
    image, label, marks = ds.item_with_landmarks(0)
    assert label == 1  # happiness
    assert image.shape == (30, 20, 3) and marks is not None
    np.testing.assert_allclose(marks, points - [10, 5], atol=0.01)  # into crop coordinates
    assert ds.item_with_landmarks(1)[2] is None  # empty cell: no landmarks
    resized = load_affectnet(csv_path, images, image_size=(60, 40))
    image, _, marks = resized.item_with_landmarks(0)
    assert image.shape == (60, 40, 3)
    np.testing.assert_allclose(marks, (points - [10, 5]) * [2, 2], atol=0.02)


@pytest.mark.parametrize("cell", ["1.0;2.0;3.0", ";".join(["x"] * 136), ";".join(["nan"] * 136)])
def test_affectnet_bad_landmarks(tmp_path: Path, cell: str) -> None:
    images = tmp_path / "img"
    write_image(images / "a.jpg")
    csv_path = make_affectnet(
        tmp_path / "t.csv",
        [("a.jpg", "0,0,10,10", "1")] * 2,
        landmarks=[landmark_text(np.zeros((68, 2))), cell],
    )
    with pytest.raises(DatasetError, match=r"t\.csv, line 3: bad landmarks"):
        load_affectnet(csv_path, images)
    ds = load_affectnet(csv_path, images, on_error="skip")
    assert len(ds) == 1 and ds.skip_reasons == {"bad landmarks": 1}


def test_model_inputs_use_the_data_sets_own_landmarks(tmp_path: Path) -> None:
    from capsnet_model.attention import (
        landmark_attention_map,
        mean_face_template,
        template_attention_map,
    )
    from capsnet_model.data import FaceTensors, Preprocess

    images = tmp_path / "img"
    write_image(images / "a.jpg", height=60, width=50)
    # A face that fills only the top-left quarter of the crop: its map differs from the template.
    points = mean_face_template() * [10, 15] + [10, 5]
    csv_path = make_affectnet(
        tmp_path / "t.csv",
        [("a.jpg", "10,5,20,30", "1"), ("a.jpg", "10,5,20,30", "1")],
        landmarks=[landmark_text(points), ""],
    )
    items = FaceTensors(load_affectnet(csv_path, images), Preprocess(32), attention="landmarks")
    _, attention, _ = items[0]
    expected = landmark_attention_map(points - [10, 5], (30, 20))
    expected = Preprocess(32).resize(expected)
    # The CSV keeps two decimals of each coordinate, hence the tolerance.
    np.testing.assert_allclose(attention[0].numpy(), expected, atol=2e-3)
    assert np.abs(expected - template_attention_map(32)).max() > 0.5
    _, fallback, _ = items[1]  # no landmarks in the row: the template map
    np.testing.assert_allclose(fallback[0].numpy(), template_attention_map(32), atol=1e-6)
    assert items.fallbacks == 1


# --------------------------------------------------------------------------- broken data


def test_verify_images_names_each_bad_file_once_and_skips_it(tmp_path: Path) -> None:
    """A PNG and a JPEG cut short, text saved as .png, an empty file: with verify_images
    each is raised (the first met) or skipped with its reason, before any item is read."""
    happy = tmp_path / "train" / "happy"
    good = [write_image(happy / f"{i}.jpg") for i in range(3)]
    short_jpg, short_png = write_image(happy / "a.jpg"), write_image(happy / "b.png")
    for path in (short_jpg, short_png):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    (happy / "c.png").write_text("not a PNG at all\n")
    (happy / "d.png").write_bytes(b"")

    with pytest.raises(DatasetError) as info:
        load_folder(tmp_path, "train", verify_images=True)
    message = str(info.value)
    assert message.startswith(f"{short_jpg}: bad image: truncated JPEG"), message
    assert message.count(str(short_jpg)) == 1 and "\n" not in message

    ds = load_folder(tmp_path, "train", verify_images=True, on_error="skip")
    assert [s.image for s in ds.samples] == good
    assert [row.where for row in ds.skipped] == [
        str(short_jpg),
        str(short_png),
        str(happy / "c.png"),
        str(happy / "d.png"),
    ]
    assert ds.skip_reasons == {"bad image": 4}
    assert ds.skipped[1].reason.startswith("bad image: truncated PNG")
    for row in ds.skipped:
        assert row.where not in row.reason  # the file is named once, by `where`
    assert all(ds[i][0].shape == (20, 16, 3) for i in range(len(ds)))


def test_verified_skips_keep_file_order_among_row_errors(tmp_path: Path) -> None:
    """Images are checked after the rows are read; the skipped list is still in line order."""
    rows: list[tuple[str, int | str]] = [
        ("train_00001.jpg", 4),
        ("train_00002.jpg", 3),
        ("train_00003.jpg", 9),
        ("train_00004.jpg", 2),
        ("train_00005.jpg", 1),
    ]
    label_file = make_rafdb(tmp_path, rows)
    aligned = tmp_path / "basic" / "Image" / "aligned"
    (aligned / "train_00002_aligned.jpg").write_bytes(b"")
    (aligned / "train_00005_aligned.jpg").unlink()
    (aligned / "train_00004_aligned.jpg").write_text("text")
    ds = load_rafdb(tmp_path, "train", verify_images=True, on_error="skip")
    assert len(ds) == 1
    assert [row.where for row in ds.skipped] == [f"{label_file}, line {n}" for n in (2, 3, 4, 5)]
    assert [row.reason.split(":")[0] for row in ds.skipped] == [
        "bad image",
        "label out of range",
        "bad image",
        "missing image file",
    ]
    # the label file does not name the image: the reason does
    assert "train_00002_aligned.jpg" in ds.skipped[0].reason


def test_verify_images_checks_the_face_box_against_the_image(tmp_path: Path) -> None:
    images = tmp_path / "img"
    write_image(images / "a.jpg")
    csv_path = make_affectnet(
        tmp_path / "t.csv", [("a.jpg", "0,0,10,10", "1"), ("a.jpg", "500,500,10,10", "3")]
    )
    with pytest.raises(DatasetError, match=r"t\.csv, line 3: bad face box: .*16x20 image"):
        load_affectnet(csv_path, images, verify_images=True)
    ds = load_affectnet(csv_path, images, verify_images=True, on_error="skip")
    assert len(ds) == 1 and ds.skip_reasons == {"bad face box": 1}


def test_whatever_read_image_raises_is_a_bad_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check defers to read_image; an error outside DatasetError (an unreadable disk
    block, a permission) is a bad image too, named with its type."""
    from capsnet_model.datasets import collect

    for i in range(3):
        write_image(tmp_path / "train" / "sad" / f"{i}.jpg")
    real = collect.read_image

    def flaky(path: Path, **kwargs: Any) -> np.ndarray:
        if path.name == "1.jpg":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, **kwargs)

    monkeypatch.setattr(collect, "read_image", flaky)
    ds = load_folder(tmp_path, "train", verify_images=True, on_error="skip")
    assert len(ds) == 2 and len(ds.skipped) == 1
    assert ds.skipped[0].reason.startswith("bad image: PermissionError: [Errno 13]")


def test_many_images_are_checked_in_order_with_a_progress_bar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over several thread-pool chunks the kept samples and the skips stay in file order, and
    a large set asks tqdm for a bar (tqdm itself hides it when stderr is not a terminal)."""
    from capsnet_model.datasets import collect

    bars: list[dict[str, Any]] = []
    real_tqdm = collect.tqdm

    def recording_tqdm(*args: Any, **kwargs: Any) -> Any:
        bars.append(kwargs)
        return real_tqdm(*args, **kwargs)

    monkeypatch.setattr(collect, "tqdm", recording_tqdm)
    monkeypatch.setattr(collect, "VERIFY_PROGRESS_MIN", 50)
    count = 32 * collect._VERIFY_THREADS * 2 + 5
    folder = tmp_path / "train" / "neutral"
    folder.mkdir(parents=True)
    image = folder / "0000.png"
    write_image(image, height=4, width=4)
    data = image.read_bytes()
    bad = {7, 70, count - 1}
    for i in range(1, count):
        (folder / f"{i:04d}.png").write_bytes(b"" if i in bad else data)
    ds = load_folder(tmp_path, "train", verify_images=True, on_error="skip")
    names = [Path(s.image).name for s in ds.samples]
    assert names == [f"{i:04d}.png" for i in range(count) if i not in bad]
    assert [Path(row.where).name for row in ds.skipped] == [f"{i:04d}.png" for i in sorted(bad)]
    assert bars[-1]["total"] == count and bars[-1]["disable"] is None
    load_folder(tmp_path, "train", verify_images=True, on_error="skip", progress=False)
    assert bars[-1]["disable"] is True


def fer_bytes(rows: list[bytes], header: bytes = b"emotion,pixels,Usage") -> bytes:
    return b"\n".join([header, *rows]) + b"\n"


def test_fer2013_non_utf8_row_is_a_bad_row(tmp_path: Path) -> None:
    good = f"3,{fer_pixels()},Training".encode()
    latin1 = f"4,{fer_pixels()},Training".encode().replace(b"Training", b"Tr\xe4ining")
    csv_path = tmp_path / "fer.csv"
    csv_path.write_bytes(fer_bytes([good, latin1, good]))
    with pytest.raises(DatasetError) as info:
        load_fer2013(csv_path, "train")
    assert str(info.value) == (
        f"{csv_path}, line 3: bad row: column Usage is not UTF-8 text (byte 0xe4 at character 3)"
    )
    ds = load_fer2013(csv_path, "train", on_error="skip")
    assert len(ds) == 2 and [row.where for row in ds.skipped] == [f"{csv_path}, line 3"]


def test_fer2013_rows_with_more_or_fewer_fields_are_bad_rows(tmp_path: Path) -> None:
    csv_path = make_fer2013(
        tmp_path / "fer.csv",
        [
            ("3", fer_pixels(), "Training"),
            ("3", fer_pixels(), "Training,extra"),
            ("3", fer_pixels(), "Training"),
        ],
    )
    with csv_path.open("a") as handle:
        handle.write(f"5,{fer_pixels()}\n\n")  # one field short, then a blank line
    with pytest.raises(DatasetError, match=r"fer\.csv, line 3: bad row: 4 fields, expected 3"):
        load_fer2013(csv_path, "train")
    ds = load_fer2013(csv_path, "train", on_error="skip")
    assert len(ds) == 2
    assert [(row.where.rsplit(" ", 1)[1], row.reason) for row in ds.skipped] == [
        ("3", "bad row: 4 fields, expected 3 (emotion, pixels, Usage)"),
        ("5", "bad row: 2 fields, expected 3 (emotion, pixels, Usage)"),
    ]


def test_fer2013_header_with_byte_order_mark_or_bad_bytes(tmp_path: Path) -> None:
    row = f"3,{fer_pixels()},Training".encode()
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + fer_bytes([row]))
    assert len(load_fer2013(bom, "train")) == 1
    bad = tmp_path / "bad.csv"
    bad.write_bytes(fer_bytes([row], header=b"emotion,pixels,Usage\xff"))
    for on_error in ("raise", "skip"):
        with pytest.raises(DatasetError, match=r"bad\.csv, line 1: header is not UTF-8"):
            load_fer2013(bad, "train", on_error=on_error)  # type: ignore[arg-type]


def test_fer2013_row_the_csv_module_refuses(tmp_path: Path) -> None:
    import csv

    csv_path = make_fer2013(
        tmp_path / "fer.csv",
        [("3", fer_pixels(), "Training"), ("3", fer_pixels(count=5000), "Training")],
    )
    old = csv.field_size_limit(15_000)  # a real row: about 8,500 characters
    try:
        with pytest.raises(DatasetError, match=r"fer\.csv, line 3: bad row: field larger"):
            load_fer2013(csv_path, "train")
        ds = load_fer2013(csv_path, "train", on_error="skip")
    finally:
        csv.field_size_limit(old)
    assert len(ds) == 1 and ds.skip_reasons == {"bad row": 1}


def test_affectnet_non_utf8_and_extra_field_rows(tmp_path: Path) -> None:
    images = tmp_path / "img"
    write_image(images / "a.jpg")
    csv_path = make_affectnet(tmp_path / "training.csv", [("a.jpg", "0,0,10,10", "1")] * 3)
    lines = csv_path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"a.jpg", b"\xe9.jpg")
    lines[3] = lines[3] + b",0.3"
    csv_path.write_bytes(b"\n".join(lines))
    with pytest.raises(DatasetError, match=r"training\.csv, line 3: bad row: column sub.*UTF-8"):
        load_affectnet(csv_path, images)
    ds = load_affectnet(csv_path, images, on_error="skip")
    assert len(ds) == 1
    assert [row.where.rsplit(" ", 1)[1] for row in ds.skipped] == ["3", "4"]
    assert ds.skipped[1].reason == (
        "bad row: 10 fields, expected 9 (subDirectory_filePath, face_x, face_y, face_width, "
        "face_height, facial_landmarks, expression, valence, arousal)"
    )


def test_rafdb_non_utf8_line_is_a_bad_row(tmp_path: Path) -> None:
    label_file = make_rafdb(tmp_path, [("train_00001.jpg", 4), ("train_00002.jpg", 3)])
    label_file.write_bytes(b"\xef\xbb\xbftrain_00001.jpg 4\ntrain_0\xff002.jpg 3\n")
    with pytest.raises(DatasetError) as info:
        load_rafdb(tmp_path, "train")
    assert str(info.value) == (
        f"{label_file}, line 2: bad row: not UTF-8 text (byte 0xff at character 8)"
    )
    ds = load_rafdb(tmp_path, "train", on_error="skip")
    assert len(ds) == 1 and ds.skip_reasons == {"bad row": 1}


# --------------------------------------------------------------------------- registry


def test_every_source_is_registered_once_with_its_split_layout(tmp_path: Path) -> None:
    from capsnet_model.datasets import get_dataset, list_datasets

    assert list_datasets() == ["rafdb", "fer2013", "affectnet", "emotionet", "folder"]
    roles = {name: get_dataset(name).splits(tmp_path) for name in list_datasets()}
    assert roles == {
        "rafdb": {"train": "train", "test": "test"},
        "fer2013": {"train": "train", "val": "val", "test": "test"},
        "affectnet": {"train": "train", "test": "test"},
        "emotionet": {"train": "train", "test": "test"},
        "folder": {"train": "train", "test": "test"},  # no val/ folder: carved from train
    }
    (tmp_path / "val").mkdir()
    assert get_dataset("folder").splits(tmp_path) == {
        "train": "train",
        "val": "val",
        "test": "test",
    }
    assert get_dataset("fer2013").layout.val_name == "PublicTest"
    assert get_dataset("RAF-DB") is get_dataset("rafdb")  # case, '-' and '_' ignored


def test_unknown_and_duplicate_sources_are_errors() -> None:
    from capsnet_model.datasets import (
        DatasetSource,
        UnknownDatasetError,
        get_dataset,
        register_dataset,
    )

    with pytest.raises(UnknownDatasetError, match="'ckplus'; valid: rafdb, fer2013"):
        get_dataset("ckplus")
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(DatasetSource(name="rafdb", load=load_rafdb))
    with pytest.raises(ValueError, match="lower case"):
        register_dataset(DatasetSource(name="My_Set", load=load_rafdb))


def test_a_registered_source_loads_through_load_dataset(tmp_path: Path) -> None:
    from capsnet_model.datasets import sources

    seen: list[tuple[Path, str]] = []

    def load(root: Path, split: str, **kwargs: Any) -> FERDataset:
        seen.append((root, split))
        return FERDataset([FERSample(np.zeros((4, 4), np.uint8), 1, where="mem")], split=split)

    source = sources.DatasetSource(name="mine", load=load, default_split="all")
    sources.register_dataset(source)
    try:
        assert len(load_dataset("mine", tmp_path)) == 1
        assert load_dataset("MINE", tmp_path, "test").split == "test"
        assert seen == [(tmp_path, "all"), (tmp_path, "test")]
    finally:
        del sources._SOURCES["mine"]


def test_csv_sources_find_their_files_under_the_root(tmp_path: Path) -> None:
    from capsnet_model.datasets import DatasetLayoutError, get_dataset

    fer = get_dataset("fer2013")
    with pytest.raises(DatasetLayoutError, match=r"fer2013\.csv not found under .*looked for"):
        fer.locate(tmp_path, "train")
    (tmp_path / "fer2013").mkdir()
    nested = make_fer2013(tmp_path / "fer2013" / "fer2013.csv", [("3", fer_pixels(), "Training")])
    assert fer.locate(tmp_path, "train") == nested
    assert fer.locate(nested, "test") == nested  # the CSV itself
    assert len(load_dataset("fer2013", tmp_path, "train")) == 1

    aff = get_dataset("affectnet")
    lists = tmp_path / "aff" / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True)
    write_image(tmp_path / "aff" / "Manually_Annotated_Images" / "a.jpg")
    make_affectnet(lists / "training.csv", [("a.jpg", "0,0,4,4", "1")])
    make_affectnet(lists / "validation.csv", [("a.jpg", "0,0,4,4", "6")])
    # the images default to Manually_Annotated_Images beside the lists
    train = load_dataset("affectnet", tmp_path / "aff", "train")
    test = load_dataset("affectnet", tmp_path / "aff", "test")
    assert name_of(train.labels[0]) == "happiness" and name_of(test.labels[0]) == "anger"
    assert aff.locate(tmp_path / "aff", "val") == lists / "validation.csv"
    with pytest.raises(ValueError, match="unknown affectnet split None; valid: train, val, test"):
        aff.locate(tmp_path / "aff", None)
