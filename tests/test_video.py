"""The PyAV video reader against an independent reference: a plain sequential PyAV decode
of the whole file, compared pixel for pixel. On the real videos in ../shared/data/videos
(skipped when absent) and on videos written here with PyAV: H.264 and MPEG-4 with
B-frames, long GOPs, variable frame rate, MJPEG in AVI, raw MPEG-4 and H.264 streams,
MPEG-TS, odd sizes, first timestamps that are not 0. Frames encode their number (a gray
level per frame, a bar of growing length, noise), so a wrong frame cannot pass."""

import fractions
import itertools
import threading

import av
import numpy as np
import pytest
from conftest import SHARED_DATA

from keras_r21d.data import video
from keras_r21d.data.video import VideoReadError, count_frames, read_clip, read_frames, read_video

VIDEOS = SHARED_DATA / "videos"
REAL = sorted(p for p in VIDEOS.glob("*") if p.suffix in (".avi", ".mp4")) if VIDEOS.is_dir() else []
NO_VIDEOS = f"real videos not found at {VIDEOS}"
needs_videos = pytest.mark.skipif(not REAL, reason=NO_VIDEOS)
HAS_X264 = "libx264" in av.codecs_available
B_TYPE = av.video.frame.PictureType.B


def reference(path, until_damage=False):
    """`(frames, pts)`: every frame in the order a plain sequential decode outputs them;
    `until_damage`: only those before a decoding error or a frame flagged corrupt."""
    frames = []
    with av.open(str(path), metadata_errors="ignore") as container:
        try:
            for frame in container.decode(video=0):
                if frame.is_corrupt and until_damage:
                    break
                frames.append(frame)
        except av.FFmpegError:
            if not until_damage:
                raise
    return np.stack([f.to_ndarray(format="rgb24") for f in frames]), [f.pts for f in frames]


def expected_clip(frames, start, num_frames, stride):
    """The documented clip: positions start + i * stride, looping over those that exist."""
    positions = [start + i * stride for i in range(num_frames)]
    available = [p for p in positions if p < len(frames)]
    return frames[[available[i % len(available)] for i in range(num_frames)]]


def content(i, height, width, rng):
    """Frame `i`: a gray level and a bar length that change with i, plus noise."""
    image = np.full((height, width, 3), 20 + (i * 67) % 200, np.int16)
    image[: max(height // 4, 1), : i % width + 1, 0] = 255
    image += rng.integers(-20, 21, image.shape, dtype=np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_video(path, num_frames, codec, size=(48, 64), fmt=None, pix_fmt="yuv420p",
                options=None, pts=None, time_base=None, all_key=False):
    """Writes `num_frames` frames of `content` with PyAV; `pts` in `time_base` units;
    `all_key`: every packet flagged as a keyframe in the container (a lying index)."""
    rng = np.random.default_rng(num_frames)
    height, width = size
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=25)
        stream.height, stream.width, stream.pix_fmt = height, width, pix_fmt
        stream.options = options or {}
        if time_base is not None:
            stream.codec_context.time_base = time_base
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(content(i, height, width, rng), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], time_base
            for packet in stream.encode(frame):
                packet.is_keyframe |= all_key
                container.mux(packet)
        for packet in stream.encode():
            packet.is_keyframe |= all_key
            container.mux(packet)
    return path


def x264(keyint, bframes=3):
    # b-adapt=0 and scenecut=0: B-frames and keyframes where asked, whatever the content.
    return {"x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes={bframes}:b-adapt=0"}


VFR_PTS = [int(t) for t in 5045 + np.cumsum(np.random.default_rng(7).integers(15, 80, 120))]
MS = fractions.Fraction(1, 1000)


def case(shows, **kwargs):
    """`(write_video arguments, what the file must show for the case to mean anything)`."""
    return kwargs, set(shows.split())


MPEG4_B = {"bf": "2", "g": "30"}
GENERATED = {
    "h264_bframes.mp4": case("b seek", num_frames=300, codec="libx264", options=x264(50)),
    "h264_long_gop.mp4": case("b one_key", num_frames=300, codec="libx264", options=x264(300, 2)),
    "h264_vfr_from_5s.mkv": case("b vfr late_start", num_frames=120, codec="libx264", options=x264(30),
                                 pts=VFR_PTS, time_base=MS),
    "h264_97x61_yuv444.mp4": case("b", num_frames=60, codec="libx264", size=(61, 97), pix_fmt="yuv444p",
                                  options=x264(20, 2)),
    "h264.ts": case("b late_start", num_frames=200, codec="libx264", options=x264(40)),
    "h264_raw.h264": case("b no_pts", num_frames=120, codec="libx264", fmt="h264", options=x264(30)),
    "mjpeg_97x61.avi": case("seek", num_frames=60, codec="mjpeg", size=(61, 97), pix_fmt="yuvj444p"),
    "mpeg4_bframes.avi": case("b seek", num_frames=150, codec="mpeg4", options=MPEG4_B),
    "mpeg4_bframes.mp4": case("b seek", num_frames=150, codec="mpeg4", options=MPEG4_B),
    "mpeg4_raw.m4v": case("b", num_frames=150, codec="mpeg4", fmt="m4v", options=MPEG4_B),
    # Seeks land on packets that are no keyframes: reads must notice and go on from one.
    "mpeg4_all_packets_key.avi": case("b seek", num_frames=150, codec="mpeg4", options=MPEG4_B, all_key=True),
    "mpeg4_all_packets_key.mp4": case("b seek", num_frames=150, codec="mpeg4", options=MPEG4_B, all_key=True),
}


def generated_case(name):
    marks = [] if HAS_X264 or GENERATED[name][0]["codec"] != "libx264" else \
        [pytest.mark.skip(reason="FFmpeg without libx264 (the mpeg4 cases cover B-frames)")]
    return pytest.param(name, marks=marks, id=name)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Writes the generated videos once; returns their folder."""
    root = tmp_path_factory.mktemp("videos")
    for name, (kwargs, _) in GENERATED.items():
        if HAS_X264 or kwargs["codec"] != "libx264":
            write_video(root / name, **kwargs)
    return root


def check_clips(path, frames, rng, clips=6):
    """Random clips (strides 1-3), the last full clip and clips looping at the end."""
    n = len(frames)
    assert count_frames(path) == n
    cases = [(0, 16, 1), (max(n - 16, 0), 16, 1), (max(n - 31, 0), 16, 2), (n - 1, 16, 1), (n - 5, 16, 3)]
    for _ in range(clips):
        stride = int(rng.integers(1, 4))
        cases.append((int(rng.integers(0, n)), 16, stride))
    for start, num_frames, stride in cases:
        np.testing.assert_array_equal(read_clip(path, start, num_frames, stride),
                                      expected_clip(frames, start, num_frames, stride),
                                      err_msg=f"{path.name}: start={start} stride={stride}")


@pytest.mark.parametrize("path", REAL or [pytest.param(None, marks=pytest.mark.skip(reason=NO_VIDEOS))],
                         ids=lambda p: getattr(p, "name", "none"))
def test_real_videos_match_a_sequential_decode(path, rng):
    frames, _ = reference(path)
    check_clips(path, frames, rng)
    np.testing.assert_array_equal(read_video(path), frames)


@pytest.mark.parametrize("name", [generated_case(name) for name in GENERATED])
def test_generated_videos_match_a_sequential_decode(generated, name, rng):
    path = generated / name
    frames, pts = reference(path)
    kwargs, shows = GENERATED[name]
    assert len(frames) == kwargs["num_frames"] and frames.shape[1:3] == kwargs.get("size", (48, 64))
    # The file is what the case is about.
    with av.open(str(path)) as container:
        decoded = list(container.decode(video=0))
    keyframes = sum(f.key_frame for f in decoded)
    assert ("b" in shows) == any(f.pict_type == B_TYPE for f in decoded)
    assert ("one_key" in shows) == (keyframes == 1)
    assert "seek" not in shows or keyframes >= 5
    if "no_pts" in shows:
        assert all(p is None for p in pts)
    else:  # pts increase in output order: sorting by pts would not change the reference
        assert all(b > a for a, b in itertools.pairwise(pts))
        assert "late_start" not in shows or pts[0] > 0
        assert ("vfr" not in shows) or len(set(np.diff(pts))) > 10
    check_clips(path, frames, rng)
    # Clips starting around each keyframe (where a seek that lands wrong shows).
    for key in [i for i, f in enumerate(decoded) if f.key_frame][:8]:
        for start in range(max(key - 1, 0), min(key + 4, len(frames))):
            np.testing.assert_array_equal(read_clip(path, start, 4), expected_clip(frames, start, 4, 1),
                                          err_msg=f"{name}: start={start}")
    # Scattered frames in any order, with repeats (several seeks in one read).
    indices = [*rng.integers(0, len(frames), 12), len(frames) - 1, 0, 0]
    np.testing.assert_array_equal(read_frames(path, indices), frames[indices])


@needs_videos
@pytest.mark.parametrize("name, header, decodable", [
    ("RATRACE_wave_f_nm_np1_fr_goo_37.avi", 73, 72),
    ("hmdb51_Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6.avi", 84, 83),
])
def test_header_frame_counts_that_lie(name, header, decodable):
    path = VIDEOS / name
    with av.open(str(path), metadata_errors="ignore") as container:
        assert container.streams.video[0].frames == header
    assert count_frames(path) == len(reference(path)[0]) == decodable
    last = read_clip(path, decodable - 1, 1)
    np.testing.assert_array_equal(last[0], reference(path)[0][-1])
    with pytest.raises(ValueError, match=f"start {decodable} is past the last frame \\({decodable - 1}\\)"):
        read_clip(path, decodable, 1)


@needs_videos
def test_packed_b_frame_avis_play_in_decoder_order_not_pts_order():
    """Why frames are numbered in decoder output order: in HMDB51's DivX AVIs the pts are
    out of order, and the decoder's order is the one in which the picture moves smoothly."""
    frames, pts = reference(VIDEOS / "RATRACE_wave_f_nm_np1_fr_goo_37.avi")
    assert pts != sorted(pts)
    by_pts = frames[np.argsort(pts, kind="stable")]

    def change(x):  # mean change from one frame to the next
        return np.abs(np.diff(x.astype(np.float32), axis=0)).mean()

    assert change(frames) < 0.8 * change(by_pts)


def test_short_videos_loop(tmp_path):
    paths = [write_video(tmp_path / "short.avi", 48, "mpeg4")]
    if REAL:
        paths.append(VIDEOS / "TrumanShow_wave_f_nm_np1_fr_med_26.avi")
    for path in paths:
        frames, _ = reference(path)
        assert count_frames(path) == len(frames) == 48
        # 64 frames of a 48-frame video: frames 0-47, then 0-15 again.
        np.testing.assert_array_equal(read_clip(path, 0, 64), frames[list(range(48)) + list(range(16))])
        # From 10 every 2nd: 10, 12, ..., 46 exist (19 frames), then they repeat.
        available = list(range(10, 48, 2))
        np.testing.assert_array_equal(read_clip(path, 10, 32, 2),
                                      frames[[available[i % 19] for i in range(32)]])
        with pytest.raises(ValueError, match=r"start 48 is past the last frame \(47\).*48 frames"):
            read_clip(path, 48, 16)


def test_unreadable_files_raise_naming_the_file(tmp_path):
    (tmp_path / "empty.avi").write_bytes(b"")
    (tmp_path / "random.avi").write_bytes(np.random.default_rng(0).bytes(50_000))
    (tmp_path / "text.mp4").write_bytes(b"not a video at all")
    with av.open(str(tmp_path / "audio.wav"), "w") as container:  # a valid file without video
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in list(stream.encode(frame)) + list(stream.encode()):
            container.mux(packet)
    reasons = {"empty.avi": "Invalid data", "random.avi": "Invalid data", "text.mp4": "Invalid data",
               "audio.wav": "no video stream", "missing.avi": "(?i)no such file", ".": "not a file"}
    for name, reason in reasons.items():
        path = tmp_path / name
        for read in (count_frames, read_clip, read_video):
            with pytest.raises(VideoReadError, match=reason) as error:
                read(path)
            assert str(path) in str(error.value)


def truncated_cases():
    ucf101 = pytest.param(VIDEOS / "v_SoccerJuggling_g23_c01.avi", id="ucf101_avi") if REAL else \
        pytest.param(None, id="ucf101_avi", marks=pytest.mark.skip(reason=NO_VIDEOS))
    return [pytest.param("generated", id="mpeg4_avi"), ucf101]


@pytest.mark.parametrize("source", truncated_cases())
def test_truncated_avi_reads_the_intact_frames(source, tmp_path):
    """Half an AVI holds the frames before the cut, then a damaged one (flagged corrupt,
    concealed by FFmpeg): the intact ones are the video's frames."""
    if source == "generated":
        source = write_video(tmp_path / "full.avi", 150, "mpeg4", options={"bf": "2", "g": "30"})
    data = source.read_bytes()
    path = tmp_path / f"half{source.suffix}"
    path.write_bytes(data[: len(data) // 2])
    full, _ = reference(source)
    frames, _ = reference(path, until_damage=True)
    n = len(frames)
    assert 10 < n < len(full) and count_frames(path) == n
    assert len(reference(path)[0]) > n  # FFmpeg outputs a damaged frame after these
    np.testing.assert_array_equal(frames, full[:n])
    check_clips(path, frames, np.random.default_rng(0), clips=3)


def test_truncated_mp4_without_its_index_raises(generated, tmp_path):
    source = generated / "mpeg4_bframes.mp4"  # PyAV writes the moov atom at the end
    path = tmp_path / "half.mp4"
    path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(VideoReadError, match=r"half\.mp4"):
        count_frames(path)


class CountingContainer:
    """Wraps a PyAV container and counts the frames its `decode` yields."""

    def __init__(self, container, log):
        self._container, self.decoded = container, 0
        log.append(self)

    def __getattr__(self, name):
        return getattr(self._container, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._container.close()

    def decode(self, *args, **kwargs):
        for frame in self._container.decode(*args, **kwargs):
            self.decoded += 1
            yield frame


@pytest.fixture
def opened(monkeypatch):
    """The containers the reader opens, each with the number of frames it decoded."""
    log, real_open = [], av.open
    monkeypatch.setattr(av, "open", lambda *a, **k: CountingContainer(real_open(*a, **k), log))
    return log


@pytest.mark.parametrize("name", [generated_case(n) for n in
                                  ("h264_bframes.mp4", "h264.ts", "mpeg4_bframes.avi", "mjpeg_97x61.avi")])
def test_index_is_built_once_and_clips_decode_part_of_the_file(generated, tmp_path, name, opened):
    path = tmp_path / name
    path.write_bytes((generated / name).read_bytes())  # a file this test is the first to read
    total = GENERATED[name][0]["num_frames"]
    assert count_frames(path) == total
    assert [c.decoded for c in opened] == [total]  # the index: one full decode
    opened.clear()
    middle = total // 2
    clip = read_clip(path, middle, 16, 2)
    assert count_frames(path) == total
    assert len(opened) == 1 and opened[0].decoded < total / 2  # seek, then 32 frames or so
    opened.clear()
    np.testing.assert_array_equal(clip, expected_clip(reference(path)[0], middle, 16, 2))
    # A rewritten file is indexed again.
    write_video(path, **dict(GENERATED[name][0], num_frames=40))
    opened.clear()
    assert count_frames(path) == 40 and [c.decoded for c in opened] == [40]


@needs_videos
def test_ucf101_clip_decodes_part_of_the_file(opened):
    path = VIDEOS / "v_SoccerJuggling_g23_c01.avi"  # XviD, a keyframe every 12 frames
    count_frames(path)
    opened.clear()
    read_clip(path, 120, 16)
    assert len(opened) == 1 and opened[0].decoded <= 16 + 12


def test_parallel_reads_from_threads(generated):
    names = [n for n in ("h264_bframes.mp4", "mpeg4_bframes.avi", "mjpeg_97x61.avi", "mpeg4_raw.m4v")
             if (generated / n).exists()]
    references = {n: reference(generated / n)[0] for n in names}
    errors = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(8):
                name = names[rng.integers(len(names))]
                start = int(rng.integers(0, len(references[name])))
                np.testing.assert_array_equal(read_clip(generated / name, start, 8, 2),
                                              expected_clip(references[name], start, 8, 2))
        except Exception as error:  # noqa: BLE001 (reported below)
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


def test_invalid_arguments(generated):
    path = generated / "mjpeg_97x61.avi"
    for start, num_frames, stride in [(-1, 16, 1), (0, 0, 1), (0, 16, 0)]:
        with pytest.raises(ValueError, match="start >= 0"):
            read_clip(path, start, num_frames, stride)
    with pytest.raises(ValueError, match=r"\[60, -1\] are out of range.*60 frames"):
        read_frames(path, [0, 60, -1])


def test_uniform_clip_starts():
    assert video.uniform_clip_starts(100, 16, 3) == [0, 42, 84]
    assert video.uniform_clip_starts(100, 16, 1) == [42]
    assert video.uniform_clip_starts(10, 16, 3) == [0, 0, 0]


@pytest.mark.skipif(not HAS_X264, reason="FFmpeg without libx264")
def test_damaged_files_end_at_the_same_frame_on_every_read(tmp_path):
    """64 inverted bytes mid-file: every read ends at the frame a single-threaded
    sequential decode flags corrupt. With FFmpeg's frame threads, 1 or 2 of 20 decodes
    flagged nothing and returned all 200 frames (measured before the fix)."""
    source = write_video(tmp_path / "source.mp4", 200, "libx264", size=(96, 128), options={"bf": "2", "g": "25"})
    data = source.read_bytes()
    rng = np.random.default_rng(1)
    for k in range(3):
        damaged, position = bytearray(data), int(rng.integers(len(data) // 4, 3 * len(data) // 4))
        damaged[position:position + 64] = bytes(b ^ 0xFF for b in damaged[position:position + 64])
        path = tmp_path / f"damaged{k}.mp4"
        path.write_bytes(bytes(damaged))
        with av.open(str(path)) as container:
            container.streams.video[0].thread_type = "NONE"
            expected = 0
            for frame in container.decode(video=0):
                if frame.is_corrupt:
                    break
                expected += 1
        assert 0 < expected < 200
        counts = set()
        for _ in range(12):
            video._cache.clear()  # a fresh decode each time, as in a new process
            counts.add(count_frames(path))
        assert counts == {expected}, path.name


def test_read_video_refuses_a_video_too_large_before_decoding_it(tmp_path):
    """A file of a few kB can hold gigabytes of frames: the bound is checked from the
    frame count and the first frame's size, before the frames are kept."""
    import tracemalloc

    path = write_video(tmp_path / "hd.avi", 40, "mpeg4", size=(720, 1280))
    assert path.stat().st_size < 5 << 20
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"40 frames of 1280x720, 105 MiB.*max_bytes=64 MiB.*read_clip"):
            read_video(path, max_bytes=64 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak
    frames, _ = reference(path)
    np.testing.assert_array_equal(read_video(path, max_bytes=128 << 20), frames)


@pytest.mark.skipif(not HAS_X264, reason="FFmpeg without libx264")
def test_a_resolution_change_mid_stream_raises_naming_the_file(tmp_path):
    """Two raw H.264 streams of different sizes, one after the other: a decoder follows
    the change; a clip across it cannot be one array."""
    first = write_video(tmp_path / "a.h264", 20, "libx264", size=(48, 64), fmt="h264", options=x264(10))
    second = write_video(tmp_path / "b.h264", 20, "libx264", size=(32, 48), fmt="h264", options=x264(10))
    path = tmp_path / "joined.h264"
    path.write_bytes(first.read_bytes() + second.read_bytes())
    frames = [f.to_ndarray(format="rgb24").shape for f in av.open(str(path)).decode(video=0)]
    assert frames[0] != frames[-1] and len(frames) == 40
    np.testing.assert_array_equal(read_clip(path, 0, 16), reference(first)[0][:16])
    for read in (lambda p: read_clip(p, 10, 16), read_video):
        with pytest.raises(VideoReadError, match=r"joined\.h264.*change size mid-stream|joined\.h264.*resolution changes"):
            read(path)


@pytest.mark.parametrize("name", [generated_case(n) for n in ("h264_bframes.mp4", "mpeg4_bframes.avi")])
@pytest.mark.parametrize("num_frames, clips, stride", [(16, 3, 1), (8, 4, 3), (16, 10, 1), (16, 1, 2)])
def test_uniform_clips_are_read_clips_at_uniform_starts(generated, name, num_frames, clips, stride):
    path = generated / name
    frames, _ = reference(path)
    span = (num_frames - 1) * stride + 1
    starts = np.linspace(0, len(frames) - span, clips).round().astype(int) if clips > 1 else \
        [(len(frames) - span) // 2]
    expected = np.stack([expected_clip(frames, s, num_frames, stride) for s in starts])
    np.testing.assert_array_equal(video.uniform_clips(path, num_frames, clips, stride), expected)


def test_uniform_clips_decode_only_what_the_clips_need(tmp_path, opened):
    """3 clips of 8 frames from a 600-frame video with a keyframe every 25: one open,
    each clip decoded from the keyframe before it, far from the whole file."""
    path = write_video(tmp_path / "long.avi", 600, "mpeg4", size=(32, 48), options={"g": "25"})
    count_frames(path)
    opened.clear()
    clips = video.uniform_clips(path, 8, 3)
    assert clips.shape == (3, 8, 32, 48, 3)
    assert len(opened) == 1 and opened[0].decoded <= 3 * (8 + 25)
    frames, _ = reference(path)
    starts = (0, 296, 592)  # 0, (600 - 8) / 2, 600 - 8
    np.testing.assert_array_equal(clips, np.stack([frames[s:s + 8] for s in starts]))
    with pytest.raises(ValueError, match="clips=0"):
        video.uniform_clips(path, 8, 0)
