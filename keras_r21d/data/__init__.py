"""Video data: decoding with PyAV."""

from keras_r21d.data.video import VideoReadError, count_frames, read_clip, read_video, uniform_clip_starts

__all__ = ["VideoReadError", "count_frames", "read_clip", "read_video", "uniform_clip_starts"]
