import numpy as np
import pytest
import torch
from PIL import Image

from saga.judge import FrozenJudge
from saga.judge.attention import AttentionCapture, verdict_line_span, verdict_token_mask
from saga.judge.rollout import answer_token_ids, assemble, pair_feature_indices, prompt_batch
from saga.models import VisionEncoder, load_vlm, vision_inputs


@pytest.fixture(scope="module")
def judge(tiny_vlm_dir):
    return FrozenJudge.load(tiny_vlm_dir, device="cpu")


@pytest.mark.parametrize("text, line", [
    ("wing: red / blue\nAnswer: same", "Answer: same"),
    ("Answer: same\nWait.\n  answer - different  \n\n", "answer - different"),
    ("These are the same species.\n", "These are the same species."),  # no "Answer": the last non-empty line
    ("crest: tall / none", "crest: tall / none"),
])
def test_verdict_line_span(text, line):
    start, end = verdict_line_span(text)
    assert text[start:end] == line


def test_verdict_line_span_of_blank_text_is_none():
    assert verdict_line_span("") is None and verdict_line_span(" \n\n") is None


def _rollout(judge, texts, grid, num_generations):
    """A Rollout of the given completion texts (each ended by <|im_end|>, right-padded) for the pairs of grid."""
    completions = answer_token_ids(judge.tokenizer, texts)
    return assemble(judge.tokenizer, prompt_batch(judge.processor, grid), completions, num_generations)


def test_verdict_tokens_are_the_final_answer_line(judge):
    texts = ["wing: rouge é / blue\nAnswer: same", "Answer: different\nok", "crest: tall / none", "They are the same"]
    r = _rollout(judge, texts, torch.tensor([[1, 4, 4]] * 4), num_generations=2)
    assert r.verdicts == [True, False, None, True]
    mask = verdict_token_mask(judge.tokenizer, r.completion_ids, r.completion_mask, r.verdicts)
    picked = [judge.tokenizer.decode(ids[m]) for ids, m in zip(r.completion_ids, mask, strict=True)]
    assert picked[0] == "Answer: same" and picked[1] == "Answer: different" and picked[3] == "They are the same"
    assert torch.equal(mask[2], r.completion_mask[2])  # no verdict: every completion token, <|im_end|> included


def _padded_batch(judge):
    """Two pairs whose images differ in size (prompts of different lengths: left padding) and four completions of
    different lengths (right padding), with and without a verdict."""
    rng = np.random.default_rng(0)
    sizes = [64, 96, 64, 64]
    images = [Image.fromarray(rng.integers(0, 256, (s, s, 3), dtype=np.uint8)) for s in sizes]
    inputs = judge.processor.image_processor(images=images, return_tensors="pt",
                                             size={"shortest_edge": 32 * 32, "longest_edge": 256 * 256})
    encoder = VisionEncoder.from_vlm(judge.model)
    features = encoder(inputs["pixel_values"], inputs["image_grid_thw"])
    texts = ["wing: red / blue\nAnswer: same", "crest: tall / none", "Answer: different", "body: red / red\nbill"]
    return features, _rollout(judge, texts, inputs["image_grid_thw"], num_generations=2)


def _eager_attentions(tiny_vlm_dir, features, r):
    model, _ = load_vlm(tiny_vlm_dir, device="cpu", attn_implementation="eager")
    index = pair_feature_indices(r.pair_of)
    with torch.no_grad(), vision_inputs(model, features.take(index)) as extra:
        out = model(input_ids=r.input_ids, attention_mask=r.attention_mask,
                    mm_token_type_ids=(r.input_ids == model.config.image_token_id).int(),
                    image_grid_thw=features.grid_thw[index], output_attentions=True, **extra)
    return [a.mean(1) for a in out.attentions]  # per layer (N, L, L), mean over heads


def test_hook_rows_equal_eager_attention(judge, tiny_vlm_dir):
    text = judge.model.config.text_config
    assert text.num_key_value_heads < text.num_attention_heads  # GQA
    features, r = _padded_batch(judge)
    assert not r.attention_mask[:, 0].all() and not r.completion_mask.all()  # left and right padding
    eager = _eager_attentions(tiny_vlm_dir, features, r)
    queries = [r.prompt_length + m.nonzero().squeeze(1) for m in r.completion_mask]  # every completion row
    width = max(map(len, queries))
    padded = torch.stack([torch.cat([q, q[:1].repeat(width - len(q))]) for q in queries])
    index = pair_feature_indices(r.pair_of)
    capture = AttentionCapture(judge.model, [0, -1], padded, r.attention_mask.bool())
    with torch.no_grad(), vision_inputs(judge.model, features.take(index)) as extra, capture:
        judge.model(input_ids=r.input_ids, attention_mask=r.attention_mask,
                    mm_token_type_ids=(r.input_ids == judge.model.config.image_token_id).int(),
                    image_grid_thw=features.grid_thw[index], **extra)
    assert capture.layers == [0, 1] and judge.model.config._attn_implementation == "sdpa"
    for layer in capture.layers:
        for n, q in enumerate(queries):
            torch.testing.assert_close(capture.rows[layer][n, :len(q)], eager[layer][n, q], rtol=0, atol=1e-5)
    assert not judge.model.model.language_model.layers[0].self_attn._forward_hooks  # removed on exit


def test_image_attention_equals_eager_reference(judge, tiny_vlm_dir):
    features, r = _padded_batch(judge)
    got = judge.score(features, r, attention_layers=[-1, 0]).image_attention
    eager = torch.stack(_eager_attentions(tiny_vlm_dir, features, r)).mean(0)  # mean over layers
    verdict = verdict_token_mask(judge.tokenizer, r.completion_ids, r.completion_mask, r.verdicts)
    image_token = judge.model.config.image_token_id
    expected = []
    for p in range(2):
        members = [n for n in range(4) if r.pair_of[n] == p]
        positions = (r.input_ids[members[0]] == image_token).nonzero().squeeze(1)
        n_a = features.num_tokens[2 * p]
        for columns in (positions[:n_a], positions[n_a:]):
            per_sequence = []
            for n in members:
                rows = eager[n, r.prompt_length + verdict[n].nonzero().squeeze(1)].mean(0)
                per_sequence.append(rows[columns] / rows[columns].sum())
            expected.append(torch.stack(per_sequence).mean(0))
    assert [len(a) for a in got] == features.num_tokens == [4, 9, 4, 4]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        assert not a.requires_grad and torch.isclose(a.sum(), torch.tensor(1.0))


def test_layer_index_out_of_range_raises(judge):
    with pytest.raises(IndexError):
        AttentionCapture(judge.model, [5], torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool))
