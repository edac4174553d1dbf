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
