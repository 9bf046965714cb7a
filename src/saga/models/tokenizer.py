"""A small local byte-level BPE tokenizer with Qwen's special tokens and a Qwen-style chat template.

Nothing can be downloaded here, so the tiny judge (docs/method.md, "The judge") gets its own
tokenizer, trained with the `tokenizers` library on the texts it will read and write. It mirrors Qwen2's tokenizer
where it matters for the model code: the same pre-tokenizer (Qwen2's split regex, then byte-level), the same special
tokens, `<|im_end|>` as end of turn, and images written as `<|vision_start|><|image_pad|><|vision_end|>` (the
processor expands the one `<|image_pad|>` to as many as the image has tokens).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# Qwen2/Qwen3 special tokens; they get ids 0..7 in this order.
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
# Tokens a model must never sample: a sampled <|image_pad|> breaks the re-forward (docs/method.md, "The judge").
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")

# Qwen2's pre-tokenizer split (transformers models/qwen2/tokenization_qwen2.py).
_QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")

# Qwen3-VL's chat template without tools, videos or a default system turn:
#   <|im_start|>role\n ...content... <|im_end|>\n   per message, images as <|vision_start|><|image_pad|><|vision_end|>.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' or 'image' in item -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'text' -%}"
    "{{- item['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

# Always in the training texts, so the chat scaffolding gets merged tokens whatever the corpus is.
_SCAFFOLD = ("system\n", "user\n", "assistant\n", "\n")


def build_tokenizer(corpus: Iterable[str] = (), *, vocab_size: int = 1024,
                    model_max_length: int = 4096) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `corpus` and wrap it for transformers.

    The vocabulary is the 8 special tokens, the 256 byte symbols (so any text can be encoded) and up to
    `vocab_size - 264` merges learned from the corpus (pairs seen at least twice). Training is deterministic:
    the same corpus gives the same tokenizer.
    """
    base = len(SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < base:
        raise ValueError(f"vocab_size {vocab_size} is below the {base} special and byte tokens")
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    bpe.train_from_iterator([*_SCAFFOLD, *corpus], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]), model_max_length=model_max_length,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
