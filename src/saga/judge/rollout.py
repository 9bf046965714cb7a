"""Rollouts: G sampled completions per image pair from the frozen judge, reading the encoder's tokens.

docs/design.md, "One SAGA step": `judge.rollout(tokens.detach(), G)`. What keeps it fast at 8B scale:

- one decoding batch for all P pairs x G completions (decoding at batch 8 is far from the memory-bandwidth limit,
  docs/method.md, "The judge", so a larger batch is nearly free);
- each pair's prompt prefilled once and shared by its G completions, and decoding compiled on CUDA
  (`saga.judge.decoding`; the reference path, one `generate` over P x G prompts, is kept: `shared_prefix=False`);
- the vision tower never runs here: the encoder's per-image outputs are shared by the G completions of a pair by
  indexing (`EncoderOutput.take`), and the judge reads them through `saga.models.vision_inputs`;
- the image tokens are detached: sampling needs no gradient, `score` re-reads them with gradient.

Each pair's prompt is the judge's chat template applied to `pair_messages(dataset, vocabulary)`, with each image's
single `<|image_pad|>` expanded to as many as the image has tokens (grid_h * grid_w / merge_size^2, from grid_thw), as
the processor itself does for PIL images. Prompts of different lengths (images of different sizes) are left-padded,
so every completion starts at the same column `prompt_length`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saga.judge import decoding
from saga.judge.prefix import supports_shared_prefix
from saga.judge.prompts import pair_messages, parse_verdict
from saga.models import EncoderOutput, vision_inputs, vision_token_ids

# Both end a Qwen turn; Qwen3-VL's own generation config stops at either.
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")


@dataclass
class Rollout:
    """N = P * G sequences; sequence n belongs to pair n // G (images 2p and 2p + 1 of the encoder batch).

    input_ids / attention_mask: (N, L) prompt (left-padded to prompt_length) + completion (right-padded).
    completion_ids / completion_mask: (N, Lc), Lc = L - prompt_length; the mask is True up to and including the
        first stop token (or everywhere, for a completion cut at max_new_tokens).
    texts: decoded completions (special tokens dropped); verdicts: `parse_verdict` of each text.
    pair_of: (N,) long, the pair of each sequence.
    clipped: (N,) bool, cut at max_new_tokens before any stop token (TRL's "clipped_ratio" is its mean).
    """

    input_ids: Tensor
    attention_mask: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    texts: list[str]
    verdicts: list[bool | None]
    prompt_length: int
    pair_of: Tensor
    clipped: Tensor


def stop_token_ids(tokenizer) -> list[int]:
    ids = [tokenizer.convert_tokens_to_ids(t) for t in STOP_TOKENS]
    return [i for i in ids if i is not None and i != tokenizer.unk_token_id]


def pair_feature_indices(pair_of: Tensor) -> list[int]:
    """Encoder-batch indices of the images each sequence reads, in prompt order: [a, b] of its pair, per sequence."""
    return [i for p in pair_of.tolist() for i in (2 * p, 2 * p + 1)]


def prompt_batch(processor, grid_thw: Tensor, *, dataset: str = "synth",
                 vocabulary: Sequence[str] | None = None) -> dict[str, Tensor]:
    """Token ids of one prompt per pair (images 2p, 2p+1 of grid_thw), left-padded: {"input_ids", "attention_mask"}
    of shape (P, prompt_length)."""
    if len(grid_thw) % 2:
        raise ValueError(f"the encoder batch has {len(grid_thw)} images; rollouts need pairs (a0, b0, a1, b1, ...)")
    template = processor.apply_chat_template(pair_messages(dataset, vocabulary), add_generation_prompt=True,
                                             tokenize=False)
    image_token = processor.image_token
    if template.count(image_token) != 2:
        raise ValueError(f"the chat template gave {template.count(image_token)} {image_token} for a pair prompt")
    merge = processor.image_processor.merge_size
    counts = (grid_thw.prod(-1) // merge**2).tolist()
    texts = []
    for p in range(len(counts) // 2):
        head, middle, tail = template.split(image_token)
        texts.append(head + image_token * counts[2 * p] + middle + image_token * counts[2 * p + 1] + tail)
    return processor.tokenizer(texts, padding=True, padding_side="left", add_special_tokens=False,
                               return_tensors="pt")


def is_stop(completion_ids: Tensor, stop_ids: Sequence[int]) -> Tensor:
    return torch.isin(completion_ids, torch.tensor(list(stop_ids), device=completion_ids.device))


def completion_mask(completion_ids: Tensor, stop_ids: Sequence[int]) -> Tensor:
    """(N, Lc) bool: True up to and including the first stop token of each row; all True where none occurs."""
    stops = is_stop(completion_ids, stop_ids)
    length = completion_ids.shape[1]
    first = torch.where(stops.any(1), stops.int().argmax(1), length - 1)
    return torch.arange(length, device=completion_ids.device)[None, :] <= first[:, None]


def assemble(tokenizer, prompt: dict[str, Tensor], completion_ids: Tensor, num_generations: int) -> Rollout:
    """A Rollout from P prompts (`prompt_batch`) and P * G completions (sequence n continues prompt n // G)."""
    groups = len(prompt["input_ids"])
    if len(completion_ids) != groups * num_generations:
        raise ValueError(f"{len(completion_ids)} completions for {groups} prompts x {num_generations} generations")
    device = completion_ids.device
    pair_of = torch.arange(groups, device=device).repeat_interleave(num_generations)
    stop_ids = stop_token_ids(tokenizer)
    mask = completion_mask(completion_ids, stop_ids)
    texts = [tokenizer.decode(ids[keep], skip_special_tokens=True, clean_up_tokenization_spaces=False)
             for ids, keep in zip(completion_ids, mask, strict=True)]
    prompt_ids = prompt["input_ids"].to(device)[pair_of]
    prompt_mask = prompt["attention_mask"].to(device)[pair_of]
    return Rollout(
        input_ids=torch.cat([prompt_ids, completion_ids], dim=1),
        attention_mask=torch.cat([prompt_mask, mask.to(prompt_mask.dtype)], dim=1),
        completion_ids=completion_ids,
        completion_mask=mask,
        texts=texts,
        verdicts=[parse_verdict(t) for t in texts],
        prompt_length=prompt_ids.shape[1],
        pair_of=pair_of,
        clipped=~is_stop(completion_ids, stop_ids).any(1),
    )


def answer_rows(tokenizer, answers: Sequence[str]) -> list[Tensor]:
    """Each answer's token ids, closed by <|im_end|>. Answers are tokenized alone: exactly the tokens generation
    would produce."""
    return [torch.tensor(a + [tokenizer.eos_token_id])
            for a in tokenizer(list(answers), add_special_tokens=False)["input_ids"]]


def answer_token_ids(tokenizer, answers: Sequence[str]) -> Tensor:
    """(P, La) the answers' token ids (`answer_rows`), right-padded."""
    return torch.nn.utils.rnn.pad_sequence(answer_rows(tokenizer, answers), batch_first=True,
                                           padding_value=tokenizer.pad_token_id)


def teacher_forced(processor, enc_out: EncoderOutput, answers: Sequence[str], *, dataset: str = "synth",
                   vocabulary: Sequence[str] | None = None) -> Rollout:
    """A Rollout (G = 1) whose completions are the given answers, one per pair of `enc_out`, for scoring (L_ATTR)."""
    prompt = prompt_batch(processor, enc_out.grid_thw, dataset=dataset, vocabulary=vocabulary)
    if len(answers) != len(prompt["input_ids"]):
        raise ValueError(f"{len(answers)} answers for {len(prompt['input_ids'])} pairs")
    return assemble(processor.tokenizer, prompt, answer_token_ids(processor.tokenizer, answers), 1)


def detached(enc_out: EncoderOutput) -> EncoderOutput:
    """The same features cut from the autograd graph (sampling needs no gradient)."""
    def cut(per_image):
        return tuple(t.detach() for t in per_image)

    return EncoderOutput(cut(enc_out.tokens), cut(enc_out.patches), tuple(cut(level) for level in enc_out.deepstack),
                         enc_out.grid_thw, enc_out.output_cls)


def rollout(model: nn.Module, processor, enc_out: EncoderOutput, *, dataset: str = "synth", num_generations: int = 8,
            max_new_tokens: int = 128, temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
            vocabulary: Sequence[str] | None = None, shared_prefix: bool = True, cache: str = "auto",
            synced: bool = False) -> Rollout:
    """Sample `num_generations` completions from `model` (the judge) for each pair of `enc_out` (2P images ordered
    a0, b0, a1, b1, ...), prompted for `dataset` naming `vocabulary` (`prompts.pair_prompt`).

    Sampling is plain temperature + nucleus sampling: top_k and repetition penalties that a checkpoint's generation
    config may set are switched off, so completions come from the judge's own distribution (GRPO samples from the
    policy it scores, docs/method.md, "L_GRPO"). With `seed`, the result is reproducible and the global RNG state
    is left as it was.

    shared_prefix: prefill each pair's prompt once and decode its G completions against it (`saga.judge.decoding`;
    judges that do not support it take the other path); False: one `generate` over P x G copies of the prompts (the
    reference path). Both sample from the same distributions, and a seed gives the same completions up to float
    rounding. cache: the KV cache of the decoding, "static" (fixed shapes: compiled decoding on CUDA), "dynamic" or
    "auto" (static on CUDA, dynamic elsewhere); on the reference path it is generate's cache_implementation.
    synced (reference path): decode until every process's completions are done, for a judge sharded over the
    processes, whose every forward is a collective.
    """
    tokenizer = processor.tokenizer
    device = next(model.parameters()).device
    cache = decoding.resolve_cache(cache, device)
    prompt = prompt_batch(processor, enc_out.grid_thw, dataset=dataset, vocabulary=vocabulary)
    stop_ids = stop_token_ids(tokenizer)
    suppress = vision_token_ids(tokenizer)  # a sampled <|image_pad|> breaks the re-forward (docs/method.md)
    # Decoding needs no activations for backward; in train mode a checkpointed model would also drop the KV
    # cache (transformers turns use_cache off under gradient checkpointing).
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            if shared_prefix and supports_shared_prefix(model):
                completions = decoding.sample(
                    model, prompt["input_ids"].to(device), prompt["attention_mask"].to(device), detached(enc_out),
                    num_generations=num_generations, max_new_tokens=max_new_tokens, temperature=temperature,
                    top_p=top_p, stop_ids=stop_ids, pad_token_id=tokenizer.pad_token_id, suppress_ids=suppress,
                    cache=cache)
            else:
                completions = _generate(model, prompt, enc_out, num_generations, cache, {
                    "do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0,
                    "repetition_penalty": 1.0, "max_new_tokens": max_new_tokens, "eos_token_id": stop_ids,
                    "pad_token_id": tokenizer.pad_token_id, "suppress_tokens": suppress,
                    # Non-finite logits (a broken judge, an overflow) must not crash sampling: the step's log-probs
                    # are then non-finite too, and the training loop skips the step and says so (saga.train.loop).
                    "remove_invalid_values": True, "synced_gpus": synced})
    finally:
        model.train(was_training)
    return assemble(tokenizer, prompt, completions, num_generations)


def _generate(model: nn.Module, prompt: dict[str, Tensor], enc_out: EncoderOutput, num_generations: int, cache: str,
              generation: dict) -> Tensor:
    """The reference path: one `generate` over every pair's prompt repeated G times, the image features shared by
    indexing. On CUDA a static cache makes transformers compile the decoding steps."""
    device = next(model.parameters()).device
    pair_of = torch.arange(len(prompt["input_ids"])).repeat_interleave(num_generations)
    features = detached(enc_out).take(pair_feature_indices(pair_of))
    input_ids = prompt["input_ids"].to(device)[pair_of.to(device)]
    with vision_inputs(model, features) as extra:
        sequences = model.generate(
            input_ids=input_ids, attention_mask=prompt["attention_mask"].to(device)[pair_of.to(device)],
            mm_token_type_ids=(input_ids == model.config.image_token_id).int(),
            image_grid_thw=features.grid_thw.to(device), cache_implementation=cache, **extra, **generation,
        )
    return sequences[:, input_ids.shape[1]:]
