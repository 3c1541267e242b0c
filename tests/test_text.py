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


def test_gpt2_tokenizer_json_layout_equals_the_bpe_pair(gpt2_dir, tmp_path):
    """transformers 5's GPT2Tokenizer.save_pretrained writes tokenizer.json (no vocab.json / merges.txt): it loads,
    and gives the same tokenizer, id for id, as the BPE pair."""
    from transformers import GPT2Tokenizer

    saved = tmp_path / "saved-by-hf"
    GPT2Tokenizer(vocab=str(gpt2_dir / "vocab.json"), merges=str(gpt2_dir / "merges.txt")).save_pretrained(saved)
    assert (saved / "tokenizer.json").is_file() and not (saved / "vocab.json").exists()
    a, b = load_gpt2_tokenizer(saved), load_gpt2_tokenizer(gpt2_dir)
    assert a.backend.get_vocab() == b.backend.get_vocab()
    for text in [*TEXTS, "héllo  wörld, 2nd-line\n"]:
        assert a.encode(text) == b.encode(text)
        assert a.decode(a.encode(text)) == text.strip()
    assert (a.eos_id, a.pad_id) == (b.eos_id, b.pad_id)


def test_gpt2_missing_files_named(tmp_path):
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json.*merges\.txt.*found \['vocab\.json'\]"):
        load_gpt2_tokenizer(tmp_path)


def test_gpt2_tokenizer_json_of_another_kind_is_refused(tmp_path):
    build_word_tokenizer(TEXTS).save(tmp_path)  # a word-level tokenizer.json
    with pytest.raises(ValueError, match="WordLevel.*byte-level BPE"):
        load_gpt2_tokenizer(tmp_path)
