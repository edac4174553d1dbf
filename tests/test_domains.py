"""ROLL's `domain_interleave_probs`: each domain's share of a step's batch (config/domains.py, the
DomainSampler of pipeline/dataset.py). No engine is started here."""

import copy
import logging

import pytest

from conftest import write_yaml
from vroll.config import ConfigError, load_config
from vroll.config.domains import domain_batch_sizes, interleaved, row_domain, tag_domains
from vroll.config.schema import DataArgs, RewardConfig
from vroll.pipeline.dataset import (DomainSampler, PromptRecord, PromptSampler, domain_issues, prompt_sampler,
                                    record_domain)

KEY = "actor_train.data_args.domain_interleave_probs"
REWARDS = {"math_rule": RewardConfig(tag_included=["math"]), "code_sandbox": RewardConfig(
    reward_type="code_sandbox", tag_included=["code"]), "llm_judge": RewardConfig(reward_type="llm_judge",
                                                                                  tag_included=["judge"])}


def rows(math=40, code=30, judge=20, untagged=0) -> list[PromptRecord]:
    """Rows tagged for each worker; `untagged` rows carry their domain in a `domain` field."""
    out = []
    for tag, n in (("math", math), ("code", code), ("judge", judge)):
        out += [PromptRecord(index=0, prompt_ids=[len(out)], prompt_text=f"{tag}{i}", tag=tag) for i in range(n)]
    out += [PromptRecord(index=0, prompt_ids=[len(out)], prompt_text=f"d{i}", extra={"domain": "llm_judge"})
            for i in range(untagged)]
    for i, r in enumerate(out):
        r.index = i
    return out


def sampler(records, probs, batch=10, seed=3):
    return prompt_sampler(records, seed, DataArgs(domain_interleave_probs=probs), batch, REWARDS)


def domains_of(batch) -> list[str]:
    tags = tag_domains(REWARDS)
    return [record_domain(r, tags) for r in batch]


def test_batch_sizes_follow_rolls_rounding():
    # int(p * B) for every domain but the last, which takes the rest
    assert domain_batch_sizes({"a": 0.4, "b": 0.3, "c": 0.1, "d": 0.1, "e": 0.1}, 64) == \
        {"a": 25, "b": 19, "c": 6, "d": 6, "e": 8}
    assert domain_batch_sizes({"a": 0.29, "b": 0.71}, 100) == {"a": 28, "b": 72}  # int(28.999...) as in ROLL
    assert domain_batch_sizes({"a": 0.5, "b": 0.25}, 8) == {"a": 4, "b": 4}  # the last takes the rest
    assert domain_batch_sizes({"only": 1}, 7) == {"only": 7}


def test_a_rows_domain_is_its_field_then_its_tags_worker_then_math_rule():
    tags = tag_domains({"a": RewardConfig(tag_included=["x"]), "b": RewardConfig(tag_included=["x", "y"])})
    assert tags == {"x": "b", "y": "b"}  # a later worker wins a shared tag (ROLL's dict)
    assert row_domain("code_sandbox", "y", tags) == "code_sandbox"
    assert row_domain(None, "y", tags) == "b"
    assert row_domain(None, "z", tags) == "math_rule" and row_domain(None, None, tags) == "math_rule"


def test_each_step_draws_each_domains_share_from_its_own_rows():
    s = sampler(rows(), {"math_rule": 0.5, "code_sandbox": 0.3, "llm_judge": 0.2}, batch=10)
    assert isinstance(s, DomainSampler)
    seen = {"math_rule": [], "code_sandbox": [], "llm_judge": []}
    for _ in range(12):  # crosses every domain's epoch boundary
        batch = s.next_batch(10)
        got = domains_of(batch)
        assert got == ["math_rule"] * 5 + ["code_sandbox"] * 3 + ["llm_judge"] * 2  # ROLL concatenates domains
        assert len({r.index for r in batch}) == 10
        for d, r in zip(got, batch):
            seen[d].append(r.index)
    # each domain runs through its own rows, a permutation per epoch
    assert sorted(seen["math_rule"][:40]) == [r.index for r in rows() if r.tag == "math"]
    assert sorted(seen["code_sandbox"][:30]) == [r.index for r in rows() if r.tag == "code"]
    assert s.epoch == 1  # math's 60 draws: one full pass; judge 24 of 20, code 36 of 30


def test_rows_with_a_domain_field_join_that_domain():
    s = sampler(rows(judge=0, untagged=5), {"math_rule": 0.5, "llm_judge": 0.5}, batch=4)
    batch = s.next_batch(4)
    assert [r.prompt_text[0] for r in batch[2:]] == ["d", "d"]


def test_order_is_deterministic_per_seed():
    probs = {"math_rule": 0.5, "code_sandbox": 0.3, "llm_judge": 0.2}
    a = [r.index for _ in range(5) for r in sampler(rows(), probs, seed=1).next_batch(10)]
    b = [r.index for _ in range(5) for r in sampler(rows(), probs, seed=1).next_batch(10)]
    c = [r.index for _ in range(5) for r in sampler(rows(), probs, seed=2).next_batch(10)]
    assert a == b and a != c


def test_extra_draws_keep_the_shares():
    s = sampler(rows(), {"math_rule": 0.5, "code_sandbox": 0.3, "llm_judge": 0.2}, batch=10)
    singles = domains_of([r for _ in range(20) for r in s.next_batch(1)])
    assert singles.count("math_rule") == 10 and singles.count("code_sandbox") == 6 and singles.count("llm_judge") == 4
    assert interleaved({"a": 2, "b": 1}) == ["a", "b", "a"]
    assert domains_of(s.next_batch(10)).count("math_rule") == 5  # a whole batch is split as ROLL splits it


def test_resume_gives_the_same_prompts_as_an_uninterrupted_run():
    probs = {"math_rule": 0.5, "code_sandbox": 0.3, "llm_judge": 0.2}
    a = sampler(rows(), probs)
    for _ in range(7):
        a.next_batch(10)
    a.next_batch(3)  # dynamic sampling's extra prompts
    state = copy.deepcopy(a.state_dict())
    rest = [r.index for _ in range(9) for r in a.next_batch(10) + a.next_batch(1)]
    b = sampler(rows(), probs)
    b.load_state_dict(state)
    assert [r.index for _ in range(9) for r in b.next_batch(10) + b.next_batch(1)] == rest
    assert b.state_dict() == a.state_dict()


def test_resume_with_other_domains_is_refused():
    a = sampler(rows(), {"math_rule": 0.5, "code_sandbox": 0.5})
    with pytest.raises(ConfigError, match=r"saved with domains \['code_sandbox', 'math_rule'\].*same domains"):
        sampler(rows(), {"math_rule": 1.0}).load_state_dict(a.state_dict())
    plain = PromptSampler(rows(), 3).state_dict()
    with pytest.raises(ConfigError, match="saved with domains none"):
        sampler(rows(), {"math_rule": 1.0}).load_state_dict(plain)


def test_without_the_key_one_shuffled_order_is_kept():
    assert type(prompt_sampler(rows(), 3, DataArgs(), 10, REWARDS)) is PromptSampler


def test_data_errors_name_the_domain(caplog):
    data = DataArgs(domain_interleave_probs={"math_rule": 0.5, "code_sandbox": 0.5})
    found = [str(i) for i in domain_issues(rows(code=0), data, 10, REWARDS)]
    assert len(found) == 1 and found[0].startswith(f"{KEY}.code_sandbox: no row of actor_train.data_args is in "
                                                   "domain 'code_sandbox'") and "'llm_judge': 20" in found[0]
    found = [str(i) for i in domain_issues(rows(code=4), data, 10, REWARDS)]
    assert found == [f"{KEY}.code_sandbox: 0.5 of rollout_batch_size=10 is 5 prompts a step, more than the "
                     "domain's 4 rows: every step would repeat prompts; lower the share or add rows"]
    with caplog.at_level(logging.WARNING):
        assert domain_issues(rows(), data, 10, REWARDS) == []
    assert "20 row(s) of domain(s) ['llm_judge'] are never drawn" in caplog.text


def train_file(probs, **top):
    return {"seed": 1, "pretrain": "m", "rollout_batch_size": 8, **top,
            "actor_train": {"data_args": {"file_name": "x.jsonl", "domain_interleave_probs": probs},
                            "strategy_args": {"strategy_name": "fsdp2_train"}},
            "rewards": {"math_rule": {"tag_included": ["math"]}, "code_sandbox": {"reward_type": "code_sandbox"}}}


def config_problems(tmp_path, data) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(write_yaml(tmp_path / "c.yaml", data))
    return [str(i) for i in e.value.issues]


def test_config_errors_name_the_key_and_value(tmp_path):
    assert config_problems(tmp_path, train_file({"math_rule": 0.5, "maths": 0.5})) == [
        f"{KEY}: ['maths']: not reward workers; each domain is named like its reward worker (rewards.<name>), as in "
        "ROLL; allowed: ['code_sandbox', 'math_rule']"]
    assert config_problems(tmp_path, train_file({"math_rule": 1.5, "code_sandbox": -0.5})) == [
        f"{KEY}.math_rule: 1.5: a domain's share of the batch is a finite number from 0 to 1",
        f"{KEY}.code_sandbox: -0.5: a domain's share of the batch is a finite number from 0 to 1"]
    data = train_file({"math_rule": 0.75, "code_sandbox": 0.75})
    data["rewards"]["llm_judge"] = {"reward_type": "llm_judge", "judge_api_url": "http://127.0.0.1:1/v1",
                                    "judge_model_name": "j"}
    data["actor_train"]["data_args"]["domain_interleave_probs"]["llm_judge"] = 0.1
    assert [p for p in config_problems(tmp_path, data) if p.startswith(KEY)] == [
        f"{KEY}: {{'math_rule': 0.75, 'code_sandbox': 0.75, 'llm_judge': 0.1}}: the domains before 'llm_judge' take "
        "12 of rollout_batch_size=8 prompts, leaving -4 for 'llm_judge', which takes the rest as in ROLL; make the "
        "shares sum to 1"]
    found = config_problems(tmp_path, train_file({"math_rule": float("nan")}))
    assert len(found) == 1 and found[0].startswith(f"{KEY}.math_rule") and "finite" in found[0]
    assert config_problems(tmp_path, train_file({}))[0].startswith(f"{KEY}: {{}}: name at least one domain")


def test_shares_not_summing_to_one_warn_and_the_last_domain_takes_the_rest(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        cfg = load_config(write_yaml(tmp_path / "c.yaml", train_file({"math_rule": 0.25, "code_sandbox": 0.25})))
    assert cfg.actor_train.data_args.domain_interleave_probs == {"math_rule": 0.25, "code_sandbox": 0.25}
    assert "the shares sum to 0.5, not 1; as in ROLL the last domain 'code_sandbox' takes the rest of each batch " \
           "(6 of 8 prompts)" in caplog.text
    assert not any("domain_interleave_probs" in k for k in cfg._no_effect)


def test_removing_a_reward_worker_removes_its_domain(tmp_path, caplog):
    data = train_file({"math_rule": 0.5, "code_sandbox": 0.25, "ifeval": 0.25})
    data["rewards"]["ifeval"] = {"worker_cls": "roll.pipeline.rlvr.rewards.general_val_rule_reward_worker."
                                               "DetectionRewardWorker"}
    path = write_yaml(tmp_path / "c.yaml", data)
    assert any(p.startswith("rewards.ifeval.worker_cls") for p in config_problems(tmp_path, data))
    with caplog.at_level(logging.WARNING):
        cfg = load_config(path, ["rewards.ifeval=null"])
    assert cfg.actor_train.data_args.domain_interleave_probs == {"math_rule": 0.5, "code_sandbox": 0.25}
    assert cfg._differences[f"{KEY}.ifeval"] == "removed with its reward worker"
    assert "the last domain 'code_sandbox' takes the rest of each batch (4 of 8 prompts)" in caplog.text


def test_train_reads_the_rows_domains_before_anything_starts(tmp_path, tiny_model):
    """`load_data` (what `vroll train` and `vroll validate --job train` run) checks each domain's rows."""
    from transformers import AutoTokenizer

    from vroll.pipeline.rlvr import load_data

    rows = [{"prompt": f"{i}+1?", "ground_truth": str(i + 1), "tag": "math"} for i in range(3)] + \
           [{"prompt": f"code {i}", "test_cases": [{"stdin": "", "expected_stdout": ""}], "tag": "code"}
            for i in range(1)]
    (tmp_path / "train.jsonl").write_text("".join(__import__("json").dumps(r) + "\n" for r in rows))
    data = train_file({"math_rule": 0.5, "code_sandbox": 0.5}, pretrain=tiny_model, rollout_batch_size=4,
                      prompt_length=64)
    data["actor_train"]["data_args"]["file_name"] = str(tmp_path / "train.jsonl")
    data["rewards"]["code_sandbox"]["tag_included"] = ["code"]
    cfg = load_config(write_yaml(tmp_path / "c.yaml", data))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    with pytest.raises(ConfigError) as e:
        load_data(cfg, tokenizer, "c.yaml")
    assert [str(i) for i in e.value.issues] == [
        f"{KEY}.code_sandbox: 0.5 of rollout_batch_size=4 is 2 prompts a step, more than the domain's 1 rows: every "
        "step would repeat prompts; lower the share or add rows"]
    cfg.actor_train.data_args.domain_interleave_probs = {"math_rule": 0.75, "code_sandbox": 0.25}
    train, _ = load_data(cfg, tokenizer, "c.yaml")
    s = prompt_sampler(train, cfg.seed, cfg.actor_train.data_args, cfg.rollout_batch_size, cfg.rewards)
    assert [r.tag for r in s.next_batch(4)] == ["math"] * 3 + ["code"]


def test_rows_no_worker_scores_are_refused_where_they_would_be_scored(tmp_path, tiny_model):
    """ROLL fails on a row whose domain names no worker when it scores it: vroll refuses such a
    validation row before anything starts; a training row of a domain the shares do not list is
    never drawn (as in ROLL), so it is only counted in the log."""
    import json

    from transformers import AutoTokenizer

    from vroll.pipeline.rlvr import load_data

    train = [{"prompt": f"{i}+1?", "ground_truth": str(i + 1), "tag": "math"} for i in range(4)] + \
            [{"prompt": "x", "ground_truth": "1", "domain": "judge"}]  # no worker named judge: never drawn
    val = [{"prompt": "1+1?", "ground_truth": "2", "tag": "math"}, {"prompt": "y", "ground_truth": "1",
                                                                     "domain": "judge"}]
    for name, rows_ in (("train", train), ("val", val)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_))
    data = train_file({"math_rule": 1.0}, pretrain=tiny_model, rollout_batch_size=2, prompt_length=64,
                      validation={"data_args": {"file_name": str(tmp_path / "val.jsonl")}})
    data["actor_train"]["data_args"]["file_name"] = str(tmp_path / "train.jsonl")
    data["rewards"] = {"math_rule": {"tag_included": ["math"]}}
    cfg = load_config(write_yaml(tmp_path / "c.yaml", data))
    with pytest.raises(ConfigError) as e:
        load_data(cfg, AutoTokenizer.from_pretrained(tiny_model), "c.yaml")
    assert [str(i) for i in e.value.issues] == [
        f"validation.data_args: 1 row(s) have no reward worker (domain(s) ['judge']; {tmp_path / 'val.jsonl'}:2): "
        "list the tag in a worker's tag_included, or give the row a `domain` field naming a worker, or add a worker "
        "named math_rule (ROLL's domain of a row whose tag no worker lists); workers: ['math_rule']"]


def test_advantages_are_computed_per_rolls_domain_not_per_tag():
    """Two tags one worker scores are one domain (ROLL groups its batch by `domain`): their batch
    statistics (here the running reward moments of each domain) are shared."""
    import torch

    from vroll.config.schema import PipelineConfig
    from vroll.pipeline.algorithms import AlgorithmState
    from vroll.pipeline.rlvr import advantages_by_domain

    cfg = PipelineConfig(adv_estimator="reinforce", num_return_sequences_in_group=2, norm_mean_type="running",
                         norm_std_type="running", rewards={"math_rule": RewardConfig(tag_included=["aime", "gsm8k"]),
                                                           "llm_judge": RewardConfig(reward_type="llm_judge",
                                                                                     tag_included=["RLVR"])})
    records = [PromptRecord(0, [1], "a", tag="aime"), PromptRecord(1, [1], "b", tag="gsm8k"),
               PromptRecord(2, [1], "c", tag="RLVR"), PromptRecord(3, [1], "d", extra={"domain": "llm_judge"})]
    state = AlgorithmState.start(cfg)
    advantages_by_domain(cfg, records, torch.arange(8.0), torch.ones(8, 3), None, state)
    assert sorted(state.running) == ["llm_judge", "math_rule"]
    assert state.running["math_rule"].count == 4 and state.running["llm_judge"].count == 4


def test_the_loop_draws_each_domains_share_and_resumes_exactly(tmp_path, tiny_model, capsys):
    """The real loop (engine, trainer, reference, rewards on the tiny model): half the rows carry
    `domain: rm`, the rest are the `math` worker's by their tag; 2 steps straight equal 1 step and a
    resume, and each step's prompts are 2 of each domain. `track_with: stdout` prints each step."""
    import json

    from test_rlvr import read_metrics, rl_config, run, run_resumed, without_timings
    from vroll.data.arithmetic import write_dataset

    data = write_dataset(tmp_path / "data", n_train=24, n_eval=4, seed=1, max_operand=9)
    rows = [json.loads(line) for line in open(data["train"])]
    for i, row in enumerate(rows):
        if i % 2:
            row["domain"] = "rm"
    (tmp_path / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    over = {"validation": None, "track_with": "stdout",
            "actor_train.data_args.domain_interleave_probs": {"math": 0.5, "rm": 0.5}}
    straight = rl_config(tmp_path / "a", tiny_model, data, max_steps=2, **over)
    run(tmp_path, straight, "a.yaml")
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("metrics_tag: ")]
    assert [json.loads(line[len("metrics_tag: "):])["step"] for line in printed] == [1, 2]
    b = run_resumed(tmp_path, straight, 1)
    a = read_metrics(tmp_path / "a" / "run" / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2] and without_timings(b) == without_timings(a)
    state = json.loads((tmp_path / "b" / "checkpoints" / "step_2" / "vroll_state.json").read_text())
    assert {d: s["position"] for d, s in state["data"]["domains"].items()} == {"math": 4, "rm": 4}
