"""The ``cedstore`` command: info, verify, dump, size, merge, merge-shards, import-ced-h5.

Errors are one line on stderr, ``cedstore: error: <message>``, never a traceback; the exit
status says what kind of error it was (EXIT_STATUS, also in ``cedstore --help``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

import cedstore
from cedstore.format import INDEX_WIDTHS, index_width_for, record_layout
from cedstore.sizes import METHODS

EXIT_STATUS = {
    0: "success",
    1: "a file or its data is wrong (not a cedstore file, corrupt, incomplete), or the OS refused",
    2: "usage error: an unknown command, a missing or malformed argument",
    3: "internal error: a bug in cedstore, please report it",
    4: "a package the command needs is missing (import-ced-h5: pip install 'cedstore[ced-original]')",
    130: "interrupted (Ctrl-C)",
    141: "standard output was closed early (e.g. piped into head); the usual status of a SIGPIPE",
}
_EPILOG = "exit status:\n" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_STATUS.items()) + """

examples:
  cedstore info teacher.ced
  cedstore verify teacher.ced
  cedstore dump teacher.ced --epoch 0 --sample-ids 0:5 --json
  cedstore size --num-samples 1904746 --num-classes 527 --k 20 --num-epochs 10
  cedstore merge teacher.ced teacher.rank0.ced teacher.rank1.ced
  cedstore merge-shards teacher.ced teacher.rank0.ced teacher.rank1.ced
  cedstore import-ced-h5 teacher.ced logits/ensemble5014/balanced/chunk_10"""


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):  # epilogs (exit status, examples) keep their lines
        super().__init__(*args, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message: str):  # one line, no usage block: scripts grep for the message
        _fail(f"{message} (see '{self.prog} --help')", 2)


def _fail(message: str, status: int):
    print(f"cedstore: error: {message}", file=sys.stderr)
    raise SystemExit(status)


def _parse_sample_ids(text: str, num_samples: int) -> np.ndarray:
    """'a:b[:step]' (a Python slice over the samples) or 'i,j,...' to sample ids."""
    try:
        if ":" in text:
            parts = [int(p) if p else None for p in text.split(":")]
            if len(parts) > 3:
                raise ValueError
            return np.arange(num_samples)[slice(*parts)]
        return np.array([int(p) for p in text.split(",")], np.int64)
    except ValueError:
        _fail(f"--sample-ids {text!r} is not a slice 'start:stop[:step]' or a list 'i,j,...'", 2)


def _cmd_info(args) -> None:
    with cedstore.open(args.file) as store:
        info = store.info()
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False, allow_nan=False))
        return
    print(f"{info['path']}: cedstore format {info['format_version']}, {info['value_kind']} values")
    print(f"  samples {info['num_samples']}, epochs {info['num_epochs']}, classes {info['num_classes']}, "
          f"k {info['k']}, record {info['record_size']} bytes ({info['index_dtype']} class indices), "
          f"keys {'yes' if info['has_keys'] else 'no'}")
    print(f"  file {info['file_size']} bytes = records {info['records_bytes']} + overhead {info['overhead_bytes']}")
    for e in info["epochs"]:
        state = f"sealed crc32 {e['crc32']}" if e["sealed"] else "open"
        print(f"  epoch {e['epoch']}: {e['written']}/{info['num_samples']} written, {state}")
    print(f"  metadata {json.dumps(info['metadata'], sort_keys=True, ensure_ascii=False, allow_nan=False)}")


def _cmd_verify(args) -> None:
    with cedstore.open(args.file) as store:
        store.verify()
        print(f"{store.path}: ok ({store.num_epochs} epochs x {store.num_samples} records)")


def _cmd_dump(args) -> None:
    with cedstore.open(args.file) as store:
        ids = _parse_sample_ids(args.sample_ids, store.num_samples)
        bad = ids[(ids < 0) | (ids >= store.num_samples)]
        if len(bad):
            raise IndexError(f"{store.path}: sample {bad[0]} out of range [0, {store.num_samples})")
        written, keys, rows = store.written(args.epoch), store.keys, []
        tail = cedstore.targets.resolve_tail(store, args.tail)
        for i in ids.tolist():  # per record on purpose: a dump shows unwritten records too
            row = {"sample": i, "key": keys[i] if keys else None, "written": False}
            if written[i]:
                values, indices, fill, seeds = cedstore.targets.sparse(store, args.epoch, [i], tail)
                row.update(written=True, seed=int(seeds[0]), indices=indices[0].tolist(), values=values[0].tolist(),
                           tail=float(fill[0]))
            rows.append(row)
    if args.json:
        print(json.dumps({"epoch": args.epoch, "tail_policy": tail, "records": rows}, indent=2, ensure_ascii=False))
        return
    for row in rows:
        key = f" {row['key']}" if row["key"] is not None else ""
        if not row["written"]:
            print(f"{row['sample']}{key}: unwritten")
            continue
        pairs = " ".join(f"{c}:{v:.6g}" for c, v in zip(row["indices"], row["values"]))
        other = f" other classes {row['tail']:.6g} ({tail})" if tail != "zero" else ""
        print(f"{row['sample']}{key}: seed {row['seed']} {pairs}{other}")


def _cmd_size(args) -> None:
    counts = args.num_samples, args.num_classes, args.k, args.num_epochs
    index_dtype = None if args.index_dtype == "auto" else np.dtype(args.index_dtype)
    rows = {m: cedstore.storage_bytes(*counts, method=m, index_dtype=index_dtype) for m in METHODS}
    width = index_width_for(args.num_classes, index_dtype)  # storage_bytes accepted it
    layout = {"index_dtype": str(INDEX_WIDTHS[width]), "record_size": record_layout(args.k, width)[0]}
    if args.json:
        sizes = {m: {"bytes": b, "MB": b / 1e6, "MiB": b / 2**20} for m, b in rows.items()}
        print(json.dumps({**sizes, "ced_layout": layout}, indent=2))
        return
    print(f"{args.num_epochs} epoch(s) x {args.num_samples} samples, {args.num_classes} classes, k={args.k}; "
          f"ced: {layout['index_dtype']} class indices, {layout['record_size']}-byte records")
    for method, size in rows.items():
        print(f"  {method:5} {size:>16,} bytes {size / 1e6:>12,.2f} MB {size / 2**20:>12,.2f} MiB")


def _run_merge(merge, args, shards: str) -> None:
    try:
        merge(args.out, args.shards, overwrite=args.overwrite)
    except FileExistsError as e:
        _fail(f"{e} (use --overwrite to replace it)", 1)
    print(f"{args.out}: merged {len(args.shards)} {shards}")


def _cmd_merge(args) -> None:
    _run_merge(cedstore.merge, args, "shards")


def _cmd_merge_shards(args) -> None:
    _run_merge(cedstore.merge_shards, args, "compact shards")


def _cmd_import_ced_h5(args) -> None:
    from cedstore.import_ced import import_ced_h5  # noqa: PLC0415  (needs the ced-original extra)

    names = None
    if args.class_names:
        with open(args.class_names, encoding="utf-8") as f:
            names = [line.rstrip("\n") for line in f if line.strip()]
    try:
        store = import_ced_h5(args.out, args.logits_dir, num_classes=args.num_classes, class_names=names,
                              key_prefix=args.key_prefix, overwrite=args.overwrite)
    except FileExistsError as e:
        _fail(f"{e} (use --overwrite to replace it)", 1)
    except ImportError as e:
        _fail(str(e), 4)
    with store:
        print(f"{args.out}: imported {store.num_epochs} epochs x {store.num_samples} records, k={store.k}")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cedstore", description="Inspect, check and merge cedstore files.", epilog=_EPILOG)
    parser.add_argument("--version", action="version", version=f"cedstore {cedstore.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("info", help="shape, sizes, completion per epoch and metadata",
                       epilog="example: cedstore info teacher.ced --json")
    p.add_argument("file", help="the store")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=_cmd_info)
    p = sub.add_parser("verify", help="full integrity check (every record, sealed checksums)",
                       epilog="example: cedstore verify teacher.ced")
    p.add_argument("file", help="the store")
    p.set_defaults(run=_cmd_verify)
    p = sub.add_parser("dump", help="print records of one epoch",
                       epilog="example: cedstore dump teacher.ced --epoch 1 --sample-ids 0:100:10\n"
                              "example: cedstore dump teacher.ced --sample-ids 3,7 --tail uniform --json")
    p.add_argument("file", help="the store")
    p.add_argument("--epoch", type=int, default=0, help="augmentation epoch (default 0)")
    # a selection of sample ids (the `sample_ids` of Store.dense), not a count like size's --num-samples
    p.add_argument("--sample-ids", default="0:10",
                   help="which samples: 'start:stop[:step]' or 'i,j,...' (default 0:10)")
    p.add_argument("--tail", choices=cedstore.targets.TAIL_POLICIES,
                   help="tail policy applied to the values shown, with the value of every other class: "
                        "zero, or for softmax probabilities uniform or renormalize (FORMAT.md, tail_policy; "
                        "default: the store's recorded tail_policy, zero when absent)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=_cmd_dump)
    p = sub.add_parser("size", help="storage of teacher outputs: ced vs fp16 vs fp32",
                       epilog="example: cedstore size --num-samples 21155 --num-classes 527 --k 20 --num-epochs 2")
    p.add_argument("--num-samples", type=int, required=True, help="N, samples (audio clips or segments)")
    p.add_argument("--num-classes", type=int, required=True, help="C, classes of the teacher")
    p.add_argument("--k", type=int, required=True, help="values kept per record")
    p.add_argument("--num-epochs", type=int, default=1, help="E, stored augmentation epochs (default 1)")
    p.add_argument("--index-dtype", choices=("auto", "int16", "int32"), default="auto",
                   help="class indices of the ced records: int16 (C <= 32767), int32 (C <= 2**24), or auto: "
                        "int16 when C fits, as cedstore.create picks (default auto)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=_cmd_size)
    p = sub.add_parser("merge", help="merge per-rank shards into one sealed store",
                       epilog="example: cedstore merge teacher.ced teacher.rank*.ced")
    p.add_argument("out", help="the merged store")
    p.add_argument("shards", nargs="+", help="the shards, each written by one rank")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(run=_cmd_merge)
    p = sub.add_parser("merge-shards", help="merge the compact shards of every rank (cedstore.create_shard) "
                                            "into one sealed store",
                       epilog="example: cedstore merge-shards teacher.ced teacher.rank*.ced\n"
                              "example: cedstore merge-shards teacher.ced teacher.rank*.ced --overwrite\n"
                              "(docs/SHARDS.md: each rank's shard holds only its own records)")
    p.add_argument("out", help="the merged store (appears only when the whole merge succeeds)")
    p.add_argument("shards", nargs="+", help="the shard of every rank of one job, in any order")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (default: refuse)")
    p.set_defaults(run=_cmd_merge_shards)
    p = sub.add_parser("import-ced-h5", help="one store from the original CED's logits_ep*_*.h5 + .parquet files",
                       epilog="example: cedstore import-ced-h5 teacher.ced logits/ensemble5014/balanced/chunk_10 "
                              "--key-prefix audio/")
    p.add_argument("out", help="the store to write (appears only when the whole import succeeds)")
    p.add_argument("logits_dir", help="the directory of logits_ep{E}_{rank}.h5 and .parquet files")
    p.add_argument("--num-classes", type=int, default=527,
                   help="C, the teacher's outputs; the files do not record it (default 527, AudioSet)")
    p.add_argument("--class-names", help="a text file with one class name per line, recorded as the label space")
    p.add_argument("--key-prefix", default="",
                   help="prepended to each file name of the keys, e.g. audio/ when your TSV lists audio/x.wav "
                        "(default: none)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(run=_cmd_import_ced_h5)
    return parser


def _stdout_closed() -> int:
    # Later writes (and the flush at exit) must not raise again: send them nowhere.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns 0 or exits with a status of EXIT_STATUS."""
    args = _parser().parse_args(argv)
    try:
        args.run(args)
        sys.stdout.flush()  # a closed pipe shows up here, inside the handlers below
    except BrokenPipeError:
        raise SystemExit(_stdout_closed()) from None
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except (cedstore.CedStoreError, IndexError, OSError) as e:
        _fail(str(e) if not isinstance(e, OSError) or not e.filename else f"{e.filename}: {e.strerror}", 1)
    except MemoryError:
        _fail("out of memory", 1)
    except Exception as e:  # noqa: BLE001  (a bug: still one line, and a status that says so)
        _fail(f"internal error, please report it: {type(e).__name__}: {e}", 3)
    return 0
