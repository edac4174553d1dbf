"""The RL arithmetic of one step, with ROLL's option names and meaning (docs/algorithms.md), as small
pure tensor functions chosen by name: reward normalisation, token rewards and the KL penalty,
advantages, the clipped policy loss, loss aggregation, KL and entropy terms, and the train/infer
mismatch. Each is small enough to check against a hand-computed case. Per-token tensors are
[B, T-1], aligned with the trainer's log-probs (position t scores token t+1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

STD_EPS = 1e-6  # ROLL's reward normalisation: (x - mean) / (std + 1e-6)
WHITEN_EPS = 1e-8  # ROLL's masked whitening: (x - mean) * rsqrt(var + 1e-8)
K3_CLAMP = 10.0  # ROLL clamps the k3 estimator to [-10, 10]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8) over the masked entries, variance unbiased (ROLL's masked_whiten)."""
    mask = mask.to(x.dtype)
    n = mask.sum()
    mean = (x * mask).sum() / (n + WHITEN_EPS)
    var = ((x - mean) ** 2 * mask).sum() / (n + WHITEN_EPS) * n / (n - 1)
    return (x - mean) * torch.rsqrt(var + WHITEN_EPS)


# -- rewards -------------------------------------------------------------------------------------
@dataclass
class RunningMoments:
    """Mean and std of every reward seen so far (`norm_*_type: running`), merged batch by batch."""

    mean: float = 0.0
    var: float = 0.0
    count: float = 1e-24

    def update(self, x: torch.Tensor) -> None:
        n = x.numel()
        batch_mean, batch_var = float(x.mean()), float(x.var(unbiased=False))
        delta, total = batch_mean - self.mean, self.count + n
        self.var = (self.var * self.count + batch_var * n + delta ** 2 * self.count * n / total) / total
        self.mean += delta * n / total
        self.count = total

    @property
    def std(self) -> float:
        return (self.var * self.count / max(self.count - 1, 1e-24)) ** 0.5


def exact_mean(x: torch.Tensor, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    """The mean along `dim`, and exactly the common value where all values are equal: the float mean
    of eight 0.2s is not 0.2, and that rounding over a zero std became a large "advantage"."""
    first = x.narrow(dim, 0, 1)
    mean = torch.where((x == first).all(dim, keepdim=True), first, x.mean(dim, keepdim=True))
    return mean if keepdim else mean.squeeze(dim)


def exact_std(x: torch.Tensor, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    """The unbiased std along `dim`, and exactly 0 where all values are equal (or there is one)."""
    same = (x == x.narrow(dim, 0, 1)).all(dim, keepdim=keepdim)
    return torch.where(same, 0.0, x.std(dim, keepdim=keepdim) if x.shape[dim] > 1 else 0.0)


def normalize_rewards(rewards: torch.Tensor, group_size: int, mean_type: str | None, std_type: str | None,
                      running: RunningMoments | None = None) -> torch.Tensor:
    """ROLL's reward_norm: subtract the batch / group / running mean (or nothing), divide by that std
    (unbiased) + 1e-6 (or nothing). Equal values centre to exactly 0 (`exact_mean`)."""
    x = rewards.float()
    groups = x.reshape(-1, group_size)
    if running is not None and "running" in (mean_type, std_type):
        running.update(x)  # updated before use, as in ROLL
    if mean_type == "group":
        centred = (groups - exact_mean(groups, keepdim=True)).reshape(-1)
    elif mean_type == "batch":
        centred = x - exact_mean(x)
    elif mean_type == "running":
        centred = x - running.mean
    else:
        centred = x
    if std_type == "group":
        std = exact_std(groups, keepdim=True).expand_as(groups).reshape(-1)
    elif std_type == "batch":
        std = exact_std(x)
    elif std_type == "running":
        std = torch.tensor(running.std)
    else:
        return centred
    return centred / (std + STD_EPS)


def token_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each response's reward on its last response token, 0 elsewhere ([B] -> [B, T-1])."""
    last = mask.shape[1] - 1 - torch.flip(mask, dims=[1]).float().argmax(1)
    out = torch.zeros(mask.shape, dtype=torch.float32)
    out[torch.arange(mask.shape[0]), last] = rewards.float()
    return out * mask


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled-token log-probs (ROLL's
    compute_approx_kl; d = logp - ref): kl = d, abs = |d|, mse = d^2 / 2, k3 = e^-d + d - 1 in [-10, 10]."""
    d = logp - ref_logp
    if kind == "kl":
        return d
    if kind == "abs":
        return d.abs()
    if kind == "mse":
        return 0.5 * d ** 2
    if kind == "k3":
        return (torch.exp(-d) + d - 1).clamp(-K3_CLAMP, K3_CLAMP)
    raise ValueError(f"kl_penalty: {kind!r} is not allowed (kl, abs, mse, k3)")


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(policy || reference) per token: unbiased and never negative."""
    return kl_estimate(logp, ref_logp, "k3")


@dataclass
class KLController:
    """The coefficient of the per-token KL reward penalty: fixed at `init_kl_coef`, or, with
    `target_kl`, moved towards it: value *= 1 + clip(kl / target - 1, -0.2, 0.2) * n / horizon."""

    value: float
    target: float | None = None
    horizon: int = 10000

    def update(self, current_kl: float, n_steps: int) -> None:
        if self.target is None:
            return
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon


def discounted_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = r_t + gamma * G_{t+1} along each row (the return REINFORCE and GRPO use as the advantage)."""
    out = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype)
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = rewards[:, t] + gamma * running
        out[:, t] = running
    return out


def gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lambd: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation along each row: delta_t = r_t + gamma V_{t+1} - V_t (V past
    the row's end is 0), A_t = delta_t + gamma lambd A_{t+1}; the critic's targets are A + V."""
    adv = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype)
    for t in range(rewards.shape[1] - 1, -1, -1):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else 0.0
        running = rewards[:, t] + gamma * next_value - values[:, t] + gamma * lambd * running
        adv[:, t] = running
    return adv, adv + values


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               value_clip: float | None, sizes: "StepSizes") -> tuple[torch.Tensor, torch.Tensor]:
    """The critic's loss share, as ROLL's: 0.5 x seq-mean-token-mean of (V - R)^2, or with
    `value_clip` of max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2); and which tokens clipped."""
    err = (values - returns) ** 2
    if value_clip is None:
        return 0.5 * aggregate(err, mask, "seq-mean-token-mean", sizes), torch.zeros_like(err, dtype=torch.bool)
    clipped = (old_values + (values - old_values).clamp(-value_clip, value_clip) - returns) ** 2
    return 0.5 * aggregate(torch.maximum(err, clipped), mask, "seq-mean-token-mean", sizes), clipped > err


def compute_advantages(cfg, scores: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor | None = None,
                       kl_ctrl: KLController | None = None, running: RunningMoments | None = None,
                       values: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Per-token advantages [B, T-1] of one domain's responses (whole groups, in order), and the
    returns a critic learns from, in ROLL's order: normalise the rewards (grpo: by group) ->
    reward_clip -> reward on the last token, minus beta x KL with add_token_level_kl -> reward_clip
    again -> whiten_rewards -> GAE with the critic's `values` (gae), else the discounted return ->
    whiten_advantages -> advantage_clip. `kl`: the per-token KL of the rollout policy to the reference."""
    mean_type, std_type = ("group", "group") if cfg.adv_estimator == "grpo" else (cfg.norm_mean_type,
                                                                                    cfg.norm_std_type)
    rewards = normalize_rewards(scores, cfg.num_return_sequences_in_group, mean_type, std_type, running)
    if cfg.reward_clip:
        rewards = rewards.clamp(-cfg.reward_clip, cfg.reward_clip)
    r = token_rewards(rewards, mask)
    metrics = {}
    if kl is not None:
        if cfg.add_token_level_kl and kl_ctrl is not None:
            r = r - kl_ctrl.value * kl * mask
            metrics["kl/coef"] = kl_ctrl.value
        if kl_ctrl is not None:
            kl_ctrl.update(float(((kl * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()), scores.numel())
    if cfg.reward_clip:
        r = r.clamp(-cfg.reward_clip, cfg.reward_clip)
    enough = mask.sum() > 1  # an unbiased variance needs two tokens
    if cfg.whiten_rewards and enough:
        r = masked_whiten(r, mask)
    if cfg.adv_estimator == "gae":
        adv, returns = gae(r * mask, values * mask, cfg.gamma, cfg.lambd)
    else:
        adv = returns = discounted_returns(r * mask, cfg.gamma)
    if cfg.whiten_advantages and enough:
        adv = masked_whiten(adv, mask)
    adv = adv * mask
    if cfg.advantage_clip is not None:
        adv = adv.clamp(-cfg.advantage_clip, cfg.advantage_clip)
    return adv, returns * mask, metrics


# -- the policy loss -----------------------------------------------------------------------------
def importance_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, level: str) -> torch.Tensor:
    """pi / pi_old per token (`token`), or GSPO's sequence ratio exp(mean_t(log pi - log pi_old)) on
    every token of the response (`seq`)."""
    log_ratio = logp - old_logp
    if level == "seq":
        per_seq = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return torch.exp(per_seq)[:, None].expand_as(logp)
    return torch.exp(log_ratio)


def clipped_loss(ratio: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float,
                 dual_clip: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO clipped surrogate loss (to minimise) and whether each token was clipped. The
    ratio is clipped to [1 - clip_low, 1 + clip_high] (DAPO's clip-higher when they differ). With
    `dual_clip` (c > 1, Ye et al. 2020) the loss of a negative-advantage token is also capped at -c * A."""
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_low, 1 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    was_clipped = clipped > unclipped
    if dual_clip is not None:
        loss = torch.where(advantages < 0, torch.minimum(loss, -advantages * dual_clip), loss)
    return loss, was_clipped


def dual_clip_bound(pg_clip: float) -> float:
    """ROLL's dual-clip constant: 1 + 2 x pg_clip (1.4 at the default 0.2), also with clip-higher."""
    return 1 + 2 * pg_clip


def clip_range(cfg) -> tuple[float, float]:
    return (cfg.pg_clip_low, cfg.pg_clip_high) if cfg.use_pg_clip_range else (cfg.pg_clip, cfg.pg_clip)


@dataclass(frozen=True)
class StepSizes:
    """The denominators of one optimiser step (all its micro-batches and ranks): response tokens,
    responses with at least one token, and the padded width."""

    tokens: float
    sequences: float
    width: int

    @classmethod
    def of(cls, mask: torch.Tensor) -> "StepSizes":
        return cls(float(mask.sum().clamp(min=1)), float((mask.sum(-1) > 0).sum().clamp(min=1)), mask.shape[1])


def aggregate(loss: torch.Tensor, mask: torch.Tensor, mode: str, sizes: StepSizes,
              weights: torch.Tensor | None = None) -> torch.Tensor:
    """This micro-batch's share of the step's loss under ROLL's `loss_agg_mode` (w_i: per-response
    weights, 1 by default): token-mean: sum_i w_i sum_t (M L) / step tokens; seq-mean-token-sum:
    sum_i w_i sum_t (M L) / step responses; seq-mean-token-mean: sum_i w_i mean_t (M L) / step
    responses; seq-mean-token-sum-norm (Dr. GRPO): sum_i w_i sum_t (M L) / padded width."""
    per_seq_sum = (loss * mask).sum(-1)
    w = torch.ones_like(per_seq_sum) if weights is None else weights
    if mode == "token-mean":
        return (w * per_seq_sum).sum() / sizes.tokens
    if mode == "seq-mean-token-sum":
        return (w * per_seq_sum).sum() / sizes.sequences
    if mode == "seq-mean-token-mean":
        return (w * per_seq_sum / mask.sum(-1).clamp(min=1)).sum() / sizes.sequences
    if mode == "seq-mean-token-sum-norm":
        return (w * per_seq_sum).sum() / sizes.width
    raise ValueError(f"loss_agg_mode: {mode!r} is not allowed")


def sample_weights(cfg, mask: torch.Tensor, difficulty: torch.Tensor | None = None) -> torch.Tensor | None:
    """ROLL's per-response loss weights over the micro-batch, scaled to mean 1 (None: all 1):
    `difficulty_loss_weight` w_i *= 0.5 + 1.5 clamp(difficulty_i, 0, 1) (harder counts more);
    `length_loss_weight` w_i *= 1.5 - (len_i - min) / (max - min + 1e-8) (shorter counts more)."""
    if not (cfg.length_loss_weight or (cfg.difficulty_loss_weight and difficulty is not None)):
        return None
    w = torch.ones(mask.shape[0], dtype=torch.float32)
    if cfg.difficulty_loss_weight and difficulty is not None:
        w = w * (0.5 + 1.5 * difficulty.float().clamp(0.0, 1.0))
    if cfg.length_loss_weight:
        lengths = mask.sum(-1)
        w = w * (1.5 - (lengths - lengths.min()) / (lengths.max() - lengths.min() + 1e-8))
    return w * (w.numel() / (w.sum() + 1e-8)) if w.sum() > 0 else w


def actor_loss(pg_loss: torch.Tensor, kl_loss: torch.Tensor | None, entropy: torch.Tensor | None,
               kl_loss_coef: float, rl_loss_coef: float, entropy_loss_coef: float) -> torch.Tensor:
    """The policy's total loss as ROLL's actor adds its terms: (pg + kl_loss_coef x kl) x rl_loss_coef
    - entropy_loss_coef x entropy; `rl_loss_coef` scales the policy and KL terms only, never the entropy
    bonus (None: that term is off)."""
    total = pg_loss if kl_loss is None else pg_loss + kl_loss_coef * kl_loss
    total = total * rl_loss_coef
    return total if entropy is None else total - entropy_loss_coef * entropy


# -- pg_variant: the per-token policy loss, chosen by name --------------------------------------
def pg_vanilla(cfg, logp, old, adv, mask, scores):
    """-A log pi."""
    return -adv * logp, torch.zeros_like(logp, dtype=torch.bool)


def pg_ppo(cfg, logp, old, adv, mask, scores):
    """PPO's clipped surrogate with `importance_sampling`, clip-higher and dual clip."""
    low, high = clip_range(cfg)
    ratio = importance_ratio(logp, old, mask, cfg.importance_sampling)
    return clipped_loss(ratio, adv, low, high, dual_clip_bound(cfg.pg_clip) if cfg.dual_clip_loss else None)


def pg_tis(cfg, logp, old, adv, mask, scores):
    """-sg(clamp(r, tis_lower_bound, tis_upper_bound)) A log pi."""
    r = torch.exp(logp - old).detach()
    return -r.clamp(cfg.tis_lower_bound, cfg.tis_upper_bound) * adv * logp, (r > cfg.tis_upper_bound)


def pg_topr(cfg, logp, old, adv, mask, scores):
    """TOPR: responses with reward > 0 get w+ (-A log pi); the others w- (-sg(clamp(r, 0, 1)) A log pi)."""
    positive = (scores > 0).to(logp.dtype)[:, None]
    r = torch.exp(logp - old).detach().clamp(0, 1)
    loss = cfg.topr_positive_weight * (-adv * logp) * positive \
        + cfg.topr_negative_weight * (-r * adv * logp) * (1 - positive)
    return loss, torch.zeros_like(logp, dtype=torch.bool)


def pg_cispo(cfg, logp, old, adv, mask, scores):
    """CISPO: -sg(clamp(r, 1 - eps_low, 1 + eps_high)) A log pi; with the unified mask, tokens whose
    ratio left the range in the direction A pushes are dropped."""
    r = torch.exp(logp - old).detach()
    low, high = 1 - cfg.cispo_epsilon_low, 1 + cfg.cispo_epsilon_high
    out = (adv > 0) & (r > high) | (adv < 0) & (r < low)
    loss = -r.clamp(low, high) * adv * logp
    if cfg.cispo_use_unified_mask:
        loss = loss * (~out).to(loss.dtype)
    return loss, out


def pg_kimi15(cfg, logp, old, adv, mask, scores):
    """Kimi k1.5: -A log pi + tau / 2 (log pi - log pi_old)^2."""
    return -adv * logp + cfg.kimi15_tau / 2 * (logp - old) ** 2, torch.zeros_like(logp, dtype=torch.bool)


PG_VARIANTS = {"vanilla": pg_vanilla, "ppo": pg_ppo, "tis": pg_tis, "topr": pg_topr, "cispo": pg_cispo,
               "kimi15": pg_kimi15}


# -- train/infer mismatch correction -------------------------------------------------------------
def level_log_ratio(log_ratio: torch.Tensor, mask: torch.Tensor, level: str) -> torch.Tensor:
    """A per-token log-ratio at `token` level, or its masked mean (`geometric`; `segment`: vroll's
    responses are one segment) or sum (`sequence`) per response, on every token."""
    if level == "token":
        return log_ratio
    summed = (log_ratio * mask).sum(-1)
    per_seq = summed if level == "sequence" else summed / mask.sum(-1).clamp(min=1)
    return per_seq[:, None].expand_as(log_ratio)


def level_diff(old: torch.Tensor, infer: torch.Tensor, mask: torch.Tensor, level: str) -> torch.Tensor:
    """pi_train - pi_rollout per token, or its masked mean / sum per response."""
    diff = torch.exp(old) - torch.exp(infer)
    if level == "token":
        return diff
    summed = (diff * mask).sum(-1)
    per_seq = summed if level == "sequence" else summed / mask.sum(-1).clamp(min=1)
    return per_seq[:, None].expand_as(diff)


def correction_of(cfg):
    """The step's train_infer_correction; vroll's short form `tis_clip: c` is its token-level
    importance weight capped at c (min(pi_train / pi_rollout, c))."""
    tic = cfg.train_infer_correction
    if cfg.tis_clip is None:
        return tic
    weight = tic.is_weight.model_copy(update={"enabled": True, "weight_type": "token", "upper_bound": cfg.tis_clip})
    return tic.model_copy(update={"is_weight": weight})


def train_infer_correction(tic, old: torch.Tensor, infer: torch.Tensor, mask: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """ROLL's train_infer_correction: importance weights pi_train / pi_rollout at the `weight_type`
    level, clamped to [0, upper_bound], and the product of the filters' keep-masks (bounds inclusive)."""
    lr = (old - infer) * mask
    weight = torch.ones_like(old)
    if tic.is_weight.enabled:
        weight = torch.exp(level_log_ratio(lr, mask, tic.is_weight.weight_type))
        if tic.is_weight.upper_bound is not None:
            weight = weight.clamp(0, tic.is_weight.upper_bound)
        if tic.is_weight.detach:
            weight = weight.detach()
    keep = torch.ones_like(old)
    for f in tic.filters:
        if not f.enabled:
            continue
        if f.ratio_enabled:
            r = torch.exp(level_log_ratio(lr, mask, f.agg_type))
            keep = keep * ((r >= f.ratio_low) & (r <= f.ratio_high)).to(keep.dtype)
        if f.diff_enabled:
            d = level_diff(old, infer, mask, f.agg_type)
            keep = keep * ((d >= f.diff_low) & (d <= f.diff_high)).to(keep.dtype)
    return weight, keep


# -- dynamic sampling ----------------------------------------------------------------------------
def keeps_group(filters, rewards: torch.Tensor) -> bool:
    """ROLL's query filters on one prompt's group of rewards (bounds inclusive): `mean_filter` drops
    a group whose mean is <= threshold_down (default -1) or >= threshold_up (default inf);
    `std_filter` drops one whose std (unbiased) is <= std_threshold (default -1)."""
    for f in filters:
        args = f.filter_args
        if f.type == "mean_filter":
            mean = float(exact_mean(rewards.float()))
            if mean <= args.get("threshold_down", -1.0) or mean >= args.get("threshold_up", float("inf")):
                return False
        elif f.type == "std_filter" and rewards.numel() > 1:
            if float(exact_std(rewards.float())) <= args.get("std_threshold", -1.0):
                return False
    return True


# -- which responses count -----------------------------------------------------------------------
def sample_mask(cfg, rewards: torch.Tensor, lengths: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """ROLL's sample-level masks, 1 to keep a response: `max_len_mask` drops responses cut at the
    length limit; `difficulty_mask` drops groups whose mean reward is not strictly between the
    thresholds; `error_max_len_clip` keeps right answers (reward 1) and wrong ones (reward 0) shorter
    than the threshold, and drops any other reward."""
    keep = torch.ones_like(rewards, dtype=torch.float32)
    if cfg.max_len_mask:
        keep = keep * (~truncated).float()
    n = cfg.num_return_sequences_in_group
    if cfg.difficulty_mask and n > 1:
        mean = rewards.float().reshape(-1, n).mean(-1).repeat_interleave(n)
        keep = keep * ((mean > cfg.difficulty_low_threshold) & (mean < cfg.difficulty_high_threshold)).float()
    if cfg.error_max_len_clip:
        keep = keep * (((rewards == 0) & (lengths < cfg.error_max_len_threshold)) | (rewards == 1)).float()
    return keep


def mismatch(trainer_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Mean and max |trainer - engine| log-probability of the sampled tokens, on the same weights."""
    diff = (trainer_logp - rollout_logp).abs() * mask
    n = mask.sum().clamp(min=1)
    return {"mismatch/logprob_abs_mean": float(diff.sum() / n), "mismatch/logprob_abs_max": float(diff.max())}


@dataclass
class AlgorithmState:
    """What the algorithm carries from step to step (and through a checkpoint): the KL penalty's
    coefficient and the running reward moments of each domain."""

    kl_ctrl: KLController
    running: dict[str, RunningMoments]

    @classmethod
    def start(cls, cfg) -> "AlgorithmState":
        return cls(KLController(cfg.init_kl_coef, cfg.target_kl, cfg.kl_horizon), {})

    def moments(self, domain: str) -> RunningMoments:
        return self.running.setdefault(domain, RunningMoments())

    def state_dict(self) -> dict:
        return {"kl_coef": self.kl_ctrl.value,
                "running": {d: [m.mean, m.var, m.count] for d, m in self.running.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.kl_ctrl.value = state["kl_coef"]
        self.running = {d: RunningMoments(*v) for d, v in state["running"].items()}
