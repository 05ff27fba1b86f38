"""The ``ced-train`` command: extract, check-store, train, evaluate, tag, export-onnx, demo.

Every flag of every subcommand is defined here, with one name per concept (the same word as the
Python keyword it sets): ``--store`` is always the teacher store (written by ``extract``, read
by ``check-store`` and ``train``), ``--checkpoint`` a model file, ``--arch`` an architecture
name, ``--store-epochs`` the stored augmentation epochs E, ``--epochs`` training passes,
``--class-names`` a names file, ``--num-classes`` a count, ``--amp`` one of none/bf16/fp16.

Errors are one line on stderr, ``ced-train: error: <message>``, never a traceback; the exit
status says what kind of error it was (:data:`EXIT_STATUS`, also in ``ced-train --help``).
Only the standard library is imported before a command runs, so a missing package, or Ctrl-C
while torch loads, is reported like any other error.
"""

from __future__ import annotations

import os
import sys

try:
    import argparse
except KeyboardInterrupt:  # Ctrl-C while the command starts: the same line and status as later
    print("ced-train: error: interrupted", file=sys.stderr)
    raise SystemExit(130) from None

__all__ = ["EXIT_STATUS", "build_parser", "main"]

EXIT_STATUS = {
    0: "success (check-store: the store matches its data and teacher)",
    1: "an input is wrong (audio, TSV, store, checkpoint, a setting), a store does not fit "
       "(check-store: MISMATCH), or the OS refused",
    2: "usage error: an unknown command, a missing or malformed argument",
    3: "internal error: a bug in ced_train, please report it",
    4: "a package the command needs is missing: pip install 'cedstore[train]' (export-onnx: 'cedstore[onnx]')",
    130: "interrupted (Ctrl-C)",
    141: "standard output was closed early (e.g. piped into head); the usual status of a SIGPIPE",
}
# Packages of the ``train`` extra (setup.py): a ModuleNotFoundError for one of them is exit 4.
TRAIN_EXTRA = {"torch", "soundfile", "soxr", "matplotlib", "bitsandbytes"}

EXAMPLES = """\
ced-train extract --teacher A.pt --teacher B.pt --data train.tsv --store-epochs 10 --k 20 --store teacher.ced
ced-train check-store --store teacher.ced --teacher A.pt --teacher B.pt --data train.tsv
ced-train train --store teacher.ced --data train.tsv --eval-data eval.tsv --arch ced_mini --out runs/mini
ced-train evaluate --checkpoint runs/mini/best.pt --data eval.tsv
ced-train tag clip.wav --checkpoint runs/mini/best.pt --top 5
ced-train demo --out demo-out
ced-train export-onnx --checkpoint runs/mini/best.pt --out mini.onnx --quantize int8"""

_EPILOG = ("exit status:\n" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_STATUS.items())
           + "\n\nexamples:\n" + "\n".join(f"  {line}" for line in EXAMPLES.splitlines()))


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):  # epilogs (exit status, examples) keep their lines
        super().__init__(*args, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message: str):  # one line, no usage block
        _fail(f"{message} (see '{self.prog} --help')", 2)


def _fail(message: str, status: int, *, root_cause: bool = True):
    message = "; ".join(line.strip() for line in str(message).splitlines() if line.strip())
    print(f"ced-train: error: {message}", file=sys.stderr)
    distributed = sys.modules.get("ced_train.distributed")  # (loaded by the commands that use torchrun)
    if distributed is not None and status != 130:
        sys.stderr.flush()
        if root_cause:
            distributed.report_failure(f"ced-train: error: {message}")
        else:
            distributed.await_root_cause()
    raise SystemExit(status)


def _flag(group, *names: str, help: str, example: str, default=None, default_text: str | None = None,
          **kwargs) -> None:
    """One flag: its help text ends with the default (or "required") and an example."""
    if kwargs.get("required", False):
        tail = "required"
    elif kwargs.get("action") in ("store_true", "append"):
        tail = None
    else:
        tail = f"default: {default_text or default}" if default is not None or default_text else "default: none"
    text = f"{help} ({tail}; e.g. {example})" if tail else f"{help} (e.g. {example})"
    group.add_argument(*names, help=text, default=default, **kwargs)


# Shared flags: one definition each, so every subcommand says the same thing.


def _data_flag(group, help="dataset TSV: a 'filename' column, optionally 'labels' (';'-separated "
                           "class indices)") -> None:
    _flag(group, "--data", required=True, metavar="TSV", help=help, example="--data train.tsv")


def _chunk_seconds_flag(group, default=None) -> None:
    _flag(group, "--chunk-seconds", type=float, default=default,
          help="chunk length in seconds; long files are cut into chunks keyed file#start-end",
          default_text=None if default is not None else "the store's chunk_seconds, else 10",
          example="--chunk-seconds 10")


def _skip_bad_flag(group) -> None:
    _flag(group, "--skip-bad", action="store_true", example="--skip-bad",
          help="skip bad audio files (unreadable, corrupt anywhere in the file, NaN/Inf, shorter than "
               "0.15 s) instead of stopping; each file is then decoded once up front; skipped files are "
               "listed on stderr (and in a skipped.tsv beside the output)")


def _read_data(path: str, skip_bad: bool, **kwargs):
    """The dataset of a TSV, with the command line's minimum clip length."""
    from ced_train.audio import MIN_CLIP_SECONDS
    from ced_train.data import AudioDataset

    return AudioDataset.from_tsv(path, skip_bad=skip_bad, min_seconds=MIN_CLIP_SECONDS, **kwargs)


def _list_skipped(path: str, datasets) -> None:
    """Write every skipped file to ``path`` (a TSV) and say so in one line."""
    from ced_train.data import write_skipped

    if write_skipped(path, [ds for ds in datasets if ds is not None]):
        print(f"ced-train: skipped bad files are listed in {path}", file=sys.stderr)


def _run_flags(group, *, amp: bool = True, quiet: str = "no progress line") -> None:
    _flag(group, "--device", default="cpu", help="cpu, cuda or cuda:N (under torchrun, cuda is the local rank's)",
          example="--device cuda")
    if amp:
        _flag(group, "--amp", choices=("none", "bf16", "fp16"), default="none",
              help="automatic mixed precision of the teacher (needs a CUDA device)", example="--amp bf16")
    _flag(group, "--threads", type=int, help="torch CPU threads per process (results may differ in the last "
                                             "float32 bit between values; torchrun's default is 1)",
          example="--threads 4")
    _flag(group, "--quiet", action="store_true", help=quiet, example="--quiet")


# ---- extract and check-store ---------------------------------------------------------------


def _add_extract(parser) -> None:
    g = parser.add_argument_group("data and teacher")
    _flag(g, "--teacher", action="append", required=True, metavar="CKPT",
          help="a teacher checkpoint; repeat for an ensemble (mean of the probabilities)", example="--teacher A.pt")
    _data_flag(g)
    _chunk_seconds_flag(g, default=10.0)
    _flag(g, "--class-names", metavar="FILE", help="the teacher's class names, one per line",
          default_text="AudioSet's for 527 classes, else class_0, class_1, ...", example="--class-names classes.txt")
    _skip_bad_flag(g)
    g = parser.add_argument_group("store")
    _flag(g, "--store", required=True, metavar="FILE", help="the store to write; an existing one made by the "
          "same extraction is resumed", example="--store teacher.ced")
    _flag(g, "--store-epochs", type=int, required=True, metavar="E",
          help="augmentation epochs to store (the store's num_epochs)", example="--store-epochs 10")
    _flag(g, "--k", type=int, default=20, help="top-K outputs kept per record", example="--k 20")
    _flag(g, "--base-seed", type=int, default=0, help="base seed of the records' augmentation seeds",
          example="--base-seed 1")
    _flag(g, "--no-augment", action="store_true", help="the teacher sees clean inputs (baselines; seeds are "
          "stored anyway)", example="--no-augment")
    _flag(g, "--time-mask-percent", type=int, metavar="P", help="augmentation recipe cedaug v2: the time mask "
          "is at most P%% of each clip (short clips are never masked whole; 10 s clips as v1 for P >= 20)",
          default_text="v1, the paper's fixed 192 frames", example="--time-mask-percent 20")
    _flag(g, "--batch-size", type=int, default=32, help="records per teacher batch (a resume may use another: "
          "the teacher's outputs move in the last float32 bit at most, see the README)", example="--batch-size 64")
    _run_flags(parser.add_argument_group("run"))


def _run_extract(args) -> int:
    import torch

    from ced_train import distributed
    from ced_train.extract import extract
    from ced_train.labels import read_names
    from ced_train.teacher import Ensemble

    dist_info = distributed.setup(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = _read_data(args.data, args.skip_bad, chunk_seconds=args.chunk_seconds)
    if dist_info.is_main:
        _list_skipped(args.store + ".skipped.tsv", [dataset])
    teacher = Ensemble.from_checkpoints(args.teacher)
    names = read_names(args.class_names) if args.class_names else None
    stats = extract(
        teacher, dataset, args.store, store_epochs=args.store_epochs, k=args.k, base_seed=args.base_seed,
        recipe=None if args.no_augment else _recipe(args.time_mask_percent), batch_size=args.batch_size,
        device=dist_info.device,
        amp=args.amp, class_names=names, metadata={"chunk_seconds": args.chunk_seconds}, progress=not args.quiet,
    )
    if dist_info.is_main and not args.quiet:
        print(f"{args.store}: {dataset.summary()}; wrote {stats.records} records in {stats.seconds:.1f} s "
              f"({stats.records_per_second:.1f} records/s, store writes {stats.write_seconds:.2f} s), "
              f"skipped {stats.skipped_batches} finished batches", file=sys.stderr)
    if dist_info.is_main and stats.lost_chunks:
        print(f"ced-train: {args.store}: {stats.lost_chunks} chunks of files no longer in {args.data} stay "
              "unwritten (the store is not sealed); train reads only the chunks it has", file=sys.stderr)
    return 0


def _recipe(time_mask_percent: int | None):
    from ced_train.augment import Recipe

    return Recipe() if time_mask_percent is None else Recipe(version=2, time_mask_max_percent=time_mask_percent)


def _add_check_store(parser) -> None:
    g = parser.add_argument_group("store, teacher and data")
    _flag(g, "--store", required=True, metavar="FILE", help="the teacher store to check", example="--store teacher.ced")
    _flag(g, "--teacher", action="append", required=True, metavar="CKPT",
          help="the store's teacher checkpoint(s), as given to extract", example="--teacher A.pt")
    _data_flag(g, help="dataset TSV the store was extracted from (joined by key)")
    _chunk_seconds_flag(g)
    _skip_bad_flag(g)
    g = parser.add_argument_group("check")
    _flag(g, "--num-records", type=int, default=64, help="records to recompute", example="--num-records 256")
    _flag(g, "--seed", type=int, default=0, help="seed that picks the records", example="--seed 1")
    _flag(g, "--batch-size", type=int, default=32, help="records per teacher batch", example="--batch-size 64")
    _flag(g, "--json", action="store_true", help="print the result as JSON", example="--json")
    _run_flags(parser.add_argument_group("run"))


def _run_check_store(args) -> int:
    import json

    import torch

    import cedstore
    from ced_train.check_store import check_store, format_report
    from ced_train.store_meta import stored_chunk_seconds
    from ced_train.teacher import Ensemble

    if args.threads:
        torch.set_num_threads(args.threads)
    chunk_seconds = args.chunk_seconds
    if chunk_seconds is None:
        with cedstore.open(args.store) as store:
            chunk_seconds = stored_chunk_seconds(store)
    dataset = _read_data(args.data, args.skip_bad, chunk_seconds=chunk_seconds)
    result = check_store(args.store, Ensemble.from_checkpoints(args.teacher), dataset, num_records=args.num_records,
                         seed=args.seed, batch_size=args.batch_size, device=args.device, amp=args.amp,
                         progress=not args.quiet)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0 if result["ok"] else 1


# ---- train ---------------------------------------------------------------------------------

_CACHE_LIMIT_BYTES = 2 << 30  # --cache auto: keep decoded audio in memory below this estimate


def _add_train(parser) -> None:
    from ced_train.models import VARIANTS
    from ced_train.optim import OPTIMIZERS
    from ced_train.train import STUDENT_AUG, TrainConfig

    d = TrainConfig()
    g = parser.add_argument_group("data")
    _flag(g, "--store", metavar="FILE", help="teacher store for label-free training", example="--store teacher.ced")
    _data_flag(g, help="training TSV: a 'filename' column (and 'labels' for --supervised)")
    _flag(g, "--eval-data", metavar="TSV", help="labelled evaluation TSV: mAP after every --eval-every epochs",
          example="--eval-data eval.tsv")
    _flag(g, "--supervised", action="store_true", help="train on the TSV's labels, without a store (teachers)",
          example="--supervised")
    _flag(g, "--num-classes", type=int, help="number of classes for --supervised",
          default_text="the largest label + 1", example="--num-classes 527")
    _flag(g, "--class-names", metavar="FILE", help="class names, one per line, checked against the store's "
          "label space", example="--class-names classes.txt")
    _chunk_seconds_flag(g)
    _flag(g, "--allow-missing", action="store_true", help="train on the keys the store has, skipping the others",
          example="--allow-missing")
    _skip_bad_flag(g)
    _flag(g, "--cache", choices=("auto", "on", "off"), default="auto",
          help="keep decoded audio in memory (auto: when the dataset is at most ~2 GiB)", example="--cache on")
    g = parser.add_argument_group("model")
    _flag(g, "--arch", choices=list(VARIANTS), default="ced_mini", help="student architecture",
          example="--arch ced_tiny")
    _flag(g, "--embed-dim", type=int, help="override the architecture's embedding width", example="--embed-dim 192")
    _flag(g, "--depth", type=int, help="override the number of blocks", example="--depth 6")
    _flag(g, "--num-heads", type=int, help="override the number of attention heads", example="--num-heads 3")
    g = parser.add_argument_group("optimization")
    _flag(g, "--epochs", type=int, default=d.epochs, help="training passes over the data", example="--epochs 40")
    _flag(g, "--batch-size", type=int, default=d.batch_size, help="examples per step on each process",
          example="--batch-size 64")
    _flag(g, "--lr", type=float, default=d.lr, help="peak learning rate", example="--lr 5e-4")
    _flag(g, "--warmup-steps", type=int, default=d.warmup_steps, help="linear warm-up steps",
          example="--warmup-steps 1000")
    _flag(g, "--min-lr-ratio", type=float, default=d.min_lr_ratio, help="final learning rate / peak (cosine floor)",
          example="--min-lr-ratio 0.05")
    _flag(g, "--weight-decay", type=float, default=d.weight_decay, help="weight decay", example="--weight-decay 0.01")
    _flag(g, "--optimizer", choices=OPTIMIZERS, default=d.optimizer,
          help="adam8bit (bitsandbytes; AdamW with a warning when unavailable), adamw, or auto (8-bit Adam "
               "on CUDA, fused AdamW on the CPU)", example="--optimizer adamw")
    _flag(g, "--student-aug", choices=STUDENT_AUG, default_text="store, or fresh with --supervised",
          help="the student's augmentation seeds: store (the stored ones: consistent teaching), fresh (new "
               "seeds) or none", example="--student-aug fresh")
    _flag(g, "--mixup-alpha", type=float, default=d.mixup_alpha, help="Beta(alpha, alpha) mixup; 0 turns it off "
          "(the paper: 0.5 on AS-20K)", example="--mixup-alpha 0.5")
    _flag(g, "--amp", choices=("none", "bf16", "fp16"), default=d.amp, help="automatic mixed precision of the model",
          example="--amp bf16")
    g = parser.add_argument_group("run")
    _flag(g, "--out", required=True, metavar="DIR", help="folder for metrics.csv, last.pt and best.pt",
          example="--out runs/mini")
    _flag(g, "--resume", action="store_true", help="continue the run in OUT/last.pt", example="--resume")
    _flag(g, "--seed", type=int, default=d.seed, help="model initialisation, batch order, mixup and fresh seeds",
          example="--seed 1")
    _flag(g, "--eval-every", type=int, default=d.eval_every, help="epochs between evaluations (0: the last only)",
          example="--eval-every 5")
    _flag(g, "--eval-batch-size", type=int, default=d.eval_batch_size, help="batch size of the evaluation",
          example="--eval-batch-size 128")
    _run_flags(g, amp=False, quiet="print nothing but errors")


def _dataset(path: str, num_classes: int | None, chunk_seconds: float, cache: str, skip_bad: bool = False):
    if cache == "auto" and os.path.isfile(path):  # (a missing TSV is from_tsv's error to report)
        with open(path, encoding="utf-8", errors="replace") as fh:
            rows = max(sum(1 for line in fh if line.strip()) - 1, 0)
        cache = "on" if rows * chunk_seconds * 16000 * 4 <= _CACHE_LIMIT_BYTES else "off"
    return _read_data(path, skip_bad, num_classes=num_classes, chunk_seconds=chunk_seconds, cache=cache == "on")


def _run_train(args) -> int:
    import torch

    import cedstore
    from ced_train import models
    from ced_train.errors import CedTrainError
    from ced_train.labels import read_names
    from ced_train.store_meta import stored_chunk_seconds
    from ced_train.train import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.supervised and args.store:
        raise CedTrainError("--supervised trains on the TSV labels: drop --store")
    if not args.supervised and not args.store:
        raise CedTrainError("label-free training needs --store (or --supervised to train on the TSV labels)")
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
        min_lr_ratio=args.min_lr_ratio, weight_decay=args.weight_decay, optimizer=args.optimizer,
        student_aug=args.student_aug or ("fresh" if args.supervised else "store"),
        mixup_alpha=args.mixup_alpha, supervised=args.supervised, allow_missing=args.allow_missing,
        amp=args.amp, device=args.device, seed=args.seed, eval_every=args.eval_every,
        eval_batch_size=args.eval_batch_size, out=args.out, resume=args.resume, verbose=not args.quiet,
    )
    store = cedstore.open(args.store) if args.store else None
    chunk_seconds = args.chunk_seconds or (stored_chunk_seconds(store) if store is not None else 10.0)
    dataset = _dataset(args.data, args.num_classes if args.supervised else None, chunk_seconds, args.cache,
                       args.skip_bad)
    num_classes = store.num_classes if store is not None else dataset.num_classes
    if num_classes is None:
        raise CedTrainError(f"{args.data}: --supervised needs a 'labels' column")
    eval_dataset = _dataset(args.eval_data, num_classes, chunk_seconds, args.cache, args.skip_bad) \
        if args.eval_data else None
    os.makedirs(args.out, exist_ok=True)
    _list_skipped(os.path.join(args.out, "skipped.tsv"), [dataset, eval_dataset])
    overrides = {k: v for k, v in (("embed_dim", args.embed_dim), ("depth", args.depth),
                                   ("num_heads", args.num_heads)) if v is not None}
    torch.manual_seed(args.seed)
    model = models.create(args.arch, num_classes=num_classes, **overrides)
    class_names = read_names(args.class_names) if args.class_names else None
    train(model, dataset, config, store, eval_dataset, class_names=class_names)
    return 0


# ---- evaluate and tag ----------------------------------------------------------------------


def _add_evaluate(parser) -> None:
    g = parser.add_argument_group("model and data")
    _flag(g, "--checkpoint", required=True, metavar="FILE", help="a CED checkpoint (ours, or a published "
          "audiotransformer_*.pt); nothing is downloaded", example="--checkpoint runs/mini/best.pt")
    _data_flag(g, help="labelled TSV: 'filename' and 'labels' columns")
    _chunk_seconds_flag(g, default=10.0)
    _skip_bad_flag(g)
    g = parser.add_argument_group("output")
    _flag(g, "--per-class-csv", metavar="FILE", help="also write index,name,ap per class here",
          example="--per-class-csv ap.csv")
    _flag(g, "--class-names", metavar="FILE", help="class names for the per-class CSV, one per line",
          default_text="AudioSet's for 527 classes, else class_0, ...", example="--class-names classes.txt")
    g = parser.add_argument_group("run")
    _flag(g, "--batch-size", type=int, default=32, help="chunks per forward pass", example="--batch-size 64")
    _run_flags(g, amp=False)


def _run_evaluate(args) -> int:
    import torch

    from ced_train import models
    from ced_train.evaluate import evaluate, write_per_class_csv
    from ced_train.labels import read_names

    if args.threads:
        torch.set_num_threads(args.threads)
    model = models.from_checkpoint(args.checkpoint)
    dataset = _read_data(args.data, args.skip_bad, num_classes=model.config.num_classes,
                         chunk_seconds=args.chunk_seconds)
    result = evaluate(model.to(args.device), dataset, batch_size=args.batch_size, device=args.device,
                      progress=not args.quiet)
    print(f"mAP {result.mAP:.4f} ({args.checkpoint} on {result.num_clips} chunks of {args.data})")
    if args.per_class_csv:
        names = read_names(args.class_names) if args.class_names else None
        write_per_class_csv(args.per_class_csv, result.per_class_ap, names)
    return 0


def _add_tag(parser) -> None:
    parser.add_argument("audio", help="an audio file of any length, resampled to 16 kHz (e.g. clip.wav)")
    _flag(parser, "--checkpoint", required=True, metavar="FILE", help="a CED checkpoint (ours, or a published "
          "audiotransformer_*.pt); nothing is downloaded", example="--checkpoint runs/mini/best.pt")
    _flag(parser, "--top", type=int, default=5, help="classes to print (at least 1)", example="--top 10")
    _flag(parser, "--class-names", metavar="FILE", help="class names, one per line",
          default_text="AudioSet's for 527 outputs, else class_0, ...", example="--class-names classes.txt")
    _flag(parser, "--device", default="cpu", help="cpu, cuda or cuda:N", example="--device cuda")


def _run_tag(args) -> int:
    from ced_train import models
    from ced_train.evaluate import tag
    from ced_train.labels import read_names

    model = models.from_checkpoint(args.checkpoint).to(args.device)
    names = read_names(args.class_names) if args.class_names else None
    for index, name, prob in tag(model, args.audio, top=args.top, names=names, device=args.device):
        print(f"{prob:.3f}  {name}  ({index})")
    return 0


def _add_export_onnx(parser) -> None:
    _flag(parser, "--checkpoint", required=True, metavar="FILE", help="a CED checkpoint (ours, or a published "
          "audiotransformer_*.pt); nothing is downloaded", example="--checkpoint runs/mini/best.pt")
    _flag(parser, "--out", required=True, metavar="FILE", help="the ONNX file to write (overwritten)",
          example="--out mini.onnx")
    _flag(parser, "--waveform", action="store_true", help="export waveform -> probabilities with the log-mel "
          "frontend inside, instead of log-mel -> logits", example="--waveform")
    _flag(parser, "--quantize", choices=("int8",), help="dynamic int8 quantization of the MatMul weights",
          default_text="none (fp32)", example="--quantize int8")
    _flag(parser, "--class-names", metavar="FILE", help="class names for the graph's metadata, one per line",
          default_text="AudioSet's for 527 outputs, else class_0, ...", example="--class-names classes.txt")


def _run_export_onnx(args) -> int:
    from ced_train.labels import read_names
    from ced_train.onnx_export import export_onnx, read_metadata

    names = read_names(args.class_names) if args.class_names else None
    try:
        path = export_onnx(args.checkpoint, args.out, waveform=args.waveform, quantize=args.quantize,
                           class_names=names)
    except ImportError as e:  # the onnx extra is not installed: its message names it
        _fail(str(e), 4)
    meta = read_metadata(path)
    print(f"{path}: {meta['graph']} ({meta['quantization']}), {os.path.getsize(path) / 1e6:.2f} MB; "
          f"input {meta['input']}", file=sys.stderr)
    return 0


def _add_demo(parser) -> None:
    _flag(parser, "--out", default="demo", metavar="DIR", help="output folder: data, stores, results.json/png",
          example="--out demo-out")
    _flag(parser, "--quick", action="store_true", help="toy sizes: the same path in seconds (the CI smoke test)",
          example="--quick")
    _flag(parser, "--student-seeds", metavar="S,...", default_text="0,1",
          help="comma-separated pairing seeds; the four students are trained once per seed",
          example="--student-seeds 0,1,2")
    _flag(parser, "--store-epochs", type=int, default_text="40 (--quick: 2)",
          help="augmentation epochs E of the augmented store", example="--store-epochs 20")
    _flag(parser, "--student-epochs", type=int, default_text="120 (--quick: 2)",
          help="training epochs of each student", example="--student-epochs 60")
    _flag(parser, "--sweep-epochs", nargs="?", const="default", metavar="E,...", default_text="no sweep",
          help="also train consistent students on the first E' stored epochs, for every pairing seed, and "
               "plot them (results_sweep.png); without a value E' = 1,5,20,E", example="--sweep-epochs 1,5,20")
    _flag(parser, "--jobs", type=int, default_text="2", help="trainings run side by side, one process each",
          example="--jobs 1")
    _flag(parser, "--threads", type=int, default_text="1", help="torch threads per job", example="--threads 2")


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


def demo_config(args):
    """The :class:`ced_train.demo.DemoConfig` the ``ced-train demo`` flags ask for."""
    import dataclasses

    from ced_train.demo import DemoConfig

    overrides = {name: getattr(args, name) for name in ("jobs", "threads", "store_epochs", "student_epochs")
                 if getattr(args, name)}
    if args.student_seeds:
        overrides["student_seeds"] = _ints(args.student_seeds)
    config = DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)
    if args.sweep_epochs == "default":
        return dataclasses.replace(config, sweep_store_epochs=config.default_sweep())
    if args.sweep_epochs:
        return dataclasses.replace(config, sweep_store_epochs=_ints(args.sweep_epochs))
    return config


def _run_demo(args) -> int:
    from ced_train.demo import demo

    demo(args.out, demo_config(args))
    return 0


# ---- the command ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``ced-train`` parser, one subcommand per step of the CED pipeline (imports torch)."""
    import cedstore

    parser = _Parser(prog="ced-train", description="Consistent ensemble distillation (CED) for audio tagging.",
                     epilog=_EPILOG)
    parser.add_argument("--version", action="version", version=f"ced-train {cedstore.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands = {
        "extract": ("store a teacher ensemble's top-K outputs on augmented audio", _add_extract, _run_extract),
        "check-store": ("recompute a sample of a store's records and compare", _add_check_store, _run_check_store),
        "train": ("train a student from a store (label-free) or from labels (--supervised)", _add_train, _run_train),
        "evaluate": ("mAP of a checkpoint on a labelled TSV", _add_evaluate, _run_evaluate),
        "tag": ("top classes of an audio file", _add_tag, _run_tag),
        "export-onnx": ("export a checkpoint to ONNX (log-mel -> logits, or --waveform)", _add_export_onnx,
                        _run_export_onnx),
        "demo": ("the whole pipeline on bundled synthetic data (CPU, minutes)", _add_demo, _run_demo),
    }
    examples = {line.split()[1]: line for line in EXAMPLES.splitlines()}
    for name, (help_text, add_arguments, run) in commands.items():
        command = sub.add_parser(name, help=help_text, description=help_text, epilog=f"example:\n  {examples[name]}")
        add_arguments(command)
        command.set_defaults(run=run)
    return parser


def _stdout_closed() -> int:
    # Later writes (and the flush at exit) must not raise again: send them nowhere.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141


def main(argv: list[str] | None = None) -> int:
    """Run ``ced-train`` with ``argv`` (default ``sys.argv[1:]``); returns 0 or exits with a
    status of :data:`EXIT_STATUS`.

    Example:
        >>> main(["evaluate", "--checkpoint", "best.pt", "--data", "eval.tsv"])  # doctest: +SKIP
    """
    try:
        args = build_parser().parse_args(argv)
        status = int(args.run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows up here, inside the handlers below
        return status
    except BrokenPipeError:
        raise SystemExit(_stdout_closed()) from None
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in TRAIN_EXTRA:
            _fail(f"internal error, please report it: {type(e).__name__}: {e}", 3)
        _fail(f"ced-train needs the {e.name.split('.')[0]} package: pip install 'cedstore[train]'", 4)
    except OSError as e:
        _fail(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e), 1)
    except ValueError as e:  # CedTrainError, CedStoreError and the argument checks are ValueErrors
        _fail(str(e) or type(e).__name__, 1)
    except MemoryError:
        _fail("out of memory", 1)
    except Exception as e:  # noqa: BLE001  (a bug, or torch's own error: still one line)
        distributed = sys.modules.get("ced_train.distributed")
        peer = distributed.peer_failure(e) if distributed is not None else None
        if peer:  # another process failed first: its error is the one that counts
            _fail(f"stopped because another process of this torchrun job failed (its error is torchrun's root "
                  f"cause): {type(e).__name__}: {peer}", 1, root_cause=False)
        if type(e).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
            _fail(f"out of memory: {e}", 1)
        _fail(f"internal error, please report it: {type(e).__name__}: {e}", 3)
    finally:
        if "ced_train.distributed" in sys.modules:
            sys.modules["ced_train.distributed"].cleanup()
