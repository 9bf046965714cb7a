"""Typed run configuration: dataclasses loaded from YAML, with dotted command-line overrides.

Every field carries a one-line help (``metadata["help"]``; `describe()` lists them). Unknown keys and values of
the wrong type are errors that name the key and the file, so a typo never silently falls back to a default. The
values the paper leaves unstated (docs/method.md, "What the paper does not state") are fields here, with the choice
made written in the presets under ``configs/``.

Composition: a YAML file may name a parent with ``base: path.yaml`` (relative to the file). The parent is loaded
first (it may have its own ``base``) and the file's keys are merged over it, section by section; lists and scalars
are replaced, not merged. Overrides from the command line apply last.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from saga.errors import ConfigError


def _f(default: Any, help: str, *, ge: float | None = None, gt: float | None = None, le: float | None = None) -> Any:
    """A dataclass field with a help line and its allowed range (ge: >=, gt: >, le: <=; checked at load time)."""
    metadata = {"help": help, "ge": ge, "gt": gt, "le": le}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class DataConfig:
    dataset: str = _f("synth", "dataset name, one of saga.data.DATASETS (cub, cars, aircraft, inat_aves, ...)")
    root: str = _f("data/synth", "dataset root folder")
    split_file: str | None = _f(None, "folder datasets: file listing the train classes")
    image_size: int = _f(64, "images are resized to this many pixels a side before the processor", ge=1)
    num_workers: int = _f(0, "DataLoader worker processes", ge=0)
    eval_batch_size: int = _f(64, "images per batch when embedding the test split", ge=1)
    check_counts: bool = _f(True, "refuse a full official set whose image or class counts differ from the published "
                                  "ones (false: load it with a warning, e.g. with images held out on purpose)")


@dataclass
class ModelConfig:
    judge: str = _f("", "frozen MLLM judge: hub id (e.g. Qwen/Qwen3-VL-8B-Instruct) or local directory")
    vocabulary: list[str] | str | None = _f("auto", "attributes the judge's prompt names: auto (the dataset's; none "
                                             "for a synthetic judge pretrained without), a list, a file, or null")
    backbone: str | None = _f(None, "encoder initialisation; None = the judge's own vision tower (paper setting)")
    pooler: str = _f("auto", "a pooler of saga.models.POOLERS (mean, attention), or auto: the method's own")
    pooler_heads: int = _f(1, "attention pooler heads (their weights are averaged into one distribution)", ge=1)
    embed_dim: int | None = _f(None, "output projection of the pooler; None = keep the LLM width", ge=1)
    dtype: str = _f("auto", "judge dtype: float32, bfloat16 or auto (bf16 on GPU, fp32 on CPU)")
    encoder_dtype: str = _f("float32", "trainable encoder dtype (fp32 master weights beside a bf16 judge)")
    attn_implementation: str = _f("sdpa", "judge attention kernel; attention targets come from hooks, not eager")
    gradient_checkpointing: bool = _f(False, "recompute the judge's activations in the backward pass to save memory")
    encoder_gradient_checkpointing: bool = _f(False, "recompute the encoder's activations in backward (memory)")
    trust_remote_code: bool = _f(False, "allow custom model code from the checkpoint (off: never by default)")
    judge_sharding: str = _f("none", "none: every data-parallel process holds the whole judge; fsdp: its "
                                     "language-model layers are sharded over the processes (FSDP2), for a judge "
                                     "larger than one GPU")


@dataclass
class GRPOConfig:
    num_generations: int = _f(8, "G: completions sampled per image pair", ge=1)
    pairs_per_step: int = _f(4, "image pairs judged per optimiser step", ge=1)
    max_completion_length: int = _f(64, "completion tokens sampled at most", ge=1)
    temperature: float = _f(1.0, "sampling temperature of the rollouts; L_GRPO scores them at it too (TRL)", gt=0)
    top_p: float = _f(1.0, "nucleus sampling threshold of the rollouts", gt=0, le=1)
    cache: str = _f("auto", "rollout KV cache: static (fixed shapes, decoding compiled on CUDA), dynamic, or auto "
                            "(static on CUDA, dynamic on CPU)")
    shared_prefix: bool = _f(True, "read each pair's prompt once for its G completions, in rollouts and scoring "
                                   "(Qwen3-VL judges, sdpa or eager attention); false: a copy per completion")
    scale_rewards: str = _f("group", "advantage scaling: group, batch or none (Dr. GRPO)")
    loss_type: str = _f("grpo", "token aggregation: grpo, bnpo, dr_grpo or dapo")
    beta: float = _f(0.0, "weight of the k3 KL to the initial encoder (0: no reference pass)", ge=0)
    epsilon_low: float = _f(0.2, "lower PPO clip range", ge=0, le=1)
    epsilon_high: float = _f(0.2, "upper PPO clip range", ge=0)
    same_fraction: float = _f(0.5, "share of same-class pairs", ge=0, le=1)
    hard_negative_fraction: float = _f(0.5, "share of different-class pairs that are in-batch hardest negatives",
                                       ge=0, le=1)
    attribute_reward: float = _f(0.0, "weight of an added reward: the share of attribute values the judge states "
                                      "correctly (datasets with class attributes; an extension, not the paper's)", ge=0)
    log_completions_every: int = _f(50, "steps between sample-completion tables in the log (0: never)", ge=0)


@dataclass
class AttentionConfig:
    layers: list[int] = _f([-1], "judge LLM layers whose attention to image tokens is the KL target")
    direction: str = _f("forward", "forward = KL(judge || pooler), reverse = KL(pooler || judge)")


@dataclass
class DMLConfig:
    loss: str = _f("auto", "a loss of saga.losses.DML_LOSSES (proxy_anchor, potential_field), or auto: the method's")
    batch_size: int = _f(32, "images per step (m-per-class batch); the SAGA pairs are drawn from it", ge=1)
    m_per_class: int = _f(4, "images per class in a batch", ge=1)
    neighbour_classes: int = _f(0, "pair each batch class with one of its k nearest classes under the initial "
                                   "encoder, so in-batch negatives are near misses; 0 = random classes", ge=0)
    margin: float | None = _f(None, "Proxy Anchor delta; None = its default 0.1", ge=0)
    alpha: float | None = _f(None, "Proxy Anchor alpha (default 32) / Potential Field exponent (default 1)", gt=0)
    proxies_per_class: int | None = _f(None, "Potential Field proxies per class; None = its default 15", ge=1)
    radius: float | None = _f(None, "Potential Field repulsion radius; None = its default 1.0", gt=0)
    temperature: float | None = _f(None, "InfoNCE temperature; None = its default 0.02", gt=0)
    ega: float | None = _f(None, "InfoNCE: gradient amplification of hard negatives (EGA, arXiv 2506.02020, our "
                                 "reconstruction); None = its default 1.0, 0 = plain InfoNCE", ge=0)


@dataclass
class LossWeights:
    grpo: float = _f(1.0, "weight of L_GRPO", ge=0)
    kl: float = _f(1.0, "weight of L_KL (attention alignment)", ge=0)
    dml: float = _f(1.0, "weight of L_DML", ge=0)
    attribute_nll: float = _f(0.0, "weight of L_ATTR, the NLL of each pair's true comparison through the judge "
                                   "(an oracle diagnostic that needs class attributes; not the paper's)", ge=0)


@dataclass
class AgffConfig:
    aspects: list[str] | None = _f(None, "AGFF-Embed: fine-grained aspects, one prompt each after the global one; "
                                         "None = the dataset's attribute groups (synth, cub); [] = global only")
    global_prompt: str = _f("Summarize the {subject} in the image in one word.",
                            "AGFF-Embed's global prompt ({subject}: bird, car, aircraft or object, by dataset)")
    aspect_prompt: str = _f("Describe the {aspect} of the {subject} in the image in one word.",
                            "AGFF-Embed's fine-grained prompt, one per aspect ({aspect}: 'bill shape', "
                            "{aspect_name}: 'bill_shape')")
    trainable: str = _f("lora", "what AGFF-Embed trains in the MLLM: lora (peft adapters on agff.lora_targets) or "
                                "modules (agff.train_modules in full)")
    lora_rank: int = _f(8, "LoRA rank", ge=1)
    lora_alpha: float = _f(16.0, "LoRA scale numerator (the update is scaled by alpha / rank)", gt=0)
    lora_dropout: float = _f(0.0, "dropout on the LoRA input", ge=0, le=1)
    lora_targets: list[str] = _f(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                                  "attn.qkv", "attn.proj", "linear_fc1", "linear_fc2"],
                                 "module names (or dotted name endings) that get LoRA adapters: the LLM's and the "
                                 "vision tower's linear layers")
    train_modules: list[str] = _f(["model.visual"], "trainable=modules: names of the modules trained in full (and "
                                                    "everything under them); the rest of the MLLM is frozen")
    images_per_pass: int = _f(0, "images (one packed LLM sequence of their K prompts each) per forward pass; 0 = "
                                 "the whole batch. With gradient each pass is recomputed in backward (memory)", ge=0)


@dataclass
class OptimConfig:
    steps: int = _f(200, "optimiser steps (eval_only: true trains none)", ge=1)
    lr_encoder: float = _f(1e-5, "learning rate of the vision encoder", ge=0)
    lr_pooler: float = _f(1e-4, "learning rate of the pooler", ge=0)
    lr_proxies_mult: float = _f(100.0, "proxy learning rate = lr_encoder x this (Proxy Anchor practice)", ge=0)
    weight_decay: float = _f(1e-4, "AdamW weight decay (not on proxies, norms, biases)", ge=0)
    warmup_steps: int = _f(0, "linear warm-up steps (then constant learning rates)", ge=0)
    grad_clip: float = _f(1.0, "max gradient norm; 0 disables clipping", ge=0)
    max_skipped_steps: int = _f(10, "a step whose loss or gradient is not finite is skipped (no update); the run "
                                    "stops after this many in a row", ge=1)


@dataclass
class TrainConfig:
    method: str = _f("saga", "a method of saga.train.METHODS: saga, proxy_anchor, potential_field, agff")
    seed: int = _f(0, "seed of every random number generator", ge=0)
    out_dir: str = _f("runs/default", "run directory: config, metrics.jsonl, TensorBoard events, checkpoints")
    device: str = _f("auto", "cpu, cuda or auto")
    eval_only: bool = _f(False, "train no step: evaluate and export the initial model (the 'pre-trained backbone' "
                                "row of a results table)")
    log_every: int = _f(10, "steps between metric log lines (0: only the last step)", ge=0)
    eval_every: int = _f(0, "steps between test-split evaluations (0: only at the end)", ge=0)
    checkpoint_every: int = _f(50, "steps between checkpoints (0: only at the end)", ge=0)
    keep_checkpoints: int = _f(3, "complete checkpoints kept, older ones deleted (0: keep all)", ge=0)
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "dataset"})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "judge, encoder and pooler"})
    grpo: GRPOConfig = field(default_factory=GRPOConfig, metadata={"help": "L_GRPO rollouts and aggregation"})
    attention: AttentionConfig = field(default_factory=AttentionConfig, metadata={"help": "L_KL targets"})
    dml: DMLConfig = field(default_factory=DMLConfig, metadata={"help": "L_DML"})
    weights: LossWeights = field(default_factory=LossWeights, metadata={"help": "loss weights"})
    agff: AgffConfig = field(default_factory=AgffConfig, metadata={"help": "AGFF-Embed (method agff)"})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "optimiser"})

    @property
    def needs_class_attributes(self) -> bool:
        """grpo.attribute_reward and weights.attribute_nll read each training class's attributes."""
        return bool(self.grpo.attribute_reward or self.weights.attribute_nll)


# ---------------------------------------------------------------- loading and overriding
def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check (and gently convert) a YAML value against a field's annotated type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    if tp is float and isinstance(value, str):  # YAML reads "1e-5" as a string
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _from_dict(cls: type, data: dict, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _from_dict(tp, value, key)
        else:
            kwargs[name] = _coerce(value, tp, key)
            _check_range(kwargs[name], fields[name].metadata, key)
    return cls(**kwargs)


def _check_range(value: Any, metadata: Any, key: str) -> None:
    """A number against the field's ge / gt / le bounds (None is always allowed where the type admits it)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    ge, gt, le = metadata.get("ge"), metadata.get("gt"), metadata.get("le")
    if (ge is not None and value < ge) or (gt is not None and value <= gt) or (le is not None and value > le):
        bounds = [f">= {ge}" if ge is not None else "", f"> {gt}" if gt is not None else "",
                  f"<= {le}" if le is not None else ""]
        raise ConfigError(f"{key}: {value!r} is out of range (must be {' and '.join(b for b in bounds if b)})")


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {p} is not a section")
    node[leaf] = value


def _merge(parent: dict, child: dict) -> dict:
    """child over parent; sections (dicts) merge key by key, everything else is replaced."""
    out = dict(parent)
    for key, value in child.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """A config file with its `base:` ancestors merged in (paths relative to the file naming them)."""
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"{chain[-1]}: base {path} forms a cycle")
    where = f"{chain[-1]}: base " if chain else ""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{where}{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{where}{path}: is a directory, not a config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where}{path}: cannot read the config file ({e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected a file path, got {base!r}")
    return _merge(_read_yaml(path.parent / base, (*chain, path)), data)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML file (and its `base:` chain), apply ``key.sub=value`` overrides (values parsed as YAML),
    validate every key, type and range. An error names the file, or the override that caused it."""
    data: dict = {}
    src = "defaults"
    if path is not None:
        src = str(path)
        data = _read_yaml(Path(path))
    cfg = config_from_dict(data, src)
    for ov in overrides:  # validated one by one, so that an error blames its override, not the file
        if "=" not in ov:
            raise ConfigError(f"override {ov!r}: expected key.sub=value")
        key, raw = ov.split("=", 1)
        try:
            _set_dotted(data, key.strip(), yaml.safe_load(raw))
        except yaml.YAMLError as e:
            raise ConfigError(f"override {ov!r}: not a YAML value ({e})") from None
        cfg = config_from_dict(data, f"override {ov!r}")
    return cfg


def config_from_dict(data: dict, src: str) -> TrainConfig:
    """A validated TrainConfig from a (possibly partial) dict; `src` names it in errors. Missing keys take their
    defaults, so a run saved before a field was added compares equal to the same run now (a new field's default
    keeps the old behaviour)."""
    try:
        cfg = _from_dict(TrainConfig, data, "")
        _check_choices(cfg)
    except ConfigError as e:
        raise ConfigError(f"{src}: {str(e).lstrip('.')}") from None
    return cfg


# Fields whose value is one of a few names: checked at load time, so a typo fails before any model is loaded.
CHOICES: dict[str, tuple[str, ...]] = {
    "grpo.scale_rewards": ("group", "batch", "none"),
    "grpo.loss_type": ("grpo", "bnpo", "dr_grpo", "dapo"),
    "grpo.cache": ("auto", "static", "dynamic"),
    "attention.direction": ("forward", "reverse"),
    "model.judge_sharding": ("none", "fsdp"),
    "agff.trainable": ("lora", "modules"),
}


def choices() -> dict[str, tuple[str, ...]]:
    """Every field whose value is a name, with the names allowed: `CHOICES` and the registries' names (imported
    here, not at the top, so that reading a config stays light)."""
    from saga.data import DATASETS
    from saga.losses import DML_LOSSES
    from saga.models import POOLERS
    from saga.train.methods import METHODS

    return {"method": METHODS.names(), "data.dataset": DATASETS.names(), "model.pooler": ("auto", *POOLERS.names()),
            "dml.loss": ("auto", *DML_LOSSES.names()), **CHOICES}


def _check_choices(cfg: TrainConfig) -> None:
    for dotted, allowed in choices().items():
        value: Any = cfg
        for part in dotted.split("."):
            value = getattr(value, part)
        if value not in allowed:
            raise ConfigError(f"{dotted}: {value!r} is not one of {list(allowed)}")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def describe(cls: type = TrainConfig, prefix: str = "") -> list[str]:
    """One line per field: dotted key, default, help (`saga train --help-config`)."""
    lines = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            lines += describe(tp, f"{prefix}{f.name}.")
        else:
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            lines.append(f"{prefix}{f.name} = {default!r}  # {f.metadata.get('help', '')}")
    return lines
