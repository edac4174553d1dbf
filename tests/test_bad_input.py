"""Bad input is refused before anything starts, by file and line or key, never with a traceback
(docs/reliability.md, "bad input"). No engine starts in this file."""

import json
import os
import shutil

import pytest
from conftest import REPO, engine_config, write_yaml
from test_architecture import run_cli

from vroll.config import ConfigError, load_config


def validate(tmp_path, data, platform="none"):
    """`vroll validate` in a fresh process (vLLM's engine-argument types from the usual cache)."""
    return run_cli(["validate", write_yaml(tmp_path / "c.yaml", data), "--platform", platform], dict(os.environ))


def problems(tmp_path, data, platform=None) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(write_yaml(tmp_path / "c.yaml", data), platform=platform)
    return str(e.value)


# -- sampling vLLM refuses ------------------------------------------------------------------------
def test_greedy_decoding_with_several_samples_is_refused_by_the_loader(tmp_path, tiny_model):
    data = engine_config(tiny_model)
    data["actor_infer"]["generating_args"].update(temperature=0.0, num_return_sequences=4)
    text = problems(tmp_path, data)
    assert "actor_infer.generating_args.num_return_sequences: 4 samples per prompt with " \
           "actor_infer.generating_args.temperature: 0 (greedy" in text
    assert "set a temperature above 0" in text


def test_greedy_rollouts_with_a_group_are_refused_for_train(tmp_path, tiny_model):
    from vroll.config.rules import check_train_config

    data = engine_config(tiny_model)  # actor_infer samples greedily (temperature 0)
    data.update(num_return_sequences_in_group=8, rewards={"math": {"reward_type": "math_rule"}})
    issues = [str(i) for i in check_train_config(load_config(write_yaml(tmp_path / "c.yaml", data)))]
    assert any(i.startswith("num_return_sequences_in_group: 8 samples per prompt with "
                            "actor_infer.generating_args.temperature: 0") for i in issues), issues


def test_vllm_own_sampling_rules_are_checked_by_their_key(tmp_path, tiny_model):
    """Values only the installed vLLM knows it refuses (temperature above 2, an empty stop string)."""
    data = engine_config(tiny_model)
    data["actor_infer"]["generating_args"].update(temperature=3.0, stop_strings=[""])
    r = validate(tmp_path, data, platform="cpu")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "actor_infer.generating_args.temperature: 3.0 is refused by vLLM: temperature must be in [0, 2]" in r.stderr
    assert "actor_infer.generating_args.stop_strings: [''] is refused by vLLM: stop cannot contain" in r.stderr


def test_a_temperature_vllm_would_raise_is_refused_by_its_key(tiny_model, tmp_path):
    """vLLM samples a temperature in (0, 0.01) at 0.01 with a log line only; the trainer would score the
    rollouts at the temperature asked for. Refused before start, at the key the value came from."""
    from vroll.config.sampling import job_sampling
    from vroll.strategy.sampling import vllm_refusals

    data = engine_config(tiny_model)
    data["actor_infer"]["generating_args"].update(temperature=1e-6)
    cfg = load_config(write_yaml(tmp_path / "c.yaml", data))
    issues = [str(i) for req in job_sampling(cfg, "train") for i in vllm_refusals(req)]
    assert issues == ["actor_infer.generating_args.temperature: 1e-06 is refused by vLLM: vLLM samples it at 0.01 "
                      "instead (it raises temperatures between 0 and 0.01); set 0 for greedy decoding or at least "
                      "0.01"]
    for fine in (0.0, 0.01, 0.7):
        cfg.actor_infer.generating_args.temperature = fine
        assert not [i for req in job_sampling(cfg, "train") for i in vllm_refusals(req)]


def test_vllm_refusals_name_the_top_level_key_of_a_rollout(tiny_model, tmp_path):
    """vLLM's own verdict on what `vroll train` sends agrees with vroll's greedy rule, by the same key."""
    from vroll.config.sampling import job_sampling
    from vroll.strategy.sampling import vllm_refusals

    data = engine_config(tiny_model)
    data.update(num_return_sequences_in_group=4, response_length=8)
    cfg = load_config(write_yaml(tmp_path / "c.yaml", data))
    (issue,) = [i for req in job_sampling(cfg, "train") for i in vllm_refusals(req)]
    assert str(issue) == ("num_return_sequences_in_group: 4 is refused by vLLM: n must be 1 when using greedy "
                          "sampling, got 4.")


# -- model folders ----------------------------------------------------------------------------------
@pytest.fixture
def model_copy(tmp_path, tiny_model):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    return folder


@pytest.mark.parametrize("damage, expected", [
    ("config", "config.json:1: not valid JSON"),
    ("empty", "is empty: build or download the model into it"),
    ("truncated", "model.safetensors is truncated or corrupt"),
    ("tokenizer", "has no tokenizer (none of tokenizer.json, tokenizer.model, vocab.json)"),
    ("weights", "has no weights (*.safetensors or *.bin)"),
])
def test_a_broken_model_folder_is_named_by_validate(tmp_path, model_copy, damage, expected):
    if damage == "config":
        (model_copy / "config.json").write_text('{"model_type": "qwen2",')
    elif damage == "empty":
        shutil.rmtree(model_copy)
        model_copy.mkdir()
    elif damage == "truncated":
        weights = model_copy / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "tokenizer":
        (model_copy / "tokenizer.json").unlink()
    else:
        (model_copy / "model.safetensors").unlink()
    r = validate(tmp_path, engine_config(str(model_copy)))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "actor_infer.model_args.model_name_or_path: " in r.stderr and expected in r.stderr, r.stderr


@pytest.mark.parametrize("damage, expected", [
    ("model_type", "transformers cannot read its config (ValueError: The checkpoint you are trying to load has model "
                   "type `qwen9` but Transformers does not recognize this architecture)"),
    ("tokenizer", "transformers cannot read its tokenizer (KeyError: 'added_tokens')"),
])
def test_a_model_folder_transformers_cannot_read_is_named_before_start(tmp_path, model_copy, damage, expected):
    """Files that are whole JSON but that transformers refuses (an unknown architecture, a tokenizer.json
    that is not a tokenizer's) were a traceback once the engine or trainer started, and validated."""
    from vroll.cli.main import main

    if damage == "model_type":
        config = json.loads((model_copy / "config.json").read_text())
        (model_copy / "config.json").write_text(json.dumps({**config, "model_type": "qwen9"}))
    else:
        (model_copy / "tokenizer.json").write_text("{}")
    data = engine_config(str(model_copy))
    r = validate(tmp_path, data, platform="cpu")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"actor_infer.model_args.model_name_or_path: {model_copy}: {expected}" in r.stderr, r.stderr
    (tmp_path / "p.jsonl").write_text('{"prompt": "What is 1+1?"}\n')
    assert main(["generate", write_yaml(tmp_path / "c.yaml", data), "--input", str(tmp_path / "p.jsonl"),
                 "--output", str(tmp_path / "out.jsonl")]) == 2  # the same check, before its engine
    assert not (tmp_path / "out.jsonl").exists()


def test_a_context_longer_than_the_models_positions_is_named_by_validate(tmp_path, tiny_model):
    # vLLM refuses it only when its engine starts (found training ROLL's example_ppo.yaml: max_model_len 8000)
    data = engine_config(tiny_model)
    data["actor_infer"]["strategy_args"]["strategy_config"]["max_model_len"] = 1024
    r = validate(tmp_path, data)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "actor_infer.strategy_args.strategy_config.max_model_len: 1024 is more than the model's 512 positions" \
        in r.stderr, r.stderr


def test_a_whole_model_folder_passes_and_dummy_weights_need_none(tmp_path, model_copy):
    from vroll.models.folder import folder_problems

    assert folder_problems(model_copy) == []
    (model_copy / "model.safetensors").unlink()
    assert folder_problems(model_copy, weights=False) == []


# -- data and prompt files --------------------------------------------------------------------------
def latin1_file(path, first_line: str):
    path.write_bytes(first_line.encode() + b"\n" + '{"prompt": "caf\xe9"}\n'.encode("latin-1"))
    return path


def test_a_prompt_file_that_is_not_utf8_is_named_by_line(tmp_path):
    from vroll.cli.prompts_io import read_prompts
    from vroll.config.errors import UserError

    path = latin1_file(tmp_path / "p.jsonl", '{"prompt": "ok"}')
    with pytest.raises(UserError, match=r"p.jsonl:2: not UTF-8 text \(byte 0xe9 at column 16\)"):
        read_prompts(path)


def test_a_data_file_that_is_not_utf8_is_named_by_line(tmp_path):
    from vroll.config.errors import UserError
    from vroll.config.schema import DataArgs
    from vroll.pipeline.dataset import load_prompts

    path = latin1_file(tmp_path / "d.jsonl", '{"prompt": "ok", "ground_truth": "1"}')
    with pytest.raises(UserError, match="d.jsonl:2: not UTF-8 text"):
        load_prompts(DataArgs(file_name=str(path)), tokenizer=None, prompt_length=64, key="actor_train.data_args")


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def rows_file(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def rl_config(tmp_path, tiny_model, rows, **top):
    data = {"pretrain": tiny_model, "rollout_batch_size": 2, "prompt_length": 64, **top,
            "actor_train": {"data_args": {"file_name": rows_file(tmp_path / "train.jsonl", rows)},
                            "strategy_args": {"strategy_name": "fsdp2_train"}},
            "rewards": {"math": {"reward_type": "math_rule"}}}
    return load_config(write_yaml(tmp_path / "c.yaml", data))


def ask(q, truth="2", role="user"):
    row = {"messages": [{"role": role, "content": q}]}
    return row if truth is None else {**row, "ground_truth": truth}


def test_rows_without_the_field_a_reward_worker_needs_are_counted_before_start(tmp_path, tiny_model, tokenizer):
    from vroll.pipeline.rlvr import load_data

    cfg = rl_config(tmp_path, tiny_model, [ask("1+1?"), ask("2+2?", None), ask("3+3?"), ask("4+4?", None)])
    with pytest.raises(ConfigError) as e:
        load_data(cfg, tokenizer, "c.yaml")
    text = str(e.value)
    assert "actor_train.data_args.file_name: 2 row(s) have no 'ground_truth', which reward worker 'math' " \
           "(math_rule) needs" in text
    assert "train.jsonl:2, " in text and "train.jsonl:4)" in text


def test_a_role_the_chat_template_does_not_know_is_refused(tmp_path, tiny_model, tokenizer):
    from vroll.pipeline.rlvr import load_data

    cfg = rl_config(tmp_path, tiny_model, [ask("1+1?"), ask("2+2?", role="hacker"), ask("3+3?")])
    with pytest.raises(ConfigError, match=r"train.jsonl:2: message 1 has role 'hacker', which the model's chat "
                                          r"template does not know; use one of assistant, system, user"):
        load_data(cfg, tokenizer, "c.yaml")


def test_a_message_the_chat_template_drops_is_refused(tokenizer):
    from vroll.strategy.prompts import PromptError, render_chat, template_roles

    tok = __import__("copy").deepcopy(tokenizer)
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'user' %}U: {{ m['content'] }}\n"
                         "{% elif m.role in ['assistant', 'tool'] %}A: {{ m['content'] }}\n{% endif %}{% endfor %}")
    assert template_roles(tok) == {"system", "user", "assistant", "tool"}
    assert render_chat([{"role": "user", "content": "hi"}], tok) == "U: hi\n"
    with pytest.raises(PromptError, match="message 1 \\(role 'system'\\) is dropped by the model's chat template"):
        render_chat([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}], tok)


def test_rollout_batch_size_larger_than_the_prompts_is_an_error(tmp_path, tiny_model, tokenizer):
    from vroll.pipeline.rlvr import load_data

    cfg = rl_config(tmp_path, tiny_model, [ask("1+1?"), ask("2+2?"), ask("3+3?")], rollout_batch_size=4)
    with pytest.raises(ConfigError, match="rollout_batch_size: 4 is more than the 3 usable prompts"):
        load_data(cfg, tokenizer, "c.yaml")


def test_prompts_out_of_vocabulary_or_too_long_are_named_by_line_before_start(tmp_path, tokenizer):
    from vroll.cli.prompts_io import InputError, check_prompt_lines, read_prompt_lines

    path = rows_file(tmp_path / "p.jsonl", [{"prompt": "hi"}, {"prompt_token_ids": [5, 99999]},
                                            {"prompt": "x " * 300}, {"messages": [{"role": "bot", "content": "x"}]}])
    lines = read_prompt_lines(path)
    with pytest.raises(InputError) as e:
        check_prompt_lines(path, lines, tokenizer, max_new_tokens=16, max_model_len=256, overflow="error")
    text = str(e.value)
    assert text.startswith("3 prompt(s) cannot be generated")
    assert "p.jsonl:2: token ids [99999] are outside the vocabulary [0, 277)" in text
    assert "p.jsonl:3: 600 tokens + max_new_tokens 16 > max_model_len 256" in text
    assert "p.jsonl:4: message 1 has role 'bot'" in text
    check_prompt_lines(path, lines[:1], tokenizer, 16, 256, "error")  # a good line passes


def test_generate_reports_bad_prompts_without_starting_an_engine(tmp_path, tiny_model):
    from test_cli import run

    prompts = rows_file(tmp_path / "p.jsonl", [{"prompt": "hi"}, {"prompt_token_ids": [5, 99999]}])
    cfg = write_yaml(tmp_path / "c.yaml", engine_config(tiny_model))
    r = run("generate", cfg, "--input", prompts, "--output", tmp_path / "out.jsonl")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "p.jsonl:2: token ids [99999] are outside the vocabulary" in r.stderr
    assert "engine ready" not in r.stderr and not (tmp_path / "out.jsonl").exists()


def test_validate_for_train_reads_the_rows_as_train_does(tmp_path, tiny_model):
    from vroll.data.arithmetic import write_dataset

    paths = write_dataset(tmp_path / "data", n_train=8, n_eval=4, n_sft=4, seed=0, max_operand=9)
    r = run_cli(["validate", f"{REPO}/examples/rlvr_tiny.yaml", "--job", "train", f"pretrain={tiny_model}",
                 f"actor_train.data_args.file_name={paths['train']}", f"validation.data_args.file_name={paths['eval']}",
                 "actor_train.device_mapping=[0,1]", "reference.device_mapping=[0,1]",
                 "actor_train.training_args.per_device_train_batch_size=8"], dict(os.environ))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "rollout_batch_size: 16 is more than the 8 usable prompts" in r.stderr
