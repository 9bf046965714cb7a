import dataclasses

import pytest
import torch

from saga.config import LossWeights
from saga.data import ImageDataset, load_dataset
from saga.judge.prompts import format_comparison
from saga.train.batches import StepBatches
from saga.train.loop import combine
from saga.train.methods import Batch, dml_step, saga_step
from saga.train.setup import build_parts


def _setup(cfg):
    split = load_dataset("synth", cfg.data.root).train
    parts = build_parts(cfg, split, torch.device("cpu"))
    ids = StepBatches(split.labels, m=cfg.dml.m_per_class, batch_size=cfg.dml.batch_size, seed=cfg.seed).batch(0)
    images, labels = zip(*(ImageDataset(split)[i] for i in ids), strict=True)
    batch = Batch(parts.preprocessor(images), torch.tensor(labels), [str(split.paths[i]) for i in ids])
    return parts, batch


def _mixed_verdicts(judge):
    """A random tiny judge rarely states a verdict (all rewards 0, no GRPO gradient). Make every group of two hold
    one correct and one wrong verdict, so that the advantages are +-1 and L_GRPO has a gradient."""
    rollout = judge.rollout

    def patched(enc_out, **kwargs):
        r = rollout(enc_out, **kwargs)
        return dataclasses.replace(r, verdicts=[bool(n % 2) for n in range(len(r.verdicts))])

    judge.rollout = patched


def _grads(loss, params):
    return torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)


def _nonzero(grads):
    return [g is not None and bool(g.abs().sum() > 0) for g in grads]


def test_combine_weights_and_flattens_every_term():
    terms = {"grpo": {"loss": torch.tensor(2.0), "clip_ratio": torch.tensor(0.5)}, "dml": {"loss": torch.tensor(3.0)}}
    loss, metrics = combine(terms, LossWeights(grpo=0.5, kl=9.0, dml=2.0))
    assert float(loss) == 0.5 * 2.0 + 2.0 * 3.0
    assert {k: float(v) for k, v in metrics.items()} == {"loss": 7.0, "grpo/loss": 2.0, "grpo/clip_ratio": 0.5,
                                                          "dml/loss": 3.0}


def test_saga_step_warns_when_every_completion_is_cut_before_its_verdict(tiny_config):
    cfg = tiny_config("saga")  # max_completion_length = 6: far too short for a comparison and its verdict
    parts, batch = _setup(cfg)
    with pytest.warns(RuntimeWarning, match="raise grpo.max_completion_length"):
        result = saga_step(parts, cfg, batch, 0)
    assert result.stats["clipped_ratio"] == 1.0 and result.stats["parse_failures"] == 1.0
    assert float(result.terms["grpo"]["loss"]) == 0.0


def test_saga_gradients_reach_only_encoder_pooler_and_proxies(tiny_config):
    cfg = tiny_config("saga")
    parts, batch = _setup(cfg)
    _mixed_verdicts(parts.judge)
    judge_before = {k: v.clone() for k, v in parts.judge.model.state_dict().items()}
    encoder_before = [p.detach().clone() for p in parts.encoder.parameters()]

    result = saga_step(parts, cfg, batch, 0)
    assert set(result.terms) == {"grpo", "kl", "dml"}
    assert float(result.stats["frac_reward_zero_std"]) == 0.0 and result.stats["verdict_accuracy"] == 0.5
    assert len(result.completions) == 4 and {"image_a", "image_b", "same", "text", "reward"} <= set(
        result.completions[0])

    encoder, pooler = list(parts.encoder.parameters()), list(parts.pooler.parameters())
    proxies = list(parts.dml_loss.proxy_parameters())
    # Each term reaches what it should: L_GRPO the encoder only (through the judge), L_KL the pooler's query
    # (the only pooler weight with a gradient while the query is zero, i.e. attention uniform), L_DML all three.
    grpo = _grads(result.terms["grpo"]["loss"], encoder + pooler + proxies)
    assert sum(_nonzero(grpo[:len(encoder)])) > len(encoder) // 2
    assert all(g is None for g in grpo[len(encoder):])
    kl = dict(zip([n for n, _ in parts.pooler.named_parameters()], _grads(result.terms["kl"]["loss"], pooler),
                  strict=True))
    assert _nonzero([kl["query"]]) == [True]
    dml = _grads(result.terms["dml"]["loss"], encoder + proxies)
    assert any(_nonzero(dml[:len(encoder)])) and all(_nonzero(dml[len(encoder):]))

    loss, _ = combine(result.terms, cfg.weights)
    parts.optimizer.zero_grad()
    loss.backward()
    assert all(p.grad is None for p in parts.judge.model.parameters())
    parts.optimizer.step()
    for name, value in parts.judge.model.state_dict().items():
        assert torch.equal(value, judge_before[name]), name  # bit-identical
    assert any(not torch.equal(p, q) for p, q in zip(parts.encoder.parameters(), encoder_before, strict=True))


def test_beta_adds_the_k3_kl_to_the_initial_encoder(tiny_config):
    cfg = tiny_config("saga", "grpo.beta=0.5")
    parts, batch = _setup(cfg)
    result = saga_step(parts, cfg, batch, 0)
    # The encoder still equals its initial copy: the policy is the reference, so k3 = 0 exactly.
    assert float(result.terms["grpo"]["kl"]) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        next(parts.encoder.parameters()).add_(0.05)
    assert float(saga_step(parts, cfg, batch, 0).terms["grpo"]["kl"]) > 1e-6


def test_baseline_step_trains_encoder_and_proxies_with_the_dml_loss(tiny_config):
    cfg = tiny_config("potential_field")
    parts, batch = _setup(cfg)
    result = dml_step(parts, cfg, batch, 0)
    assert set(result.terms) == {"dml"} and not result.completions
    result.terms["dml"]["loss"].backward()
    assert any(_nonzero([p.grad for p in parts.encoder.parameters()]))
    assert all(_nonzero([p.grad for p in parts.dml_loss.proxy_parameters()]))


def test_encoder_activation_checkpointing_gives_the_same_gradients(tiny_config):
    grads = []
    for flag in ("false", "true"):
        parts, batch = _setup(tiny_config("proxy_anchor", f"model.encoder_gradient_checkpointing={flag}"))
        assert all(block.gradient_checkpointing == (flag == "true") for block in parts.encoder.tower.blocks)
        dml_step(parts, tiny_config("proxy_anchor"), batch, 0).terms["dml"]["loss"].backward()
        grads.append([p.grad for p in parts.encoder.parameters()])
    # (DeepStack mergers get no gradient from the pooled embedding, with or without checkpointing)
    assert all((a is None and b is None) or torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads, strict=True))
    assert sum(g is not None for g in grads[1]) > len(grads[1]) // 2


def test_attribute_reward_adds_the_share_of_values_stated_correctly(tiny_config):
    cfg = tiny_config("saga", "grpo.attribute_reward=0.5")
    parts, batch = _setup(cfg)
    data = load_dataset("synth", cfg.data.root)
    batch.attributes = [data.class_attributes[int(y)] for y in batch.labels]
    crest = batch.attributes[0]["crest"]
    rollout = parts.judge.rollout

    def patched(enc_out, **kwargs):  # every completion: "crest: <value> / <value>" and no verdict
        r = rollout(enc_out, **kwargs)
        return dataclasses.replace(r, texts=[f"crest: {crest} / {crest} match"] * len(r.texts),
                                   verdicts=[None] * len(r.texts))

    parts.judge.rollout = patched
    result = saga_step(parts, cfg, batch, 0)
    label_of = {str(p): int(y) for p, y in zip(data.train.paths, data.train.labels, strict=True)}
    for row in result.completions:
        a, b = (data.class_attributes[label_of[row[k]]] for k in ("image_a", "image_b"))
        right = (a["crest"] == crest) + (b["crest"] == crest)
        assert row["reward"] == pytest.approx(0.5 * right / (len(a) + len(b)))  # no verdict: the verdict reward is 0
    assert any(row["reward"] > 0 for row in result.completions)


def test_attribute_nll_teacher_forces_each_pairs_true_comparison(tiny_config):
    cfg = tiny_config("saga", "weights.attribute_nll=1.0")
    parts, batch = _setup(cfg)
    data = load_dataset("synth", cfg.data.root)
    batch.attributes = [data.class_attributes[int(y)] for y in batch.labels]
    seen = []
    forced = parts.judge.teacher_forced

    def spy(enc_out, answers):
        seen.extend(answers)
        return forced(enc_out, answers)

    parts.judge.teacher_forced = spy
    result = saga_step(parts, cfg, batch, 0)
    assert set(result.terms) == {"grpo", "kl", "dml", "attribute_nll"}
    # Rows of the completion log share the pairs' order: the answers are the true comparisons of those pairs.
    label_of = {str(p): int(y) for p, y in zip(data.train.paths, data.train.labels, strict=True)}
    pairs = list(dict.fromkeys((row["pair"], row["image_a"], row["image_b"], row["same"])
                               for row in result.completions))
    assert seen == [format_comparison(data.class_attributes[label_of[a]], data.class_attributes[label_of[b]], same)
                    for _, a, b, same in pairs]
    assert len(seen) == cfg.grpo.pairs_per_step and "Answer: same" in "".join(seen)
    term = result.terms["attribute_nll"]
    assert float(term["loss"].detach()) > 0 and 0 < float(term["answer_token_prob"]) < 1
    encoder = list(parts.encoder.parameters())
    assert sum(_nonzero(_grads(term["loss"], encoder))) > len(encoder) // 2


def test_a_vocabulary_names_its_attributes_in_the_prompt_and_restricts_the_attribute_terms(tiny_config):
    cfg = tiny_config("saga", "weights.attribute_nll=1.0", "grpo.attribute_reward=1.0",
                      "model.vocabulary=[tail_shape, crest]")
    parts, batch = _setup(cfg)
    assert parts.judge.vocabulary == ["tail_shape", "crest"]
    data = load_dataset("synth", cfg.data.root)
    batch.attributes = [data.class_attributes[int(y)] for y in batch.labels]
    prompts, answers = [], []
    rollout, forced = parts.judge.rollout, parts.judge.teacher_forced

    def spy_rollout(enc_out, **kw):
        r = rollout(enc_out, **kw)
        prompts.append(parts.processor.tokenizer.decode(r.input_ids[0, :r.prompt_length]))
        return r

    def spy_forced(enc_out, texts):
        answers.extend(texts)
        return forced(enc_out, texts)

    parts.judge.rollout, parts.judge.teacher_forced = spy_rollout, spy_forced
    saga_step(parts, cfg, batch, 0)
    assert "Compare these attributes one by one: tail_shape, crest." in prompts[0]
    assert answers and all([line.split(":")[0] for line in a.splitlines()] == ["tail_shape", "crest", "Answer"]
                           for a in answers)
