"""Which frames a clip takes, by time: resampling to a frame rate, and sliding windows.

A video is a list of frame times (`video.frame_times`: seconds from the first frame).
Sampling it at `fps` takes, at each instant `k / fps` (k = 0, 1, ... while the video
is on screen), the frame shown at that instant: the last frame whose time is at or
before it. With a constant rate this is torchvision's `VideoClips(frame_rate=...)`
resampling (every `rate / fps`-th frame, rounded down); with a variable rate it
follows the timestamps. Without `fps` every frame is taken once, at its own time.

Windows are then cut from the sampled frames: `size` samples every `stride` samples.
A video with fewer samples than a window gives one window that loops over them
(`short="loop"`, as `read_clip` does) or repeats the last one (`short="pad"`). The
samples after the last full window get a window ending at the last sample
(`tail="shift"`, overlapping its predecessor), a window padded with the last sample
(`tail="pad"`), or none (`tail="drop"`, torchvision's rule).
"""

import logging
import math
from typing import NamedTuple

import numpy as np

SHORT_POLICIES = ("loop", "pad")
TAIL_POLICIES = ("shift", "pad", "drop")
UNITS = ("frames", "seconds")
# Instants within this of a frame's time count as showing it (pts x time base rounds).
TIME_TOLERANCE = 1e-6


class Window(NamedTuple):
    """One clip of a video: its frame numbers and the time span it covers (seconds)."""

    frames: np.ndarray
    start: float
    end: float


def _duration(times):
    """When the last frame leaves the screen: its time plus the gap before it (one
    frame's duration)."""
    if len(times) < 2:
        return float(times[-1]) + 1.0
    return float(times[-1] + (times[-1] - times[-2]))


def check_fps(fps):
    if fps is not None and not (isinstance(fps, (int, float)) and not isinstance(fps, bool)
                                and math.isfinite(fps) and fps > 0):
        raise ValueError(f"`fps` must be a positive number of frames per second (or None for the video's "
                         f"own frames); received {fps!r}.")


def check_windows(window=None, stride=None, fps=None, unit="frames", short="loop", tail="shift"):
    """ValueError for window settings that `windows` cannot take, before any video is read.
    Returns `(window, stride)`: with unit="frames", whole numbers as ints; None stays None
    (the caller's default)."""
    check_fps(fps)
    for value, allowed, what in ((unit, UNITS, "unit"), (short, SHORT_POLICIES, "short"),
                                 (tail, TAIL_POLICIES, "tail")):
        if value not in allowed:
            raise ValueError(f"`{what}` must be one of {allowed}; received {value!r}.")
    checked = []
    for value, what in ((window, "window"), (stride, "stride")):
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                    or not (math.isfinite(value) and value > 0):
                raise ValueError(f"`{what}` must be a positive number of {unit}; received {value!r}.")
            if unit == "frames":
                if value != int(value):
                    raise ValueError(f"With unit='frames', `{what}` is a whole number of frames; received "
                                     f"{value!r}. Use unit='seconds' for times.")
                value = int(value)
        checked.append(value)
    return tuple(checked)


def resample(times, fps=None):
    """`(frame numbers, sample times, sample durations)` of a video whose frames show at
    `times` (seconds, increasing), sampled at `fps` (None: every frame, at its time)."""
    check_fps(fps)
    times = np.asarray(times, np.float64)
    if times.ndim != 1 or len(times) == 0:
        raise ValueError(f"`times` must be a non-empty list of frame times; received shape {times.shape}.")
    end = _duration(times)
    if fps is None:
        return np.arange(len(times)), times, np.diff(np.append(times, end))
    count = max(1, math.ceil((end - times[0]) * fps - TIME_TOLERANCE))
    instants = times[0] + np.arange(count) / fps
    frames = np.searchsorted(times, instants + TIME_TOLERANCE, side="right") - 1
    return frames, instants, np.full(count, 1.0 / fps)


def window_starts(count, size, stride, tail="shift"):
    """Starts (sample positions) of the windows of `size` samples every `stride` over
    `count` samples, `count >= size` (see the module docstring for `tail`)."""
    starts = list(range(0, count - size + 1, stride))
    last = starts[-1] + size
    if last < count:
        if tail == "shift":
            starts.append(count - size)
        elif tail == "pad":  # one window past the end, padded with the last sample
            starts.append(starts[-1] + stride)
    return starts


def windows(times, size=16, stride=None, fps=None, unit="frames", short="loop", tail="shift", source="the video"):
    """The windows of a video whose frames show at `times`: a list of `Window`.

    Args:
        times: frame times in seconds (`video.frame_times(path)`).
        size, stride: window length and step, in samples (`unit="frames"`) or in
            seconds (`unit="seconds"`: converted at `fps`, or the video's average
            rate without it, and rounded to whole samples). `stride` None: `size`
            (windows side by side); smaller: overlapping windows.
        fps: the rate to sample at (e.g. 15, torchvision's Kinetics protocol);
            None: the video's own frames.
        short: a video shorter than one window: "loop" or "pad".
        tail: the samples after the last full window: "shift", "pad" or "drop".
        source: how to name the video in the warning about a short one.
    """
    if size is None:
        raise ValueError("`size` is required: the window's length.")
    size, stride = check_windows(size, stride, fps, unit, short, tail)
    stride = size if stride is None else stride
    frames, instants, durations = resample(times, fps)
    if unit == "seconds":
        rate = fps or len(frames) / (_duration(np.asarray(times, np.float64)) - times[0])
        size, stride = max(1, round(size * rate)), max(1, round(stride * rate))
    count = len(frames)
    if count < size:
        logging.getLogger("keras_r21d").warning(
            "%s has %d samples, fewer than one window of %d: its one window %s.", source, count, size,
            "loops over them" if short == "loop" else "repeats the last one")
        positions = [np.arange(size) % count if short == "loop" else np.minimum(np.arange(size), count - 1)]
    else:
        positions = [np.minimum(np.arange(start, start + size), count - 1)
                     for start in window_starts(count, size, stride, tail)]
    return [Window(frames[p], float(instants[p.min()]), float(instants[p.max()] + durations[p.max()]))
            for p in positions]
