"""Everything a training run holds, built from the config: judge, encoder, pooler, DML loss, optimizer.

The paper's setting (docs/method.md, "The method"): every method starts from the judge's own vision tower
(Qwen3-VL-8B), the baselines pool by mean and train with their DML loss only, SAGA adds an attention pooler and the
judge's two signals. What a method needs is its record in `saga.train.methods.METHODS`: the judge is loaded only
for a method that reads it; the others read just the tower's tensors from its checkpoint.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from saga.config import TrainConfig
from saga.data.base import Split
from saga.errors import ConfigError
from saga.judge import FrozenJudge, judge_vocabulary
from saga.losses import ProxyLoss, build_dml_loss
from saga.models import (ImagePreprocessor, RetrievalModel, VisionEncoder, build_pooler,
                         enable_activation_checkpointing, load_processor)
from saga.train.distributed import World
from saga.train.methods import METHODS
from saga.utils import resolve_dtype


def pooler_name(cfg: TrainConfig) -> str:
    """"auto": the method's own pooler (SAGA: attention, whose weights L_KL aligns; the baselines: mean)."""
    return METHODS.get(cfg.method).pooler if cfg.model.pooler == "auto" else cfg.model.pooler


def dml_name(cfg: TrainConfig) -> str:
    """"auto": the method's own loss (a baseline's is fixed; SAGA's default is Proxy Anchor, our choice)."""
    method = METHODS.get(cfg.method)
    if method.fixed_dml_loss and cfg.dml.loss not in ("auto", method.dml_loss):
        raise ConfigError(f"method {cfg.method!r} trains with its own loss; dml.loss={cfg.dml.loss!r} conflicts "
                          "(leave it 'auto')")
    return method.dml_loss if cfg.dml.loss == "auto" else cfg.dml.loss


@dataclass
class Parts:
    """The models and the optimizer of a run. judge / reference are None when the method does not use them."""

    model: RetrievalModel  # encoder + pooler + preprocessing (or a method's own model): trained and exported
    dml_loss: ProxyLoss
    optimizer: torch.optim.AdamW
    processor: object  # the judge's (or the backbone's) processor: tokenizer, chat template, image processor
    judge: FrozenJudge | None = None
    reference: VisionEncoder | None = None  # frozen copy of the initial encoder, for GRPO's k3 KL (beta > 0)
    world: World = World()  # this process's rank among the data-parallel processes (saga.train.distributed)

    @property
    def encoder(self) -> VisionEncoder:
        return self.model.encoder

    @property
    def pooler(self) -> nn.Module:
        return self.model.pooler

    @property
    def preprocessor(self) -> ImagePreprocessor:
        return self.model.preprocessor

    def trainable(self) -> dict[str, nn.Module]:
        """The modules a checkpoint saves, by file name: the model's own (encoder and pooler; AGFF-Embed: its
        trained tensors and fusion) and the loss's proxies."""
        return {**self.model.checkpoint_modules(), "loss": self.dml_loss}


def param_groups(cfg: TrainConfig, encoder: nn.Module, pooler: nn.Module, dml_loss: ProxyLoss) -> list[dict]:
    """Named AdamW groups: encoder and pooler (each split into decayed matrices and undecayed norms / biases, the
    usual AdamW practice), and the proxies at lr_encoder x lr_proxies_mult without decay (Proxy Anchor trains
    its proxies 100x faster than the backbone, docs/method.md). `base_lr` is what warm-up scales. A pooler inside
    `encoder` (AGFF-Embed's fusion inside its model) is in the pooler's group only."""
    o = cfg.optim
    groups = []
    in_pooler = {id(p) for p in pooler.parameters()}
    for name, module, lr in (("encoder", encoder, o.lr_encoder), ("pooler", pooler, o.lr_pooler)):
        params = [p for p in module.parameters() if p.requires_grad and (module is pooler or id(p) not in in_pooler)]
        groups.append({"name": name, "params": [p for p in params if p.ndim >= 2], "weight_decay": o.weight_decay,
                       "base_lr": lr})
        groups.append({"name": f"{name}_no_decay", "params": [p for p in params if p.ndim < 2], "weight_decay": 0.0,
                       "base_lr": lr})
    proxies = list(dml_loss.proxy_parameters())
    if {id(p) for p in dml_loss.parameters()} != {id(p) for p in proxies}:
        raise ValueError("the DML loss has parameters besides its proxies; they would not be trained")
    groups.append({"name": "proxies", "params": proxies, "weight_decay": 0.0,
                   "base_lr": o.lr_encoder * o.lr_proxies_mult})
    return [dict(g, lr=g["base_lr"]) for g in groups if g["params"]]


def lr_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up from 1 / warmup_steps to 1 over the first `warmup_steps` steps, then constant."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def _dml_loss(cfg: TrainConfig, train_split: Split, width: int, device: torch.device) -> ProxyLoss:
    """The run's L_DML on embeddings of `width`, with the options the config sets (the others: the loss's
    defaults)."""
    d = cfg.dml
    options = {"margin": d.margin, "alpha": d.alpha, "num_proxies_per_class": d.proxies_per_class, "radius": d.radius,
               "temperature": d.temperature, "amplification": d.ega}
    return build_dml_loss(dml_name(cfg), train_split.num_classes, width, class_ids=sorted(train_split.class_names),
                          seed=cfg.seed, **{k: v for k, v in options.items() if v is not None}).to(device)


def require_judge(cfg: TrainConfig) -> None:
    """A ConfigError unless model.judge is set where the run needs it: a method that reads the judge, or a tower
    taken from the judge's checkpoint (no model.backbone)."""
    if not cfg.model.judge and (METHODS.get(cfg.method).needs_judge or cfg.model.backbone is None):
        raise ConfigError("model.judge is not set: give the judge's hub id or local directory")


def build_parts(cfg: TrainConfig, train_split: Split, device: torch.device, world: World = World()) -> Parts:
    """Load the judge (a method that reads it) or only the tower, then build pooler, loss and optimizer on
    `device`. A method with its own model builder (AGFF-Embed) gets that model, its loss and optimizer instead.
    world: this process among the data-parallel processes (every rank builds the same parts)."""
    method = METHODS.get(cfg.method)
    require_judge(cfg)
    if method.build_model is not None:
        model = method.build_model(cfg, device)
        dml_loss = _dml_loss(cfg, train_split, model.embed_dim, device)
        # "encoder": the model's trained tensors (LoRA adapters or named modules) at lr_encoder; "pooler": its fusion.
        optimizer = torch.optim.AdamW(param_groups(cfg, model, model.pooler, dml_loss))
        return Parts(model, dml_loss, optimizer, model.processor, world=world)
    enc_dtype = resolve_dtype(cfg.model.encoder_dtype, device)
    judge = None
    sharded = cfg.model.judge_sharding == "fsdp"
    if method.needs_judge:
        vocabulary = judge_vocabulary(cfg.model.vocabulary, cfg.model.judge, cfg.data.dataset, cfg.data.root)
        # A judge to shard is loaded on the CPU and sharded before it reaches the GPU (it may not fit there whole).
        judge = FrozenJudge.load(cfg.model.judge, device="cpu" if sharded else str(device),
                                 dtype=resolve_dtype(cfg.model.dtype, device),
                                 attn_implementation=cfg.model.attn_implementation,
                                 gradient_checkpointing=cfg.model.gradient_checkpointing,
                                 trust_remote_code=cfg.model.trust_remote_code, dataset=cfg.data.dataset,
                                 vocabulary=vocabulary, shared_prefix=cfg.grpo.shared_prefix, cache=cfg.grpo.cache)
        processor = judge.processor  # the judge reads the encoder's tokens: same patch grid as its own tower
    else:
        processor = load_processor(cfg.model.backbone or cfg.model.judge, trust_remote_code=cfg.model.trust_remote_code)
    if cfg.model.backbone is None and judge is not None:
        encoder = VisionEncoder.from_vlm(judge.model, dtype=enc_dtype, attn_implementation="sdpa")
    else:
        encoder = VisionEncoder.from_pretrained(cfg.model.backbone or cfg.model.judge, device=str(device),
                                                dtype=enc_dtype)
    encoder.to(device).train()
    if judge is not None:
        _check_compatible(encoder, judge.model)
        if sharded:  # after the encoder copied the judge's tower
            judge.shard(device)
    if cfg.model.encoder_gradient_checkpointing:
        enable_activation_checkpointing(encoder.tower)

    name = pooler_name(cfg)
    if name == "mean" and method.needs_judge and cfg.weights.kl > 0:
        raise ConfigError("L_KL aligns the pooler's attention: use model.pooler=attention, or weights.kl=0")
    pooler = build_pooler(name, encoder.out_dim, num_heads=cfg.model.pooler_heads,
                          embed_dim=cfg.model.embed_dim).to(device)
    dml_loss = _dml_loss(cfg, train_split, cfg.model.embed_dim or encoder.out_dim, device)
    optimizer = torch.optim.AdamW(param_groups(cfg, encoder, pooler, dml_loss))

    reference = None
    if judge is not None and cfg.grpo.beta > 0:
        # GRPO's KL anchor is the initial policy (docs/method.md, L_GRPO); here the policy is the encoder.
        reference = copy.deepcopy(encoder).requires_grad_(False).eval()
    model = RetrievalModel(encoder, pooler, ImagePreprocessor(processor, cfg.data.image_size))
    parts = Parts(model, dml_loss, optimizer, processor, judge, reference, world)
    assert_frozen_judge(parts)
    return parts


def _check_compatible(encoder: VisionEncoder, judge_model: nn.Module) -> None:
    """A tower from model.backbone must emit tokens the judge can read: same width and the same patch grid."""
    vision, text = judge_model.config.vision_config, judge_model.config.text_config
    mine = encoder.tower.config
    if (encoder.out_dim, mine.patch_size, mine.spatial_merge_size) != (
            text.hidden_size, vision.patch_size, vision.spatial_merge_size):
        raise ConfigError(f"model.backbone's tower (width {encoder.out_dim}, patch {mine.patch_size}, merge "
                          f"{mine.spatial_merge_size}) cannot feed the judge (width {text.hidden_size}, patch "
                          f"{vision.patch_size}, merge {vision.spatial_merge_size})")


def assert_frozen_judge(parts: Parts) -> None:
    """The judge has no trainable parameter and none of its parameters is in the optimizer (paper: frozen MLLM)."""
    if parts.judge is None:
        return
    parts.judge.assert_frozen()
    judge_ids = {id(p) for p in parts.judge.model.parameters()}
    optimised = [p for g in parts.optimizer.param_groups for p in g["params"]]
    if any(id(p) in judge_ids for p in optimised):
        raise AssertionError("a judge parameter is in the optimizer; the judge must stay frozen")
