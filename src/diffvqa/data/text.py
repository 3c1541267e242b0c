"""Tokenizers: a word-level vocabulary built from the training text (tiny/small) or GPT-2's byte-level BPE read
from a local directory (paper). Both are one ``tokenizers.Tokenizer`` wrapped by :class:`Tokenizer`, saved as
``tokenizer.json`` in a checkpoint, with the same special tokens appended to the vocabulary.

The special tokens frame the decoder's input sequence (``docs/design.md``, step 4):
``<main> main-tokens <ref> ref-tokens <question> question <answer> answer <eos>`` and ``<pad>`` after it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as _HFTokenizer

from diffvqa.errors import MissingInputError, UserError

SPECIAL_TOKENS = ("<pad>", "<unk>", "<main>", "<ref>", "<question>", "<answer>", "<eos>")
TOKENIZER_FILE = "tokenizer.json"

# Word-level pre-tokenisation: words (hyphenated ones kept whole: "plate-like", "ground-glass") and single
# punctuation marks. The release's text is lower-case except "PA"/"AP", so case is kept as is.
_WORD_PATTERN = r"[^\s,.?;:!()]+|[,.?;:!()]"
# Word-level decoding joins with spaces; re-attach punctuation to the word before it.
_SPACE_BEFORE_PUNCT = re.compile(r" ([,.?;:!)])")


class Tokenizer:
    """A ``tokenizers.Tokenizer`` plus the ids of our special tokens.

    Attributes: ``pad_id``, ``unk_id``, ``main_id``, ``ref_id``, ``question_id``, ``answer_id``, ``eos_id``.
    """

    def __init__(self, backend: _HFTokenizer, kind: str):
        if kind not in ("word", "gpt2"):
            raise ValueError(f"tokenizer kind {kind!r}: expected 'word' or 'gpt2'")
        self.backend = backend
        self.kind = kind
        missing = [t for t in SPECIAL_TOKENS if backend.token_to_id(t) is None]
        if missing:
            raise ValueError(f"tokenizer lacks the special tokens {missing}")
        ids = {t: backend.token_to_id(t) for t in SPECIAL_TOKENS}
        self.pad_id, self.unk_id, self.main_id, self.ref_id = ids["<pad>"], ids["<unk>"], ids["<main>"], ids["<ref>"]
        self.question_id, self.answer_id, self.eos_id = ids["<question>"], ids["<answer>"], ids["<eos>"]
        self.special_ids = frozenset(ids.values())

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without special tokens."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and the character span ``(start, end)`` of each token in ``text``."""
        encoding = self.backend.encode(text, add_special_tokens=False)
        return encoding.ids, encoding.offsets

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``, stopping at ``<eos>`` and skipping padding and the other special tokens."""
        kept = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i not in self.special_ids:
                kept.append(i)
        text = self.backend.decode(kept, skip_special_tokens=True)
        if self.kind == "word":
            text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
        return text.strip()

    def save(self, directory: str | Path) -> None:
        self.backend.save(str(Path(directory) / TOKENIZER_FILE))

    @classmethod
    def load(cls, directory: str | Path, kind: str) -> Tokenizer:
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            raise MissingInputError(f"{path}: no tokenizer file (expected {TOKENIZER_FILE} in the checkpoint)")
        return cls(_HFTokenizer.from_file(str(path)), kind)


def build_word_tokenizer(texts: Iterable[str], min_count: int = 1) -> Tokenizer:
    """A word-level tokenizer over the words of ``texts`` (the training questions and answers).

    Special tokens come first (ids 0..6), then words by decreasing frequency, ties alphabetical, so the same
    texts always give the same ids. Words seen fewer than ``min_count`` times map to ``<unk>``.
    """
    pattern = re.compile(_WORD_PATTERN)
    counts: dict[str, int] = {}
    for text in texts:
        for word in pattern.findall(text):
            counts[word] = counts.get(word, 0) + 1
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in words:
        vocab.setdefault(word, len(vocab))
    backend = _HFTokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"[,.?;:!()]"), behavior="isolated")]
    )
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return Tokenizer(backend, "word")


def _gpt2_model_from_tokenizer_json(path: Path) -> models.BPE:
    """GPT-2's BPE (vocabulary + merges) from a ``tokenizer.json`` as transformers 5 saves it. Rebuilt from the two
    tables with the same defaults as the ``vocab.json`` + ``merges.txt`` route, so no saved option (e.g.
    ``ignore_merges``) can make the two layouts tokenize differently."""
    try:
        model = json.loads(path.read_text())["model"]
        if model.get("type") != "BPE":
            raise ValueError(f"holds a {model.get('type')!r} tokenizer model; GPT-2's is byte-level BPE")
        # merges are "a b" strings in older files, [a, b] pairs in newer ones
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        return models.BPE(vocab=model["vocab"], merges=merges)
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: not GPT-2's tokenizer as Hugging Face saves it ({exc})") from exc


def load_gpt2_tokenizer(directory: str | Path) -> Tokenizer:
    """GPT-2's byte-level BPE from a local directory, with our special tokens appended after GPT-2's 50,257 ids.

    Both layouts ``GPT2Tokenizer.save_pretrained`` has written are accepted: ``tokenizer.json`` (transformers 5
    writes only this and ``tokenizer_config.json``) and the older ``vocab.json`` + ``merges.txt`` pair. Only the
    BPE model is taken from the file; the byte-level pre-tokenizer and decoder are set here, so both layouts give
    the same tokenizer, id for id.
    """
    directory = Path(directory)
    saved, vocab, merges = directory / TOKENIZER_FILE, directory / "vocab.json", directory / "merges.txt"
    if saved.is_file():
        model = _gpt2_model_from_tokenizer_json(saved)
    elif vocab.is_file() and merges.is_file():
        model = models.BPE.from_file(str(vocab), str(merges))
    else:
        found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else None
        raise MissingInputError(
            f"{directory}: expected GPT-2's tokenizer as saved by GPT2Tokenizer.save_pretrained: {TOKENIZER_FILE} "
            f"(transformers 5) or vocab.json + merges.txt; "
            + (f"found {found}" if found is not None else "no such directory")
        )
    backend = _HFTokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return Tokenizer(backend, "gpt2")


def build_tokenizer(kind: str, texts: Iterable[str] = (), path: str | Path = "") -> Tokenizer:
    """The tokenizer a config asks for: ``word`` built from ``texts``, or ``gpt2`` read from ``path``."""
    if kind == "word":
        return build_word_tokenizer(texts)
    if kind == "gpt2":
        if not path:
            raise UserError(
                "model.tokenizer=gpt2 needs model.tokenizer_path: a directory where GPT2Tokenizer.save_pretrained "
                "wrote GPT-2's tokenizer (tokenizer.json, or vocab.json + merges.txt)"
            )
        return load_gpt2_tokenizer(path)
    raise UserError(f"model.tokenizer={kind!r}: expected 'word' or 'gpt2'")
