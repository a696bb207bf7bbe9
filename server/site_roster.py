"""Which site and joint answer from each Flower node: learned from the label query and from checked replies.

A node is bound to the site and joint it first declared: a later reply of that node that names another is
rejected (`server.update_checks`, in training and in evaluation alike). A site that rejoins gets a new node id;
the roster then knows it under both. (Which node may first declare a name is not checked here: that takes a
binding of each SuperNode's key to its site when it is registered.)
"""

from __future__ import annotations

from flwr.app import Message

from pedseg_core.protocol import JOINT, SITE, SITE_NAME


class SiteRoster:
    """node id -> (site, joint)."""

    def __init__(self) -> None:
        self.site_of_node: dict[int, str] = {}
        self.joint_of_node: dict[int, str] = {}

    def know(self, sites: dict[int, tuple[str, str]]) -> None:
        """Nodes' (site, joint), e.g. from the label query, before any round's reply names them."""
        for node, (site, joint) in sites.items():
            self.site_of_node[node] = site
            self.joint_of_node[node] = joint

    def learn(self, reply: Message) -> str:
        """The site of a checked reply's node: the one it first declared, which binds it from now on."""
        node = reply.metadata.src_node_id
        if node not in self.site_of_node:
            self.know({node: (str(reply.content[SITE][SITE_NAME]), str(reply.content[SITE][JOINT]))})
        return self.site_of_node[node]

    def known(self) -> dict[int, tuple[str, str]]:
        return {node: (site, self.joint_of_node[node]) for node, site in self.site_of_node.items()}

    def name(self, node: int) -> str:
        return self.site_of_node.get(node, f"node {node}")

    def joint(self, node: int) -> str | None:
        return self.joint_of_node.get(node)

    def shares_head(self, node: int) -> bool:
        """Whether the node's joint is held by several sites, which then pool their heads (domain-wise)."""
        joint = self.joint_of_node.get(node)
        return joint is not None and len({self.site_of_node[n] for n, j in self.joint_of_node.items()
                                          if j == joint}) > 1
