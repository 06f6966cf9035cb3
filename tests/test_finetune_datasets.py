"""Fine-tuning and evaluation end to end on miniature UCF101 and HMDB51 trees (file names
from the real split lists), starting from a converted preset."""

import numpy as np
import pytest
from conftest import SHARED_DATA
from media import write_video
from test_golden import GOLDEN

from keras_r21d.evaluation import evaluate
from keras_r21d.presets.convert import convert_checkpoint
from keras_r21d.training import finetune

SPLITS = SHARED_DATA / "splits"
pytestmark = pytest.mark.skipif(not SPLITS.is_dir(), reason=f"official split files not found at {SPLITS}")


def mini_ucf101(tmp_path, classes=3, per_list=3):
    root, lists = tmp_path / "UCF-101", tmp_path / "UCF-101" / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    names = [line.split()[1] for line in (SPLITS / "ucf101" / "classInd.txt").read_text().splitlines()][:classes]
    (lists / "classInd.txt").write_bytes(b"".join(f"{i + 1} {n}\r\n".encode() for i, n in enumerate(names)))
    for kind in ("train", "test"):
        lines = (SPLITS / "ucf101" / f"{kind}list01.txt").read_text().splitlines()
        chosen = [ln for n in names for ln in [x for x in lines if x.startswith(n + "/")][:per_list]]
        (lists / f"{kind}list01.txt").write_bytes("".join(f"{ln}\r\n" for ln in chosen).encode())
    return root, lists, names


def mini_hmdb51(tmp_path, classes=3, per_tag=3):
    root, lists = tmp_path / "hmdb51", tmp_path / "testTrainMulti_7030_splits"
    lists.mkdir(parents=True)
    names = sorted(p.name[: -len("_test_split1.txt")] for p in (SPLITS / "hmdb51").glob("*_test_split1.txt"))
    for name in names[:classes]:
        lines = (SPLITS / "hmdb51" / f"{name}_test_split1.txt").read_text().splitlines()
        kept = [ln for tag in "12" for ln in [x for x in lines if x.split()[-1:] == [tag]][:per_tag]]
        (lists / f"{name}_test_split1.txt").write_text("".join(f"{ln}\n" for ln in kept))
    return root, lists, names[:classes]


def write_listed_videos(root, lists, dataset):
    rng = np.random.default_rng(0)
    if dataset == "ucf101":
        relative = [ln.split()[0] for f in lists.glob("*list01.txt") for ln in f.read_text().splitlines()]
    else:
        relative = [f"{f.name[: -len('_test_split1.txt')]}/{ln.split()[0]}" for f in lists.glob("*.txt")
                    for ln in f.read_text().splitlines()]
    for rel in relative:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_video(root / rel, rng.integers(0, 255, (8, 32, 40, 3), dtype=np.uint8))


# HMDB51 is slow-only (50 s): after load_split, which tests/test_splits.py checks for both
# datasets, fine-tuning does not depend on the dataset.
@pytest.mark.parametrize("dataset", ["ucf101", pytest.param("hmdb51", marks=pytest.mark.slow)])
def test_finetune_then_evaluate_from_a_converted_preset(tmp_path, dataset):
    root, lists, names = (mini_ucf101 if dataset == "ucf101" else mini_hmdb51)(tmp_path)
    write_listed_videos(root, lists, dataset)
    preset = convert_checkpoint(GOLDEN / "r2plus1d_tiny.pth", tmp_path / "pretrained")  # 5 classes
    result = finetune(dataset, root, split=1, splits_dir=lists, model="r2plus1d_18", weights=str(preset),
                      frames=4, resize=None, crop=32, batch_size=3, epochs=1, eval_clips=2,
                      output_dir=tmp_path / "run", progress=False)
    assert result["model"].get_layer("fc").units == len(names) == 3  # the preset's head was replaced
    assert result["metrics"]["videos"] == 9 and result["metrics"]["clips"] == 18
    metrics = evaluate(dataset, root, split=1, splits_dir=lists, model="r2plus1d_18",
                       weights=str(result["preset"]), frames=4, clips_per_video=2, batch_size=3,
                       output_dir=tmp_path / "eval", progress=False)
    split = metrics["splits"][1]
    assert split["videos"] == 9 and 0 <= split["video@1"] <= 1 and split["video@5"] == 1.0
    assert metrics["class_names"] == names
    assert (tmp_path / "eval" / "confusion_split1.png").is_file()
