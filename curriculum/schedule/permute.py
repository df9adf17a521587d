"""Seeded permutations evaluated one index at a time: a keyed Feistel bijection with cycle walking.

Drawing the i-th item of a pass never materialises the pass's order, so seeking anywhere in a
group of any size costs O(1) time and no memory, and the order is the same on every machine.
"""

from __future__ import annotations

import hashlib

import numpy as np

_ROUNDS = 6
_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)


def _round_keys(seed: int, key: str, pass_: int) -> np.ndarray:
    digest = hashlib.sha512(f"{seed}\0{key}\0{pass_}".encode()).digest()
    return np.frombuffer(digest[: 8 * _ROUNDS], dtype="<u8").astype(np.uint64)


def _mix(x: np.ndarray, k: np.uint64) -> np.ndarray:
    # splitmix64 finaliser of (x xor key): a well-spread round function.
    z = (x ^ k) * _M1
    z = (z ^ (z >> np.uint64(30))) * _M2
    z = (z ^ (z >> np.uint64(27))) * _M3
    return z ^ (z >> np.uint64(31))


def _encrypt(x: np.ndarray, keys: np.ndarray, half: int) -> np.ndarray:
    mask = np.uint64((1 << half) - 1)
    shift = np.uint64(half)
    left, right = x >> shift, x & mask
    for k in keys:
        left, right = right, left ^ (_mix(right, k) & mask)
    return (left << shift) | right


def permute(offsets: np.ndarray, n: int, seed: int, key: str, pass_: int) -> np.ndarray:
    """Position in pass `pass_` of group `key` -> item index in [0, n); a bijection of [0, n)."""
    offsets = np.asarray(offsets, dtype=np.uint64)
    if n <= 1:
        return np.zeros(len(offsets), dtype=np.int64)
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    keys = _round_keys(seed, key, pass_)
    with np.errstate(over="ignore"):
        out = _encrypt(offsets, keys, half)
        # The Feistel domain is the next power of four; walk out-of-range values back in (bijective).
        todo = out >= n
        while todo.any():
            out[todo] = _encrypt(out[todo], keys, half)
            todo = out >= n
    return out.astype(np.int64)
