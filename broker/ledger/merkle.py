"""The ledger's Merkle tree (RFC 6962 / RFC 9162 hashing, as C2SP tlog): pure functions.

Leaf ``i`` (0-based) is the canonical bytes of the row with ``seq = i + 1`` — the same
bytes the hash chain covers — hashed as ``SHA-256(0x00 || row)``; an interior node is
``SHA-256(0x01 || left || right)``. A tree of size ``n`` splits at the largest power of two
below ``n``, so every node is either a *perfect* subtree ``(level, index)`` covering leaves
``[index * 2**level, (index + 1) * 2**level)`` or a right-edge range whose hash folds the
perfect subtrees that decompose it (``range_nodes``). Everything here works on that one
idea: proofs are lists of ranges, and a range's hash comes from perfect subtrees.

``CompactRange`` is a stack of perfect subtrees covering ``[begin, end)``; appending leaves
or subtrees merges siblings, and a range that starts at 0 folds to the tree's root. It is
how a verifier checks a run of rows against a signed root with only ``O(log n)`` extra
hashes (the nodes left and right of the run), how full verification splits the ledger
across processes, and how incremental verification resumes from a remembered size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "EMPTY_ROOT",
    "CompactRange",
    "ProofError",
    "consistency_ranges",
    "inclusion_ranges",
    "leaf_hash",
    "node_hash",
    "range_nodes",
    "root_from_nodes",
    "verify_consistency",
    "verify_inclusion",
]

EMPTY_ROOT = hashlib.sha256(b"").digest()

Node = tuple[int, int]  # (level, index) of a perfect subtree


class ProofError(ValueError):
    """A proof does not verify, or does not have the shape its sizes require."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def range_nodes(begin: int, end: int) -> list[Node]:
    """The maximal perfect subtrees that cover ``[begin, end)``, left to right."""
    nodes: list[Node] = []
    pos = begin
    while pos < end:
        level = (pos & -pos).bit_length() - 1 if pos else (end - pos).bit_length() - 1
        while pos + (1 << level) > end:
            level -= 1
        nodes.append((level, pos >> level))
        pos += 1 << level
    return nodes


def root_from_nodes(hashes: Sequence[bytes]) -> bytes:
    """Hash of a range from the hashes of its ``range_nodes`` (fold from the right)."""
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The ranges whose hashes form the inclusion proof of leaf ``index`` (RFC 6962 PATH),
    leaf-side first."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of size {size}")
    out: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo += k
    out.reverse()
    return out


def consistency_ranges(old: int, new: int) -> list[tuple[int, int]]:
    """The ranges whose hashes form the consistency proof ``old -> new`` (RFC 6962
    SUBPROOF), in proof order."""
    if not 0 < old <= new:
        raise ProofError(f"no consistency proof from size {old} to {new}")
    out: list[tuple[int, int]] = []
    lo, hi, m, complete = 0, new, old, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo, m, complete = lo + k, m - k, False
    if not complete:
        out.append((lo, hi))
    out.reverse()
    return out


def _inner_border(index: int, size: int) -> tuple[int, int]:
    inner = (index ^ (size - 1)).bit_length()
    border = bin(index >> inner).count("1")
    return inner, border


def _chain_inner(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        seed = node_hash(h, seed) if (index >> i) & 1 else node_hash(seed, h)
    return seed


def _chain_inner_right(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        if (index >> i) & 1:
            seed = node_hash(h, seed)
    return seed


def _chain_border_right(seed: bytes, proof: Sequence[bytes]) -> bytes:
    for h in proof:
        seed = node_hash(h, seed)
    return seed


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise ProofError unless ``proof`` shows leaf hash ``leaf`` at ``index`` under ``root``."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of size {size}")
    inner, border = _inner_border(index, size)
    if len(proof) != inner + border:
        raise ProofError(f"inclusion proof has {len(proof)} hashes, expected {inner + border}")
    got = _chain_inner(leaf, proof[:inner], index)
    got = _chain_border_right(got, proof[inner:])
    if got != root:
        raise ProofError(f"inclusion proof for leaf {index} does not lead to the root")


def verify_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Raise ProofError unless ``proof`` shows the tree of size ``old`` is a prefix of the
    tree of size ``new`` (RFC 9162 2.1.4.2)."""
    if not 0 < old <= new:
        raise ProofError(f"no consistency proof from size {old} to {new}")
    if old == new:
        if proof:
            raise ProofError("consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError(f"two different roots for size {old}")
        return
    if old & (old - 1) == 0:  # a power of two: the old root is itself a node of the proof
        proof = [old_root, *proof]
    if not proof:
        raise ProofError("consistency proof is empty")
    inner, border = _inner_border(old - 1, new)
    shift = (old & -old).bit_length() - 1
    inner -= shift
    if len(proof) != 1 + inner + border:
        raise ProofError(
            f"consistency proof has {len(proof)} hashes, expected {1 + inner + border}"
        )
    mask = (old - 1) >> shift
    seed, rest = proof[0], proof[1:]
    h1 = _chain_inner_right(seed, rest[:inner], mask)
    h1 = _chain_border_right(h1, rest[inner:])
    if h1 != old_root:
        raise ProofError(f"checkpoint at size {old} is not a prefix of size {new} (old root)")
    h2 = _chain_inner(seed, rest[:inner], mask)
    h2 = _chain_border_right(h2, rest[inner:])
    if h2 != new_root:
        raise ProofError(f"checkpoint at size {new} does not extend size {old} (new root)")


@dataclass
class CompactRange:
    """Perfect subtrees covering ``[begin, end)``, merged whenever two are siblings.

    For ``begin == 0`` the stack is the binary decomposition of ``end`` and ``root()`` is
    the RFC 6962 root of the first ``end`` leaves.
    """

    begin: int = 0
    end: int = 0
    nodes: list[tuple[int, int, bytes]] = field(default_factory=list)  # (level, index, hash)
    on_node: Callable[[int, int, bytes], None] | None = None  # every perfect node made

    @classmethod
    def from_hashes(cls, begin: int, end: int, hashes: Sequence[bytes]) -> CompactRange:
        """A range from the hashes of its ``range_nodes`` (as proofs carry them)."""
        spec = range_nodes(begin, end)
        if len(spec) != len(hashes):
            raise ProofError(f"range [{begin}, {end}) needs {len(spec)} hashes, got {len(hashes)}")
        return cls(begin, end, [(lv, ix, h) for (lv, ix), h in zip(spec, hashes, strict=True)])

    def push_node(self, level: int, index: int, digest: bytes) -> None:
        """Append the perfect subtree ``(level, index)``; it must start at ``end``."""
        if index << level != self.end or (self.end & ((1 << level) - 1)):
            raise ProofError(f"node ({level}, {index}) does not continue range ending {self.end}")
        self.end += 1 << level
        nodes = self.nodes
        while nodes and nodes[-1][0] == level and index & 1 and nodes[-1][1] == index - 1:
            digest = node_hash(nodes.pop()[2], digest)
            level, index = level + 1, index >> 1
            if self.on_node is not None:
                self.on_node(level, index, digest)
        nodes.append((level, index, digest))

    def push_leaf(self, leaf: bytes) -> None:
        self.push_node(0, self.end, leaf)

    def extend(self, leaves: Iterable[bytes]) -> None:
        for leaf in leaves:
            self.push_node(0, self.end, leaf)

    def hashes(self) -> list[bytes]:
        return [h for _, _, h in self.nodes]

    def root(self) -> bytes:
        if self.begin != 0:
            raise ProofError("only a range that starts at leaf 0 has a tree root")
        return root_from_nodes(self.hashes())

    def copy(self) -> CompactRange:
        return CompactRange(self.begin, self.end, list(self.nodes), self.on_node)
