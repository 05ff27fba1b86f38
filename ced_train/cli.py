"""The ``ced-train`` command: extract, check-store, train, evaluate, tag, demo.

Exit status: 0 on success, 1 when an input is wrong (a store, an audio file, a setting), 2 for a
usage error. Errors are one line on stderr, ``ced-train: error: <message>``, without a traceback.

Example:
    $ ced-train extract --teacher a.pt --teacher b.pt --data train.tsv --epochs 40 --out t.ced
    $ ced-train train --store t.ced --data train.tsv --eval eval.tsv --model ced_mini --out run/
    $ ced-train evaluate --model run/best.pt --data eval.tsv
    $ ced-train tag clip.wav --model run/best.pt --top 5
    $ ced-train demo --out demo/
"""

from __future__ import annotations

import argparse
import sys

import cedstore
from ced_train.data import DataError

_EXPECTED = (cedstore.CedStoreError, DataError, ValueError)  # and OSError: missing files etc.


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        _fail(f"{message} (see '{self.prog} --help')", 2)


def _fail(message: str, status: int):
    message = "; ".join(line.strip() for line in str(message).splitlines() if line.strip())
    print(f"ced-train: error: {message}", file=sys.stderr)
    raise SystemExit(status)


# ---- evaluate and tag ------------------------------------------------------------------------


def _add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a CED checkpoint (.pt: ours or a published one)")
    parser.add_argument("--data", required=True, help="labelled TSV (filename, labels)")
    parser.add_argument("--per-class-csv", help="also write index,name,ap per class here")
    parser.add_argument("--classes", help="class names file for the per-class CSV")
    parser.add_argument("--chunk-seconds", type=float, default=10.0, help="chunk length (10)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads")


def _run_evaluate(args: argparse.Namespace) -> int:
    import torch

    from ced_train import models
    from ced_train.data import AudioDataset
    from ced_train.evaluate import evaluate, write_per_class_csv
    from ced_train.labels import read_names

    if args.threads:
        torch.set_num_threads(args.threads)
    model = models.from_checkpoint(args.model)
    dataset = AudioDataset.from_tsv(args.data, num_classes=model.config.num_classes, chunk_seconds=args.chunk_seconds)
    result = evaluate(model.to(args.device), dataset, batch_size=args.batch_size, device=args.device)
    print(f"mAP {result.mAP:.4f} ({args.model} on {result.num_clips} chunks of {args.data})")
    if args.per_class_csv:
        names = read_names(args.classes) if args.classes else None
        write_per_class_csv(args.per_class_csv, result.per_class_ap, names)
    return 0


def _add_tag_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio", help="an audio file of any length (resampled to 16 kHz)")
    parser.add_argument("--model", help="a CED checkpoint (.pt); required: nothing is downloaded")
    parser.add_argument("--top", type=int, default=5, help="classes to print (5)")
    parser.add_argument("--classes", help="class names file (default: AudioSet's for 527 outputs)")
    parser.add_argument("--device", default="cpu")


def _run_tag(args: argparse.Namespace) -> int:
    from ced_train import models
    from ced_train.evaluate import tag
    from ced_train.labels import read_names

    if not args.model:
        raise ValueError(
            "tag needs a model checkpoint: pass --model FILE.pt (a best.pt from 'ced-train train', or a "
            "published audiotransformer_*.pt downloaded beforehand); nothing is downloaded"
        )
    model = models.from_checkpoint(args.model).to(args.device)
    names = read_names(args.classes) if args.classes else None
    for index, name, prob in tag(model, args.audio, top=args.top, names=names, device=args.device):
        print(f"{prob:.3f}  {name}  ({index})")
    return 0


# ---- the command -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``ced-train`` parser with one subcommand per step of the CED pipeline."""
    from ced_train import demo, extract, train

    parser = _Parser(prog="ced-train", description="Consistent ensemble distillation (CED) for audio tagging.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands = {
        "extract": ("store a teacher ensemble's top-K outputs on augmented audio",
                    extract.add_extract_arguments, extract.run_extract),
        "check-store": ("recompute a sample of a store's records and compare",
                        extract.add_check_store_arguments, extract.run_check_store),
        "train": ("train a student from a store (label-free) or from labels (--supervised)",
                  train.add_train_arguments, lambda args: (train.run_train(args), 0)[1]),
        "evaluate": ("mAP of a checkpoint on a labelled TSV", _add_evaluate_arguments, _run_evaluate),
        "tag": ("top classes of an audio file", _add_tag_arguments, _run_tag),
        "demo": ("the whole pipeline on bundled synthetic data (CPU, minutes)",
                 demo.add_demo_arguments, demo.run_demo),
    }
    for name, (help_text, add_arguments, run) in commands.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(command)
        command.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``ced-train`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Example:
        >>> main(["evaluate", "--model", "best.pt", "--data", "eval.tsv"])  # doctest: +SKIP
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except OSError as e:
        _fail(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e), 1)
    except _EXPECTED as e:
        _fail(str(e) or type(e).__name__, 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    finally:
        from ced_train import distributed

        distributed.cleanup()


if __name__ == "__main__":
    sys.exit(main())
