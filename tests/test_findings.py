"""The finding head: its class activation map is the Grad-CAM of its logit, the classifier's map replaces the
decoder's where the keyword has a label, and a pretrained encoder travels with its head."""

import pytest
import torch
from transformers import ResNetModel

from diffvqa.config import apply_overrides
from diffvqa.errors import UserError
from diffvqa.model.findings import (
    FindingClassifier,
    FindingHead,
    finding_loss,
    head_info,
    load_head,
    save_pretrained_encoder,
)
from diffvqa.model.vqa import DiffVQA
from diffvqa.saliency.gradcam import (
    cams_from_score,
    classifier_cams,
    keyword_label_indices,
    merge_cams,
    upsample_cells,
)


def test_head_map_is_the_grad_cam_of_its_logit():
    torch.manual_seed(0)
    head = FindingHead(16, "findings")
    features = torch.randn(3, 16, 4, 4).relu().requires_grad_(True)
    labels = torch.tensor([0, 4, 2])
    logits = head(features)
    (grads,) = torch.autograd.grad(logits.gather(1, labels[:, None]).sum(), features)
    alpha = grads.mean(dim=(2, 3), keepdim=True)
    grad_cam = (alpha * features).sum(dim=1, keepdim=True).relu()
    cam = head.cams(features.detach(), labels)
    scale = features.shape[2] * features.shape[3]  # the logit's gradient is w / (h w) at every cell
    torch.testing.assert_close(cam / scale, grad_cam, rtol=1e-5, atol=1e-7)


def test_classifier_cams_are_those_of_the_logit_score(tiny_config, tokenizer):
    config = apply_overrides(tiny_config, ["model.finding_head=findings"])
    torch.manual_seed(0)
    model = DiffVQA(config, tokenizer).eval()
    b = 2
    features = torch.randn(2 * b, model.encoder.out_channels, 4, 4).relu()
    labels = torch.tensor([3, 0])
    main, ref = classifier_cams(model, features, labels)
    leaf = features.clone().requires_grad_(True)
    own = model.finding_head(leaf).gather(1, labels.repeat(2)[:, None]).squeeze(1)
    want_main, want_ref = cams_from_score(leaf, own[:b] + own[b:], model.image_size, retain_graph=False)
    torch.testing.assert_close(main, want_main)
    torch.testing.assert_close(ref, want_ref)
    # the head's map is the class activation map (module docstring), normalised per image
    direct = upsample_cells(model.finding_head.cams(features, labels.repeat(2)), model.image_size)
    # (Grad-CAM's maps are 1/(h w) of these, so the normalisation's eps = 1e-6 weighs 16 x more there)
    direct = direct / (direct.amax(dim=(2, 3), keepdim=True) + 16e-6)
    torch.testing.assert_close(torch.cat([main, ref]), direct, rtol=1e-5, atol=1e-6)
    assert not any(p.grad is not None for p in model.parameters())  # no side effects on parameters


def test_keyword_labels_and_merge(tiny_config, tokenizer):
    config = apply_overrides(tiny_config, ["model.finding_head=chexpert"])
    model = DiffVQA(config, tokenizer)
    names = model.finding_head.names
    labels = keyword_label_indices(model, ["vascular congestion", "scoliosis", "", "pleural effusion"])
    assert labels.tolist() == [names.index("Edema"), -1, -1, names.index("Pleural Effusion")]
    ones, zeros = torch.ones(4, 1, 8, 8), torch.zeros(4, 1, 8, 8)
    main, ref = merge_cams((ones, ones), (zeros, zeros), labels >= 0)
    assert main[:, 0, 0, 0].tolist() == [1.0, 0.0, 0.0, 1.0] and torch.equal(main, ref)


def test_finding_loss_is_masked():
    logits = torch.tensor([[2.0, -1.0], [0.0, 5.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([2.0, 5.0]), torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(finding_loss(logits, targets, mask), expected)
    assert finding_loss(logits, targets, torch.zeros_like(mask)).item() == 0.0


def test_pretrained_encoder_loads_unchanged_and_carries_its_head(tiny_config, tokenizer, tmp_path):
    torch.manual_seed(0)
    classifier = FindingClassifier(tiny_config.model, "findings")
    with torch.no_grad():
        classifier.head.linear.weight.normal_()
    directory = save_pretrained_encoder(classifier, tmp_path / "encoder", tiny_config.model, {"step": 3})
    resnet = ResNetModel.from_pretrained(directory)  # the plain transformers loader takes it as it is
    plain = {k: v for k, v in classifier.encoder.resnet.state_dict().items() if "masked_" not in k}
    for key, value in resnet.state_dict().items():
        torch.testing.assert_close(value, plain[key])
    assert head_info(directory)["label_set"] == "findings" and head_info(directory)["step"] == 3

    config = apply_overrides(tiny_config, [f"model.encoder_pretrained={directory}", "model.finding_head=findings"])
    model = DiffVQA(config, tokenizer)
    torch.testing.assert_close(model.finding_head.linear.weight, classifier.head.linear.weight)
    images = torch.rand(2, 1, tiny_config.data.image_size, tiny_config.data.image_size)
    model.eval(), classifier.eval()
    torch.testing.assert_close(model.encoder.features(images), classifier.encoder.features(images))

    with pytest.raises(UserError, match="model.finding_head=findings"):
        load_head(FindingHead(classifier.encoder.out_channels, "chexpert"), directory)
    wrong = apply_overrides(
        tiny_config, [f"model.encoder_pretrained={directory}", "model.encoder_hidden_sizes=[8,16,64]"]
    )
    with pytest.raises(UserError, match="hidden_sizes"):
        DiffVQA(wrong, tokenizer)


def test_a_head_is_required_by_its_levers(tiny_config):
    with pytest.raises(UserError, match="model.finding_head"):
        apply_overrides(tiny_config, ["saliency.cam_source=classifier"])
    with pytest.raises(UserError, match="model.finding_head"):
        apply_overrides(tiny_config, ["train.finding_loss_weight=1"])
