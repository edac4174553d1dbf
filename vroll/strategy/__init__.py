"""Backends a role can run on, picked by `strategy_args.strategy_name`: each class serves one role
in the process that builds it (`vroll.roles` decides where that process is)."""
