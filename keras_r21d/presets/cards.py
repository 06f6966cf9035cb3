"""Model cards (the README.md of a Hub repo) for presets, with front matter the Hub reads.

`model_card` writes the YAML front matter the Hugging Face Hub indexes (library, task,
tags, datasets, license, `model-index` with the published accuracy) and a body saying
what the network is, its size and cost, how it was checked and how to load it.

Facts come from the manifest entry when the preset is a published one (passed, or found
by the `name` in metadata.json of a converted preset), else from metadata.json (what
`keras_r21d.finetune` / `save_preset` stored: labels, frames, dataset, trained_from...).
The network itself (parameters, MACs) always comes from the preset's config.json.
"""

import re

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from keras_r21d.models import ARCHITECTURES, DISPLAY_NAMES, MODELS, build_network
from keras_r21d.models.complexity import count_macs, count_params
from keras_r21d.presets.files import load_preset, read_config, read_metadata

TASK = "video-classification"
TAGS = ("keras-r21d", "video-classification", "action-recognition")
PAPER = ("Tran et al., A Closer Look at Spatiotemporal Convolutions for Action Recognition, "
         "CVPR 2018 (arXiv 1711.11248)")
DEFAULT_FRAMES, DEFAULT_CROP = 16, 112

# Datasets by the squashed names the manifest, its aliases and finetune use:
# (the id in the card's `datasets` / model-index, the name shown).
DATASETS = {
    "kinetics400": ("kinetics-400", "Kinetics-400"),
    "sports1m": ("sports-1m", "Sports-1M"),
    "ig65m": ("ig-65m", "IG-65M"),
    "ucf101": ("ucf101", "UCF101"),
    "hmdb51": ("hmdb51", "HMDB51"),
}
# SPDX identifiers in the manifest's license texts -> Hub license identifiers.
LICENSES = {"BSD-3-Clause": "bsd-3-clause", "Apache-2.0": "apache-2.0", "MIT": "mit",
            "CC-BY-4.0": "cc-by-4.0", "CC-BY-NC-4.0": "cc-by-nc-4.0"}
METRICS = {  # accuracy key -> (Hub metric type, what it measures)
    "clip@1": ("accuracy", "top-1 accuracy of single clips"),
    "video@1": ("accuracy", "top-1 accuracy of the video-level prediction"),
    "video@5": ("top_5_accuracy", "top-5 accuracy of the video-level prediction"),
}
CONV_WORDS = {"2d": "2D", "3d": "3D", "2plus1d": "(2+1)D", "r2d": "2D over the whole clip"}
FAMILIES = {
    "r2d": "2D convolutions only: the first layer's kernel spans the whole clip and folds time "
           "into channels, so the layers above it see no time axis",
    "fr2d": "2D convolutions applied to every frame alone; time is only pooled at the end",
    "r3d": "3D convolutions in every layer",
    "mc": "mixed convolutions: 3D convolutions in the bottom layers, 2D convolutions above",
    "rmc": "reversed mixed convolutions: 2D convolutions in the bottom layers, 3D convolutions above",
    "r2plus1d": "(2+1)D convolutions: every 3D convolution factorised into a 2D spatial and a 1D "
                "temporal convolution with a ReLU between them",
}


def model_card(preset_dir, repo_id, entry=None, parity=None):
    """The README.md text (YAML front matter + Markdown body) of a preset's Hub repo.

    Args:
        preset_dir: the preset directory (config.json [+ model.weights.h5, metadata.json]).
            None renders the card of the manifest `entry` alone, for its network as the
            converter builds it.
        repo_id: "owner/name" of the Hub repo, for the usage lines.
        entry: the manifest entry of the preset (`keras_r21d.presets.get_preset`); None
            takes it from metadata.json's `name` when that names one for this network.
        parity: max |logit difference| against the upstream PyTorch checkpoint, if measured.

    Returns:
        str, which `huggingface_hub.ModelCard` parses.
    """
    if preset_dir is None:
        if entry is None:
            raise ValueError("model_card needs a preset directory or a manifest entry.")
        config, metadata = _entry_config(entry), {}
    else:
        config, metadata = read_config(preset_dir), read_metadata(preset_dir)
    arch = config["architecture"]
    entry = entry or _manifest_entry(metadata.get("name"), arch)
    if entry is not None and entry["architecture"] != arch:
        raise ValueError(f"The manifest entry {entry['name']!r} is for {entry['architecture']}; "
                         f"the preset holds {arch}.")
    facts = _facts(config, metadata, entry or {}, repo_id)
    size = _complexity(preset_dir, config, facts["frames"], facts["crop"])
    data = ModelCardData(
        library_name="keras", pipeline_tag=TASK, tags=[*TAGS, *([arch] if arch else [])],
        datasets=facts["datasets"] or None, base_model=facts["base_model"], **facts["license"],
        metrics=sorted({METRICS[k][0] for k in facts["results"]}) or None,
        model_name=repo_id if facts["results"] else None,
        eval_results=_eval_results(facts) or None,
    )
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_body(config, facts, size, repo_id, parity)}"))


# ---------------------------------------------------------------- facts

def _entry_config(entry):
    """config.json of a manifest entry's converted preset, as far as the card needs it."""
    # torchvision's (2+1)D blocks give both convs the width of the first (per-block);
    # the Caffe2 and IG-65M releases size each conv on its own (per-conv, the default).
    per_block = entry["origin"]["format"] == "torchvision" and entry["architecture"].startswith("r2plus1d")
    stem = ARCHITECTURES[MODELS[entry["architecture"]][0]][0]
    return {"architecture": entry["architecture"], "classes": entry["classes"],
            "midplanes": "per_block" if per_block else "per_conv",
            "frames": entry["frames"] if stem == "r2d" else None}


def _manifest_entry(name, arch):
    """The manifest entry called `name` when it is one for `arch`, else None."""
    from keras_r21d.presets import list_presets

    return next((e for e in list_presets(arch) if name is not None and e["name"] == name), None)


def _base_entry(trained_from, arch):
    """The manifest entry a fine-tuned preset started from (a preset name or an alias)."""
    from keras_r21d.presets import list_presets

    entries = list_presets(arch)
    return (next((e for e in entries if e["name"] == trained_from), None)
            or next((e for e in entries if trained_from in e.get("aliases", ())), None))


def _aliases():
    from keras_r21d.presets import list_presets

    return {alias for e in list_presets() for alias in e.get("aliases", ())}


def _dataset(text):
    """(id, name) of a known dataset named at the start of `text` ("Kinetics-400 validation")."""
    squashed = re.sub(r"[^a-z0-9]", "", str(text).lower())
    return next((value for key, value in DATASETS.items() if squashed.startswith(key)), None)


def _alias_datasets(alias):
    """Dataset ids of an alias such as "sports1m_kinetics400" (pre-training first)."""
    return [DATASETS[part][0] for part in str(alias).split("_") if part in DATASETS]


def _license(text, link):
    """The Hub's license fields for a license text such as "BSD-3-Clause (torchvision); ..."."""
    if not text:
        return {"license": "unknown"}  # the Hub's identifier for "no license stated"
    named = [hub for spdx, hub in LICENSES.items() if re.search(rf"(?<![\w.-]){re.escape(spdx)}(?![\w.-])", text)]
    if len(named) == 1:
        return {"license": named[0]}
    # Several named (e.g. MIT conversion code of weights under other terms) or none the Hub
    # knows: "other", named after the source's repo and linked to it; the body quotes the text.
    repo = re.match(r"https://github\.com/[^/]+/([^/]+)", link or "")
    if not repo:
        return {"license": "other", "license_name": "see-model-card"}
    return {"license": "other", "license_name": repo.group(1).lower(), "license_link": repo.group(0)}


def _facts(config, metadata, entry, repo_id):
    """What the card says, from the manifest entry first, then metadata.json."""
    arch = config["architecture"]
    source = metadata.get("source")
    source_text, source_url = (source.get("description"), source.get("url")) if isinstance(source, dict) \
        else (source, None)
    trained_from = metadata.get("trained_from")
    base = _base_entry(trained_from, arch) if isinstance(trained_from, str) and arch else None
    base_model = None
    if isinstance(trained_from, str) and trained_from.startswith("hf://"):
        base_model = trained_from[len("hf://"):].partition("@")[0]
    elif base and base.get("hub"):
        base_model = base["hub"]["repo"]

    datasets = []
    if entry:
        for alias in entry.get("aliases", ()):
            datasets += _alias_datasets(alias)
    tuned_on = metadata.get("dataset")
    if isinstance(tuned_on, str) and tuned_on != "folder":  # "folder": the user's own videos
        datasets.append((_dataset(tuned_on) or (tuned_on,))[0])
    if base:  # pre-trained on what its alias names
        aliases = base.get("aliases", ())
        datasets += _alias_datasets(trained_from if trained_from in aliases else next(iter(aliases), ""))
    elif trained_from in _aliases():  # an alias with no entry for this network
        datasets += _alias_datasets(trained_from)

    license_text = entry.get("license") or metadata.get("license")
    if not license_text and base:
        license_text = f"{base['license']} (the terms of {base['name']}, the weights it was fine-tuned from)"
    if entry:
        source_text, source_url = entry.get("source"), entry["origin"]["url"]
    elif base:
        source_url = base["origin"]["url"]
    accuracy = entry.get("accuracy") or metadata.get("accuracy")
    accuracy = accuracy if isinstance(accuracy, dict) and isinstance(accuracy.get("dataset"), str) else None
    preprocessing = entry.get("preprocessing") or metadata.get("preprocessing")
    crop = (preprocessing or {}).get("crop") if isinstance(preprocessing, dict) else None
    labels = metadata.get("labels")
    return {
        "name": entry.get("name") or metadata.get("name") or repo_id.split("/")[-1],
        "description": entry.get("description") or metadata.get("description"),
        "frames": config.get("frames") or metadata.get("frames") or entry.get("frames") or DEFAULT_FRAMES,
        "crop": crop if isinstance(crop, int) else DEFAULT_CROP,
        "classes": config["classes"],
        "label_set": entry.get("labels") or metadata.get("label_set"),
        "labels": labels if isinstance(labels, list) else None,
        "preprocessing": preprocessing,
        "accuracy": accuracy,
        "results": {k: accuracy[k] for k in METRICS if accuracy and accuracy.get(k) is not None},
        "datasets": list(dict.fromkeys(datasets)),
        "license_text": license_text,
        "license": _license(license_text, source_url),
        "paper": entry.get("paper") or metadata.get("paper"),
        "source": source_text, "source_url": source_url,
        "format": entry.get("origin", {}).get("format"),
        "trained_from": trained_from, "base_model": base_model,
        "tuned_on": tuned_on, "split": metadata.get("split"),
    }


def _eval_results(facts):
    """The model-index results: one per published metric, on the dataset the manifest names."""
    accuracy = facts["accuracy"]
    if not facts["results"]:
        return []
    dataset_id = (_dataset(accuracy["dataset"]) or (accuracy["dataset"],))[0]
    split = next((s for s in ("validation", "test", "train") if s in accuracy["dataset"].lower()), None)
    protocol = f" ({accuracy['protocol']})" if accuracy.get("protocol") else ""
    return [EvalResult(task_type=TASK, dataset_type=dataset_id, dataset_name=accuracy["dataset"],
                       dataset_split=split, metric_type=METRICS[key][0], metric_value=value,
                       metric_name=f"{key}: {METRICS[key][1]}{protocol}")
            for key, value in facts["results"].items()]


# ---------------------------------------------------------------- the network

def _complexity(preset_dir, config, frames, crop):
    """Parameters and MACs of one frames x crop x crop clip, counted on the built network."""
    shape = (frames, crop, crop, 3)
    if preset_dir is not None:
        model = load_preset(preset_dir, input_shape=shape)
    else:
        settings = {k: v for k, v in config.items() if k not in ("architecture", "frames")}
        model = build_network(config["architecture"], input_shape=shape, **settings)
    return {"params": count_params(model), "all_params": model.count_params(), "macs": count_macs(model),
            "shape": shape}


def _network_text(config):
    arch = config["architecture"]
    if arch is None:
        stem, stages = config["stem"], config["stages"]
        head = "A video ResNet outside the registry (Tran et al., CVPR 2018 builder)"
    else:
        family, depth = MODELS[arch]
        stem, stages = ARCHITECTURES[family]
        kind = "mc" if family.startswith("mc") else "rmc" if family.startswith("rmc") else family
        head = (f"{DISPLAY_NAMES[family]}-{depth} (`{arch}`), a {depth}-layer video ResNet of Tran et al. "
                f"(CVPR 2018) with {FAMILIES[kind]}")
    layers = ", ".join(f"conv{i + 2}_x {CONV_WORDS[c]}" for i, c in enumerate(stages))
    return f"{head}. Stem (conv1): {CONV_WORDS[stem]}; stages: {layers}; global average pool and a linear classifier."


# ---------------------------------------------------------------- the body

def _class_names(facts):
    label_set = facts["label_set"]
    names = f"{(_dataset(label_set) or (None, label_set))[1]} class names" if label_set else "class names"
    if facts["labels"]:
        return f"{names} in `metadata.json`"
    return names if label_set else "no class names stored"


def _body(config, facts, size, repo_id, parity):
    arch = config["architecture"]
    t, h, w, _ = size["shape"]
    lines = [f"# {facts['name']}", ""]
    if facts["description"]:
        lines += [facts["description"], ""]
    lines += [
        ("A keras-r21d preset: Keras 3 weights (`model.weights.h5`), the config that rebuilds the network "
         "(`config.json`) and its metadata (`metadata.json`: class names, clip length, preprocessing)."), "",
        "## Model", "",
        f"- Network: {_network_text(config)}",
        (f"- Parameters: {size['params']:,} trainable (counted as torchvision counts them); "
         f"{size['all_params']:,} with BatchNorm's moving statistics (Keras `model.count_params()`)."),
        (f"- Compute: {size['macs'] / 1e9:.4g} GMACs per {t}x{h}x{w} clip (1 GMAC = 2 GFLOPs; convolutions "
         "and classifier, as torchvision and VMZ count them)."),
        f"- Input: clips of {t} RGB frames of {h}x{w}, channels last: `(batch, {t}, {h}, {w}, 3)`.",
        f"- Classes: {facts['classes']} ({_class_names(facts)}).",
        f"- Paper: {facts['paper'] or PAPER}",
    ]
    if facts["source"] or facts["source_url"]:
        lines.append(f"- Source: {facts['source'] or ''}" + (f" ({facts['source_url']})" if facts["source_url"] else ""))
    if facts["trained_from"] or facts["tuned_on"]:
        tuned_on = (_dataset(facts["tuned_on"]) or (None, facts["tuned_on"]))[1] if facts["tuned_on"] else None
        tuned = f"on {tuned_on}" + (f" (split {facts['split']})" if facts["split"] else "") if tuned_on else ""
        start = f"from `{facts['trained_from']}`" if facts["trained_from"] else "from scratch"
        lines.append(f"- Training: fine-tuned with `keras_r21d.finetune` {start} {tuned}".rstrip() + ".")
    if facts["preprocessing"]:
        p = facts["preprocessing"]
        lines.append(f"- Preprocessing: resize to {p.get('resize')}, center crop {p.get('crop')}, scale to "
                     f"[0, 1], normalise with mean {p.get('mean')} and std {p.get('std')} "
                     "(`keras_r21d.preprocess_input`).")
    lines += ["", "## Accuracy", ""]
    accuracy = facts["accuracy"]
    if facts["results"]:
        lines += ["| dataset | clip@1 | video@1 | video@5 |", "|---|---|---|---|",
                  f"| {accuracy['dataset']} | " + " | ".join(
                      "-" if accuracy.get(k) is None else f"{accuracy[k]}" for k in METRICS) + " |", ""]
        if accuracy.get("protocol"):
            lines += [f"Protocol: {accuracy['protocol']}", ""]
    else:
        lines += ["No accuracy is published for these weights." + (
            f" {accuracy['protocol']}" if accuracy and accuracy.get("protocol") else ""), ""]
    lines += ["## Parity check", ""]
    if parity is not None:
        lines.append(f"Max |logit difference| against the upstream PyTorch checkpoint on the same random "
                     f"{facts['frames']}x112x112 clip: {parity:.2e}.")
    elif facts["format"] == "caffe2":
        lines.append("The Caffe2 release has no upstream PyTorch code to compare logits with; the strict "
                     "conversion (every blob used, every shape checked) is the check.")
    elif facts["format"]:
        lines.append("Logits not compared with the upstream checkpoint for this card; the conversion is strict "
                     "(every tensor used, every shape checked). `tools/convert_presets.py --parity` measures it.")
    elif facts["trained_from"] or facts["tuned_on"]:
        lines.append("Trained with keras-r21d: there is no upstream checkpoint to compare with.")
    else:
        lines.append("Not measured for this card.")
    lines += ["", "## Usage", "", "```python", "import keras_r21d", "",
              f'model = keras_r21d.get_model("{arch}", weights="hf://{repo_id}")' if arch
              else f'model = keras_r21d.load_preset(keras_r21d.presets.resolve_weights("hf://{repo_id}", None))',
              'print(keras_r21d.predict_video(model, "video.mp4"))  # [(class index, name, probability), ...]',
              "```", "", "With the keras-hub API:", "", "```python", "import keras_r21d.hub", "",
              f'classifier = keras_r21d.hub.R21DVideoClassifier.from_preset("hf://{repo_id}")', "```", "",
              "## License", "", facts["license_text"] or "No license is recorded for these weights.", ""]
    return "\n".join(lines)
