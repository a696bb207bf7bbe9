"""How the checked updates of a round become one: the example-weighted mean, or a robust coordinate-wise
aggregate (median, trimmed mean) that a minority of bad updates cannot drag far. The robust ones are those of
Flower's FedMedian and FedTrimmedAvg, applied key by key to the shared weights only."""

from __future__ import annotations

import numpy as np
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean


def weighted_mean(arrays: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Example-weighted mean of same-shaped arrays, in the dtype of the first (integers rounded).

    Not Flower's `aggregate_arrayrecords`: it accumulates in each array's own dtype and turns integer arrays
    (BatchNorm's step counters) into float64, which the next round's dtype check would refuse; and it needs
    every record to hold every key, where prototypes and pooled heads are averaged over the sites that sent
    the key."""
    w = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    mean = sum(wi * a.astype(np.float64) for wi, a in zip(w, arrays))
    dtype = arrays[0].dtype
    return np.asarray(np.rint(mean) if np.issubdtype(dtype, np.integer) else mean).astype(dtype)


def aggregate(arrays: list[np.ndarray], weights: list[float], method: str, trim_fraction: float) -> np.ndarray:
    """One key's arrays [N sites, *shape] -> [*shape]: `mean` weighs by `weights`; `median` and `trimmed-mean`
    (cutting `trim_fraction` of the values at each end) count every site once, as Flower's FedMedian and
    FedTrimmedAvg do."""
    if method == "mean":
        return weighted_mean(arrays, weights)
    stacked = np.stack(arrays)
    robust = np.median(stacked, axis=0) if method == "median" else trim_mean(stacked, trim_fraction)
    return np.asarray(robust).astype(arrays[0].dtype)
