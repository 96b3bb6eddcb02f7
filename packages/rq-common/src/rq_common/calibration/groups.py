"""Scale groups: tensors that must share one scale and zero point (a pass-through op's output and
its input; Concat / pooling inputs and output on the NPU). A union-find over any hashable tensor
key (an ONNX tensor name, a torch.fx node); the earliest-added member names its group, so the
grouping is deterministic wherever the graph is walked in a fixed order."""

from __future__ import annotations

from collections.abc import Hashable


class ScaleGroups:
    def __init__(self) -> None:
        self.parent: dict[Hashable, Hashable] = {}
        self.order: dict[Hashable, int] = {}

    def add(self, key: Hashable) -> None:
        if key not in self.parent:
            self.parent[key] = key
            self.order[key] = len(self.order)

    def find(self, key: Hashable) -> Hashable:
        self.add(key)
        root = key
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[key] != root:  # path compression
            self.parent[key], key = root, self.parent[key]
        return root

    def union(self, a: Hashable, b: Hashable) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            keep, drop = (ra, rb) if self.order[ra] < self.order[rb] else (rb, ra)
            self.parent[drop] = keep

    def members(self) -> dict[Hashable, list[Hashable]]:
        """Root -> its members, in the order they were added."""
        groups: dict[Hashable, list[Hashable]] = {}
        for key in self.parent:
            groups.setdefault(self.find(key), []).append(key)
        return groups
