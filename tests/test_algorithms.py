"""ROLL's advantage and loss options against small cases computed by hand from the published
formulas (ROLL's roll/utils/functionals.py and its actor worker; docs/algorithms.md states each)."""

import math
from types import SimpleNamespace

import pytest
import torch

from vroll.config.schema import PipelineConfig
from vroll.pipeline import algorithms as alg


def options(**over):
    """The algorithm keys with their defaults (ROLL's), as a file would give them."""
    return PipelineConfig(**over)


def advantages(scores, group_size, mask=None, kl=None, ctrl=None, **over):
    cfg = options(num_return_sequences_in_group=group_size, **{"adv_estimator": "grpo", **over})
    scores = torch.tensor(scores)
    mask = torch.ones(len(scores), 1) if mask is None else mask
    return alg.compute_advantages(cfg, scores, mask, kl, ctrl, alg.RunningMoments())[0]


def test_grpo_normalises_within_each_group():
    # A_i = (R_i - mean_group) / (std_group + 1e-6), std unbiased; group 1 all equal -> exactly 0
    adv = advantages([1.0, 0.0, 0.0, 1.0, 1.0, 1.0], 3)[:, 0]
    std = math.sqrt(1 / 3)
    expected = [(2 / 3) / (std + 1e-6), -(1 / 3) / (std + 1e-6), -(1 / 3) / (std + 1e-6), 0, 0, 0]
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)


def test_a_group_of_equal_rewards_gets_exactly_zero():
    # eight rewards of 0.2: the float mean is not exactly 0.2, and (0.2 - mean) / (0 + 1e-6) was -0.0147
    for est, over in (("grpo", {}), ("reinforce", {"norm_mean_type": "batch", "norm_std_type": "batch"}),
                      ("reinforce", {"norm_mean_type": "group", "norm_std_type": "group"})):
        adv = advantages([0.2] * 8, 8, adv_estimator=est, **over)
        assert torch.equal(adv, torch.zeros_like(adv)), (est, over)


def test_reinforce_uses_the_raw_reward_unless_normalisation_is_asked():
    # ROLL: reinforce normalises only as norm_mean_type / norm_std_type say (default: neither)
    assert advantages([2.0, 0.0, 1.0, 1.0], 1, adv_estimator="reinforce")[:, 0].tolist() == [2.0, 0.0, 1.0, 1.0]
    # batch mean 1, unbiased batch std sqrt(2/3)
    got = advantages([2.0, 0.0, 1.0, 1.0], 1, adv_estimator="reinforce", norm_mean_type="batch",
                     norm_std_type="batch")[:, 0]
    s = math.sqrt(2 / 3) + 1e-6
    assert got.tolist() == pytest.approx([1 / s, -1 / s, 0.0, 0.0], abs=1e-6)
    # group mean with batch std (LitePPO): groups of 2: (2,0) -> +1,-1 ; (1,1) -> 0, 0; std of the raw batch
    got = advantages([2.0, 0.0, 1.0, 1.0], 2, adv_estimator="reinforce", norm_mean_type="group",
                     norm_std_type="batch")[:, 0]
    assert got.tolist() == pytest.approx([1 / s, -1 / s, 0.0, 0.0], abs=1e-6)


def test_reward_clip_applies_after_normalisation():
    # ROLL: normalise, then clip. Group (3, 0): mean 1.5, unbiased std 2.1213 -> +-0.7071; clip 0.5 -> +-0.5.
    # (vroll used to clip first: (0.5, 0) -> +-0.7071, a different run.)
    adv = advantages([3.0, 0.0], 2, reward_clip=0.5)[:, 0]
    assert adv.tolist() == pytest.approx([0.5, -0.5], abs=1e-6)


def test_whitening_is_over_tokens_and_advantage_clip_last():
    # reinforce, raw rewards 1 and 0 on responses of 3 and 1 tokens: token advantages 1,1,1 | 0.
    # whiten over the 4 tokens: mean 3/4, unbiased var (3 * 1/16 + 9/16) / 3 = 1/4 -> (x - 0.75) / sqrt(0.25 + 1e-8)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    adv = advantages([1.0, 0.0], 1, mask=mask, adv_estimator="reinforce", whiten_advantages=True)
    k = 1 / math.sqrt(0.25 + 1e-8)
    assert adv.flatten().tolist() == pytest.approx([0.25 * k] * 3 + [-0.75 * k, 0, 0], abs=1e-5)
    clipped = advantages([1.0, 0.0], 1, mask=mask, adv_estimator="reinforce", whiten_advantages=True,
                         advantage_clip=1.0)
    assert clipped.flatten().tolist() == pytest.approx([0.25 * k] * 3 + [-1.0, 0, 0], abs=1e-5)


def test_token_level_kl_penalty_and_discounted_return():
    # reward 1 on the last token, minus beta * KL on every token, then G_t = r_t + gamma * G_{t+1}
    mask = torch.ones(1, 3)
    kl = torch.tensor([[0.1, 0.2, 0.3]])
    ctrl = alg.KLController(0.5)
    adv = advantages([1.0], 1, mask=mask, kl=kl, ctrl=ctrl, adv_estimator="reinforce", add_token_level_kl=True,
                     init_kl_coef=0.5, gamma=0.5)
    r = [-0.05, -0.1, 1 - 0.15]
    g2 = r[2]
    g1 = r[1] + 0.5 * g2
    g0 = r[0] + 0.5 * g1
    assert adv[0].tolist() == pytest.approx([g0, g1, g2], abs=1e-6)


def test_adaptive_kl_controller():
    # value *= 1 + clip(kl / target - 1, -0.2, 0.2) * n / horizon
    c = alg.KLController(0.2, target=0.1, horizon=100)
    c.update(current_kl=0.3, n_steps=10)  # error clipped to 0.2
    assert c.value == pytest.approx(0.2 * (1 + 0.2 * 10 / 100))
    fixed = alg.KLController(0.2)
    fixed.update(5.0, 10)
    assert fixed.value == 0.2


@pytest.mark.parametrize("kind, expected", [("kl", math.log(2)), ("abs", math.log(2)),
                                            ("mse", 0.5 * math.log(2) ** 2), ("k3", 0.5 + math.log(2) - 1)])
def test_kl_estimators(kind, expected):
    # d = log p - log ref = log 0.5 - log 0.25 = log 2; k3 = e^-d + d - 1
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert float(alg.kl_estimate(logp, ref, kind)) == pytest.approx(expected, abs=1e-6)
    assert float(alg.kl_estimate(ref, ref, kind)) == 0.0


def test_k3_is_clamped_at_10():
    assert float(alg.kl_k3(torch.tensor([0.0]), torch.tensor([20.0]))) == 10.0


def test_clipped_surrogate_by_hand():
    ratio = torch.tensor([1.5, 0.5, 1.1, 1.5])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss, clipped = alg.clipped_loss(ratio, adv, 0.2, 0.2)
    # A>0, r=1.5: max(-1.5, -1.2) = -1.2 (clipped); A>0, r=0.5: max(-0.5, -0.8) = -0.5
    # A<0, r=1.1: 1.1; A<0, r=1.5: max(1.5, 1.2) = 1.5 (the pessimistic side is not clipped)
    assert loss.tolist() == pytest.approx([-1.2, -0.5, 1.1, 1.5], abs=1e-6)
    assert clipped.tolist() == [True, False, False, False]


def test_clip_higher_uses_the_asymmetric_range():
    cfg = options(use_pg_clip_range=True, pg_clip_low=0.2, pg_clip_high=0.28)
    low, high = alg.clip_range(cfg)
    loss, _ = alg.clipped_loss(torch.tensor([1.5, 0.5]), torch.tensor([1.0, -1.0]), low, high)
    # A>0: min(1.5, 1.28) -> -1.28; A<0: max(0.5, 0.8) * 1 -> 0.8
    assert loss.tolist() == pytest.approx([-1.28, 0.8], abs=1e-6)
    assert alg.clip_range(options(pg_clip=0.3)) == (0.3, 0.3)


def test_dual_clip_uses_rolls_bound():
    # ROLL: the loss of a negative-advantage token is capped at (1 + 2 * pg_clip) * |A| (1.4 at pg_clip 0.2);
    # vroll's old dual_clip_c defaulted to 3.0 and gave 3.0 here
    c = alg.dual_clip_bound(0.2)
    assert c == pytest.approx(1.4)
    loss, _ = alg.clipped_loss(torch.tensor([5.0, 5.0]), torch.tensor([-1.0, 1.0]), 0.2, 0.2, c)
    assert loss.tolist() == pytest.approx([1.4, -1.2], abs=1e-6)


def test_gspo_sequence_ratio():
    # ratio = exp(mean_t(log pi - log pi_old)) on every token of the response
    logp = torch.log(torch.tensor([[2.0, 0.5, 9.0], [1.0, 1.0, 1.0]]))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    r = alg.importance_ratio(logp, torch.zeros(2, 3), mask, "seq")
    assert r.flatten().tolist() == pytest.approx([1.0] * 6, abs=1e-6)  # sqrt(2 * 0.5) = 1
    assert alg.importance_ratio(logp, torch.zeros(2, 3), mask, "token")[0, 0] == pytest.approx(2.0)


def test_loss_aggregation_modes():
    # two responses, padded width 3: losses (1, 2, _) and (3, _, _)
    loss = torch.tensor([[1.0, 2.0, 7.0], [3.0, 7.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    sizes = alg.StepSizes.of(mask)
    assert float(alg.aggregate(loss, mask, "token-mean", sizes)) == pytest.approx((1 + 2 + 3) / 3)
    assert float(alg.aggregate(loss, mask, "seq-mean-token-sum", sizes)) == pytest.approx((3 + 3) / 2)
    assert float(alg.aggregate(loss, mask, "seq-mean-token-mean", sizes)) == pytest.approx((1.5 + 3) / 2)
    assert float(alg.aggregate(loss, mask, "seq-mean-token-sum-norm", sizes)) == pytest.approx(6 / 3)
    # the shares of two micro-batches add up to the whole step's value
    whole = alg.aggregate(loss, mask, "seq-mean-token-mean", sizes)
    parts = sum(alg.aggregate(loss[i:i + 1], mask[i:i + 1], "seq-mean-token-mean", sizes) for i in range(2))
    assert float(parts) == pytest.approx(float(whole))


def test_rl_loss_coef_scales_the_policy_and_kl_terms_not_the_entropy():
    # ROLL's actor: (pg + kl_coef kl) x rl_loss_coef - entropy_coef entropy
    pg, kl, ent = torch.tensor(2.0), torch.tensor(4.0), torch.tensor(10.0)
    assert float(alg.actor_loss(pg, kl, ent, 0.5, 0.25, 0.1)) == pytest.approx((2 + 0.5 * 4) * 0.25 - 0.1 * 10)
    assert float(alg.actor_loss(pg, None, None, 0.5, 0.25, 0.1)) == pytest.approx(0.5)
    assert float(alg.actor_loss(pg, kl, ent, 0.5, 0.0, 0.1)) == pytest.approx(-1.0)  # TOPR example: entropy only


def test_policy_loss_applies_rl_loss_coef():
    from vroll.pipeline.rlvr import policy_loss
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    micro = {"mask": mask, "response_mask": mask, "rollout_logp": torch.full((2, 3), -1.0),
             "advantages": torch.tensor([[1.0, 1.0, 0.0], [-2.0, 0.0, 0.0]]), "scores": torch.tensor([1.0, 0.0]),
             "ref_logp": torch.full((2, 3), -1.5)}
    logp, entropy = torch.full((2, 3), -1.0), torch.full((2, 3), 0.7)
    sizes = alg.StepSizes.of(mask)

    def total(**over):
        cfg = options(use_kl_loss=True, kl_loss_coef=0.1, entropy_loss_coef=0.01, **over)
        return float(policy_loss(cfg, sizes)(micro, logp, entropy)[0])

    pg = -(1.0 + -2.0) / 2  # ratio 1, seq-mean-token-mean of -A
    kl = math.exp(-0.5) + 0.5 - 1  # k3 = e^-d + d - 1, d = log pi - log ref = 0.5 on every token
    assert total() == pytest.approx(pg + 0.1 * kl - 0.01 * 0.7, abs=1e-6)
    assert total(rl_loss_coef=0.5) == pytest.approx((pg + 0.1 * kl) * 0.5 - 0.01 * 0.7, abs=1e-6)


def test_rl_loss_coef_zero_without_entropy_warns():
    from vroll.config.numbers import range_warnings
    assert any(w.startswith("rl_loss_coef: 0") for w in range_warnings(options(rl_loss_coef=0.0)))
    assert not any(w.startswith("rl_loss_coef") for w in range_warnings(options(rl_loss_coef=0.0,
                                                                                entropy_loss_coef=0.01)))


def test_default_loss_aggregation_is_rolls():
    assert options().loss_agg_mode == "seq-mean-token-mean"


def test_running_moments_merge_like_one_batch():
    m = alg.RunningMoments()
    m.update(torch.tensor([1.0, 2.0]))
    m.update(torch.tensor([3.0, 4.0]))
    assert m.mean == pytest.approx(2.5) and m.std == pytest.approx(torch.tensor([1.0, 2, 3, 4]).std().item(), rel=1e-6)


def test_which_passes_run():
    from vroll.config.passes import old_logprobs_needed, old_logprobs_recomputed, reference_enabled

    def cfg(**over):
        base = dict(rollout_batch_size=4, num_return_sequences_in_group=4, init_kl_coef=0.0,
                    actor_train={"training_args": {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2}})
        return options(**{**base, **over})

    assert reference_enabled(options())  # ROLL's default init_kl_coef 0.2
    assert not reference_enabled(cfg()) and reference_enabled(cfg(init_kl_coef=0.1))
    assert reference_enabled(cfg(use_kl_loss=True, kl_loss_coef=0.1)) and reference_enabled(cfg(enable_reference=True))
    assert not old_logprobs_needed(cfg(), ranks=1)  # 16 rows, 16 per optimiser step: one step
    assert old_logprobs_needed(cfg(rollout_batch_size=8), ranks=1)  # two steps
    assert not old_logprobs_needed(cfg(rollout_batch_size=8), ranks=2)  # one per rank
    assert old_logprobs_needed(cfg(init_kl_coef=0.1), ranks=1)
    assert old_logprobs_needed(cfg(enable_old_logprobs_recompute=True), ranks=1)
    assert not old_logprobs_needed(cfg(rollout_batch_size=8, force_disable_old_logprobs_recompute=True), 1)
    assert old_logprobs_needed(cfg(async_generation_ratio=1), ranks=1)  # samples from older weights
    # the engine's own log-probs serve; the trainer recomputes on steps 1, 4, 7, ... to measure the mismatch
    engine = cfg(rollout_batch_size=8, old_logprobs_from_engine=True, mismatch_check_steps=3)
    assert [old_logprobs_recomputed(engine, 1, step) for step in range(1, 8)] == [True, False, False, True,
                                                                                 False, False, True]
    assert all(old_logprobs_recomputed(cfg(rollout_batch_size=8), 1, step) for step in range(1, 5))
    assert not any(old_logprobs_recomputed(cfg(), 1, step) for step in range(1, 5))


def test_truncated_is_weights_and_mismatch():
    trainer = torch.log(torch.tensor([0.5, 0.9]))
    rollout = torch.log(torch.tensor([0.25, 0.9]))
    # tis_clip: c is the token-level importance weight min(pi_train / pi_rollout, c)
    weights, _ = alg.train_infer_correction(alg.correction_of(options(tis_clip=1.5)), trainer, rollout, torch.ones(2))
    assert weights.tolist() == pytest.approx([1.5, 1.0], abs=1e-6)
    m = alg.mismatch(trainer, rollout, torch.tensor([1.0, 1.0]))
    assert m["mismatch/logprob_abs_max"] == pytest.approx(math.log(2), abs=1e-6)
    assert m["mismatch/logprob_abs_mean"] == pytest.approx(math.log(2) / 2, abs=1e-6)


def test_a_kl_term_without_a_reference_is_refused_naming_the_key():
    from vroll.config.rules import check_rl_sizes

    base = dict(rewards={"m": {}}, num_return_sequences_in_group=2, adv_estimator="grpo")
    found = [str(i) for i in check_rl_sizes(options(use_kl_loss=True, kl_loss_coef=0.1, init_kl_coef=0, **base))]
    assert found == ["use_kl_loss: true needs a `reference` role to compute the KL against"]
    found = [str(i) for i in check_rl_sizes(options(init_kl_coef=0.3, **base))]
    assert found == ["init_kl_coef: 0.3 needs a `reference` role to compute the KL against"]
    # ROLL's defaults (init_kl_coef 0.2, adv_estimator gae) need a reference and a critic; the messages say so
    found = [str(i) for i in check_rl_sizes(options(rewards={"m": {}}))]
    assert found == ["init_kl_coef: 0.2 needs a `reference` role to compute the KL against (ROLL's default; set "
                     "init_kl_coef: 0 to run without a reference)",
                     "adv_estimator: 'gae' (ROLL's default) needs a `critic` role (a value model trained with "
                     "fsdp2_train); or use grpo / reinforce, which need none"]


def variant(name, logp, old, adv, scores=None, **over):
    cfg = options(pg_variant=name, **over)
    mask = torch.ones_like(logp)
    scores = torch.zeros(logp.shape[0]) if scores is None else scores
    return alg.PG_VARIANTS[name](cfg, logp, old, adv, mask, scores)[0]


def test_pg_variants_by_hand():
    lp, old = torch.tensor([[math.log(0.6)]]), torch.tensor([[math.log(0.3)]])  # r = 2
    a = torch.tensor([[0.5]])
    L = math.log(0.6)
    assert float(variant("vanilla", lp, old, a)) == pytest.approx(-0.5 * L)  # -A log pi
    # tis: -sg(clamp(r, 0, 1)) A log pi = -1 * 0.5 * log 0.6
    assert float(variant("tis", lp, old, a)) == pytest.approx(-0.5 * L)
    assert float(variant("tis", lp, old, a, tis_upper_bound=3.0)) == pytest.approx(-2 * 0.5 * L)
    # topr: a positive response -> w+ (-A log pi); a negative one -> w- (-sg(clamp(r, 0, 1)) A log pi)
    pos = variant("topr", lp, old, a, scores=torch.tensor([1.0]), topr_positive_weight=2.0)
    neg = variant("topr", lp, old, a, scores=torch.tensor([0.0]), topr_negative_weight=3.0)
    assert float(pos) == pytest.approx(2 * -0.5 * L) and float(neg) == pytest.approx(3 * -1 * 0.5 * L)
    # cispo: -sg(clamp(r, 0.9, 1.1)) A log pi; the unified mask drops it (A > 0 and r > 1.1)
    assert float(variant("cispo", lp, old, a)) == pytest.approx(-1.1 * 0.5 * L)
    assert float(variant("cispo", lp, old, a, cispo_use_unified_mask=True)) == 0.0
    # kimi15: -A log pi + tau/2 (log pi - log pi_old)^2
    assert float(variant("kimi15", lp, old, a)) == pytest.approx(-0.5 * L + 0.05 * math.log(2) ** 2)
    # ppo: max(-A r, -A clip(r, 0.8, 1.2)) = max(-1, -0.6) = -0.6
    assert float(variant("ppo", lp, old, a)) == pytest.approx(-0.6)


def test_train_infer_correction_weights_and_filters():
    from vroll.config.schema import TrainInferCorrectionConfig

    old = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.9]]))
    infer = torch.log(torch.tensor([[0.25, 0.5], [0.9, 0.9]]))  # token ratios 2, 1 | 1, 1
    mask = torch.ones(2, 2)
    tic = TrainInferCorrectionConfig(is_weight={"enabled": True})
    w, keep = alg.train_infer_correction(tic, old, infer, mask)
    assert w.flatten().tolist() == pytest.approx([1.2, 1.0, 1.0, 1.0])  # clamped to upper_bound 1.2
    assert torch.equal(keep, torch.ones(2, 2))
    tic = TrainInferCorrectionConfig(is_weight={"enabled": True, "weight_type": "geometric", "upper_bound": None})
    w, _ = alg.train_infer_correction(tic, old, infer, mask)
    assert w[0].tolist() == pytest.approx([math.sqrt(2)] * 2)  # exp(mean(log 2, 0))
    tic = TrainInferCorrectionConfig(is_weight={"enabled": True, "weight_type": "sequence", "upper_bound": None})
    assert alg.train_infer_correction(tic, old, infer, mask)[0][0].tolist() == pytest.approx([2.0, 2.0])
    # a token filter keeps ratios in [0.8, 1.2]; a diff filter keeps pi_train - pi_rollout in [-0.2, 0.2]
    tic = TrainInferCorrectionConfig(filters=[{"enabled": True}])
    assert alg.train_infer_correction(tic, old, infer, mask)[1].flatten().tolist() == [0.0, 1.0, 1.0, 1.0]
    tic = TrainInferCorrectionConfig(filters=[{"enabled": True, "ratio_enabled": False, "diff_enabled": True,
                                               "diff_high": 0.2}])
    assert alg.train_infer_correction(tic, old, infer, mask)[1].flatten().tolist() == [0.0, 1.0, 1.0, 1.0]


def test_sample_masks():
    # groups of 2: rewards (1, 0) and (1, 1); lengths 3, 9, 2, 4; the second response was cut at the limit
    rewards, lengths = torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([3.0, 9.0, 2.0, 4.0])
    truncated = torch.tensor([False, True, False, False])
    keep = lambda **o: alg.sample_mask(options(num_return_sequences_in_group=2, **o), rewards, lengths,
                                       truncated).tolist()
    assert keep() == [1, 1, 1, 1]
    assert keep(max_len_mask=True) == [1, 0, 1, 1]
    assert keep(difficulty_mask=True) == [1, 1, 0, 0]  # group mean 1.0 is not < 1.0
    assert keep(error_max_len_clip=True, error_max_len_threshold=5) == [1, 0, 1, 1]  # wrong and long
    assert alg.sample_mask(options(error_max_len_clip=True), torch.tensor([0.5]), torch.tensor([1.0]),
                           torch.tensor([False])).tolist() == [0]  # neither right nor wrong


def test_length_weights_and_weighted_aggregation():
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])  # lengths 3 and 1
    assert alg.sample_weights(options(), mask) is None
    w = alg.sample_weights(options(length_loss_weight=True), mask)  # 1.5 - (len - 1) / 2 -> 0.5, 1.5; mean 1
    assert w.tolist() == pytest.approx([0.5, 1.5], abs=1e-6)
    loss = torch.ones(2, 3)
    sizes = alg.StepSizes.of(mask)
    assert float(alg.aggregate(loss, mask, "token-mean", sizes, w)) == pytest.approx((0.5 * 3 + 1.5 * 1) / 4)


def test_difficulty_weights_by_hand():
    # ROLL: w_i = 0.5 + 1.5 clamp(difficulty_i, 0, 1), times the length weight, scaled to mean 1
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    w = alg.sample_weights(options(difficulty_loss_weight=True), mask, torch.tensor([0.0, 2.0]))
    assert w.tolist() == pytest.approx([0.5 * 2 / 2.5, 2.0 * 2 / 2.5], abs=1e-6)  # 0.5 and 2.0, mean 1.25
    both = alg.sample_weights(options(difficulty_loss_weight=True, length_loss_weight=True), mask,
                              torch.tensor([1.0, 0.0]))
    # difficulty (2.0, 0.5) x length (0.5, 1.5) = (1.0, 0.75), scaled by 2 / 1.75 to mean 1
    assert both.tolist() == pytest.approx([1.0 * 2 / 1.75, 0.75 * 2 / 1.75], abs=1e-6)


def test_query_filters_by_hand():
    from vroll.config.schema import RewardFilterConfig as F

    same, mixed = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([1.0, 0.0, 0.0])
    std = F(type="std_filter", filter_args={"std_threshold": 0.0})  # drop groups whose std <= 0 (DAPO)
    assert not alg.keeps_group([std], same) and alg.keeps_group([std], mixed)
    assert not alg.keeps_group([std], torch.tensor([0.2] * 8))  # equal rewards have std 0, not rounding noise
    assert alg.keeps_group([F(type="std_filter")], same)  # default threshold -1 keeps everything
    mean = F(type="mean_filter", filter_args={"threshold_down": 0.0, "threshold_up": 1.0})  # inclusive bounds
    assert not alg.keeps_group([mean], same) and alg.keeps_group([mean], mixed)
    assert not alg.keeps_group([mean], torch.zeros(3)) and alg.keeps_group([], same)


# -- GAE and the critic ------------------------------------------------------------------------
def test_gae_against_a_hand_computed_case():
    # one response of 3 tokens, reward 1 on the last; V = (0.5, 0.2, 0.4), gamma 0.9, lambda 0.8
    # delta_2 = 1 + 0.9*0 - 0.4 = 0.6                      A_2 = 0.6
    # delta_1 = 0 + 0.9*0.4 - 0.2 = 0.16                   A_1 = 0.16 + 0.72*0.6 = 0.592
    # delta_0 = 0 + 0.9*0.2 - 0.5 = -0.32                  A_0 = -0.32 + 0.72*0.592 = 0.10624
    # returns = A + V
    rewards, values = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.2, 0.4]])
    adv, ret = alg.gae(rewards, values, gamma=0.9, lambd=0.8)
    assert adv[0].tolist() == pytest.approx([0.10624, 0.592, 0.6], abs=1e-6)
    assert ret[0].tolist() == pytest.approx([0.60624, 0.792, 1.0], abs=1e-6)
    # lambda = 1, gamma = 1: A_t = G_t - V_t (Monte-Carlo return minus the baseline)
    adv, _ = alg.gae(rewards, values, gamma=1.0, lambd=1.0)
    assert adv[0].tolist() == pytest.approx([0.5, 0.8, 0.6], abs=1e-6)


def test_gae_advantages_in_the_step_use_the_masked_values_and_return_targets():
    # prompt position 0 (mask 0), response positions 1-2; the value at the prompt position is ignored
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    values = torch.tensor([[9.0, 0.25, 0.5]])
    cfg = options(adv_estimator="gae", num_return_sequences_in_group=1, lambd=1.0, gamma=1.0)
    adv, ret, _ = alg.compute_advantages(cfg, torch.tensor([1.0]), mask, values=values)
    # rewards (0, 0, 1); A_2 = 1 - 0.5 = 0.5; A_1 = 0 + 0.5 - 0.25 + 0.5 = 0.75; prompt position 0
    assert adv[0].tolist() == pytest.approx([0.0, 0.75, 0.5])
    assert ret[0].tolist() == pytest.approx([0.0, 1.0, 1.0])  # A + V: the critic's target


def test_value_loss_and_its_clip():
    # ROLL: 0.5 x mean over responses of the token mean of (V - R)^2, or of
    # max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)
    values, old, ret = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[0.5, 1.0]])
    mask = torch.ones(1, 2)
    sizes = alg.StepSizes.of(mask)
    loss, clipped = alg.value_loss(values, old, ret, mask, None, sizes)
    assert float(loss) == pytest.approx(0.5 * (0.25 + 1.0) / 2)
    # c = 0.2: V clipped to (0.2, 0.0); token 0: max(0.25, 0.09) = 0.25; token 1: max(1, 1) = 1
    loss, clipped = alg.value_loss(values, old, ret, mask, 0.2, sizes)
    assert float(loss) == pytest.approx(0.5 * (0.25 + 1.0) / 2) and not clipped.any()
    # R = 1.5 on token 0: unclipped (1 - 1.5)^2 = 0.25, clipped (0.2 - 1.5)^2 = 1.69 -> the clipped one counts
    loss, clipped = alg.value_loss(values, old, torch.tensor([[1.5, 1.0]]), mask, 0.2, sizes)
    assert float(loss) == pytest.approx(0.5 * (1.69 + 1.0) / 2) and clipped.tolist() == [[True, False]]


def test_gae_without_a_critic_and_a_critic_whose_batch_does_not_divide_are_refused():
    from vroll.config.rules import check_rl_sizes

    base = dict(rewards={"m": {}}, adv_estimator="gae", rollout_batch_size=6, num_return_sequences_in_group=1,
                init_kl_coef=0)
    found = [str(i) for i in check_rl_sizes(options(**base))]
    assert found == ["adv_estimator: 'gae' needs a `critic` role (a value model trained with fsdp2_train); or use "
                     "grpo / reinforce, which need none"]
    critic = {"strategy_args": {"strategy_name": "fsdp2_train"}, "training_args": {"per_device_train_batch_size": 4}}
    found = [str(i) for i in check_rl_sizes(options(**base, critic=critic))]
    assert found == ["critic.training_args.per_device_train_batch_size: rollout_batch_size * "
                     "num_return_sequences_in_group = 6 is not divisible by the critic's per_device_train_batch_size"
                     " * gradient_accumulation_steps * ranks = 4"]
    critic["training_args"]["per_device_train_batch_size"] = 3
    assert check_rl_sizes(options(**base, critic=critic)) == []
    critic["strategy_args"]["strategy_name"] = "megatron_train"  # named with its override by check_runnable
    from vroll.config.rules import check_runnable
    assert [i.path for i in check_runnable(options(**base, critic=critic))] == ["critic.strategy_args.strategy_name"]
