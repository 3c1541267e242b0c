"""The torch side of the data: question/answer samples over a prepared cache, and batch collation.

A sample is one question about one (main, reference) pair; both images come from the cache's memory map.
Samples are dicts with stable keys (:class:`PairQADataset`); :class:`Collate` stacks them and, given a
tokenizer, adds right-padded token ids and masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from diffvqa.config import QUESTION_TYPES
from diffvqa.data.cache_reader import ImageCache
from diffvqa.data.labels import targets as label_targets
from diffvqa.data.regions import question_region, question_side
from diffvqa.data.release import SPLITS, validate_choices

ID_KEYS = ("question_index", "subject_id", "study_id", "ref_id", "main_dicom_id", "ref_dicom_id")


class _Column:
    """A column stored without a Python object per row; ``column[i]`` is a plain Python str or int.

    Integers live in an int64 array; strings as int32 codes into their unique values.
    """

    def __init__(self, values: pd.Series):
        if pd.api.types.is_integer_dtype(values):
            self.codes, self.uniques = values.to_numpy(np.int64), None
        else:
            codes, uniques = pd.factorize(values, sort=False)
            self.codes, self.uniques = codes.astype(np.int32), list(uniques)

    def __getitem__(self, i: int):
        code = self.codes[i]
        return int(code) if self.uniques is None else self.uniques[code]


class PairQADataset(torch.utils.data.Dataset):
    """The questions of a prepared cache (one split, some question types) with their image pairs.

    ``dataset[i]`` is a dict:

    - ``main``, ``ref``: (1, S, S) float32 in [0, 1] (the current and the prior study)
    - ``main_box``, ``ref_box``: (4,) long ``[y0, x0, y1, x1)``, end-exclusive: the part of each S x S frame
      that holds image content, not letterbox padding (:meth:`.Geometry.content_box`, from the cache's stored
      geometry, never from pixel values)
    - ``question``, ``answer`` (verbatim, e.g. with the difference answers' trailing space), ``question_type``: str
    - ``ids``: dict(question_index, subject_id, study_id, ref_id: int; main_dicom_id, ref_dicom_id: str)
    - ``truth`` (only in phantom caches, for pairs with ground truth; for scoring, never for training): dict

      - ``theta`` (2, 3) float32: the ``align_corners=False`` affine that pulls the main image onto the reference
      - ``change_mask`` (1, S, S) float32 in {0, 1}, reference frame: the region the question asks about — for a
        one-lung difference question ("what has changed in the left lung area?") the changes in that lung
        (empty when it did not change), otherwise the pair's whole change mask (:mod:`diffvqa.data.regions`)
      - ``changes``: list of dict(``name`` str, ``side`` str, ``mask`` (S, S) uint8 tensor in {0, 1}, reference
        frame): the changed findings that make up ``change_mask`` — a one-lung question's rows of its side
        ("left" / "right"); otherwise one per finding, a bilateral one's two halves merged (side "both";
        "" for findings without a side). [] without per-finding truth.
      - ``side``: the asked lung for a one-lung difference question ("left" / "right", the patient's), else ""
      - ``per_finding`` bool: the cache has per-finding change regions; False for caches of releases written
        before them: then ``changes`` is [] and a one-lung question's ``change_mask`` is the whole change mask
      - ``keyword`` str: the question's ground-truth keyword

    Safe with DataLoader workers: the cache opens its memory map lazily in each worker.
    """

    def __init__(
        self,
        cache_dir: str | Path,
        split: str | None,
        question_types: Sequence[str] | None = None,
        labels: tuple[str, str] | None = None,
    ):
        self.cache = ImageCache(cache_dir)
        self.split = validate_choices(split, SPLITS, "split")[0] if split is not None else None
        self.question_types = validate_choices(question_types, QUESTION_TYPES, "question type(s)")
        q = self.cache.questions()
        if self.split is not None:
            q = q[q.split == self.split]
        if self.question_types is not None:
            q = q[q.question_type.isin(self.question_types)]
        q = q.reset_index(drop=True)
        self.questions = q
        # Per-sample fields as integer codes into small tables of unique values: DataLoader workers forked
        # from this process then share the pages instead of copying them as refcounts of millions of Python
        # strings change (the answers of the whole release repeat a few thousand texts).
        self._columns = {k: _Column(q[k]) for k in ("question", "answer", "question_type", *ID_KEYS)}
        self._keywords = _Column(q.truth_keyword) if "truth_keyword" in q.columns else None
        # (label set, uncertain policy): each image's finding-label targets and mask (the auxiliary finding loss)
        self._labels = None
        if labels is not None:
            label_set, uncertain = labels
            cache_labels = self.cache.labels()
            target, mask = label_targets(cache_labels.values(label_set), cache_labels.names(label_set), uncertain)
            self._labels = (torch.from_numpy(target), torch.from_numpy(mask))

    def __len__(self) -> int:
        return len(self.questions)

    def _image(self, dicom_id: str) -> torch.Tensor:
        return torch.from_numpy(self.cache.image(dicom_id)).float().div_(255.0).unsqueeze(0)  # (1, S, S)

    def _box(self, dicom_id: str) -> torch.Tensor:
        return torch.tensor(self.cache.geometry(dicom_id).content_box(), dtype=torch.long)  # (4,)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ids = {k: self._columns[k][i] for k in ID_KEYS}
        sample = {
            "main": self._image(ids["main_dicom_id"]),
            "ref": self._image(ids["ref_dicom_id"]),
            "main_box": self._box(ids["main_dicom_id"]),
            "ref_box": self._box(ids["ref_dicom_id"]),
            "question": self._columns["question"][i],
            "answer": self._columns["answer"][i],
            "question_type": self._columns["question_type"][i],
            "ids": ids,
        }
        if self._labels is not None:  # (2, K): main image, reference image
            rows = [self.cache.row[ids["main_dicom_id"]], self.cache.row[ids["ref_dicom_id"]]]
            sample["finding_targets"], sample["finding_mask"] = (t[rows] for t in self._labels)
        truth = self.cache.pair_truth(ids["study_id"], ids["ref_id"]) if self._keywords is not None else None
        if truth is not None:
            regions = self.cache.pair_regions(ids["study_id"], ids["ref_id"])
            side = question_side(sample["question"], sample["question_type"])
            region, changes = question_region(truth["change_mask"], regions, side)
            sample["truth"] = {
                "theta": torch.from_numpy(truth["theta"]).float(),
                "change_mask": torch.from_numpy(region).float().unsqueeze(0),
                "changes": [dict(c, mask=torch.from_numpy(c["mask"])) for c in changes],
                "side": side,
                "per_finding": regions is not None,
                "keyword": self._keywords[i],
            }
        return sample

    def texts(self) -> list[str]:
        """This dataset's questions followed by its answers (e.g. to build a word vocabulary)."""
        return self.questions.question.tolist() + self.questions.answer.tolist()


def texts(cache_dir: str | Path, split: str | None = "train") -> list[str]:
    """The questions followed by the answers of one split of a cache (all splits with None), without images."""
    split = validate_choices(split, SPLITS, "split")[0] if split is not None else None
    q = ImageCache(cache_dir).questions()
    if split is not None:
        q = q[q.split == split]
    return q.question.tolist() + q.answer.tolist()


def pad_token_ids(tokenizer, texts: Sequence[str], limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of ``texts`` truncated to ``limit``, right-padded with ``<pad>`` -> ids and mask (B, T) long;
    at least one column, so an all-empty batch is still a valid tensor."""
    encoded = [list(tokenizer.encode(t))[:limit] for t in texts]
    length = max(1, max(len(e) for e in encoded))
    ids = torch.full((len(texts), length), int(tokenizer.pad_id), dtype=torch.long)
    mask = torch.zeros((len(texts), length), dtype=torch.long)
    for row, tokens in enumerate(encoded):
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, : len(tokens)] = 1
    return ids, mask


class Collate:
    """Stack samples of :class:`PairQADataset` into a batch.

    Batch keys: ``main``, ``ref`` (B, 1, S, S); ``main_box``, ``ref_box`` (B, 4) long; ``question``, ``answer``,
    ``question_type``: lists of str; ``ids``: dict of lists (same keys as a sample's ``ids``); ``truth``:
    dict(``theta`` (B, 2, 3), ``change_mask`` (B, 1, S, S), ``changes`` (list of B lists, not stacked), ``side``,
    ``keyword`` (lists of str), ``per_finding`` (list of bool)) when every sample has ground truth, else None;
    ``finding_targets``, ``finding_mask`` (B, 2, K) float (main, reference) when the dataset reads labels.
    With a tokenizer also ``question_ids``, ``question_mask`` (B, Lq) and ``answer_ids``, ``answer_mask``
    (B, La): LongTensors right-padded with ``tokenizer.pad_id`` to the longest in the batch, truncated to
    ``max_question_tokens`` / ``max_answer_tokens``; masks are 1 on real tokens. No special tokens are added
    (the model frames the sequence).

    The tokenizer is duck-typed: ``encode(text) -> list[int]`` and ``pad_id``. A Collate pickles (with a
    picklable tokenizer), so it works with DataLoader workers.
    """

    def __init__(self, tokenizer=None, max_question_tokens: int = 24, max_answer_tokens: int = 64):
        if max_question_tokens < 1 or max_answer_tokens < 1:
            raise ValueError(
                f"max_question_tokens={max_question_tokens}, max_answer_tokens={max_answer_tokens}: expected >= 1"
            )
        self.tokenizer = tokenizer
        self.max_question_tokens = max_question_tokens
        self.max_answer_tokens = max_answer_tokens

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        batch: dict[str, Any] = {
            "main": torch.stack([s["main"] for s in samples]),
            "ref": torch.stack([s["ref"] for s in samples]),
            "main_box": torch.stack([s["main_box"] for s in samples]),
            "ref_box": torch.stack([s["ref_box"] for s in samples]),
            "question": [s["question"] for s in samples],
            "answer": [s["answer"] for s in samples],
            "question_type": [s["question_type"] for s in samples],
            "ids": {k: [s["ids"][k] for s in samples] for k in samples[0]["ids"]},
            "truth": None,
        }
        if all("finding_targets" in s for s in samples):  # (B, 2, K): main, reference
            batch["finding_targets"] = torch.stack([s["finding_targets"] for s in samples])
            batch["finding_mask"] = torch.stack([s["finding_mask"] for s in samples])
        if all("truth" in s for s in samples):
            batch["truth"] = {
                "theta": torch.stack([s["truth"]["theta"] for s in samples]),
                "change_mask": torch.stack([s["truth"]["change_mask"] for s in samples]),
                "changes": [s["truth"]["changes"] for s in samples],
                "side": [s["truth"]["side"] for s in samples],
                "per_finding": [s["truth"]["per_finding"] for s in samples],
                "keyword": [s["truth"]["keyword"] for s in samples],
            }
        if self.tokenizer is not None:
            tok, questions, answers = self.tokenizer, batch["question"], batch["answer"]
            batch["question_ids"], batch["question_mask"] = pad_token_ids(tok, questions, self.max_question_tokens)
            batch["answer_ids"], batch["answer_mask"] = pad_token_ids(tok, answers, self.max_answer_tokens)
        return batch
