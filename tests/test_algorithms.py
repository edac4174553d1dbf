"""Advantages, the clipped policy loss, KL and TIS against small cases computed by hand."""

import math

import pytest
import torch

from vroll.pipeline import algorithms as alg


def test_grpo_normalises_within_each_group():
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    group = torch.tensor([0, 0, 0, 1, 1, 1])
    adv = alg.compute_advantages(scores, group, "grpo")
    # group 0: mean 1/3, unbiased std sqrt(1/3); group 1: all equal -> 0
    std = math.sqrt(1 / 3)
    expected = [(1 - 1 / 3) / std, -(1 / 3) / std, -(1 / 3) / std, 0, 0, 0]
    assert adv.tolist() == pytest.approx(expected, abs=1e-4)


def test_reinforce_subtracts_the_batch_mean_then_clips_and_whitens():
    scores = torch.tensor([2.0, 0.0, 1.0, 1.0])
    group = torch.arange(4)
    assert alg.compute_advantages(scores, group, "reinforce").tolist() == [1.0, -1.0, 0.0, 0.0]
    assert alg.compute_advantages(scores, group, "reinforce", advantage_clip=0.5).tolist() == [0.5, -0.5, 0.0, 0.0]
    assert alg.compute_advantages(scores, group, "reinforce", reward_clip=1.0).tolist() == [0.25, -0.75, 0.25, 0.25]
    w = alg.compute_advantages(scores, group, "reinforce", whiten=True)
    assert float(w.mean()) == pytest.approx(0.0, abs=1e-6) and float(w.std()) == pytest.approx(1.0, abs=1e-4)


def test_clipped_surrogate_by_hand():
    old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 0.5, 1.1, 1.5]))  # ratios 1.5, 0.5, 1.1, 1.5
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss, clipped = alg.policy_loss_terms(logp, old, adv, clip=0.2)
    # A>0, r=1.5: max(-1.5, -1.2) = -1.2 (clipped); A>0, r=0.5: max(-0.5, -0.8) = -0.5 (not clipped)
    # A<0, r=1.1: max(1.1, 1.1) = 1.1; A<0, r=1.5: max(1.5, 1.2) = 1.5 (not clipped: pessimistic side)
    assert loss.tolist() == pytest.approx([-1.2, -0.5, 1.1, 1.5], abs=1e-6)
    assert clipped.tolist() == [True, False, False, False]


def test_dual_clip_caps_negative_advantage_losses():
    old = torch.zeros(2)
    logp = torch.log(torch.tensor([5.0, 5.0]))
    adv = torch.tensor([-1.0, 1.0])
    loss, _ = alg.policy_loss_terms(logp, old, adv, clip=0.2, dual_clip=3.0)
    # A<0, r=5: plain PPO gives 5, dual clip caps it at -c*A = 3; A>0 untouched: max(-5, -1.2) = -1.2
    assert loss.tolist() == pytest.approx([3.0, -1.2], abs=1e-6)


def test_kl_k3_by_hand_and_zero_on_equal_policies():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # k3 = r - log r - 1 with r = ref/p = 0.5
    assert float(alg.kl_k3(logp, ref)) == pytest.approx(0.5 - math.log(0.5) - 1, abs=1e-6)
    assert float(alg.kl_k3(ref, ref)) == 0.0


def test_truncated_is_weights_and_mismatch():
    trainer = torch.log(torch.tensor([0.5, 0.9]))
    rollout = torch.log(torch.tensor([0.25, 0.9]))
    assert alg.truncated_is_weights(trainer, rollout, cap=1.5).tolist() == pytest.approx([1.5, 1.0], abs=1e-6)
    m = alg.mismatch(trainer, rollout, torch.tensor([1.0, 1.0]))
    assert m["mismatch/logprob_abs_max"] == pytest.approx(math.log(2), abs=1e-6)
    assert m["mismatch/logprob_abs_mean"] == pytest.approx(math.log(2) / 2, abs=1e-6)
