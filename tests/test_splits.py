"""Split parsing on the official split files in ../shared/data/splits, and reports on generated trees."""

import logging

import pytest
from conftest import SHARED_DATA

from keras_r21d.data.splits import (
    OFFICIAL_CLASSES,
    DatasetError,
    check_split,
    class_names,
    folder_dataset,
    load_split,
)

SPLITS = SHARED_DATA / "splits"
LABELS = SHARED_DATA / "labels"
needs_splits = pytest.mark.skipif(not SPLITS.is_dir(), reason=f"official split files not found at {SPLITS}")
# The official counts (train, test) per split.
COUNTS = {"ucf101": {1: (9537, 3783), 2: (9586, 3734), 3: (9624, 3696)},
          "hmdb51": {1: (3570, 1530), 2: (3570, 1530), 3: (3570, 1530)}}


def official(dataset, split, subset):
    """The real list, unchecked against any disk."""
    return load_split(dataset, "/videos", split, subset, splits_dir=SPLITS / dataset, check_files=False)


@needs_splits
def test_the_raw_files_are_as_distributed():
    """So that the parsing tests mean something: CRLF, trailing spaces, TSN's own class order."""
    for path in (SPLITS / "ucf101").glob("*.txt"):
        raw = path.read_bytes()
        assert b"\r\n" in raw and raw.count(b"\r\n") == raw.count(b"\n"), path  # every line ends in CRLF
    assert b".avi 1 \n" in (SPLITS / "hmdb51" / "brush_hair_test_split1.txt").read_bytes()
    tsn = [line.strip() for line in (SPLITS / "hmdb51" / "class_list.txt").read_text().splitlines()]
    ours = class_names("hmdb51")
    assert sorted(tsn) == ours and [i for i in range(51) if tsn[i] != ours[i]] == [20, 21, 44, 45]


@needs_splits
@pytest.mark.parametrize("dataset", ["ucf101", "hmdb51"])
@pytest.mark.parametrize("split", [1, 2, 3])
def test_official_counts_and_labels(dataset, split):
    names = class_names(dataset, SPLITS / dataset)
    labels_file = (LABELS / f"{dataset}.txt").read_text().split()  # mmaction2's label maps
    assert names == labels_file == class_names(dataset) == list(OFFICIAL_CLASSES[dataset])
    assert len(names) == {"ucf101": 101, "hmdb51": 51}[dataset]
    train, test = official(dataset, split, "train"), official(dataset, split, "test")
    assert (len(train), len(test)) == COUNTS[dataset][split]
    assert len({p for p, _ in train}) == len(train) and len({p for p, _ in test}) == len(test)
    assert not {p for p, _ in train} & {p for p, _ in test}
    assert all(str(p).startswith("/videos/") and p.parent.name == names[label] for p, label in train + test)
    assert {label for _, label in train} == set(range(len(names))) == {label for _, label in test}
    if dataset == "ucf101":
        assert len({p for p, _ in train + test}) == 13320
    else:  # 70 train / 30 test clips per class
        assert all(sum(label == k for _, label in train) == 70 for k in range(51))
        assert all(sum(label == k for _, label in test) == 30 for k in range(51))


@needs_splits
@pytest.mark.parametrize("split", [1, 2, 3])
def test_ucf101_labels_equal_the_numbers_in_the_train_lists(split):
    raw = (SPLITS / "ucf101" / f"trainlist0{split}.txt").read_bytes().decode()
    written = [int(line.split()[1]) - 1 for line in raw.split("\r\n") if line.strip()]
    train = official("ucf101", split, "train")
    assert [label for _, label in train] == written
    for path, label in train + official("ucf101", split, "test"):  # the file names spell the class too
        assert path.name.lower().startswith(f"v_{path.parent.name.lower()}_g")
    handstand = [(p, label) for p, label in train if p.parent.name == "HandstandPushups"]
    assert handstand and all(p.name.startswith("v_HandStandPushups_") and label == 36 for p, label in handstand)


@needs_splits
def test_hmdb51_lists_every_clip_in_every_split():
    files = sorted((SPLITS / "hmdb51").glob("*_test_split*.txt"))
    assert len(files) == 153
    clips = {}  # (class, split) -> {name: tag}
    for path in files:
        name, split = path.stem.rsplit("_test_split", 1)
        clips[name, split] = dict(line.split() for line in path.read_text().splitlines() if line.strip())
    assert len({(c, v) for (c, _), tags in clips.items() for v in tags}) == 6766
    for c in class_names("hmdb51"):
        assert clips[c, "1"].keys() == clips[c, "2"].keys() == clips[c, "3"].keys()
    unused = {v for (_, s), tags in clips.items() if s == "1" for v, tag in tags.items() if tag == "0"}
    assert unused and {tag for tags in clips.values() for tag in tags.values()} == {"0", "1", "2"}
    assert not unused & {p.name for p, _ in official("hmdb51", 1, "train") + official("hmdb51", 1, "test")}


def ucf_tree(tmp_path, classes=("ApplyEyeMakeup", "Archery", "HandstandPushups"), per_class=2):
    """A miniature UCF101: empty videos named from the real split-1 lists, the lists (renumbered
    classInd, CRLF) in root/ucfTrainTestlist. HandstandPushups/ is spelled HandStandPushups/ on disk."""
    root = tmp_path / "UCF-101"
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    number = {name: i + 1 for i, name in enumerate(classes)}
    (lists / "classInd.txt").write_bytes(b"".join(f"{number[n]} {n}\r\n".encode() for n in classes))
    for kind in ("train", "test"):
        real = [ln.split()[0] for ln in (SPLITS / "ucf101" / f"{kind}list01.txt").read_text().splitlines()]
        chosen = [v for n in classes for v in [v for v in real if v.startswith(n + "/")][:per_class]]
        lines = [f"{v} {number[v.split('/')[0]]}" if kind == "train" else v for v in chosen]
        (lists / f"{kind}list01.txt").write_bytes("".join(f"{ln}\r\n" for ln in lines).encode())
        for v in chosen:
            path = root / v.replace("HandstandPushups/", "HandStandPushups/")
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(b"")
    return root


@needs_splits
def test_a_complete_tree_loads_with_the_spelling_on_disk(tmp_path, caplog):
    root = ucf_tree(tmp_path)
    with caplog.at_level(logging.WARNING, logger="keras_r21d"):
        train = load_split("ucf101", root, 1, "train")  # splits found in root/ucfTrainTestlist
    assert not caplog.text and check_split("ucf101", root, 1, "test").ok
    assert [label for _, label in train] == [0, 0, 1, 1, 2, 2] and all(p.is_file() for p, _ in train)
    assert {p.parent.name for p, label in train if label == 2} == {"HandStandPushups"}
    # The split folder can also be given as the folder holding ucfTrainTestlist.
    assert load_split("ucf101", root, 1, "train", splits_dir=root) == train


@needs_splits
def test_missing_and_extra_videos_are_reported(tmp_path, caplog):
    root = ucf_tree(tmp_path)
    gone = load_split("ucf101", root, 1, "train")[2][0]
    gone.unlink()
    stray = root / "Archery" / "v_Archery_g99_c01.avi"
    stray.write_bytes(b"")
    with pytest.raises(DatasetError, match=rf"(?s)6 listed, 1 missing, 1 extra.*{gone.name}.*fully extracted"):
        load_split("ucf101", root, 1, "train")
    report = check_split("ucf101", root, 1, "train")
    assert (report.listed, report.missing, report.extra) == (6, [gone], [stray]) and not report.ok
    with caplog.at_level(logging.WARNING, logger="keras_r21d"):
        kept = load_split("ucf101", root, 1, "train", on_missing="skip")
    assert len(kept) == 5 and gone not in {p for p, _ in kept}
    assert "1 missing, 1 extra" in caplog.text and stray.name in caplog.text and "Skipping" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="keras_r21d"):  # extra only: a warning, not an error
        assert len(load_split("ucf101", root, 1, "test")) == 6
    assert "0 missing, 1 extra" in caplog.text and "in no list of split 1" in caplog.text


@needs_splits
def test_a_wrong_root_says_so(tmp_path):
    root = ucf_tree(tmp_path)
    with pytest.raises(DatasetError, match=rf"(?s)None of the listed videos.*did you mean root='{root}'"):
        load_split("ucf101", tmp_path, 1, "test", splits_dir=root / "ucfTrainTestlist", on_missing="skip")
    with pytest.raises(DatasetError, match="does not exist"):
        load_split("ucf101", tmp_path / "nowhere", 1, "test", splits_dir=root / "ucfTrainTestlist")


@needs_splits
def test_hmdb51_tree_with_splits_beside_it(tmp_path, caplog):
    splits, root = tmp_path / "testTrainMulti_7030_splits", tmp_path / "hmdb51_org"
    splits.mkdir()
    for name in ("cartwheel", "wave"):
        for k in (1, 2, 3):
            source = SPLITS / "hmdb51" / f"{name}_test_split{k}.txt"
            (splits / source.name).write_bytes(source.read_bytes())
        (root / name).mkdir(parents=True)
        for line in source.read_text().splitlines():  # every clip, tag 0 included
            (root / name / line.split()[0]).write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="keras_r21d"):
        train = load_split("hmdb51", root, 2, "train")  # splits found in root/../
        test = load_split("hmdb51", root, 2, "test")
    assert not caplog.text and (len(train), len(test)) == (140, 60)
    assert sorted({label for _, label in train}) == [0, 1] and class_names("hmdb51", splits) == ["cartwheel", "wave"]
    for path in (root / "wave").iterdir():
        path.unlink()
    (root / "wave.rar").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"(?s)30 missing.*wave.rar.*one .rar per class"):
        load_split("hmdb51", root, 2, "test")


@needs_splits
def test_malformed_lines_name_the_file_and_line(tmp_path):
    root = ucf_tree(tmp_path)
    trainlist = root / "ucfTrainTestlist" / "trainlist01.txt"
    good = trainlist.read_bytes()
    trainlist.write_bytes(good.replace(b"avi 1\r\n", b"avi 3\r\n", 1))
    with pytest.raises(DatasetError, match=r"trainlist01.txt, line 1: .* numbered 3 but classInd.txt numbers "
                                           r"ApplyEyeMakeup 1"):
        load_split("ucf101", root, check_files=False)
    trainlist.write_bytes(good)
    (root / "ucfTrainTestlist" / "testlist01.txt").write_bytes(b"\r\n\r\nNope/v_Nope_g01_c01.avi\r\n")
    with pytest.raises(DatasetError, match=r"testlist01.txt, line 3: expected '<Class>/<file>.avi"):
        load_split("ucf101", root, subset="test", check_files=False)


def test_folder_dataset(tmp_path):
    for name, files in (("wave", ["b.mp4", "a.AVI"]), ("jump", ["0.mkv", "notes.txt"]), (".ipynb_checkpoints", [])):
        (tmp_path / name).mkdir()
        for file in files:
            (tmp_path / name / file).write_bytes(b"")
    videos, names = folder_dataset(tmp_path)
    assert names == ["jump", "wave"]
    assert [(p.name, label) for p, label in videos] == [("0.mkv", 0), ("a.AVI", 1), ("b.mp4", 1)]
    videos, names = folder_dataset(tmp_path, extensions=(".mp4",), classes=["wave"])
    assert names == ["wave"] and [(p.name, label) for p, label in videos] == [("b.mp4", 0)]
    with pytest.raises(DatasetError, match=r"missing.*\['run'\]"):
        folder_dataset(tmp_path, classes=["wave", "run"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"hold no video.*\['empty'\]"):
        folder_dataset(tmp_path)
    with pytest.raises(DatasetError, match="holds no class folder"):
        folder_dataset(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        folder_dataset(tmp_path / "nowhere")


@pytest.mark.parametrize("kwargs,message", [
    ({"dataset": "kinetics"}, r"Unknown dataset 'kinetics'; expected one of \('ucf101', 'hmdb51'\)"),
    ({"split": 4}, r"`split` must be 1, 2 or 3.*received 4"),
    ({"split": "1"}, r"`split` must be 1, 2 or 3.*received '1'"),
    ({"subset": "val"}, r"`subset` must be 'train' or 'test'; received 'val'"),
    ({"on_missing": "ignore"}, r"`on_missing` must be 'error' or 'skip'; received 'ignore'"),
])
def test_bad_arguments(tmp_path, kwargs, message):
    args = {"dataset": "ucf101", "root": tmp_path, "splits_dir": tmp_path}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        load_split(**args)
    if "dataset" in kwargs:
        with pytest.raises(ValueError, match=message):
            class_names(kwargs["dataset"])


def test_missing_split_files_say_where_they_were_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"looked in .*UCF-101/ucfTrainTestlist.*/ucfTrainTestlist.*splits_dir="):
        load_split("ucf101", tmp_path / "UCF-101")
    with pytest.raises(FileNotFoundError, match=r"splits_dir '.*/nowhere' does not exist; expected .*classInd.txt"):
        load_split("ucf101", tmp_path, splits_dir=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"_test_split\[123\].txt.*testTrainMulti_7030_splits"):
        class_names("hmdb51", splits_dir=tmp_path)
    (tmp_path / "ucfTrainTestlist").mkdir()
    (tmp_path / "ucfTrainTestlist" / "classInd.txt").write_bytes(b"1 A\r\n")
    with pytest.raises(DatasetError, match=r"Split file .*trainlist02.txt is missing"):
        load_split("ucf101", tmp_path / "UCF-101", split=2, check_files=False)
