"""Per-token values of a critic: a transformer with a scalar head on each position's last hidden
state (transformers' `...ForTokenClassification` with one label), aligned with the log-probs."""

from __future__ import annotations

import torch

from vroll.models.logprobs import position_ids_from_mask


def load_value_model(path: str, dtype: torch.dtype, trust_remote_code: bool = False):
    """A causal LM folder (or a saved critic) as a value model: the backbone's weights, and a value
    head that is new (initialised as the config says) unless the folder has one. No dropout before
    the head (transformers' default is 0.1): a regression target needs none, and without it the
    ranks of a sharded critic and a resumed run compute the same values."""
    from transformers import AutoModelForTokenClassification

    return AutoModelForTokenClassification.from_pretrained(path, config=value_config(path, trust_remote_code),
                                                           dtype=dtype, trust_remote_code=trust_remote_code)


def value_config(path: str, trust_remote_code: bool = False):
    """The folder's config as a value model's: one label, no dropout before the head."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, num_labels=1, trust_remote_code=trust_remote_code)
    config.classifier_dropout = 0.0
    return config


def token_values(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """V(tokens_<=t) for t = 0..L-2, shape [B, L-1]: the value of the state in which token t+1 is
    chosen, so position t lines up with `token_logprobs`' log p(token_{t+1}); 0 on padding."""
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    values = out.logits[:, :-1, 0].float()
    return values * attention_mask[:, :-1].to(values.dtype)
