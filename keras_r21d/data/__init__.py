"""Video data: decoding with PyAV, and the tf.data clip pipeline."""

from keras_r21d.data.pipeline import SkippedVideos, clip_dataset
from keras_r21d.data.video import VideoReadError, count_frames, read_clip, read_video, uniform_clip_starts

__all__ = [
    "SkippedVideos", "VideoReadError", "clip_dataset", "count_frames", "read_clip", "read_video",
    "uniform_clip_starts",
]
