"""RFC 6962 / RFC 9162 Merkle trees: archive.audit.merkle against a recursive reference and published vectors."""

from __future__ import annotations

import hashlib
import random
import time

import pytest

from archive.audit.merkle import (
    EMPTY_ROOT, MerkleAccumulator, consistency_proof, inclusion_proof, leaf_hash, node_hash, root,
    verify_consistency, verify_inclusion,
)

# --- reference implementation, straight from the RFC 6962 §2.1 / RFC 9162 §2.1 definitions ------------


def _k(n: int) -> int:
    """The largest power of two smaller than n."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    """MTH over leaf hashes (the leaf-hashing step of MTH({d0}) is done by the caller)."""
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return d[0]
    k = _k(len(d))
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return ref_path(m, d[:k]) + [ref_mth(d[k:])]
    return ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = _k(n)
    if m <= k:
        return ref_subproof(m, d[:k], b) + [ref_mth(d[k:])]
    return ref_subproof(m - k, d[k:], False) + [ref_mth(d[:k])]


def ref_proof(m: int, d: list[bytes]) -> list[bytes]:
    return ref_subproof(m, d, True)


def leaves_for(n: int, seed: int = 0) -> list[bytes]:
    return [leaf_hash(f"event-{seed}-{i}".encode()) for i in range(n)]


def flip(h: bytes, at: int = 0) -> bytes:
    return h[:at] + bytes([h[at] ^ 0x08]) + h[at + 1:]


# --- known-answer vectors ----------------------------------------------------------------------------
# From transparency-dev/merkle (the Trillian / certificate-transparency-go Merkle code):
# testonly/constants.go (LeafInputs, RootHashes, NodeHashes) and proof/verify_test.go
# (inclusionProofs with 1-based leaf numbers, consistencyProofs).

CT_INPUTS = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f")]
CT_ROOTS = [bytes.fromhex(h) for h in (
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",  # size 0
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",  # size 8
)]
CT_LEAF_HASHES = [bytes.fromhex(h) for h in (
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
    "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
    "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
    "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
)]
CT_INCLUSION = [  # (0-based index, tree size, path)
    (0, 1, []),
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
CT_CONSISTENCY = [  # (old size, new size, proof)
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def test_known_answer_hashes_and_roots():
    assert EMPTY_ROOT == CT_ROOTS[0] == root([]) == MerkleAccumulator().root()
    hashed = [leaf_hash(d) for d in CT_INPUTS]
    assert hashed == CT_LEAF_HASHES
    for n in range(9):
        assert root(hashed[:n]) == CT_ROOTS[n], n
    acc = MerkleAccumulator()
    for n, h in enumerate(hashed, 1):
        acc.append(h)
        assert acc.root() == CT_ROOTS[n]
    assert node_hash(hashed[0], hashed[1]) == CT_ROOTS[2]


@pytest.mark.parametrize("index,size,path", CT_INCLUSION)
def test_known_answer_inclusion(index, size, path):
    hashed = [leaf_hash(d) for d in CT_INPUTS]
    proof = [bytes.fromhex(h) for h in path]
    assert inclusion_proof(index, hashed[:size]) == proof
    assert verify_inclusion(hashed[index], index, size, proof, CT_ROOTS[size])
    # transparency-dev's corruptInclusionProof probes, same roots
    r, leaf = CT_ROOTS[size], hashed[index]
    bad = [(index - 1, size, r, leaf, proof), (index + 1, size, r, leaf, proof), (index ^ 2, size, r, leaf, proof),
           (index, size * 2, r, leaf, proof), (index, size // 2, r, leaf, proof),
           (index, size, r, SOME_HASH, proof), (index, size, EMPTY_ROOT, leaf, proof), (index, size, SOME_HASH, leaf, proof),
           (index, size, r, leaf, proof + [r]), (index, size, r, leaf, [r] + proof),
           (index, size, r, leaf, proof + [b""]), (index, size, r, leaf, [b""] + proof)]
    bad += [(index, size, r, leaf, proof[:i] + [flip(p)] + proof[i + 1:]) for i, p in enumerate(proof)]
    if proof:
        bad.append((index, size, r, leaf, proof[:-1]))
    if len(proof) > 1:
        bad.append((index, size, r, leaf, [proof[0], SOME_HASH] + proof[1:]))
    for i, s, rt, lf, pf in bad:
        assert not verify_inclusion(lf, i, s, pf, rt), (i, s, rt.hex(), lf.hex(), pf)


@pytest.mark.parametrize("old,new,path", CT_CONSISTENCY)
def test_known_answer_consistency(old, new, path):
    hashed = [leaf_hash(d) for d in CT_INPUTS]
    proof = [bytes.fromhex(h) for h in path]
    assert consistency_proof(old, hashed[:new]) == proof
    r1, r2 = CT_ROOTS[old], CT_ROOTS[new]
    assert verify_consistency(old, new, r1, r2, proof)
    if not proof:
        return
    # transparency-dev's corruptConsistencyProof probes
    bad = [(old - 1, new, r1, r2, proof), (old + 1, new, r1, r2, proof), (old ^ 2, new, r1, r2, proof),
           (old, new * 2, r1, r2, proof), (old, new // 2, r1, r2, proof),
           (old, new, SOME_HASH, r2, proof), (old, new, r1, SOME_HASH, proof), (old, new, r2, r1, proof),
           (old, new, r1, r2, []), (old, new, r1, r2, proof + [b""]), (old, new, r1, r2, proof + [r1]),
           (old, new, r1, r2, proof + [r2]), (old, new, r1, r2, [b""] + proof), (old, new, r1, r2, [r1] + proof),
           (old, new, r1, r2, [r2] + proof), (old, new, r1, r2, [proof[0]] + proof), (old, new, r1, r2, proof[:-1])]
    bad += [(old, new, r1, r2, proof[:i] + [flip(p)] + proof[i + 1:]) for i, p in enumerate(proof)]
    for o, n, a, b, pf in bad:
        assert not verify_consistency(o, n, a, b, pf), (o, n, pf)


# --- against the recursive reference -----------------------------------------------------------------

def test_root_matches_reference_for_every_size_to_300():
    leaves = leaves_for(300)
    acc = MerkleAccumulator()
    assert root([]) == ref_mth([]) == acc.root()
    for n in range(1, 301):
        acc.append(leaves[n - 1])
        expected = ref_mth(leaves[:n])
        assert root(leaves[:n]) == expected, n
        assert acc.root() == expected and acc.size == len(acc) == n, n
        assert len(acc._peaks) == bin(n).count("1")  # O(log n) state: one peak per set bit


def test_inclusion_every_index_to_70():
    leaves = leaves_for(70, seed=1)
    for n in range(1, 71):
        tree, r = leaves[:n], ref_mth(leaves[:n])
        for i in range(n):
            proof = inclusion_proof(i, tree)
            assert proof == ref_path(i, tree), (i, n)
            assert verify_inclusion(tree[i], i, n, proof, r), (i, n)


def _inclusion_tampering(tree: list[bytes], i: int, roots: dict[int, bytes]):
    n, proof, r = len(tree), inclusion_proof(i, tree), roots[len(tree)]
    assert verify_inclusion(tree[i], i, n, proof, r)
    assert not verify_inclusion(flip(tree[i], 31), i, n, proof, r)
    assert not verify_inclusion(tree[i], i, n, proof, flip(r, 5))
    for j in range(len(proof)):
        assert not verify_inclusion(tree[i], i, n, proof[:j] + [flip(proof[j], j % 32)] + proof[j + 1:], r)
    for wrong in {i - 1, i + 1, i ^ 1, i ^ 2, n, n + 5, -1} - {i}:
        assert not verify_inclusion(tree[i], wrong, n, proof, r), (i, n, wrong)
    for wrong in {n - 1, n + 1, 2 * n, n // 2, 0} - {n}:
        # a wrong size never verifies against the root a checkpoint would carry for that size
        assert not verify_inclusion(tree[i], i, wrong, proof, roots.get(wrong, r)), (i, n, wrong)
    if proof:
        assert not verify_inclusion(tree[i], i, n, proof[:-1], r)
        assert not verify_inclusion(tree[i], i, n, proof[1:], r)
    assert not verify_inclusion(tree[i], i, n, proof + [SOME_HASH], r)
    assert not verify_inclusion(tree[i], i, n, proof + [r], r)
    assert not verify_inclusion(tree[i], i, n, [SOME_HASH] + proof, r)
    assert not verify_inclusion(r, i, n, proof, tree[i]) or n == 1  # swapped leaf and root


def test_inclusion_tampering_every_index_to_40():
    leaves = leaves_for(81, seed=2)
    roots = {s: ref_mth(leaves[:s]) for s in range(0, 81)}
    for n in range(1, 41):
        for i in range(n):
            _inclusion_tampering(leaves[:n], i, roots)


def test_inclusion_random_indices_1000():
    rng = random.Random(1000)
    leaves = leaves_for(2001, seed=3)
    tree = leaves[:1000]
    roots = {s: root(leaves[:s]) for s in (999, 1000, 1001, 2000, 500, 0)}
    for i in [0, 1, 511, 512, 998, 999] + rng.sample(range(1000), 40):
        proof = inclusion_proof(i, tree)
        assert proof == ref_path(i, tree)
        assert verify_inclusion(tree[i], i, 1000, proof, roots[1000])
        _inclusion_tampering(tree, i, roots)


def test_consistency_every_pair_to_40():
    leaves = leaves_for(40, seed=4)
    roots = [ref_mth(leaves[:s]) for s in range(41)]
    for n in range(1, 41):
        for m in range(1, n + 1):
            proof = consistency_proof(m, leaves[:n])
            assert proof == ref_proof(m, leaves[:n]), (m, n)
            assert verify_consistency(m, n, roots[m], roots[n], proof), (m, n)
            if m == n:
                assert proof == []
                assert not verify_consistency(m, n, roots[m], SOME_HASH, proof)
                assert not verify_consistency(m, n, roots[m], roots[m], [SOME_HASH])
                continue
            r1, r2 = roots[m], roots[n]
            assert not verify_consistency(m, n, r2, r1, proof), (m, n)  # swapped roots
            assert not verify_consistency(m, n, flip(r1), r2, proof)
            assert not verify_consistency(m, n, r1, flip(r2), proof)
            for j in range(len(proof)):
                assert not verify_consistency(m, n, r1, r2, proof[:j] + [flip(proof[j])] + proof[j + 1:]), (m, n, j)
            assert not verify_consistency(m, n, r1, r2, proof[:-1])
            assert not verify_consistency(m, n, r1, r2, proof[1:])
            assert not verify_consistency(m, n, r1, r2, proof + [SOME_HASH])
            assert not verify_consistency(m, n, r1, r2, [SOME_HASH] + proof)
            assert not verify_consistency(m, n, r1, r2, [])
            assert not verify_consistency(n, m, r1, r2, proof)
            # wrong sizes, each against the roots a checkpoint would carry for those sizes
            for m2 in {m - 1, m + 1, m ^ 2, m * 2} - {m}:
                if 1 <= m2 < n:
                    assert not verify_consistency(m2, n, roots[m2], r2, proof), (m, n, m2)
            for n2 in {n - 1, n + 1, n * 2, n // 2} - {n}:
                if m < n2 <= 40:
                    assert not verify_consistency(m, n2, r1, roots[n2], proof), (m, n, n2)


def test_trivial_and_malformed_inputs_are_false_not_errors():
    leaves = leaves_for(8)
    r8, r1 = root(leaves), leaves[0]
    assert verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    assert verify_consistency(0, 8, EMPTY_ROOT, r8, [])
    assert not verify_consistency(0, 8, SOME_HASH, r8, [])
    assert not verify_consistency(0, 8, EMPTY_ROOT, r8, [SOME_HASH])
    assert verify_consistency(1, 1, r1, r1, [])
    assert consistency_proof(0, leaves) == [] and consistency_proof(8, leaves) == []
    good = inclusion_proof(3, leaves)
    junk = [None, "ab" * 32, 3.0, b"\x00" * 31, b"\x00" * 33, bytearray(33), True, object()]
    for x in junk:
        assert not verify_inclusion(x, 3, 8, good, r8)
        assert not verify_inclusion(leaves[3], 3, 8, good, x)
        assert not verify_inclusion(leaves[3], x, 8, good, r8)
        assert not verify_inclusion(leaves[3], 3, x, good, r8)
        assert not verify_inclusion(leaves[3], 3, 8, x, r8)
        assert not verify_inclusion(leaves[3], 3, 8, good[:1] + [x] + good[2:], r8)
        assert not verify_consistency(x, 8, r1, r8, consistency_proof(1, leaves))
        assert not verify_consistency(1, x, r1, r8, consistency_proof(1, leaves))
        assert not verify_consistency(1, 8, x, r8, consistency_proof(1, leaves))
        assert not verify_consistency(1, 8, r1, x, consistency_proof(1, leaves))
        assert not verify_consistency(1, 8, r1, r8, x)
    assert not verify_inclusion(leaves[3], 3, 8, iter(good), r8)
    assert verify_inclusion(bytearray(leaves[3]), 3, 8, tuple(good), bytearray(r8))
    assert not verify_inclusion(leaves[0], 0, 0, [], EMPTY_ROOT)
    assert not verify_inclusion(leaves[0], 0, 1, [leaves[0]] * 200, leaves[0])
    assert not verify_consistency(3, 8, root(leaves[:3]), r8, [SOME_HASH] * 200)
    with pytest.raises(IndexError):
        inclusion_proof(8, leaves)
    with pytest.raises(IndexError):
        inclusion_proof(-1, leaves)
    with pytest.raises(ValueError):
        consistency_proof(9, leaves)


# --- scale -------------------------------------------------------------------------------------------

def test_100k_leaves_streaming_and_timings():
    n = 100_000
    leaves = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(n)]
    t0 = time.perf_counter()
    full = root(leaves)
    t_root = time.perf_counter() - t0
    acc, checkpoints, seen = MerkleAccumulator(), {1, 4096, 65_535, 65_536, 65_537, 99_999, n}, {}
    for h in leaves:
        acc.append(h)
        if acc.size in checkpoints:
            seen[acc.size] = acc.root()
    assert seen[n] == full and len(acc._peaks) == bin(n).count("1")
    for s in (4096, 65_535, 65_536, 65_537):
        assert seen[s] == root(leaves[:s])
    t0 = time.perf_counter()
    proof = inclusion_proof(54_321, leaves)
    t_incl = time.perf_counter() - t0
    assert verify_inclusion(leaves[54_321], 54_321, n, proof, full)
    t0 = time.perf_counter()
    cproof = consistency_proof(65_537, leaves)
    t_cons = time.perf_counter() - t0
    assert verify_consistency(65_537, n, seen[65_537], full, cproof)
    print(f"\n100k leaves: root {t_root:.3f}s, inclusion proof {t_incl:.3f}s, consistency proof {t_cons:.3f}s")
    # generous bounds (shared CI machines); they catch O(n log n) or quadratic regressions
    assert t_root < 1.5 and t_incl < 2.0 and t_cons < 2.0
