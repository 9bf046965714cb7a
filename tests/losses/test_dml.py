"""The DML registry and the shared proxy-loss base (class-id remapping)."""

import pytest
import torch

from saga.errors import ConfigError, DataError
from saga.losses import PotentialField, ProxyAnchor, build_dml_loss


def test_registry_builds_by_name_with_options():
    pa = build_dml_loss("proxy_anchor", 4, 8, margin=0.2)
    assert isinstance(pa, ProxyAnchor) and pa.loss_fn.margin == 0.2 and pa.proxies.shape == (4, 8)
    pf = build_dml_loss("potential_field", 4, 8, num_proxies_per_class=3, class_ids=[10, 11, 12, 13])
    assert isinstance(pf, PotentialField) and pf.proxies.shape == (12, 8)
    assert pf.class_ids.tolist() == [10, 11, 12, 13]


def test_registry_errors_name_the_problem():
    with pytest.raises(ConfigError, match="unknown DML loss 'triplet'"):
        build_dml_loss("triplet", 4, 8)
    with pytest.raises(ConfigError, match="proxy_anchor"):
        build_dml_loss("proxy_anchor", 4, 8, num_proxies_per_class=3)


def test_remap_and_unknown_labels():
    pf = PotentialField(3, 2, num_proxies_per_class=1, class_ids=[7, 3, 5])
    assert pf.remap(torch.tensor([3, 5, 7, 7])).tolist() == [0, 1, 2, 2]
    with pytest.raises(DataError, match=r"\[4, 8\]"):
        pf.remap(torch.tensor([4, 3, 8]))
    with pytest.raises(ValueError, match="distinct"):
        PotentialField(3, 2, class_ids=[1, 1, 2])


def test_class_ids_saved_in_state_dict():
    state = ProxyAnchor(2, 3, class_ids=[4, 9]).state_dict()
    assert state["class_ids"].tolist() == [4, 9] and "loss_fn.proxies" in state
