"""Reward workers: they score responses against the data's reference answers."""
