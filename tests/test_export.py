"""Export round trips: each artifact runs in its own runtime (TF SavedModel loader, the
LiteRT interpreter, onnxruntime) and must give the Keras network's outputs to 1e-4."""

import json

import numpy as np
import pytest

import keras_r21d
from keras_r21d.cli import main
from keras_r21d.export import export_model, load_exported
from keras_r21d.presets.files import save_preset
from tests.conftest import randomize_batchnorm

FRAMES, SIZE = 4, 32
FORMATS = {"savedmodel": "", "tflite": ".tflite", "onnx": ".onnx"}


def network(name, **kwargs):
    model = keras_r21d.get_model(name, classes=10, classifier_activation=None, **kwargs)
    randomize_batchnorm(model)
    return model


def tflite_ops(path):
    from ai_edge_litert.interpreter import Interpreter

    return {op["op_name"] for op in Interpreter(model_path=str(path))._get_ops_details()}


# The exported graph does not depend on the widths: a quarter of them keeps every layer and
# op of the network at 1/16 of the weights. (At full width, tf2onnx on r3d_18 took a test
# worker past 19 GB and was killed for memory on a 24 GB machine; AMD EPYC Zen 3, 2026-12-07.)
QUARTER_WIDTHS = (16, 32, 64, 128)


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("name", ["r2plus1d_18", "r3d_18", "mc3_18"])
def test_exported_artifact_equals_keras(name, format, tmp_path, rng):
    model = network(name, midplanes="per_block" if name.startswith("r2plus1d") else None, widths=QUARTER_WIDTHS)
    path = tmp_path / f"{name}{FORMATS[format]}"
    batch = 1 if format == "tflite" else 2
    export_model(model, path, format, frames=FRAMES, size=SIZE)
    x = rng.normal(size=(batch, FRAMES, SIZE, SIZE, 3)).astype("float32")
    expected = np.asarray(model(x, training=False))
    got = load_exported(path)(x)
    assert got.shape == expected.shape == (batch, 10)
    assert np.abs(got - expected).max() < 1e-4, np.abs(got - expected).max()
    sidecar = json.loads((tmp_path / f"{path.name}.json").read_text())
    assert sidecar["input_shape"] == [1 if format == "tflite" else None, FRAMES, SIZE, SIZE, 3]
    if format == "tflite":
        ops = tflite_ops(path)
        assert "CONV_2D" in ops
        # (2+1)D networks export with 2D convolutions only; R3D and MC3 keep their 3D ones.
        assert ("CONV_3D" in ops) == (not name.startswith("r2plus1d")), ops


def test_cli_exports_a_preset_and_checks_it(tmp_path, capsys):
    model = network("r2plus1d_18", input_shape=(FRAMES, SIZE, SIZE, 3))
    preset = save_preset(model, tmp_path / "mine", {"labels": [f"c{i}" for i in range(10)], "frames": FRAMES})
    out = tmp_path / "mine.tflite"
    code = main(["export", "r2plus1d_18", "--weights", str(preset), "--format", "tflite",
                 "--size", str(SIZE), "-o", str(out), "--check"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "max |exported - keras|" in printed
    sidecar = json.loads(out.with_name("mine.tflite.json").read_text())
    assert sidecar["input_shape"] == [1, FRAMES, SIZE, SIZE, 3]
    assert sidecar["labels"][3] == "c3"


def test_bad_requests_are_refused(tmp_path):
    model = network("r3d_18")
    with pytest.raises(ValueError, match="Unknown export format 'coreml'"):
        export_model(model, tmp_path / "m", "coreml")
    with pytest.raises(ValueError, match=r"ending in '\.onnx'"):
        export_model(model, tmp_path / "m.tflite", "onnx")
    assert main(["export", "r3d_18", "--weights", "none", "--format", "onnx", "-o", str(tmp_path / "x.tflite")]) == 2


def test_int8_tflite_is_quantized_and_close(tmp_path, rng):
    from ai_edge_litert.interpreter import Interpreter

    model = network("r2plus1d_18", midplanes="per_block")
    calibration = rng.normal(size=(8, FRAMES, SIZE, SIZE, 3)).astype("float32")
    float_path = export_model(model, tmp_path / "float.tflite", "tflite", frames=FRAMES, size=SIZE)
    int8_path = export_model(model, tmp_path / "int8.tflite", "tflite", frames=FRAMES, size=SIZE,
                             int8_calibration=calibration)
    # int8 weights: a quarter of the float file, and the convolutions take int8 tensors.
    assert (tmp_path / "int8.tflite").stat().st_size < 0.35 * (tmp_path / "float.tflite").stat().st_size
    interpreter = Interpreter(model_path=int8_path)
    tensors = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
    convs = [op for op in interpreter._get_ops_details() if op["op_name"] == "CONV_2D"]
    assert convs and all(tensors[op["inputs"][0]] == np.int8 for op in convs)
    x = rng.normal(size=(1, FRAMES, SIZE, SIZE, 3)).astype("float32")
    expected = np.asarray(model(x, training=False))
    got = load_exported(int8_path)(x)
    assert np.abs(got - expected).max() < 0.1 * np.abs(expected).max()
    assert not np.allclose(got, load_exported(float_path)(x), atol=1e-6)  # really quantized
    with pytest.raises(ValueError, match=r"int8_calibration.*shape"):
        export_model(model, tmp_path / "bad.tflite", "tflite", frames=FRAMES, size=SIZE,
                     int8_calibration=calibration[:, :2])
    with pytest.raises(ValueError, match="for TFLite exports"):
        export_model(model, tmp_path / "bad.onnx", "onnx", frames=FRAMES, size=SIZE, int8_calibration=calibration)


@pytest.mark.slow  # 45 s; int8 calibration on clips is checked by test_int8_tflite_is_quantized_and_close
def test_cli_int8_calibrates_on_videos(tmp_path, capsys):
    from tests.media import random_videos

    (tmp_path / "videos").mkdir()
    random_videos(tmp_path / "videos", 2, frames=12, size=(40, 48))
    model = network("r2plus1d_18", input_shape=(FRAMES, SIZE, SIZE, 3))
    preset = save_preset(model, tmp_path / "mine", {"frames": FRAMES,
                                                    "preprocessing": {"resize": [36, 40], "crop": SIZE}})
    out = tmp_path / "q.tflite"
    code = main(["export", "r2plus1d_18", "--weights", str(preset), "--format", "tflite", "--size", str(SIZE),
                 "-o", str(out), "--int8", str(tmp_path / "videos"), "--int8-clips", "3", "--check"])
    assert code == 0, capsys.readouterr()
    assert json.loads(out.with_name("q.tflite.json").read_text())["int8"] is True
