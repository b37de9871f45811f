"""Batches for the decoding commands (`nclm tts`, the SpeechX commands): requests grouped by
shape bucket, then padded to a power of two, so repeated calls reuse a few compiled programs.

    batches = batches_by_bucket([(64, 128), (32, 64), (64, 128)], batch_size=8)  # [[1], [0, 2]]
    rows = padded_rows(items, batch_size=8)     # 3 items -> 4 rows, the first one repeated
"""

from __future__ import annotations


def round_up(n: int, multiple: int) -> int:
    """n rounded up to a multiple, and at least one multiple (an empty dimension still has a
    bucket)."""
    return max(multiple, -(-n // multiple) * multiple)


def batches_by_bucket(buckets: list[tuple], batch_size: int) -> list[list[int]]:
    """Indices of equal bucket keys together (buckets in sorted order, input order within one),
    at most batch_size per batch: one compiled program per batch shape, little padding."""
    groups: dict[tuple, list[int]] = {}
    for i, bucket in enumerate(buckets):
        groups.setdefault(bucket, []).append(i)
    return [
        rows[start : start + batch_size]
        for _, rows in sorted(groups.items())
        for start in range(0, len(rows), batch_size)
    ]


def padded_rows(items: list, batch_size: int) -> list:
    """`items` padded to the next power of two rows (at most batch_size) by repeating the first:
    a padding row decodes like a real one and is dropped, so it cannot fail or change a shape."""
    num_rows = min(1 << (len(items) - 1).bit_length(), batch_size)
    return items + [items[0]] * (num_rows - len(items))
