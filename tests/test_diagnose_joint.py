"""keep8's options measured together: the search for the fewest layers whose measured fix reaches the share,
and the in-place substitution that measures them."""

from __future__ import annotations

import pytest
import torch

from compress.diagnose import joint
from compress.diagnose.fixes import KeepOption


def options(n: int, before: float) -> list[KeepOption]:
    # additive estimates that over-promise: each layer "recovers" 20% of the loss
    return [KeepOption(i, [f"u{j}" for j in range(i)], [f"t{j}" for j in range(i)], 100 * i,
                       max(before * (1 - 0.2 * i), 0.0)) for i in range(1, n + 1)]


@pytest.fixture
def fake_joint(monkeypatch):
    """Measured KL: each layer in place recovers 10% (half what the additive estimate says)."""
    calls: list[int] = []

    def fake(model, w8, tensors, toks, ref_logp):
        calls.append(len(tensors))
        return 1.0 * (1 - 0.1 * len(tensors))

    monkeypatch.setattr(joint, "joint_kl", fake)
    return calls


@pytest.mark.parametrize("start", [1, 3, 5, 6, 8])
def test_search_lands_on_the_fewest_measured_layers_reaching_the_share(fake_joint, start):
    opts = options(8, 1.0)
    n = joint.measure_options(None, None, opts, 1.0, 0.5, None, None, start=start)
    assert n == 5  # 1 - 0.1 * 5 = 0.5: the first whose measured recovery reaches half
    assert {5, 4} <= set(fake_joint)  # the one chosen and the one below, both measured
    by_n = {o.n: o for o in opts}
    assert by_n[5].basis == "measured" and by_n[5].predicted_kl == pytest.approx(0.5)
    assert by_n[5].additive_kl == pytest.approx(0.0)  # the over-promising estimate, kept beside it
    assert all(o.basis == "additive" for o in opts if o.n not in fake_joint)


def test_short_of_the_share_everywhere_suggests_them_all(fake_joint):
    opts = options(3, 1.0)
    assert joint.measure_options(None, None, opts, 1.0, 0.5, None, None, start=1) == 3


def test_keep_measures_only_that_option(fake_joint):
    opts = options(8, 1.0)
    assert joint.measure_options(None, None, opts, 1.0, 0.5, None, None, start=2, keep=2) == 2
    assert fake_joint == [2]


def test_substituted_weights_are_put_back_exactly_even_when_tied():
    lin = torch.nn.Linear(4, 3, bias=False)
    model = torch.nn.Module()
    model.a, model.b = lin, torch.nn.Linear(4, 3, bias=False)
    model.b.weight = lin.weight  # tied, as an embedding and lm_head can be
    orig = lin.weight.detach().clone()
    with joint.substituted(model, {"a": torch.zeros(3, 4), "b": torch.ones(3, 4)}):
        assert torch.equal(model.a.weight, torch.ones(3, 4))  # the later write wins on a shared tensor
    assert torch.equal(model.a.weight, orig) and torch.equal(model.b.weight, orig)
