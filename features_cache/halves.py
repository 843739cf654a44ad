"""float16 to float32 at memory speed: numpy's own cast of float16 is scalar (about 13 ns a
value here, ten times a copy), so a float16 cache would read slower than a float32 one.

The bits are widened with integer operations instead, in blocks that stay in the CPU's
cache: the magnitude's bits shifted into float32 position and scaled by 2**112 (exact for
normal and subnormal halves alike), then the sign put back (skipped for blocks with no
negative value, such as ReLU features). Non-finite halves are reported
rather than converted: a stored feature is never NaN or infinite, so one is damage or a
missing row.
"""

from __future__ import annotations

import numpy as np

_STEP = 1 << 15  # values per block: 128 KiB of float32, well inside a core's L2 cache
_SCALE = np.float32(2.0**112)  # 2**(127 - 15): float16's exponent bias into float32's
_NOT_FINITE = 0x7C00  # a magnitude at or above it is an infinity or a NaN


def widen(source: np.ndarray, target: np.ndarray) -> bool:
    """Write float16 ``source`` into float32 ``target`` (same shape, C-contiguous); return
    whether every value was finite (``target`` is then exactly ``source.astype(float32)``)."""
    halves = np.ascontiguousarray(source).reshape(-1).view(np.uint16)
    floats = target.reshape(-1)
    words = floats.view(np.uint32)
    sign = np.empty(min(_STEP, len(halves)), dtype=np.uint32)
    finite = True
    for start in range(0, len(halves), _STEP):
        part, out, bits = halves[start : start + _STEP], floats[start : start + _STEP], words[start : start + _STEP]
        if not len(part):
            continue
        positive = int(part.max()) < _NOT_FINITE  # every value finite and non-negative (ReLU features): no sign to restore
        if positive:
            bits[...] = part
        else:
            np.bitwise_and(part, 0x7FFF, out=bits, dtype=np.uint32, casting="unsafe")
            finite = finite and int(bits.max()) < _NOT_FINITE
        np.left_shift(bits, 13, out=bits)
        np.multiply(out, _SCALE, out=out)
        if not positive:
            signs = sign[: len(part)]
            np.bitwise_and(part, 0x8000, out=signs, dtype=np.uint32, casting="unsafe")
            np.left_shift(signs, 16, out=signs)
            np.bitwise_or(bits, signs, out=bits)
    return finite


def finite_halves(values: np.ndarray) -> bool:
    """Whether every float16 value is finite, from its bits (numpy's float16 tests are slow too)."""
    bits = np.ascontiguousarray(values).reshape(-1).view(np.uint16)
    return not len(bits) or int(np.bitwise_and(bits, 0x7FFF).max()) < _NOT_FINITE
