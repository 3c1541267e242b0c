from pathlib import Path

import pytest
import torch
from conftest import run_torchrun, train_briefly

from diffvqa.saliency.gradcam import keyword_token_mask
from diffvqa.saliency.guided import SaliencyGuidedVQA, two_pass_answer
from diffvqa.saliency.lexicon import lexicon_keyword
from diffvqa.saliency.mask import MASK_VARIANTS, apply_mask, shared_mask


def test_mask_variants():
    a = torch.tensor([[[[0.2, 0.9]]]])
    b = torch.tensor([[[[0.6, 0.1]]]])
    expected = {
        "max": [0.6, 0.9],
        "mean": [0.4, 0.5],
        "min": [0.2, 0.1],
        "main": [0.2, 0.9],
        "ref": [0.6, 0.1],
        "none": [1.0, 1.0],
    }
    assert set(expected) == set(MASK_VARIANTS)
    for variant, values in expected.items():
        assert torch.allclose(shared_mask(a, b, variant).flatten(), torch.tensor(values))
    with pytest.raises(ValueError, match="max, mean, min, main, ref, none"):
        shared_mask(a, b, "median")


def test_apply_mask_with_floor():
    images = torch.full((1, 1, 1, 2), 0.5)
    mask = torch.tensor([[[[0.0, 1.0]]]])
    assert apply_mask(images, mask).flatten().tolist() == [0.0, 0.5]
    assert apply_mask(images, mask, floor=0.2).flatten().tolist() == pytest.approx([0.1, 0.5])
    with pytest.raises(ValueError, match="mask_floor"):
        apply_mask(images, mask, floor=1.5)


def _keyword_mask(model, batch):
    keywords = [lexicon_keyword(a, q) for a, q in zip(batch["answer"], batch["question"], strict=True)]
    return keyword_token_mask(model.tokenizer, batch["answer"], keywords, batch["answer_ids"])


def _step_inputs(model, batch):
    return (
        batch["main"],
        batch["ref"],
        batch["question_ids"],
        batch["question_mask"],
        batch["answer_ids"],
        batch["answer_mask"],
        _keyword_mask(model, batch),
    )


def test_guided_objective_terms_and_one_backward(tiny_model, tiny_batch):
    guided = SaliencyGuidedVQA(tiny_model)
    out = guided(*_step_inputs(tiny_model, tiny_batch))
    assert set(out.losses) == {"answer_masked", "answer_unmasked", "registration", "alignment_similarity"}
    total = out.losses["answer_masked"] + out.losses["answer_unmasked"] + out.losses["registration"]
    assert torch.allclose(out.loss, total)
    assert out.mask.shape == (4, 1, 64, 64) and not out.mask.requires_grad
    with torch.no_grad():
        tiny_model.aligner.head.weight.normal_(0, 1e-2)  # see test_model: the zero head gates the trunk at step 0
    guided(*_step_inputs(tiny_model, tiny_batch)).loss.backward()
    dead = [n for n, p in guided.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []


def test_unmasked_weight_zero_still_trains_everything(tiny_config, tokenizer, tiny_batch):
    from diffvqa.model.vqa import DiffVQA

    tiny_config.saliency.unmasked_loss_weight = 0.0
    tiny_config.model.align = False
    model = DiffVQA(tiny_config, tokenizer)
    out = SaliencyGuidedVQA(model)(*_step_inputs(model, tiny_batch))
    assert torch.allclose(out.loss, out.losses["answer_masked"])
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())  # DDP-safe: every parameter is used


def test_single_pass_mode(tiny_config, tokenizer, tiny_batch):
    from diffvqa.model.vqa import DiffVQA

    tiny_config.saliency.enabled = False
    torch.manual_seed(0)
    model = DiffVQA(tiny_config, tokenizer)
    out = SaliencyGuidedVQA(model)(*_step_inputs(model, tiny_batch))
    assert set(out.losses) == {"answer_unmasked", "registration", "alignment_similarity"} and out.mask is None
    plain = model(*_step_inputs(model, tiny_batch)[:6])
    assert torch.allclose(out.loss, plain.loss)


def test_unguided_step_is_the_single_pass(tiny_model, tiny_batch):
    """``guided=False`` (the steps before ``saliency.start_step``) is exactly the single pass, every parameter used."""
    guided = SaliencyGuidedVQA(tiny_model)
    out = guided(*_step_inputs(tiny_model, tiny_batch), guided=False)
    assert set(out.losses) == {"answer_unmasked", "registration", "alignment_similarity"} and out.mask is None
    assert torch.allclose(out.loss, tiny_model(*_step_inputs(tiny_model, tiny_batch)[:6]).loss)
    with torch.no_grad():
        tiny_model.aligner.head.weight.normal_(0, 1e-2)
    guided(*_step_inputs(tiny_model, tiny_batch), guided=False).loss.backward()
    assert all(p.grad is not None for p in tiny_model.parameters())


def test_two_pass_outputs(tiny_model, tiny_batch):
    model = tiny_model
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    guided = SaliencyGuidedVQA(model)
    for _ in range(30):
        optimiser.zero_grad()
        guided(*_step_inputs(model, tiny_batch)).loss.backward()
        optimiser.step()
    model.eval()
    b = tiny_batch
    result = two_pass_answer(
        model, b["main"], b["ref"], b["question_ids"], b["question_mask"], b["question"], lexicon_keyword
    )
    assert len(result.preliminary) == len(result.final) == len(result.keywords) == 4
    for cam in (result.cam_main, result.cam_ref, result.mask):
        assert cam.shape == (4, 1, 64, 64) and cam.min() >= 0 and cam.max() <= 1
    assert torch.equal(result.mask, torch.maximum(result.cam_main, result.cam_ref))
    assert result.theta.shape == (4, 2, 3) and result.aligned_main.shape == (4, 1, 64, 64)
    assert result.keywords == [lexicon_keyword(a, q) for a, q in zip(result.preliminary, b["question"], strict=True)]
    single = two_pass_answer(
        model,
        b["main"],
        b["ref"],
        b["question_ids"],
        b["question_mask"],
        b["question"],
        lexicon_keyword,
        single_pass=True,
    )
    assert single.final == single.preliminary == result.preliminary and single.mask is None


def test_two_pass_final_answer_reads_the_masked_images(tiny_model, tiny_batch, monkeypatch):
    """Pass 2 answers from the masked pair: an all-ones mask gives pass 1's answers back; a mask of 1e-30 (black
    images, to float32 precision after normalising) gives the answers of a zero image pair; an all-zero mask falls
    back to all ones and is flagged. (Both passes normalise with the same BatchNorm statistics here, so that only
    the images differ between them: the masked pass's own set is tested in test_model.)"""
    import diffvqa.saliency.guided as guided_module

    train_briefly(tiny_model, tiny_batch, steps=30)  # varied, multi-token answers
    model, b = tiny_model.eval(), tiny_batch
    with torch.no_grad():
        for m in model.encoder.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.masked_running_mean.copy_(m.running_mean)
                m.masked_running_var.copy_(m.running_var)
    args = (model, b["main"], b["ref"], b["question_ids"], b["question_mask"], b["question"], lexicon_keyword)
    model.config.saliency.mask = "none"
    unmasked = two_pass_answer(*args)
    assert torch.equal(unmasked.mask, torch.ones_like(unmasked.mask)) and unmasked.final == unmasked.preliminary
    monkeypatch.setattr(guided_module, "shared_mask", lambda cam_main, cam_ref, variant: torch.zeros_like(cam_main))
    empty = two_pass_answer(*args)
    assert empty.empty_mask.all() and torch.equal(empty.mask, torch.ones_like(empty.mask))
    assert empty.final == unmasked.preliminary
    assert not unmasked.empty_mask.any()
    black = lambda cam_main, cam_ref, variant: torch.full_like(cam_main, 1e-30)  # noqa: E731
    monkeypatch.setattr(guided_module, "shared_mask", black)
    blacked = two_pass_answer(*args)
    zeros = torch.zeros_like(b["main"])
    with torch.no_grad():
        features = model.encode(zeros, zeros, masked=True)
        expected, _ = model.generate_from_features(features, b["question_ids"], b["question_mask"])
    assert blacked.preliminary == unmasked.preliminary and blacked.final == expected
    assert expected != unmasked.preliminary  # the two checks tell the images apart


def test_guided_objective_overfits_a_fixed_batch(tiny_model, tiny_batch):
    torch.manual_seed(0)
    guided = SaliencyGuidedVQA(tiny_model)
    optimiser = torch.optim.AdamW(guided.parameters(), lr=3e-3)
    inputs = _step_inputs(tiny_model, tiny_batch)
    losses = []
    for _ in range(100):
        optimiser.zero_grad()
        out = guided(*inputs)
        out.loss.backward()
        optimiser.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])
    assert out.losses["answer_masked"].item() < 0.2 * losses[0]


def test_ddp_two_processes_keep_parameters_identical(tmp_path):
    """torchrun --nproc_per_node=2 (gloo, CPU): 3 steps of the guided objective under DDP without
    find_unused_parameters; the ranks see different data and must end with identical parameters."""
    worker = Path(__file__).parent / "support" / "ddp_guided_worker.py"
    run_torchrun([worker, tmp_path])
    report = (tmp_path / "ddp_report.txt").read_text().split()
    assert report[0] == "identical" and float(report[1]) == 0.0 and int(report[2]) == 3
    # the BatchNorm statistics of both passes: the same on every rank, and the two sets apart
    assert float(report[3]) == 0.0 and float(report[4]) > 0.0


@pytest.mark.parametrize("method", ["hirescam", "change_gated"])
def test_cam_variants_train_and_infer(tiny_model, tiny_batch, method):
    """The departures behind saliency.cam_method run in the training step (every parameter used) and in two-pass
    inference, with content boxes: masks in [0, 1] and zero in the letterbox."""
    tiny_model.config.saliency.cam_method = method
    boxes = torch.tensor([[0, 8, 64, 56]] * 4)  # letterboxed left and right
    out = SaliencyGuidedVQA(tiny_model)(*_step_inputs(tiny_model, tiny_batch), main_box=boxes, ref_box=boxes)
    out.loss.backward()
    assert all(p.grad is not None for p in tiny_model.parameters())
    assert out.mask.min() >= 0 and out.mask.max() <= 1
    b = tiny_batch
    result = two_pass_answer(tiny_model.eval(), b["main"], b["ref"], b["question_ids"], b["question_mask"],
                             b["question"], lexicon_keyword, main_box=boxes, ref_box=boxes)  # fmt: skip
    keep = ~result.empty_mask  # an all-zero map falls back to all ones (no masking)
    assert result.mask[keep][..., :6].abs().max() == 0 and result.mask[keep][..., 58:].abs().max() == 0


def test_the_cam_on_the_prefix_grid_trains_and_infers(tiny_config, tokenizer, tiny_batch):
    """saliency.cam_grid=prefix with model.prefix_pool=2: the training step uses every parameter and two-pass
    inference makes masks in [0, 1] from the 2 x 2 grid of pooled cells (flat around each pooled cell's centre)."""
    from diffvqa.model.vqa import DiffVQA

    tiny_config.model.prefix_pool = 2
    tiny_config.saliency.cam_grid = "prefix"
    torch.manual_seed(0)
    model = DiffVQA(tiny_config, tokenizer)
    out = SaliencyGuidedVQA(model)(*_step_inputs(model, tiny_batch))
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    b = tiny_batch
    result = two_pass_answer(model.eval(), b["main"], b["ref"], b["question_ids"], b["question_mask"], b["question"],
                             lexicon_keyword)  # fmt: skip
    assert result.mask.min() >= 0 and result.mask.max() <= 1
    # pooled cells sit at pixels 24 and 56 of 64 (feature stride 16, pairs of cells): the map is linear between
    # them, so its second difference along a row vanishes between those centres
    row = result.cam_main[:, 0, 40, 24:57]
    assert (row[:, 2:] - 2 * row[:, 1:-1] + row[:, :-2]).abs().max() < 1e-5
