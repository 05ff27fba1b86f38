"""Extraction's audio cost per record is independent of file length (issue 13 item 1).

Writes, in a temporary directory, stereo 44.1 kHz 16-bit FLAC files of --short-minutes (default
1) and --long-minutes (default 60), cuts each into 10 s chunks with ``AudioDataset`` and times
``load_batch`` (decode + resample to 16 kHz: what extraction does per record) on the same
number of chunks spread over each file. Prints CPU-seconds per record, the long/short ratio
(the goal: within 1.5x), a chunk of the long file that straddles two resampling segments
(``load_chunk`` at half a chunk's offset: two segments decoded instead of one), and the obvious
alternative, the old approach (decode and resample the whole file, then slice the chunk) on a
--old-minutes file (default 5; it grows with the file). Writes benchmarks/results/long_files.json.

Usage: python benchmarks/long_files.py [--short-minutes 1] [--long-minutes 60] [--records 24]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from ced_train.audio import SAMPLE_RATE, load_chunk, read_frames, resample  # noqa: E402
from ced_train.data import AudioDataset  # noqa: E402

RATE = 44100
RESULTS = Path(__file__).resolve().parent / "results" / "long_files.json"


def write_flac(path: Path, minutes: float) -> Path:
    """A stereo 44.1 kHz FLAC of tones in noise, written a minute at a time (bounded memory)."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(str(path), "w", RATE, 2, "PCM_16", format="FLAC") as out:
        frames_left, t0 = int(minutes * 60 * RATE), 0
        while frames_left:
            n = min(frames_left, 60 * RATE)
            t = (t0 + np.arange(n)) / RATE
            tone = 0.2 * np.sin(2 * np.pi * (220 + 30 * np.sin(t / 7)) * t)
            out.write(np.stack([tone, -tone], 1) + 0.01 * rng.standard_normal((n, 2)))
            frames_left, t0 = frames_left - n, t0 + n
    return path


def per_record(load, ids) -> float:
    """CPU-seconds per record of ``load(i)`` over ``ids`` (the first call warms up)."""
    load(ids[0])
    t0 = time.process_time()
    for i in ids:
        load(i)
    return (time.process_time() - t0) / len(ids)


def spread_ids(num_chunks: int, records: int) -> list[int]:
    return np.linspace(0, num_chunks - 1, records).round().astype(int).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short-minutes", type=float, default=1.0)
    parser.add_argument("--long-minutes", type=float, default=60.0)
    parser.add_argument("--old-minutes", type=float, default=5.0)
    parser.add_argument("--records", type=int, default=24)
    parser.add_argument("--no-save", action="store_true", help="do not write the results file")
    args = parser.parse_args()

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, minutes in (("short", args.short_minutes), ("long", args.long_minutes)):
            folder = Path(tmp) / name
            folder.mkdir()
            t0 = time.perf_counter()
            write_flac(folder / f"{name}.flac", minutes)
            print(f"wrote {minutes:g} min stereo 44.1 kHz FLAC in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            ds = AudioDataset.from_folder(folder)
            rows[name] = per_record(lambda i: ds.load_batch([i]), spread_ids(len(ds), args.records))
            print(f"{name:>5}: {minutes:6g} min, {len(ds):4d} chunks: {1e3 * rows[name]:7.2f} ms/record")
        path, chunk = folder / "long.flac", ds.chunk_samples
        straddling = spread_ids(len(ds) - 1, args.records)
        rows["long_straddling"] = per_record(
            lambda i: load_chunk(path, RATE, i * chunk + chunk // 2, (i + 1) * chunk + chunk // 2, SAMPLE_RATE),
            straddling)
        print(f"straddling two segments: {1e3 * rows['long_straddling']:7.2f} ms/record")

        folder = Path(tmp) / "old"
        folder.mkdir()
        path = write_flac(folder / "old.flac", args.old_minutes)
        ds = AudioDataset.from_folder(folder)
        ids = spread_ids(len(ds), min(args.records, len(ds)))

        def whole_file(i):  # the first load_chunk: the file decoded and resampled whole for each chunk
            start, end = (int(v) for v in ds.keys[i].rsplit("#", 1)[1].split("-"))
            return resample(read_frames(path), RATE, 16000)[start:end]

        rows["old_whole_file"] = per_record(whole_file, ids)
        rows["new_same_file"] = per_record(lambda i: ds.load_batch([i]), ids)

    ratio = rows["long"] / rows["short"]
    straddling_ratio = rows["long_straddling"] / rows["long"]
    old_ratio = rows["old_whole_file"] / rows["new_same_file"]
    print(f"long/short cost per record: {ratio:.2f}x (goal: within 1.5x) "
          f"[{args.long_minutes:g} min vs {args.short_minutes:g} min]")
    print(f"a chunk straddling two resampling segments: {straddling_ratio:.2f}x an aligned one")
    print(f"old whole-file decode on a {args.old_minutes:g} min file: {1e3 * rows['old_whole_file']:.1f} ms/record, "
          f"{old_ratio:.1f}x the windowed decode of the same file")
    if not args.no_save:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps({
            "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
            "args": vars(args), "seconds_per_record": rows, "long_over_short": ratio,
            "straddling_over_aligned": straddling_ratio, "old_over_new": old_ratio}, indent=2) + "\n")


if __name__ == "__main__":
    main()
