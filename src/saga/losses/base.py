"""The convention every SAGA loss follows: it returns a dict of named terms.

`terms["loss"]` is the scalar to back-propagate. Every other key is a detached diagnostic, a 0-d tensor on the
loss's device: keeping it a tensor avoids a host synchronisation inside the training step; the trainer calls
`.item()` only when it logs. One place, `saga.train.loop.combine`, multiplies each `loss` by its weight, sums them
and logs every term (docs/design.md, "One SAGA step").
"""

from __future__ import annotations

import torch

LossTerms = dict[str, torch.Tensor]


def loss_terms(loss: torch.Tensor, **diagnostics: torch.Tensor | float) -> LossTerms:
    """Pack `loss` (with grad) and its diagnostics (detached, as 0-d tensors on `loss.device`)."""
    terms: LossTerms = {"loss": loss}
    for name, value in diagnostics.items():
        if isinstance(value, torch.Tensor):
            terms[name] = value.detach().reshape(())
        else:
            terms[name] = torch.tensor(float(value), device=loss.device)
    return terms
