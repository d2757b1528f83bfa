"""The bootstrap removes a half-extracted or replaced native set even when
its directories were left read-only (as an extraction leaves them)."""

from __future__ import annotations

import os
import warnings

from ctrlexec import _bootstrap


def test_a_read_only_tree_is_removed_without_deprecation_warnings(tmp_path):
    tree = tmp_path / "set"
    (tree / "lib" / "pkg").mkdir(parents=True)
    (tree / "lib" / "pkg" / "mod.so").write_bytes(b"\x7fELF")
    (tree / "lib" / "pkg" / "mod.so").chmod(0o444)
    for directory in (tree / "lib" / "pkg", tree / "lib", tree):
        directory.chmod(0o555)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        _bootstrap._remove_tree(tree)
    assert not tree.exists()
    assert os.listdir(tmp_path) == []
