"""PairQADataset and Collate over a prepared cache of the release fixture."""

from __future__ import annotations

import pickle

import pytest
import torch
from test_cache import write_truth
from test_release import write_release

from diffvqa.data.cache_writer import prepare
from diffvqa.data.dataset import Collate, PairQADataset, texts

SIZE = 32


class FakeTokenizer:
    """The duck type Collate needs: encode(text) -> ids (no special tokens) and pad_id."""

    pad_id = 0

    def encode(self, text: str) -> list[int]:
        return [len(word) + 1 for word in text.split()]


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    release, images = write_release(root / "plain")
    prepare(release, images, root / "plain_cache", size=SIZE, workers=1, progress=False)
    release, images = write_release(root / "truth")
    write_truth(release, images)
    prepare(release, images, root / "truth_cache", size=SIZE, workers=1, progress=False)
    return root / "plain_cache", root / "truth_cache"


def test_sample_keys_shapes_and_dtypes(caches):
    plain, _ = caches
    dataset = PairQADataset(plain, split="train")
    assert len(dataset) == 4
    sample = dataset[0]
    assert set(sample) == {"main", "ref", "main_box", "ref_box", "question", "answer", "question_type", "ids"}
    for key in ("main", "ref"):
        assert sample[key].shape == (1, SIZE, SIZE) and sample[key].dtype == torch.float32
        assert 0 <= sample[key].min() and sample[key].max() <= 1
    assert sample["ids"] == {
        "question_index": 0,
        "subject_id": 10000032,
        "study_id": 53189527,
        "ref_id": 50414267,
        "main_dicom_id": dataset.questions.main_dicom_id[0],
        "ref_dicom_id": dataset.questions.ref_dicom_id[0],
    }
    assert isinstance(sample["question"], str) and sample["question_type"] == "abnormality"
    difference = PairQADataset(plain, split=None, question_types=["difference"])
    assert set(difference.questions.question_type) == {"difference"} and len(difference) == 4
    assert all(a.endswith(". ") or a == "nothing has changed." for a in difference.questions.answer)
    assert texts(plain, "train") == dataset.texts()
    with pytest.raises(ValueError, match="unknown split"):
        PairQADataset(plain, split="valid")


def test_content_boxes_come_from_the_geometry_and_hold_the_pixels(caches):
    plain, _ = caches
    dataset = PairQADataset(plain, split=None)
    shapes = set()
    for i in range(len(dataset)):
        sample = dataset[i]
        for image, box, dicom in (("main", "main_box", "main_dicom_id"), ("ref", "ref_box", "ref_dicom_id")):
            assert sample[box].shape == (4,) and sample[box].dtype == torch.long
            y0, x0, y1, x1 = sample[box].tolist()
            assert (y0, x0, y1, x1) == dataset.cache.geometry(sample["ids"][dicom]).content_box()
            outside = torch.ones(SIZE, SIZE, dtype=torch.bool)
            outside[y0:y1, x0:x1] = False
            assert sample[image][0][outside].eq(0).all()  # the letterbox is black ...
            assert sample[image][0][y0:y1, x0:x1].gt(0).float().mean() > 0.9  # ... the box holds the image
            shapes.add((y1 - y0, x1 - x0))
    assert shapes == {(32, 27), (27, 32)}  # 48 x 40 portraits and a 40 x 48 landscape, fitted into 32 x 32
    batch = Collate()([dataset[i] for i in range(3)])
    assert batch["main_box"].shape == (3, 4) and batch["ref_box"].dtype == torch.long
    assert torch.equal(batch["ref_box"][2], dataset[2]["ref_box"])


def test_truth_in_phantom_caches(caches):
    _, truth_cache = caches
    dataset = PairQADataset(truth_cache, split="train")
    sample = dataset[2]  # question 2: the pair with ground truth
    truth = sample["truth"]
    assert truth["theta"].shape == (2, 3) and truth["theta"].dtype == torch.float32
    assert truth["change_mask"].shape == (1, SIZE, SIZE) and set(truth["change_mask"].unique().tolist()) == {0, 1}
    assert truth["keyword"] == "pneumothorax"
    assert "truth" not in dataset[3]  # a pair without ground truth
    batch = Collate()([dataset[0], dataset[2]])
    assert batch["truth"]["theta"].shape == (2, 2, 3) and batch["truth"]["keyword"] == ["atelectasis", "pneumothorax"]
    assert Collate()([dataset[2], dataset[3]])["truth"] is None


def test_collate_pads_and_truncates(caches):
    plain, _ = caches
    dataset = PairQADataset(plain, split="train")
    samples = [dataset[i] for i in range(3)]
    batch = Collate(FakeTokenizer(), max_question_tokens=4, max_answer_tokens=64)(samples)
    assert batch["main"].shape == (3, 1, SIZE, SIZE) and batch["ref"].shape == (3, 1, SIZE, SIZE)
    assert batch["question"] == [s["question"] for s in samples] and batch["truth"] is None
    assert batch["ids"]["question_index"] == [0, 1, 2]
    tokenizer = FakeTokenizer()
    answers = [tokenizer.encode(s["answer"]) for s in samples]
    longest = max(map(len, answers))
    assert batch["answer_ids"].shape == (3, longest) and batch["answer_ids"].dtype == torch.long
    for row, tokens in enumerate(answers):
        assert batch["answer_ids"][row, : len(tokens)].tolist() == tokens
        assert batch["answer_ids"][row, len(tokens) :].eq(0).all()
        assert batch["answer_mask"][row].tolist() == [1] * len(tokens) + [0] * (longest - len(tokens))
    assert batch["question_ids"].shape == (3, 4) and batch["question_mask"].all()  # truncated to 4
    assert "question_ids" not in Collate()(samples)


def test_pickles_and_loads_with_workers(caches):
    plain, _ = caches
    dataset = PairQADataset(plain, split=None)
    dataset[0]  # opens the memory map in this process ...
    clone = pickle.loads(pickle.dumps(dataset))  # ... which must not travel
    assert clone.cache._images is None
    assert torch.equal(clone[1]["main"], dataset[1]["main"])
    collate = pickle.loads(pickle.dumps(Collate(FakeTokenizer(), 8, 16)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert [len(b["question"]) for b in batches] == [3, 3, 3]  # 9 questions (the fixture release's kept ones)
    assert torch.equal(batches[0]["main"][1], dataset[1]["main"])
    assert torch.equal(batches[2]["ref"][1], dataset[7]["ref"])
