"""The Ray actor layer: connect or start Ray, place and pin one actor per engine or rank, call with
deadlines, name failures, restart, release. It knows no backend: it builds them by name."""
