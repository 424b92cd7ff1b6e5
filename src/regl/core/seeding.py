"""One seeding helper: every random choice draws from a generator keyed by (seed, purpose, ...).

Keys are mixed through numpy's SeedSequence, so ``rng(0, "partition")`` and ``rng(0, "prepare")`` are
independent streams, and a stage never touches global random state.
"""

from __future__ import annotations

import hashlib

import numpy as np


def _key_int(key: object) -> int:
    if isinstance(key, (int, np.integer)) and key >= 0:
        return int(key)
    digest = hashlib.sha256(str(key).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def seed_sequence(seed: int, *keys: object) -> np.random.SeedSequence:
    return np.random.SeedSequence([_key_int(seed), *(_key_int(k) for k in keys)])


def rng(seed: int, *keys: object) -> np.random.Generator:
    """A numpy generator for this (seed, keys) pair, e.g. ``rng(seed, "partition")``."""
    return np.random.Generator(np.random.PCG64(seed_sequence(seed, *keys)))


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit integer seed for libraries that want one (torch generators, samplers)."""
    return int(seed_sequence(seed, *keys).generate_state(1, np.uint64)[0] >> np.uint64(1))
