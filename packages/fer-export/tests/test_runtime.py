"""FERSession on tiny ONNX models built without torch (CPU provider here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

import fer_export
from fer_export.contract import ContractError
from fer_export.faces import ImageDecodeError
from fer_export.runtime import (
    FERSession,
    ModelLoadError,
    Prediction,
    ProviderUnavailableError,
    gpu_status,
)

GPU_NOISE = ("libcuda", "libcublas", "libcudnn", "CUDAExecutionProvider", "TensorRT", "nvinfer")
HAS_GPU = gpu_status()[0] > 0


def _batch(n: int, seed: int = 0, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, size, size)).astype(np.float32)


# -- loading, providers -----------------------------------------------------------------------


@pytest.mark.skipif(HAS_GPU, reason="checks the no-GPU behaviour")
def test_auto_is_cpu_without_gpu_noise(model_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    session = FERSession(model_path)
    assert session.provider == "cpu"
    assert session.providers == ["CPUExecutionProvider"]
    out, err = capfd.readouterr()
    for word in GPU_NOISE:
        assert word not in err and word not in out


@pytest.mark.skipif(HAS_GPU, reason="checks the no-GPU behaviour")
@pytest.mark.parametrize("name", ["cuda", "tensorrt", ["CUDAExecutionProvider"]])
def test_explicit_gpu_provider_raises(
    model_path: Path, name: str | list[str], capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ProviderUnavailableError, match="requested") as info:
        FERSession(model_path, name)
    assert str(model_path) in str(info.value)
    assert "libcuda" not in capfd.readouterr().err


def test_explicit_provider_that_ort_drops_raises(
    model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ORT silently replaces a failing provider by CPU: an explicit request must not."""
    import fer_export.providers as prov

    real = prov.ort.InferenceSession

    def cpu_only(path: str, **kwargs: object) -> object:
        kwargs["providers"] = ["CPUExecutionProvider"]
        kwargs["provider_options"] = [{}]
        return real(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(prov, "gpu_unusable_reason", lambda name, device_id: None)
    monkeypatch.setattr(prov.ort, "InferenceSession", cpu_only)
    with pytest.raises(ProviderUnavailableError, match="fell back"):
        FERSession(model_path, "cuda", trt_cache_dir=model_path.parent / "cache")
    session = FERSession(model_path, "auto", trt_cache_dir=model_path.parent / "cache")
    assert session.provider == "cpu"
    assert any("fell back" in s for s in session.skipped_providers)


def test_cpu_and_ort_names(model_path: Path) -> None:
    assert FERSession(model_path, "cpu", warmup=False).provider == "cpu"
    assert FERSession(model_path, ["CPUExecutionProvider"]).provider == "cpu"
    assert FERSession(model_path, "CPU", intra_op_threads=1, inter_op_threads=1).provider == "cpu"


@pytest.mark.parametrize("name", ["gpu", ["cpu", "metal"], []])
def test_unknown_provider_lists_valid(model_path: Path, name: str | list[str]) -> None:
    with pytest.raises(ValueError, match="valid: 'auto', 'tensorrt', 'cuda', 'cpu'"):
        FERSession(model_path, name)


def test_properties_and_repr(model_path: Path, helpers: types.ModuleType) -> None:
    session = FERSession(model_path)
    assert session.contract == helpers.tiny_contract()
    assert session.labels == helpers.LABELS
    assert session.input_size == 16
    assert session.metadata == helpers.tiny_contract().to_metadata()
    assert "tiny.onnx" in repr(session) and "'cpu'" in repr(session) and "16x16" in repr(session)
    assert session.latency_ms is not None  # warm-up ran


def test_extra_metadata_kept(make_model, helpers: types.ModuleType) -> None:  # type: ignore[no-untyped-def]
    meta = {**helpers.tiny_contract().to_metadata(), "producer.note": "hello"}
    session = FERSession(make_model(metadata=meta))
    assert session.metadata["producer.note"] == "hello"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ONNX file not found: .*absent.onnx"):
        FERSession(tmp_path / "absent.onnx")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="is a directory, expected an .onnx file"):
        FERSession(tmp_path)


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        (
            np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes(),
            r"is not a readable ONNX model \(cannot parse: DecodeError",
        ),
        (b"this is a text file, not a model\n" * 20, r"is not a readable ONNX model"),
        (b"", r"is empty \(0 bytes\)"),
    ],
    ids=["random", "text", "empty"],
)
def test_not_onnx(tmp_path: Path, content: bytes, cause: str) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match="bad.onnx " + cause) as info:
        FERSession(path)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_truncated_model(model_path: Path) -> None:
    data = model_path.read_bytes()
    for cut in (len(data) // 4, len(data) // 2, len(data) - 10):
        path = model_path.with_name(f"cut{cut}.onnx")
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=f"cut{cut}.onnx"):
            FERSession(path)


def test_no_fer_metadata(make_model) -> None:  # type: ignore[no-untyped-def]
    path = make_model("plain.onnx", metadata={"author": "someone"})
    with pytest.raises(ContractError, match=r"plain.onnx has no FER metadata"):
        FERSession(path)


def test_wrong_format(make_model, helpers: types.ModuleType) -> None:  # type: ignore[no-untyped-def]
    meta = {**helpers.tiny_contract().to_metadata(), "fer.format": "fer-export/99"}
    with pytest.raises(
        ContractError, match=r"fmt.onnx: fer.format is 'fer-export/99', expected 'fer-export/1'"
    ):
        FERSession(make_model("fmt.onnx", metadata=meta))


def test_missing_keys(make_model, helpers: types.ModuleType) -> None:  # type: ignore[no-untyped-def]
    meta = helpers.tiny_contract().to_metadata()
    del meta["fer.labels"], meta["fer.std"]
    with pytest.raises(ContractError, match=r"keys.onnx: metadata lacks fer.labels, fer.std"):
        FERSession(make_model("keys.onnx", metadata=meta))


def test_malformed_value(make_model, helpers: types.ModuleType) -> None:  # type: ignore[no-untyped-def]
    meta = {**helpers.tiny_contract().to_metadata(), "fer.input_size": "big"}
    with pytest.raises(
        ContractError, match=r"malformed.onnx: fer.input_size is 'big', expected JSON: an integer"
    ):
        FERSession(make_model("malformed.onnx", metadata=meta))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_name": "pixels"}, r"graph inputs \['pixels'\]"),
        ({"attention_input": True}, r"graph inputs \['attention', 'image'\]"),
        ({"image_shape": ("N", 3, 32, 32)}, "size 32 on axis 2, expected 16"),
        ({"image_shape": ("N", 1, 16, 16)}, "channels 1 on axis 1, expected 3"),
        ({"image_shape": ("N", 3, 16)}, "rank 4"),
        ({"num_classes": 5}, "5 classes but fer.labels names 4"),
    ],
)
def test_interface_mismatch(make_model, kwargs: dict, match: str) -> None:  # type: ignore[no-untyped-def]
    try:
        path = make_model("iface.onnx", **kwargs)
    except onnx.checker.ValidationError:
        pytest.skip("onnx rejects this graph itself")
    with pytest.raises(ContractError, match=match) as info:
        FERSession(path)
    assert "iface.onnx" in str(info.value)


def test_attention_contract_without_attention_input(make_model, helpers: types.ModuleType) -> None:  # type: ignore[no-untyped-def]
    contract = helpers.tiny_contract(attention="input", au_centres=helpers.AU_CENTRES)
    with pytest.raises(ContractError, match=r"needs \['image', 'attention'\]"):
        FERSession(make_model("one.onnx", contract=contract))


# -- run ----------------------------------------------------------------------------------------


def test_run_matches_numpy(model_path: Path, helpers: types.ModuleType) -> None:
    session = FERSession(model_path)
    x = _batch(5)
    out = session.run(x)
    assert out.dtype == np.float32 and out.shape == (5, 4)
    np.testing.assert_allclose(out, helpers.expected_scores(x), rtol=1e-5, atol=1e-6)
    assert session.latency_ms is not None and session.latency_ms >= 0.0
    assert session.run(x[:0]).shape == (0, 4)


def test_batch_splitting(model_path: Path) -> None:
    x = _batch(5, seed=3)
    whole = FERSession(model_path).run(x)
    session = FERSession(model_path, max_batch=2)
    calls: list[int] = []
    real = session._run_chunk

    def spy(feeds: dict[str, np.ndarray]) -> np.ndarray:
        calls.append(feeds["image"].shape[0])
        return real(feeds)

    session._run_chunk = spy  # type: ignore[method-assign]
    np.testing.assert_allclose(session.run(x), whole, rtol=1e-6, atol=1e-7)
    assert calls == [2, 2, 1]


def test_static_batch_model_is_padded(make_model, helpers: types.ModuleType) -> None:  # type: ignore[no-untyped-def]
    path = make_model("static.onnx", image_shape=(2, 3, 16, 16), batch_dim=2)
    session = FERSession(path)
    x = _batch(3, seed=4)
    np.testing.assert_allclose(session.run(x), helpers.expected_scores(x), rtol=1e-5, atol=1e-6)


def test_io_binding_path(model_path: Path, helpers: types.ModuleType) -> None:
    """The GPU code path (IO binding), exercised with CPU memory."""
    session = FERSession(model_path, warmup=False)
    session._io_device = "cpu"
    x = _batch(3, seed=5)
    np.testing.assert_allclose(session.run(x), helpers.expected_scores(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        (np.zeros((2, 3, 16, 16), np.float64), "float32 .*got dtype float64"),
        (np.zeros((2, 3, 16, 16), np.uint8), "got dtype uint8"),
        (np.zeros((2, 16, 16, 3), np.float32), r"shape \(N, 3, 16, 16\), got \(2, 16, 16, 3\)"),
        (np.zeros((3, 16, 16), np.float32), r"got \(3, 16, 16\)"),
        (np.zeros((1, 3, 8, 8), np.float32), r"got \(1, 3, 8, 8\)"),
        ([[1.0]], "numpy array"),
    ],
)
def test_run_errors(model_path: Path, batch: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FERSession(model_path, warmup=False).run(batch)


def test_run_attention_on_baked_model(model_path: Path) -> None:
    with pytest.raises(ValueError, match="takes no attention input"):
        FERSession(model_path).run(_batch(1), np.ones((1, 1, 16, 16), np.float32))


def test_attention_default(attention_model_path: Path, helpers: types.ModuleType) -> None:
    session = FERSession(attention_model_path)
    x = _batch(5, seed=6)
    default = session.contract.default_attention(5)
    np.testing.assert_allclose(session.run(x), session.run(x, default), rtol=1e-6)
    np.testing.assert_allclose(
        session.run(x), helpers.expected_scores(x, default), rtol=1e-5, atol=1e-6
    )
    ones = np.ones((5, 1, 16, 16), np.float32)
    np.testing.assert_allclose(
        session.run(x, ones), helpers.expected_scores(x), rtol=1e-5, atol=1e-6
    )
    split = FERSession(attention_model_path, max_batch=2)
    np.testing.assert_allclose(split.run(x, ones), session.run(x, ones), rtol=1e-6)


def test_attention_errors(attention_model_path: Path) -> None:
    session = FERSession(attention_model_path)
    with pytest.raises(ValueError, match=r"attention must have shape \(2, 1, 16, 16\)"):
        session.run(_batch(2), np.ones((3, 1, 16, 16), np.float32))
    with pytest.raises(ValueError, match="attention must be float32"):
        session.run(_batch(2), np.ones((2, 1, 16, 16), np.float64))


# -- predict ------------------------------------------------------------------------------------


def _manual(session: FERSession, rgb: np.ndarray) -> np.ndarray:
    s = session.input_size
    h, w = rgb.shape[:2]
    interp = cv2.INTER_AREA if (h > s or w > s) else cv2.INTER_LINEAR
    face = cv2.resize(rgb, (s, s), interpolation=interp)
    if session.contract.channel_order == "BGR":
        face = face[:, :, ::-1]
    return session.run(session.contract.preprocess(np.ascontiguousarray(face)[None]))[0]


def test_predict_whole(model_path: Path, helpers: types.ModuleType) -> None:
    session = FERSession(model_path)
    rgb = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    (pred,) = session.predict(rgb, faces="whole")
    expected = _manual(session, rgb)
    assert pred.box == (0, 0, 30, 40) and pred.crop_box == (0, 0, 30, 40)
    np.testing.assert_allclose(list(pred.raw_scores.values()), expected, rtol=1e-5, atol=1e-6)
    assert pred.label_index == int(np.argmax(expected))
    assert pred.label == helpers.LABELS[pred.label_index]
    probabilities = session.contract.probabilities(expected[None])[0]
    assert pred.score == pytest.approx(float(probabilities.max()), rel=1e-5)
    assert list(pred.probabilities.values()) == pytest.approx(list(probabilities), rel=1e-5)
    d = pred.to_dict()
    assert json.loads(json.dumps(d)) == d and d["box"] == [0, 0, 30, 40]
    # Small images are enlarged with INTER_LINEAR.
    small = rgb[:8, :10]
    np.testing.assert_allclose(
        list(session.predict(small, "whole")[0].raw_scores.values()),
        _manual(session, small),
        rtol=1e-5,
        atol=1e-6,
    )


def test_predict_bgr_contract(make_model, helpers: types.ModuleType) -> None:  # type: ignore[no-untyped-def]
    session = FERSession(
        make_model("bgr.onnx", contract=helpers.tiny_contract(channel_order="BGR"))
    )
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    (pred,) = session.predict(rgb, "whole")
    x = session.contract.preprocess(
        np.zeros((1, 16, 16, 3), np.uint8) + np.array([0, 0, 255], np.uint8)
    )
    np.testing.assert_allclose(
        list(pred.raw_scores.values()), helpers.expected_scores(x)[0], rtol=1e-5, atol=1e-6
    )


def test_predict_inputs_equivalent(model_path: Path, tmp_path: Path) -> None:
    session = FERSession(model_path)
    rgb = np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", rgb[:, :, ::-1])
    assert ok
    path = tmp_path / "img.png"
    path.write_bytes(buf.tobytes())
    ref = session.predict(rgb, "whole")
    assert session.predict(buf.tobytes(), "whole") == ref
    assert session.predict(path, "whole") == ref
    assert session.predict(str(path), "whole") == ref
    rgba = np.concatenate([rgb, np.zeros((24, 32, 1), np.uint8)], axis=2)
    assert session.predict(rgba, "whole") == ref
    gray = rgb[:, :, 1]
    assert session.predict(gray, "whole") == session.predict(np.dstack([gray] * 3), "whole")


def test_predict_bad_inputs(model_path: Path) -> None:
    session = FERSession(model_path)
    with pytest.raises(ImageDecodeError):
        session.predict(b"\x89PNG garbage", "whole")
    with pytest.raises(ImageDecodeError):
        session.predict(b"", "whole")
    with pytest.raises(ValueError, match="uint8"):
        session.predict(np.zeros((8, 8, 3), np.float32), "whole")
    with pytest.raises(ValueError, match="shape"):
        session.predict(np.zeros((8, 8, 5), np.uint8), "whole")
    with pytest.raises(ValueError, match="faces must be"):
        session.predict(np.zeros((8, 8, 3), np.uint8), "everything")


def test_predict_injected_detector(model_path: Path) -> None:
    rgb = np.random.default_rng(2).integers(0, 256, (100, 120, 3), dtype=np.uint8)
    seen: list[tuple[int, ...]] = []

    def detector(image: np.ndarray) -> list[tuple[int, int, int, int]]:
        seen.append(image.shape)
        return [(40, 30, 20, 20), (100, 90, 40, 40)]  # the second runs off the image

    session = FERSession(model_path, detector=detector)
    preds = session.predict(rgb)
    assert seen == [(100, 120, 3)]
    assert [p.box for p in preds] == [(40, 30, 20, 20), (100, 90, 20, 10)]
    margin = session.contract.face_margin  # 0.15 -> 3 px on a 20 px box
    assert preds[0].crop_box == (37, 27, 26, 26)
    assert preds[1].crop_box == (94, 84, 26, 16)
    assert margin == pytest.approx(0.15)
    np.testing.assert_allclose(
        list(preds[0].raw_scores.values()),
        _manual(session, rgb[27:53, 37:63]),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        list(preds[1].raw_scores.values()),
        _manual(session, rgb[84:100, 94:120]),
        rtol=1e-5,
        atol=1e-6,
    )
    # Explicit boxes behave like detected ones.
    assert session.predict(rgb, [(40, 30, 20, 20)]) == preds[:1]
    # No face -> no prediction.
    assert FERSession(model_path, detector=lambda image: []).predict(rgb) == []


def test_predict_with_haar_detector(
    model_path: Path, face_scene: tuple[np.ndarray, tuple[int, int, int, int]]
) -> None:
    scene, (fx, fy, fw, fh) = face_scene
    session = FERSession(model_path)
    (pred,) = session.predict(scene)
    x, y, w, h = pred.box
    assert fx < x + w / 2 < fx + fw and fy < y + h / 2 < fy + fh
    assert isinstance(pred, Prediction) and pred.label in session.labels
    assert session.predict(np.full((80, 80, 3), 128, np.uint8)) == []


def test_predict_batch_equals_predict(model_path: Path) -> None:
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (50 + 10 * i, 60, 3), dtype=np.uint8) for i in range(4)]

    def detector(image: np.ndarray) -> list[tuple[int, int, int, int]]:
        h = image.shape[0]
        return [(5, 5, 20, 20), (30, h - 25, 20, 20)] if h > 50 else []

    session = FERSession(model_path, detector=detector, max_batch=3)
    calls: list[int] = []
    real = session.run

    def spy(batch: np.ndarray, attention: np.ndarray | None = None) -> np.ndarray:
        calls.append(batch.shape[0])
        return real(batch, attention)

    session.run = spy  # type: ignore[method-assign]
    batched = session.predict_batch(images)
    assert calls == [6]  # one run for all faces of all images
    assert [len(p) for p in batched] == [0, 2, 2, 2]
    for image, preds in zip(images, batched, strict=True):
        singles = session.predict(image)
        assert len(preds) == len(singles)
        for a, b in zip(preds, singles, strict=True):
            assert a.box == b.box and a.label == b.label
            np.testing.assert_allclose(
                list(a.raw_scores.values()), list(b.raw_scores.values()), rtol=1e-5
            )
    mixed = session.predict_batch(images[:2], ["whole", [(0, 0, 10, 10)]])
    assert [p[0].box for p in mixed] == [(0, 0, 60, 50), (0, 0, 10, 10)]
    with pytest.raises(ValueError, match="2 entries for 4 images"):
        session.predict_batch(images, ["whole", "whole"])
    assert session.predict_batch([]) == []


def test_default_detector_is_thread_safe_and_matches_face_detector(
    model_path: Path, face_scene: tuple[np.ndarray, tuple[int, int, int, int]]
) -> None:
    """FERSession's own detector is a ThreadLocalDetector: a session shared by threads gives
    each call the same answer as a single-threaded FaceDetector would."""
    from concurrent.futures import ThreadPoolExecutor

    from fer_export.faces import FaceDetector, ThreadLocalDetector

    scene, _ = face_scene
    session = FERSession(model_path)
    assert isinstance(session.detector, ThreadLocalDetector)
    reference = FERSession(model_path, detector=FaceDetector())
    expected = reference.predict(scene)
    assert len(expected) == 1
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: session.predict(scene), range(12)))
    assert all(r == expected for r in results)


def test_detector_per_call_overrides_the_sessions(model_path: Path) -> None:
    rgb = np.random.default_rng(4).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    session = FERSession(model_path, detector=lambda image: [])
    assert session.predict(rgb) == []
    boxes = [(10, 10, 30, 30)]
    by_call = session.predict(rgb, detector=lambda image: boxes)
    assert by_call == session.predict(rgb, boxes)
    assert session.predict_batch([rgb, rgb], detector=lambda image: boxes) == [by_call, by_call]
    assert session.predict_decoded([rgb], detector=lambda image: boxes) == [by_call]


def test_predict_decoded_takes_the_array_without_decoding_it(
    model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fer_export.faces
    import fer_export.predict

    session = FERSession(model_path)
    rgb = np.random.default_rng(5).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    expected = session.predict(rgb, "whole")

    def no_decode(*args: object, **kwargs: object) -> None:
        raise AssertionError("decode_image called for an already decoded array")

    for module in (fer_export.faces, fer_export.predict):
        monkeypatch.setattr(module, "decode_image", no_decode)
    assert session.predict_decoded([rgb], "whole") == [expected]
    assert session.predict_decoded([rgb, rgb], ["whole", [(0, 0, 40, 30)]])[0] == expected
    assert session.predict_decoded([]) == []


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (b"\x89PNG...", r"image 1 must be a decoded RGB uint8 \(H, W, 3\) array, got bytes"),
        (np.zeros((8, 8), np.uint8), r"image 1 .* got uint8 \(8, 8\)"),
        (np.zeros((8, 8, 4), np.uint8), r"image 1 .* got uint8 \(8, 8, 4\)"),
        (np.zeros((8, 8, 3), np.float32), r"image 1 .* got float32"),
        (np.zeros((0, 8, 3), np.uint8), r"image 1 .* got uint8 \(0, 8, 3\)"),
    ],
)
def test_predict_decoded_refuses_what_is_not_decoded_rgb(
    model_path: Path, image: object, match: str
) -> None:
    session = FERSession(model_path, warmup=False)
    good = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=match) as info:
        session.predict_decoded([good, image], "whole")  # type: ignore[list-item]
    assert "decode_image" in str(info.value)


def test_tensorrt_options_name_every_input(tmp_path: Path) -> None:
    """TensorRT's profile covers both inputs of an attention model (no GPU needed: the options
    are only built)."""
    from fer_export.providers import PROVIDER_NAMES, ProviderSettings, provider_options

    settings = ProviderSettings(
        device_id=1,
        trt_cache_dir=tmp_path / "cache",
        trt_fp16=True,
        trt_batch=(1, 8, 32),
        input_shapes={"image": (3, 16, 16), "attention": (1, 16, 16)},
    )
    opts = provider_options(PROVIDER_NAMES["tensorrt"], settings)
    assert opts["trt_profile_min_shapes"] == "image:1x3x16x16,attention:1x1x16x16"
    assert opts["trt_profile_opt_shapes"] == "image:8x3x16x16,attention:8x1x16x16"
    assert opts["trt_profile_max_shapes"] == "image:32x3x16x16,attention:32x1x16x16"
    assert opts["device_id"] == 1 and opts["trt_fp16_enable"] is True
    assert (tmp_path / "cache").is_dir()
    static = ProviderSettings(1, tmp_path / "c2", False, (1, 8, 32), {"image": (3, 4, 4)}, 2)
    assert provider_options(PROVIDER_NAMES["tensorrt"], static)["trt_profile_max_shapes"] == (
        "image:2x3x4x4"
    )
    assert provider_options(PROVIDER_NAMES["cpu"], settings) == {}
    assert provider_options(PROVIDER_NAMES["cuda"], settings)["device_id"] == 1


def test_runtime_keeps_its_public_names() -> None:
    import fer_export.runtime as rt
    from fer_export import faces, predict, providers, session

    assert rt.FERSession is session.FERSession
    assert rt.Prediction is predict.Prediction
    assert rt.ProviderUnavailableError is providers.ProviderUnavailableError
    assert rt.PROVIDER_NAMES is providers.PROVIDER_NAMES and rt.gpu_status is providers.gpu_status
    assert rt.ImageDecodeError is faces.ImageDecodeError
    assert rt.ImageTooLargeError is faces.ImageTooLargeError
    assert rt.ModelLoadError is fer_export.contract.ModelLoadError
    assert all(hasattr(rt, name) for name in rt.__all__)


# -- no torch -----------------------------------------------------------------------------------


def test_runtime_needs_no_torch(model_path: Path, attention_model_path: Path) -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None
        sys.modules["capsnet_model"] = None
        import numpy as np
        import fer_export
        from fer_export.runtime import FERSession
        assert fer_export.FERSession is FERSession
        s = FERSession(sys.argv[1])
        out = s.run(np.zeros((3, 3, 16, 16), np.float32))
        assert out.shape == (3, 4), out.shape
        rgb = np.zeros((40, 40, 3), np.uint8)
        assert len(s.predict(rgb, "whole")) == 1
        assert s.predict(rgb) == []
        a = FERSession(sys.argv[2])
        assert a.run(np.zeros((2, 3, 16, 16), np.float32)).shape == (2, 4)
        bad = [m for m in ("torch", "capsnet_model") if sys.modules.get(m) is not None]
        assert not bad, bad
        print("ok", s.provider)
        """
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(model_path), str(attention_model_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("ok")
    assert fer_export.__version__
