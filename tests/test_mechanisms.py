"""The mechanism tally's keyword conditioning (diffvqa.metrics.mechanisms): which maps it scores, which pairs, the
interval — on a hand-built batch whose per-keyword CAMs are known."""

import pytest
import torch

import diffvqa.saliency.keyword_cams as keyword_cams  # where the tally's extra Grad-CAMs are computed
from diffvqa.data.dataset import pad_token_ids
from diffvqa.metrics.mechanisms import MechanismTally
from diffvqa.saliency.guided import two_pass_answer
from diffvqa.saliency.lexicon import lexicon_keyword

ANSWER = "the main image has additional findings of pleural effusion, and edema than the reference image. "


def _region(y0, y1, x0, x1, size=64):
    r = torch.zeros(size, size)
    r[y0:y1, x0:x1] = 1
    return r


def _batch(tiny_model, regions_per_row):
    """Difference questions about two changes each; ``regions_per_row`` gives (effusion, edema) regions."""
    n, size = len(regions_per_row), tiny_model.image_size
    g = torch.Generator().manual_seed(0)
    questions = ["what has changed compared to the reference image?"] * n
    q_ids, q_mask = pad_token_ids(tiny_model.tokenizer, questions, 20)
    changes = [[{"name": "pleural effusion", "mask": a}, {"name": "edema", "mask": b}] for a, b in regions_per_row]
    return {
        "main": torch.rand(n, 1, size, size, generator=g),
        "ref": torch.rand(n, 1, size, size, generator=g),
        "question": questions,
        "answer": [ANSWER] * n,
        "question_type": ["difference"] * n,
        "question_ids": q_ids,
        "question_mask": q_mask,
        "ids": {"study_id": list(range(n)), "ref_id": list(range(100, 100 + n))},
        "truth": {
            "theta": torch.eye(2, 3).repeat(n, 1, 1),
            "change_mask": torch.stack([torch.maximum(a, b) for a, b in regions_per_row])[:, None],
            "changes": changes,
            "keyword": ["pleural effusion"] * n,
        },
    }


@pytest.mark.parametrize("method", ["gradcam", "change_gated"])
def test_keyword_conditioning_scores_the_keyword_maps_of_separated_changes(tiny_model, monkeypatch, method):
    """A CAM that peaks in its own keyword's region scores 1 on every ordered pair; changes closer than one grid
    cell (16 px at S = 64 with 4 x 4 cells) are not scored; the gated map is reported beside, with intervals."""
    tiny_model.eval().config.saliency.cam_method = method
    far = (_region(40, 56, 4, 20), _region(8, 24, 40, 56))  # 20 px apart
    near = (_region(40, 56, 4, 20), _region(40, 56, 28, 44))  # 8 px apart: too close for a 4 x 4 grid
    batch = _batch(tiny_model, [far, near, far])
    result = two_pass_answer(tiny_model, batch["main"], batch["ref"], batch["question_ids"], batch["question_mask"],
                             batch["question"], lexicon_keyword)  # fmt: skip
    keyword_regions = {"pleural effusion": far[0], "edema": far[1]}

    def oracle(model, features, question_ids, question_mask, answer_ids, answer_mask, keyword_mask, *args, **kw):
        assert kw.get("gate") is None  # the keyword's own map: no gate
        rows = answer_ids.shape[0]
        words = [model.tokenizer.decode(answer_ids[i][keyword_mask[i]].tolist()) for i in range(rows)]
        maps = torch.stack([keyword_regions[w] * 0.9 + 0.05 for w in words])[:, None]
        return maps, maps * 0.5

    monkeypatch.setattr(keyword_cams, "keyword_gradcam", oracle)
    tally = MechanismTally(tiny_model, keyword_conditioning=True)
    tally.add(batch, result)
    summary = tally.summary()["keyword_conditioning"]
    assert summary["score"] == 1.0 and summary["ci95"] == [1.0, 1.0]
    assert summary["pairs"] == 4 and summary["questions"] == 2 and summary["min_gap_px"] == 16  # row 1 skipped
    assert ("gated" in summary) == (method == "change_gated")
    if method == "change_gated":
        gated = summary["gated"]
        assert gated["pairs"] == 4 and 0.0 <= gated["ci95"][0] <= gated["score"] <= gated["ci95"][1] <= 1.0


def test_a_map_that_ignores_the_keyword_scores_one_half(tiny_model, monkeypatch):
    tiny_model.eval()
    far = (_region(40, 56, 4, 20), _region(8, 24, 40, 56))
    batch = _batch(tiny_model, [far, far])
    result = two_pass_answer(tiny_model, batch["main"], batch["ref"], batch["question_ids"], batch["question_mask"],
                             batch["question"], lexicon_keyword)  # fmt: skip
    same = (far[0] * 0.8 + far[1] * 0.3)[None, None]
    monkeypatch.setattr(
        keyword_cams,
        "keyword_gradcam",
        lambda model, features, *a, **k: (same.expand(features.shape[0] // 2, -1, -1, -1),) * 2,
    )
    tally = MechanismTally(tiny_model, keyword_conditioning=True)
    tally.add(batch, result)
    assert tally.summary()["keyword_conditioning"]["score"] == 0.5


def test_no_keyword_conditioning_without_a_map(tiny_model, monkeypatch):
    """saliency.mask=none masks nothing: its all-ones map would score 0.5 by construction, so the tally reports no
    keyword conditioning at all (the study shows "—"), while the pointing game still scores the flat mask."""
    tiny_model.eval().config.saliency.mask = "none"
    far = (_region(40, 56, 4, 20), _region(8, 24, 40, 56))
    batch = _batch(tiny_model, [far, far])
    result = two_pass_answer(tiny_model, batch["main"], batch["ref"], batch["question_ids"], batch["question_mask"],
                             batch["question"], lexicon_keyword)  # fmt: skip
    monkeypatch.setattr(keyword_cams, "keyword_gradcam", lambda *a, **k: pytest.fail("no CAM should be computed"))
    tally = MechanismTally(tiny_model, keyword_conditioning=True)
    tally.add(batch, result)
    summary = tally.summary()
    assert "keyword_conditioning" not in summary
    assert summary["pointing_game_n"] == 2
