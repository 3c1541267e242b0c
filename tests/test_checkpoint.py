import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffvqa.errors import UserError
from diffvqa.model.checkpoint import load_checkpoint, save_checkpoint


def _logits(model, batch):
    model.eval()
    with torch.no_grad():
        features = model.encode(batch["main"], batch["ref"])
        text = model.decoder.text_batch(
            batch["question_ids"], batch["question_mask"], batch["answer_ids"], batch["answer_mask"]
        )
        hidden = model.decoder.hidden_states(*model.prefix(features), text)
        return model.decoder.gpt2.lm_head(hidden)


def test_save_load_gives_identical_logits(tiny_model, tiny_batch, tmp_path):
    # perturb away from the initialisation so that a load that silently re-initialised would be caught
    with torch.no_grad():
        for p in tiny_model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    save_checkpoint(tiny_model, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert torch.equal(_logits(tiny_model, tiny_batch), _logits(loaded, tiny_batch))
    assert loaded.config == tiny_model.config
    assert loaded.decoder.gpt2.lm_head.weight.data_ptr() == loaded.decoder.gpt2.transformer.wte.weight.data_ptr()


def test_missing_and_unexpected_keys_are_named(tiny_model, tmp_path):
    save_checkpoint(tiny_model, tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    del state["prefix.row"]
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \['prefix\.row'\].*unexpected keys \['extra\.weight'\]"):
        load_checkpoint(tmp_path)


def test_a_config_that_does_not_describe_the_weights_names_the_first_tensor(tiny_model, tmp_path):
    save_checkpoint(tiny_model, tmp_path)
    values = json.loads((tmp_path / "config.json").read_text())
    values["model"]["encoder_hidden_sizes"] = [8, 16, 48]  # the last stage wider than the weights
    (tmp_path / "config.json").write_text(json.dumps(values))
    expected = dict(tiny_model.state_dict())
    with pytest.raises(UserError) as error:
        load_checkpoint(tmp_path)
    message = str(error.value)
    first = message.split("tensor '")[1].split("'")[0]
    # the first tensor in the model's order whose shape differs, with the file's and the model's shapes
    assert first.startswith("encoder.resnet.encoder.stages.2.") and first in expected
    assert f"has shape {tuple(expected[first].shape)} but the model built from" in message
    assert "model.safetensors" in message and "config.json expects (" in message


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_weights_file_is_one_user_error(tiny_model, tmp_path, damage):
    save_checkpoint(tiny_model, tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x07" * 100, "empty": b""}[damage])
    with pytest.raises(UserError, match=r"model\.safetensors: not a readable safetensors file .*truncated or corrupt"):
        load_checkpoint(tmp_path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):  # names what a checkpoint holds
        load_checkpoint(tmp_path)


def test_wrappers_are_unwrapped_before_saving(tiny_model, tmp_path):
    compiled = torch.compile(tiny_model)  # compiles lazily: never called here, only wrapped
    save_checkpoint(compiled, tmp_path)
    keys = load_file(str(tmp_path / "model.safetensors")).keys()
    assert not [k for k in keys if k.startswith(("module.", "_orig_mod."))]
    load_checkpoint(tmp_path)


def test_pretrained_weights_load_from_local_directories(tiny_config, gpt2_dir, tmp_path):
    """The paper path: from_pretrained(local dir) for the ResNet and GPT-2 (with GPT-2's real BPE tokenizer),
    on tiny random models saved here."""
    from transformers import GPT2Config, GPT2LMHeadModel, ResNetModel

    from diffvqa.data.text import load_gpt2_tokenizer
    from diffvqa.model.encoder import resnet_config
    from diffvqa.model.vqa import DiffVQA

    tokenizer = load_gpt2_tokenizer(gpt2_dir)
    tiny_config.model.tokenizer, tiny_config.model.tokenizer_path = "gpt2", str(gpt2_dir)

    m = tiny_config.model
    resnet = ResNetModel(resnet_config(m))
    resnet.save_pretrained(tmp_path / "resnet")
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=50257,
            n_positions=m.decoder_positions,
            n_embd=m.decoder_width,
            n_layer=m.decoder_layers,
            n_head=m.decoder_heads,
        )
    )
    gpt2.save_pretrained(tmp_path / "gpt2")
    m.encoder_pretrained, m.decoder_pretrained = str(tmp_path / "resnet"), str(tmp_path / "gpt2")
    model = DiffVQA(tiny_config, tokenizer)
    assert torch.equal(
        model.encoder.resnet.embedder.embedder.convolution.weight, resnet.embedder.embedder.convolution.weight
    )
    assert torch.equal(model.decoder.gpt2.transformer.h[0].attn.c_attn.weight, gpt2.transformer.h[0].attn.c_attn.weight)
    # the pretrained vocabulary keeps its rows; our special tokens get new ones
    wte = model.decoder.gpt2.transformer.wte.weight
    assert wte.shape[0] == len(tokenizer) == 50264 and torch.equal(wte[:50257], gpt2.transformer.wte.weight)
    # a checkpoint of it rebuilds without the pretrained directories
    save_checkpoint(model, tmp_path / "ckpt")
    (tmp_path / "resnet" / "config.json").unlink()
    load_checkpoint(tmp_path / "ckpt")


def test_pretrained_decoder_needs_its_tokenizer(tiny_config, tokenizer, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from diffvqa.model.vqa import DiffVQA

    m = tiny_config.model
    GPT2LMHeadModel(
        GPT2Config(
            vocab_size=300,
            n_positions=m.decoder_positions,
            n_embd=m.decoder_width,
            n_layer=m.decoder_layers,
            n_head=m.decoder_heads,
        )
    ).save_pretrained(tmp_path)
    m.decoder_pretrained = str(tmp_path)
    with pytest.raises(ValueError, match="tokenizer=gpt2"):
        DiffVQA(tiny_config, tokenizer)


def test_pretrained_architecture_mismatch_is_named(tiny_config, tokenizer, tmp_path):
    from transformers import ResNetConfig, ResNetModel

    from diffvqa.model.vqa import DiffVQA

    ResNetModel(
        ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8, 16, 64], depths=[1, 1, 1], layer_type="basic")
    ).save_pretrained(tmp_path)
    tiny_config.model.encoder_pretrained = str(tmp_path)
    with pytest.raises(ValueError, match="hidden_sizes"):
        DiffVQA(tiny_config, tokenizer)
    tiny_config.model.encoder_pretrained = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        DiffVQA(tiny_config, tokenizer)


def test_import_is_lazy():
    code = (
        "import sys, diffvqa, diffvqa.config, diffvqa.cli, diffvqa.model.vqa, diffvqa.model.checkpoint\n"
        "heavy = ('diffvqa.commands.train', 'diffvqa.commands.evaluate', 'pycocoevalcap', 'pydicom')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    light = "import sys, diffvqa, diffvqa.config, diffvqa.cli; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", light], check=True)


def test_both_sets_of_batchnorm_statistics_round_trip_with_the_format_version(tiny_model, tiny_batch, tmp_path):
    from safetensors import safe_open

    from diffvqa.model.checkpoint import FORMAT_KEY, FORMAT_VERSION

    tiny_model.train()
    tiny_model.encode(tiny_batch["main"], tiny_batch["ref"])
    tiny_model.encode(tiny_batch["main"] * 0.5, tiny_batch["ref"] * 0.5, masked=True)
    save_checkpoint(tiny_model, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {FORMAT_KEY: str(FORMAT_VERSION)}
    loaded = load_checkpoint(tmp_path).eval()
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    tiny_model.eval()
    with torch.no_grad():
        for masked in (False, True):
            assert torch.equal(
                tiny_model.encode(tiny_batch["main"], tiny_batch["ref"], masked=masked),
                loaded.encode(tiny_batch["main"], tiny_batch["ref"], masked=masked),
            )


def test_a_format_1_checkpoint_loads_with_its_one_set_for_both_passes_and_says_so(
    tiny_model, tiny_batch, tmp_path, capsys
):
    """A checkpoint written before per-pass statistics (no masked_* buffers, no format in the metadata)."""
    tiny_model.train()
    tiny_model.encode(tiny_batch["main"], tiny_batch["ref"])  # the one set away from its initial values
    save_checkpoint(tiny_model, tmp_path)
    old = {k: v for k, v in load_file(str(tmp_path / "model.safetensors")).items() if ".masked_" not in k}
    save_file(old, str(tmp_path / "model.safetensors"))  # as the old code wrote it: no metadata
    loaded = load_checkpoint(tmp_path).eval()
    note = capsys.readouterr().err
    assert "format-1 checkpoint" in note and str(tmp_path / "model.safetensors") in note
    assert "both passes use its single set of statistics" in note
    state = loaded.state_dict()
    for key in old:
        if key.endswith(("running_mean", "running_var")):
            masked_key = key.rsplit(".", 1)[0] + ".masked_" + key.rsplit(".", 1)[1]
            assert torch.equal(state[masked_key], old[key])
    with torch.no_grad():
        assert torch.equal(
            loaded.encode(tiny_batch["main"], tiny_batch["ref"]),
            loaded.encode(tiny_batch["main"], tiny_batch["ref"], masked=True),
        )


def test_a_checkpoint_from_a_newer_format_is_one_user_error(tiny_model, tmp_path):
    from diffvqa.model.checkpoint import FORMAT_KEY

    save_checkpoint(tiny_model, tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    save_file(state, str(tmp_path / "model.safetensors"), metadata={FORMAT_KEY: "99"})
    with pytest.raises(UserError, match=r"model\.safetensors: checkpoint format 99 was written by a newer diffvqa"):
        load_checkpoint(tmp_path)
