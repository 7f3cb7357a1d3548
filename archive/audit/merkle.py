"""RFC 6962 / RFC 9162 Merkle tree hashing, inclusion proofs and consistency proofs.

Implemented from the RFC text:

* Hashing (RFC 6962 §2.1, RFC 9162 §2.1.1): ``MTH({}) = SHA-256()``, a leaf is
  ``SHA-256(0x00 || d)``, an interior node ``SHA-256(0x01 || left || right)``, and for n > 1
  ``MTH(D[n]) = node(MTH(D[0:k]), MTH(D[k:n]))`` with k the largest power of two smaller than n.
* Inclusion proofs: ``PATH(m, D[n])`` (RFC 6962 §2.1.1, RFC 9162 §2.1.3.1), verified with the
  algorithm of RFC 9162 §2.1.3.2.
* Consistency proofs: ``PROOF(m, D[n]) = SUBPROOF(m, D[n], true)`` (RFC 6962 §2.1.2,
  RFC 9162 §2.1.4.1), verified with the algorithm of RFC 9162 §2.1.4.2.

Every function here works on *leaf hashes* (32-byte digests from :func:`leaf_hash`), never on
raw entries, so callers hash each event once. Proofs are lists of 32-byte digests ordered from
the leaf (or the old tree's edge) up towards the root, as in the RFCs. The ``verify_*``
functions return False for any malformed input (wrong types, wrong lengths, impossible sizes)
and never raise on a bad proof.

Trivial consistency cases (not covered by the RFC 9162 algorithm, which requires
0 < first < second) are handled fail-closed: ``old_size == new_size`` needs an empty proof
and equal roots; ``old_size == 0`` needs an empty proof and ``old_root == EMPTY_ROOT``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = [
    "EMPTY_ROOT", "HASH_SIZE", "MerkleAccumulator", "consistency_proof", "inclusion_proof",
    "leaf_hash", "node_hash", "root", "verify_consistency", "verify_inclusion",
]

_sha256 = hashlib.sha256
HASH_SIZE = 32
EMPTY_ROOT: bytes = _sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 || data)."""
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: SHA-256(0x01 || left || right)."""
    return _sha256(b"\x01" + left + right).digest()


class MerkleAccumulator:
    """Streaming MTH in O(log n) memory: the tree's perfect-subtree "peaks" (a compact range).

    A tree of n leaves decomposes, left to right, into perfect subtrees whose sizes are the set
    bits of n, largest first (RFC 6962's split always puts the largest power of two on the
    left). ``append`` merges equal-sized peaks like a binary counter (amortised one node hash
    per leaf); ``root`` folds the peaks right to left, which is exactly the recursive MTH.
    A verifier can therefore stream any number of events and take the root at every
    checkpoint size without keeping the leaves::

        acc = MerkleAccumulator()
        for event in events:
            acc.append(leaf_hash(event))
            if acc.size in checkpoint_sizes:
                assert acc.root() == signed_root[acc.size]
    """

    __slots__ = ("_peaks", "size")

    def __init__(self) -> None:
        self._peaks: list[bytes] = []  # roots of perfect subtrees, largest (leftmost) first
        self.size = 0

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash (already ``leaf_hash``-ed) to the right edge of the tree."""
        h, n, peaks = leaf, self.size, self._peaks
        while n & 1:  # each trailing 1 bit of the old size is a peak of the new leaf's height
            h = _sha256(b"\x01" + peaks.pop() + h).digest()
            n >>= 1
        peaks.append(h)
        self.size += 1

    def extend(self, leaves: Sequence[bytes]) -> None:
        """``append`` for each leaf, in one loop (a writer adds a whole batch at a time)."""
        peaks, n, sha = self._peaks, self.size, _sha256
        for h in leaves:
            m = n
            while m & 1:
                h = sha(b"\x01" + peaks.pop() + h).digest()
                m >>= 1
            peaks.append(h)
            n += 1
        self.size = n

    @property
    def peaks(self) -> tuple[bytes, ...]:
        """The compact range: roots of the perfect subtrees, largest (leftmost) first; with ``size`` it is
        the whole state, so a writer can carry it forward instead of re-reading every leaf."""
        return tuple(self._peaks)

    @classmethod
    def from_peaks(cls, size: int, peaks: Sequence[bytes]) -> MerkleAccumulator:
        """The accumulator of a tree of ``size`` leaves whose peaks are ``peaks``. Raises ValueError when
        they cannot belong together (one peak per set bit of ``size``, each a 32-byte hash)."""
        if not _is_size(size) or len(peaks) != bin(size).count("1") or not all(_is_hash(p) for p in peaks):
            raise ValueError(f"{len(peaks)} peaks do not make a tree of {size} leaves")
        acc = cls()
        acc._peaks = [bytes(p) for p in peaks]
        acc.size = size
        return acc

    def copy(self) -> MerkleAccumulator:
        return MerkleAccumulator.from_peaks(self.size, self._peaks)

    def root(self) -> bytes:
        """MTH of the leaves appended so far (``EMPTY_ROOT`` for none)."""
        peaks = self._peaks
        if not peaks:
            return EMPTY_ROOT
        r = peaks[-1]
        for i in range(len(peaks) - 2, -1, -1):
            r = _sha256(b"\x01" + peaks[i] + r).digest()
        return r

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"MerkleAccumulator(size={self.size})"


def _mth(leaves: Sequence[bytes], lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi]) in O(hi - lo) time and O(log n) memory."""
    acc = MerkleAccumulator()
    append = acc.append
    for i in range(lo, hi):
        append(leaves[i])
    return acc.root()


def _split(n: int) -> int:
    """k: the largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH over a sequence of leaf hashes (RFC 6962 §2.1), computed iteratively."""
    return _mth(leaves, 0, len(leaves))


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(index, D[n]) for n = len(leaves): sibling hashes from the leaf up to the root."""
    n = len(leaves)
    if not 0 <= index < n:
        raise IndexError(f"leaf index {index} outside a tree of {n} leaves")
    siblings: list[bytes] = []  # collected root-down; the RFC's PATH lists them leaf-up
    lo, hi, m = 0, n, index
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:  # PATH(m, D[0:k]) : MTH(D[k:n])
            siblings.append(_mth(leaves, lo + k, hi))
            hi = lo + k
        else:  # PATH(m - k, D[k:n]) : MTH(D[0:k])
            siblings.append(_mth(leaves, lo, lo + k))
            lo, m = lo + k, m - k
    siblings.reverse()
    return siblings


def consistency_proof(old_size: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(old_size, D[n]) for n = len(leaves) (RFC 9162 §2.1.4.1); empty if old_size is 0 or n."""
    n = len(leaves)
    if not 0 <= old_size <= n:
        raise ValueError(f"old size {old_size} outside 0..{n}")
    if old_size in (0, n):
        return []
    siblings: list[bytes] = []
    lo, hi, m, whole = 0, n, old_size, True  # SUBPROOF(m, D[lo:hi], whole)
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:  # SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
            siblings.append(_mth(leaves, lo + k, hi))
            hi = lo + k
        else:  # SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])
            siblings.append(_mth(leaves, lo, lo + k))
            lo, m, whole = lo + k, m - k, False
    proof = [] if whole else [_mth(leaves, lo, hi)]  # SUBPROOF(m, D[m], false) = {MTH(D[m])}
    proof.extend(reversed(siblings))
    return proof


def _is_size(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _is_hash(x: object) -> bool:
    return isinstance(x, (bytes, bytearray)) and len(x) == HASH_SIZE


def _hashes(proof: object) -> list[bytes] | None:
    if isinstance(proof, (bytes, bytearray, str)) or not isinstance(proof, Sequence):
        return None
    if not all(_is_hash(p) for p in proof):
        return None
    return [bytes(p) for p in proof]


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2: does ``proof`` show leaf hash ``leaf`` at ``index`` in the tree (size, root)?

    ``size`` and ``root`` must come together from one verified checkpoint: the algorithm does not
    bind the size on its own (a size-3 proof for leaf 0 also passes as size 4 against the size-3 root).
    """
    path = _hashes(proof)
    if path is None or not (_is_hash(leaf) and _is_hash(root) and _is_size(index) and _is_size(size)):
        return False
    if index >= size:  # step 1
        return False
    fn, sn, r = index, size - 1, bytes(leaf)  # steps 2-3
    for p in path:  # step 4
        if sn == 0:  # 4a
            return False
        if fn & 1 or fn == sn:  # 4b
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1  # 4c
        sn >>= 1
    return sn == 0 and r == bytes(root)  # step 5


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2: is the tree (new_size, new_root) an append-only extension of (old_size, old_root)?"""
    path = _hashes(proof)
    if path is None or not (_is_hash(old_root) and _is_hash(new_root)
                            and _is_size(old_size) and _is_size(new_size)):
        return False
    old_root, new_root = bytes(old_root), bytes(new_root)
    if old_size > new_size:
        return False
    if old_size == new_size:
        return not path and old_root == new_root
    if old_size == 0:
        return not path and old_root == EMPTY_ROOT
    if not path:  # step 1
        return False
    if old_size & (old_size - 1) == 0:  # step 2: first is an exact power of two
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1  # step 3
    while fn & 1:  # step 4
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]  # step 5
    for c in path[1:]:  # step 6
        if sn == 0:  # 6a
            return False
        if fn & 1 or fn == sn:  # 6b
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1  # 6c
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0  # step 7
