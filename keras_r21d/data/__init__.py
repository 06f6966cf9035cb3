"""Video data: decoding with PyAV, the official splits, and the tf.data clip pipeline."""

from keras_r21d.data.pipeline import SkippedVideos, clip_dataset
from keras_r21d.data.protocols import PROTOCOLS, Protocol
from keras_r21d.data.sampling import windows
from keras_r21d.data.splits import DatasetError, class_names, folder_dataset, load_kinetics, load_split
from keras_r21d.data.video import (
    VideoReadError,
    count_frames,
    frame_times,
    read_clip,
    read_frames,
    read_video,
    uniform_clip_starts,
    uniform_clips,
)

__all__ = [
    "PROTOCOLS", "DatasetError", "Protocol", "SkippedVideos", "VideoReadError", "class_names", "clip_dataset",
    "count_frames", "folder_dataset", "frame_times", "load_kinetics", "load_split", "read_clip", "read_frames",
    "read_video", "uniform_clip_starts", "uniform_clips", "windows",
]
