"""keras-r21d: the video ResNets of Tran et al. (CVPR 2018) for Keras 3.

R2D, f-R2D, R3D, MC2-5, rMC2-5 and R(2+1)D, built from one backbone builder.

Example:
>>> import keras_r21d
>>> model = keras_r21d.R2Plus1D18(input_shape=(16, 112, 112, 3))
>>> keras_r21d.get_model("mc3_18", classes=101).output_shape
(None, 101)
"""

# Before anything imports TensorFlow: its fast CPU kernels on every x86 CPU (see machine.py).
from keras_r21d.machine import enable_onednn as _enable_onednn
from keras_r21d.machine import quiet_tensorflow_in_cli as _quiet_tensorflow_in_cli

_enable_onednn()
_quiet_tensorflow_in_cli()

from keras_r21d.applications import (
    FACTORIES,
    FR2D18,
    MC2_18,
    MC3_18,
    MC4_18,
    MC5_18,
    R2D18,
    R3D10,
    R3D16,
    R3D18,
    R3D26,
    R3D34,
    RMC2_18,
    RMC3_18,
    RMC4_18,
    RMC5_18,
    R2Plus1D10,
    R2Plus1D16,
    R2Plus1D18,
    R2Plus1D26,
    R2Plus1D34,
    get_model,
    list_models,
)
from keras_r21d.data.preprocessing import VideoPreprocessing, preprocess_input
from keras_r21d.evaluation import evaluate
from keras_r21d.export import export_model, load_exported
from keras_r21d.features import extract_features
from keras_r21d.inference import predict_video
from keras_r21d.models.backbone import ARCHITECTURES, DEPTHS, VideoResNet, stage_feature_model
from keras_r21d.models.complexity import count_macs, count_params
from keras_r21d.models.layers import BasicBlock, Conv2Plus1D, Stem, ZeroPaddedConv3D, midplanes
from keras_r21d.models.optimize import optimize_for_inference
from keras_r21d.presets.convert import convert_checkpoint
from keras_r21d.presets.files import load_preset, save_preset
from keras_r21d.presets.labels import decode_predictions
from keras_r21d.timeline import predict_timeline
from keras_r21d.training import finetune

__version__ = "0.1.0"
