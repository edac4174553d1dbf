"""Datasets the project builds itself (no downloads)."""
