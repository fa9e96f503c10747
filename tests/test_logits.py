"""compress.logits: the one module that scores and compares logits, against values worked out by hand.

Distributions are chosen so that every figure has a closed form: softmax([ln 3, 0]) = (3/4, 1/4),
softmax([0, 0]) = (1/2, 1/2), softmax([0, 1]) against softmax([1, 0]) has KL tanh(1/2).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from compress.logits import (CHUNK, TextScore, compare, kl_per_position, log_probs, log_softmax64, mean_kl,
                             perplexity, target_logp, token_nll)

LN3 = math.log(3.0)


def test_log_probs_is_a_float32_log_softmax_of_arrays_and_tensors():
    got = log_probs(np.array([[LN3, 0.0]], dtype=np.float64))
    assert got.dtype == torch.float32
    assert got.exp().tolist()[0] == pytest.approx([0.75, 0.25], rel=1e-6)
    assert torch.equal(log_probs(torch.zeros(2, 3, 4)), torch.full((2, 3, 4), -math.log(4.0)))


def test_target_logp_and_token_nll_read_the_next_token():
    logp = log_probs(np.array([[LN3, 0.0], [0.0, 0.0]], np.float32))
    assert target_logp(logp, [1, 0]).tolist() == pytest.approx([math.log(0.25), math.log(0.5)], rel=1e-6)
    # ids[1:] under the rows of positions [:-1]; the last row predicts nothing and is not read
    nll = token_nll(np.array([[LN3, 0.0], [0.0, 0.0], [99.0, 0.0]], np.float32), [0, 0, 1])
    assert nll.dtype == np.float32 and nll.tolist() == pytest.approx([math.log(4 / 3), math.log(2.0)], rel=1e-6)


def test_kl_of_three_quarters_against_a_fair_coin():
    ref, model = log_probs(np.array([[LN3, 0.0]])), log_probs(np.zeros((1, 2)))
    want = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kl_per_position(ref, model).tolist() == pytest.approx([want], rel=1e-6)
    assert mean_kl(ref, torch.zeros(1, 2)) == pytest.approx(want, rel=1e-6)
    assert mean_kl(ref, torch.tensor([[LN3, 0.0]])) == 0.0  # the same distribution


def _window_scores(ref=True):
    """Window [0, 1, 0] scored from position 0: row 0 predicts 1, row 1 predicts 0 (row 2 predicts nothing)."""
    model = np.array([[0.0, LN3], [0.0, 0.0], [5.0, 5.0]], np.float32)  # (1/4, 3/4), (1/2, 1/2)
    reference = np.array([[LN3, 0.0], [LN3, 0.0], [0.0, 9.0]], np.float32)  # (3/4, 1/4) twice
    s = TextScore()
    s.add_window(model, [0, 1, 0], 1, reference if ref else None)
    return s


def test_text_score_perplexity_kl_and_top1_by_hand():
    s = _window_scores()
    assert s.n == 2
    # -ln(3/4) - ln(1/2) over two tokens
    assert s.perplexity == pytest.approx(math.sqrt(8 / 3), rel=1e-6)
    kl_row0 = 0.75 * math.log(0.75 / 0.25) + 0.25 * math.log(0.25 / 0.75)  # = ln 3 / 2
    kl_row1 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert s.mean_kl == pytest.approx((kl_row0 + kl_row1) / 2, rel=1e-6)
    # row 0: the reference puts token 0 first, the model token 1; row 1: a tie goes to the first index
    assert s.top1 == 0.5
    plain = _window_scores(ref=False)
    assert plain.perplexity == s.perplexity and plain.kl == 0.0 and plain.agree == 0


def test_text_score_of_a_model_against_itself_is_zero_kl_and_full_agreement():
    rows = np.random.default_rng(0).standard_normal((300, 50)).astype(np.float32)
    ids = list(range(300))
    s = TextScore()
    s.add_window(rows, [i % 50 for i in ids], 1, rows)
    assert s.n == 299 > CHUNK * 2  # three blocks
    assert s.mean_kl == 0.0 and s.top1 == 1.0


def test_text_score_blocks_add_up_to_one_pass():
    rng = np.random.default_rng(1)
    rows, ref = rng.standard_normal((2, 300, 40)).astype(np.float32)
    ids = [int(i) for i in rng.integers(0, 40, 300)]
    s = TextScore()
    s.add_window(rows, ids, 5, ref)
    lp, lr = log_probs(rows[4:-1]).double(), log_probs(ref[4:-1]).double()
    assert s.n == 295
    assert s.mean_nll == pytest.approx(float(-lp.gather(1, torch.tensor(ids[5:])[:, None]).mean()), rel=1e-5)
    assert s.mean_kl == pytest.approx(float((lr.exp() * (lr - lp)).sum(-1).mean()), rel=1e-4)


def test_compare_per_position_by_hand():
    ref = np.array([[2.0, 0.0], [0.0, 1.0]])
    got = np.array([[2.0, 0.5], [1.0, 0.0]])
    c = compare(ref, got)
    assert c.positions == 2
    assert c.top1.tolist() == [True, False] and c.top1_agreement == 0.5 and c.first_disagreement == 1
    assert c.abs_diff.tolist() == [0.5, 1.0] and c.max_abs == 1.0 and c.worst_abs_position == 1
    assert c.logit_range == 2.0
    # row 0: KL = (lse_q - lse_p) - 0.5 * p_ref(token 1); row 1: softmax([0, 1]) vs softmax([1, 0]) = tanh(1/2)
    lse_p, lse_q = math.log(math.exp(2) + 1), math.log(math.exp(2) + math.exp(0.5))
    row0 = (lse_q - lse_p) - 0.5 / (1 + math.exp(2))
    assert c.kl.tolist() == pytest.approx([row0, math.tanh(0.5)], rel=1e-12)
    assert c.kl_mean == pytest.approx((row0 + math.tanh(0.5)) / 2, rel=1e-12)
    assert c.kl_max == c.kl[1] and c.worst_kl_position == 1


def test_compare_is_float64_whatever_the_input():
    ref = np.array([[0.0, 1e-4, 0.0]], np.float32)
    c = compare(ref, np.zeros((1, 3), np.float32))
    assert c.ref_logp.dtype == np.float64 and c.kl_mean > 0  # float32 would round this KL (~1e-9) away
    same = compare(ref, ref.copy())
    assert same.kl_mean == 0.0 and same.max_abs == 0.0 and same.first_disagreement is None


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    assert perplexity(log_softmax64(np.zeros((5, 7))), [0, 1, 2, 3, 4]) == pytest.approx(7.0, rel=1e-12)
    logp = log_softmax64(np.array([[LN3, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    assert perplexity(logp, [0, 0, 1]) == pytest.approx(math.sqrt(8 / 3), rel=1e-12)
