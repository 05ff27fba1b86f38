"""The ``cedstore`` command: info, verify, dump, size, merge.

Exit status: 0 on success, 1 when a file or its data is wrong, 2 for a usage error; errors are
one line on stderr, ``cedstore: error: <message>``.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

import cedstore
from cedstore.sizes import METHODS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block: scripts grep for the message
        _fail(f"{message} (see '{self.prog} --help')", 2)


def _fail(message: str, status: int):
    print(f"cedstore: error: {message}", file=sys.stderr)
    raise SystemExit(status)


def _parse_samples(text: str, num_samples: int) -> np.ndarray:
    """'a:b[:step]' (a Python slice) or 'i,j,...' to sample ids."""
    try:
        if ":" in text:
            parts = [int(p) if p else None for p in text.split(":")]
            if len(parts) > 3:
                raise ValueError
            return np.arange(num_samples)[slice(*parts)]
        return np.array([int(p) for p in text.split(",")], np.int64)
    except ValueError:
        _fail(f"--samples {text!r} is not a slice 'start:stop[:step]' or a list 'i,j,...'", 2)


def _cmd_info(args) -> None:
    with cedstore.open(args.file) as store:
        info = store.info()
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return
    print(f"{info['path']}: cedstore format {info['format_version']}, {info['value_kind']} values")
    print(f"  samples {info['num_samples']}, epochs {info['num_epochs']}, classes {info['num_classes']}, "
          f"k {info['k']}, record {info['record_size']} bytes, keys {'yes' if info['has_keys'] else 'no'}")
    print(f"  file {info['file_size']} bytes = records {info['records_bytes']} + overhead {info['overhead_bytes']}")
    for e in info["epochs"]:
        state = f"sealed crc32 {e['crc32']}" if e["sealed"] else "open"
        print(f"  epoch {e['epoch']}: {e['written']}/{info['num_samples']} written, {state}")
    print(f"  metadata {json.dumps(info['metadata'], sort_keys=True, ensure_ascii=False)}")


def _cmd_verify(args) -> None:
    with cedstore.open(args.file) as store:
        store.verify()
        print(f"{store.path}: ok ({store.num_epochs} epochs x {store.num_samples} records)")


def _cmd_dump(args) -> None:
    with cedstore.open(args.file) as store:
        ids = _parse_samples(args.samples, store.num_samples)
        bad = ids[(ids < 0) | (ids >= store.num_samples)]
        if len(bad):
            raise IndexError(f"{store.path}: sample {bad[0]} out of range [0, {store.num_samples})")
        written, keys, rows = store.written(args.epoch), store.keys, []
        for i in ids.tolist():  # per record on purpose: a dump shows unwritten records too
            row = {"sample": i, "key": keys[i] if keys else None, "written": False}
            if written[i]:
                values, indices, seeds = store.topk(args.epoch, [i])
                row.update(written=True, seed=int(seeds[0]), indices=indices[0].tolist(), values=values[0].tolist())
            rows.append(row)
    if args.json:
        print(json.dumps({"epoch": args.epoch, "records": rows}, indent=2, ensure_ascii=False))
        return
    for row in rows:
        key = f" {row['key']}" if row["key"] is not None else ""
        if not row["written"]:
            print(f"{row['sample']}{key}: unwritten")
            continue
        pairs = " ".join(f"{c}:{v:.6g}" for c, v in zip(row["indices"], row["values"]))
        print(f"{row['sample']}{key}: seed {row['seed']} {pairs}")


def _cmd_size(args) -> None:
    rows = {m: cedstore.storage_bytes(args.samples, args.classes, args.k, args.epochs, m) for m in METHODS}
    if args.json:
        print(json.dumps({m: {"bytes": b, "MB": b / 1e6, "MiB": b / 2**20} for m, b in rows.items()}, indent=2))
        return
    print(f"{args.epochs} epoch(s) x {args.samples} samples, {args.classes} classes, k={args.k}")
    for method, size in rows.items():
        print(f"  {method:5} {size:>16,} bytes {size / 1e6:>12,.2f} MB {size / 2**20:>12,.2f} MiB")


def _cmd_merge(args) -> None:
    cedstore.merge(args.out, args.shards, overwrite=args.overwrite)
    print(f"{args.out}: merged {len(args.shards)} shards")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cedstore", description="Inspect, check and merge cedstore files.")
    parser.add_argument("--version", action="version", version=f"cedstore {cedstore.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("info", help="shape, sizes, completion per epoch and metadata")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_cmd_info)
    p = sub.add_parser("verify", help="full integrity check (every record, sealed checksums)")
    p.add_argument("file")
    p.set_defaults(run=_cmd_verify)
    p = sub.add_parser("dump", help="print records of one epoch")
    p.add_argument("file")
    p.add_argument("--epoch", type=int, default=0)
    p.add_argument("--samples", default="0:10", help="'start:stop[:step]' or 'i,j,...' (default 0:10)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_cmd_dump)
    p = sub.add_parser("size", help="storage of teacher outputs: ced vs fp16 vs fp32")
    p.add_argument("--samples", type=int, required=True)
    p.add_argument("--classes", type=int, required=True)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_cmd_size)
    p = sub.add_parser("merge", help="merge per-rank shards into one sealed store")
    p.add_argument("out")
    p.add_argument("shards", nargs="+")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(run=_cmd_merge)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns 0 or exits with 1 (data error) or 2 (usage error)."""
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except (cedstore.CedStoreError, IndexError, OSError) as e:
        _fail(str(e) if not isinstance(e, OSError) or not e.filename else f"{e.filename}: {e.strerror}", 1)
    return 0
