import pytest

from diffvqa.data.text import SPECIAL_TOKENS, Tokenizer, build_word_tokenizer, load_gpt2_tokenizer

DIFFERENCE = (
    "the main image has an additional finding of pneumothorax than the reference image. the main image is missing "
    "the findings of fracture, lung opacity, and pleural effusion than the reference image. "
)
TEXTS = [DIFFERENCE, "is this PA view?", "what type is the atelectasis?", "plate-like", "nothing has changed."]


def test_word_tokenizer_round_trip_and_specials(tmp_path):
    tok = build_word_tokenizer(TEXTS)
    assert [tok.backend.id_to_token(i) for i in range(len(SPECIAL_TOKENS))] == list(SPECIAL_TOKENS)
    for text in TEXTS:
        ids = tok.encode(text)
        assert tok.unk_id not in ids and not set(ids) & tok.special_ids
        assert tok.decode(ids + [tok.eos_id, tok.pad_id, ids[0]]) == text.strip()
    assert tok.decode(tok.encode("plate-like")) == "plate-like"  # hyphenated words stay one token
    assert len(tok.encode("plate-like")) == 1
    assert tok.encode("pneumonia") == [tok.unk_id]
    tok.save(tmp_path)
    again = Tokenizer.load(tmp_path, "word")
    assert again.encode(DIFFERENCE) == tok.encode(DIFFERENCE) and again.eos_id == tok.eos_id


def test_word_tokenizer_is_deterministic():
    assert build_word_tokenizer(TEXTS).backend.get_vocab() == build_word_tokenizer(list(TEXTS)).backend.get_vocab()


def test_offsets_point_into_the_text():
    tok = build_word_tokenizer(TEXTS)
    ids, offsets = tok.encode_with_offsets(DIFFERENCE)
    words = [DIFFERENCE[a:b] for a, b in offsets]
    assert words[:4] == ["the", "main", "image", "has"] and "," in words and words[-1] == "."
    assert len(ids) == len(offsets)


def test_gpt2_bpe_matches_transformers_and_adds_specials(gpt2_dir, tmp_path):
    from transformers import GPT2Tokenizer

    tok = load_gpt2_tokenizer(gpt2_dir)
    reference = GPT2Tokenizer(vocab=str(gpt2_dir / "vocab.json"), merges=str(gpt2_dir / "merges.txt"))
    for text in TEXTS:
        assert tok.encode(text) == reference.encode(text)
        assert tok.decode(tok.encode(text) + [tok.eos_id]) == text.strip()
    assert len(tok) == 50257 + len(SPECIAL_TOKENS)
    assert min(tok.special_ids) == 50257  # appended after GPT-2's vocabulary, nothing renumbered
    save_dir = tmp_path / "saved"
    save_dir.mkdir()
    tok.save(save_dir)
    assert Tokenizer.load(save_dir, "gpt2").encode(DIFFERENCE) == tok.encode(DIFFERENCE)


def test_gpt2_missing_files_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        (tmp_path / "vocab.json").write_text("{}")
        load_gpt2_tokenizer(tmp_path)
