"""The site algorithms a process keeps between the messages it handles.

A process that serves several messages (a site's worker, a simulation actor) keeps its last `federation.cached_sites`
algorithms, with their slices and optimizer, in memory, and uses one only if it handled that node's previous
message: a simulation engine hands a node's messages to any of its actors, and another actor's algorithm would
hold an older state of the site (its private layers, its Adam state and the epsilon it has spent)."""

from __future__ import annotations

from collections import OrderedDict

from pedseg_core.config import PedsegConfig
from pedseg_core.train.site_algorithm import SiteAlgorithm
from pedseg_core.train.site_requests import SiteSettings, StateDict, UnionLabels


class SiteAlgorithmCache:
    def __init__(self) -> None:
        # (run, site, union) -> (algorithm, how many of the node's messages it has handled)
        self._entries: OrderedDict[tuple, tuple[SiteAlgorithm, int]] = OrderedDict()

    def open(self, settings: SiteSettings, cfg: PedsegConfig, run: str, union: UnionLabels | None, handled: int,
             private: StateDict | None) -> SiteAlgorithm:
        """The site's algorithm for its next message, `handled` being how many messages the node has handled
        so far: the cached one if it handled all of them, else a new one restored from `private` (the node's
        memory) or the site's disk. Only the `shared` scheme's model depends on `union`."""
        key = (run, settings.site, union if cfg.scheme == "shared" else None)
        if key in self._entries and self._entries[key][1] == handled:
            algorithm = self._entries[key][0]
            algorithm.use_settings(settings)  # the site's policy as its file says now, as a new algorithm reads it
            self._entries.move_to_end(key)
        else:
            algorithm = SiteAlgorithm(settings, cfg, run, key[2], private)
        self._entries[key] = algorithm, handled + 1
        while len(self._entries) > cfg.federation.cached_sites:
            self._entries.popitem(last=False)
        return algorithm
