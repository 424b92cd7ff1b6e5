"""Federated training: one engine (engine.py) and algorithms that plug into it (algorithm.py and friends)."""
