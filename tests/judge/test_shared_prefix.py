"""The shared-prefix paths (each pair's prompt read once for its G completions) against the reference paths (a copy
of the prompt per completion): the same completions, logits, log-probs, attention targets and encoder gradients."""

import numpy as np
import pytest
import torch
from PIL import Image

from saga.judge import FrozenJudge, decoding
from saga.judge.prefix import pack
from saga.judge.rollout import answer_token_ids, assemble, prompt_batch
from saga.models import VisionEncoder

SIZES = [64, 96, 64, 64]  # two pairs whose prompts differ in length: left padding


def _inputs(judge, seed=0):
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (s, s, 3), dtype=np.uint8)) for s in SIZES]
    out = judge.processor.image_processor(images=images, return_tensors="pt",
                                          size={"shortest_edge": 32 * 32, "longest_edge": 256 * 256})
    return out["pixel_values"], out["image_grid_thw"]


@pytest.fixture(scope="module")
def judge(tiny_vlm_dir):
    return FrozenJudge.load(tiny_vlm_dir, device="cpu")


@pytest.fixture(scope="module")
def peaked(tiny_vlm_dir):
    """The tiny judge with sharper next-token distributions (a random judge's are nearly uniform) and <|im_end|>
    likelier, so that completions stop at different lengths."""
    judge = FrozenJudge.load(tiny_vlm_dir, device="cpu")
    with torch.no_grad():
        judge.model.lm_head.weight.mul_(10)
        judge.model.lm_head.weight[judge.tokenizer.convert_tokens_to_ids("<|im_end|>")] *= 2.5
    return judge


@pytest.fixture(scope="module")
def features(judge):
    with torch.no_grad():
        return VisionEncoder.from_vlm(judge.model)(*_inputs(judge))


def _rollout(judge, features, **kw):
    return judge.rollout(features, num_generations=4, max_new_tokens=12, seed=0, **kw)


def _with(judge, **settings):
    """The same judge with other path settings (FrozenJudge attributes)."""
    other = FrozenJudge(judge.model, judge.processor, gradient_checkpointing=judge.gradient_checkpointing)
    for name, value in settings.items():
        setattr(other, name, value)
    return other


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_greedy_shared_rollout_equals_generate(peaked, features, cache):
    """Nucleus sampling with a tiny top_p is greedy: the shared-prefix loop and one generate over P x G prompts
    give the same completions, stops and widths included."""
    reference = _rollout(_with(peaked, shared_prefix=False), features, top_p=1e-6)
    shared = _rollout(_with(peaked, cache=cache), features, top_p=1e-6)
    assert torch.equal(shared.completion_ids, reference.completion_ids) and shared.texts == reference.texts
    assert shared.completion_ids.shape[1] < 12 and len(set(shared.completion_mask.sum(1).tolist())) > 1


def test_sampled_shared_rollout_has_generate_logits_and_tokens(peaked, features, monkeypatch):
    """With the same seed, the loop draws from the same random stream as generate: each step's logits (raw and
    processed: suppressed vision tokens, temperature, top_p) agree to fp32 tolerance, so the tokens drawn agree."""
    shared_logits, shared_scores = [], []
    process = decoding.process_logits

    def recording(logits, *args):
        shared_logits.append(logits.clone())
        shared_scores.append(process(logits, *args))
        return shared_scores[-1]

    monkeypatch.setattr(decoding, "process_logits", recording)
    settings = {"temperature": 0.7, "top_p": 0.9}
    shared = _rollout(peaked, features, **settings)

    generated = {}
    model = peaked.model
    plain = model.generate

    def recording_generate(**kw):
        out = plain(**kw, return_dict_in_generate=True, output_logits=True, output_scores=True)
        generated.update(logits=out.logits, scores=out.scores)
        return out.sequences

    monkeypatch.setattr(model, "generate", recording_generate)
    reference = _rollout(_with(peaked, shared_prefix=False), features, **settings)
    assert torch.equal(shared.completion_ids, reference.completion_ids)
    assert len(set(shared.completion_mask.sum(1).tolist())) > 2 and len(set(shared.texts)) > 4
    steps = len(generated["logits"])
    assert steps == shared.completion_ids.shape[1] <= len(shared_logits)
    for mine, theirs in zip(shared_logits, generated["logits"], strict=False):  # logits of magnitude ~4
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(shared_scores, generated["scores"], strict=False):
        assert torch.equal(mine.isinf(), theirs.isinf())  # the same tokens suppressed and filtered
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_static_cache_gives_the_dynamic_greedy_completions(judge, peaked, features):
    for j in (judge, peaked):
        dynamic = _rollout(_with(j, cache="dynamic"), features, top_p=1e-6)
        static = _rollout(_with(j, cache="static"), features, top_p=1e-6)
        assert torch.equal(static.completion_ids, dynamic.completion_ids)


def test_compiled_step_is_one_graph_and_a_failing_compiler_falls_back(peaked, features, monkeypatch):
    """The decoding step traces as one graph (fullgraph, the static cache's fixed shapes), compiled once for every
    step of every rollout of the same shapes (a plain backend stands in for the GPU's inductor + CUDA graphs), with
    the uncompiled results; a compiler error only warns."""
    graphs = []

    def backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    monkeypatch.setattr(decoding, "COMPILE_DEVICES", ("cpu",))
    monkeypatch.setattr(decoding, "COMPILE_OPTIONS", {"backend": backend, "fullgraph": True, "dynamic": False})
    model = peaked.model
    static = _with(peaked, cache="static")
    expected = _rollout(_with(peaked, cache="dynamic"), features)
    decoding._COMPILED.pop(model, None)
    try:
        for _ in range(2):
            assert torch.equal(_rollout(static, features).completion_ids, expected.completion_ids)
        assert len(graphs) == 1 and decoding._COMPILED[model] is not decoding._decode_step

        def broken(*args):
            raise RuntimeError("no compiler here")

        decoding._COMPILED[model] = broken
        with pytest.warns(RuntimeWarning, match="compiled decoding failed .*no compiler here"):
            assert torch.equal(_rollout(static, features).completion_ids, expected.completion_ids)
        assert decoding._COMPILED[model] is decoding._decode_step
    finally:
        decoding._COMPILED.pop(model, None)


def _forced(judge, grid, texts, num_generations):
    """A rollout of the given completion texts (each ended by <|im_end|>, right-padded), G per pair."""
    completions = answer_token_ids(judge.tokenizer, texts)
    return assemble(judge.tokenizer, prompt_batch(judge.processor, grid), completions, num_generations)


TEXTS = ["wing: red / blue\nAnswer: same", "crest: tall", "Answer: different", "body: red / red\nbill: long / short",
         "Answer: same", "crest: tall / none\nbody: red / blue\nAnswer: different"]


def _scored(judge, rollout, seed=0, layers=(0, -1)):
    """Log-probs, attention targets and the encoder's gradients of a weighted sum of the log-probs."""
    encoder = VisionEncoder.from_vlm(judge.model)
    pixels, grid = _inputs(judge, seed)
    features = encoder(pixels, grid)
    s = judge.score(features, rollout, attention_layers=list(layers))
    weights = torch.randn(s.logps.shape, generator=torch.Generator().manual_seed(1))
    (s.logps * weights).sum().backward()
    return s, {name: p.grad for name, p in encoder.named_parameters()}


def _assert_same(a, b):
    (sa, ga), (sb, gb) = a, b
    torch.testing.assert_close(sa.logps, sb.logps, rtol=0, atol=1e-5)
    for x, y in zip(sa.image_attention, sb.image_attention, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-5)
    assert ga.keys() == gb.keys()
    for name in ga:
        if gb[name] is None:  # the tiny judge's last DeepStack level feeds nothing (test_scoring)
            assert ga[name] is None, name
            continue
        torch.testing.assert_close(ga[name], gb[name], rtol=1e-5, atol=1e-5, msg=name)


def test_shared_scoring_equals_the_reference(judge, peaked, features):
    """Log-probs, L_KL attention targets and encoder gradients (merger, DeepStack mergers, blocks) of the packed
    pass equal the per-completion pass: verdict rows and all-token rows, left and right padding, G = 3 and a
    sampled rollout of G = 4 with completions of different lengths."""
    grid = _inputs(judge)[1]
    for rollout in (_forced(judge, grid, TEXTS, 3), _rollout(peaked, features)):
        assert not rollout.attention_mask[:, 0].all() and not rollout.completion_mask.all()
        shared = _scored(judge, rollout)
        reference = _scored(_with(judge, shared_prefix=False), rollout)
        _assert_same(shared, reference)
        assert any(g is not None and g.abs().sum() > 0 for g in shared[1].values())


def test_shared_scoring_under_gradient_checkpointing(tiny_vlm_dir, judge):
    """The judge in train mode with checkpointed layers (configs/paper.yaml): the packed pass recomputes its layers
    in backward (counted), and gives the reference's numbers."""
    checkpointed = FrozenJudge.load(tiny_vlm_dir, device="cpu", gradient_checkpointing=True)
    assert checkpointed.model.training and checkpointed.shared_prefix
    calls = []
    hook = checkpointed.model.model.language_model.layers[0].mlp.register_forward_pre_hook(lambda *a: calls.append(1))
    rollout = _forced(judge, _inputs(judge)[1], TEXTS, 3)
    try:
        shared = _scored(checkpointed, rollout)
    finally:
        hook.remove()
    assert len(calls) == 2  # the forward, then the recomputation in backward
    _assert_same(shared, _scored(_with(judge, shared_prefix=False), rollout))
    assert not checkpointed.model.model.language_model.layers[-1].self_attn._forward_hooks  # capture removed


def test_packed_layout(judge):
    """One row per pair: the prompt, then each completion's real tokens; a completion token sees the real prompt
    tokens and its own earlier tokens only; completion token c sits at the prompt's next position + c."""
    grid = _inputs(judge)[1]
    r = _forced(judge, grid, TEXTS, 3)
    lp, lengths = r.prompt_length, r.completion_mask.sum(1)
    p = pack(judge.model, r.input_ids, r.attention_mask, r.completion_mask, lp, r.pair_of, grid,
             judge.tokenizer.pad_token_id)
    length = lp + max(lengths[:3].sum(), lengths[3:].sum())
    assert p.input_ids.shape == (2, length + -length % 16)  # padded to a multiple of 16
    allowed = p.attention_mask[:, 0] == 0
    for n in range(6):
        pair, cols = n // 3, p.columns[n, :lengths[n]]
        assert torch.equal(p.input_ids[pair, cols], r.completion_ids[n, :lengths[n]])
        assert torch.equal(p.input_ids[pair, :lp], r.input_ids[n, :lp])
        for c, col in enumerate(cols.tolist()):
            assert torch.equal(allowed[pair, col, :lp], r.attention_mask[n, :lp].bool())
            assert torch.equal(allowed[pair, col, lp:].nonzero().squeeze(1) + lp, cols[:c + 1])  # own, causal
            assert int(p.predictors[n, c]) == (lp - 1 if c == 0 else cols[c - 1])
        positions = p.position_ids[:, pair, cols]
        assert torch.equal(positions, positions[:1].expand(3, -1))  # text: the three axes agree
        assert torch.equal(positions[0], p.position_ids[:, pair, :lp].max() + 1 + torch.arange(len(cols)))


def test_judge_settings_come_from_the_config_and_are_checked(tiny_config):
    """grpo.shared_prefix and grpo.cache reach the judge a training run builds; an unknown cache is an error."""
    from saga.data import load_dataset
    from saga.errors import ConfigError
    from saga.train.setup import build_parts

    cfg = tiny_config("saga", "grpo.shared_prefix=false", "grpo.cache=static")
    judge = build_parts(cfg, load_dataset("synth", cfg.data.root).train, torch.device("cpu")).judge
    assert (judge.shared_prefix, judge.cache) == (False, "static")
    assert (tiny_config().grpo.shared_prefix, tiny_config().grpo.cache) == (True, "auto")  # the defaults
    with pytest.raises(ConfigError, match="grpo.cache: 'paged' is not one of"):
        tiny_config("saga", "grpo.cache=paged")
    with pytest.raises(ValueError, match="cache 'paged'"):
        FrozenJudge(judge.model, judge.processor, cache="paged")
    assert decoding.resolve_cache("auto", torch.device("cpu")) == "dynamic"
    assert decoding.resolve_cache("auto", torch.device("cuda")) == "static"
