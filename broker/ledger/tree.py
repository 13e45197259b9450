"""The ledger's Merkle tree in PostgreSQL: stored nodes, roots and proofs.

``ledger.tree_nodes`` keeps every perfect subtree of ``BLOCK`` (256) leaves and up, built
by ``extend_tree`` from committed rows (which never change). Any node below that level is
recomputed from its block of at most 256 rows, so a root or a proof costs ``O(log n)``
stored nodes plus one or two short reads of ``ledger.events`` — never the whole tree.

The stored nodes are derived data and are not trusted by verifiers: a wrong node can only
make a signed root or a proof fail to verify, never make a changed row pass.
"""

from __future__ import annotations

import base64
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import asyncpg

from .chain import canonical_event
from .events import decoded_body, row_to_event
from .merkle import (
    CompactRange,
    Node,
    consistency_ranges,
    inclusion_ranges,
    leaf_hash,
    range_nodes,
    root_from_nodes,
)

__all__ = [
    "BLOCK",
    "STORED_LEVEL",
    "RecentBlocks",
    "TreeError",
    "built_size",
    "compact_hashes",
    "consistency_proof",
    "extend_tree",
    "inclusion_proof",
    "leaf_hashes",
    "range_proof",
    "span_hashes",
    "tree_root",
]

STORED_LEVEL = 8
BLOCK = 1 << STORED_LEVEL
_BLOCKS_PER_READ = 64  # 16,384 rows per query while building


class TreeError(RuntimeError):
    """The rows or stored nodes a tree operation needs are missing."""


def block_root(index: int, leaves: Sequence[bytes]) -> bytes:
    """The level-8 node over block ``index``'s ``BLOCK`` leaf hashes."""
    block = CompactRange(index * BLOCK, index * BLOCK)
    block.extend(leaves)
    return block.nodes[0][2]


class RecentBlocks:
    """Level-8 nodes of the blocks this process's ledger writer committed whole.

    The writer has each row's canonical bytes in hand when it hashes the chain; keeping
    their leaf hashes spares ``extend_tree`` reading those rows back and encoding them
    again (a sixth of the broker's CPU per issuance at full load). Only blocks whose 256
    rows all came from this writer, in order, are kept: with other replicas writing in
    between, their blocks are read from the table as before. Nothing here is trusted
    more than the table: ``broker verify`` rebuilds the tree from the rows and compares
    it with every signed root, so a node that disagreed with its rows would be found.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity  # blocks (4096: the last million rows)
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._pending: list[bytes] = []
        self._next = -1  # the leaf index that continues _pending

    def add(self, seq: int, row: bytes) -> None:
        """Row ``seq`` (leaf ``seq - 1``) was committed with these canonical bytes."""
        index = seq - 1
        if index % BLOCK == 0:
            self._pending = []
        elif index != self._next:
            self._pending, self._next = [], -1  # a gap: another writer's rows
            return
        self._pending.append(leaf_hash(row))
        self._next = index + 1
        if len(self._pending) == BLOCK:
            self._blocks[index // BLOCK] = block_root(index // BLOCK, self._pending)
            self._pending, self._next = [], -1
            while len(self._blocks) > self._capacity:
                self._blocks.popitem(last=False)

    def __contains__(self, block: int) -> bool:
        return block in self._blocks

    def pop(self, block: int) -> bytes | None:
        """Block ``block``'s node if this writer committed all of it (forgotten after)."""
        return self._blocks.pop(block, None)


async def leaf_hashes(conn: asyncpg.Connection, begin: int, end: int) -> list[bytes]:
    """Leaf hashes of leaves ``[begin, end)`` (rows ``seq = begin + 1 .. end``)."""
    if end <= begin:
        return []
    rows = await conn.fetch(
        "SELECT * FROM ledger.events WHERE seq > $1 AND seq <= $2 ORDER BY seq", begin, end
    )
    if len(rows) != end - begin or (rows and rows[0]["seq"] != begin + 1):
        raise TreeError(f"ledger rows {begin + 1}..{end} are not all present")
    return [leaf_hash(canonical_event(row_to_event(r))) for r in rows]


async def built_size(conn: asyncpg.Connection) -> int:
    """How many leaves the stored level-8 nodes cover (a multiple of ``BLOCK``)."""
    top = await conn.fetchval(
        "SELECT max(idx) FROM ledger.tree_nodes WHERE level = $1", STORED_LEVEL
    )
    return 0 if top is None else (top + 1) * BLOCK


async def _stored(conn: asyncpg.Connection, nodes: Iterable[Node]) -> dict[Node, bytes]:
    wanted = sorted(set(nodes))
    if not wanted:
        return {}
    rows = await conn.fetch(
        "SELECT t.level, t.idx, t.hash FROM ledger.tree_nodes t"
        " JOIN unnest($1::smallint[], $2::bigint[]) AS u(level, idx) USING (level, idx)",
        [lv for lv, _ in wanted],
        [ix for _, ix in wanted],
    )
    return {(r["level"], r["idx"]): bytes(r["hash"]) for r in rows}


async def extend_tree(
    conn: asyncpg.Connection, upto: int, recent: RecentBlocks | None = None
) -> int:
    """Store the nodes of every complete block of the first ``upto`` leaves; return the
    size now covered. Idempotent and safe on several replicas at once (rows never change,
    so two builders store the same nodes). Blocks in ``recent`` are not read again."""
    start = await built_size(conn)
    target = (upto // BLOCK) * BLOCK
    if target <= start:
        return start
    frontier = range_nodes(0, start)
    have = await _stored(conn, frontier)
    if len(have) != len(frontier):
        raise TreeError("stored tree nodes are missing below the built size")
    made: list[tuple[int, int, bytes]] = []
    compact = CompactRange.from_hashes(0, start, [have[n] for n in frontier])
    compact.on_node = lambda lv, ix, h: made.append((lv, ix, h)) if lv > STORED_LEVEL else None
    pos = start
    while pos < target:
        known = recent.pop(pos // BLOCK) if recent is not None else None
        if known is not None:
            digests, stop = [known], pos + BLOCK
        else:
            stop = min(target, pos + BLOCK * _BLOCKS_PER_READ)
            leaves = await leaf_hashes(conn, pos, stop)
            digests = [
                block_root((pos + b) // BLOCK, leaves[b : b + BLOCK])
                for b in range(0, len(leaves), BLOCK)
            ]
        for k, digest in enumerate(digests):
            index = pos // BLOCK + k
            made.append((STORED_LEVEL, index, digest))
            compact.push_node(STORED_LEVEL, index, digest)
        pos = stop
        if len(made) >= BLOCK * 2 or pos >= target:
            await conn.execute(
                "INSERT INTO ledger.tree_nodes (level, idx, hash)"
                " SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bytea[])"
                " ON CONFLICT DO NOTHING",
                [m[0] for m in made],
                [m[1] for m in made],
                [m[2] for m in made],
            )
            made.clear()
    return target


def _span_nodes(begin: int, leaves: Sequence[bytes]) -> dict[Node, bytes]:
    """Every perfect subtree that lies wholly within the leaves starting at ``begin``."""
    made: dict[Node, bytes] = {(0, begin + i): h for i, h in enumerate(leaves)}
    rng = CompactRange(begin, begin, on_node=lambda lv, ix, h: made.__setitem__((lv, ix), h))
    rng.extend(leaves)
    return made


async def _node_hashes(
    conn: asyncpg.Connection, nodes: Iterable[Node], size: int
) -> dict[Node, bytes]:
    """Hashes of perfect subtrees within the first ``size`` leaves: stored ones from
    ``tree_nodes``, smaller ones recomputed from their block of rows."""
    wanted = set(nodes)
    high = {n for n in wanted if n[0] >= STORED_LEVEL}
    out = await _stored(conn, high)
    if len(out) != len(high):
        raise TreeError(f"the tree is not built to size {size} yet (retry after a checkpoint)")
    blocks: dict[int, set[Node]] = {}
    for lv, ix in wanted - high:
        blocks.setdefault(ix >> (STORED_LEVEL - lv), set()).add((lv, ix))
    for need in blocks.values():
        # Only the leaves these nodes cover: rows before them may be archived already.
        begin = min(ix << lv for lv, ix in need)
        end = max((ix + 1) << lv for lv, ix in need)
        try:
            made = _span_nodes(begin, await leaf_hashes(conn, begin, end))
        except TreeError:
            made = await _across_archive(conn, begin, end)
        for node in need:
            out[node] = made[node]
    return out


async def _across_archive(conn: asyncpg.Connection, begin: int, end: int) -> dict[Node, bytes]:
    """Nodes over leaves ``[begin, end)`` whose first rows were archived: the tree left of
    the archive's end comes from the newest ``ledger.archived`` event, the rest from rows."""
    body = await conn.fetchval(
        "SELECT body FROM ledger.events WHERE event = 'ledger.archived' ORDER BY seq DESC LIMIT 1"
    )
    if body is None:
        raise TreeError(f"ledger rows {begin + 1}..{end} are not all present")
    body = decoded_body(body)
    archived = int(body["last_seq"])
    if not begin < archived < end:
        raise TreeError(f"ledger rows {begin + 1}..{end} are not all present")
    made: dict[Node, bytes] = {}
    tree = CompactRange.from_hashes(0, archived, [base64.b64decode(h) for h in body["compact"]])
    tree.on_node = lambda lv, ix, h: made.__setitem__((lv, ix), h)
    for i, leaf in enumerate(await leaf_hashes(conn, archived, end)):
        made[(0, archived + i)] = leaf
        tree.push_leaf(leaf)
    return made


async def _range_hashes(
    conn: asyncpg.Connection, ranges: Sequence[tuple[int, int]], size: int
) -> list[bytes]:
    specs = [range_nodes(lo, hi) for lo, hi in ranges]
    hashes = await _node_hashes(conn, (n for spec in specs for n in spec), size)
    return [root_from_nodes([hashes[n] for n in spec]) for spec in specs]


async def compact_hashes(conn: asyncpg.Connection, size: int) -> list[bytes]:
    """Hashes of ``range_nodes(0, size)``: what a verifier needs to resume at ``size``."""
    spec = range_nodes(0, size)
    hashes = await _node_hashes(conn, spec, size)
    return [hashes[n] for n in spec]


async def tree_root(conn: asyncpg.Connection, size: int) -> bytes:
    return root_from_nodes(await compact_hashes(conn, size))


async def inclusion_proof(conn: asyncpg.Connection, index: int, size: int) -> list[bytes]:
    """RFC 6962 audit path of leaf ``index`` (row ``index + 1``) in the tree of ``size``."""
    return await _range_hashes(conn, inclusion_ranges(index, size), size)


async def consistency_proof(conn: asyncpg.Connection, old: int, new: int) -> list[bytes]:
    """RFC 6962 consistency proof from the tree of size ``old`` to size ``new``."""
    return await _range_hashes(conn, consistency_ranges(old, new), new)


async def range_proof(
    conn: asyncpg.Connection, begin: int, end: int, size: int
) -> tuple[list[bytes], list[bytes]]:
    """The nodes left of leaves ``[begin, end)`` and right of them up to ``size``: with the
    rows themselves they rebuild the root of ``size`` (``merkle.CompactRange``)."""
    return await span_hashes(conn, 0, begin, size), await span_hashes(conn, end, size, size)


async def span_hashes(conn: asyncpg.Connection, begin: int, end: int, size: int) -> list[bytes]:
    """Hashes of ``range_nodes(begin, end)`` in the tree of ``size`` (reads no row outside
    ``[begin, end)``: what an archive needs once earlier rows are gone)."""
    spec = range_nodes(begin, end)
    hashes = await _node_hashes(conn, spec, size)
    return [hashes[n] for n in spec]
