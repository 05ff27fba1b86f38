"""Fuzz the store readers: mutated valid files, read by the C++ core and by cedstore.reference.

Each input is a valid seed store (written by the library at start-up) with structured
mutations (header fields, metadata JSON, key table, epoch table, records, truncation) or raw
byte changes, optionally with its checksums recomputed so that the deeper checks are reached.
Input `i` of seed `s` is fully determined by (s, i). A worker subprocess reads each input with
both readers (open, written, topk, dense, lookup, verify); the parent restarts a worker that
dies or hangs. Saved to the crash folder, with a .txt that says why and how to replay:

  crash     the worker died (a signal, e.g. SIGSEGV, or a sanitizer report) or exited
  hang      no answer within the timeout
  unexpected  an exception outside the documented ones (CedStoreError, IndexError)
  disagree  the core and the reference read the file differently (or refuse it differently)
  message   the same outcome, worded differently (saved and listed; not a failed run)

    python tests/cedstore/fuzz_store.py --seconds 3600           # `make fuzz FUZZ_SECONDS=3600`
    python tests/cedstore/fuzz_store.py --inputs 100000 --seed 7 --jobs 4
    python tests/cedstore/fuzz_store.py --replay fuzz-crashes/disagree-7-123.ced
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import random
import re
import select
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib

import numpy as np

import cedstore
from cedstore import format as F
from cedstore.reference import ReferenceReader

EXPECTED_ERRORS = (cedstore.CedStoreError, IndexError)

# --- seed stores -----------------------------------------------------------------------------


def write_seeds(folder: str) -> list[bytes]:
    """Valid stores of several shapes, written by the public API: keys or not, k = 1 or k = C,
    sealed, open, partly written, logits, nested metadata."""
    rng = np.random.default_rng(0)
    shapes = [  # (k, num_classes, num_samples, num_epochs, keys, written per epoch, value_kind)
        (3, 9, 5, 2, ["b", "a", "c", "e", "d"], [5, 5], "probability"),
        (1, 1, 3, 1, None, [2], "probability"),
        (4, 4, 4, 3, ["é/1.wav", "z#0-1", "a", "ü"], [4, 2, 0], "logit"),
        (20, 527, 6, 1, [f"clip{i}.flac" for i in range(6)], [6], "probability"),
    ]
    wide_shapes = [  # int32 class indices (format 1.2): odd k (padding) with few classes, and C past int16
        (3, 5, 4, 2, ["d", "c", "b", "a"], [4, 1], "probability", np.int32),
        (2, 40_000, 3, 1, None, [3], "logit", None),
    ]
    seeds = []
    for n, (k, c, num_samples, num_epochs, keys, counts, kind, *index_dtype) in enumerate(shapes + wide_shapes):
        path = os.path.join(folder, f"seed{n}.ced")
        metadata = {"activation": "sigmoid", "tail_policy": "zero", "user": {"n": n, "x": [1.5, None, {"y": True}]}}
        with cedstore.create(path, num_classes=c, k=k, num_samples=num_samples, num_epochs=num_epochs, keys=keys,
                             metadata=metadata, value_kind=kind, overwrite=True,
                             index_dtype=index_dtype[0] if index_dtype else None) as w:
            for epoch, count in enumerate(counts):
                if count:
                    probs = rng.random((count, c), dtype=np.float32) * (8 if kind == "logit" else 1)
                    w.write(epoch, np.arange(count), probs=probs, seeds=rng.integers(-(2**31), 2**31, count))
        with open(path, "rb") as f:
            seeds.append(f.read())
    return seeds


# --- mutations -------------------------------------------------------------------------------

def _header_fields() -> list[tuple[str, int, str]]:
    """(name, offset, struct code) of each integer header field, from format.HEADER_FORMAT."""
    fields, offset = [], 0
    codes = re.findall(r"(\d*)([a-zA-Z])", F.HEADER_FORMAT[1:])
    for field, (count, code) in zip(dataclasses.fields(F.Header), codes):
        if code != "s":
            fields.append((field.name, offset, "<" + code))
        offset += struct.calcsize("<" + count + code)
    return fields


_FIELDS = _header_fields()


def _header(buf) -> F.Header:
    return F.Header(*struct.unpack_from(F.HEADER_FORMAT, buf, 0))


def reseal(buf: bytearray, epochs: bool = True) -> bytearray:
    """Recompute the checksums a mutation broke: sections CRC, header CRC, sealed epochs' CRCs."""
    if len(buf) < F.HEADER_SIZE:
        return buf
    h = _header(buf)
    if epochs and h.epoch_table_offset + 8 * h.num_epochs <= len(buf) and h.num_epochs < 4096:
        for e in range(h.num_epochs):
            entry = h.epoch_table_offset + 8 * e
            start = h.records_offset + e * h.num_samples * h.record_size
            if buf[entry:entry + 4] == b"\1\0\0\0" and start + h.num_samples * h.record_size <= len(buf):
                struct.pack_into("<I", buf, entry + 4, zlib.crc32(buf[start:start + h.num_samples * h.record_size]))
    if hasattr(F, "sections_crc") and h.epoch_table_offset <= len(buf):
        h = dataclasses.replace(h, sections_crc=F.sections_crc(bytes(buf), h))
    buf[:F.HEADER_SIZE] = h.pack()
    return buf


def _interesting(rng: random.Random, current: int, bits: int) -> int:
    top = 2**bits
    value = rng.choice([0, 1, 2, 4, 7, 8, 128, 4096, top - 1, top // 2, top // 2 - 1, current - 1, current + 1,
                        current * 2, current // 2, rng.randrange(top), 2**31, 2**32 - 1, 2**63])
    return value % top


def mutate_header(rng, buf, h):
    name, offset, code = rng.choice(_FIELDS)
    size = struct.calcsize(code)
    (current,) = struct.unpack_from(code, buf, offset)
    value = _interesting(rng, current, 8 * size)
    struct.pack_into(code, buf, offset, value)
    if name != "header_crc" and rng.random() < 0.8:  # past the header CRC, to the field checks
        struct.pack_into("<I", buf, 124, zlib.crc32(buf[:124]))
        return buf, f"header {name} = {value}, header CRC recomputed"
    return buf, f"header {name} = {value}"


def _json_variants(rng: random.Random) -> bytes:
    depth = rng.choice([63, 64, 65, 100, 100000])
    number = rng.choice(["1e308", "1e309", "-1e400", "5e-324", "1e-400", "9223372036854775807", "18446744073709551615",
                         "18446744073709551616", "-9223372036854775808", "-9223372036854775809", "NaN", "-Infinity",
                         "0" * 30, "1" * 5000, "-0", "1.0e+2", "01", ".5", "1e", "-"])
    return rng.choice([
        b'{"writer":"x","user":' + b"[" * (depth - 2) + b"{}" + b"]" * (depth - 2) + b"}",
        b'{"writer":"x","t":' + number.encode() + b"}",
        b'{"writer":"x","writer":"y"}',
        b'{"writer":"x","user":{"a":1,"b":{"a":2,"a":3}}}',
        b'{"writer":"x","t":"\\ud800"}',
        b'{"writer":"x","t":"\\ud83d\\ude00","\\u0000":"\\"["}',
        b'{"writer":"x","t":"' + b"\\" * rng.randrange(1, 4) + b'"[' * 50,
        b'{"writer":"x","t":"\xff"}',
        b"\xef\xbb\xbf{\"writer\":\"x\"}",
        b'{"writer":1}',
        b'{"writer":"x","activation":"tanh","label_space":[]}',
        b'["writer"]',
        b"{}",
        b"  ",
        b'{"writer":"x"}' + b" " * rng.randrange(0, 40) + rng.choice([b"", b"x", b"{}", b"\0"]),
    ])


def _assemble(h: F.Header, metadata: bytes, key_table: bytes, epoch_table: bytes, records: bytes) -> bytearray:
    """The file for new metadata or key table bytes, every other section as it was."""
    new = F.layout(h.k, h.num_classes, h.num_samples, h.num_epochs, h.value_kind, len(metadata), len(key_table),
                   h.index_width)
    new = dataclasses.replace(new, **{f: getattr(h, f) for f in ("version", "version_minor") if hasattr(h, f)})
    out = bytearray(new.records_offset + len(records))
    for offset, section in [(0, new.pack()), (F.HEADER_SIZE, metadata), (new.keys_offset, key_table),
                            (new.epoch_table_offset, epoch_table), (new.records_offset, records)]:
        out[offset:offset + len(section)] = section
    return reseal(out, epochs=False)


def _sections(buf, h):
    return (bytes(buf[F.HEADER_SIZE:F.HEADER_SIZE + h.metadata_length]),
            bytes(buf[h.keys_offset:h.keys_offset + h.keys_length]),
            bytes(buf[h.epoch_table_offset:h.epoch_table_offset + h.epoch_table_length]),
            bytes(buf[h.records_offset:]))


def mutate_metadata(rng, buf, h):
    metadata, keys, table, records = _sections(buf, h)
    if rng.random() < 0.5:
        new = _json_variants(rng)
    else:  # a small edit of the valid JSON
        new = bytearray(metadata)
        for _ in range(rng.randrange(1, 4)):
            position = rng.randrange(len(new))
            new[position:position + rng.randrange(0, 3)] = bytes(rng.choice(b'{}[]",:\\ 0e-9.x') for _ in range(rng.randrange(0, 3)))
        new = bytes(new)
    return _assemble(h, new, keys, table, records), f"metadata = {new[:60]!r}"


def mutate_key_table(rng, buf, h):
    metadata, keys, table, records = _sections(buf, h)
    n = h.num_samples
    if not keys or rng.random() < 0.2:  # a table where there was none, or from bad key lists
        names = [rng.choice(["a", "b", "", "é", "a\0", "zz"]) for _ in range(n)]
        encoded = [s.encode() for s in names]
        order = sorted(range(n), key=lambda i: encoded[i])
        if rng.random() < 0.5:
            rng.shuffle(order)
        ends = np.concatenate([[0], np.cumsum([len(e) for e in encoded])]).astype("<u8")
        new = bytearray(struct.pack("<QQ", n, int(ends[-1])) + ends.tobytes()
                        + np.asarray(order, "<u8").tobytes() + b"".join(encoded))
        what = f"key table from {names}"
    else:
        new = bytearray(keys)
        slot = rng.choice(["num_keys", "blob_length", "ends", "order", "blob", "length"])
        if slot == "length":
            new = new[:rng.randrange(len(new))] if rng.random() < 0.5 else new + bytes(rng.randrange(1, 9))
        elif slot == "blob":
            position = 16 + 16 * n + 8 + rng.randrange(max(1, len(new) - 16 - 16 * n - 8))
            if position < len(new):
                new[position] = rng.choice([0, 0x60, 0x80, 0xC3, 0xFF, rng.randrange(256)])
        else:
            position = {"num_keys": 0, "blob_length": 8, "ends": 16 + 8 * rng.randrange(n + 1),
                        "order": 16 + 8 * (n + 1) + 8 * rng.randrange(n)}[slot]
            (current,) = struct.unpack_from("<Q", new, position)
            struct.pack_into("<Q", new, position, _interesting(rng, current, 64))
        what = f"key table {slot}"
    return _assemble(h, metadata, bytes(new), table, records), what


def mutate_epoch_table(rng, buf, h):
    entry = h.epoch_table_offset + 8 * rng.randrange(h.num_epochs)
    word = rng.choice([0, 4])
    value = rng.choice([0, 1, 2, 0xFFFFFFFF, rng.randrange(2**32)])
    struct.pack_into("<I", buf, entry + word, value)
    return reseal(buf, epochs=rng.random() < 0.5), f"epoch entry at {entry} word {word} = {value}"


def mutate_record(rng, buf, h):
    k = h.k
    epoch, sample = rng.randrange(h.num_epochs), rng.randrange(h.num_samples)
    start = h.records_offset + (epoch * h.num_samples + sample) * h.record_size
    what = rng.choice(["index", "value", "seed", "unwrite", "padding", "random"])
    j = rng.randrange(k)
    _, indices = F.record_layout(k, h.index_width)
    width = h.index_dtype.itemsize
    code = "<h" if width == 2 else "<i"
    if what == "index":
        extremes = [32767, -32768] if width == 2 else [32767, 32768, 65535, 2**31 - 1, -(2**31)]
        struct.pack_into(code, buf, start + indices + width * j,
                         rng.choice([-1, -2, h.num_classes, h.num_classes - 1, 0, *extremes]))
    elif what == "value":
        struct.pack_into("<H", buf, start + 2 * j, rng.choice([0x7C00, 0xFC00, 0x7E00, 0x7BFF, 0x3C00, 0x8000, 0]))
    elif what == "seed":
        struct.pack_into("<i", buf, start + indices + width * k, rng.randrange(-(2**31), 2**31))
    elif what == "unwrite":
        buf[start + indices:start + indices + width] = b"\xff" * width
    elif what == "padding":  # the two bytes after the values of a wide record of odd k (else a value)
        buf[start + 2 * k - 2:start + indices] = bytes(rng.randrange(256) for _ in range(indices - 2 * k + 2))
    else:
        buf[start:start + h.record_size] = bytes(rng.randrange(256) for _ in range(h.record_size))
    return reseal(buf, epochs=rng.random() < 0.7), f"record epoch {epoch} sample {sample}: {what} {j}"


def mutate_length(rng, buf, h):
    if rng.random() < 0.7:
        cuts = [0, 1, 127, 128, h.keys_offset, h.epoch_table_offset, h.records_offset, len(buf) - 1,
                rng.randrange(len(buf))]
        length = rng.choice(cuts)
        return buf[:length], f"truncated to {length}"
    extra = rng.choice([1, 7, 8, 4096, min(h.record_size, 4096)])  # the header may be mutated already
    return buf + bytes(extra), f"{extra} bytes appended"


def mutate_bytes(rng, buf, h):
    changes = []
    for _ in range(rng.randrange(1, 9)):
        position = rng.randrange(len(buf))
        value = rng.choice([buf[position] ^ (1 << rng.randrange(8)), 0, 0xFF, rng.randrange(256)])
        buf[position] = value
        changes.append(f"{position}={value}")
    if rng.random() < 0.5:
        buf = reseal(buf)
        changes.append("resealed")
    return buf, "bytes " + " ".join(changes)


MUTATIONS = [mutate_header, mutate_metadata, mutate_key_table, mutate_epoch_table, mutate_record,
             mutate_length, mutate_bytes]
RAW_MUTATIONS = [mutate_header, mutate_length, mutate_bytes]  # safe whatever the header says


def _describes(h: F.Header, buf: bytearray) -> bool:
    """Whether the header still lays out exactly this buffer: only then do the structured
    mutations follow its fields (a mutated num_epochs could ask for an epoch table of 32 GiB)."""
    if h.index_width not in F.INDEX_WIDTHS or h.k < 1 or h.num_samples < 1 or h.num_epochs < 1:
        return False
    if h.record_size != F.record_layout(h.k, h.index_width)[0]:
        return False
    expected = F.layout(h.k, h.num_classes, h.num_samples, h.num_epochs, h.value_kind, h.metadata_length,
                        h.keys_length, h.index_width)
    fields = ("metadata_offset", "keys_offset", "epoch_table_offset", "records_offset", "records_length")
    return expected.file_size == len(buf) and all(getattr(h, f) == getattr(expected, f) for f in fields)


def make_input(seeds: list[bytes], seed: int, index: int) -> tuple[bytes, str]:
    """Input `index` of run `seed`: a seed store with 1-3 mutations, and what they were."""
    rng = random.Random(f"{seed}:{index}")
    n = rng.randrange(len(seeds))
    buf, steps = bytearray(seeds[n]), [f"seed store {n}"]
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        if len(buf) < F.HEADER_SIZE:
            break
        try:
            h = _header(buf)
        except struct.error:
            break
        mutation = rng.choice(MUTATIONS if _describes(h, buf) else RAW_MUTATIONS)
        try:
            buf, what = mutation(rng, buf, h)
        except (IndexError, ValueError, struct.error, OverflowError, MemoryError) as e:  # a header too broken to follow
            what = f"{mutation.__name__} skipped ({type(e).__name__})"
        steps.append(what)
    return bytes(buf), "; ".join(steps)


# --- the check (run in the worker) -----------------------------------------------------------


def _digest(value) -> str:
    if isinstance(value, tuple):
        return ",".join(_digest(v) for v in value)
    if isinstance(value, np.ndarray):
        return f"{value.dtype}{value.shape}:" + hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()[:16]
    return repr(value)


def _call(function) -> list:
    try:
        return ["ok", _digest(function())]
    except EXPECTED_ERRORS as e:
        return ["error", type(e).__name__, str(e)]


def observe(reader, path: str) -> list:
    """What one reader (cedstore.open or ReferenceReader) makes of the file, step by step."""
    try:
        store = reader(path)
    except EXPECTED_ERRORS as e:
        return [["open", "error", type(e).__name__, str(e)]]
    keys = store.keys
    steps = [["open", store.k, store.num_classes, store.num_samples, store.num_epochs, store.has_keys,
              json.dumps(store.metadata, sort_keys=True), keys]]
    for epoch in range(store.num_epochs):
        written = store.written(epoch)
        ids = np.flatnonzero(written)
        steps.append(["written", epoch, _digest(written)])
        steps.append(["topk", epoch, _call(lambda: store.topk(epoch, ids))])
        steps.append(["dense", epoch, _call(lambda: store.dense(epoch, ids, fill=-1.0))])
    if keys:
        steps.append(["lookup", _call(lambda: store.lookup(keys[::-1] + ["\0absent"]))])
    steps.append(["verify", _call(lambda: store.verify(require_complete=False))])
    return steps


_FLOAT = re.compile(r"-?\d+\.\d+(?:e[-+]?\d+)?")


def _outcome(steps: list) -> list:
    """The steps without error messages: what was read, and which error type refused what."""
    return json.loads(re.sub(r'"(\w+Error)", "(?:[^"\\]|\\.)*"', r'"\1"', json.dumps(steps)))


def _normalized(steps: list) -> list:
    """The steps with numbers in messages at 6 significant digits (C++ prints floats with %g)."""
    return json.loads(_FLOAT.sub(lambda m: format(float(m.group()), ".6g"), json.dumps(steps)))


def check(path: str) -> dict:
    """Both readers on one file. The verdict is "agree", "unexpected" (an undocumented
    exception), "disagree" (different data, or refused at a different step or with a
    different error type) or "message" (the same outcome, worded differently)."""
    result = {}
    for name, reader in (("core", cedstore.open), ("reference", ReferenceReader)):
        try:
            result[name] = observe(reader, path)
        except Exception as e:  # noqa: BLE001  (anything else is what the fuzzer looks for)
            result[name] = [["unexpected", type(e).__name__, str(e)[:500]]]
            result["verdict"] = "unexpected"
    core, reference = result["core"], result["reference"]
    if _outcome(core) != _outcome(reference):
        result.setdefault("verdict", "disagree")
    result.setdefault("verdict", "agree" if _normalized(core) == _normalized(reference) else "message")
    result["opened"] = result["core"][0][0] == "open" and result["core"][0][1] != "error"
    return result


def worker() -> None:
    """Read paths from stdin, answer one JSON line each on stdout."""
    for line in sys.stdin:
        print(json.dumps(check(line.rstrip("\n"))), flush=True)


# --- the driver (parent process) -------------------------------------------------------------


class Worker:
    """A worker subprocess; restarted after it dies or hangs."""

    def __init__(self, folder: str, timeout: float, command: list[str] | None = None):
        self.folder, self.timeout, self.process = folder, timeout, None
        self.command = command or [sys.executable, os.path.abspath(__file__), "--worker"]
        self.stderr_path = os.path.join(folder, f"worker{threading.get_ident()}.stderr")

    def _start(self) -> None:
        self.stderr = open(self.stderr_path, "wb")
        self.process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.stderr, text=True)

    def run(self, path: str) -> tuple[str, dict | str]:
        """("ok", result) or ("crash" | "hang", what the worker said on stderr)."""
        if self.process is None:
            self._start()
        try:
            self.process.stdin.write(path + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass
        ready, _, _ = select.select([self.process.stdout], [], [], self.timeout)
        line = self.process.stdout.readline() if ready else ""
        if line:
            return "ok", json.loads(line)
        kind = "crash" if ready else "hang"
        self.process.kill()
        status = self.process.wait()
        self.stop()
        with open(self.stderr_path, "rb") as f:
            return kind, f"exit status {status}\n" + f.read()[-8000:].decode("utf-8", "replace")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stdin.close()
            self.process.stdout.close()
            self.process.wait()
            self.stderr.close()
            self.process = None


@dataclasses.dataclass
class Report:
    inputs: int = 0
    opened: int = 0
    refused: int = 0
    findings: list = dataclasses.field(default_factory=list)  # (kind, saved file)

    @property
    def failures(self) -> list:
        return [(kind, path) for kind, path in self.findings if kind != "message"]

    def __str__(self) -> str:
        return (f"{self.inputs} inputs: {self.opened} opened, {self.refused} refused by both readers, "
                f"{len(self.failures)} failures, {len(self.findings) - len(self.failures)} worded differently")


def fuzz(seed: int = 0, num_inputs: int | None = None, seconds: float | None = None, crashes: str = "fuzz-crashes",
         jobs: int = 1, timeout: float = 20.0, log=None, worker_command: list[str] | None = None) -> Report:
    """Run inputs seed:0, seed:1, ... until `num_inputs` or `seconds`; findings are saved in `crashes`."""
    report, lock, deadline = Report(), threading.Lock(), time.monotonic() + (seconds or float("inf"))
    with tempfile.TemporaryDirectory(prefix="cedstore-fuzz-") as folder:
        seeds = write_seeds(folder)
        local = threading.local()
        workers = []

        def one(index: int) -> None:
            if time.monotonic() > deadline:
                return
            if not hasattr(local, "worker"):
                local.worker = Worker(folder, timeout, worker_command)
                with lock:
                    workers.append(local.worker)
            data, what = make_input(seeds, seed, index)
            path = os.path.join(folder, f"input{threading.get_ident()}.ced")
            with open(path, "wb") as f:
                f.write(data)
            kind, result = local.worker.run(path)
            if kind == "ok":
                kind = {"agree": None}.get(result["verdict"], result["verdict"])
            with lock:
                report.inputs += 1
                if kind is None:
                    report.opened += result["opened"]
                    report.refused += not result["opened"]
                    return
                os.makedirs(crashes, exist_ok=True)
                saved = os.path.join(crashes, f"{kind}-{seed}-{index}.ced")
                with open(saved, "wb") as f:
                    f.write(data)
                with open(saved[:-4] + ".txt", "w") as f:
                    detail = result if isinstance(result, str) else json.dumps(result, indent=1)
                    f.write(f"{kind}: input {seed}:{index}: {what}\nreplay: python {__file__} --replay {saved}\n\n{detail}\n")
                report.findings.append((kind, saved))
                if log:
                    print(f"{kind}: {saved}: {what}", file=log, flush=True)

        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            pending = set()
            for index in range(num_inputs) if num_inputs is not None else _count():
                if time.monotonic() > deadline:
                    break
                pending.add(pool.submit(one, index))
                if len(pending) >= 4 * jobs:
                    done, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                    for future in done:
                        future.result()
            for future in concurrent.futures.as_completed(pending):
                future.result()
        for w in workers:
            w.stop()
    return report


def _count():
    index = 0
    while True:
        yield index
        index += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="run seed: input i of seed s is always the same (default 0)")
    parser.add_argument("--inputs", type=int, help="number of inputs (default: until --seconds)")
    parser.add_argument("--seconds", type=float, help="stop after this long (default: 60 without --inputs)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds an input may take (default 20)")
    parser.add_argument("--crashes", default="fuzz-crashes", help="where findings are saved (default fuzz-crashes)")
    parser.add_argument("--replay", help="check one saved input in this process and print the result")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker()
        return 0
    if args.replay:
        print(json.dumps(check(args.replay), indent=1))
        return 0
    seconds = args.seconds if args.seconds is not None or args.inputs is not None else 60.0
    start = time.monotonic()
    report = fuzz(args.seed, args.inputs, seconds, args.crashes, args.jobs, args.timeout, log=sys.stderr)
    print(f"{report} in {time.monotonic() - start:.0f} s (seed {args.seed})")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
