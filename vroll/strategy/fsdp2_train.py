"""The `fsdp2_train` strategy: a transformers model sharded with PyTorch FSDP2 (`fully_shard`), AdamW
and an LR schedule from `training_args`. The caller owns the loss (SFT or the RL policy loss); this
module owns the model, the optimiser step and the weights it hands to the inference engine.

One rank trains in the calling process (on CPU the role's slots become torch's thread count); several
ranks are Ray actors, one process each, driven by `vroll.roles.ray_trainer.RayTrainer` (the launcher
decides which, from `config.layout.trainer_ranks`). Every rank runs this same class on its share of
each batch. One rank with nothing for FSDP2 to do (`shards`) trains the plain module: the same
arithmetic, names and files, without the per-layer hooks.

With LoRA (`actor_train.model_args.lora_target`, ROLL's keys: `config/lora.py`) the model is wrapped
with peft's adapters before it is sharded and only they train (the optimiser holds nothing else);
the weights it hands out are the merged ones (base + alpha/rank * B A) under the base model's names,
so the engine and checkpoints see a plain model; `batch_logprobs(disable_adapter=True)` is the base
model's (ROLL's reference under LoRA). A checkpoint holds the merged model and the adapter in
`adapter/` (peft's format); resuming loads the base from the model the run started from.
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Iterator

import torch

from vroll.config.dtypes import torch_dtype
from vroll.config.errors import CheckpointError
from vroll.config.layout import slot_cores
from vroll.config.lora import lora_on
from vroll.config.options import Fsdp2Options
from vroll.config.schema import RoleConfig, TrainingArgs
from vroll.models.logprobs import token_logprobs
from vroll.models.lora import ADAPTER_DIR, export_plan, load_adapter, merged, save_adapter, with_adapters
from vroll.models.padding import prompt_width
from vroll.models.paths import resolve_model_path
from vroll.models.values import load_value_model, token_values
from vroll.strategy import vllm_compat
from vroll.strategy.train_state import load_train_state, save_train_state

log = logging.getLogger(__name__)


def multi_rank_mesh(device_type: str, rank: int, world_size: int, init_method: str):
    """The ranks' own process group (this process hosts no engine) and a 1-D mesh over it."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    backend = "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend, store=rendezvous_store(init_method, rank, world_size), rank=rank,
                            world_size=world_size)
    return init_device_mesh(device_type, (world_size,))


def rendezvous_store(init_method: str, rank: int, world_size: int):
    """The ranks' TCPStore at `tcp://host:port`, rank 0 serving it on `host` only. (PyTorch's own
    `init_method="tcp://..."` store listens on every interface whatever the host; a socket bound
    here and handed over as `master_listen_fd` keeps it to that address.) When the host is the
    loopback address (a local Ray), the collectives' own sockets stay on it too (gloo and NCCL
    otherwise listen on the address of the machine's name), unless the user chose an interface."""
    import ipaddress
    import socket
    from datetime import timedelta
    from urllib.parse import urlsplit

    import torch.distributed as dist

    where = urlsplit(init_method)
    host, port = where.hostname, where.port
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, not an address
        loopback = host == "localhost"
    if loopback:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    timeout = timedelta(minutes=30)
    if rank != 0:
        return dist.TCPStore(host, port, world_size, False, timeout=timeout)
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(128)
    store = dist.TCPStore(host, port, world_size, True, timeout=timeout, master_listen_fd=listener.detach())
    return store


def single_rank_mesh(device_type: str):
    """A one-rank device mesh for `fully_shard`. The default process group may already exist, made
    by an in-process vLLM engine (world size 1 too); then it is shared, and counted as in use so
    that the engine's shutdown does not tear it down under the trainer."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    if dist.get_world_size() != 1:  # several ranks each have a process of their own (multi_rank_mesh)
        raise RuntimeError(f"fsdp2_train: this process already belongs to a group of {dist.get_world_size()} "
                           "ranks; a one-rank trainer needs a process of its own")
    vllm_compat.hold_process_group()
    return init_device_mesh(device_type, (1,))


def shards(world_size: int, compute: torch.dtype, reduce: torch.dtype) -> bool:
    """Whether FSDP2 wraps the model. One rank computing and reducing in the fp32 of its master weights
    trains the plain module: FSDP2 would shard over nobody and cast nothing, yet its per-layer
    unshard/reshard hooks and DTensor parameters cost 5-15 % of a small model's step."""
    return world_size > 1 or compute != torch.float32 or reduce != torch.float32


def decoder_layers(model) -> list[torch.nn.Module]:
    """The repeated blocks transformers marks as not to be split (`_no_split_modules`): FSDP2 shards
    each separately so that only one block's full weights exist at a time."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def _full(t: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) tensor gathered whole; a plain one as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class Fsdp2TrainStrategy:
    def __init__(self, role: RoleConfig, seed: int | None = None, total_steps: int = 1,
                 model_path: str | None = None, rank: int = 0, world_size: int = 1, init_method: str | None = None,
                 value_model: bool = False):
        """`value_model`: train a critic (a scalar value head, `models.values`) instead of a policy."""
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

        self.role, self.name = role, role.name or "actor_train"
        self.args: TrainingArgs = role.training_args or TrainingArgs()
        base = resolve_model_path(role.model_args.model_name_or_path, f"{self.name}.model_args.model_name_or_path")
        path = model_path or base
        self.lora = lora_on(role) and not value_model
        # LoRA resuming from a checkpoint: its weights are merged, so the base comes from the model the
        # run started from and the adapter from the checkpoint's adapter/ folder
        adapter = Path(path) / ADAPTER_DIR if self.lora and Path(path).resolve() != Path(base).resolve() else None
        if adapter is not None and not adapter.is_dir():
            raise CheckpointError(f"{path}: no LoRA adapter ({ADAPTER_DIR}/): this checkpoint was saved by a run "
                                  "without LoRA; resume it without lora_target, or start this run afresh")
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        self.rank, self.world_size = rank, world_size
        self.value_model = value_model
        self.metric_prefix = "critic" if value_model else "train"
        if self.device.type == "cpu":
            torch.set_flush_denormal(True)  # tiny values late in training otherwise cost 10x on CPU
            if world_size == 1:  # a rank actor sized its own pool to its slots
                torch.set_num_threads(max(1, len(slot_cores(role.device_mapping or [0]))))
        torch.manual_seed(role.seed if seed is None else seed)
        # Master weights stay fp32; `dtype` is the compute dtype of forward and backward.
        trust = role.model_args.trust_remote_code
        if value_model:  # FSDP2 warns that the value head's output is a view; token_values only slices it
            warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        model = load_value_model(path, torch.float32, trust) if value_model else \
            AutoModelForCausalLM.from_pretrained(base if self.lora else path, dtype=torch.float32,
                                                 trust_remote_code=trust)
        self.plan = None
        if self.lora:  # before sharding: fully_shard then shards the adapters with their layers
            base_names = list(model.state_dict())
            if not role.model_args.disable_gradient_checkpointing:
                model.enable_input_require_grads()  # as ROLL: checkpointed blocks see inputs that need grad
            model = with_adapters(model, role.model_args, f"{self.name}.model_args")
            if adapter is not None:
                load_adapter(adapter, model)
            self.plan = export_plan(model, base_names)
        model.to(self.device)
        # taken after the load, so a failed load holds nothing
        if world_size == 1:
            mesh = single_rank_mesh(self.device.type)
        else:
            mesh = multi_rank_mesh(self.device.type, rank, world_size, init_method)
        self._closed = False
        if not role.model_args.disable_gradient_checkpointing:
            model.gradient_checkpointing_enable()
        model.config.use_cache = False
        # ROLL's param_dtype / reduce_dtype (default: the model's dtype, fp32)
        options = role.strategy_args.options if role.strategy_args else Fsdp2Options()
        compute = torch_dtype(options.param_dtype or role.model_args.dtype)
        reduce = torch_dtype(options.reduce_dtype)
        self.sharded = shards(world_size, compute, reduce)
        if self.sharded:
            mp = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=reduce)
            for layer in decoder_layers(model):
                fully_shard(layer, mesh=mesh, mp_policy=mp)
            fully_shard(model, mesh=mesh, mp_policy=mp)
        self.model = model
        self.tied = bool(getattr(model.config, "tie_word_embeddings", False))
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=role.model_args.trust_remote_code)
        # under LoRA only the adapters (and additional_target) require grad: the optimiser holds only them
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=self.args.learning_rate,
                                           weight_decay=self.args.weight_decay,
                                           betas=(self.args.adam_beta1, self.args.adam_beta2))
        # transformers' "constant" ignores warmup_steps; the file's warmup_steps must still apply.
        schedule = self.args.lr_scheduler_type
        if schedule == "constant" and self.args.warmup_steps > 0:
            schedule = "constant_with_warmup"
        self.scheduler = get_scheduler(schedule, self.optimizer,
                                       num_warmup_steps=self.args.warmup_steps, num_training_steps=max(total_steps, 1))
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info("%s: fsdp2_train ready (%s, %.2fM parameters%s, compute %s, %s, %s)", self.name, path,
                 sum(p.numel() for p in model.parameters()) / 1e6,
                 f", LoRA: {trained / 1e6:.3f}M trained" if self.lora else "", role.model_args.dtype, self.device,
                 f"FSDP2 over {world_size} rank(s)" if self.sharded else "one rank, plain module")

    # -- forward ----------------------------------------------------------------------------
    @torch.no_grad()
    def batch_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float = 1.0,
                       batch_size: int | None = None, prompt_width: int | None = None,
                       disable_adapter: bool = False) -> torch.Tensor:
        """Per-token log-probabilities [B, L-1] of given padded sequences, in micro-batches (rows that
        repeat a prompt within one share its pass when `prompt_width` is given). `disable_adapter`: the
        base model's, with the LoRA adapters off (ROLL's reference under LoRA)."""
        if disable_adapter and not self.lora:
            raise ValueError(f"{self.name}: disable_adapter needs LoRA (model_args.lora_target)")
        self.model.eval()
        bs = batch_size or self.args.per_device_train_batch_size
        with self.model.disable_adapter() if disable_adapter else nullcontext():
            parts = [token_logprobs(self.model, input_ids[i:i + bs].to(self.device),
                                    attention_mask[i:i + bs].to(self.device), temperature,
                                    prompt_width=prompt_width).cpu()
                     for i in range(0, input_ids.shape[0], bs)]
        self._reshard()
        return torch.cat(parts)

    @torch.no_grad()
    def batch_values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     batch_size: int | None = None) -> torch.Tensor:
        """A critic's per-token values [B, L-1] of given padded sequences, in micro-batches."""
        self.model.eval()
        bs = batch_size or self.args.per_device_train_batch_size
        parts = [token_values(self.model, input_ids[i:i + bs].to(self.device),
                              attention_mask[i:i + bs].to(self.device)).cpu()
                 for i in range(0, input_ids.shape[0], bs)]
        self._reshard()
        return torch.cat(parts)

    def _reshard(self) -> None:
        """FSDP2 keeps the root unsharded after a forward without backward: free its full weights."""
        if self.sharded:
            self.model.reshard()

    def _outputs(self, micro: dict, temperature: float) -> tuple[torch.Tensor, ...]:
        """What the loss function receives after `micro`: (log-probs, entropy) of a policy, (values,)
        of a critic."""
        if self.value_model:
            return (token_values(self.model, micro["input_ids"], micro["attention_mask"]),)
        width = prompt_width(micro["response_mask"]) if "response_mask" in micro else None
        return token_logprobs(self.model, micro["input_ids"], micro["attention_mask"], temperature, with_entropy=True,
                              prompt_width=width)

    # -- one optimiser step ---------------------------------------------------------------------
    def train_step(self, micro_batches: list[dict], loss_fn: Callable, temperature: float = 1.0) -> dict:
        """Gradient accumulation over `micro_batches`, clipping, one optimiser and scheduler step.

        `loss_fn(micro, logp, entropy) -> (loss, metrics)` (a critic's: `loss_fn(micro, values)`)
        returns this micro-batch's share of the step's loss (the caller normalises over the whole
        step, so the split does not change it). A step whose loss or gradient norm is not finite (on
        any rank) is not applied: its metrics carry `<prefix>/nonfinite: 1.0`, and the caller stops or
        skips (`training_args.on_nonfinite`).
        """
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        loss_total = torch.zeros((), device=self.device)
        for micro in micro_batches:
            micro = {k: v.to(self.device) for k, v in micro.items()}  # the loss sees one device
            loss, metrics = loss_fn(micro, *self._outputs(micro, temperature))
            # FSDP2 averages gradients over the ranks, while each rank's loss is its share of a sum
            # normalised over the whole step: scale back so that W ranks give one rank's gradient.
            (loss * self.world_size).backward()
            loss_total += loss.detach()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        lr = self.scheduler.get_last_lr()[0]
        p = self.metric_prefix
        metrics = {**sums, f"{p}/grad_norm": float(grad_norm), f"{p}/lr": lr}
        if not self._all_finite(loss_total, grad_norm):  # never applied; the caller stops or skips
            self.optimizer.zero_grad(set_to_none=True)
            return {**metrics, f"{p}/nonfinite": 1.0}
        self.optimizer.step()
        self.scheduler.step()
        return metrics

    def _all_finite(self, *values: torch.Tensor) -> bool:
        """True when every value is finite on every rank (all ranks then agree to step or not)."""
        bad = torch.tensor([0.0 if all(bool(torch.isfinite(v).all()) for v in values) else 1.0], device=self.device)
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        return not bool(bad.item())

    # -- weights out --------------------------------------------------------------------------
    def named_weights(self, names: list[str] | None = None, dtype: torch.dtype | None = None
                      ) -> Iterator[tuple[str, torch.Tensor]]:
        """Full (unsharded) weights in Hugging Face naming (all, or `names`), one tensor at a time, for
        the engine or a checkpoint; cast to `dtype` when given (the engine's: bf16 halves the bytes
        moved, and the engine would round the same way). A tied lm_head is left out: it is the embedding.
        Under LoRA: the base model's names, each adapted weight merged with its adapter."""
        wanted = set(names) if names is not None else None
        state = self.model.state_dict()
        for name, key, a, b, scaling in self._exports(state):
            if (self.tied and name == "lm_head.weight") or (wanted is not None and name not in wanted):
                continue
            full = _full(state[key])
            if a is not None:
                full = merged(full, _full(state[a]), _full(state[b]), scaling)
            yield name, full.detach().to(dtype or full.dtype).to("cpu")

    def _exports(self, state: dict) -> list[tuple[str, str, str | None, str | None, float]]:
        """(name handed out, its state-dict key, the adapter's A and B keys or None, scale)."""
        if self.plan is None:
            return [(n, n, None, None, 0.0) for n in state]
        return [(e.name, e.key, e.a, e.b, e.scaling) for e in self.plan]

    def weight_sizes(self) -> list[tuple[str, int]]:
        """(name, bytes) of every weight `named_weights` yields, in its order; nothing is gathered."""
        state = self.model.state_dict()
        return [(n, state[k].numel() * state[k].element_size()) for n, k, *_ in self._exports(state)
                if not (self.tied and n == "lm_head.weight")]

    def full_weights(self, names: list[str] | None = None, dtype: torch.dtype | None = None
                     ) -> dict[str, torch.Tensor] | None:
        """The weights (all, or `names`) on rank 0, None on the others; every rank must call it with
        the same names (it gathers)."""
        weights = dict(self.named_weights(names, dtype))
        return weights if self.rank == 0 else None

    def save(self, folder: str | Path, with_state: bool = True) -> None:
        """A standard Hugging Face folder (config, safetensors, tokenizer), plus optimiser, scheduler
        and RNG state when `with_state`; under LoRA the weights are the merged ones and peft's adapter
        folder is `adapter/` inside it. Every rank calls it (it gathers); rank 0 writes. The caller
        makes it atomic (write aside, then rename)."""
        from safetensors.torch import save_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        weights = {n: t.contiguous() for n, t in self.named_weights()}
        adapter = None
        if self.lora:  # the adapters' full tensors (every rank gathers)
            adapter = {k: _full(v).detach().cpu() for k, v in self.model.state_dict().items()
                       if ".lora_A." in k or ".lora_B." in k or ".modules_to_save." in k}
        optim = None
        if with_state:  # cpu_offload: only rank 0 receives the full state
            optim = get_optimizer_state_dict(self.model, self.optimizer,
                                             options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.rank != 0:
            return
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
        self.model.config.save_pretrained(folder)
        if getattr(self.model, "generation_config", None) is not None:
            self.model.generation_config.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        if adapter is not None:  # merged model above, peft's adapter folder beside it
            save_adapter(folder / ADAPTER_DIR, self.model, adapter)
        if with_state:  # safetensors + JSON: loading a checkpoint never unpickles (train_state.py)
            save_train_state(folder, {"optimizer": optim, "scheduler": self.scheduler.state_dict(),
                                      "torch_rng": torch.get_rng_state()})

    def load_state(self, folder: str | Path) -> None:
        """Optimiser, scheduler and RNG state saved by `save` (the weights come from the folder at
        construction: pass it as `model_path`); a state that does not fit this model is a CheckpointError."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        state = load_train_state(folder)
        try:
            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
            self.scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{folder}: the trainer state does not fit this model and optimiser "
                                  f"({type(e).__name__}: {e})") from None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.world_size == 1:
                vllm_compat.release_process_group()
            else:
                import torch.distributed as dist

                dist.destroy_process_group()
            self.model = self.optimizer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
