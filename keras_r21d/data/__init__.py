"""Video data: decoding with PyAV, the official splits, and the tf.data clip pipeline."""

from keras_r21d.data.pipeline import SkippedVideos, clip_dataset
from keras_r21d.data.splits import DatasetError, class_names, folder_dataset, load_split
from keras_r21d.data.video import (
    VideoReadError,
    count_frames,
    read_clip,
    read_frames,
    read_video,
    uniform_clip_starts,
    uniform_clips,
)

__all__ = [
    "DatasetError", "SkippedVideos", "VideoReadError", "class_names", "clip_dataset", "count_frames",
    "folder_dataset", "load_split", "read_clip", "read_frames", "read_video", "uniform_clip_starts",
    "uniform_clips",
]
