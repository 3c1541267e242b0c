import math

import pytest
import torch
from conftest import model_inputs, train_briefly

from diffvqa.model.align import Aligner, corner_error, registration_loss, warp


def test_forward_shapes_and_finite_loss(tiny_model, tiny_batch, tiny_config):
    out = tiny_model(*model_inputs(tiny_batch))
    s = tiny_config.data.image_size
    assert set(out.losses) == {"answer", "registration", "alignment_similarity"}
    assert torch.isfinite(out.loss) and out.loss.ndim == 0
    assert out.theta.shape == (4, 2, 3) and out.aligned_main.shape == (4, 1, s, s)
    assert out.features.shape == (8, tiny_config.model.encoder_hidden_sizes[-1], 4, 4)
    # an untrained model is near-uniform over the vocabulary
    assert abs(out.losses["answer"].item() - math.log(len(tiny_model.tokenizer))) < 1.0


def test_every_parameter_gets_a_gradient(tiny_model, tiny_batch):
    # At step 0 the aligner's head is zero, so its trunk's gradient is exactly zero by construction; give the
    # head small weights first so every path is live, as it is after the first optimiser step.
    with torch.no_grad():
        tiny_model.aligner.head.weight.normal_(0, 1e-2)
    tiny_model(*model_inputs(tiny_batch)).loss.backward()
    dead = [
        n for n, p in tiny_model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    assert dead == []


def test_aligner_is_identity_at_init(tiny_model, tiny_batch):
    out = tiny_model.align(tiny_batch["main"], tiny_batch["ref"])
    assert torch.equal(out.theta, torch.eye(2, 3).expand(4, 2, 3))
    assert (out.aligned - tiny_batch["main"]).abs().max() < 1e-6
    assert out.reg_loss.item() == 0.0


def test_registration_loss_terms():
    theta = torch.tensor([[[1.1, 0.0, 0.2], [0.0, 1.0, 0.0]]])
    # ||Θ-I||² = 0.01 + 0.04, (det-1)² = 0.01, ||t||² = 0.04
    assert registration_loss(theta, (1.0, 0.0, 0.0)).item() == pytest.approx(0.05)
    assert registration_loss(theta, (0.0, 1.0, 0.0)).item() == pytest.approx(0.01)
    assert registration_loss(theta, (0.0, 0.0, 1.0)).item() == pytest.approx(0.04)


def _blobs(size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    image = torch.zeros(size, size)
    for _ in range(6):
        cx, cy = (torch.rand(2, generator=g) * 1.2 - 0.6).tolist()
        sigma = 0.1 + 0.15 * torch.rand(1, generator=g).item()
        image += torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    return (image / image.max())[None, None]


@pytest.mark.parametrize("align_corners", [False, True])
def test_warp_direction_recovers_known_transform(align_corners):
    """ref = main pulled through a known Θ*; optimising Θ alone so warp(main, Θ) matches ref recovers Θ*."""
    size = 64
    angle, scale, shift = math.radians(4.0), 1.04, (0.05, -0.03)
    true = torch.tensor(
        [
            [
                [scale * math.cos(angle), -scale * math.sin(angle), shift[0]],
                [scale * math.sin(angle), scale * math.cos(angle), shift[1]],
            ]
        ]
    )
    main = _blobs(size)
    ref = warp(main, true, align_corners)
    theta = torch.eye(2, 3)[None].clone().requires_grad_(True)
    optimiser = torch.optim.Adam([theta], lr=0.01)
    for _ in range(500):
        optimiser.zero_grad()
        loss = (warp(main, theta, align_corners) - ref).pow(2).mean()
        loss.backward()
        optimiser.step()
    before = corner_error(torch.eye(2, 3)[None], true, size, align_corners).item()
    after = corner_error(theta.detach(), true, size, align_corners).item()
    assert before > 3.0 and after < 1.0, (before, after)


def test_aligner_learns_a_shift():
    """The aligner's CNN, trained on the pair alone, moves Θ toward the true transform (gradient path works)."""
    torch.manual_seed(0)
    main = _blobs(64).repeat(8, 1, 1, 1)
    true = torch.tensor([[1.0, 0.0, 0.08], [0.0, 1.0, -0.06]]).expand(8, 2, 3)
    ref = warp(main, true, False)
    aligner = Aligner(input_size=32, channels=8)
    optimiser = torch.optim.Adam(aligner.parameters(), lr=3e-3)
    for _ in range(500):
        optimiser.zero_grad()
        out = aligner(main, ref)
        ((out.aligned - ref).pow(2).mean() + out.reg_loss).backward()
        optimiser.step()
    assert corner_error(aligner(main, ref).theta.detach(), true, 64, False).mean() < 1.0


def _generate(model, batch, use_cache):
    model.eval()
    features = model.encode(batch["main"], batch["ref"])
    return model.generate_from_features(
        features, batch["question_ids"], batch["question_mask"], use_cache=use_cache, keep_scores=True
    )


def test_cached_and_uncached_generation_agree_on_a_padded_batch(tiny_model, tiny_batch):
    # A briefly trained model produces varied, multi-token answers (a random one says <eos> at once).
    train_briefly(tiny_model, tiny_batch, steps=30)
    text_cached, cached = _generate(tiny_model, tiny_batch, use_cache=True)
    text_plain, plain = _generate(tiny_model, tiny_batch, use_cache=False)
    assert torch.equal(cached.ids, plain.ids) and text_cached == text_plain
    assert cached.ids.shape[1] > 3  # several decoding steps were compared
    assert len(cached.scores) == len(plain.scores) == cached.ids.shape[1]
    for a, b in zip(cached.scores, plain.scores, strict=True):
        assert (a - b).abs().max() < 1e-5
    # and batching with right padding changes nothing: each row alone gives the same answer
    for i in range(4):
        row = {k: v[i : i + 1] for k, v in tiny_batch.items() if torch.is_tensor(v)}
        row["question_ids"] = row["question_ids"][:, : int(row["question_mask"].sum())]
        row["question_mask"] = row["question_mask"][:, : int(row["question_mask"].sum())]
        alone, _ = _generate(tiny_model, row, use_cache=True)
        assert alone[0] == text_cached[i]


def test_sequence_too_long_for_positions(tiny_config, tokenizer):
    from diffvqa.model.vqa import DiffVQA

    tiny_config.model.decoder_positions = 40
    with pytest.raises(ValueError, match="decoder_positions"):
        DiffVQA(tiny_config, tokenizer)


def test_blind_model_ignores_images(tiny_config, tokenizer, tiny_batch):
    from diffvqa.model.vqa import DiffVQA

    tiny_config.model.blind = True
    torch.manual_seed(0)
    model = DiffVQA(tiny_config, tokenizer).eval()
    a = model(*model_inputs(tiny_batch)).loss
    other = dict(tiny_batch, main=torch.rand_like(tiny_batch["main"]), ref=torch.rand_like(tiny_batch["ref"]))
    assert torch.equal(a, model(*model_inputs(other)).loss)


def test_blind_encoding_of_one_pair_equals_the_whole_batch(tiny_config, tokenizer, tiny_batch):
    """The blind baseline encodes one zero pair and broadcasts it; in train mode too (BatchNorm batch stats)."""
    from diffvqa.model.vqa import DiffVQA

    torch.manual_seed(0)
    seeing = DiffVQA(tiny_config, tokenizer).train()
    tiny_config.model.blind = True
    blind = DiffVQA(tiny_config, tokenizer).train()
    blind.load_state_dict(seeing.state_dict())
    zeros = torch.zeros_like(tiny_batch["main"])
    expected = seeing.encode(zeros, zeros)
    got = blind.encode(zeros, zeros)
    assert got.shape == expected.shape == (8, *expected.shape[1:])
    assert torch.allclose(got, expected, atol=1e-6)
    for a, b in zip(seeing.encoder.buffers(), blind.encoder.buffers(), strict=True):  # running statistics
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


def test_prefix_pooling(tiny_config, tokenizer, tiny_batch):
    from diffvqa.model.decoder import PrefixProjection
    from diffvqa.model.vqa import DiffVQA

    torch.manual_seed(0)
    prefix = PrefixProjection(8, 16, (4, 4), pool=2)
    features = torch.randn(6, 8, 4, 4)
    main, ref = prefix(features)
    assert main.shape == ref.shape == (3, 4, 16)  # 2x2 tokens per image
    pooled = features.reshape(6, 8, 2, 2, 2, 2).mean(dim=(3, 5))  # (2B, C, 2, 2) block means
    expected = torch.einsum("nchw,dc->nhwd", pooled, prefix.project.weight[:, :, 0, 0]) + prefix.project.bias
    expected = (expected + prefix.row + prefix.col).flatten(1, 2)
    assert torch.allclose(main, expected[:3] + prefix.image_type[0], atol=1e-6)
    with pytest.raises(ValueError, match="prefix_pool=3"):
        PrefixProjection(8, 16, (4, 4), pool=3)
    # the model: fewer prefix tokens, Grad-CAM layer (the encoder's maps) unchanged
    tiny_config.model.prefix_pool = 2
    model = DiffVQA(tiny_config, tokenizer)
    out = model(*model_inputs(tiny_batch))
    assert out.features.shape[-2:] == (4, 4) and torch.isfinite(out.loss)
    assert model.prefix(out.features)[0].shape[1] == 4


def _smooth_images(n, size, generator):
    """Gray images with blob structure at several scales (something to register)."""
    import torch.nn.functional as F

    images = torch.zeros(n, 1, size, size)
    for cells in (4, 8, 16):
        noise = torch.rand(n, 1, cells, cells, generator=generator)
        images += F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)
    return (images / 3).clamp(0, 1)


def test_aligner_learns_registration_from_the_similarity_and_stays_alive():
    """Trained by the masked NCC alone on pairs with known shifts, the aligner registers held-out pairs (corner
    error well under the identity's), its Θ varies across pairs, and every trunk unit still responds to the input.
    A dead trunk (constant Θ) or an aligner with no alignment signal fails the first two."""
    from diffvqa.model.content import box_masks

    g = torch.Generator().manual_seed(0)
    size, n = 64, 160
    ref = _smooth_images(n, size, g)
    theta_true = torch.eye(2, 3).repeat(n, 1, 1)
    theta_true[:, :, 2] = (torch.rand(n, 2, generator=g) - 0.5) * 0.16  # shifts up to +-8 % (+-2.6 px)
    theta_true[:, :, :2] += (torch.rand(n, 2, 2, generator=g) - 0.5) * 0.06
    # main = ref moved: warp(main, theta_true) ~ ref  <=>  main = warp(ref, theta_true^-1)
    full = torch.cat([theta_true, torch.tensor([0.0, 0.0, 1.0]).expand(n, 1, 3)], dim=1)
    main = warp(ref, torch.linalg.inv(full)[:, :2], align_corners=False)
    boxes = torch.tensor([[0, 6, size, size - 6]]).repeat(n, 1)  # a letterbox left and right
    ref, main = ref * box_masks(boxes, size), main * box_masks(boxes, size)
    torch.manual_seed(0)
    aligner = Aligner(input_size=size, channels=8, similarity_weight=1.0)
    optimizer = torch.optim.AdamW(aligner.parameters(), lr=3e-3, weight_decay=0.05)
    train, test = slice(0, 128), slice(128, n)
    for _ in range(500):
        idx = torch.randint(0, 128, (32,), generator=g)
        out = aligner(main[train][idx], ref[train][idx], box_masks(boxes[idx], size), box_masks(boxes[idx], size))
        optimizer.zero_grad()
        (out.similarity_loss + out.reg_loss).backward()
        optimizer.step()
    with torch.no_grad():
        theta = aligner.predict_theta(main[test], ref[test])
        units = aligner.trunk[:-2](torch.cat([main[test], ref[test]], dim=1) - 0.5)  # (N, C, h, w) before pooling
    after = corner_error(theta, theta_true[test], size, False).mean()
    before = corner_error(torch.eye(2, 3).expand(len(theta), 2, 3), theta_true[test], size, False).mean()
    assert after / before < 0.5
    assert theta.std(dim=0).max() > 0.01  # a per-pair transform, not one constant
    assert (units.flatten(2).std(dim=2).std(dim=0) > 1e-6).all()  # every unit's response varies across pairs


def _statistics(model, prefix=""):
    """(name -> clone) of every BatchNorm running statistic of the encoder, of one set."""
    from diffvqa.model.encoder import STATISTICS

    return {
        f"{n}.{s}": dict(m.named_buffers(recurse=False))[prefix + s].clone()
        for n, m in model.encoder.named_modules()
        if isinstance(m, torch.nn.BatchNorm2d)
        for s in STATISTICS
    }


def test_each_pass_updates_and_reads_its_own_batchnorm_statistics(tiny_model, tiny_batch):
    """Train mode: the unmasked pass moves only the unmasked set, the masked pass only the masked set. Eval mode:
    each pass normalises with its own set (different sets -> different features; equal sets -> equal features)."""
    from diffvqa.model.encoder import MASKED_PREFIX

    main, ref = tiny_batch["main"], tiny_batch["ref"]
    model = tiny_model.train()
    plain0, masked0 = _statistics(model), _statistics(model, MASKED_PREFIX)
    assert all(torch.equal(plain0[k], masked0[k]) for k in plain0)  # both start from the same values
    model.encode(main, ref)
    plain1, masked1 = _statistics(model), _statistics(model, MASKED_PREFIX)
    assert all(torch.equal(masked0[k], masked1[k]) for k in masked0)
    assert sum(not torch.equal(plain0[k], plain1[k]) for k in plain0) == len(plain0)  # every statistic moved
    model.encode(main * 0.3, ref * 0.3, masked=True)  # darker images, as a mask makes them
    plain2, masked2 = _statistics(model), _statistics(model, MASKED_PREFIX)
    assert all(torch.equal(plain1[k], plain2[k]) for k in plain1)
    assert sum(not torch.equal(masked1[k], masked2[k]) for k in masked1) == len(masked1)

    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model.encode(main, ref), model.encode(main, ref, masked=True))
        for m in model.encoder.modules():  # make the sets equal again: the passes must agree
            if isinstance(m, torch.nn.BatchNorm2d):
                m.masked_running_mean.copy_(m.running_mean)
                m.masked_running_var.copy_(m.running_var)
        assert torch.equal(model.encode(main, ref), model.encode(main, ref, masked=True))


def test_the_statistics_trade_back_when_the_masked_pass_fails(tiny_model, tiny_batch):
    from diffvqa.model.encoder import MASKED_PREFIX

    model = tiny_model.train()
    model.encode(tiny_batch["main"], tiny_batch["ref"])  # the sets now differ
    plain, masked = _statistics(model), _statistics(model, MASKED_PREFIX)
    with pytest.raises(RuntimeError):
        model.encode(tiny_batch["main"][:, :, :5], tiny_batch["ref"], masked=True)  # shapes that cannot be stacked
    assert all(torch.equal(plain[k], v) for k, v in _statistics(model).items())
    assert all(torch.equal(masked[k], v) for k, v in _statistics(model, MASKED_PREFIX).items())


def test_a_guided_step_and_two_pass_inference_use_the_masked_statistics_for_the_masked_pass(tiny_model, tiny_batch):
    """Through the saliency loop: a training step moves both sets (pass A the unmasked, pass B the masked) apart;
        in two-pass inference, changing only the masked set changes the masked pass's features and leaves pass 1 (its
    answers, features and the mask) as it was."""
    from diffvqa.model.encoder import MASKED_PREFIX
    from diffvqa.saliency.gradcam import keyword_token_mask
    from diffvqa.saliency.guided import SaliencyGuidedVQA, two_pass_answer
    from diffvqa.saliency.lexicon import lexicon_keyword

    b = tiny_batch
    model = tiny_model.train()
    model.config.saliency.mask_floor = 0.0  # a strong mask: the masked pass sees very different intensities
    keywords = [lexicon_keyword(a, q) for a, q in zip(b["answer"], b["question"], strict=True)]
    keyword_mask = keyword_token_mask(model.tokenizer, b["answer"], keywords, b["answer_ids"])
    SaliencyGuidedVQA(model)(
        b["main"], b["ref"], b["question_ids"], b["question_mask"], b["answer_ids"], b["answer_mask"], keyword_mask
    )
    plain, masked = _statistics(model), _statistics(model, MASKED_PREFIX)
    assert sum(not torch.allclose(plain[k].float(), masked[k].float()) for k in plain if "running" in k) > 0

    model.eval()
    args = (b["main"], b["ref"], b["question_ids"], b["question_mask"], b["question"], lexicon_keyword)
    before = two_pass_answer(model, *args)
    with torch.no_grad():
        masked_before = model.encode(b["main"], b["ref"], masked=True)
        for m in model.encoder.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.masked_running_mean.add_(5.0)  # wreck the masked set only
    after = two_pass_answer(model, *args)
    assert after.preliminary == before.preliminary
    assert torch.equal(after.mask, before.mask)  # the CAM comes from pass 1
    with torch.no_grad():
        assert not torch.allclose(model.encode(b["main"], b["ref"], masked=True), masked_before)
        assert torch.equal(model.encode(b["main"], b["ref"]), before.features)
