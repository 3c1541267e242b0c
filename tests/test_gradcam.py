import pytest
import torch
from conftest import train_briefly

from diffvqa.saliency.gradcam import (
    cams_from_score,
    gate_cams,
    keyword_gradcam,
    keyword_gradcam_from_prompt,
    keyword_token_mask,
    score_selection,
    upsample_cells,
)

KEYWORDS = ["edema", "", "", "lung opacity"]  # row 4's keyword is absent from its answer -> whole answer


def test_keyword_token_mask(tokenizer, tiny_batch):
    mask = keyword_token_mask(tokenizer, tiny_batch["answer"], KEYWORDS, tiny_batch["answer_ids"])
    ids = tiny_batch["answer_ids"][0][mask[0]].tolist()
    assert tokenizer.decode(ids) == "edema"
    assert not mask[1:].any()
    two_words = keyword_token_mask(
        tokenizer, tiny_batch["answer"], ["pleural effusion", "", "", ""], tiny_batch["answer_ids"]
    )
    assert tokenizer.decode(tiny_batch["answer_ids"][0][two_words[0]].tolist()) == "pleural effusion"


def test_score_selection_falls_back_to_whole_answer(tiny_model, tokenizer, tiny_batch):
    b = tiny_batch
    text = tiny_model.decoder.text_batch(b["question_ids"], b["question_mask"], b["answer_ids"], b["answer_mask"])
    mask = keyword_token_mask(tokenizer, b["answer"], KEYWORDS, b["answer_ids"])
    select = score_selection(text, b["question_mask"], mask)
    assert select[0].sum() == 1 and tokenizer.decode(text.ids[0][select[0]].tolist()) == "edema"
    for row in (1, 2, 3):  # whole answer + <eos>
        assert select[row].sum() == b["answer_mask"][row].sum() + 1


def _captum_maps(model, batch, keyword_mask):
    """captum's LayerGradCam on the encoder's last stage, with the same score: full forward, full LM head."""
    from captum.attr import LayerGradCam

    decoder = model.decoder
    text = decoder.text_batch(batch["question_ids"], batch["question_mask"], batch["answer_ids"], batch["answer_mask"])
    select = score_selection(text, batch["question_mask"], keyword_mask)

    def score(main, ref):
        features = model.encode(main, ref)
        hidden = decoder.hidden_states(*model.prefix(features), text)
        log_probs = torch.log_softmax(decoder.gpt2.lm_head(hidden).float(), dim=-1)  # every position
        prefix_len = hidden.shape[1] - text.ids.shape[1]
        predicted = log_probs[:, prefix_len - 1 : -1].gather(2, text.labels.clamp(min=0)[..., None]).squeeze(2)
        return (predicted * select).sum(dim=1)

    layer = model.encoder.resnet.encoder.stages[-1]
    maps = LayerGradCam(score, layer).attribute((batch["main"], batch["ref"]), relu_attributions=True)
    # captum is the oracle for the cell values (gradients, weights, ReLU); the placement of the cells on the pixel
    # grid is ours, and checked against the network's receptive fields in test_cells_sit_on_their_receptive_fields.
    maps = upsample_cells(maps, model.image_size)
    maps = maps / (maps.amax(dim=(2, 3), keepdim=True) + 1e-6)
    return maps.chunk(2, dim=0)


ENCODERS = {  # preset -> (S, overrides keeping the preset's stride geometry at a small width)
    "tiny": (64, {}),
    "small": (128, {}),
    "paper": (
        224,
        {
            "encoder_hidden_sizes": [16, 32, 64, 128],
            "encoder_depths": [1, 1, 1, 1],
            "encoder_embedding_size": 16,
            "encoder_channels": 1,
        },
    ),
}


@pytest.mark.parametrize("preset", sorted(ENCODERS))
def test_cells_sit_on_their_receptive_fields(preset):
    """The centroid of a central cell's input gradient lies on pixel stride * i (within 1 px), not where a bilinear
    align_corners=False resize would put it (stride * i + (stride - 1) / 2)."""
    from diffvqa.config import load_config
    from diffvqa.model.encoder import ImageEncoder, feature_stride

    config = load_config(preset)
    for key, value in ENCODERS[preset][1].items():
        setattr(config.model, key, value)
    stride = feature_stride(config.model)
    size = 12 * stride  # big enough that the central cell's receptive field is not cut by the border
    i, j = 6, 5
    total = torch.zeros(size, size)
    for seed in range(3):
        torch.manual_seed(seed)
        encoder = ImageEncoder(config.model, load_pretrained=False).eval()
        x = torch.rand(1, 1, size, size, requires_grad=True)
        (grad,) = torch.autograd.grad(encoder.features(x)[0, :, i, j].sum(), x)
        total += grad[0, 0].abs()
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    centroid = torch.stack([(total * ys).sum(), (total * xs).sum()]) / total.sum()
    assert (centroid - torch.tensor([stride * i, stride * j]).float()).abs().max() < 1.0
    old = torch.tensor([stride * i, stride * j]).float() + (stride - 1) / 2
    assert (centroid - old).abs().min() > 3.0


@pytest.mark.parametrize(("size", "cells"), [(64, 4), (128, 8), (128, 16), (224, 7)])
def test_a_hot_cell_lands_on_its_pixel(size, cells):
    """A single hot cell of a synthetic feature map peaks at pixel (stride*i, stride*j), through the whole CAM."""
    stride = size // cells
    for i, j in [(0, 0), (1, cells - 2), (cells // 2, 1), (cells - 1, cells - 1)]:
        features = torch.zeros(2, 3, cells, cells)
        features[:, 1, i, j] = 1.0
        features.requires_grad_(True)
        score = features[:, 1].sum(dim=(1, 2)).view(2, 1).sum(dim=0)  # (B=1,): positive gradient on channel 1
        cam_main, cam_ref = cams_from_score(features, score, size, retain_graph=False)
        for cam in (cam_main, cam_ref):
            peak = int(cam[0, 0].flatten().argmax())
            assert divmod(peak, size) == (stride * i, stride * j)
            assert cam[0, 0, stride * i, stride * j] > 0.99
            if i < cells - 1 and j < cells - 1:  # the map falls to 0 one cell away (bilinear between centres)
                assert cam[0, 0, stride * (i + 1), stride * j] == 0 and cam[0, 0, stride * i, stride * (j + 1)] == 0


def test_cam_is_zero_outside_the_content():
    features = torch.rand(2, 4, 8, 8, requires_grad=True)
    score = (features * torch.randn(2, 4, 8, 8)).sum(dim=(1, 2, 3)).view(2, 1).sum(dim=0)
    content = torch.zeros(2, 1, 128, 128)
    content[:, :, 20:100, 10:128] = 1.0
    for method in ("gradcam", "hirescam"):
        cam_main, cam_ref = cams_from_score(features, score, 128, retain_graph=True, method=method, content=content)
        for cam in (cam_main, cam_ref):
            assert cam[..., :20, :].abs().max() == 0 and cam[..., 100:, :].abs().max() == 0
            assert cam[..., :, :10].abs().max() == 0
            assert cam.amax() > 0.99  # renormalised inside the content


def test_gradcam_equals_captum_layergradcam(tiny_model, tokenizer, tiny_batch):
    model = train_briefly(tiny_model, tiny_batch).eval()
    b = tiny_batch
    keyword_mask = keyword_token_mask(tokenizer, b["answer"], KEYWORDS, b["answer_ids"])
    with torch.no_grad():
        features = model.encode(b["main"], b["ref"])
    ours = keyword_gradcam(
        model, features, b["question_ids"], b["question_mask"], b["answer_ids"], b["answer_mask"], keyword_mask
    )
    theirs = _captum_maps(model, b, keyword_mask)
    for a, c in zip(ours, theirs, strict=True):
        assert a.shape == (4, 1, 64, 64)
        assert a.amax(dim=(2, 3)).min() > 0.99  # every map is non-trivial and normalised
        assert (a - c).abs().max() <= 1e-5


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gradcam_has_no_side_effects(tiny_model, tokenizer, tiny_batch, mode):
    model = tiny_model.train(mode == "train")
    b = tiny_batch
    keyword_mask = keyword_token_mask(tokenizer, b["answer"], KEYWORDS, b["answer_ids"])
    hooks_before = [len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules()]
    with torch.no_grad():  # works under an outer no_grad
        features = model.encode(b["main"], b["ref"])  # (updates BatchNorm statistics in train mode)
        state_before = {k: v.clone() for k, v in model.state_dict().items()}
        cams = keyword_gradcam(
            model, features, b["question_ids"], b["question_mask"], b["answer_ids"], b["answer_mask"], keyword_mask
        )
        assert not torch.is_grad_enabled()  # the outer no_grad is restored
    assert all(p.grad is None for p in model.parameters())
    assert all(m.training == (mode == "train") for m in model.modules())
    assert [len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules()] == hooks_before
    assert all(torch.equal(v, state_before[k]) for k, v in model.state_dict().items())
    assert all(not c.requires_grad and 0 <= c.min() and c.max() <= 1 for c in cams)


def test_cam_step_gives_encoder_no_gradient(tiny_model, tokenizer, tiny_batch):
    """Inside the guided objective the CAM's autograd.grad stops at the feature maps: the encoder gets
    gradients from the losses' backward only (checked by running the CAM step alone)."""
    from diffvqa.saliency.gradcam import cams_from_score, keyword_log_prob

    b = tiny_batch
    model = tiny_model
    features = model.encode(b["main"], b["ref"])  # with graph into the encoder
    text = model.decoder.text_batch(b["question_ids"], b["question_mask"], b["answer_ids"], b["answer_mask"])
    hidden = model.decoder.hidden_states(*model.prefix(features), text)
    select = score_selection(
        text, b["question_mask"], keyword_token_mask(tokenizer, b["answer"], KEYWORDS, b["answer_ids"])
    )
    cam_main, cam_ref = cams_from_score(features, keyword_log_prob(model.decoder, hidden, text, select), 64)
    assert all(p.grad is None for p in model.parameters())
    # the maps are constants for the masked pass: no graph leads back through them into the encoder
    assert not cam_main.requires_grad and cam_main.grad_fn is None and cam_ref.grad_fn is None


def test_change_gated_cams_vanish_where_the_pair_does_not_differ():
    from diffvqa.saliency.mask import registered_difference

    ref = torch.rand(2, 1, 64, 64)
    aligned = ref.clone()
    aligned[:, :, 40:56, 8:24] += 0.5  # the only change
    gate = registered_difference(aligned, ref, smooth=5, erode=0)
    assert gate.amax() == 1.0 and gate[:, :, :30].abs().max() == 0 and gate[:, :, :, 30:].abs().max() == 0
    features = torch.rand(4, 3, 4, 4, requires_grad=True)
    score = (features * torch.rand(4, 3, 4, 4)).sum(dim=(1, 2, 3)).view(2, 2).sum(dim=0)
    plain = cams_from_score(features, score, 64, method="gradcam", retain_graph=True)
    gated = cams_from_score(features, score, 64, method="change_gated", gate=gate, retain_graph=True)
    for p, g in zip(plain, gated, strict=True):
        assert g[:, :, :30].abs().max() == 0 and g.amax() > 0.99  # renormalised inside the changed area
        assert not torch.allclose(p, g)
    # gating afterwards (the keyword-conditioning measurement's gated map) gives the same maps
    for mode in ("image", "pair"):
        plain = cams_from_score(features, score, 64, retain_graph=True, normalize=mode)
        gated = cams_from_score(
            features, score, 64, method="change_gated", gate=gate, retain_graph=True, normalize=mode
        )
        for got, want in zip(gate_cams(*plain, gate, mode), gated, strict=True):
            assert (got - want).abs().max() < 1e-5


def test_pair_normalisation_keeps_the_weaker_visit_weaker():
    from diffvqa.saliency.gradcam import normalize_cams

    cam = torch.zeros(4, 1, 8, 8)  # two pairs: mains (rows 0, 1), then refs (rows 2, 3)
    cam[0, 0, 1, 1], cam[2, 0, 5, 5] = 4.0, 1.0  # pair 0: the main map four times stronger
    cam[1, 0, 2, 2], cam[3, 0, 6, 6] = 0.5, 2.0  # pair 1: the reference stronger
    image = normalize_cams(cam, "image")
    assert image.amax(dim=(1, 2, 3)).tolist() == pytest.approx([1.0] * 4, abs=1e-5)
    pair = normalize_cams(cam, "pair")
    assert pair.amax(dim=(1, 2, 3)).tolist() == pytest.approx([1.0, 0.25, 0.25, 1.0], abs=1e-5)
    with pytest.raises(ValueError, match="cam_normalize"):
        normalize_cams(cam, "global")


def test_the_logit_target_scores_the_keyword_alone():
    """log p(keyword) rises when a competing token's logit falls; the keyword's logit does not."""
    from diffvqa.saliency.gradcam import token_scores

    logits = torch.tensor([[2.0, 1.0, 0.0]], requires_grad=True)
    target = torch.tensor([0])
    (log_prob_grad,) = torch.autograd.grad(token_scores(logits, target, "log_prob").sum(), logits)
    (logit_grad,) = torch.autograd.grad(token_scores(logits, target, "logit").sum(), logits)
    assert (log_prob_grad[0, 1:] < 0).all() and logit_grad[0].tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="cam_target"):
        token_scores(logits, target, "prob")


@pytest.mark.parametrize(
    "normalize, target", [("image", "log_prob"), ("pair", "log_prob"), ("image", "logit"), ("pair", "logit")]
)
def test_gradcam_from_kept_prompt_equals_keyword_gradcam(tiny_model, tokenizer, tiny_batch, normalize, target):
    """Two-pass inference's CAM (pass 1's prompt pass kept, only the answer teacher-forced on top) gives
    keyword_gradcam's maps, on a padded batch with keyword and whole-answer rows, without side effects — for every
    saliency.cam_normalize / cam_target, each of which changes the maps."""
    model, b = train_briefly(tiny_model, tiny_batch), tiny_batch
    model.eval()
    keyword_mask = keyword_token_mask(tokenizer, b["answer"], KEYWORDS, b["answer_ids"])
    answers = (b["answer_ids"], b["answer_mask"], keyword_mask)
    options = {"normalize": normalize, "target": target}
    with torch.no_grad():
        features = model.encode(b["main"], b["ref"])
        default = keyword_gradcam(model, features, b["question_ids"], b["question_mask"], *answers)
        expected = keyword_gradcam(model, features, b["question_ids"], b["question_mask"], *answers, **options)
        with torch.enable_grad():
            leaf = features.detach().requires_grad_(True)
            prefix = model.prefix(leaf)
        kept = model.decoder.generate(
            *prefix, b["question_ids"], b["question_mask"], max_new_tokens=6, keep_prompt=True
        )
        plain = model.decoder.generate(*model.prefix(features), b["question_ids"], b["question_mask"], max_new_tokens=6)
        assert torch.equal(kept.ids, plain.ids) and plain.prompt is None
        cams = keyword_gradcam_from_prompt(model, leaf, kept.prompt, *answers, **options)
        assert not torch.is_grad_enabled()
    for got, want in zip(cams, expected, strict=True):
        assert got.shape == (4, 1, 64, 64) and not got.requires_grad
        assert (got - want).abs().max() <= 1e-5
    assert all(p.grad is None for p in model.parameters())
    changed = any(not torch.allclose(a, c, atol=1e-4) for a, c in zip(default, expected, strict=True))
    assert changed == ((normalize, target) != ("image", "log_prob"))


def test_the_prefix_grid_cam_is_the_block_average_placed_on_the_pooled_cells():
    """saliency.cam_grid=prefix: the CAM of the pooled maps the decoder reads equals the 2 x 2 block average of
    the cell CAM before its ReLU (the gradient is constant over each block), and a hot pooled cell lands on the
    centre of its four feature cells."""
    from diffvqa.saliency.gradcam import cell_cams

    torch.manual_seed(0)
    features = torch.rand(2, 3, 8, 8)
    pooled_grad = torch.randn(2, 3, 4, 4)
    grads = pooled_grad.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3) / 4  # d/dF of a function of P
    for method in ("gradcam", "hirescam"):
        pooled = torch.nn.functional.avg_pool2d(features, 2)
        if method == "gradcam":
            expected = torch.relu((pooled_grad.mean(dim=(2, 3), keepdim=True) * pooled).sum(1, keepdim=True))
        else:
            expected = torch.relu((pooled_grad * pooled).sum(1, keepdim=True))
        # the same map up to the factor k² = 4 the normalisation removes: the pooled gradient is 4 x each cell's
        assert torch.allclose(4 * cell_cams(features, grads, method, pool=2), expected, atol=1e-6)
    hot = torch.zeros(1, 1, 4, 4)
    hot[0, 0, 1, 2] = 1.0
    up = upsample_cells(hot, 128, pool=2)  # feature stride 16: pooled cell (1, 2) centred at pixel (40, 72)
    assert up[0, 0, 40, 72] == 1.0 and up.flatten().argmax().item() == 40 * 128 + 72
    from diffvqa.metrics.pointing import grid_ceiling

    region = torch.zeros(1, 128, 128)
    region[0, 38:43, 70:75] = 1  # holds the pooled cell's centre (40, 72) but no feature-cell centre (16 i)
    assert grid_ceiling(region, 4, pool=2).tolist() == [1.0] and grid_ceiling(region, 8).tolist() == [0.0]
