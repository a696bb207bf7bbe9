"""Lighter messages: the shared weights cross the network in fp16 (`federation.message_dtype: fp16`).

Downlink: the server's fp32 global weights rounded to fp16 (`rounded`), which the site widens back to fp32.
Uplink: the site's update against what it received, trained - received, in fp16 (`encode_update`); the server
adds it to the same rounded weights (`decode_update`), so an update keeps fp16's 11 significant bits of its own
size, far finer than of the weights' size, and the server's global weights stay fp32. An update beyond fp16's
range (65504) becomes inf, which the server's update checks reject. Only floating-point arrays change.

Why fp16 and not bf16: Flower's arrays are numpy arrays, and numpy has no bf16; fp16's 3 more mantissa bits
also suit weights and updates, whose range is small.
"""

from __future__ import annotations

import numpy as np
import torch

MESSAGE_DTYPES = ("fp32", "fp16")
FP16_UPDATE = "fp16-update"  # how a site's reply says its shared arrays are an fp16 update


def _floating(value: np.ndarray) -> bool:
    return np.issubdtype(value.dtype, np.floating)


def _tensor(value: np.ndarray) -> torch.Tensor:
    """A torch view of `value` (of a copy when it is read-only: torch does not view those). torch's fp16 casts
    give numpy's results, faster: 9 ms against 33 ms to round 12.3 M fp32 values (the demo network's size)."""
    return torch.from_numpy(value if value.flags.writeable else value.copy())


def rounded(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays as they travel to the sites: floating-point ones in fp16."""
    return {k: _tensor(v).to(torch.float16).numpy() if _floating(v) else v for k, v in arrays.items()}


def widened(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What a site trains from: the fp16 arrays it received, as fp32."""
    return {k: _tensor(v).to(torch.float32).numpy() if v.dtype == np.float16 else v for k, v in arrays.items()}


def encode_update(trained: dict[str, np.ndarray], received: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A site's reply: trained - received in fp16 for the floating-point arrays it received (others as they are)."""
    def update(key: str, value: np.ndarray) -> np.ndarray:
        ref = received.get(key)
        if not _floating(value) or ref is None or ref.shape != value.shape:
            return value
        return (_tensor(value).float() - _tensor(ref).float()).to(torch.float16).numpy()
    return {k: update(k, v) for k, v in trained.items()}


def decode_update(sent: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The server's view of a site's weights: `reference` (the widened rounded global weights) + its fp16 update.
    An array that is not an fp16 update of a reference array stays as sent (the update checks judge it)."""
    def weights(key: str, value: np.ndarray) -> np.ndarray:
        ref = reference.get(key)
        if value.dtype != np.float16 or ref is None or ref.shape != value.shape:
            return value
        return (_tensor(ref).float() + _tensor(value).float()).numpy()
    return {k: weights(k, v) for k, v in sent.items()}
