"""The shared log-probability function on padded batches of mixed lengths, against transformers'
log_softmax on each sequence alone (fp32)."""

import torch

from vroll.models.logprobs import token_logprobs


def test_left_padded_batch_equals_each_sequence_alone(hf):
    model, tok = hf
    texts = ["What is 1+2?", "What is 45-18? The answer is 27.", "hi"]
    seqs = [tok(t)["input_ids"] for t in texts]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):  # left padding, as rollouts are laid out
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    with torch.no_grad():
        got = token_logprobs(model, ids, mask)
        for i, s in enumerate(seqs):
            alone = torch.log_softmax(model(torch.tensor([s])).logits[0, :-1].float(), -1)
            ref = alone.gather(-1, torch.tensor(s[1:])[:, None])[:, 0]
            assert torch.allclose(got[i, width - len(s):], ref, atol=1e-5), (got[i], ref)
            assert torch.all(got[i, : width - len(s)] == 0)  # padding positions


def test_temperature_divides_the_logits(hf):
    model, tok = hf
    s = tok("What is 6*7?")["input_ids"]
    ids, mask = torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)
    with torch.no_grad():
        got = token_logprobs(model, ids, mask, temperature=0.7)
        ref = torch.log_softmax(model(ids).logits[0, :-1].float() / 0.7, -1).gather(-1, ids[0, 1:, None])[:, 0]
    assert torch.allclose(got[0], ref, atol=1e-5)


def test_columns_of_padding_alone_change_nothing(hf):
    """The model runs on the columns that hold real tokens only: columns of padding on both sides
    leave the log-probs, the entropy and the gradients as they were (to float rounding), and are 0."""
    model, tok = hf
    seqs = [tok(t)["input_ids"] for t in ("What is 1+2?", "What is 45-18? The answer is 27.")]
    width = max(map(len, seqs)) + 5  # 3 columns of padding on the left, 2 on the right
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - 2 - len(s):width - 2] = torch.tensor(s)
        mask[i, width - 2 - len(s):width - 2] = 1

    def run(cols: slice):
        model.zero_grad()
        logp, entropy = token_logprobs(model, ids[:, cols], mask[:, cols], 0.9, with_entropy=True)
        logp.sum().backward()
        return logp, entropy, [p.grad.clone() for p in model.parameters()]

    wide, narrow = run(slice(None)), run(slice(3, width - 2))
    assert wide[0].shape == (len(seqs), width - 1)
    for w, n in zip(wide[:2], narrow[:2]):
        assert torch.all(w[:, :3] == 0) and torch.all(w[:, -2:] == 0)
        assert torch.allclose(w[:, 3:-2], n, atol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(wide[2], narrow[2]))


def grouped_batch(tok, group: int = 3):
    """Rows as a rollout lays them out: prompts of different lengths left-padded to one width, each
    repeated `group` times with responses of different lengths right-padded after it."""
    prompts = [tok(t)["input_ids"] for t in ("What is 1+2?", "What is 45-18? Think first.")]
    responses = [tok(t)["input_ids"] for t in ("3", "The answer is 27.", "27", "no idea at all", "x", "27!")]
    responses = responses[:len(prompts) * group]
    P, R = max(map(len, prompts)), max(map(len, responses))
    ids = torch.full((len(prompts) * group, P + R), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i in range(len(prompts) * group):
        p, r = prompts[i // group], responses[i]
        ids[i, P - len(p):P], mask[i, P - len(p):P] = torch.tensor(p), 1
        ids[i, P:P + len(r)], mask[i, P:P + len(r)] = torch.tensor(r), 1
    return ids, mask, P


def test_rows_repeating_a_prompt_share_its_pass(hf):
    """With the prompt's width given, each distinct prompt runs once and its rows attend to its keys and
    values: log-probs, entropy and gradients equal the one-pass computation (to float rounding), and the
    model sees each prompt's tokens once instead of once per row. Two runs give the same gradients bit
    for bit (a resumed run must equal an uninterrupted one)."""
    model, tok = hf
    ids, mask, P = grouped_batch(tok)
    seen = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, i, o: seen.append(i[0].numel()))

    def run(width):
        model.zero_grad()
        seen.clear()
        logp, entropy = token_logprobs(model, ids, mask, 0.9, with_entropy=True, prompt_width=width)
        (logp * torch.arange(logp.shape[1])).sum().backward()  # every position's gradient counts, differently
        return logp, entropy, [p.grad.clone() for p in model.parameters()], sum(seen)

    try:
        one, shared, again = run(None), run(P), run(P)
    finally:
        hook.remove()
    assert torch.allclose(one[0], shared[0], atol=1e-5) and torch.allclose(one[1], shared[1], atol=1e-5)
    assert all((a - b).abs().max() <= 1e-5 * a.abs().max() for a, b in zip(one[2], shared[2]))
    assert all(torch.equal(a, b) for a, b in zip(shared[2], again[2]))  # the same gradients, every time
    assert one[3] == ids.numel() and shared[3] == 2 * P + ids.shape[0] * (ids.shape[1] - P)
