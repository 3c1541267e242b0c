"""Training on a pretrained encoder with its finding head: the auxiliary finding loss, the classifier's map as the
keyword's saliency, and the encoder's own learning rate."""

import json

import pytest
import torch
from safetensors.torch import load_file

from diffvqa.commands.train import make_optimizer, train
from diffvqa.config import apply_overrides, load_config
from diffvqa.errors import UserError
from diffvqa.model.findings import FindingClassifier, save_pretrained_encoder

SHORT = ["train.steps=4", "saliency.start_step=2", "train.eval_every=4", "train.checkpoint_every=4",
         "train.batch_size=4", "train.eval_samples=4", "data.question_types=[difference]"]  # fmt: skip


@pytest.fixture(scope="module")
def pretrained_encoder(tmp_path_factory):
    config = load_config("tiny")
    torch.manual_seed(0)
    classifier = FindingClassifier(config.model, "findings")
    with torch.no_grad():
        classifier.head.linear.weight.normal_()
    return save_pretrained_encoder(classifier, tmp_path_factory.mktemp("pre") / "encoder", config.model, {})


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _head(run):
    state = load_file(str(run / "checkpoints" / "step-0000004" / "model.safetensors"))
    return state["finding_head.linear.weight"]


def test_the_finding_loss_trains_the_head_and_the_classifier_map_guides(phantom_cache, pretrained_encoder, tmp_path):
    head = ["model.finding_head=findings", f"model.encoder_pretrained={pretrained_encoder}"]
    config = load_config("tiny", overrides=[*SHORT, *head, "saliency.cam_source=classifier",
                                            "train.finding_loss_weight=1"])  # fmt: skip
    train(config, phantom_cache, run_dir=tmp_path / "aux", progress=False, device="cpu")
    logged = [r for r in _records(tmp_path / "aux") if "loss/findings" in r]
    assert logged and all(r["loss/findings"] > 0 for r in logged)
    assert any("loss/answer_masked" in r for r in logged)  # the guided steps ran with the classifier's map
    original = load_file(str(pretrained_encoder / "finding_head.safetensors"))["linear.weight"]
    assert not torch.equal(_head(tmp_path / "aux"), original)  # trained by the auxiliary loss

    frozen = load_config("tiny", overrides=[*SHORT, *head, "saliency.cam_source=classifier"])
    train(frozen, phantom_cache, run_dir=tmp_path / "frozen", progress=False, device="cpu")
    assert torch.equal(_head(tmp_path / "frozen"), original)  # no loss of its own: a fixed map
    assert not any("loss/findings" in r for r in _records(tmp_path / "frozen"))


def test_train_says_when_the_encoder_starts_from_random_weights(phantom_cache, pretrained_encoder, tmp_path, capsys):
    # the presets name no encoder directory, so `train --preset small` alone is the from-scratch recipe: said once
    said = "note: the encoder starts from random weights"
    train(load_config("tiny", overrides=SHORT), phantom_cache, run_dir=tmp_path / "a", progress=False, device="cpu")
    assert capsys.readouterr().err.count(said) == 1
    pretrained = load_config("tiny", overrides=[*SHORT, f"model.encoder_pretrained={pretrained_encoder}"])
    train(pretrained, phantom_cache, run_dir=tmp_path / "b", progress=False, device="cpu")
    blind = load_config("tiny", overrides=[*SHORT, "model.blind=true"])
    train(blind, phantom_cache, run_dir=tmp_path / "c", progress=False, device="cpu")
    assert said not in capsys.readouterr().err  # a pretrained encoder, or no image at all: nothing to say


def test_the_finding_loss_needs_labels_in_the_cache(phantom_cache, pretrained_encoder, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(phantom_cache, bare)
    shutil.rmtree(bare / "labels")
    config = load_config("tiny", overrides=[*SHORT, "model.finding_head=findings",
                                            f"model.encoder_pretrained={pretrained_encoder}",
                                            "train.finding_loss_weight=1"])  # fmt: skip
    with pytest.raises(UserError, match="no finding labels"):
        train(config, bare, run_dir=tmp_path / "run", progress=False, device="cpu")
    assert not (tmp_path / "run").exists()  # said before anything was written


def test_encoder_lr_scale(tiny_model):
    config = tiny_model.config
    plain, _ = make_optimizer(tiny_model, config, torch.device("cpu"))
    assert len(plain.param_groups) == 2  # scale 1: the groups (and checkpoints) as before
    scaled, _ = make_optimizer(tiny_model, apply_overrides(config, ["train.encoder_lr_scale=0.1"]), torch.device("cpu"))
    encoder = {id(p) for p in tiny_model.encoder.parameters()}
    for group in scaled.param_groups:
        in_encoder = {id(p) in encoder for p in group["params"]}
        assert len(in_encoder) == 1
        assert group["lr"] == pytest.approx(config.train.lr * (0.1 if in_encoder.pop() else 1.0))
    assert sum(len(g["params"]) for g in scaled.param_groups) == sum(1 for _ in tiny_model.parameters())
    frozen, _ = make_optimizer(tiny_model, apply_overrides(config, ["train.encoder_lr_scale=0"]), torch.device("cpu"))
    assert not any(id(p) in encoder for g in frozen.param_groups for p in g["params"])
    assert not any(p.requires_grad for p in tiny_model.encoder.parameters())


def test_parameter_groups_decay_matrices_but_not_embeddings(tiny_model):
    """The grouping rule `train` and `pretrain` both use: decay on matrices only, never the token / position
    embeddings (the classifier has none). That `pretrain` calls it is not tested here."""
    from diffvqa.commands.train import parameter_groups

    classifier = FindingClassifier(tiny_model.config.model, "findings", load_pretrained=False)
    decay, plain = parameter_groups(classifier, lr=1e-3, weight_decay=0.05)
    assert (decay["weight_decay"], plain["weight_decay"], decay["lr"], plain["lr"]) == (0.05, 0.0, 1e-3, 1e-3)
    assert [id(q) for q in decay["params"]] == [id(q) for q in classifier.parameters() if q.ndim >= 2]
    assert [id(q) for q in plain["params"]] == [id(q) for q in classifier.parameters() if q.ndim < 2]
    embeddings = [n for n, q in tiny_model.named_parameters() if q.ndim >= 2 and ("wte" in n or "wpe" in n)]
    assert embeddings  # the VQA model's token / position embeddings are matrices that are not decayed
    undecayed = {id(q) for g in parameter_groups(tiny_model, 1e-3, 0.05) if g["weight_decay"] == 0 for q in g["params"]}
    assert all(id(q) in undecayed for n, q in tiny_model.named_parameters() if n in embeddings)


def test_a_frozen_encoder_without_aligner_still_guides(phantom_cache, tmp_path):
    config = load_config("tiny", overrides=[*SHORT, "train.encoder_lr_scale=0", "model.align=false"])
    train(config, phantom_cache, run_dir=tmp_path / "run", progress=False, device="cpu")
    assert any("loss/answer_masked" in r for r in _records(tmp_path / "run"))


@pytest.mark.parametrize("images", ["reference", "both"])
def test_the_finding_loss_trains_the_aligner_only_with_both_images(tiny_config, tokenizer, tiny_batch, images):
    from diffvqa.model.vqa import DiffVQA
    from diffvqa.saliency.guided import SaliencyGuidedVQA

    config = apply_overrides(tiny_config, ["model.finding_head=findings", "train.finding_loss_weight=1",
                                           f"train.finding_loss_images={images}"])  # fmt: skip
    torch.manual_seed(0)
    model = DiffVQA(config, tokenizer)
    b, k = len(tiny_batch["answer"]), len(model.finding_head.names)
    targets, mask = torch.randint(0, 2, (2 * b, k)).float(), torch.ones(2 * b, k)
    keyword_mask = torch.zeros_like(tiny_batch["answer_ids"], dtype=torch.bool)
    out = SaliencyGuidedVQA(model)(*[tiny_batch[key] for key in ("main", "ref", "question_ids", "question_mask",
                                                                  "answer_ids", "answer_mask")],
                                   keyword_mask, guided=False, finding_targets=targets, finding_mask=mask,
                                   finding_weight=1.0)  # fmt: skip
    grads = torch.autograd.grad(out.losses["findings"], list(model.aligner.parameters()), allow_unused=True)
    moved = any(g is not None and g.abs().sum() > 0 for g in grads)
    assert moved == (images == "both")


def test_a_finding_head_without_its_encoder_is_refused(phantom_cache, tmp_path):
    config = load_config("tiny", overrides=[*SHORT, "model.finding_head=findings"])
    with pytest.raises(UserError, match="diffvqa pretrain") as caught:
        train(config, phantom_cache, run_dir=tmp_path / "run", progress=False, device="cpu")
    assert "model.finding_head=" in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "run").exists()
