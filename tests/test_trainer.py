"""The fsdp2_train strategy: its log-probabilities equal transformers' on each sequence alone, it
learns, and what it saves is a standard Hugging Face folder that resumes the optimiser exactly."""

import pytest
import torch

from vroll.config.schema import RoleConfig


def train_role(model_path, **training):
    args = {"learning_rate": 1e-3, "per_device_train_batch_size": 2}
    args.update(training)
    return RoleConfig(model_args={"model_name_or_path": model_path, "dtype": "fp32",
                                  "disable_gradient_checkpointing": True},
                      strategy_args={"strategy_name": "fsdp2_train"}, training_args=args, device_mapping=[0, 1],
                      name="actor_train", seed=3)


def padded(seqs, pad=0):
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    return ids, mask


SEQS = [[5, 17, 40, 41, 42, 90, 91], [7, 8, 9], [100, 101, 102, 103, 104, 20, 21, 22, 23, 24, 25]]


def nll(micro, logp, entropy):
    m = micro["attention_mask"][:, 1:] * micro["attention_mask"][:, :-1]
    loss = -(logp * m).sum() / m.sum()
    return loss, {"loss": float(loss.detach())}


@pytest.fixture(scope="module")
def trainer(tiny_model):
    from vroll.strategy.fsdp2_train import Fsdp2TrainStrategy

    with Fsdp2TrainStrategy(train_role(tiny_model), total_steps=10) as t:
        yield t


def test_logprobs_equal_transformers_per_sequence(trainer, hf):
    model, _ = hf
    ids, mask = padded(SEQS)
    got = trainer.batch_logprobs(ids, mask, batch_size=2)
    for i, s in enumerate(SEQS):
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([s])).logits[0, :-1].float(), -1)
        want = ref.gather(-1, torch.tensor(s[1:])[:, None]).squeeze(-1)
        assert torch.allclose(got[i, -len(s) + 1:], want, atol=1e-5), i
        assert got[i, :-len(s) + 1].abs().sum() == 0  # padding scores nothing


def test_training_lowers_the_loss_and_saves_a_loadable_model(trainer, tmp_path):
    from transformers import AutoModelForCausalLM

    from vroll.models.logprobs import token_logprobs

    ids, mask = padded(SEQS)
    micros = [{"input_ids": ids[:2], "attention_mask": mask[:2]}, {"input_ids": ids[2:], "attention_mask": mask[2:]}]
    losses = [trainer.train_step(micros, nll)["loss"] for _ in range(5)]
    assert losses[-1] < losses[0]
    trainer.save(tmp_path / "ckpt")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.allclose(token_logprobs(loaded, ids, mask), trainer.batch_logprobs(ids, mask), atol=1e-6)


def test_a_nonfinite_step_is_not_applied(trainer):
    ids, mask = padded(SEQS)
    micros = [{"input_ids": ids, "attention_mask": mask}]
    before = {k: v.clone() for k, v in trainer.named_weights()}
    schedule = trainer.scheduler.last_epoch

    def poisoned(micro, logp, entropy):
        loss, metrics = nll(micro, logp, entropy)
        return loss * float("nan"), metrics

    got = trainer.train_step(micros, poisoned)
    assert got["train/nonfinite"] == 1.0 and got["train/grad_norm"] != got["train/grad_norm"]  # NaN
    assert all(torch.equal(before[k], v) for k, v in trainer.named_weights())  # nothing applied
    assert trainer.scheduler.last_epoch == schedule
    after = trainer.train_step(micros, nll)  # the next finite step trains as usual
    assert "train/nonfinite" not in after and not all(torch.equal(before[k], v) for k, v in trainer.named_weights())


def test_weights_go_out_in_the_engines_dtype(trainer):
    full = dict(trainer.named_weights())
    half = dict(trainer.named_weights(dtype=torch.bfloat16))
    assert half.keys() == full.keys() and all(t.dtype == torch.bfloat16 for t in half.values())
    assert all(torch.equal(half[k], full[k].to(torch.bfloat16)) for k in full)  # the engine's own rounding


def test_resumed_optimiser_continues_exactly(tiny_model, tmp_path):
    import shutil

    from vroll.strategy.fsdp2_train import Fsdp2TrainStrategy
    from vroll.strategy.train_state import load_train_state

    ids, mask = padded(SEQS)
    micros = [{"input_ids": ids, "attention_mask": mask}]
    role = train_role(tiny_model, lr_scheduler_type="linear", warmup_steps=1)
    with Fsdp2TrainStrategy(role, total_steps=6) as a:
        for _ in range(2):
            a.train_step(micros, nll)
        a.save(tmp_path / "mid")
        straight = [a.train_step(micros, nll) for _ in range(2)]
    # an earlier vroll's checkpoint: one trainer_state.pt, read with torch.load(weights_only=True)
    shutil.copytree(tmp_path / "mid", tmp_path / "old")
    torch.save(load_train_state(tmp_path / "mid"), tmp_path / "old" / "trainer_state.pt")
    for name in ("trainer_state.json", "trainer_state.tensors"):
        (tmp_path / "old" / name).unlink()
    for folder in ("mid", "old"):
        with Fsdp2TrainStrategy(role, total_steps=6, model_path=str(tmp_path / folder)) as b:
            b.load_state(tmp_path / folder)
            resumed = [b.train_step(micros, nll) for _ in range(2)]
        for s, r in zip(straight, resumed):
            assert s["loss"] == r["loss"] and s["train/lr"] == r["train/lr"], folder


def test_two_ranks_train_like_one(tiny_model, tmp_path):
    """fsdp2_train on two Ray rank actors (one CPU slot each) takes the same steps as one rank on the
    same global batch: same losses, gradient norms and weights, log-probs in input order, and a
    checkpoint that loads and resumes."""
    from transformers import AutoModelForCausalLM

    from vroll.models.logprobs import token_logprobs
    from vroll.roles.interfaces import Trainer
    from vroll.roles.launcher import launch_role

    seqs = SEQS + [[3, 4, 5, 6, 7, 8]]
    ids, mask = padded(seqs)
    tokens = (mask[:, 1:] * mask[:, :-1]).sum()

    def loss_fn(micro, logp, entropy):  # normalised over the whole step, as the RL and SFT losses are
        m = micro["attention_mask"][:, 1:] * micro["attention_mask"][:, :-1]
        loss = -(logp * m).sum() / tokens
        return loss, {"loss": float(loss.detach())}

    one = train_role(tiny_model, per_device_train_batch_size=4, lr_scheduler_type="linear", warmup_steps=1)
    two = train_role(tiny_model, per_device_train_batch_size=2, lr_scheduler_type="linear", warmup_steps=1)
    two.strategy_args.strategy_config["cpu_threads_per_rank"] = 1
    micros = [{"input_ids": ids, "attention_mask": mask}]
    with launch_role(one, total_steps=6) as a:
        assert isinstance(a, Trainer) and type(a).__name__ == "Fsdp2TrainStrategy"  # in this process
        single = [a.train_step(micros, loss_fn) for _ in range(2)]
        single_weights = dict(a.named_weights())
        single_logp = a.batch_logprobs(ids[:3], mask[:3])
    with launch_role(two, total_steps=6) as b:
        assert isinstance(b, Trainer) and type(b).__name__ == "RayTrainer" and b.world_size == 2
        double = [b.train_step(micros, loss_fn) for _ in range(2)]
        for s, d in zip(single, double):
            assert abs(s["loss"] - d["loss"]) < 1e-5 and abs(s["train/grad_norm"] - d["train/grad_norm"]) < 1e-4
            assert s["train/lr"] == d["train/lr"]
        weights = dict(b.named_weights())
        assert weights.keys() == single_weights.keys()
        streamed = list(b.named_weights(bucket_bytes=1 << 16))  # many buckets, one gather each
        assert [n for n, _ in streamed] == list(weights) and all(torch.equal(t, weights[n]) for n, t in streamed)
        some = dict(b.named_weights(names=list(weights)[:3], dtype=torch.bfloat16))
        assert list(some) == list(weights)[:3] and all(t.dtype == torch.bfloat16 for t in some.values())
        assert max((weights[k] - single_weights[k]).abs().max().item() for k in weights) < 1e-5
        logp = b.batch_logprobs(ids[:3], mask[:3])  # 3 rows over 2 ranks: padded, then trimmed
        assert logp.shape == single_logp.shape and torch.allclose(logp, single_logp, atol=1e-5)
        b.save(tmp_path / "ckpt")
        after_save = b.train_step(micros, loss_fn)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.allclose(token_logprobs(loaded, ids[:3], mask[:3]), logp, atol=1e-6)
    with launch_role(two, total_steps=6, model_path=str(tmp_path / "ckpt")) as c:
        c.load_state(tmp_path / "ckpt")
        resumed = c.train_step(micros, loss_fn)
    assert abs(resumed["loss"] - after_save["loss"]) < 1e-6 and resumed["train/lr"] == after_save["train/lr"]


def test_two_ranks_on_a_local_ray_listen_on_loopback_only(tiny_model):
    """The ranks' rendezvous store (served by rank 0), their gloo connections and every process of the
    local Ray listen on 127.0.0.1 only."""
    import psutil

    from conftest import non_loopback_listeners
    from vroll.roles.launcher import launch_role

    role = train_role(tiny_model)
    role.strategy_args.strategy_config["cpu_threads_per_rank"] = 1
    ids, mask = padded(SEQS)
    with launch_role(role) as ranks:
        ranks.batch_logprobs(ids, mask)  # the ranks have met in collectives
        processes = psutil.Process().children(recursive=True)
        rank_pids = [m.pid for m in ranks.group.members]
        listening = {c.pid for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        assert rank_pids[0] in listening  # rank 0 serves the store
        assert set(rank_pids) <= {p.pid for p in processes}
        assert non_loopback_listeners([p.pid for p in processes]) == []


@pytest.mark.parametrize("how", ["ray.kill", "kill -9"])
def test_a_dead_rank_is_named_at_once(tiny_model, how):
    """The surviving rank would wait for the dead one in a collective: the call must not, and names the
    dead rank within 5 s whether Ray killed it or its process was killed."""
    import os
    import time

    import ray

    from vroll.roles.ray_trainer import TrainerFailure
    from vroll.roles.launcher import launch_role

    role = train_role(tiny_model)
    role.strategy_args.strategy_config["cpu_threads_per_rank"] = 1
    ids, mask = padded(SEQS)
    with launch_role(role) as cluster:
        victim = cluster.group.members[1]
        if how == "ray.kill":
            ray.kill(victim.actor, no_restart=True)
        else:
            os.kill(victim.pid, 9)
        start = time.monotonic()
        with pytest.raises(TrainerFailure, match=r"actor_train rank 1 \(node .*, devices \[1\]\) died while "
                                                 r"batch_logprobs"):
            cluster.batch_logprobs(ids, mask)
        assert time.monotonic() - start < 5
    assert not cluster.group.members


def test_a_critic_learns_the_returns_and_saves_a_value_model(tiny_model, tmp_path):
    """fsdp2_train as a critic (value_model): values [B, L-1] aligned with the log-probs, regression on
    fixed targets lowers the loss, and the saved folder is a transformers token-classification model
    giving the same values."""
    from transformers import AutoModelForTokenClassification

    from vroll.models.values import token_values
    from vroll.strategy.fsdp2_train import Fsdp2TrainStrategy

    ids, mask = padded(SEQS)
    target = torch.linspace(-1, 1, ids.shape[1] - 1).expand(ids.shape[0], -1) * mask[:, 1:]

    def mse(micro, values):
        m = micro["attention_mask"][:, 1:].float()
        loss = (((values - micro["target"]) ** 2) * m).sum() / m.sum()
        return loss, {"loss": float(loss.detach())}

    with Fsdp2TrainStrategy(train_role(tiny_model), total_steps=10, value_model=True) as critic:
        before = critic.batch_values(ids, mask)
        assert before.shape == (3, ids.shape[1] - 1) and (before * (1 - mask[:, :-1])).abs().sum() == 0
        got = [critic.train_step([{"input_ids": ids, "attention_mask": mask, "target": target}], mse)
               for _ in range(8)]
        assert got[-1]["loss"] < got[0]["loss"] / 2 and "critic/grad_norm" in got[0]
        critic.save(tmp_path / "critic")
        after = critic.batch_values(ids, mask)
    loaded = AutoModelForTokenClassification.from_pretrained(tmp_path / "critic", dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.allclose(token_values(loaded, ids, mask), after, atol=1e-5)


def test_a_critic_on_two_ranks_matches_one(tiny_model):
    """The critic on two Ray rank actors: the same values (3 rows over 2 ranks: padded, then trimmed)
    and the same step as one rank in this process."""
    from vroll.roles.interfaces import Critic
    from vroll.roles.launcher import launch_role

    ids, mask = padded(SEQS + [[3, 4, 5, 6, 7, 8]])

    def loss_fn(micro, values):
        m = micro["attention_mask"][:, 1:].float()
        loss = ((values - 1.0) ** 2 * m).sum() / mask[:, 1:].sum()
        return loss, {"loss": float(loss.detach())}

    two = train_role(tiny_model, per_device_train_batch_size=2)
    two.strategy_args.strategy_config["cpu_threads_per_rank"] = 1
    micros = [{"input_ids": ids, "attention_mask": mask}]
    with launch_role(train_role(tiny_model, per_device_train_batch_size=4), value_model=True) as a:
        single_values, single = a.batch_values(ids[:3], mask[:3]), a.train_step(micros, loss_fn)
    with launch_role(two, value_model=True) as b:
        assert isinstance(b, Critic) and type(b).__name__ == "RayTrainer"
        assert torch.allclose(b.batch_values(ids[:3], mask[:3]), single_values, atol=1e-5)
        double = b.train_step(micros, loss_fn)
    assert abs(single["loss"] - double["loss"]) < 1e-5
    assert abs(single["critic/grad_norm"] - double["critic/grad_norm"]) < 1e-4


def test_one_rank_trains_the_plain_module_like_fsdp2(tiny_model, tmp_path, monkeypatch):
    """One rank trains the plain module (FSDP2 would shard over nobody): the same losses, gradient
    norms, learning rates, weights and log-probs as FSDP2 on one rank, checkpoints of the same
    format, and each one's checkpoint resumes the other."""
    from safetensors import safe_open

    from vroll.strategy import fsdp2_train
    from vroll.strategy.train_state import load_train_state

    ids, mask = padded(SEQS)
    micros = [{"input_ids": ids[:2], "attention_mask": mask[:2]}, {"input_ids": ids[2:], "attention_mask": mask[2:]}]
    role = train_role(tiny_model, lr_scheduler_type="linear", warmup_steps=1)

    def train(sharded: bool, start: str | None = None):
        monkeypatch.setattr(fsdp2_train, "shards", lambda *_: sharded)
        with fsdp2_train.Fsdp2TrainStrategy(role, total_steps=6, model_path=start and str(tmp_path / start)) as t:
            assert t.sharded == sharded
            if start:
                t.load_state(tmp_path / start)
                return [t.train_step(micros, nll)]
            steps = [t.train_step(micros, nll) for _ in range(2)]
            t.save(tmp_path / f"sharded={sharded}")
            steps.append(t.train_step(micros, nll))
            return steps, dict(t.named_weights()), t.batch_logprobs(ids, mask)

    (plain, plain_w, plain_lp), (fsdp, fsdp_w, fsdp_lp) = train(False), train(True)
    for p, f in zip(plain, fsdp):
        assert p.keys() == f.keys() and p["train/lr"] == f["train/lr"]
        assert abs(p["loss"] - f["loss"]) < 1e-6 and abs(p["train/grad_norm"] - f["train/grad_norm"]) < 1e-6
    assert plain_w.keys() == fsdp_w.keys() and all(torch.allclose(plain_w[k], fsdp_w[k], atol=1e-6) for k in plain_w)
    assert torch.allclose(plain_lp, fsdp_lp, atol=1e-6)
    files = {}
    for sharded in (False, True):
        with safe_open(tmp_path / f"sharded={sharded}" / "model.safetensors", "pt") as f:
            files[sharded] = {k: (f.get_slice(k).get_shape(), f.get_slice(k).get_dtype()) for k in f.keys()}
    assert files[False] == files[True]
    plain_state, fsdp_state = (load_train_state(tmp_path / f"sharded={s}") for s in (False, True))
    assert plain_state["optimizer"]["state"].keys() == fsdp_state["optimizer"]["state"].keys()
    assert plain_state["scheduler"] == fsdp_state["scheduler"]
    for sharded, other in ((True, plain), (False, fsdp)):  # each resumes the other's checkpoint
        resumed = train(sharded, start=f"sharded={not sharded}")[0]
        assert abs(resumed["loss"] - other[2]["loss"]) < 1e-6 and resumed["train/lr"] == other[2]["train/lr"]
