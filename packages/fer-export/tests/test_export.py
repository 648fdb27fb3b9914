"""ONNX export, verification and reduced-precision variants (tiny models, CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("capsnet_model")
ort = pytest.importorskip("onnxruntime")

from capsnet_model import create_model  # noqa: E402
from capsnet_model.checkpoint import ModelInfo, save_model  # noqa: E402
from capsnet_model.data import Preprocess  # noqa: E402
from fer_export.contract import ModelContract  # noqa: E402
from fer_export.export import (  # noqa: E402
    VerificationError,
    export_onnx,
    read_contract,
    verify_onnx,
)

TINY_CAPS: dict[str, Any] = {"width": 1 / 16, "image_size": 64, "primary_channels": 4}
TINY_VGG: dict[str, Any] = {"width": 1 / 16, "image_size": 32, "hidden": 16}


def _session(path: Path) -> Any:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _torch(model: Any, image: np.ndarray, attention: np.ndarray | None = None) -> np.ndarray:
    with torch.no_grad():
        att = None if attention is None else torch.from_numpy(attention)
        return np.asarray(model(torch.from_numpy(image), att).numpy())


def _tiny(name: str = "e2capsnet", seed: int = 0, **kw: Any) -> Any:
    torch.manual_seed(seed)
    model = create_model(name, **{**(TINY_VGG if name == "vgg16_bn" else TINY_CAPS), **kw})
    _spread_scores(model)
    return model.eval()


def _spread_scores(model: Any) -> None:
    """Scale an untrained capsule model's weights so its capsule lengths spread over (0, 1)
    (at init they are ~1e-7 and near-equal: parity and top-1 checks would prove nothing)."""
    if hasattr(model, "routing"):
        with torch.no_grad():
            model.routing.weight.mul_(1000.0)
            model.primary.conv.weight.mul_(10.0)


@pytest.fixture(scope="module")
def baked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    model = _tiny()
    path = export_onnx(model, tmp_path_factory.mktemp("baked") / "tiny.onnx")
    return model, path


@pytest.fixture(scope="module")
def input_mode(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    model = _tiny(seed=1)
    path = export_onnx(model, tmp_path_factory.mktemp("input") / "tiny.onnx", attention="input")
    return model, path


@pytest.fixture(scope="module")
def vgg(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    model = _tiny("vgg16_bn")
    return model, export_onnx(model, tmp_path_factory.mktemp("vgg") / "vgg.onnx")


def test_baked_graph_interface_and_parity(baked: tuple[Any, Path]) -> None:
    model, path = baked
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["scores"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 18
    assert not any(i.HasField("data_location") and i.data_location for i in proto.graph.initializer)
    assert list(path.parent.iterdir()) == [path]  # one file, no external data, no temp left
    sess = _session(path)
    rng = np.random.default_rng(3)
    for n in (1, 3, 5, 9):  # 3, 5, 9: batch sizes never seen by the exporter or the verifier
        x = rng.standard_normal((n, 3, 64, 64), np.float32)
        got = sess.run(["scores"], {"image": x})[0]
        want = _torch(model, x)
        assert got.shape == (n, 7)
        assert np.abs(got - want).max() <= 1e-4
        assert (got.argmax(1) == want.argmax(1)).all()
    zeros = sess.run(["scores"], {"image": np.zeros((2, 3, 64, 64), np.float32)})[0]
    assert np.isfinite(zeros).all()


def test_metadata_round_trip(baked: tuple[Any, Path]) -> None:
    _, path = baked
    proto = onnx.load(str(path))
    contract = ModelContract.from_metadata({p.key: p.value for p in proto.metadata_props})
    assert contract == read_contract(path)
    assert contract.labels[:2] == ("neutral", "happiness") and contract.num_classes == 7
    assert contract.input_size == 64 and contract.attention == "baked"
    assert contract.score_kind == "capsule_length" and contract.precision == "fp32"
    assert contract.mean == pytest.approx((0.485, 0.456, 0.406))
    assert len(contract.au_centres) == 20 and contract.au_grid == 100
    assert {"torch", "onnx", "onnxscript", "onnxruntime", "fer_export"} <= set(contract.exporter)
    # The template map the runtime would paint is the one baked into the graph.
    from capsnet_model.attention import template_attention_map

    painted = contract.default_attention(1)[0, 0]
    assert np.abs(painted - template_attention_map(64)).max() < 0.05


def test_input_attention_mode_matches_torch(input_mode: tuple[Any, Path]) -> None:
    model, path = input_mode
    sess = _session(path)
    assert [i.name for i in sess.get_inputs()] == ["image", "attention"]
    rng = np.random.default_rng(4)
    for n in (1, 6):
        x = rng.standard_normal((n, 3, 64, 64), np.float32)
        a = rng.random((n, 1, 64, 64), np.float32)
        got = sess.run(["scores"], {"image": x, "attention": a})[0]
        want = _torch(model, x, a)
        assert np.abs(got - want).max() <= 1e-4
        assert (got.argmax(1) == want.argmax(1)).all()
    contract = read_contract(path)
    assert contract.attention == "input" and contract.inputs == ("image", "attention")


def test_vgg_exports_without_attention(vgg: tuple[Any, Path]) -> None:
    model, path = vgg
    contract = read_contract(path)
    assert contract.attention == "none" and contract.score_kind == "logit"
    assert contract.au_centres == ()
    x = np.random.default_rng(5).standard_normal((3, 3, 32, 32), np.float32)
    got = _session(path).run(["scores"], {"image": x})[0]
    assert np.abs(got - _torch(model, x)).max() <= 1e-4
    with pytest.raises(ValueError, match="no attention"):
        export_onnx(model, path.parent / "x.onnx", attention="input")


def test_decoder_not_in_graph(baked: tuple[Any, Path], tmp_path: Path) -> None:
    plain = onnx.load(str(baked[1]))
    with_decoder = _tiny(decoder=True)
    assert sum(p.numel() for p in with_decoder.decoder.parameters()) > 100_000
    path = export_onnx(with_decoder, tmp_path / "dec.onnx", verify=False)
    proto = onnx.load(str(path))

    def size(m: onnx.ModelProto) -> int:
        return sum(int(np.prod(i.dims)) for i in m.graph.initializer)

    assert len(proto.graph.initializer) == len(plain.graph.initializer)
    assert size(proto) == size(plain)
    assert not any("decoder" in i.name for i in proto.graph.initializer)


def test_export_from_checkpoint(tmp_path: Path) -> None:
    model = _tiny("vgg16_bn", seed=2)
    info = ModelInfo(
        name="vgg16_bn",
        kwargs=TINY_VGG,
        labels=("a", "b", "c", "d", "e", "f", "g"),
        preprocess=Preprocess(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
    )
    ckpt = save_model(model, tmp_path / "vgg.safetensors", info)
    path = export_onnx(ckpt, tmp_path / "vgg.onnx", batch_sizes=(2,))
    contract = read_contract(path)
    assert contract.labels == info.labels and contract.model_name == "vgg16_bn"
    assert contract.mean == (0.5, 0.5, 0.5) and contract.std == (0.25, 0.25, 0.25)
    assert contract.extra["model_kwargs"] == TINY_VGG
    report = verify_onnx(path, ckpt, batch_sizes=(1, 3))
    assert report.passed and report.max_abs_diff <= 1e-4
    assert report.to_dict()["batches"][1]["batch"] == 3


def test_failed_verification_leaves_nothing(
    vgg: tuple[Any, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fer_export.export as export_module

    def fail(*args: Any, **kwargs: Any) -> None:
        raise VerificationError("simulated")

    monkeypatch.setattr(export_module, "verify_onnx", fail)
    target = tmp_path / "out.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(VerificationError, match="simulated"):
        export_onnx(vgg[0], target)
    assert target.read_bytes() == b"previous"  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]  # no temp file left


def test_verification_error_on_perturbed_weights(vgg: tuple[Any, Path], tmp_path: Path) -> None:
    model, path = vgg
    proto = onnx.load(str(path))
    weight = max(proto.graph.initializer, key=lambda i: int(np.prod(i.dims)))
    arr = onnx.numpy_helper.to_array(weight) + np.float32(0.5)
    weight.CopyFrom(onnx.numpy_helper.from_array(arr, weight.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))
    with pytest.raises(VerificationError) as info:
        verify_onnx(bad, model)
    report = info.value.report
    assert report is not None and not report.passed and report.max_abs_diff > 1e-4
    assert report.to_dict()["passed"] is False


def test_bad_arguments(vgg: tuple[Any, Path], tmp_path: Path) -> None:
    model, _ = vgg
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, tmp_path / "a.onnx", opset=17)
    with pytest.raises(ValueError, match="B >= 2"):
        export_onnx(model, tmp_path / "a.onnx", (torch.zeros(1, 3, 32, 32),))
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        export_onnx(tmp_path / "missing.safetensors", tmp_path / "a.onnx")
    assert list(tmp_path.iterdir()) == []


def test_fp16_variant(baked: tuple[Any, Path], tmp_path: Path) -> None:
    """fp16 with float32 IO and the routing in float32: scores within 0.05 of fp32 on 140
    synthetic faces (seed 3; the test model's weights are scaled x1000, which amplifies fp16
    rounding), and the same top-1 on every face whose fp32 top-1/top-2 margin exceeds 0.05.
    The trained-model agreement is measured in the slow test."""
    from fer_export.quantize import agreement, synthetic_batches, to_fp16

    _, path = baked
    half = to_fp16(path, tmp_path / "tiny.fp16.onnx")
    contract = read_contract(half)
    assert contract.precision == "fp16"
    sess, ref = _session(half), _session(path)
    assert sess.get_inputs()[0].type == "tensor(float)"
    assert sess.get_outputs()[0].type == "tensor(float)"
    x = np.concatenate(list(synthetic_batches(contract, 140, 70, seed=3)))
    want = ref.run(["scores"], {"image": x})[0]
    got = sess.run(["scores"], {"image": x})[0]
    assert np.abs(got - want).max() < 0.05
    top2 = np.sort(want, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.05
    assert (got.argmax(1) == want.argmax(1))[clear].all()
    stats = agreement(path, half, [x])
    assert stats["size_ratio"] < 0.6 and stats["count"] == 140


def test_int8_on_untrained_model_runs(baked: tuple[Any, Path], tmp_path: Path) -> None:
    from fer_export.quantize import agreement, synthetic_batches, to_int8

    _, path = baked
    contract = read_contract(path)
    q = to_int8(path, tmp_path / "tiny.int8.onnx", synthetic_batches(contract, 32, 16))
    assert read_contract(q).precision == "int8"
    proto = onnx.load(str(q))
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    stats = agreement(path, q, synthetic_batches(contract, 16, 16, seed=9))
    assert np.isfinite(stats["max_abs_diff"]) and stats["count"] == 16


@pytest.mark.slow
def test_reduced_precision_on_trained_model(tmp_path: Path) -> None:
    """Issue requirement: int8 keeps >= 99% top-1 agreement with fp32 and is <= 0.3 x fp32.

    e2capsnet_small trained 5 epochs on SyntheticFaces(1400, seed=0) without augmentation
    (batch 32, Adam 1e-3, seed 0; about 30 s on 2 CPU cores; the reference run reached about
    0.8 test accuracy), exported baked. int8: QDQ, per-channel, MinMax calibration on 256
    synthetic faces (seed 1), first two convolutions and the routing weight int8 weight-only.
    fp16: routing in fp32.
    Measured on 700 other synthetic faces (seed 5). Thresholds: int8 top-1 agreement >= 0.99
    and size ratio <= 0.3; fp16 top-1 agreement >= 0.99.
    """
    from capsnet_model.synthetic import SyntheticFaces
    from capsnet_model.training import TrainConfig, train
    from fer_export.quantize import agreement, synthetic_batches, to_fp16, to_int8

    config = TrainConfig(
        model="e2capsnet_small",
        epochs=5,
        batch_size=32,
        lr=1e-3,
        augment=None,
        progress=False,
        seed=0,
    )
    result = train(config, SyntheticFaces(1400, seed=0), output_dir=tmp_path / "run")
    path = export_onnx(result.best_checkpoint, tmp_path / "small.onnx")
    contract = read_contract(path)
    test = list(synthetic_batches(contract, 700, 100, seed=5))
    q = to_int8(path, tmp_path / "small.int8.onnx", synthetic_batches(contract, 256, 32, seed=1))
    stats = agreement(path, q, test)
    print(f"int8: {stats}")
    assert stats["top1_agreement"] >= 0.99, stats
    assert stats["size_ratio"] <= 0.3, stats
    half = to_fp16(path, tmp_path / "small.fp16.onnx")
    stats = agreement(path, half, test)
    print(f"fp16: {stats}")
    assert stats["top1_agreement"] >= 0.99, stats
    assert stats["max_abs_diff"] < 5e-3, stats
