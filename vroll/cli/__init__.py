"""The `vroll` command line."""
