import numpy as np
import pytest
import torch
from PIL import Image

from saga.judge import FrozenJudge
from saga.judge.prompts import pair_prompt, parse_verdict
from saga.judge.rollout import assemble, completion_mask, detached, prompt_batch
from saga.models import ImagePreprocessor, VisionEncoder, vision_token_ids


@pytest.fixture(scope="module")
def judge(tiny_vlm_dir):
    return FrozenJudge.load(tiny_vlm_dir, device="cpu")


@pytest.fixture(scope="module")
def encoder(judge):
    return VisionEncoder.from_vlm(judge.model)


def _features(judge, encoder, num_images, seed=0):
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(num_images)]
    inputs = ImagePreprocessor(judge.processor, 64)(images)
    return encoder(inputs["pixel_values"], inputs["image_grid_thw"])


def test_prompts_expand_each_image_to_its_token_count_and_left_pad(judge):
    tok = judge.tokenizer
    grid = torch.tensor([[1, 4, 4], [1, 8, 8], [1, 4, 4], [1, 4, 4]])  # 4, 16, 4, 4 tokens (2x2 merge)
    batch = prompt_batch(judge.processor, grid)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape[0] == 2
    assert mask[0].all() and mask[1].tolist() == [0] * 12 + [1] * (ids.shape[1] - 12)  # 20 - 8 image tokens
    pad = judge.processor.image_token
    expected = [f"<|im_start|>user\nA:<|vision_start|>{pad * a}<|vision_end|>B:<|vision_start|>{pad * b}"
                f"<|vision_end|>{pair_prompt('synth')}<|im_end|>\n<|im_start|>assistant\n"
                for a, b in [(4, 16), (4, 4)]]
    assert tok.decode(ids[0]) == expected[0]
    assert tok.decode(ids[1][12:]) == expected[1]
    with pytest.raises(ValueError, match="pairs"):
        prompt_batch(judge.processor, grid[:3])


def test_completion_mask_stops_after_the_first_stop_token():
    ids = torch.tensor([[5, 2, 9, 0], [9, 9, 9, 9], [2, 0, 0, 0], [7, 0, 2, 0]])
    assert completion_mask(ids, [2, 0]).tolist() == [
        [True, True, False, False], [True, True, True, True], [True, False, False, False], [True, True, False, False]]


def test_assemble_builds_masks_texts_and_verdicts(judge):
    tok = judge.tokenizer
    prompt = {"input_ids": torch.tensor([[0, 11, 12], [13, 14, 15]]), "attention_mask": torch.tensor([[0, 1, 1],
                                                                                                      [1, 1, 1]])}
    end, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id
    texts = ["Answer: same", "Answer: different", "crest: tall", "body"]
    encoded = [tok.encode(t) for t in texts]
    width = max(map(len, encoded)) + 1
    completions = torch.tensor([e + [end] + [pad] * (width - len(e) - 1) for e in encoded[:3]]
                               + [(encoded[3] * width)[:width]])  # the last one never stops
    r = assemble(tok, prompt, completions, num_generations=2)
    assert r.texts == [texts[0], texts[1], texts[2], tok.decode(completions[3])]
    assert r.verdicts == [True, False, None, None]
    assert r.clipped.tolist() == [False, False, False, True]
    assert r.pair_of.tolist() == [0, 0, 1, 1] and r.prompt_length == 3
    assert r.completion_mask.sum(1).tolist() == [len(encoded[0]) + 1, len(encoded[1]) + 1, len(encoded[2]) + 1, width]
    assert torch.equal(r.input_ids, torch.cat([prompt["input_ids"][[0, 0, 1, 1]], completions], 1))
    assert torch.equal(r.attention_mask[:, 3:].bool(), r.completion_mask)
    assert r.attention_mask[:2, 0].tolist() == [0, 0] and r.attention_mask[2:, :3].all()
    with pytest.raises(ValueError, match="completions"):
        assemble(tok, prompt, completions[:3], num_generations=2)


def test_rollout_shapes_masks_and_texts(judge, encoder):
    features = _features(judge, encoder, 4)
    r = judge.rollout(features, num_generations=4, max_new_tokens=16, seed=0)
    n = 2 * 4
    prompt = prompt_batch(judge.processor, features.grid_thw)
    assert r.input_ids.shape == (n, r.prompt_length + r.completion_ids.shape[1])
    assert r.completion_ids.shape[1] <= 16 and r.completion_mask.dtype == torch.bool
    assert r.pair_of.tolist() == [0] * 4 + [1] * 4
    assert torch.equal(r.input_ids[:, :r.prompt_length], prompt["input_ids"][r.pair_of])
    assert torch.equal(r.input_ids[:, r.prompt_length:], r.completion_ids)
    assert torch.equal(r.completion_mask, completion_mask(r.completion_ids, [2, 0]))  # <|im_end|>, <|endoftext|>
    assert torch.equal(r.attention_mask[:, r.prompt_length:].bool(), r.completion_mask)
    assert r.texts == [judge.tokenizer.decode(ids[m], skip_special_tokens=True)
                       for ids, m in zip(r.completion_ids, r.completion_mask, strict=True)]
    assert r.verdicts == [parse_verdict(t) for t in r.texts]
    assert not torch.isin(r.completion_ids, torch.tensor(vision_token_ids(judge.tokenizer))).any()
    assert len(set(r.texts)) > 1  # sampled, not greedy


def test_rollouts_are_reproducible_for_a_seed_and_leave_the_global_rng_alone(judge, encoder):
    features = _features(judge, encoder, 2, seed=1)
    state = torch.get_rng_state()
    a = judge.rollout(features, num_generations=3, max_new_tokens=8, seed=7)
    b = judge.rollout(features, num_generations=3, max_new_tokens=8, seed=7)
    c = judge.rollout(features, num_generations=3, max_new_tokens=8, seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.input_ids, b.input_ids) and a.texts == b.texts
    assert not torch.equal(a.completion_ids, c.completion_ids)


def test_the_tower_runs_once_per_image_and_never_inside_the_judge(judge, encoder):
    """One encoder call for the 2P images; the G completions of each pair re-use its features by indexing."""
    calls = {"encoder": [], "judge_tower": 0}
    h1 = encoder.tower.register_forward_hook(lambda m, args, out: calls["encoder"].append(len(args[0])))
    h2 = judge.model.model.visual.patch_embed.register_forward_hook(
        lambda *a: calls.__setitem__("judge_tower", calls["judge_tower"] + 1))
    try:
        features = _features(judge, encoder, 4, seed=2)
        r = judge.rollout(features, num_generations=3, max_new_tokens=6, seed=0)
        judge.score(features, r, attention_layers=[-1]).logps.sum().backward()
    finally:
        h1.remove(), h2.remove()
    assert calls == {"encoder": [4 * 16], "judge_tower": 0}  # one call, 4 images x 16 patches


def test_rollout_reads_detached_features_and_keeps_train_mode(tiny_vlm_dir, encoder):
    features = _features(FrozenJudge.load(tiny_vlm_dir, device="cpu"), encoder, 2, seed=3)
    cut = detached(features)
    assert features.tokens[0].requires_grad and not cut.tokens[0].requires_grad
    assert not any(t.requires_grad for level in cut.deepstack for t in level)
    assert cut.tokens[0].data_ptr() == features.tokens[0].data_ptr()  # a view, not a copy
    plain = FrozenJudge.load(tiny_vlm_dir, device="cpu")
    checkpointed = FrozenJudge.load(tiny_vlm_dir, device="cpu", gradient_checkpointing=True)
    a = plain.rollout(features, num_generations=2, max_new_tokens=6, seed=0)
    b = checkpointed.rollout(features, num_generations=2, max_new_tokens=6, seed=0)
    assert torch.equal(a.input_ids, b.input_ids)
    assert checkpointed.model.training and not plain.model.training  # restored after generate


def test_teacher_forced_answers_are_scored_as_judge_pretraining_scores_them(judge, encoder):
    """L_ATTR (weights.attribute_nll) is the judge's pretraining loss on the true answer, read through the encoder:
    the same token layout as `PairInputs` and the same mean NLL as the model's own loss with those labels."""
    from saga.losses import answer_nll
    from saga.synth.pairs import PairInputs

    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(4)]
    answers = ["crest: tall / short mismatch\nAnswer: different", "Answer: same"]
    inputs = ImagePreprocessor(judge.processor, 64)(images)
    features = encoder(inputs["pixel_values"], inputs["image_grid_thw"])
    r = judge.teacher_forced(features, answers)
    assert r.texts == answers and r.verdicts == [False, True] and not r.clipped.any()
    assert r.pair_of.tolist() == [0, 1]
    reference = PairInputs(judge.processor, 64)(images, answers)
    assert torch.equal(r.input_ids, reference["input_ids"])
    nll = answer_nll(judge.score(features, r).logps, r.completion_mask)["loss"]
    with torch.no_grad():
        expected = judge.model(**reference).loss
    assert nll.item() == pytest.approx(expected.item(), rel=1e-4)
    with pytest.raises(ValueError, match="3 answers for 2 pairs"):
        judge.teacher_forced(features, answers + ["Answer: same"])
