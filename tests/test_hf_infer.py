"""The hf_infer strategy: micro-batched, left-padded forward passes equal each sequence alone."""

import pytest
import torch

from conftest import write_yaml
from vroll.config import load_config
from vroll.config.strategies import StrategyNotAvailable
from vroll.roles.interfaces import ForwardModel, ScoringModel
from vroll.roles.launcher import launch_role


def role_file(tmp_path, model, **extra):
    data = {"pretrain": model, "reward_pretrain": model, "reference": {
        "model_args": {"dtype": "fp32"}, "strategy_args": {"strategy_name": "hf_infer"}, "infer_batch_size": 2}}
    data.update(extra)
    return load_config(write_yaml(tmp_path / "c.yaml", data))


def test_reference_logprobs_equal_transformers_alone(tmp_path, tiny_model, hf):
    model, tok = hf
    cfg = role_file(tmp_path, tiny_model)
    seqs = [tok(t)["input_ids"] for t in ["What is 1+2?", "hi", "What is 45-18? The answer is 27.", "What is 3*3?",
                                           "ok"]]
    with launch_role(cfg.reference) as ref:  # micro-batches of 2: [2, 2, 1], mixed lengths
        assert isinstance(ref, ForwardModel)
        got = ref.sequence_logprobs(seqs)
    for s, lp in zip(seqs, got):
        with torch.no_grad():
            alone = torch.log_softmax(model(torch.tensor([s])).logits[0, :-1].float(), -1)
        ref_lp = alone.gather(-1, torch.tensor(s[1:])[:, None])[:, 0]
        assert len(lp) == len(s) - 1
        assert torch.allclose(torch.tensor(lp), ref_lp, atol=1e-5)


def test_reward_model_scores_in_input_order(tmp_path, tiny_model, hf):
    _, tok = hf
    cfg = role_file(tmp_path, tiny_model, rewards={"rm": {
        "reward_type": "model", "model_args": {"dtype": "fp32"}, "strategy_args": {"strategy_name": "hf_infer"},
        "infer_batch_size": 2}})
    seqs = [tok(t)["input_ids"] for t in ["What is 1+2? 3", "no", "What is 45-18? The answer is 27."]]
    with launch_role(cfg.rewards["rm"]) as rm:
        assert isinstance(rm, ScoringModel)
        got = rm.score(seqs)
        reference = rm.model  # the same randomly initialised head, scored one sequence at a time
        with torch.no_grad():
            alone = [reference(torch.tensor([s])).logits[0, 0].item() for s in seqs]
    assert type(reference).__name__.endswith("ForSequenceClassification")
    assert got == pytest.approx(alone, abs=1e-5)


def test_hf_infer_does_not_generate(tmp_path, tiny_model):
    cfg = load_config(write_yaml(tmp_path / "c.yaml", {"pretrain": tiny_model, "actor_infer": {
        "strategy_args": {"strategy_name": "hf_infer"}}}))
    with pytest.raises(StrategyNotAvailable, match="'hf_infer' serves forward-only roles"):
        launch_role(cfg.actor_infer)
