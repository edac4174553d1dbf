"""The RL arithmetic of one step, as plain tensor functions: advantages, the clipped policy loss, the
KL term and the train/infer mismatch. Each is small enough to check against a hand-computed case."""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def group_advantages(scores: torch.Tensor, group: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: each response's score minus its group's mean, over the group's standard deviation
    (unbiased, as in the GRPO paper and verl); a group whose scores are all equal gets 0."""
    adv = torch.zeros_like(scores)
    for g in group.unique():
        members = group == g
        s = scores[members]
        std = s.std() if s.numel() > 1 else torch.zeros((), dtype=s.dtype)
        adv[members] = (s - s.mean()) / (std + eps)
    return adv


def compute_advantages(scores: torch.Tensor, group: torch.Tensor, estimator: str, reward_clip: float | None = None,
                       whiten: bool = False, advantage_clip: float | None = None) -> torch.Tensor:
    """Per-response advantages from per-response scores.

    `grpo` normalises within each prompt's group; `reinforce` subtracts the batch mean (a baseline
    that keeps the estimate unbiased). Then optional whitening over the batch and clipping.
    """
    scores = scores.float()
    if reward_clip is not None:
        scores = scores.clamp(-reward_clip, reward_clip)
    if estimator == "grpo":
        adv = group_advantages(scores, group)
    elif estimator == "reinforce":
        adv = scores - scores.mean()
    else:
        raise ValueError(f"adv_estimator: unknown estimator {estimator!r} (allowed: grpo, reinforce)")
    if whiten and adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-6)
    if advantage_clip is not None:
        adv = adv.clamp(-advantage_clip, advantage_clip)
    return adv


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(policy || reference) per token: unbiased and never negative."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1


def policy_loss_terms(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip: float,
                      dual_clip: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO clipped surrogate loss (to minimise) and whether each token was clipped.

    With `dual_clip` (c > 1, Ye et al. 2020) the loss of a negative-advantage token is also capped
    at -c * A, so a very large ratio cannot blow the update up.
    """
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    loss = torch.maximum(unclipped, clipped)
    was_clipped = clipped > unclipped
    if dual_clip is not None:
        capped = torch.minimum(loss, -advantages * dual_clip)
        loss = torch.where(advantages < 0, capped, loss)
    return loss, was_clipped


def truncated_is_weights(trainer_logp: torch.Tensor, rollout_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance weights min(pi_train / pi_rollout, cap) per token: corrects for the
    engine sampling from a slightly different distribution than the trainer computes."""
    return torch.exp(trainer_logp - rollout_logp).clamp(max=cap)


def mismatch(trainer_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Mean and max |trainer - engine| log-probability of the sampled tokens, on the same weights."""
    diff = (trainer_logp - rollout_logp).abs() * mask
    n = mask.sum().clamp(min=1)
    return {"mismatch/logprob_abs_mean": float(diff.sum() / n), "mismatch/logprob_abs_max": float(diff.max())}
