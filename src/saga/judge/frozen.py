"""The frozen multimodal judge of SAGA: a Qwen-VL model that never trains, read through the encoder's tokens.

docs/method.md: the MLLM is frozen throughout and dropped at inference; its role is to turn the encoder's
image tokens into completions (`rollout`), per-token log-probs whose gradient reaches the encoder (`score`) and
attention targets (`score(..., attention_layers=...)`); `teacher_forced` makes given answers scorable. Freezing is
by `requires_grad=False` on every parameter, never by writing through `.data`, so autograd still carries gradient
through the judge into its inputs.

Mode (docs/method.md, "The judge"): gradient checkpointing only runs on modules in train mode, and a frozen LLM
in eval mode keeps every layer's activations for the backward pass. With checkpointing on, the judge is kept in
train mode (Qwen-VL's attention dropout is 0, so its outputs do not change); without it, in eval mode. `rollout`
switches to eval mode for decoding only.

A judge larger than one GPU (`model.judge_sharding: fsdp`, `shard`): its language-model layers are sharded over
the data-parallel processes with FSDP2; embeddings, lm_head and the vision tower stay whole on every rank (lm_head
is called outside the model's forward, chunk by chunk, a number of times that differs between ranks). A sharded
layer's forward is a collective, so every rank must run as many forwards: scoring runs one forward and one backward
per rank (shared prefix or not); decoding goes through `generate(synced_gpus=True)`, which runs until every rank's
completions are done, with the layers kept gathered while it decodes (the shared-prefix decoding loop calls the
layers' modules directly, which a sharded layer does not allow).

Vocabulary (saga.data.vocabulary): the attributes the pair prompt names. `judge_vocabulary` resolves the config's
setting; "auto" gives no vocabulary to a synthetic judge pretrained before vocabularies existed, which never saw
a prompt naming attributes (its pretrain.json has no `vocabulary_subsets`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from saga.data.vocabulary import AUTO, resolve_vocabulary
from saga.errors import CheckpointError
from saga.judge import decoding, scoring
from saga.judge import rollout as rollouts
from saga.judge.rollout import Rollout
from saga.judge.scoring import Scores
from saga.models import EncoderOutput, enable_activation_checkpointing, load_vlm

VOCABULARY_KEY = "vocabulary_subsets"  # in a synthetic judge's pretrain.json: it was pretrained on vocabularies


def reads_vocabularies(judge: str | Path) -> bool:
    """Whether the judge was taught prompts that name attributes: False only for a synthetic judge whose
    pretrain.json predates them (a real MLLM has no pretrain.json and reads any prompt)."""
    meta = Path(judge) / "pretrain.json"
    if not meta.is_file():
        return True
    try:
        return VOCABULARY_KEY in json.loads(meta.read_text())
    except (json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{meta}: not readable JSON ({e})") from None


def judge_vocabulary(setting: str | Sequence[str] | None, judge: str | Path, dataset: str,
                     root: str | Path) -> list[str] | None:
    """The attributes the judge's prompt names for a `model.vocabulary` setting (saga.data.vocabulary)."""
    if setting == AUTO and not reads_vocabularies(judge):
        return None
    return resolve_vocabulary(setting, dataset, root)


class FrozenJudge:
    """A frozen Qwen-VL judge. Not an nn.Module on purpose: its parameters never reach an optimizer.

    dataset: the dataset name that picks the prompt's subject (`saga.judge.prompts.pair_prompt`).
    vocabulary: the attributes the prompt names, in order (None: it names none).
    shared_prefix: each pair's prompt read once for its G completions, in rollouts and scoring (`saga.judge.prefix`);
    False: the reference path, every completion with its own copy. cache: the rollouts' KV cache, "static"
    (decoding compiled on CUDA), "dynamic" or "auto" (static on CUDA); see `saga.judge.decoding`.
    """

    def __init__(self, model: nn.Module, processor, *, gradient_checkpointing: bool = False,
                 dataset: str = "synth", vocabulary: Sequence[str] | None = None, shared_prefix: bool = True,
                 cache: str = "auto") -> None:
        self.model = model.requires_grad_(False)
        self.processor = processor
        self.dataset = dataset
        self.vocabulary = None if vocabulary is None else list(vocabulary)
        self.shared_prefix = shared_prefix
        decoding.resolve_cache(cache, self.device)  # a ValueError for an unknown name, now rather than mid-run
        self.cache = cache
        self.sharded = False
        self.gradient_checkpointing = gradient_checkpointing
        if gradient_checkpointing:
            enable_activation_checkpointing(model)
        model.train(gradient_checkpointing)

    @classmethod
    def load(cls, id_or_path: str | Path, *, device: str = "auto", dtype: str | torch.dtype = "auto",
             attn_implementation: str = "sdpa", gradient_checkpointing: bool = False,
             trust_remote_code: bool = False, dataset: str = "synth",
             vocabulary: Sequence[str] | None = None, shared_prefix: bool = True,
             cache: str = "auto") -> FrozenJudge:
        """Load a Qwen3-VL / Qwen2.5-VL checkpoint (hub id or directory) as a frozen judge (see `load_vlm`)."""
        model, processor = load_vlm(id_or_path, device=device, dtype=dtype, attn_implementation=attn_implementation,
                                    trust_remote_code=trust_remote_code)
        return cls(model, processor, gradient_checkpointing=gradient_checkpointing, dataset=dataset,
                   vocabulary=vocabulary, shared_prefix=shared_prefix, cache=cache)

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def assert_frozen(self) -> None:
        """Raise RuntimeError if any judge parameter requires grad (e.g. an optimizer was given the judge's)."""
        trainable = [name for name, p in self.model.named_parameters() if p.requires_grad]
        if trainable:
            raise RuntimeError(f"the judge must stay frozen, but {len(trainable)} parameters require grad: "
                               f"{trainable[:5]}")

    def shard(self, device: torch.device) -> None:
        """Shard the language-model layers over the process group (FSDP2) and move the judge to `device`: each
        rank then holds 1/N of the layers' weights (see the module docstring)."""
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            raise RuntimeError("sharding the judge needs several processes: launch with torchrun or accelerate")
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        for layer in self.layers():
            fully_shard(layer, mesh=mesh)
        self.model.to(device)
        self.sharded = True

    def layers(self) -> nn.ModuleList:
        return self.model.model.language_model.layers

    @contextmanager
    def _gathered(self) -> Iterator[None]:
        """While decoding, keep a sharded judge's layers gathered after their first forward (one all-gather per
        layer for the whole rollout instead of one per decoded token); reshard afterwards."""
        if not self.sharded:
            yield
            return
        for layer in self.layers():
            layer.set_reshard_after_forward(False)
        try:
            yield
        finally:
            for layer in self.layers():
                layer.reshard()
                layer.set_reshard_after_forward(True)

    def rollout(self, enc_out: EncoderOutput, *, num_generations: int = 8, max_new_tokens: int = 128,
                temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None) -> Rollout:
        """G sampled completions per pair of `enc_out` (2P images a0, b0, a1, b1, ...); see `saga.judge.rollout`."""
        with self._gathered():
            return rollouts.rollout(self.model, self.processor, enc_out, dataset=self.dataset,
                                    num_generations=num_generations, max_new_tokens=max_new_tokens,
                                    temperature=temperature, top_p=top_p, seed=seed, vocabulary=self.vocabulary,
                                    shared_prefix=self.shared_prefix and not self.sharded, cache=self.cache,
                                    synced=self.sharded)

    def teacher_forced(self, enc_out: EncoderOutput, answers: Sequence[str]) -> Rollout:
        """Given answers, one per pair of `enc_out`, as a Rollout to `score`; see `saga.judge.rollout`."""
        return rollouts.teacher_forced(self.processor, enc_out, answers, dataset=self.dataset,
                                       vocabulary=self.vocabulary)

    def score(self, enc_out: EncoderOutput, rollout: Rollout, *, attention_layers: list[int] | None = None,
              temperature: float = 1.0) -> Scores:
        """Teacher-forced log-probs of `rollout`'s completions (+ attention targets) under the sampling
        temperature; see `saga.judge.scoring`."""
        return scoring.score(self.model, self.tokenizer, enc_out, rollout, attention_layers=attention_layers,
                             temperature=temperature, shared_prefix=self.shared_prefix)
