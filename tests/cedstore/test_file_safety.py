"""Files that change or are not what they seem (issue 7, items 4, 8 and 10): a truncated file,
a FIFO, a path with a NUL byte. Each gets a documented exception, never SIGBUS or a hang."""

from __future__ import annotations

import os

import numpy as np
import pytest
from cedstore_helpers import create_store, make_teacher
from test_concurrency import make_store, run_python

import cedstore
from cedstore.errors import FormatError, InvalidInputError
from cedstore.reference import ReferenceReader


# --- item 4: truncated while open ------------------------------------------------------------

_TRUNCATE = """
    import os, sys
    import numpy as np
    import cedstore
    path = sys.argv[1]
    store = cedstore.open(path)
    writer = cedstore.resume(path)
    size = store.file_size
    os.truncate(path, size - store.num_samples * store.record_size // 2)  # cuts into epoch 1
    calls = {
        "dense": lambda: store.dense(1, [0]),
        "topk": lambda: store.topk(1, [0]),
        "records": lambda: store.records(1),
        "written": lambda: store.written(1),
        "write": lambda: writer.write(1, [0], probs=np.ones((1, store.num_classes), np.float32), seeds=[0]),
    }
    for name, call in calls.items():
        try:
            call()
            print(name, "no error")
        except cedstore.FormatError as e:
            print(name, e)
"""


def test_truncated_after_open_raises_instead_of_sigbus(tmp_path):
    path = make_store(tmp_path / "t.ced", num_samples=5000, num_epochs=2)
    size = os.path.getsize(path)
    lines = run_python(_TRUNCATE, path).splitlines()
    cut = size - 5000 * 20 // 2
    expected = (f"{path}: file is truncated: expected {size} bytes, found {cut} (it was cut while open; "
                "reading the lost records would crash with SIGBUS)")
    assert lines == [f"{name} {expected}" for name in ("dense", "topk", "records", "written", "write")]


# --- item 8: not a regular file --------------------------------------------------------------


def test_open_refuses_a_fifo_without_waiting(tmp_path):
    fifo = str(tmp_path / "pipe.ced")
    os.mkfifo(fifo)
    out = run_python("""
        import sys
        import cedstore
        from cedstore.reference import ReferenceReader
        for call in (cedstore.open, cedstore.resume, ReferenceReader, lambda p: cedstore.open(p).info()):
            try:
                call(sys.argv[1])
            except cedstore.FormatError as e:
                print(e)
    """, fifo, timeout=60)
    assert out.splitlines() == [f"{fifo}: not a cedstore file: not a regular file"] * 4


def test_open_refuses_a_directory(tmp_path):
    for call in (cedstore.open, cedstore.resume, ReferenceReader):
        with pytest.raises(IsADirectoryError):
            call(tmp_path)


# --- item 10: NUL bytes in paths -------------------------------------------------------------


def test_paths_with_a_nul_byte_are_refused(tmp_path):
    good = create_store(tmp_path / "good.ced", make_teacher())
    bad = str(tmp_path / "victim.ced") + "\0.tmp"
    calls = [
        (bad, lambda: cedstore.create(bad, num_classes=4, k=2, num_samples=3)),
        (bad, lambda: cedstore.create(bad, num_classes=4, k=2, num_samples=3, overwrite=True)),
        (bad, lambda: cedstore.resume(bad)),
        (bad, lambda: cedstore.open(bad)),
        (bad + ".partial", lambda: cedstore.merge(bad, [good])),  # merge writes out_path + ".partial" first
        (bad, lambda: cedstore.merge(tmp_path / "merged.ced", [good, bad])),
    ]
    for refused, call in calls:
        with pytest.raises(InvalidInputError) as info:
            call()
        message = f"path {refused!r}: embedded null byte at position {bad.index(chr(0))}"
        assert isinstance(info.value, ValueError) and str(info.value) == message
    assert sorted(os.listdir(tmp_path)) == ["good.ced"]  # nothing written at the cut path, no partial merge
