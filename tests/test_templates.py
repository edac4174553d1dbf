"""Prompt templates with ROLL's meaning (global_template, tag_to_template, data_args.template) and
vroll's prompt_templates: rendered with the tiny model's tokenizer against hand-written strings, bad
templates refused before anything starts, the first row logged as the model sees it."""

import copy
import json
import logging

import pytest

from conftest import engine_config, write_yaml
from vroll.config import ConfigError, load_config

# the tiny model's chat template writes ChatML: <|im_start|>role\ncontent<|im_end|>\n ... <|im_start|>assistant\n
QUESTION = [{"role": "user", "content": "What is 1+2?"}]
NATIVE = "<|im_start|>user\nWhat is 1+2?<|im_end|>\n<|im_start|>assistant\n"
CALC = {"system": "You are a calculator.", "user": "{content}\nAnswer with a number in \\boxed{}."}
CALC_TEXT = ("<|im_start|>system\nYou are a calculator.<|im_end|>\n"
             "<|im_start|>user\nWhat is 1+2?\nAnswer with a number in \\boxed{}.<|im_end|>\n"
             "<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def tok(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def config(tmp_path, **top):
    data = engine_config("some/model")
    data.update(top)
    return load_config(write_yaml(tmp_path / "c.yaml", data))


def problems(tmp_path, **top) -> list[str]:
    data = engine_config("some/model")
    data.update(top)
    with pytest.raises(ConfigError) as e:
        load_config(write_yaml(tmp_path / "c.yaml", data))
    return [str(i) for i in e.value.issues]


def render(tmp_path, tok, messages, tag=None, **top):
    from vroll.config.templates import choose_templates
    from vroll.strategy.prompts import render_chat

    choice, issues = choose_templates(config(tmp_path, **top))
    assert not issues
    return render_chat(messages, tok, choice.for_tag(tag))


def test_default_and_roll_aliases_render_with_the_models_chat_template(tmp_path, tok):
    assert render(tmp_path, tok, QUESTION) == NATIVE
    assert render(tmp_path, tok, QUESTION, global_template="qwen2_5") == NATIVE
    assert render(tmp_path, tok, QUESTION, global_template="longcot_V3") == NATIVE + "<think>\n"
    assert render(tmp_path, tok, QUESTION, global_template="empty") == NATIVE
    two = [{"role": "system", "content": "Be brief."}] + QUESTION
    assert render(tmp_path, tok, two, global_template="chatml") == "<|im_start|>system\nBe brief.<|im_end|>\n" + NATIVE
    from vroll.strategy.prompts import PromptError

    with pytest.raises(PromptError, match="'empty' takes exactly one user message, got roles \\['system', 'user'\\]"):
        render(tmp_path, tok, two, global_template="empty")


def test_prompt_template_adds_a_system_prompt_and_an_instruction(tmp_path, tok):
    assert render(tmp_path, tok, QUESTION, prompt_templates={"calc": CALC}, global_template="calc") == CALC_TEXT
    own_system = [{"role": "system", "content": "Be brief."}] + QUESTION  # the row's own system prompt stays
    assert render(tmp_path, tok, own_system, prompt_templates={"calc": CALC}, global_template="calc") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is 1+2?\nAnswer with a number in \\boxed{}.<|im_end|>\n<|im_start|>assistant\n")


def test_tag_to_template_overrides_the_global_one_per_tag(tmp_path, tok):
    top = {"prompt_templates": {"calc": CALC}, "tag_to_template": {"math": "calc"}, "global_template": "longcot_V3"}
    assert render(tmp_path, tok, QUESTION, tag="math", **top) == CALC_TEXT
    assert render(tmp_path, tok, QUESTION, tag="other", **top) == NATIVE + "<think>\n"
    assert render(tmp_path, tok, QUESTION, tag=None, **top) == NATIVE + "<think>\n"


def test_actor_train_data_args_template_is_the_default_and_global_template_wins(tmp_path, tok):
    from vroll.config.templates import choose_templates

    data = engine_config("some/model")
    data["actor_train"] = role({"template": "longcot_V3"})
    cfg = load_config(write_yaml(tmp_path / "c.yaml", data))
    choice = choose_templates(cfg)[0]
    assert (choice.default.name, choice.source) == ("longcot_V3", "actor_train.data_args.template")
    data["global_template"] = "native"
    choice = choose_templates(load_config(write_yaml(tmp_path / "c.yaml", data)))[0]
    assert (choice.default.name, choice.source) == ("native", "global_template")


def test_bad_templates_are_refused_naming_key_and_value(tmp_path):
    found = problems(tmp_path, global_template="qwen25")
    assert any(p.startswith("global_template: 'qwen25' is not a template (did you mean 'qwen2_5'?)") for p in found)
    found = problems(tmp_path, tag_to_template={"math": "base"})
    assert any(p.startswith("tag_to_template.math: 'base' is ROLL's template") and "prompt_templates" in p
               for p in found)
    found = problems(tmp_path, prompt_templates={"calc": {"user": "Solve {question}"}})
    assert any(p.startswith("prompt_templates.calc.user: 'Solve {question}' has the unknown placeholder {question}")
               for p in found), found
    assert any(p.startswith("prompt_templates.calc.user: 'Solve {question}' has no {content}") for p in found)
    found = problems(tmp_path, prompt_templates={"calc": {"system": "Hi {content}", "template": "chatmll"}})
    assert any(p.startswith("prompt_templates.calc.system: 'Hi {content}' has the placeholder {content}")
               for p in found)
    assert any(p.startswith("prompt_templates.calc.template: 'chatmll' is not a template (did you mean 'chatml'?)")
               for p in found)


def test_a_different_validation_template_is_refused_an_alias_is_not(tmp_path):
    data = engine_config("some/model")
    data["actor_train"] = role({"template": "qwen2_5"})
    data["validation"] = {"data_args": {"template": "native"}}
    load_config(write_yaml(tmp_path / "c.yaml", data))  # the same rendering: accepted
    data["validation"]["data_args"]["template"] = "qwen3"
    with pytest.raises(ConfigError) as e:
        load_config(write_yaml(tmp_path / "c.yaml", data))
    assert any(str(i).startswith("validation.data_args.template: 'qwen3' differs from the template every row uses "
                                 "('qwen2_5', from actor_train.data_args.template)") for i in e.value.issues)


def test_template_keys_are_no_longer_listed_as_having_no_effect(tmp_path):
    from vroll.config.no_effect import no_effect_keys
    from vroll.config.roll_keys import status

    data = engine_config("some/model")
    data.update(global_template="qwen2_5", tag_to_template={"math": "qwen3"})
    data["actor_train"] = role({"template": "qwen2_5"})
    data["reference"] = role({"template": "qwen2_5"}, "hf_infer")
    cfg = load_config(write_yaml(tmp_path / "c.yaml", data))
    assert not {"global_template", "tag_to_template", "actor_train.data_args.template"} & set(no_effect_keys(cfg))
    assert "reference.data_args.template" in cfg._differences  # read by no code, as in ROLL: said so
    assert cfg.actor_train.data_args.template == "qwen2_5" and cfg.reference.data_args.template is None
    for section, key in (("", "global_template"), ("", "tag_to_template"), ("data_args", "template")):
        assert status(section, key)[0] == "different"


def role(data_args, strategy="fsdp2_train"):
    return {"data_args": data_args, "strategy_args": {"strategy_name": strategy}, "device_mapping": [0]}


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_rows_are_rendered_by_their_tag_and_plain_prompts_stay_as_written(tmp_path, tok):
    from vroll.config.schema import DataArgs
    from vroll.config.templates import choose_templates, unknown_tag_issues
    from vroll.pipeline.dataset import load_prompts, plain_rows_warning

    rows = [{"messages": QUESTION, "tag": "math"}, {"messages": QUESTION, "tag": "chat"},
            {"prompt": "What is 1+2?", "tag": "math"}]
    cfg = config(tmp_path, prompt_templates={"calc": CALC}, tag_to_template={"math": "calc", "mth": "calc"})
    choice = choose_templates(cfg)[0]
    records = load_prompts(DataArgs(file_name=write_rows(tmp_path / "d.jsonl", rows)), tok, 256, "actor_train.data_args",
                           templates=choice)
    assert [r.prompt_text for r in records] == [CALC_TEXT, NATIVE, "What is 1+2?"]
    assert [r.template for r in records] == ["calc", "native", None]
    assert records[0].prompt_ids == tok(CALC_TEXT, add_special_tokens=False)["input_ids"]
    assert plain_rows_warning(records, "actor_train.data_args", choice) == (
        "actor_train.data_args: 1 of 3 rows have a plain prompt, which templates do not change (as in ROLL); give "
        "them `messages` to use the template")
    found = [str(i) for i in unknown_tag_issues(choice, {r.tag for r in records})]
    assert found == ["tag_to_template.mth: no row of the training or validation data has tag 'mth' (did you mean "
                     "'math'?); tags in the data: chat, math"]


def test_train_logs_the_first_row_as_the_model_sees_it(tmp_path, tiny_model, caplog):
    from vroll.pipeline.rlvr import load_data

    rows = [{"messages": QUESTION, "ground_truth": "3", "tag": "math"}] * 2
    data = engine_config(tiny_model)
    data.update(rollout_batch_size=2, global_template="calc", prompt_templates={"calc": CALC},
                rewards={"math": {"reward_type": "math_rule", "tag_included": ["math"]}})
    data["actor_train"] = role({"file_name": write_rows(tmp_path / "d.jsonl", rows)})
    cfg = load_config(write_yaml(tmp_path / "c.yaml", data))
    from transformers import AutoTokenizer

    with caplog.at_level(logging.INFO, logger="vroll.pipeline.rlvr"):
        train, _ = load_data(cfg, AutoTokenizer.from_pretrained(tiny_model), "c.yaml")
    assert train[0].prompt_text == CALC_TEXT
    assert (f"actor_train.data_args: the model sees row 1 ({tmp_path}/d.jsonl:1, template 'calc' from "
            f"global_template) as:\n{CALC_TEXT}") in caplog.text
    bad = copy.deepcopy(data)
    bad["tag_to_template"] = {"maths": "calc"}
    with pytest.raises(ConfigError, match="tag_to_template.maths: no row"):
        load_data(load_config(write_yaml(tmp_path / "c.yaml", bad)), AutoTokenizer.from_pretrained(tiny_model), "c")


def test_a_template_given_as_an_override_must_be_quoted_and_then_works(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", engine_config("some/model"))
    with pytest.raises(ConfigError, match="an override's value is not valid YAML .*: quote it"):
        load_config(path, ["prompt_templates.calc.user={content} Think briefly."])
    cfg = load_config(path, ['prompt_templates.calc.user="{content} Think briefly."', "global_template=calc"])
    assert cfg.prompt_templates["calc"].user == "{content} Think briefly." and cfg.global_template == "calc"
