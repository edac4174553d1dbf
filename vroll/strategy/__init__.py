"""Backends a role can run on, picked by `strategy_args.strategy_name`."""

from vroll.strategy.registry import STRATEGIES, StrategyNotAvailable, build_strategy

__all__ = ["STRATEGIES", "StrategyNotAvailable", "build_strategy"]
