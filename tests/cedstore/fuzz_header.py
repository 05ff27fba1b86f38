"""Fuzz target: open + verify + decode of a valid small store with a few bytes changed.

Not collected by pytest. With atheris installed it is a libFuzzer target; without it, it runs
random mutations. Anything but a cedstore error, IndexError or OSError is a bug (a crash is too).

    python tests/cedstore/fuzz_header.py            # 20000 random mutations
    python tests/cedstore/fuzz_header.py -runs=1e6  # with atheris
"""

import os
import random
import sys
import tempfile

import numpy as np

from cedstore import _core, errors


def template(path: str) -> bytes:
    w = _core.Writer.create(path, 3, 9, 5, 2, 0, b'{"writer":"fuzz"}', ["b", "a", "c", "e", "d"], overwrite=True)
    w.write_dense(0, np.arange(5), np.random.default_rng(0).random((5, 9), dtype=np.float32), np.arange(5))
    w.close()
    with open(path, "rb") as f:
        return f.read()


def check(path: str, base: bytes, data: bytes) -> None:
    buf = bytearray(base)
    for i in range(0, len(data) - 2, 3):  # (offset hi, offset lo, byte) triples; the tail may cut
        buf[(data[i] << 8 | data[i + 1]) % (len(buf) + 1) - 1] = data[i + 2]
    with open(path, "wb") as f:
        f.write(buf[: len(buf) - (data[-1] % 3 == 0 and len(data) % 7 == 0)])
    try:
        r = _core.Reader(path)
        r.decode_dense(0, np.arange(r.num_samples))
        r.verify(require_complete=False)
    except (errors.CedStoreError, IndexError, OSError):
        pass


def main() -> None:
    path = os.path.join(tempfile.mkdtemp(), "fuzz.ced")
    base = template(path)
    try:
        import atheris
    except ImportError:
        rng = random.Random(0)
        for _ in range(20000):
            check(path, base, bytes(rng.randrange(256) for _ in range(3 * rng.randrange(1, 6) + 1)))
        print("20000 mutations, no crash")
        return
    atheris.Setup(sys.argv, lambda data: check(path, base, data) if data else None)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
