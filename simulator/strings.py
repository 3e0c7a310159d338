"""Vectorised text building for millions of rows.

Per-row Python formatting of ~10 million rows would take minutes; pyarrow's compute
kernels and numpy byte tricks build the same strings in C, so ids, JSON payloads and
COPY lines cost well under a microsecond per row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_MASK52 = np.uint64((1 << 52) - 1)


def fixed_width(chars: np.ndarray) -> pa.StringArray:
    """An arrow string array from an (n, width) uint8 matrix of ASCII bytes."""
    n, width = chars.shape
    offsets = np.arange(n + 1, dtype=np.int32) * width
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(chars)))


_HEX_PAIRS = np.array(
    [ord(a) | ord(b) << 8 for a in "0123456789abcdef" for b in "0123456789abcdef"], dtype="<u2"
)


def hex_digits(values: np.ndarray, digits: int) -> np.ndarray:
    """Lower-case hex of unsigned integers as an (n, digits) uint8 matrix (zero padded, digits <= 16)."""
    v = np.ascontiguousarray(np.asarray(values, dtype=">u8"))
    pairs = _HEX_PAIRS[v.view(np.uint8).reshape(-1, 8)]  # two hex characters per byte
    return np.ascontiguousarray(pairs.view(np.uint8).reshape(-1, 16)[:, 16 - digits :])


def mix52(seq: np.ndarray, salt: int) -> np.ndarray:
    """A bijection on 52-bit integers: distinct inputs give distinct, random-looking outputs."""
    x = (np.asarray(seq, dtype=np.uint64) ^ np.uint64(salt)) & _MASK52
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(26)
        x = (x * np.uint64(0x9E3779B97F4A7C15)) & _MASK52
        x ^= x >> np.uint64(23)
        x = (x * np.uint64(0xBF58476D1CE4E5B9)) & _MASK52
        x ^= x >> np.uint64(27)
    return x


_UUID_GROUPS = ((0, 8, 0), (9, 13, 8), (14, 18, 12), (19, 23, 16), (24, 36, 20))  # (to, to end, from)


def _uuid_text(hi: np.ndarray, lo: np.ndarray) -> pa.StringArray:
    """8-4-4-4-12 text of 128-bit values given as two uint64 halves."""
    n = len(hi)
    raw = np.empty((n, 2), dtype=">u8")
    raw[:, 0], raw[:, 1] = hi, lo
    digits = _HEX_PAIRS[raw.view(np.uint8).reshape(n, 16)].view(np.uint8).reshape(n, 32)
    out = np.full((n, 36), ord("-"), dtype=np.uint8)
    for a, b, c in _UUID_GROUPS:
        out[:, a:b] = digits[:, c : c + b - a]
    return fixed_width(out)


_VERSION_4 = np.uint64(0x4 << 12)
_VERSION_8 = np.uint64(0x8 << 12)
_VARIANT_MASK = np.uint64((1 << 62) - 1)
_VARIANT = np.uint64(1 << 63)


def _random_u64(rng: np.random.Generator, n: int) -> np.ndarray:
    high = rng.integers(0, 1 << 63, size=n, dtype=np.uint64) << np.uint64(1)
    return high | rng.integers(0, 2, n, dtype=np.uint64)


def uuids(rng: np.random.Generator, n: int) -> pa.StringArray:
    """Random version-4 UUID strings (Segment's anonymousId looks like this)."""
    hi = (_random_u64(rng, n) & ~np.uint64(0xF << 12)) | _VERSION_4
    lo = (_random_u64(rng, n) & _VARIANT_MASK) | _VARIANT
    return _uuid_text(hi, lo)


ORDERED_ROWS_MAX = 1 << 28  # rows an ordered id sequence can number


def ordered_uuids(rng: np.random.Generator, n: int, first: int = 0) -> pa.StringArray:
    """UUID strings (RFC 9562 version 8, the custom layout) that increase with the row number.

    The first 52 bits (around the version nibble) are the row number (`first`
    onwards) times 2**24 plus random low bits, so ids never collide and rows loaded in
    id order make PostgreSQL's primary-key build a presorted, cheap sort; the rest
    are random, so the text still looks like any UUID.
    """
    if first + n > ORDERED_ROWS_MAX:
        raise ValueError(f"ordered ids number at most {ORDERED_ROWS_MAX:,} rows")
    row = np.arange(first, first + n, dtype=np.uint64)
    value = row << np.uint64(24) | rng.integers(0, 1 << 24, n, dtype=np.uint64)
    hi = (value >> np.uint64(4)) << np.uint64(16) | _VERSION_8 | (value & np.uint64(0xF)) << np.uint64(8)
    hi |= rng.integers(0, 256, n, dtype=np.uint64)
    lo = (_random_u64(rng, n) & _VARIANT_MASK) | _VARIANT
    return _uuid_text(hi, lo)


def ints(values: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(np.asarray(values, dtype=np.int64)), pa.string())


_CENTS = pa.array([f"{i:02d}" for i in range(100)])


def money(cents: np.ndarray) -> pa.Array:
    """Decimal text with two places from integer cents (exact, unlike float formatting)."""
    c = np.asarray(cents, dtype=np.int64)
    sign = np.where(c < 0, "-", "")
    a = np.abs(c)
    body = pc.binary_join_element_wise(ints(a // 100), _CENTS.take(pa.array(a % 100)), ".")
    if (c < 0).any():
        body = pc.binary_join_element_wise(pa.array(sign), body, "")
    return body


def timestamps(values: np.ndarray, unit: str = "s") -> pa.Array:
    """ISO text of epoch times; the loading session runs in UTC, so no zone suffix is needed."""
    return pc.cast(pa.array(np.asarray(values, dtype=np.int64).astype(f"datetime64[{unit}]")), pa.string())


def pick(labels: Sequence[str], codes: np.ndarray) -> pa.Array:
    """Labels by integer code, as arrow strings (a take from a small dictionary)."""
    return pa.array(list(labels), type=pa.string()).take(pa.array(np.asarray(codes, dtype=np.int32)))


def constant(value: str | None, n: int) -> pa.Array:
    """The same text (or NULL) in every row."""
    if value is None:
        return pa.nulls(n, pa.string())
    return pick([value], np.zeros(n, dtype=np.int32))


def concat(*parts: pa.Array | str) -> pa.Array:
    """Element-wise concatenation; literal strings are broadcast."""
    return pc.binary_join_element_wise(*parts, "")


def optional(mask: np.ndarray, *parts: pa.Array | str) -> pa.Array:
    """`concat(*parts)` where mask is true, else the empty string (omits an optional JSON key)."""
    full = concat(*parts)
    if isinstance(full, pa.Scalar):
        full = pa.array([full.as_py()] * len(mask), type=pa.string())
    return pc.if_else(pa.array(np.asarray(mask, dtype=bool)), full, "")


def with_nulls(values: pa.Array, null_mask: np.ndarray) -> pa.Array:
    return pc.if_else(pa.array(np.asarray(null_mask, dtype=bool)), pa.scalar(None, pa.string()), values)


def as_chunk(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
