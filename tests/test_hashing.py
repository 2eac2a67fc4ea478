"""One copy of content hashing: a file's sha256 and a tree's (relative paths and bytes)."""

from __future__ import annotations

import hashlib

from pizzactl.hashing import files_tree_hash, sha256_bytes, sha256_file, tree_hash


def test_sha256_file_reads_in_chunks_and_equals_hashlib(tmp_path):
    path = tmp_path / "big.bin"
    data = bytes(range(256)) * 9000  # > 2 chunks of 1 MiB
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_bytes(data) == hashlib.sha256(data).digest()


def test_tree_hash_changes_with_content_name_and_order_but_not_with_the_root(tmp_path):
    def tree(root, names_and_bytes):
        files = []
        for name, data in names_and_bytes:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
            files.append(root / name)
        return files

    a = tree(tmp_path / "a", [("x/1.jpg", b"one"), ("y/2.jpg", b"two")])
    base = files_tree_hash(tmp_path / "a", a)
    moved = tree(tmp_path / "elsewhere", [("x/1.jpg", b"one"), ("y/2.jpg", b"two")])
    assert files_tree_hash(tmp_path / "elsewhere", moved) == base  # only relative paths count
    assert files_tree_hash(tmp_path / "a", a[::-1]) != base
    renamed = tree(tmp_path / "b", [("x/1b.jpg", b"one"), ("y/2.jpg", b"two")])
    assert files_tree_hash(tmp_path / "b", renamed) != base
    changed = tree(tmp_path / "c", [("x/1.jpg", b"one!"), ("y/2.jpg", b"two")])
    assert files_tree_hash(tmp_path / "c", changed) != base
    assert tree_hash(tmp_path / "a", [(p, sha256_bytes(p.read_bytes())) for p in a]) == base
