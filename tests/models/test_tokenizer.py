import pytest

from saga.models.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, VISION_TOKENS, build_tokenizer

CORPUS = ["Answer: same", "Answer: different", "wing colour: blue"] * 5


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(CORPUS, vocab_size=400)


def test_special_tokens_have_ids_0_to_7_and_encode_as_one_token(tok):
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(8))
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok(f"a{t}b", add_special_tokens=False)["input_ids"].count(i) == 1
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert set(VISION_TOKENS) < set(SPECIAL_TOKENS)


@pytest.mark.parametrize("text", [
    "Answer: same", "Ünïcode 日本語 ✓ tabs\tand\nnewlines  two spaces", "",
    "<|im_start|>user\n<|vision_start|><|image_pad|><|image_pad|><|vision_end|>hi<|im_end|>\n",
])
def test_round_trip(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


def test_corpus_words_are_merged_and_vocab_is_capped(tok):
    # "Answer" appears 10 times: BPE merges it into fewer tokens than its 6 bytes.
    assert len(tok("Answer", add_special_tokens=False)["input_ids"]) < 6
    # An unseen word falls back to byte tokens, one per byte.
    assert len(tok("zqxj", add_special_tokens=False)["input_ids"]) == 4
    assert 264 <= len(tok) <= 400


def test_training_is_deterministic(tok):
    again = build_tokenizer(CORPUS, vocab_size=400)
    assert again.get_vocab() == tok.get_vocab()


def test_vocab_size_below_specials_and_bytes_is_rejected():
    with pytest.raises(ValueError, match="264"):
        build_tokenizer(CORPUS, vocab_size=100)


def test_chat_template_matches_qwen_layout(tok):
    assert tok.chat_template == CHAT_TEMPLATE
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Same?"}]},
        {"role": "assistant", "content": "Answer: same"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
                    "<|vision_start|><|image_pad|><|vision_end|>Same?<|im_end|>\n"
                    "<|im_start|>assistant\nAnswer: same<|im_end|>\n")
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("Same?<|im_end|>\n<|im_start|>assistant\n")
