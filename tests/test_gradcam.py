import pytest
import torch
import torch.nn.functional as F
from conftest import train_briefly

from diffvqa.saliency.gradcam import (
    keyword_gradcam,
    keyword_gradcam_from_prompt,
    keyword_token_mask,
    score_selection,
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
    maps = F.interpolate(maps, size=(model.image_size,) * 2, mode="bilinear", align_corners=False)
    maps = maps / (maps.amax(dim=(2, 3), keepdim=True) + 1e-6)
    return maps.chunk(2, dim=0)


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


def test_gradcam_from_kept_prompt_equals_keyword_gradcam(tiny_model, tokenizer, tiny_batch):
    """Two-pass inference's CAM (pass 1's prompt pass kept, only the answer teacher-forced on top) gives
    keyword_gradcam's maps, on a padded batch with keyword and whole-answer rows, without side effects."""
    model, b = train_briefly(tiny_model, tiny_batch), tiny_batch
    model.eval()
    keyword_mask = keyword_token_mask(tokenizer, b["answer"], KEYWORDS, b["answer_ids"])
    answers = (b["answer_ids"], b["answer_mask"], keyword_mask)
    with torch.no_grad():
        features = model.encode(b["main"], b["ref"])
        expected = keyword_gradcam(model, features, b["question_ids"], b["question_mask"], *answers)
        with torch.enable_grad():
            leaf = features.detach().requires_grad_(True)
            prefix = model.prefix(leaf)
        kept = model.decoder.generate(
            *prefix, b["question_ids"], b["question_mask"], max_new_tokens=6, keep_prompt=True
        )
        plain = model.decoder.generate(*model.prefix(features), b["question_ids"], b["question_mask"], max_new_tokens=6)
        assert torch.equal(kept.ids, plain.ids) and plain.prompt is None
        cams = keyword_gradcam_from_prompt(model, leaf, kept.prompt, *answers)
        assert not torch.is_grad_enabled()
    for got, want in zip(cams, expected, strict=True):
        assert got.shape == (4, 1, 64, 64) and not got.requires_grad
        assert (got - want).abs().max() <= 1e-5
    assert all(p.grad is None for p in model.parameters())
