"""Compact shards (cedstore.shards): each rank writes only its records; merge_shards gives the
bytes of one writer."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import shard_worker
from cedstore_helpers import Teacher, make_teacher
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cedstore
from cedstore import shards

METADATA = {"activation": "sigmoid", "user": {"run": "shards"}}


def write_single(path, teacher: Teacher, k: int, keys=None, metadata=METADATA, **create_args) -> str:
    """The reference: every record written by one cedstore.create writer."""
    with cedstore.create(path, num_classes=teacher.num_classes, k=k, num_samples=teacher.num_samples,
                         num_epochs=teacher.num_epochs, keys=keys, metadata=metadata, **create_args) as w:
        for epoch in range(teacher.num_epochs):
            w.write(epoch, np.arange(teacher.num_samples), probs=teacher.probs[epoch], seeds=teacher.seeds[epoch])
    return str(path)


def write_shard(path, rank: int, world_size: int, teacher: Teacher, k: int, keys=None, metadata=METADATA,
                skip: tuple = ()) -> str:
    """Rank `rank`'s shard with every record it owns but the (epoch, sample id) pairs in `skip`."""
    with shards.create_shard(path, rank, world_size, num_classes=teacher.num_classes, k=k,
                             num_samples=teacher.num_samples, num_epochs=teacher.num_epochs,
                             keys=keys, metadata=metadata) as w:
        for epoch in range(teacher.num_epochs):
            ids = np.array([i for i in w.sample_ids if (epoch, i) not in skip], np.int64)
            w.write(epoch, ids, probs=teacher.probs[epoch, ids], seeds=teacher.seeds[epoch, ids])
    return str(path)


@st.composite
def jobs(draw):
    num_samples = draw(st.integers(1, 20))
    world_size = draw(st.integers(1, min(num_samples, 5)))
    num_classes = draw(st.integers(2, 30))  # make_teacher ties classes 0 and 1
    k = draw(st.integers(1, num_classes))
    teacher = make_teacher(draw(st.integers(1, 3)), num_samples, num_classes, seed=draw(st.integers(0, 2**32 - 1)))
    keys = [f"{(7 * i) % 11}/{i}" for i in range(num_samples)] if draw(st.booleans()) else None
    layout = {"value_kind": draw(st.sampled_from(["probability", "logit"])),
              "index_dtype": draw(st.sampled_from([None, np.int32]))}
    return world_size, teacher, k, keys, layout, draw(st.randoms())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jobs())
def test_merged_shards_are_the_bytes_of_one_writer(job):
    world_size, teacher, k, keys, layout, random = job
    num_epochs, num_samples = teacher.num_epochs, teacher.num_samples
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        single = write_single(tmp / "single.ced", teacher, k, keys, **layout)
        ranks = list(range(world_size))
        random.shuffle(ranks)  # created, written and listed in a random rank order
        writers = {r: shards.create_shard(tmp / f"r{r}.ced", r, world_size, num_classes=teacher.num_classes, k=k,
                                          num_samples=num_samples, num_epochs=num_epochs, keys=keys,
                                          metadata=METADATA, **layout) for r in ranks}
        records = [(e, i) for e in range(num_epochs) for i in range(num_samples)]
        random.shuffle(records)
        while records:  # random batches, each of one epoch and one rank, interleaved over the ranks
            size = random.randint(1, 6)
            head, records = records[:size], records[size:]
            epoch, rank = head[0][0], head[0][1] % world_size
            ours = [(e, i) for e, i in head if e == epoch and i % world_size == rank]
            records = [r for r in head if r not in ours] + records
            ids = np.array([i for _, i in ours], np.int64)
            writers[rank].write(epoch, ids, probs=teacher.probs[epoch, ids], seeds=teacher.seeds[epoch, ids])
        for writer in writers.values():
            writer.close()
        paths = [tmp / f"r{r}.ced" for r in ranks]
        shards.merge_shards(tmp / "merged.ced", paths)
        assert (tmp / "merged.ced").read_bytes() == pathlib.Path(single).read_bytes()
        full = cedstore.open(single).info()
        infos = [cedstore.open(p).info() for p in paths]
        # disk: the shards together hold the store's records once, not world_size times
        assert sum(info["records_bytes"] for info in infos) == full["records_bytes"]
        for info in infos:  # a header page and this rank's keys: no more than the store's, but a page
            assert info["overhead_bytes"] <= full["overhead_bytes"] + 4096
            assert info["complete"] and info["sealed"]


def test_a_shard_holds_the_samples_its_rank_owns(tmp_path):
    teacher = make_teacher(2, 7, 5)
    keys = [f"k{i}" for i in range(7)]
    path = write_shard(tmp_path / "r1.ced", 1, 3, teacher, 2, keys)
    with cedstore.open(path) as store:
        assert store.num_samples == 2 and store.keys == ["k1", "k4"]
        assert store.metadata["shard"] == {"rank": 1, "world_size": 3, "num_samples": 7}
        values, indices, seeds = store.topk(1, [0, 1])
        np.testing.assert_array_equal(seeds, teacher.seeds[1, [1, 4]])
    assert [shards.shard_num_samples(r, 3, 7) for r in range(3)] == [3, 2, 2]


def test_resume_a_shard_and_finish_it(tmp_path):
    teacher = make_teacher(2, 9, 6)
    path = tmp_path / "r2.ced"
    w = shards.create_shard(path, 2, 4, num_classes=6, k=3, num_samples=9, num_epochs=2, metadata=METADATA)
    w.write(0, [6], probs=teacher.probs[0, [6]], seeds=teacher.seeds[0, [6]])
    w.close(seal=False)  # an interrupted run
    w = shards.resume_shard(path)
    assert (w.rank, w.world_size, w.num_samples, w.sample_ids.tolist()) == (2, 4, 9, [2, 6])
    assert w.written(0).tolist() == [False, True] and w.written(1).tolist() == [False, False]
    with w:
        for epoch in range(2):
            todo = w.sample_ids[~w.written(epoch)]
            w.write(epoch, todo, probs=teacher.probs[epoch, todo], seeds=teacher.seeds[epoch, todo])
    assert pathlib.Path(path).read_bytes() == pathlib.Path(write_shard(tmp_path / "whole.ced", 2, 4, teacher, 3)).read_bytes()


def test_create_shard_with_resume_carries_on_replaces_an_interrupted_create_and_refuses_another_job(tmp_path):
    teacher = make_teacher(1, 5, 4)
    keys = [f"k{i}" for i in range(5)]
    args = dict(num_classes=4, k=2, num_samples=5, keys=keys, metadata=METADATA, resume=True)
    path = tmp_path / "r0.ced"
    path.write_bytes(bytes(4096))  # a create killed before it wrote the header (the core writes it last)
    with shards.create_shard(path, 0, 2, **args) as w:
        w.write(0, [0], probs=teacher.probs[0, [0]], seeds=teacher.seeds[0, [0]])
        w.close(seal=False)
    path.with_name("empty.ced").write_bytes(b"")  # killed between open and allocation
    shards.create_shard(path.with_name("empty.ced"), 0, 2, **args).close()
    with shards.create_shard(path, 0, 2, **args) as w:
        assert w.written(0).tolist() == [True, False, False]
        todo = w.sample_ids[~w.written(0)]
        w.write(0, todo, probs=teacher.probs[0, todo], seeds=teacher.seeds[0, todo])
    whole = write_shard(tmp_path / "whole.ced", 0, 2, teacher, 2, keys)
    assert path.read_bytes() == pathlib.Path(whole).read_bytes()
    for change, found in [({"k": 3}, "k is 2, expected 3"), ({"num_epochs": 2}, "num_epochs is 1, expected 2"),
                          ({"metadata": {}}, "metadata is not the ones given"),
                          ({"keys": keys[::-1]}, "keys is not the ones given")]:
        with pytest.raises(cedstore.InvalidInputError, match=re.escape(
                f"{path}: cannot resume it as this shard: its {found}; remove the file or give the "
                "arguments of the job that wrote it")):
            shards.create_shard(path, 0, 2, **{**args, **change})
    with pytest.raises(cedstore.InvalidInputError, match=re.escape(
            f"{path}: cannot resume it as this shard: its shard is {{'rank': 0, 'world_size': 2, 'num_samples': 5}}, "
            "expected {'rank': 0, 'world_size': 2, 'num_samples': 7}")):
        shards.create_shard(path, 0, 2, **{**args, "num_samples": 7, "keys": None})
    with pytest.raises(FileExistsError):
        shards.create_shard(path, 0, 2, **{**args, "resume": False})
    assert path.read_bytes() == pathlib.Path(whole).read_bytes()


def test_one_writer_per_shard(tmp_path):
    path = tmp_path / "r1.ced"
    with shards.create_shard(path, 1, 2, num_classes=4, k=2, num_samples=6):
        with pytest.raises(cedstore.CedStoreError, match=re.escape(
                f"{path}: another writer has this file open for writing (it holds the writer lock)")):
            shards.resume_shard(path)


def test_a_rank_refuses_ids_it_does_not_own(tmp_path):
    teacher = make_teacher(1, 6, 4)
    with shards.create_shard(tmp_path / "r0.ced", 0, 2, num_classes=4, k=2, num_samples=6) as w:
        with pytest.raises(cedstore.InvalidInputError, match=re.escape(
                f"{tmp_path / 'r0.ced'}: rank 0 of 2 owns the sample ids i with i % 2 == 0; sample id 3 belongs to rank 1")):
            w.write(0, [2, 3], probs=teacher.probs[0, [2, 3]], seeds=teacher.seeds[0, [2, 3]])
        with pytest.raises(IndexError, match=re.escape(f"{tmp_path / 'r0.ced'}: sample id 6 out of range [0, 6)")):
            w.write(0, [6], probs=teacher.probs[0, [0]], seeds=teacher.seeds[0, [0]])
        assert not w.written(0).any()  # nothing of a refused batch is written
        w.close(seal=False)


@pytest.mark.parametrize("rank, world_size, extra, message", [
    (0, 8, {}, "world_size = 8 must be in [1, num_samples = 6]: every rank's shard holds at least one sample"),
    (2, 2, {}, "rank = 2 must be in [0, world_size = 2)"),
    (-1, 2, {}, "rank = -1 must be in [0, world_size = 2)"),
    (0, 2, {"metadata": {"shard": 1}}, "metadata key 'shard' is set by create_shard"),
    (0, 2, {"keys": ["a", "b"]}, "keys has 2 entries, expected num_samples = 6"),
])
def test_create_shard_refuses(tmp_path, rank, world_size, extra, message):
    path = tmp_path / "s.ced"
    with pytest.raises(cedstore.InvalidInputError, match=re.escape(f"{path}: {message}")):
        shards.create_shard(path, rank, world_size, num_classes=4, k=2, num_samples=6, **extra)
    assert not path.exists()


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Three complete shards of a 7-sample, 2-epoch store with keys, and the single-writer file."""
    tmp = tmp_path_factory.mktemp("job")
    teacher = make_teacher(2, 7, 5)
    keys = [f"k{i}" for i in range(7)]
    paths = [write_shard(tmp / f"r{r}.ced", r, 3, teacher, 2, keys) for r in range(3)]
    return tmp, teacher, keys, paths, write_single(tmp / "single.ced", teacher, 2, keys)


def test_merge_shards_in_any_order_and_progress(job, tmp_path, capsys, monkeypatch):
    _, _, _, paths, single = job
    monkeypatch.setattr(shards, "_CHUNK_ROUNDS", 1)  # chunks of 3 samples: [0, 3), [3, 6), [6, 7)
    shards.merge_shards(tmp_path / "out.ced", paths[::-1], progress=True)
    assert (tmp_path / "out.ced").read_bytes() == pathlib.Path(single).read_bytes()
    out, err = capsys.readouterr()
    assert out == "" and re.fullmatch(r"merge-shards: 28/28 records \(100%\), [\d,]+ records/s, ETA 0:00\n", err), err
    with pytest.raises(FileExistsError, match=re.escape(f"{tmp_path / 'out.ced'} exists; refusing to overwrite it")):
        shards.merge_shards(tmp_path / "out.ced", paths)
    shards.merge_shards(tmp_path / "out.ced", paths, overwrite=True)
    assert (tmp_path / "out.ced").read_bytes() == pathlib.Path(single).read_bytes()


def test_merge_shards_refuses(job, tmp_path):
    tmp, teacher, keys, (r0, r1, r2), single = job
    twin = shutil.copy(r1, tmp_path / "twin.ced")
    other_meta = write_shard(tmp_path / "meta.ced", 1, 3, teacher, 2, keys, metadata={"activation": "softmax"})
    other_k = write_shard(tmp_path / "k.ced", 1, 3, teacher, 3, keys)
    other_world = write_shard(tmp_path / "w.ced", 1, 2, teacher, 2, keys)
    no_keys = write_shard(tmp_path / "nokeys.ced", 1, 3, teacher, 2)
    incomplete = write_shard(tmp_path / "inc.ced", 2, 3, teacher, 2, keys, skip={(1, 5), (1, 2)})
    cases = [
        ([], cedstore.InvalidInputError, f"{tmp_path / 'out.ced'}: no shards to merge"),
        ([r0, r2], cedstore.InvalidInputError, "rank(s) [1] of 3 missing: got shards of ranks [0, 2]"),
        ([r0, r1, r2, twin], cedstore.InvalidInputError, f"{r1} and {twin} are both rank 1 of 3"),
        ([r0, other_meta, r2], cedstore.InvalidInputError, f"cannot merge shard {other_meta} with {r0}: metadata differs"),
        ([r0, other_k, r2], cedstore.InvalidInputError, f"cannot merge shard {other_k} with {r0}: k is 3, expected 2"),
        ([r0, other_world, r2], cedstore.InvalidInputError,
         f"cannot merge shard {other_world} with {r0}: world_size is 2, expected 3"),
        ([r0, no_keys, r2], cedstore.InvalidInputError,
         f"cannot merge shard {no_keys} with {r0}: has_keys is False, expected True"),
        ([r0, r1, single], cedstore.InvalidInputError,
         f"{single}: not a compact shard: expected metadata 'shard' {{'rank', 'world_size', 'num_samples'}}, "
         "found None (cedstore.merge merges full-size shards)"),
        ([r0, r1, incomplete], cedstore.UnwrittenRecordError,
         f"{incomplete} (rank 2 of 3): epoch 1, shard sample 0 (sample id 2): record not written "
         "(2 of 2 unwritten); resume the shard and finish it"),
    ]
    for paths, error, message in cases:
        with pytest.raises(error, match=re.escape(message)):
            shards.merge_shards(tmp_path / "out.ced", paths)
        assert not (tmp_path / "out.ced").exists() and not (tmp_path / "out.ced.partial").exists()
    with pytest.raises(cedstore.InvalidInputError, match=re.escape(f"{single}: not a compact shard")):
        shards.resume_shard(single)
    with pytest.raises(cedstore.InvalidInputError, match=re.escape(
            f"cannot merge {r1}: it is a compact shard (rank 1); merge compact shards with "
            "cedstore.merge_shards (cedstore merge-shards)")):
        cedstore.merge(tmp_path / "out.ced", [single, r1])
    assert not (tmp_path / "out.ced").exists()


def test_wide_index_layout(tmp_path):
    """C > 32,767 (int32 class indices, chosen by create) and int32 asked for at small C: the
    merge keeps the shards' layout, and shards of two layouts are refused."""
    num_samples, k = 7, 5
    rng = np.random.default_rng(3)
    values = np.sort(rng.random((num_samples, k), dtype=np.float32), axis=1)[:, ::-1]
    for num_classes, index_dtype in [(40_000, None), (300, np.int32)]:
        indices = np.stack([rng.choice(num_classes, k, replace=False) for _ in range(num_samples)])
        indices[0, 0] = num_classes - 1  # past int16 in the wide store
        args = dict(num_classes=num_classes, k=k, num_samples=num_samples, index_dtype=index_dtype)
        with cedstore.create(tmp_path / f"single{num_classes}.ced", **args) as w:
            w.write(0, np.arange(num_samples), values=values, indices=indices, seeds=np.arange(num_samples))
        paths = []
        for rank in (2, 0, 1):
            paths.append(tmp_path / f"c{num_classes}.r{rank}.ced")
            with shards.create_shard(paths[-1], rank, 3, **args) as w:
                ids = w.sample_ids
                w.write(0, ids, values=values[ids], indices=indices[ids], seeds=ids)
            assert cedstore.open(paths[-1]).index_dtype == np.int32
        shards.merge_shards(tmp_path / f"merged{num_classes}.ced", paths)
        merged = tmp_path / f"merged{num_classes}.ced"
        assert merged.read_bytes() == (tmp_path / f"single{num_classes}.ced").read_bytes()
        assert cedstore.open(merged).topk(0, [0])[1][0, 0] == num_classes - 1
    narrow = tmp_path / "narrow.r1.ced"
    with shards.create_shard(narrow, 1, 3, num_classes=300, k=k, num_samples=num_samples) as w:
        w.write(0, w.sample_ids, values=values[w.sample_ids], indices=indices[w.sample_ids], seeds=w.sample_ids)
    wide_paths = sorted(tmp_path.glob("c300.r*.ced"))
    with pytest.raises(cedstore.InvalidInputError, match=re.escape(
            f"cannot merge shard {narrow} with {wide_paths[0]}: index_dtype is dtype('int16'), expected dtype('int32')")):
        shards.merge_shards(tmp_path / "mixed.ced", [wide_paths[0], narrow, wide_paths[2]])
    with pytest.raises(cedstore.InvalidInputError, match=re.escape(
            f"{narrow}: cannot resume it as this shard: its index_dtype is dtype('int16'), expected dtype('int32')")):
        shards.create_shard(narrow, 1, 3, num_classes=300, k=k, num_samples=num_samples, index_dtype=np.int32, resume=True)


TORCH = importlib.util.find_spec("torch") is not None


@pytest.mark.skipif(not TORCH, reason="torch is not installed (torchrun)")
def test_torchrun_ranks_killed_and_rerun_resume_their_shards(tmp_path):
    num_samples, num_classes, k, num_epochs = 9, 6, 3, 2
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               shard_worker.__file__, str(tmp_path), *map(str, (num_samples, num_classes, k, num_epochs))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CEDSTORE_TEST_KILL_RANK": "0", "CEDSTORE_TEST_KILL_AFTER": "3"}
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode != 0, first.stdout + first.stderr  # rank 0 SIGKILLed; rank 1 done or stopped
    assert (tmp_path / "teacher.rank0.ced").exists(), first.stdout + first.stderr  # killed, not failed earlier
    with cedstore.open(tmp_path / "teacher.rank0.ced") as store:
        assert sum(int(store.written(e).sum()) for e in range(num_epochs)) == 3
    del env["CEDSTORE_TEST_KILL_RANK"]
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "rank 0 of 2: resumed with 3 records written" in second.stdout
    assert "rank 0 of 2: wrote 7 records" in second.stdout  # 5 samples x 2 epochs, 3 done before
    paths = [tmp_path / f"teacher.rank{r}.ced" for r in range(2)]
    shards.merge_shards(tmp_path / "teacher.ced", paths)
    probs, seeds = shard_worker.teacher(num_samples, num_classes, num_epochs)
    single = write_single(tmp_path / "single.ced", Teacher(probs, seeds), k, shard_worker.keys(num_samples),
                          metadata=shard_worker.METADATA)
    assert (tmp_path / "teacher.ced").read_bytes() == pathlib.Path(single).read_bytes()
