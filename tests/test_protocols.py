"""Test-time protocols: the frames and crop boxes of every view against references written
out here from torchvision's and mmaction2's published definitions."""

import fractions
import json
import math

import numpy as np
import pytest
from conftest import SHARED_DATA
from media import decode_all, pyav_times, write_rate_videos, write_video

from keras_r21d.data.preprocessing import KINETICS_MEAN, KINETICS_STD, resize_crop_numpy
from keras_r21d.data.protocols import (
    PROTOCOLS,
    Protocol,
    clip_frames,
    clip_starts,
    crop_boxes,
    get_protocol,
    protocol_views,
    resized_size,
)
from keras_r21d.data.video import frame_times


def samples_at(times, fps):
    """Frame shown at each instant k / fps while the video plays (exact arithmetic)."""
    end = times[-1] + (times[-1] - times[-2])
    out, k = [], 0
    while fractions.Fraction(k, 1) / fractions.Fraction(fps) < end:
        instant = fractions.Fraction(k, 1) / fractions.Fraction(fps)
        out.append(max(i for i, t in enumerate(times) if t <= instant))
        k += 1
    return out


def torchvision_reference(times, fps=15, frames=16, clips=5):
    """VideoClips(frames_per_clip=16, step_between_clips=1, frame_rate=15) then
    UniformClipSampler(5): clips floor(linspace(0, n - 1, 5)) of the n windows."""
    samples = samples_at(times, fps)
    windows = [samples[s:s + frames] for s in range(len(samples) - frames + 1)]
    picks = [math.floor(fractions.Fraction(i * (len(windows) - 1), clips - 1)) for i in range(clips)]
    return [windows[p] for p in picks]


def mmaction2_reference(count, clip_len, num_clips):
    """SampleFrames(clip_len, frame_interval=1, num_clips, test_mode=True)._get_test_clips."""
    avg_interval = (count - clip_len + 1) / float(num_clips)
    if count > clip_len - 1:
        base_offsets = np.arange(num_clips) * avg_interval
        return (base_offsets + avg_interval / 2.0).astype(np.int32).tolist()
    return [0] * num_clips


@pytest.fixture(scope="module")
def rate_videos(tmp_path_factory):
    return write_rate_videos(tmp_path_factory.mktemp("rates"), 75, (36, 48))


REAL = ["R6llTwEh07w.mp4", "SOX5yA1l24A.mp4", "v_SoccerJuggling_g23_c01.avi"]


@pytest.mark.parametrize("video", ["25", "29.97", "30", *REAL])
def test_torchvision_protocol_clips_are_videoclips_at_15_fps(rate_videos, video):
    path = rate_videos.get(video) or SHARED_DATA / "videos" / video
    if not path.is_file():
        pytest.skip(f"{path} is absent (../shared/data not mounted)")
    got = clip_frames(frame_times(path), PROTOCOLS["torchvision"], 16)
    assert got.tolist() == torchvision_reference(pyav_times(path))


@pytest.mark.parametrize("count", [75, 40, 16, 9])
def test_mmaction2_starts_are_the_middle_of_equal_segments(count):
    assert clip_starts(count, 8, 10, "mmaction2") == mmaction2_reference(count, 8, 10)


def test_paper_starts_are_uniform_and_cover_the_video():
    assert clip_starts(100, 16, 10, "uniform") == [round(i * 84 / 9) for i in range(10)]
    assert clip_starts(100, 16, 10, "uniform")[-1] == 100 - 16


def three_crop_reference(img_h, img_w, crop):
    """mmaction2 ThreeCrop.transform's offsets, (x, y) as there, returned as (top, left)."""
    crop_w, crop_h = crop, crop
    if crop_h == img_h:
        w_step = (img_w - crop_w) // 2
        offsets = [(0, 0), (2 * w_step, 0), (w_step, 0)]
    else:
        assert crop_w == img_w
        h_step = (img_h - crop_h) // 2
        offsets = [(0, 0), (0, 2 * h_step), (0, h_step)]
    return [(y, x) for x, y in offsets]


def ten_crop_reference(img_h, img_w, crop):
    """mmaction2 TenCrop.transform's offsets (x, y), the five then the five flipped."""
    w_step, h_step = (img_w - crop) // 4, (img_h - crop) // 4
    offsets = [(0, 0), (4 * w_step, 0), (0, 4 * h_step), (4 * w_step, 4 * h_step), (2 * w_step, 2 * h_step)]
    return [(y, x, False) for x, y in offsets] + [(y, x, True) for x, y in offsets]


@pytest.mark.parametrize("height, width", [(112, 149), (149, 112), (112, 200), (112, 112)])
def test_three_crops_are_mmaction2s(height, width):
    assert [(t, le) for t, le, _ in crop_boxes(height, width, 112, 3)] == three_crop_reference(height, width, 112)


@pytest.mark.parametrize("height, width", [(128, 171), (256, 340), (112, 112)])
def test_ten_crops_are_mmaction2s(height, width):
    assert crop_boxes(height, width, 112, 10) == ten_crop_reference(height, width, 112)


def test_center_crop_is_torchvisions():
    for height, width in [(128, 171), (129, 170), (112, 149)]:
        top, left, flipped = crop_boxes(height, width, 112, 1)[0]
        assert (top, left, flipped) == (int(round((height - 112) / 2.0)), int(round((width - 112) / 2.0)), False)


def test_short_side_resize_is_mmcvs():
    # mmcv.rescale_size((w, h), (inf, 112)): scale 112 / short side, each side int(x * scale + 0.5)
    assert resized_size(240, 320, 112) == (112, int(320 * 112 / 240 + 0.5)) == (112, 149)
    assert resized_size(320, 240, 112) == (149, 112)
    assert resized_size(240, 320, (128, 171)) == (128, 171)


def test_views_are_the_named_frames_and_boxes_preprocessed(rate_videos):
    """Each view is the protocol's frames, resized, cropped at its box, flipped when asked
    and normalised: checked view by view against frames decoded independently."""
    path = rate_videos["25"]
    frames = decode_all(path)
    for protocol in (Protocol("ten", clips=2, crops=10, frames=8, resize=(64, 80), crop=56),
                     Protocol("three", clips=3, crops=3, frames=8, resize=48, crop=48, sampling="mmaction2")):
        views = protocol_views(path, protocol, 8)
        numbers = clip_frames(frame_times(path), protocol, 8)
        size = resized_size(*frames.shape[1:3], protocol.resize)
        boxes = crop_boxes(*size, protocol.crop, protocol.crops)
        assert views.shape == (protocol.clips * protocol.crops, 8, protocol.crop, protocol.crop, 3)
        for k, view in enumerate(views):
            top, left, flipped = boxes[k % protocol.crops]
            expected = resize_crop_numpy(frames[numbers[k // protocol.crops]], size, top, left,
                                         (protocol.crop, protocol.crop))
            expected = (expected[:, :, ::-1] if flipped else expected) / 255.0
            expected = (expected - np.asarray(KINETICS_MEAN)) / np.asarray(KINETICS_STD)
            np.testing.assert_allclose(view, expected, atol=1e-5)


def test_named_protocols_print_and_record_themselves():
    assert str(PROTOCOLS["torchvision"]) == ("torchvision: 5 clips x 1 crop per video (torchvision spacing), "
                                             "16 frames at 15 fps, resize 128x171, center crop 112")
    assert "10 clips x 3 crops" in str(PROTOCOLS["mmaction2"]) and "short side 112" in str(PROTOCOLS["mmaction2"])
    record = json.loads(json.dumps(PROTOCOLS["paper"].record()))
    assert Protocol(**record) == PROTOCOLS["paper"]
    assert get_protocol("paper") is PROTOCOLS["paper"]


@pytest.mark.parametrize("changes, message", [
    ({"crops": 5}, "`crops` must be one of"), ({"clips": 0}, "`clips` must be a positive integer"),
    ({"fps": 0}, "`fps` must be a positive number"), ({"sampling": "random"}, "`sampling` must be one of"),
    ({"resize": (100, 171)}, "crop 112 does not fit"),
])
def test_bad_protocols_say_what_is_allowed(changes, message):
    with pytest.raises(ValueError, match=message):
        Protocol(**changes)
    with pytest.raises(ValueError, match="Unknown protocol 'kinetics'; named protocols: torchvision, paper"):
        get_protocol("kinetics")


def test_three_crops_need_the_short_side_at_the_crop():
    with pytest.raises(ValueError, match="resize the short side to the crop"):
        crop_boxes(128, 171, 112, 3)


# ---------------------------------------------------------------- evaluation under a protocol

CLASSES = ["abseiling", "air drumming", "yoga"]


@pytest.fixture(scope="module")
def logits_model():
    import keras

    import keras_r21d

    keras.utils.set_random_seed(3)
    return keras_r21d.get_model("r3d_10", widths=(4, 4, 8, 8), classes=3, classifier_activation=None)


@pytest.fixture(scope="module")
def kinetics_tree(tmp_path_factory):
    """A miniature Kinetics: 3 classes, 2 validation clips each (one absent from disk), in the
    folder-per-class layout, and the annotation CSV in the official format."""
    root = tmp_path_factory.mktemp("kinetics")
    rng = np.random.default_rng(5)
    lines = ["label,youtube_id,time_start,time_end,split"]
    for c, label in enumerate(CLASSES):
        for k in range(2):
            youtube_id = f"id{c}{k}_-x"
            lines.append(f"{label},{youtube_id},{10 * k},{10 * k + 10},validate")
            if (c, k) == (2, 1):
                continue  # never downloaded
            folder = root / "val" / label.replace(" ", "_")
            folder.mkdir(parents=True, exist_ok=True)
            write_video(folder / f"{youtube_id}_{10 * k:06d}_{10 * k + 10:06d}.mp4",
                        rng.integers(0, 255, (30, 40, 52, 3), dtype=np.uint8), fps=25)
    lines.append(f"{CLASSES[0]},train00,0,10,train")
    csv = root / "validate.csv"
    csv.write_text("\n".join(lines) + "\n")
    return root, csv


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_three_crop_video_accuracy_is_the_mean_of_the_single_crop_runs(logits_model, kinetics_tree):
    """video@1 over 3 crops = top-1 of the mean of the three single-crop runs' video
    probabilities, computed in NumPy from the model's outputs on each view."""
    from keras_r21d.data.splits import load_kinetics
    from keras_r21d.evaluation import evaluate_model

    videos, _, _ = load_kinetics(kinetics_tree[1], kinetics_tree[0])
    protocol = Protocol("three", clips=2, crops=3, frames=4, resize=36, crop=36, sampling="mmaction2")
    result = evaluate_model(logits_model, videos, protocol=protocol, batch_size=4, progress=False)
    single_runs, clip_hits = [], []
    for crop in range(3):
        video_probs = []
        for path, label in videos:
            views = protocol_views(path, protocol, 4)[crop::3]  # this crop of each clip
            probs = softmax(np.asarray(logits_model(views, training=False), np.float64))
            video_probs.append(probs.mean(axis=0))
            clip_hits += list(probs.argmax(axis=1) == label)
        single_runs.append(np.stack(video_probs))
    labels = np.array([label for _, label in videos])
    expected_video = np.mean(np.mean(single_runs, axis=0).argmax(axis=1) == labels)
    assert result["video@1"] == pytest.approx(expected_video)
    assert result["clip@1"] == pytest.approx(np.mean(clip_hits)) and result["clips"] == len(videos) * 6
    assert result["protocol"]["crops"] == 3 and "2 clips x 3 crops" in result["protocol_text"]


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_a_miniature_kinetics_evaluates_with_each_named_protocol(logits_model, kinetics_tree, name, tmp_path):
    from keras_r21d.evaluation import evaluate

    root, csv = kinetics_tree
    # validate.csv beside the videos is found without being named
    result = evaluate("kinetics400", root, model=logits_model, protocol=name, output_dir=tmp_path,
                      progress=False, verbose=False)
    split = result["splits"]["validate"]
    protocol = PROTOCOLS[name]
    assert split["videos"] == 5 and split["clips"] == 5 * protocol.clips * protocol.crops
    assert result["missing"] == ["id21_-x_000010_000020"] and result["class_names"] == CLASSES
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored["protocol"]["name"] == name and stored["protocol"]["crops"] == protocol.crops
    assert stored["protocol_text"].startswith(str(protocol))


def test_kinetics_flat_layout_and_bad_annotations(kinetics_tree, tmp_path):
    from keras_r21d.data.splits import load_kinetics

    root, csv = kinetics_tree
    for path in root.rglob("*.mp4"):  # a flat folder of the same files
        (tmp_path / path.name).write_bytes(path.read_bytes())
    videos, names, missing = load_kinetics(csv, tmp_path)
    assert names == CLASSES and len(videos) == 5 and missing == ["id21_-x_000010_000020"]
    assert sorted(label for _, label in videos) == [0, 0, 1, 1, 2]
    (tmp_path / "bad.csv").write_text("label,youtube_id\nyoga,abc\n")
    with pytest.raises(ValueError, match=r"lacks the columns \['time_start', 'time_end', 'split'\]"):
        load_kinetics(tmp_path / "bad.csv", tmp_path)
    with pytest.raises(ValueError, match="labels .* are not among the 2 classes"):
        load_kinetics(csv, tmp_path, class_names=["abseiling", "yoga"])
    with pytest.raises(FileNotFoundError, match=r"No Kinetics annotation file \(validate.csv or val.csv\)"):
        load_kinetics(None, tmp_path / "nowhere")


def test_cli_evaluates_kinetics_with_a_protocol_and_custom_flags(logits_model, kinetics_tree, tmp_path, capsys):
    import keras_r21d
    from keras_r21d import cli

    root, csv = kinetics_tree
    preset = keras_r21d.save_preset(logits_model, tmp_path / "preset", {"labels": CLASSES})
    code = cli.main(["evaluate", "kinetics400", str(root), "--annotations", str(csv), "--model", "r3d_10",
                     "--weights", str(preset), "--protocol", "mmaction2", "--clips", "2", "--frames", "4",
                     "-o", str(tmp_path / "out"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "protocol: mmaction2: 2 clips x 3 crops per video" in out
    stored = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert stored["protocol"]["clips"] == 2 and stored["protocol"]["frames"] == 4
    assert stored["splits"]["validate"]["clips"] == 5 * 6
