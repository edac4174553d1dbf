"""`vroll validate | generate | train | sft | evaluate | convert | arithmetic-data | tiny-model`. User mistakes print a message and exit 2, never a traceback."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
import time

EXIT_USAGE = 2
log = logging.getLogger("vroll")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler, `kill`): unwinds the run as Ctrl-C does, so it releases its
    output_dir, removes a partial checkpoint and stops its roles instead of vanishing mid-write."""


def raise_terminated(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may stand anywhere after the config path: collect stray key=value words too.
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if "=" not in a or a.startswith("-")]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    setup_logging(args.verbose)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # vroll never downloads: Hub ids come from the local cache
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, raise_terminated)
    try:
        return args.func(args)
    except KeyboardInterrupt as e:
        terminated = isinstance(e, Terminated)
        print("terminated" if terminated else "interrupted", file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    except Exception as e:  # user mistakes are known types; anything else is a bug and shows a traceback
        if is_engine_failure(e):
            print(f"error: {e}", file=sys.stderr)
            return 1
        if not is_user_error(e):
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


def is_engine_failure(e: Exception) -> bool:
    """A role's process died or hung (an engine or a trainer rank): a message naming it, exit 1."""
    from vroll.cluster.actors import RoleFailure
    from vroll.cluster.ray_session import ClusterError

    return isinstance(e, (RoleFailure, ClusterError))


def is_user_error(e: Exception) -> bool:
    from vroll.config.errors import UserError

    return isinstance(e, (UserError, NotImplementedError))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vroll", description="RL post-training with vLLM rollouts, configured in YAML.")
    p.add_argument("-v", "--verbose", action="store_true", help="show vLLM's own log messages")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check a config and print it resolved")
    v.add_argument("config")
    v.add_argument("overrides", nargs="*", help="key.path=value")
    v.add_argument("--platform", choices=["auto", "cpu", "cuda", "none"], default="auto",
                   help="also check what this platform cannot run (auto: the installed vLLM's)")
    v.add_argument("--job", choices=["train", "sft"], default=None,
                   help="also check what `vroll train` or `vroll sft` needs (roles, data files, batch sizes)")
    v.add_argument("--use-vroll-strategies", action="store_true",
                   help="run each role whose strategy vroll lacks (megatron_*, deepspeed_*, sglang) on vroll's "
                        "(fsdp2_train, hf_infer, vllm), dropping that strategy's own strategy_config keys; "
                        "prints every change")
    v.set_defaults(func=cmd_validate)

    g = sub.add_parser("generate", help="generate samples for a prompt file with a role's engine")
    g.add_argument("config")
    g.add_argument("overrides", nargs="*", help="key.path=value")
    g.add_argument("--input", required=True, help="JSONL: one of prompt / messages / prompt_token_ids per line")
    g.add_argument("--output", required=True, help="JSONL results, one line per prompt")
    g.add_argument("--role", default="actor_infer", help="the role whose engine generates (default actor_infer)")
    g.add_argument("--overflow", choices=["error", "skip", "truncate"], default=None,
                   help="prompts that cannot fit max_model_len (default: strategy_config.prompt_overflow)")
    g.set_defaults(func=cmd_generate)

    for name, text in (("train", "RL with verifiable rewards: generate (vLLM), reward, train, push weights"),
                       ("sft", "supervised warm-up of actor_train on (prompt, answer) records")):
        r = sub.add_parser(name, help=text)
        r.add_argument("config")
        r.add_argument("overrides", nargs="*", help="key.path=value")
        r.set_defaults(func=cmd_train if name == "train" else cmd_sft)

    e = sub.add_parser("evaluate", help="held-out accuracy of a model (e.g. a checkpoint) with the file's "
                                        "validation prompts, actor_infer's engine and the reward workers")
    e.add_argument("config")
    e.add_argument("overrides", nargs="*", help="key.path=value")
    e.add_argument("--model", required=True, help="a Hugging Face folder: pretrain, outputs/.../checkpoints/step_N")
    e.add_argument("--output", default=None, help="where the answers go (default: MODEL/evaluation)")
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("convert", help="convert a GGUF file into a Hugging Face folder (what a .gguf model path "
                                       "does at start, on demand)")
    c.add_argument("gguf", help="the .gguf file")
    c.add_argument("--out", default=None, help="the folder to write (default: vroll's cache, where a .gguf "
                                               "model path finds it)")
    c.set_defaults(func=cmd_convert)

    d = sub.add_parser("arithmetic-data", help="write the synthetic arithmetic task (train / eval / sft JSONL)")
    d.add_argument("--out", required=True)
    # Defaults: the demo's task, two-digit addition; its digit-wise structure is what lets a tiny
    # model generalise to held-out questions (single-digit facts are only memorised).
    d.add_argument("--n-train", type=int, default=2000)
    d.add_argument("--n-eval", type=int, default=200)
    d.add_argument("--n-sft", type=int, default=2000)
    d.add_argument("--max-operand", type=int, default=99)
    d.add_argument("--operators", default="+", help="any of + - * (default: +)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_arithmetic_data)

    t = sub.add_parser("tiny-model", help="build the offline tiny model (reused when already built)")
    t.add_argument("--out", required=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--force", action="store_true", help="rebuild even when present")
    t.add_argument("--initializer-range", type=float, default=None,
                   help="weight init std (default 0.1: well-separated logits for exact engine checks; "
                        "0.02, the usual value, for a model to train)")
    t.set_defaults(func=cmd_tiny_model)
    return p


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if not verbose:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        logging.getLogger("vllm").setLevel(logging.ERROR)


def platform_of(choice: str) -> str | None:
    if choice == "none":
        return None
    if choice != "auto":
        return choice
    from vroll.strategy.vllm_compat import current_platform_name

    return current_platform_name()


def cmd_validate(args) -> int:
    from omegaconf import OmegaConf

    from vroll.config.memory import plan_train_memory
    from vroll.config.no_effect import no_effect_line

    platform = platform_of(args.platform)
    loaded = checked_config(args, platform, args.job, args.use_vroll_strategies)
    cfg = loaded.cfg
    check_before_start(cfg, args.config, args.job, with_vllm=platform is not None)
    if args.job == "train" and platform is not None:  # the rows too, as `vroll train` reads them
        check_train_data(cfg, args.config)
    print(OmegaConf.to_yaml(cfg.model_dump(mode="json", exclude_none=True)), end="")
    plan = check_memory(cfg, args.config, "actor_infer", "train" if args.job == "train" else "generate", platform)
    if plan is not None:
        print("# memory / batch / context balance of actor_infer:\n" +
              "\n".join(f"#   {line}" for line in plan.table().splitlines()), file=sys.stderr)
    train_plan = plan_train_memory(cfg, platform or "cpu") if args.job else None
    if train_plan is not None:
        print("# memory of each actor_train rank (estimate):\n" +
              "\n".join(f"#   {line}" for line in train_plan.table().splitlines()), file=sys.stderr)
    for change in loaded.changes:
        print(f"# changed by --use-vroll-strategies: {change}", file=sys.stderr)
    if cfg._differences:
        print("# note: ROLL keys read with a difference (docs/from-roll.md): " +
              "; ".join(f"{k} ({what})" for k, what in cfg._differences.items()), file=sys.stderr)
    ignored = no_effect_line(cfg)
    if ignored:
        print(f"# warning: {ignored}", file=sys.stderr)
    print(f"# valid{f' for platform {platform}' if platform else ''}: {args.config}", file=sys.stderr)
    return 0


def check_before_start(cfg, source: str, job: str | None, role: str = "actor_infer", with_vllm: bool = True) -> None:
    """What can be checked before anything loads: the model folders, and with `with_vllm` (which
    imports vLLM when it is installed, and torch) the folders read by transformers, the sampling the
    job sends against the installed vLLM's own rules and LoRA's target names against the trainer's
    model (built without weights)."""
    from vroll.config import ConfigError
    from vroll.config.engine_args import installed_vllm_version
    from vroll.config.lora import lora_enabled
    from vroll.models.folder import model_folder_issues

    issues = model_folder_issues(cfg, load=with_vllm)
    if with_vllm and lora_enabled(cfg) and not issues:
        from vroll.models.lora import config_target_issues

        issues += config_target_issues(cfg)
    if with_vllm and installed_vllm_version():
        from vroll.config.sampling import job_sampling
        from vroll.strategy.sampling import vllm_refusals

        issues += [i for req in job_sampling(cfg, job, role) for i in vllm_refusals(req)]
    if issues:
        raise ConfigError(issues, source)


def use_model_folders(cfg, source: str, roles: list[str] | None = None) -> None:
    """A GGUF model converted (once) and the roles naming it pointed at its folder, before anything
    starts (`roles`: only these)."""
    from vroll.config import ConfigError
    from vroll.models.paths import use_model_folders as convert_all

    issues = convert_all(cfg, roles)
    if issues:
        raise ConfigError(issues, source)


def check_train_data(cfg, source: str) -> None:
    """`vroll train`'s reading of its data (every row encoded with the model's tokenizer), when the
    model is a local folder: validate then finds what train would find before it starts."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from vroll.models.gguf import converted_folder, is_converted, is_gguf
    from vroll.pipeline.rlvr import load_data

    args = cfg.actor_train.model_args
    model = Path(args.model_name_or_path or "").expanduser()
    if is_gguf(model.name) and model.is_file():  # its conversion, once made
        model = converted_folder(model)
    if model.is_dir() and (not is_gguf(args.model_name_or_path or "") or is_converted(model)):
        load_data(cfg, AutoTokenizer.from_pretrained(model, trust_remote_code=args.trust_remote_code), source)


def checked_config(args, platform: str | None, job: str | None = None, vroll_strategies: bool = False):
    """The file read with every problem reported at once: types, rules, each role's strategy, and what
    the job (`train`, `sft`) needs; raises ConfigError, else returns the loader's `Loaded`."""
    from vroll.config import ConfigError
    from vroll.config.loader import read_config
    from vroll.config.rules import check_runnable, check_train_config

    loaded = read_config(args.config, args.overrides, platform, vroll_strategies)
    issues = list(loaded.issues)
    if loaded.cfg is not None:
        seen = {i.path for i in issues}
        more = check_train_config(loaded.cfg, job, platform or "cpu") if job else check_runnable(loaded.cfg)
        issues += [i for i in more if i.path not in seen]
    if issues:
        raise ConfigError(issues, args.config)
    return loaded


def apply_system_envs(cfg) -> None:
    """ROLL's top-level system_envs, set here before any role starts (in-process roles and the Ray
    actors this run starts inherit them)."""
    if cfg.system_envs:
        os.environ.update({k: str(v) for k, v in cfg.system_envs.items()})
        log.info("system_envs: set %s", ", ".join(sorted(cfg.system_envs)))


def check_memory(cfg, source: str, role: str, job: str = "generate", platform: str | None = None):
    """The role's memory plan (None when its model is not a local folder); raises when it cannot work."""
    from vroll.config import ConfigError
    from vroll.config.memory import plan_memory

    plan = plan_memory(cfg, role, job, platform)
    if plan is not None and plan.issues():
        raise ConfigError(plan.issues(), source)
    return plan


def cmd_generate(args) -> int:
    from vroll.cli.prompts_io import write_jsonl
    from vroll.config import ConfigError, Issue, load_config
    from vroll.roles.launcher import launch
    from vroll.strategy.vllm_compat import current_platform_name

    platform = current_platform_name()
    cfg = load_config(args.config, args.overrides, platform=platform)
    role = cfg.roles().get(args.role)
    if role is None:
        raise ConfigError([Issue(args.role, f"no such role in the file (roles: {', '.join(cfg.roles())})")], args.config)
    use_model_folders(cfg, args.config, [args.role])
    check_before_start(cfg, args.config, "generate", args.role)
    check_memory(cfg, args.config, args.role, platform=platform)
    prompts = read_prompt_checked(args, cfg, role)  # all input problems before the engine starts
    if cfg.global_template or cfg.tag_to_template or (cfg.actor_train and cfg.actor_train.data_args
                                                       and cfg.actor_train.data_args.template):
        log.warning("the file's templates (global_template, tag_to_template, data_args.template) format data_args "
                    "rows (train, sft, evaluate), as in ROLL; `vroll generate` renders --input chat prompts with "
                    "the model's own chat template")
    apply_system_envs(cfg)
    with launch(cfg, role) as strategy:
        started = time.perf_counter()
        results = strategy.generate(prompts, prompt_overflow=args.overflow, use_tqdm=sys.stderr.isatty())
        elapsed = time.perf_counter() - started
    write_jsonl(args.output, (r.to_json() for r in results))
    print_summary(results, elapsed, args.output)
    return 0


def read_prompt_checked(args, cfg, role) -> list:
    """The prompt file's prompts, each encoded with the model's tokenizer and measured against the
    engine's max_model_len (the file's, else the model's max_position_embeddings) before it starts."""
    from transformers import AutoTokenizer

    from vroll.cli.prompts_io import check_prompt_lines, read_prompt_lines
    from vroll.config.memory import local_model_config
    from vroll.models.paths import resolve_model_path

    lines = read_prompt_lines(args.input)
    if role.strategy_args is None or role.strategy_args.strategy_name != "vllm":
        return [item for _, item in lines]  # only vllm generates: launching says so
    model = resolve_model_path(role.model_args.model_name_or_path, f"{args.role}.model_args.model_name_or_path")
    tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=role.model_args.trust_remote_code)
    max_len = role.strategy_args.backend_args.get("max_model_len")
    max_len = max_len or local_model_config(role)[1].get("max_position_embeddings")
    overflow = args.overflow or role.strategy_args.options.prompt_overflow
    check_prompt_lines(args.input, lines, tokenizer, role.generating_args.max_new_tokens, max_len, overflow)
    return [item for _, item in lines]


def print_summary(results, elapsed: float, output: str) -> None:
    samples = sum(len(r.samples) for r in results)
    tokens = sum(len(s.token_ids) for r in results for s in r.samples)
    skipped = sum(r.status == "skipped" for r in results)
    truncated = sum(r.status == "truncated" for r in results)
    print(f"prompts: {len(results)}  samples: {samples}  generated tokens: {tokens}  "
          f"time: {elapsed:.2f} s  tokens/s: {tokens / max(elapsed, 1e-9):.0f}")
    if skipped or truncated:
        print(f"skipped: {skipped}  truncated: {truncated}")
    print(f"results: {output}")


def load_job_config(args, job: str):
    """The file, checked for what the job needs, before any model or engine starts."""
    from vroll.config.loader import resolve_yaml
    from vroll.config.schema import PipelineConfig
    from vroll.pipeline.output_dir import refuse_if_busy

    # the lock first, from the plain YAML (its problems are reported in full below), not after vLLM's import
    output_dir = resolve_yaml(args.config, args.overrides).get("output_dir",
                                                              PipelineConfig.model_fields["output_dir"].default)
    if isinstance(output_dir, str):
        refuse_if_busy(output_dir)
    from vroll.strategy.vllm_compat import current_platform_name

    platform = current_platform_name()
    cfg = checked_config(args, platform, job).cfg
    use_model_folders(cfg, args.config)
    check_before_start(cfg, args.config, job)
    apply_system_envs(cfg)
    if job == "train":
        check_memory(cfg, args.config, "actor_infer", "train", platform)
    from vroll.config.memory import plan_train_memory

    train_plan = plan_train_memory(cfg, platform)
    if train_plan is not None:
        log.info("memory of each actor_train rank (estimate):\n%s", train_plan.table())
    return cfg


def cmd_train(args) -> int:
    from vroll.pipeline.rlvr import run_train

    summary = run_train(load_job_config(args, "train"), source=args.config)
    print_run_summary(summary)
    return 0


def cmd_sft(args) -> int:
    from vroll.pipeline.sft import run_sft

    summary = run_sft(load_job_config(args, "sft"), source=args.config)
    print_run_summary(summary)
    return 0


def cmd_evaluate(args) -> int:
    from pathlib import Path

    from transformers import AutoTokenizer

    from vroll.config import ConfigError, Issue, load_config
    from vroll.config.rules import check_eval_config
    from vroll.models.folder import folder_problems
    from vroll.models.paths import resolve_model_path
    from vroll.pipeline.evaluation import evaluate_model
    from vroll.strategy.vllm_compat import current_platform_name

    cfg = load_config(args.config, args.overrides, platform=current_platform_name())
    issues = check_eval_config(cfg)
    if issues:
        raise ConfigError(issues, args.config)
    use_model_folders(cfg, args.config)
    check_before_start(cfg, args.config, "evaluate")
    apply_system_envs(cfg)
    model = resolve_model_path(args.model, "--model")
    if Path(model).is_dir() and (problems := folder_problems(model)):
        raise ConfigError([Issue("--model", p) for p in problems], args.config)
    out = Path(args.output) if args.output else Path(model) / "evaluation"
    summary = evaluate_model(cfg, model, AutoTokenizer.from_pretrained(model), out, step=0, source=args.config)
    print_run_summary({**summary, "answers": str(out / "validation" / "step_0.jsonl")})
    return 0


def print_run_summary(summary: dict) -> None:
    for k, v in summary.items():
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")


def cmd_convert(args) -> int:
    from pathlib import Path

    from vroll.models.gguf import GgufError, convert_gguf, converted_folder, gguf_folder, is_converted, is_gguf

    if not is_gguf(args.gguf):
        raise GgufError(f"{args.gguf!r}: `vroll convert` takes a .gguf file")
    if args.out is None:
        folder = gguf_folder(args.gguf, "convert")
    elif is_converted(Path(args.out)):
        folder = Path(args.out)
        log.info("convert: %s holds a conversion already", folder)
    else:
        folder = convert_gguf(args.gguf, args.out, "convert")
    print(folder)
    return 0


def cmd_arithmetic_data(args) -> int:
    from vroll.cli.prompts_io import InputError
    from vroll.data.arithmetic import write_dataset

    try:
        paths = write_dataset(args.out, n_train=args.n_train, n_eval=args.n_eval, seed=args.seed,
                              max_operand=args.max_operand, n_sft=args.n_sft,
                              operators=args.operators)
    except ValueError as e:
        raise InputError(f"arithmetic-data: {e}") from None
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


def cmd_tiny_model(args) -> int:
    from vroll.models.tiny import TinySpec, build_tiny_model

    spec = TinySpec(seed=args.seed)
    if args.initializer_range is not None:
        spec = dataclasses.replace(spec, initializer_range=args.initializer_range)
    out = build_tiny_model(args.out, spec, force=args.force)
    print(f"tiny model: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
