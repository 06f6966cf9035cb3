"""Export to TF SavedModel, TFLite (LiteRT) and ONNX, and running the artifacts.

The exported graph is the inference graph of `optimize_for_inference` (batch norm
folded, bias/residual/ReLU fused). For TFLite, whose Conv3D support is weak, the
(1, k, k), (t, 1, 1) and (1, 1, 1) convolutions are lowered to 2D convolutions, so
a (2+1)D network exports without any 3D convolution; networks with true 3D
convolutions (R3D, MCx, rMCx) keep them.
"""

import json
import os

from keras_r21d.models import metadata_of

# format name -> Keras's `model.export` format
FORMATS = {"savedmodel": "tf_saved_model", "tflite": "litert", "onnx": "onnx"}
SUFFIXES = {"savedmodel": "", "tflite": ".tflite", "onnx": ".onnx"}
RUNTIMES = {
    "savedmodel": "tensorflow (tf.saved_model.load)",
    "tflite": "ai-edge-litert (pip install ai-edge-litert)",
    "onnx": "tf2onnx to export and onnxruntime to run (pip install tf2onnx onnxruntime)",
}


def _check_format(format):
    if format not in FORMATS:
        raise ValueError(f"Unknown export format {format!r}; expected one of {', '.join(FORMATS)}.")


def default_path(model_name, format):
    return f"{model_name}{SUFFIXES[format]}"


def export_model(model, path, format="savedmodel", frames=None, size=None, batch_size=None,
                 int8_calibration=None):
    """Writes `model` as a standalone artifact that needs neither Keras nor this package.

    Args:
        model: a keras_r21d network (factory, `get_model`, preset).
        path: a folder for "savedmodel", a `.tflite` / `.onnx` file otherwise.
        format: "savedmodel", "tflite" or "onnx".
        frames: clip length T of the exported input; default the model's own
            (fixed, trained with, or 16; see `keras_r21d.inference.clip_length`).
        size: input height = width, or `(height, width)`; default the model's
            own, else the crop of its preprocessing (112).
        batch_size: fixed batch size, or None for any (TFLite: default 1).
        int8_calibration: TFLite only: preprocessed clips `(N, T, H, W, 3)`,
            typical of the inputs, to quantize the network to int8 with (full
            integer post-training quantization; inputs and outputs stay float32).
            About 3x faster on x86 CPUs with VNNI, but not exact: see the README
            for the accuracy measured.

    Returns:
        The path written. A `<path>.json` beside it records the input shape, the
        preprocessing and the labels the model came with.
    """
    import keras

    from keras_r21d.inference import clip_length
    from keras_r21d.models.optimize import optimize_for_inference

    _check_format(format)
    path = os.fspath(path)
    if format != "savedmodel" and not path.endswith(SUFFIXES[format]):
        raise ValueError(f"A {format} export is one file ending in {SUFFIXES[format]!r}; received {path!r}.")
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"Export runs on the TensorFlow backend; this process uses {keras.backend.backend()!r}. "
            "Set KERAS_BACKEND=tensorflow before importing keras."
        )
    metadata = metadata_of(model)
    crop = metadata.get("preprocessing", {}).get("crop", 112)
    fixed_h, fixed_w, channels = model.input_shape[2:]
    frames = clip_length(model, frames)
    height, width = size if isinstance(size, (tuple, list)) else (size, size)
    height, width = height or fixed_h or crop, width or fixed_w or crop
    if format == "tflite" and batch_size is None:
        batch_size = 1
    shape = (batch_size, frames, height, width, channels)
    converter_options = {}
    if int8_calibration is not None:
        converter_options = _int8_options(int8_calibration, format, shape)
    fast = optimize_for_inference(model, conv2d_only=format == "tflite")
    spec = keras.InputSpec(shape=shape, dtype="float32")
    try:
        fast.export(path, format=FORMATS[format], input_signature=[spec], verbose=False, **converter_options)
    except ImportError as error:
        raise RuntimeError(f"Exporting to {format} needs {RUNTIMES[format]}: {error}") from error
    with open(path.rstrip("/") + ".json", "w") as f:
        json.dump({
            "model": model.name, "format": format, "input_shape": list(shape),
            "input_layout": "batch, frames, height, width, RGB channels (channels last)",
            "output_shape": list(fast.output_shape), "int8": int8_calibration is not None,
            "preprocessing": metadata.get("preprocessing"), "labels": metadata.get("labels"),
        }, f, indent=2)
    return path


def _int8_options(calibration, format, shape):
    """TFLite converter settings for int8 quantization calibrated on `calibration`."""
    import numpy as np
    import tensorflow as tf

    if format != "tflite":
        raise ValueError(f"int8 quantization is for TFLite exports; received format={format!r}.")
    clips = np.asarray(calibration, np.float32)
    if clips.ndim != 5 or clips.shape[1:] != tuple(shape[1:]) or not len(clips):
        raise ValueError(
            f"`int8_calibration` must be preprocessed clips of shape (N,) + {tuple(shape[1:])}, like the "
            f"exported input; received an array of shape {clips.shape}."
        )
    batch = shape[0]
    return {
        "optimizations": [tf.lite.Optimize.DEFAULT],
        "representative_dataset": lambda: ([clips[i:i + batch]] for i in range(0, len(clips) - batch + 1, batch)),
    }


def load_exported(path, format=None):
    """A function running an exported artifact in its own runtime: `f(x) -> np.ndarray`.

    SavedModels run with `tf.saved_model.load`, `.tflite` files with the LiteRT
    interpreter (`ai_edge_litert`), `.onnx` files with onnxruntime; no Keras.
    `format` defaults to what the path looks like.
    """
    import numpy as np

    path = os.fspath(path)
    if format is None:
        format = next((f for f, s in SUFFIXES.items() if s and path.endswith(s)), "savedmodel")
    _check_format(format)
    if format == "savedmodel":
        import tensorflow as tf

        serve = tf.saved_model.load(path).signatures["serving_default"]
        (name,) = serve.structured_input_signature[1]
        return lambda x: np.asarray(next(iter(serve(**{name: tf.constant(x, tf.float32)}).values())))
    if format == "tflite":
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as error:
            raise RuntimeError(f"Running a .tflite file needs {RUNTIMES['tflite']}.") from error
        interpreter = Interpreter(model_path=path, num_threads=os.cpu_count())
        interpreter.allocate_tensors()
        (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()

        def run(x):
            x = np.asarray(x, np.float32)
            if tuple(x.shape) != tuple(inp["shape"]):
                raise ValueError(f"{path} takes inputs of shape {tuple(inp['shape'])}; received {x.shape}.")
            interpreter.set_tensor(inp["index"], x)
            interpreter.invoke()
            return interpreter.get_tensor(out["index"]).copy()

        return run
    try:
        import onnxruntime
    except ImportError as error:
        raise RuntimeError(f"Running an .onnx file needs {RUNTIMES['onnx']}.") from error
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: np.asarray(x, np.float32)})[0]
