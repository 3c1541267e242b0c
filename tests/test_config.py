import json

import pytest

from diffvqa.config import PRESETS, Config, load_config


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load_and_round_trip(preset, tmp_path):
    config = load_config(preset)
    config.save(tmp_path / "config.json")
    assert Config.load(tmp_path / "config.json") == config


def test_preset_values_differ():
    tiny, small, paper = (load_config(p) for p in PRESETS)
    assert (tiny.data.image_size, small.data.image_size, paper.data.image_size) == (64, 128, 224)
    assert paper.model.encoder_depths == [3, 4, 6, 3] and paper.model.encoder_layer_type == "bottleneck"
    assert paper.model.decoder_width == 768 and paper.model.tokenizer == "gpt2"
    assert paper.train.lr == 1.5e-4 and paper.train.weight_decay == 0.05
    # the paper's recipe: every step guided, the plain M * I mask, one prefix token per feature-map cell
    assert (paper.saliency.start_step, paper.saliency.mask_floor, paper.model.prefix_pool) == (0, 0.0, 1)
    # ... the aligner learns through the answer loss only, and the CAM is the paper's Grad-CAM
    assert (paper.model.align_similarity, paper.saliency.cam_method) == (0.0, "gradcam")
    assert small.model.align_similarity > 0 and small.saliency.cam_method == "change_gated"  # the demo's departures
    # the CPU demo's departures from it (README "What the demo shows")
    assert (small.saliency.start_step, small.saliency.mask_floor, small.model.prefix_pool) == (900, 0.5, 2)


def test_overrides_are_typed():
    config = load_config(
        "tiny",
        overrides=[
            "train.lr=3e-4",
            "saliency.mask=mean",
            "model.align=false",
            "model.encoder_depths=[2, 2, 2]",
            "model.align_max_delta=1",
        ],
    )
    assert config.train.lr == 3e-4 and isinstance(config.train.lr, float)
    assert config.saliency.mask == "mean" and config.model.align is False
    assert config.model.encoder_depths == [2, 2, 2]
    assert config.model.align_max_delta == 1.0 and isinstance(config.model.align_max_delta, float)


@pytest.mark.parametrize(
    "override, named",
    [
        ("train.lrr=1", "train.lrr"),
        ("trian.lr=1", "trian"),
        ("train.steps=abc", "train.steps"),
        ("train.steps=1.5", "train.steps"),
        ("model.align=3", "model.align"),
        ("model.encoder_depths=[1, x]", "model.encoder_depths[1]"),
        ("model=3", "model"),
        ("train.lr", "train.lr"),
    ],
)
def test_bad_override_names_the_key(override, named):
    with pytest.raises(ValueError, match=named.replace("[", r"\[").replace("]", r"\]")):
        load_config("tiny", overrides=[override])


def test_yaml_file_with_its_own_preset(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: paper\ntrain:\n  steps: 7\n")
    config = load_config("tiny", file=path, overrides=["train.batch_size=3"])
    assert config.data.image_size == 224 and config.train.steps == 7 and config.train.batch_size == 3


def test_bad_yaml_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("saliency:\n  masks: max\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*saliency\.masks"):
        load_config("tiny", file=path)


def test_unknown_preset():
    with pytest.raises(ValueError, match="tiny, small, paper"):
        load_config("huge")


def test_config_json_with_unknown_key(tmp_path):
    values = load_config("tiny").to_dict()
    values["model"]["encoder_depth"] = 3
    (tmp_path / "config.json").write_text(json.dumps(values))
    with pytest.raises(ValueError, match="model.encoder_depth"):
        Config.load(tmp_path / "config.json")
