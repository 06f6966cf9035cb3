"""Split parsing on the official split files in ../shared/data/splits."""

import logging

import pytest
from conftest import SHARED_DATA

from keras_r21d.data.splits import DatasetError, class_names, folder_dataset, load_split

SPLITS = SHARED_DATA / "splits"
LABELS = SHARED_DATA / "labels"
pytestmark = pytest.mark.skipif(not SPLITS.is_dir(), reason=f"official split files not found at {SPLITS}")
# The official counts (train, test) per split.
COUNTS = {"ucf101": {1: (9537, 3783), 2: (9586, 3734), 3: (9624, 3696)},
          "hmdb51": {1: (3570, 1530), 2: (3570, 1530), 3: (3570, 1530)}}


@pytest.mark.parametrize("dataset", ["ucf101", "hmdb51"])
@pytest.mark.parametrize("split", [1, 2, 3])
def test_official_counts_and_labels(dataset, split):
    folder = SPLITS / dataset
    names = class_names(dataset, folder)
    assert names == (LABELS / f"{dataset}.txt").read_text().split()  # mmaction2's label maps
    train = load_split(dataset, "/videos", split, "train", splits_dir=folder, check_files=False)
    test = load_split(dataset, "/videos", split, "test", splits_dir=folder, check_files=False)
    assert (len(train), len(test)) == COUNTS[dataset][split]
    assert not {p for p, _ in train} & {p for p, _ in test}
    for path, label in train + test:
        assert path.parent.name == names[label]  # the class folder holds the label's class
    assert {label for _, label in train} == set(range(len(names))) == {label for _, label in test}
    if dataset == "ucf101":
        assert len({p for p, _ in train} | {p for p, _ in test}) == 13320
    else:  # 70 train / 30 test clips per class
        assert all(sum(label == k for _, label in train) == 70 for k in range(51))


def test_ucf101_labels_equal_the_numbers_in_the_train_lists():
    raw = (SPLITS / "ucf101" / "trainlist01.txt").read_bytes()
    assert b"\r\n" in raw  # the files really are CRLF
    written = [int(line.split()[1]) - 1 for line in raw.decode().splitlines() if line.strip()]
    train = load_split("ucf101", "/videos", 1, "train", splits_dir=SPLITS / "ucf101", check_files=False)
    assert [label for _, label in train] == written
    handstand = [p for p, _ in train if p.parent.name == "HandstandPushups"]
    assert handstand and all(p.name.startswith("v_HandStandPushups_") for p in handstand)


def test_hmdb51_unused_videos_are_neither_train_nor_test():
    folder = SPLITS / "hmdb51"
    lines = [ln.split() for f in folder.glob("*_test_split1.txt") for ln in f.read_text().splitlines() if ln.strip()]
    assert len(lines) == 6766 and {tag for _, tag in lines} == {"0", "1", "2"}
    unused = {name for name, tag in lines if tag == "0"}
    both = load_split("hmdb51", "/v", 1, "train", splits_dir=folder, check_files=False) + \
        load_split("hmdb51", "/v", 1, "test", splits_dir=folder, check_files=False)
    assert not unused & {p.name for p, _ in both}


def make_tree(tmp_path, classes=3, per_class=2):
    """A miniature UCF101 tree: empty files named from the real lists, and the lists themselves."""
    root = tmp_path / "UCF-101"
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    names = class_names("ucf101", SPLITS / "ucf101")[:classes]
    (lists / "classInd.txt").write_bytes(b"".join(f"{i + 1} {n}\r\n".encode() for i, n in enumerate(names)))
    for kind in ("train", "test"):
        lines = [ln for ln in (SPLITS / "ucf101" / f"{kind}list01.txt").read_text().splitlines()
                 if ln.split("/")[0] in names]
        chosen = [ln for n in names for ln in [x for x in lines if x.startswith(n + "/")][:per_class]]
        (lists / f"{kind}list01.txt").write_bytes("".join(f"{ln}\r\n" for ln in chosen).encode())
        for ln in chosen:
            path = root / ln.split()[0]
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(b"")
    return root


def test_missing_and_extra_videos_are_reported(tmp_path, caplog):
    root = make_tree(tmp_path)
    train = load_split("ucf101", root, 1, "train")  # splits found in root/ucfTrainTestlist
    assert len(train) == 6 and all(p.is_file() for p, _ in train)
    gone = train[2][0]
    gone.unlink()
    (root / "Archery" / "v_Archery_g99_c01.avi").write_bytes(b"")
    with pytest.raises(DatasetError, match=rf"(?s)1 of the 6 ucf101 split-1 train videos are missing.*{gone.name}"):
        load_split("ucf101", root, 1, "train")
    with caplog.at_level(logging.WARNING, logger="keras_r21d"):
        kept = load_split("ucf101", root, 1, "train", on_missing="skip")
    assert len(kept) == 5 and gone not in {p for p, _ in kept}
    assert "v_Archery_g99_c01.avi" in caplog.text and "in no list" in caplog.text


def test_folder_dataset(tmp_path):
    for name, count in (("wave", 2), ("jump", 1)):
        (tmp_path / name).mkdir()
        for k in range(count):
            (tmp_path / name / f"{k}.mp4").write_bytes(b"")
    (tmp_path / "jump" / "notes.txt").write_text("not a video")
    videos, names = folder_dataset(tmp_path)
    assert names == ["jump", "wave"] and [label for _, label in videos] == [0, 1, 1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"hold no video.*\['empty'\]"):
        folder_dataset(tmp_path)


@pytest.mark.parametrize("kwargs,message", [
    (dict(dataset="kinetics"), r"Unknown dataset 'kinetics'"),
    (dict(split=4), r"`split` must be 1, 2 or 3.*4"),
    (dict(subset="val"), r"`subset` must be 'train' or 'test'.*'val'"),
    (dict(on_missing="ignore"), r"`on_missing`.*'ignore'"),
])
def test_bad_arguments(kwargs, message):
    args = dict(dataset="ucf101", root="/videos", splits_dir=SPLITS / "ucf101")
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        load_split(**args)


def test_missing_split_files_say_where_they_were_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ucfTrainTestlist.*splits_dir"):
        load_split("ucf101", tmp_path / "UCF-101")
