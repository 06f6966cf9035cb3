"""Frame-exact video decoding with PyAV (FFmpeg): RGB uint8 clips by frame number.

Frame numbers: frame `i` of a video is the `i`-th frame its decoder outputs when the
file is decoded from the start. FFmpeg decoders output frames in presentation order,
so this is the order in which the video plays. It is also the order that
`av.open(path).decode(video=0)` gives, so any sequential PyAV decode agrees with it.
Nothing is taken from container headers: the number of frames is the number that
decode (HMDB51 AVIs announce one frame more than they hold), and the first timestamp
need not be 0. Timestamps are not used to order frames either: in AVI files with
B-frames (DivX/XviD "packed bitstream", as in HMDB51) the frames' pts are the
demuxer's guesses and come out of order, while the decoder's order is the right one.

Random access: the first read of a file decodes it once, without converting frames to
RGB, into a frame index (the number of frames, their pts and which are keyframes),
kept in an in-memory LRU cache keyed by path, modification time and size. A read then
seeks to the last keyframe at or before the first wanted frame, decodes forward,
recognises frames by their pts and converts only the wanted ones to RGB. Every seek is
checked: if the frames that come out are not the expected ones (the seek landed past
the keyframe, or timestamps differ from the indexed ones), the read tries the previous
keyframe, then decodes from the start of the file. Files whose timestamps cannot
identify frames (a frame without pts, or pts that do not increase in presentation
order, as in AVIs with B-frames) are always read by decoding from the start up to the
last wanted frame.

Damaged files: a file that cannot be opened, has no video stream or in which no frame
decodes raises `VideoReadError` naming the file and the reason. The first damage ends
the video: a decoding error, or a frame the decoder flags as corrupt (it was concealed,
so its pixels would depend on where decoding started). A truncated file thus holds the
intact frames before the cut; `count_frames` counts those and clips are read from them.

Everything here is thread-safe: each read opens its own container, and the shared
index cache is guarded by a lock.
"""

import collections
import contextlib
import itertools
import os
import threading
from typing import NamedTuple

import numpy as np

# Frame indices kept in memory (a few kB each): all of UCF101 (13320 videos) fits.
CACHE_SIZE = 16384
# FFmpeg's decoder threading: none. With frame threads ("AUTO"), where a damaged file
# ends was a matter of chance: of 20 decodes of one H.264 file with 64 corrupted bytes,
# 1-2 flagged no frame as corrupt and gave all 200 frames, the others 99 (measured
# with PyAV 14 here). Speed is no reason for them: six of ../shared/data's videos (1156
# frames) decoded in 0.70-1.14 s with one thread and 0.96-1.09 s with frame threads
# (2 cores of AMD EPYC Zen 3, AVX2; PyAV only, TensorFlow not involved; noisy runs).
DECODER_THREADS = "NONE"
# read_video's default bound on the decoded video, in bytes (a 720p frame is 2.6 MiB).
MAX_VIDEO_BYTES = 4 << 30


# The frame rate assumed for a file that states none and has no usable timestamps.
DEFAULT_RATE = 25.0


class VideoReadError(OSError):
    """A video file could not be opened or decoded."""


class _FrameIndex(NamedTuple):
    """What one full decode of a file tells: frame count, pts and keyframes.

    `pts` (int64, strictly increasing, one per frame) and `keyframes` (the frame
    numbers of keyframes, ascending) are None when the timestamps cannot identify the
    frames; such a file is read from its start.
    """

    num_frames: int
    pts: np.ndarray = None
    keyframes: np.ndarray = None
    times: np.ndarray = None  # presentation times, seconds from the first frame (see frame_times)


_cache = collections.OrderedDict()
_cache_lock = threading.Lock()


def _open(path):
    """`(container, video stream)` of `path`; VideoReadError when it cannot be opened."""
    import av

    if not os.path.isfile(path):
        reason = "not a file" if os.path.exists(path) else "no such file"
        raise VideoReadError(f"Cannot read video {path!r}: {reason}.")
    try:
        # Some HMDB51 files carry metadata that is not valid UTF-8.
        container = av.open(path, metadata_errors="ignore")
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as error:
        raise VideoReadError(f"Cannot open video {path!r}: {error}") from error
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"Cannot read video {path!r}: it has no video stream.")
    stream = container.streams.video[0]
    stream.thread_type = DECODER_THREADS
    return container, stream


def _decode(container, stream):
    """The decoded frames of `stream`, in output order, up to the first damaged one."""
    import av

    try:
        for frame in container.decode(stream):
            # A frame FFmpeg flags as corrupt was concealed: its pixels (and those of the
            # frames predicted from it) depend on the decoding history, not on the file.
            if frame.is_corrupt:
                return
            yield frame
    except av.FFmpegError:
        return


def _build_index(path):
    """Decodes `path` once (no RGB conversion) into its `_FrameIndex`."""
    container, stream = _open(path)
    with container:
        frames = [(frame.pts, frame.key_frame) for frame in _decode(container, stream)]
        time_base, rate = stream.time_base, stream.average_rate or stream.guessed_rate
    if not frames:
        raise VideoReadError(f"Cannot read video {path!r}: no frame decodes.")
    pts = [p for p, _ in frames]
    if None in pts or any(b <= a for a, b in itertools.pairwise(pts)) or not time_base:
        # No usable timestamps: frames shown at the stream's average rate.
        times = np.arange(len(frames)) / float(rate or DEFAULT_RATE)
        return _FrameIndex(len(frames), times=times)
    keyframes = np.flatnonzero([key for _, key in frames])
    pts = np.asarray(pts, "int64")
    return _FrameIndex(len(frames), pts, keyframes, (pts - pts[0]) * float(time_base))


def _index(path):
    """The frame index of `path`, from the cache or built by decoding the file once."""
    try:
        stat = os.stat(path)
    except OSError as error:
        raise VideoReadError(f"Cannot read video {path!r}: {error.strerror}.") from error
    key = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    # Built outside the lock, so that other files are read meanwhile.
    index = _build_index(path)
    with _cache_lock:
        _cache[key] = index
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return index


def _read_from_start(path, wanted):
    """`{frame number: RGB frame}` for `wanted`, decoding from the start of the file."""
    frames, wanted_set = {}, set(wanted)
    container, stream = _open(path)
    with container, contextlib.closing(_decode(container, stream)) as decoded:
        for number, frame in enumerate(decoded):
            if number in wanted_set:
                frames[number] = frame.to_ndarray(format="rgb24")
            if number >= wanted[-1]:
                break
    if len(frames) < len(wanted):
        missing = min(wanted_set - set(frames))
        raise VideoReadError(f"Cannot read video {path!r}: frame {missing} no longer decodes.")
    return frames


def _read_after_seek(container, stream, index, key, wanted, frames):
    """Seeks to keyframe `key` and decodes forward, moving the frames of `wanted` (a
    list, ascending, all >= key) it reaches into `frames`.

    Decoding counts from the first keyframe that comes out (frames before it are
    open-GOP leading frames, or the seek landed before `key`, or on a packet that is
    not a keyframe); from there, frames must come out consecutively, as in the index.
    Returns "done" (all of `wanted` read), "seek" (the next wanted frame is better
    reached by seeking again), "overshot" (decoding would start after the first
    wanted frame, or at the end of the file) or "failed" (frames that do not match
    the index).
    """
    import av

    try:
        container.seek(int(index.pts[key]), stream=stream, backward=True, any_frame=False)
    except (av.FFmpegError, OSError):  # some formats cannot seek (raw streams at 0)
        return "failed"
    previous = None
    with contextlib.closing(_decode(container, stream)) as decoded:
        for frame in decoded:
            number = _frame_number(index, frame.pts)
            if number is None:
                return "failed"
            if previous is None:
                if number > wanted[0]:
                    return "overshot"
                if not (frame.key_frame and _keyframe_before(index, number) == number):
                    continue
            elif number != previous + 1:
                return "failed"
            previous = number
            if number == wanted[0]:
                frames[number] = frame.to_ndarray(format="rgb24")
                wanted.pop(0)
                if not wanted:
                    return "done"
                if _keyframe_before(index, wanted[0]) > number + 1:
                    return "seek"
    return "failed" if previous is not None else "overshot"  # or landed at the end


def _frame_number(index, pts):
    """The number of the frame with timestamp `pts`, or None when no frame has it."""
    number = int(np.searchsorted(index.pts, pts)) if pts is not None else index.num_frames
    return number if number < index.num_frames and index.pts[number] == pts else None


def _keyframe_before(index, number):
    """The last keyframe at or before frame `number`, or -1 when there is none."""
    k = np.searchsorted(index.keyframes, number, side="right") - 1
    return int(index.keyframes[k]) if k >= 0 else -1


def _read(path, numbers):
    """`{frame number: RGB frame}` for the frame numbers `numbers` of `path`."""
    wanted = sorted(set(numbers))
    index = _index(path)
    if index.pts is None or _keyframe_before(index, wanted[0]) < 0:
        return _read_from_start(path, wanted)
    frames = {}
    container, stream = _open(path)
    with container:
        while wanted:
            key = _keyframe_before(index, wanted[0])
            for _ in range(3):  # a seek that lands past `key`: aim at an earlier keyframe
                status = _read_after_seek(container, stream, index, key, wanted, frames)
                key = _keyframe_before(index, key - 1)
                if status != "overshot" or key < 0:
                    break
            if status not in ("done", "seek"):
                break
    if wanted:
        frames.update(_read_from_start(path, wanted))
    return frames


def _stack(path, frames):
    """`frames` as one array; VideoReadError naming `path` when their sizes differ."""
    sizes = sorted({frame.shape for frame in frames})
    if len(sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for h, w, _ in sizes)
        raise VideoReadError(f"Cannot read video {path!r}: its frames change size mid-stream "
                             f"({shown}); re-encode it at one resolution.")
    return np.stack(frames)


def count_frames(path):
    """The number of decodable frames of a video (headers are not trusted).

    The first call for a file decodes it once to build its frame index; later calls,
    and reads of the same file, use the cached index.
    """
    return _index(os.fspath(path)).num_frames


def frame_times(path):
    """When each frame of a video is shown: float64 seconds from the first frame, one per
    decodable frame (`count_frames` of them), increasing.

    From the frames' timestamps (pts x time base), so variable frame rates are kept;
    a file whose timestamps cannot identify its frames (see the module docstring) is
    taken to show them at its stream's average rate.
    """
    return _index(os.fspath(path)).times.copy()


def read_video(path, max_bytes=MAX_VIDEO_BYTES):
    """All frames of a video, `(N, H, W, 3)` uint8, decoded from the start.

    A whole video can be far larger than its file (600 frames of 720p are 1.6 GiB, in a
    file of a few kB), so the size is checked before any frame is kept: a video above
    `max_bytes` raises ValueError. To classify or featurize a video, read only the
    frames the clips need (`read_clip`, `read_frames`).
    """
    path = os.fspath(path)
    num_frames = count_frames(path)
    container, stream = _open(path)
    with container, contextlib.closing(_decode(container, stream)) as decoded:
        video = None
        for number, frame in enumerate(itertools.islice(decoded, num_frames)):
            if video is None:
                size = num_frames * frame.height * frame.width * 3
                if size > max_bytes:
                    raise ValueError(
                        f"Video {path!r} decodes to {num_frames} frames of {frame.width}x"
                        f"{frame.height}, {size / 2**20:.0f} MiB, above max_bytes="
                        f"{max_bytes / 2**20:.0f} MiB. Read the frames you need with "
                        "read_clip or read_frames, or pass a larger max_bytes.")
                video = np.empty((num_frames, frame.height, frame.width, 3), np.uint8)
            image = frame.to_ndarray(format="rgb24")
            if image.shape != video.shape[1:]:
                raise VideoReadError(
                    f"Cannot read video {path!r}: frame {number} is {image.shape[1]}x"
                    f"{image.shape[0]}, the first was {video.shape[2]}x{video.shape[1]} "
                    "(the resolution changes mid-stream).")
            video[number] = image
    if video is None or number + 1 < num_frames:
        raise VideoReadError(f"Cannot read video {path!r}: it no longer decodes as indexed.")
    return video


def read_frames(path, indices):
    """The frames numbered `indices` (any order, repeats allowed), `(len(indices), H, W, 3)`
    uint8; frame numbers count the decodable frames from 0 (see the module docstring)."""
    path = os.fspath(path)
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError("`indices` is empty.")
    num_frames = count_frames(path)
    bad = [i for i in indices if not 0 <= i < num_frames]
    if bad:
        raise ValueError(f"Frames {bad} are out of range: {path!r} has {num_frames} frames (0 to "
                         f"{num_frames - 1}).")
    frames = _read(path, indices)
    return _stack(path, [frames[i] for i in indices])


def read_clip(path, start=0, num_frames=16, stride=1):
    """`num_frames` frames from frame `start`, every `stride`-th: `(num_frames, H, W, 3)` uint8.

    Frame-exact: the frames are those a sequential decode of the file gives at
    positions `start, start + stride, ...`; only the part of the file from the
    keyframe before `start` to the last frame of the clip is decoded.

    A video too short for the clip (a clip running past its last frame) is completed by
    looping over the frames of the clip that exist: with `available` the clip's
    frames that exist, frame `i` of the clip is `available[i % len(available)]`
    (a 64-frame clip of a 48-frame video at start 0 is frames 0-47, then 0-15 again).
    A `start` past the last frame raises ValueError.
    """
    path = os.fspath(path)
    if start < 0 or num_frames <= 0 or stride <= 0:
        raise ValueError(
            f"Need start >= 0, num_frames > 0 and stride > 0; received start={start}, "
            f"num_frames={num_frames}, stride={stride}."
        )
    total = count_frames(path)
    if start >= total:
        raise ValueError(f"Clip start {start} is past the last frame ({total - 1}) of {path!r}, "
                         f"which has {total} frames.")
    available = list(range(start, min(start + (num_frames - 1) * stride + 1, total), stride))
    frames = _read(path, available)
    return _stack(path, [frames[available[i % len(available)]] for i in range(num_frames)])


def uniform_clips(path, num_frames=16, clips=10, stride=1):
    """The test-time clips of a video: `clips` clips of `num_frames` frames (every
    `stride`-th), their starts spread evenly over the video (`uniform_clip_starts`),
    `(clips, num_frames, H, W, 3)` uint8.

    Each clip is what `read_clip` gives at its start (a video too short for a clip
    loops over the clip's frames), but the file is opened once and only the frames
    the clips need are decoded into RGB, each once. predict, evaluate and int8
    calibration all take their clips from here.
    """
    path = os.fspath(path)
    if num_frames <= 0 or clips <= 0 or stride <= 0:
        raise ValueError(f"Need num_frames, clips and stride > 0; received num_frames={num_frames}, "
                         f"clips={clips}, stride={stride}.")
    total = count_frames(path)
    span = (num_frames - 1) * stride + 1
    positions = []
    for start in uniform_clip_starts(total, span, clips):
        available = list(range(start, min(start + span, total), stride))
        positions.append([available[i % len(available)] for i in range(num_frames)])
    frames = _read(path, [n for clip in positions for n in clip])
    return _stack(path, [frames[n] for clip in positions for n in clip]).reshape(
        clips, num_frames, *frames[positions[0][0]].shape)


def uniform_clip_starts(total_frames, num_frames, clips):
    """Starts of `clips` clips of `num_frames` spread evenly over a video (the
    evaluation protocol of the paper: uniformly spaced clips)."""
    last_start = max(total_frames - num_frames, 0)
    if clips == 1:
        return [last_start // 2]
    return [round(i * last_start / (clips - 1)) for i in range(clips)]
