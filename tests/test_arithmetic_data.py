import json
import re

from vroll.data.arithmetic import write_dataset
from vroll.rewards.math_rule import MathRuleReward


def test_dataset_splits_are_disjoint_deterministic_and_answers_verify(tmp_path):
    paths = write_dataset(tmp_path / "a", n_train=300, n_eval=50, seed=3)
    again = write_dataset(tmp_path / "b", n_train=300, n_eval=50, seed=3)
    train = [json.loads(line) for line in paths["train"].read_text().splitlines()]
    held = [json.loads(line) for line in paths["eval"].read_text().splitlines()]
    assert len(train) == 300 and len(held) == 50
    assert not {r["messages"][-1]["content"] for r in train} & {r["messages"][-1]["content"] for r in held}
    assert paths["train"].read_text() == again["train"].read_text()
    reward = MathRuleReward()
    for r in train[:50]:
        a, op, b = re.fullmatch(r"What is (\d+)([-+*])(\d+)\?", r["messages"][-1]["content"]).groups()
        value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        assert reward.score(f"<answer>{value}</answer>", r["ground_truth"]) == 1.0
        assert r["tag"] == "arithmetic"


def test_sft_split_is_disjoint_and_ends_with_the_answer(tmp_path):
    paths = write_dataset(tmp_path, n_train=40, n_eval=20, n_sft=40, seed=1, max_operand=9)
    question = lambda r: [m for m in r["messages"] if m["role"] == "user"][0]["content"]  # noqa: E731
    rows = {k: [json.loads(line) for line in p.read_text().splitlines()] for k, p in paths.items()}
    sets = {k: {question(r) for r in v} for k, v in rows.items()}
    assert not (sets["sft"] & sets["eval"]) and not (sets["sft"] & sets["train"]) and not (sets["train"] & sets["eval"])
    for r in rows["sft"]:
        assert r["messages"][-1] == {"role": "assistant", "content": f"<answer>{r['ground_truth']}</answer>"}


def test_prompt_sampler_order_depends_only_on_seed_and_resumes(tmp_path):
    from vroll.pipeline.dataset import PromptRecord, PromptSampler

    records = [PromptRecord(index=i, prompt_ids=[i], prompt_text=str(i)) for i in range(5)]
    a = PromptSampler(records, seed=4)
    first = [r.index for r in a.next_batch(3)]
    state = a.state_dict()
    rest = [r.index for r in a.next_batch(9)]  # crosses two epoch boundaries
    b = PromptSampler(records, seed=4)
    b.load_state_dict(state)
    assert [r.index for r in b.next_batch(9)] == rest
    assert sorted(first + rest[:2]) == list(range(5))  # an epoch is a permutation
    assert [r.index for r in PromptSampler(records, seed=4).next_batch(3)] == first


def test_asking_for_more_questions_than_exist_is_an_error_not_a_hang(tmp_path):
    import pytest

    with pytest.raises(ValueError, match=r"more than the 300 distinct questions with max_operand=9 and operators='\+-\*'"):
        write_dataset(tmp_path, n_train=250, n_eval=60, max_operand=9)
    with pytest.raises(ValueError, match=r"more than the 100 distinct questions with max_operand=9 and operators='\+'"):
        write_dataset(tmp_path, n_train=90, n_eval=20, max_operand=9, operators="+")
    with pytest.raises(ValueError, match="operators = '/'"):
        write_dataset(tmp_path, n_train=2, n_eval=2, operators="/")
