"""Reward workers and their combination: each prompt goes to the workers `config.domains.reward_routes`
names (ROLL's one worker per domain; several where the file lists a tag under several workers, or
leaves a worker's `tag_included` empty), and its reward is the weighted sum of their scores (a
measuring worker, `reward_free`, adds none: its score only counts for accuracy). A worker that raises
on a sample, or reports it failed, scores that sample 0, counted in `reward/<name>/errors`, and the
step goes on."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from vroll.config.domains import reward_routes
from vroll.config.errors import Issue
from vroll.config.schema import RewardConfig
from vroll.rewards.choice_rule import ChoiceMeasureWorker, ChoiceRuleWorker
from vroll.rewards.code_sandbox import CodeSandboxWorker
from vroll.rewards.ifeval_rule import IfevalRuleWorker
from vroll.rewards.llm_judge import LlmJudgeWorker
from vroll.rewards.math_rule import MathRuleReward
from vroll.rewards.math_verify import MathVerifyWorker
from vroll.rewards.reward_system import RewardSystemWorker

log = logging.getLogger(__name__)


@dataclass
class RewardItem:
    prompt_text: str
    response_text: str
    ground_truth: str | None
    tag: str | None
    extra: dict[str, Any] = field(default_factory=dict)  # the data row's other fields (code test cases, ...)


class MathRuleWorker:
    checks_answer = True  # its score > 0 means the answer is right: it defines accuracy

    def __init__(self, cfg: RewardConfig):
        self.rule = MathRuleReward(extractors=tuple(cfg.extractors))

    def score(self, items: list[RewardItem]) -> list[float]:
        return [self.score_one(it) for it in items]

    def score_one(self, item: RewardItem) -> float:
        if item.ground_truth is None:
            raise ValueError("the prompt's data has no ground_truth")
        return self.rule.score(item.response_text, item.ground_truth)


class FormatWorker:
    """1 when the whole response matches `pattern` (e.g. nothing after the answer tag), else 0.
    Weighted next to math_rule, it keeps RL from drifting into text around a right answer."""

    checks_answer = False

    def __init__(self, cfg: RewardConfig):
        import re

        self.pattern = re.compile(cfg.pattern, re.DOTALL)

    def score(self, items: list[RewardItem]) -> list[float]:
        return [self.score_one(it) for it in items]

    def score_one(self, item: RewardItem) -> float:
        return 1.0 if self.pattern.fullmatch(item.response_text.strip()) else 0.0


class ModelRewardWorker:
    """A reward model (a `ScoringModel` the launcher started, e.g. on `hf_infer`), scoring prompt +
    response text."""

    checks_answer = False

    def __init__(self, cfg: RewardConfig, model):
        self.model = model

    def _ids(self, item: RewardItem) -> list[int]:
        return self.model.tokenizer(item.prompt_text + item.response_text, add_special_tokens=False)["input_ids"]

    def score(self, items: list[RewardItem]) -> list[float]:
        return self.model.score([self._ids(it) for it in items])

    def score_one(self, item: RewardItem) -> float:
        return self.model.score([self._ids(item)])[0]



def routes(configs: dict[str, RewardConfig], tag: str | None, domain: Any = None) -> list[str]:
    """The workers a prompt with this tag (and `domain` field) goes to."""
    return reward_routes(configs, tag, domain)


def row_routes(configs: dict[str, RewardConfig], record) -> list[str]:
    """The workers a data row (a PromptRecord or a RewardItem) goes to."""
    return routes(configs, record.tag, (getattr(record, "extra", None) or {}).get("domain"))


def unrouted_rows(configs: dict[str, RewardConfig], records, key: str, drawn=None) -> list[Issue]:
    """Rows no worker would score (among those `drawn` says are ever drawn): refused before anything
    starts (ROLL fails on such a row when it scores it)."""
    lost = [r for r in records if (drawn is None or drawn(r)) and not row_routes(configs, r)]
    if not lost:
        return []
    tags = sorted({str(r.tag) for r in lost if (getattr(r, "extra", None) or {}).get("domain") is None})
    domains = sorted({str(r.extra["domain"]) for r in lost if (getattr(r, "extra", None) or {}).get("domain") is not None})
    first = ", ".join(getattr(r, "source", "") or "?" for r in lost[:3]) + (", ..." if len(lost) > 3 else "")
    what = ([f"tag(s) {tags}"] if tags else []) + ([f"domain(s) {domains}"] if domains else [])
    return [Issue(key, f"{len(lost)} row(s) have no reward worker ({' and '.join(what)}; {first}): list the tag in a "
                       "worker's tag_included, or give the row a `domain` field naming a worker, or add a worker "
                       f"named math_rule (ROLL's domain of a row whose tag no worker lists); workers: {sorted(configs)}")]


# The data field each reward_type needs on a prompt's row to score it (a tuple: any one of them).
NEEDED_FIELDS = {"math_rule": "ground_truth", "math_verify": "ground_truth", "code_sandbox": "test_cases",
                 "llm_judge": "ground_truth", "crossthinkqa": "ground_truth", "choice_boxed": "ground_truth",
                 "choice_val": "ground_truth", "ifeval": "ground_truth",
                 "reward_system": ("reward_ref_info", "test_cases", "ground_truth")}


def _has(record, name: str) -> bool:
    return getattr(record, name, None) is not None or (getattr(record, "extra", None) or {}).get(name) is not None


def missing_fields(configs: dict[str, RewardConfig], records, key: str) -> list[Issue]:
    """Rows routed to a worker that cannot score them (a math_rule worker without the row's
    ground_truth), counted per worker, the first named by file and line (`record.source`)."""
    issues = []
    for name, c in configs.items():
        needed = NEEDED_FIELDS.get(c.reward_type)
        names = needed if isinstance(needed, tuple) else (needed,)
        rows = [r for r in records if needed and not any(_has(r, n) for n in names)
                and name in row_routes(configs, r)]
        if rows:
            first = ", ".join(r.source for r in rows[:3]) + (", ..." if len(rows) > 3 else "")
            field = " or ".join(repr(n) for n in names)
            issues.append(Issue(f"{key}.file_name", f"{len(rows)} row(s) have no {field}, which reward worker "
                                                    f"{name!r} ({c.reward_type}) needs to score them ({first}): add "
                                                    f"{field} to each, or tag them for other workers"))
    return issues


# each reward_type's worker, but `model` (its model started by the launcher)
RULE_WORKERS = {"math_rule": MathRuleWorker, "math_verify": MathVerifyWorker, "code_sandbox": CodeSandboxWorker,
                "crossthinkqa": ChoiceRuleWorker, "choice_boxed": ChoiceMeasureWorker,
                "choice_val": ChoiceMeasureWorker, "ifeval": IfevalRuleWorker, "llm_judge": LlmJudgeWorker,
                "format": FormatWorker, "reward_system": RewardSystemWorker}


def build_worker(name: str, cfg: RewardConfig, models: dict):
    if cfg.reward_type == "llm_judge" and cfg.judge_model_type in ("inference", "cluster"):
        if name not in models:
            raise ValueError(f"rewards.{name}: judge_model_type: {cfg.judge_model_type} needs its judge engine "
                             "started (vroll.roles.launcher.launch_reward_models)")
        return LlmJudgeWorker(cfg, engine=models[name])
    if cfg.reward_type in RULE_WORKERS:
        return RULE_WORKERS[cfg.reward_type](cfg)
    if name not in models:
        raise ValueError(f"rewards.{name}: reward_type: model needs its model started (vroll.roles.launcher."
                         "launch_reward_models)")
    return ModelRewardWorker(cfg, models[name])


class RewardRouter:
    """All configured reward workers, routing by tag and combining by weight."""

    def __init__(self, configs: dict[str, RewardConfig], models: dict | None = None, workers: dict | None = None):
        """`models`: the started model of each `reward_type: model` worker, by name (the caller closes them)."""
        self.configs = configs
        self.workers = workers if workers is not None else {n: build_worker(n, c, models or {})
                                                            for n, c in configs.items()}

    def score(self, items: list[RewardItem], step: int | None = None
              ) -> tuple[list[float], list[float | None], dict[str, float]]:
        """(combined reward per item, correctness per item (None without an answer-checking worker),
        metrics per worker). `step`: the step being scored, for workers that send it (ROLL's global_step)."""
        combined = [0.0] * len(items)
        correct: list[float | None] = [None] * len(items)
        metrics: dict[str, float] = {}
        for name, worker in self.workers.items():
            idx = [i for i, it in enumerate(items) if name in row_routes(self.configs, it)]
            if not idx:
                continue
            if step is not None and hasattr(worker, "step"):
                worker.step = step
            scores, errors = self._score_safely(name, worker, [items[i] for i in idx])
            weight = self.configs[name].weight
            adds = not getattr(worker, "reward_free", False)  # a measuring worker adds no reward
            for i, s in zip(idx, scores):
                combined[i] += weight * s if adds else 0.0
                if worker.checks_answer:
                    correct[i] = max(correct[i] or 0.0, float(s > 0))
            metrics[f"reward/{name}/mean"] = sum(scores) / len(scores)
            metrics[f"reward/{name}/errors"] = float(errors)
        return combined, correct, metrics

    def _score_safely(self, name: str, worker, items: list[RewardItem]) -> tuple[list[float], int]:
        if getattr(worker, "per_sample_errors", False):  # each sample's score or error in one pass
            try:
                results = list(worker.score_or_errors(items))
                if len(results) != len(items):
                    raise ValueError(f"returned {len(results)} results for {len(items)} samples")
            except Exception as e:  # noqa: BLE001 - the step goes on, every sample of the batch scored 0
                results = [e] * len(items)
            return self._count_errors(name, results)
        try:
            scores = [float(s) for s in worker.score(items)]
            if len(scores) == len(items):
                return scores, 0
            raise ValueError(f"returned {len(scores)} scores for {len(items)} samples")
        except Exception as batch_error:  # noqa: BLE001 - find the failing samples one by one
            log.debug("rewards.%s: batch scoring failed (%s); scoring samples one by one", name, batch_error)
        results = []
        for item in items:
            try:
                results.append(float(worker.score_one(item)))
            except Exception as e:  # noqa: BLE001 - one bad sample must not stop the step
                results.append(e)
        return self._count_errors(name, results)

    @staticmethod
    def _count_errors(name: str, results: list) -> tuple[list[float], int]:
        """Each exception among `results` scores its sample 0, with a warning, and is counted."""
        scores, errors = [], 0
        for k, r in enumerate(results):
            if isinstance(r, Exception):
                errors += 1
                scores.append(0.0)
                log.warning("rewards.%s: sample %d scored 0 because the worker raised: %s: %s", name, k,
                            type(r).__name__, r)
            else:
                scores.append(float(r))
        return scores, errors
