"""Decoding video files with PyAV (FFmpeg): RGB uint8 frames in decoding order.

Frames are counted by decoding, never from the container header, which lies in real
datasets (HMDB51 AVIs announce one frame more than they hold).
"""

import os

import numpy as np


class VideoReadError(OSError):
    """A video file could not be opened or decoded."""


def _open(path):
    import av

    if not os.path.isfile(path):
        raise VideoReadError(f"Video {os.fspath(path)!r} does not exist.")
    try:
        # Some HMDB51 files carry metadata that is not valid UTF-8.
        container = av.open(os.fspath(path), metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as error:
        raise VideoReadError(f"Cannot open video {os.fspath(path)!r}: {error}") from error
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"{os.fspath(path)!r} has no video stream.")
    return container


def _frames(path):
    """Yields RGB uint8 frames of the first video stream."""
    import av

    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except av.FFmpegError as error:
            raise VideoReadError(f"Decoding {os.fspath(path)!r} failed: {error}") from error


def read_video(path):
    """All frames of a video, `(N, H, W, 3)` uint8."""
    frames = list(_frames(path))
    if not frames:
        raise VideoReadError(f"{os.fspath(path)!r} holds no decodable frame.")
    return np.stack(frames)


def count_frames(path):
    """The number of decodable frames (decodes the file; headers are not trusted)."""
    return sum(1 for _ in _frames(path))


def read_clip(path, start=0, num_frames=16, stride=1):
    """`num_frames` frames from `start`, every `stride`-th, `(num_frames, H, W, 3)` uint8.

    A clip running past the end of the video is completed by looping over the
    frames it holds (the clip of a short video repeats itself).
    """
    if start < 0 or num_frames <= 0 or stride <= 0:
        raise ValueError(
            f"Need start >= 0, num_frames > 0 and stride > 0; received start={start}, "
            f"num_frames={num_frames}, stride={stride}."
        )
    wanted = [start + i * stride for i in range(num_frames)]
    picked = {}
    last = None
    for index, frame in enumerate(_frames(path)):
        if index in wanted:
            picked[index] = frame
        last = index
        if index >= wanted[-1]:
            break
    if last is None:
        raise VideoReadError(f"{os.fspath(path)!r} holds no decodable frame.")
    if start > last:
        raise ValueError(f"Clip start {start} is past the last frame ({last}) of {os.fspath(path)!r}.")
    available = [picked[i] for i in wanted if i in picked]
    return np.stack([available[i % len(available)] for i in range(num_frames)])


def uniform_clip_starts(total_frames, num_frames, clips):
    """Starts of `clips` clips of `num_frames` spread evenly over a video (the
    evaluation protocol of the paper: uniformly spaced clips)."""
    last_start = max(total_frames - num_frames, 0)
    if clips == 1:
        return [last_start // 2]
    return [round(i * last_start / (clips - 1)) for i in range(clips)]
