"""A site's SuperNode: `python -m client.supernode ARGS` is `flower-supernode ARGS` (Flower's own SuperNode,
`flwr.supernode.cli.flower_supernode`) with the SuperNode's Flower patches applied
(`flower_common.flower_patches.SUPERNODE`: shorter fixed waits, a message of an ended run fails its task), or
none where Flower runs stock (PEDSEG_STOCK_FLOWER=1, or a flwr the patches were not written for)."""

from __future__ import annotations

import sys

from flwr.supernode.cli import flower_supernode

from flower_common.flower_patches import SUPERNODE, apply_flower_patches


def main() -> None:
    apply_flower_patches(SUPERNODE)
    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
