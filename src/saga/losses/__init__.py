"""SAGA's training losses, each returning a dict of named terms (see `saga.losses.base`).

    L_GRPO  grpo.group_advantages + grpo.grpo_loss       policy gradient through the frozen judge
    L_KL    attention_kl.attention_kl                    pooler attention towards the judge's
    L_DML   build_dml_loss("proxy_anchor" | "potential_field", ...)   metric learning on the pooled embedding
            build_dml_loss("infonce", ...)                 InfoNCE, hard negatives' gradient amplified (AGFF-Embed)
    L_ATTR  answer_nll.answer_nll                        an oracle diagnostic, not the paper's (its docstring)

The DML loss is the one users choose by name in the config, hence the registry below.
"""

from __future__ import annotations

from collections.abc import Sequence

from saga.errors import ConfigError
from saga.losses.answer_nll import answer_nll
from saga.losses.attention_kl import attention_kl
from saga.losses.base import LossTerms, loss_terms
from saga.losses.dml import ProxyLoss
from saga.losses.grpo import group_advantages, grpo_loss, kl_k3
from saga.losses.infonce import InfoNCE, infonce_from_similarity
from saga.losses.potential_field import PotentialField
from saga.losses.proxy_anchor import ProxyAnchor
from saga.registry import Registry

DML_LOSSES: Registry[type[ProxyLoss]] = Registry("DML loss")
DML_LOSSES.register("proxy_anchor", ProxyAnchor)
DML_LOSSES.register("potential_field", PotentialField)
DML_LOSSES.register("infonce", InfoNCE)


def build_dml_loss(
    name: str, num_classes: int, embedding_size: int, *, class_ids: Sequence[int] | None = None, **kwargs
) -> ProxyLoss:
    """The DML loss called `name`; kwargs are that loss's own options (margin, alpha, num_proxies_per_class...)."""
    loss_cls = DML_LOSSES.get(name)
    try:
        return loss_cls(num_classes, embedding_size, class_ids=class_ids, **kwargs)
    except TypeError as err:  # an option the chosen loss does not have
        raise ConfigError(f"DML loss {name!r}: {err}") from None


__all__ = [
    "DML_LOSSES", "InfoNCE", "LossTerms", "PotentialField", "ProxyAnchor", "ProxyLoss", "answer_nll", "attention_kl",
    "build_dml_loss", "group_advantages", "grpo_loss", "infonce_from_similarity", "kl_k3", "loss_terms",
]
