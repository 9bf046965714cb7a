
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from saga.judge import FrozenJudge
from saga.judge.rollout import pair_feature_indices
from saga.judge.scoring import completion_logps
from saga.models import EncoderOutput, ImagePreprocessor, VisionEncoder, vision_inputs, vision_token_ids


@pytest.fixture(scope="module")
def judge(tiny_vlm_dir):
    return FrozenJudge.load(tiny_vlm_dir, device="cpu")


def _inputs(judge, num_images, seed=0, sizes=None):
    """Tower inputs for random images; `sizes` (px per image, multiples of 32) keeps images at different sizes."""
    rng = np.random.default_rng(seed)
    sizes = sizes or [64] * num_images
    images = [Image.fromarray(rng.integers(0, 256, (s, s, 3), dtype=np.uint8)) for s in sizes]
    if len(set(sizes)) == 1:
        return ImagePreprocessor(judge.processor, sizes[0])(images)
    out = judge.processor.image_processor(images=images, size={"shortest_edge": 32 * 32, "longest_edge": 256 * 256},
                                          return_tensors="pt")
    return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}


def _full_forward_logps(judge, features, r):
    """Reference: log_softmax over the whole vocabulary of a plain forward's logits, at the completion positions."""
    with vision_inputs(judge.model, features.take(pair_feature_indices(r.pair_of))) as extra:
        logits = judge.model(input_ids=r.input_ids, attention_mask=r.attention_mask,
                             mm_token_type_ids=(r.input_ids == judge.model.config.image_token_id).int(),
                             image_grid_thw=features.grid_thw[pair_feature_indices(r.pair_of)], **extra).logits
    start = r.prompt_length - 1
    logits = logits[:, start:start + r.completion_ids.shape[1]]
    return logits, logits.log_softmax(-1).gather(-1, r.completion_ids[..., None]).squeeze(-1) * r.completion_mask


def test_logps_are_the_full_forward_log_softmax_at_completion_positions(judge):
    """Left padding (two image sizes) and right padding included."""
    encoder = VisionEncoder.from_vlm(judge.model)
    inputs = _inputs(judge, 4, sizes=[64, 96, 64, 64])
    with torch.no_grad():
        features = encoder(inputs["pixel_values"], inputs["image_grid_thw"])
    r = judge.rollout(features, num_generations=3, max_new_tokens=8, seed=0)
    assert not r.attention_mask[:, 0].all()  # the pair with the larger image has the longer prompt
    s = judge.score(features, r)
    _, expected = _full_forward_logps(judge, features, r)
    torch.testing.assert_close(s.logps, expected, rtol=0, atol=1e-5)


def test_greedy_rollouts_are_the_argmax_of_the_scored_distribution(judge):
    """Rollout and score see the same context (features, positions, padding): nucleus sampling with a tiny top_p
    is greedy, so every sampled token is the argmax of the scored logits (vision tokens suppressed)."""
    encoder = VisionEncoder.from_vlm(judge.model)
    inputs = _inputs(judge, 4, seed=1, sizes=[96, 64, 64, 64])
    with torch.no_grad():
        features = encoder(inputs["pixel_values"], inputs["image_grid_thw"])
    r = judge.rollout(features, num_generations=2, max_new_tokens=8, top_p=1e-6, seed=0)
    logits, _ = _full_forward_logps(judge, features, r)
    logits[..., vision_token_ids(judge.tokenizer)] = float("-inf")
    assert torch.equal(logits.argmax(-1)[r.completion_mask], r.completion_ids[r.completion_mask])


def test_tower_once_equals_tower_per_completion(judge):
    """Same log-probs and same encoder gradients as the plain path that runs the tower (with the encoder's
    weights) inside the judge on pixel_values repeated for every completion."""
    encoder = VisionEncoder.from_vlm(judge.model)
    inputs = _inputs(judge, 4, seed=2)
    features = encoder(inputs["pixel_values"], inputs["image_grid_thw"])
    r = judge.rollout(features, num_generations=3, max_new_tokens=6, seed=1)
    weights = torch.randn(r.completion_ids.shape, generator=torch.Generator().manual_seed(0))
    s = judge.score(features, r)
    (s.logps * weights).sum().backward()
    once = {name: p.grad.clone() for name, p in encoder.named_parameters()}
    encoder.zero_grad(set_to_none=True)

    index = pair_feature_indices(r.pair_of)
    patches = inputs["pixel_values"].split(inputs["image_grid_thw"].prod(-1).tolist())
    own_tower = judge.model.model.visual
    judge.model.model.visual = encoder.tower
    try:
        logits = judge.model(input_ids=r.input_ids, attention_mask=r.attention_mask,
                             mm_token_type_ids=(r.input_ids == judge.model.config.image_token_id).int(),
                             pixel_values=torch.cat([patches[i] for i in index]),
                             image_grid_thw=inputs["image_grid_thw"][index]).logits
    finally:
        judge.model.model.visual = own_tower
    start = r.prompt_length - 1
    logps = logits[:, start:start + r.completion_ids.shape[1]].log_softmax(-1)
    logps = logps.gather(-1, r.completion_ids[..., None]).squeeze(-1) * r.completion_mask
    (logps * weights).sum().backward()

    torch.testing.assert_close(s.logps, logps, rtol=0, atol=1e-5)
    last_level = f"tower.deepstack_merger_list.{len(encoder.tower.deepstack_merger_list) - 1}."
    for name, p in encoder.named_parameters():
        assert name.startswith(last_level) or once[name].abs().sum() > 0, name  # see the next test on DeepStack
        torch.testing.assert_close(once[name], p.grad, rtol=1e-5, atol=1e-5)


def test_gradient_reaches_only_the_encoder_outputs(judge):
    encoder = VisionEncoder.from_vlm(judge.model)
    inputs = _inputs(judge, 2, seed=3)
    with torch.no_grad():
        out = encoder(inputs["pixel_values"], inputs["image_grid_thw"])
    leaf = EncoderOutput(tuple(t.clone().requires_grad_() for t in out.tokens),
                         tuple(t.clone().requires_grad_() for t in out.patches),
                         tuple(tuple(t.clone().requires_grad_() for t in level) for level in out.deepstack),
                         out.grid_thw, out.output_cls)
    r = judge.rollout(leaf, num_generations=2, max_new_tokens=6, seed=0)
    judge.score(leaf, r).logps.sum().backward()
    assert all(t.grad.abs().sum() > 0 for t in leaf.tokens)
    # DeepStack level i is added after LLM layer i; the tiny judge's last level (after its last layer) only reaches
    # the image positions' own final states, which predict no completion token.
    live_levels = leaf.deepstack[:len(judge.model.model.language_model.layers) - 1]
    assert live_levels and all(t.grad.abs().sum() > 0 for level in live_levels for t in level)
    assert all(t.grad is None for t in leaf.patches)  # the judge never reads pre-merger patches
    assert all(p.grad is None for p in judge.model.parameters())

    before = {k: v.clone() for k, v in judge.model.state_dict().items()}
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-2)
    features = encoder(inputs["pixel_values"], inputs["image_grid_thw"])
    judge.score(features, r).logps.sum().backward()
    optimizer.step()
    judge.assert_frozen()
    assert all(p.grad is None for p in judge.model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in judge.model.state_dict().items())
    assert not torch.equal(encoder.tower.patch_embed.proj.weight, judge.model.model.visual.patch_embed.proj.weight)


def test_gradient_checkpointing_runs_and_changes_nothing(tiny_vlm_dir):
    """In train mode the checkpointed layers run again during backward (counted), with the same results."""
    results = []
    for checkpointing in (False, True):
        judge = FrozenJudge.load(tiny_vlm_dir, device="cpu", gradient_checkpointing=checkpointing)
        encoder = VisionEncoder.from_vlm(judge.model)
        calls = []
        # A pre-hook: the recomputation stops early, inside the last module whose saved tensors backward needs.
        judge.model.model.language_model.layers[0].mlp.register_forward_pre_hook(lambda *a: calls.append(1))
        inputs = _inputs(judge, 2, seed=4)
        features = encoder(inputs["pixel_values"], inputs["image_grid_thw"])
        r = judge.rollout(features, num_generations=2, max_new_tokens=5, seed=0)
        calls.clear()
        s = judge.score(features, r)
        s.logps.sum().backward()
        results.append((len(calls), s.logps.detach(), encoder.tower.patch_embed.proj.weight.grad))
    (plain_calls, plain_logps, plain_grad), (ckpt_calls, ckpt_logps, ckpt_grad) = results
    assert (plain_calls, ckpt_calls) == (1, 2)
    torch.testing.assert_close(ckpt_logps, plain_logps, rtol=0, atol=1e-6)
    torch.testing.assert_close(ckpt_grad, plain_grad, rtol=1e-5, atol=1e-6)


def test_no_attention_layers_gives_no_attention_and_batch_mismatch_raises(judge):
    encoder = VisionEncoder.from_vlm(judge.model)
    inputs = _inputs(judge, 4, seed=5)
    with torch.no_grad():
        features = encoder(inputs["pixel_values"], inputs["image_grid_thw"])
    r = judge.rollout(features, num_generations=2, max_new_tokens=4, seed=0)
    assert judge.score(features, r).image_attention is None
    assert judge.score(features, r, attention_layers=[]).image_attention is None
    with pytest.raises(ValueError, match="2 pairs"):
        judge.score(features.take([0, 1]), r)


def test_chunked_completion_logps_match_one_chunk():
    torch.manual_seed(0)
    head = nn.Linear(8, 11, bias=False)
    hidden = torch.randn(7, 8, requires_grad=True)
    targets = torch.randint(0, 11, (7,))
    expected = head(hidden).log_softmax(-1)[torch.arange(7), targets]
    (grad_expected,) = torch.autograd.grad(expected.sum(), hidden)
    logps = completion_logps(head, hidden, targets, chunk_rows=3)
    (grad,) = torch.autograd.grad(logps.sum(), hidden)
    torch.testing.assert_close(logps, expected)
    torch.testing.assert_close(grad, grad_expected)


def test_completion_logps_are_of_the_tempered_distribution():
    # One row with logits [2, 0]: at temperature 2 they are [1, 0], so log p(0) = 1 - log(e + 1) = -0.313262.
    head = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[2.0], [0.0]]))
    logps = completion_logps(head, torch.ones(1, 1), torch.tensor([0]), temperature=2.0)
    torch.testing.assert_close(logps, torch.tensor([-0.313262]), rtol=0, atol=1e-6)
    torch.testing.assert_close(completion_logps(head, torch.ones(1, 1), torch.tensor([0])),
                               torch.tensor([-0.126928]), rtol=0, atol=1e-6)  # 2 - log(e^2 + 1) at temperature 1
