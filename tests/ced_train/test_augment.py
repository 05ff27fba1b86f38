"""docs/AUGMENTATION.md: the generator (ced_train.rng) and the recipe (ced_train.augment) against a
pure-Python reference, the doc's test vectors, exact ops."""

import doctest
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ced_train.augment
import ced_train.rng
from ced_train.augment import Recipe
from ced_train.rng import seed_for, splitmix64

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "AUGMENTATION.md"
KEYS = ("shift", "time_start", "time_width", "freq_start", "freq_width")
U64 = 2**64 - 1

# ---- pure-Python reference, written from docs/AUGMENTATION.md ----------------------------------


def ref_splitmix64(x):
    z = (x + 0x9E3779B97F4A7C15) & U64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & U64
    return z ^ (z >> 31)


def ref_draw(s, j):
    return ref_splitmix64((s + j * 0x9E3779B97F4A7C15) & U64)


def ref_uniform_int(d, n):
    return ((d >> 32) * n) >> 32


def ref_params(seed, num_samples, num_frames, num_mels, time_mask_max=192, freq_mask_max=24,
               time_mask_max_percent=None):
    s = seed & 0xFFFFFFFF
    h = num_samples // 2
    if time_mask_max_percent is not None:  # v2
        time_mask_max = max(1, min(time_mask_max, time_mask_max_percent * num_frames // 100))
    tw = min(ref_uniform_int(ref_draw(s, 1), time_mask_max), num_frames)
    fw = min(ref_uniform_int(ref_draw(s, 3), freq_mask_max), num_mels)
    return {
        "shift": ref_uniform_int(ref_draw(s, 0), 2 * h + 1) - h,
        "time_width": tw,
        "time_start": ref_uniform_int(ref_draw(s, 2), num_frames - tw + 1),
        "freq_width": fw,
        "freq_start": ref_uniform_int(ref_draw(s, 4), num_mels - fw + 1),
    }


def ref_seed_for(base_seed, epoch, sample_index):
    key = ref_splitmix64(ref_splitmix64(base_seed) ^ epoch) >> 32
    x = sample_index ^ key
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x ^= x >> 16
    return x - 2**32 if x >= 2**31 else x


def doc_table(marker):
    """Rows (lists of cell strings) of the first table after ``<!-- test-vectors: marker -->``."""
    lines = DOC.read_text().splitlines()
    start = lines.index(f"<!-- test-vectors: {marker} -->")
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            rows.append([c.strip().strip("`") for c in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # drop header and separator


SEEDS = st.integers(-(2**31), 2**32 - 1)

# ---- generator -----------------------------------------------------------------------------------


def test_splitmix64_is_the_standard_stream():
    # Outputs of Vigna's reference SplitMix64 with state 0.
    stream = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F, 0xF88BB8A8724C81EC]
    states = [j * 0x9E3779B97F4A7C15 & U64 for j in range(4)]
    assert [int(v) for v in splitmix64(np.array(states, np.uint64))] == stream
    assert [ref_splitmix64(x) for x in states] == stream


@given(st.lists(st.integers(0, U64), min_size=1, max_size=20))
def test_splitmix64_vectorized_equals_python(xs):
    assert [int(v) for v in splitmix64(np.array(xs, np.uint64))] == [ref_splitmix64(x) for x in xs]
    assert int(splitmix64(xs[0])) == ref_splitmix64(xs[0])  # scalar: wraps without a warning


# ---- documented test vectors ---------------------------------------------------------------------


def test_doc_draw_vectors():
    rows = doc_table("draws")
    assert len(rows) == 2
    for seed, *draws in rows:
        states = np.array([(int(seed) + j * 0x9E3779B97F4A7C15) & U64 for j in range(5)], np.uint64)
        assert [int(d, 16) for d in draws] == [int(v) for v in splitmix64(states)]
        assert [int(d, 16) for d in draws] == [ref_draw(int(seed), j) for j in range(5)]


@pytest.mark.parametrize("sizes", [(160_000, 1001, 64), (7, 150, 20)])
def test_doc_params_vectors(sizes):
    rows = doc_table("params L={} T={} F={}".format(*sizes))
    assert len(rows) == 7
    seeds = np.array([int(r[0]) for r in rows], np.int32)
    expected = {k: np.array([int(r[1 + i]) for r in rows]) for i, k in enumerate(KEYS)}
    got = Recipe().params(seeds, *sizes)
    assert set(got) == set(KEYS)
    for k in KEYS:
        assert got[k].dtype == np.int64
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
    for b, seed in enumerate(seeds):
        assert ref_params(int(seed), *sizes) == {k: int(expected[k][b]) for k in KEYS}


def test_doc_seed_for_vectors():
    rows = doc_table("seed_for")
    assert len(rows) == 6
    for base, epoch, index, seed in rows:
        base, epoch, index, seed = int(base), int(epoch), int(index), int(seed)
        assert seed_for(base, epoch, index) == seed == ref_seed_for(base, epoch, index)


def test_doc_metadata_example_is_to_json():
    assert '{"freq_mask_max": 24, "mask_value": 0.0, "name": "cedaug", "time_mask_max": 192, ' \
        '"version": 1}' in DOC.read_text()
    assert Recipe().to_json() == (
        '{"freq_mask_max": 24, "mask_value": 0.0, "name": "cedaug", "time_mask_max": 192, '
        '"version": 1}'
    )


# ---- parameters ----------------------------------------------------------------------------------


EXAMPLES = st.tuples(SEEDS, st.integers(1, 2**32 - 1), st.integers(1, 3000), st.integers(1, 300))


@settings(max_examples=200)
@given(st.lists(EXAMPLES, min_size=1, max_size=8), st.integers(1, 500), st.integers(1, 40))
def test_params_bounds_and_reference(examples, tmax, fmax):
    seeds, num_samples, num_frames, num_mels = (np.array(c, np.int64) for c in zip(*examples))
    recipe = Recipe(time_mask_max=tmax, freq_mask_max=fmax)
    p = recipe.params(seeds, num_samples, num_frames, num_mels)
    half = num_samples // 2
    assert np.all((-half <= p["shift"]) & (p["shift"] <= half))
    for axis, size, wmax in (("time", num_frames, tmax), ("freq", num_mels, fmax)):
        width, start = p[f"{axis}_width"], p[f"{axis}_start"]
        assert np.all((0 <= width) & (width <= np.minimum(wmax - 1, size)))
        assert np.all((0 <= start) & (start + width <= size))
    for b, example in enumerate(examples):
        assert {k: int(p[k][b]) for k in KEYS} == ref_params(*example, tmax, fmax)


def test_params_cover_their_ranges():
    p = Recipe().params(np.arange(6000), 3, 1001, 64)
    counts = np.bincount(p["shift"] + 1, minlength=3)
    assert np.all(np.abs(counts - 2000) < 200)  # uniform over {-1, 0, 1}
    assert p["time_width"].min() == 0 and p["time_width"].max() == 191
    assert p["freq_width"].min() == 0 and p["freq_width"].max() == 23
    assert p["freq_start"].max() >= 60


def test_different_seeds_give_different_params():
    p = Recipe().params(np.arange(2000), 160_000, 1001, 64)
    assert len({tuple(int(p[k][b]) for k in KEYS) for b in range(2000)}) == 2000


@pytest.mark.parametrize(
    "seeds",
    [
        np.array([-1, 5, -(2**31)], np.int32),
        np.array([2**32 - 1, 5, 2**31], np.uint32),
        np.array([2**32 - 1, 5, 2**31], np.int64),
        [-1, 5, 2**31],
        torch.tensor([-1, 5, -(2**31)], dtype=torch.int32),
        torch.tensor([2**32 - 1, 5, 2**31]),
    ],
)
def test_seed_forms_read_as_uint32_bits(seeds):
    expected = Recipe().params(np.array([2**32 - 1, 5, 2**31], np.uint64), 100, 50, 10)
    got = Recipe().params(seeds, 100, 50, 10)
    for k in KEYS:
        np.testing.assert_array_equal(got[k], expected[k])


def test_scalar_seed_gives_batch_of_one():
    p = Recipe().params(42, 160_000, 1001, 64)
    assert p["shift"].shape == (1,) and int(p["shift"][0]) == 38651


@pytest.mark.parametrize(
    "seeds, message",
    [
        (np.array([1.5]), r"seeds: expected integers of shape \[B\], got float64 \(1,\)"),
        (np.zeros((2, 2), np.int32),
         r"seeds: expected integers of shape \[B\], got int32 \(2, 2\)"),
        ([True], r"seeds: expected integers of shape \[B\], got bool \(1,\)"),
        ([2**32], r"seeds: expected int32 or uint32 values, got range \[4294967296, 4294967296\]"),
        ([-(2**31) - 1, 0], r"got range \[-2147483649, 0\]"),
    ],
)
def test_bad_seeds(seeds, message):
    with pytest.raises(ValueError, match=message):
        Recipe().params(seeds, 100, 50, 10)


@pytest.mark.parametrize(
    "sizes, message",
    [
        ((0, 50, 10), r"num_samples: expected values in \[1, 4294967295\], got range \[0, 0\]"),
        ((2**32, 50, 10), r"num_samples: expected values in \[1, 4294967295\], got range "
                          r"\[4294967296, 4294967296\]"),
        (([5, 0], 50, 10),
         r"num_samples: expected values in \[1, 4294967295\], got range \[0, 5\]"),
        ((100, 0, 10), r"num_frames: expected values in \[1, 4294967295\], got range \[0, 0\]"),
        ((100, 50, -3), r"num_mels: expected values in \[1, 4294967295\], got range \[-3, -3\]"),
        ((100.0, 50, 10), r"num_samples: expected an int or 2 ints \(one per example\), got "
                          r"float64 \(\)"),
        (([1, 2, 3], 50, 10), r"num_samples: expected an int or 2 ints \(one per example\), got "
                              r"int64 \(3,\)"),
    ],
)
def test_bad_sizes(sizes, message):
    with pytest.raises(ValueError, match=message):
        Recipe().params([0, 1], *sizes)


def test_largest_size_is_exact():
    p = Recipe().params([0, -1], 2**32 - 1, 2**32 - 1, 2**32 - 1)
    assert {k: int(p[k][0]) for k in KEYS} == ref_params(0, 2**32 - 1, 2**32 - 1, 2**32 - 1)


# ---- tensor ops ----------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.lists(SEEDS, min_size=1, max_size=6), st.integers(1, 400))
def test_apply_wave_equals_np_roll(seeds, num_samples):
    waves = np.random.default_rng(num_samples).standard_normal((len(seeds), num_samples))
    out = Recipe().apply_wave(torch.from_numpy(waves.astype(np.float32)), seeds).numpy()
    shift = Recipe().params(seeds, num_samples, 1, 1)["shift"]
    for b in range(len(seeds)):
        np.testing.assert_array_equal(out[b], np.roll(waves[b].astype(np.float32), shift[b]))


def np_apply_spec(spec, p, b, value):
    out = spec.copy()
    out[:, p["time_start"][b]:p["time_start"][b] + p["time_width"][b]] = value
    out[p["freq_start"][b]:p["freq_start"][b] + p["freq_width"][b], :] = value
    return out


@settings(max_examples=40, deadline=None)
@given(st.lists(SEEDS, min_size=1, max_size=6), st.integers(1, 300), st.integers(1, 70),
       st.sampled_from([0.0, -80.0]))
def test_apply_spec_masks_where_params_say(seeds, num_frames, num_mels, value):
    specs = np.random.default_rng(num_frames).uniform(1.0, 2.0, (len(seeds), num_mels, num_frames))
    specs = specs.astype(np.float32)
    recipe = Recipe(mask_value=value)
    out = recipe.apply_spec(torch.from_numpy(specs), seeds).numpy()
    p = recipe.params(seeds, 1, num_frames, num_mels)
    for b in range(len(seeds)):
        np.testing.assert_array_equal(out[b], np_apply_spec(specs[b], p, b, value))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(SEEDS, st.integers(1, 300)), min_size=1, max_size=6))
def test_padded_rows_are_augmented_at_their_own_length(examples):
    seeds = np.array([e[0] for e in examples], np.int64)
    lengths = np.array([e[1] for e in examples])
    size = int(lengths.max()) + 3
    rng = np.random.default_rng(size)
    waves = torch.from_numpy(rng.standard_normal((len(seeds), size)).astype(np.float32))
    specs = torch.from_numpy(rng.standard_normal((len(seeds), 8, size)).astype(np.float32))
    recipe = Recipe(time_mask_max=50, freq_mask_max=4, mask_value=-1.0)
    out_w = recipe.apply_wave(waves, seeds, num_samples=lengths)
    out_s = recipe.apply_spec(specs, seeds, num_frames=torch.from_numpy(lengths))
    for b, length in enumerate(lengths):
        alone_w = recipe.apply_wave(waves[b:b + 1, :length], seeds[b:b + 1])[0]
        alone_s = recipe.apply_spec(specs[b:b + 1, :, :length], seeds[b:b + 1])[0]
        assert torch.equal(out_w[b, :length], alone_w)
        assert torch.equal(out_w[b, length:], waves[b, length:])  # the padding stays
        assert torch.equal(out_s[b, :, :length], alone_s)
        assert torch.equal(out_s[b, :, length:], specs[b, :, length:])


def test_batch_of_32_equals_one_by_one():
    rng = np.random.default_rng(3)
    seeds = rng.integers(-(2**31), 2**31, 32).astype(np.int32)
    waves = torch.from_numpy(rng.standard_normal((32, 16_000)).astype(np.float32))
    specs = torch.from_numpy(rng.standard_normal((32, 64, 101)).astype(np.float32))
    recipe = Recipe()
    batch_w, batch_s = recipe.apply_wave(waves, seeds), recipe.apply_spec(specs, seeds)
    for b in range(32):
        assert torch.equal(recipe.apply_wave(waves[b:b + 1], seeds[b:b + 1])[0], batch_w[b])
        assert torch.equal(recipe.apply_spec(specs[b:b + 1], seeds[b:b + 1])[0], batch_s[b])
    assert not torch.equal(batch_w[0], batch_w[1])  # different seeds, different shifts


def test_inputs_are_not_modified():
    waves, specs = torch.randn(2, 100), torch.randn(2, 64, 300)
    w0, s0 = waves.clone(), specs.clone()
    Recipe().apply_wave(waves, [0, 1])
    Recipe().apply_spec(specs, [0, 1])
    assert torch.equal(waves, w0) and torch.equal(specs, s0)


_DIGEST_CODE = """
import hashlib
import numpy as np
import torch
from ced_train.augment import Recipe

def digest():
    rng = np.random.default_rng(5)
    waves = torch.from_numpy(rng.standard_normal((8, 1000)).astype(np.float32))
    specs = torch.from_numpy(rng.standard_normal((8, 64, 300)).astype(np.float32))
    seeds = np.array([0, 1, -1, 42, 2**31 - 1, -2**31, 7, 123456789], np.int32)
    h = hashlib.sha256()
    h.update(Recipe().apply_wave(waves, seeds).numpy().tobytes())
    h.update(Recipe().apply_spec(specs, seeds).numpy().tobytes())
    return h.hexdigest()
"""


def test_same_seeds_same_tensors_in_another_process():
    scope = {}
    exec(_DIGEST_CODE, scope)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "123"}
    child = subprocess.run(
        [sys.executable, "-c", _DIGEST_CODE + "\nprint(digest())"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120, check=True,
    )
    assert child.stdout.strip() == scope["digest"]()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu():
    seeds = torch.arange(16, dtype=torch.int32) * 1000003
    waves, specs = torch.randn(16, 16_000), torch.randn(16, 64, 101)
    recipe = Recipe()
    assert torch.equal(recipe.apply_wave(waves.cuda(), seeds.cuda()).cpu(),
                       recipe.apply_wave(waves, seeds))
    assert torch.equal(recipe.apply_spec(specs.cuda(), seeds).cpu(),
                       recipe.apply_spec(specs, seeds))


@pytest.mark.parametrize(
    "op, shape, seeds, lengths, message",
    [
        ("wave", (2, 3, 4), [0, 1], None, r"expected waves \[B, S\], got shape \(2, 3, 4\)"),
        ("wave", (2, 4), [0], None, r"expected 2 seeds \(one per example\), got 1"),
        ("spec", (2, 4), [0, 1], None, r"expected specs \[B, F, T\], got shape \(2, 4\)"),
        ("spec", (1, 4, 5), [0, 1, 2], None, r"expected 1 seeds \(one per example\), got 3"),
        ("wave", (2, 4), [0, 1], [4, 5],
         r"num_samples: expected values in \[1, 4\], got range \[4, 5\]"),
        ("spec", (2, 3, 4), [0, 1], [0, 4],
         r"num_frames: expected values in \[1, 4\], got range \[0, 4\]"),
    ],
)
def test_bad_tensor_inputs(op, shape, seeds, lengths, message):
    apply = Recipe().apply_wave if op == "wave" else Recipe().apply_spec
    with pytest.raises(ValueError, match=message):
        apply(torch.zeros(shape), seeds, lengths)


# ---- recipe metadata -----------------------------------------------------------------------------


@given(st.integers(1, 2**32 - 1), st.integers(1, 2**32 - 1),
       st.floats(allow_nan=False, allow_infinity=False))
def test_json_round_trip(tmax, fmax, value):
    recipe = Recipe(time_mask_max=tmax, freq_mask_max=fmax, mask_value=value)
    assert Recipe.from_json(recipe.to_json()) == recipe


def _json(**changes):
    data = json.loads(Recipe().to_json())
    data.update(changes)
    return json.dumps({k: v for k, v in data.items() if v is not ...})


@pytest.mark.parametrize(
    "text, message",
    [
        (_json(name="specaug"), r"augmentation recipe 'specaug' version 1 is not supported: "
                                r"this code implements 'cedaug' versions 1 and 2"),
        (_json(version=3), r"augmentation recipe 'cedaug' version 3 is not supported"),
        (_json(version="1"), r"augmentation recipe 'cedaug' version '1' is not supported"),
        (_json(version=True), r"augmentation recipe 'cedaug' version True is not supported"),
        (_json(shift_max=0.5), r"expected fields \['freq_mask_max', 'mask_value', 'name', "
                               r"'time_mask_max', 'version'\], got \['freq_mask_max', "
                               r"'mask_value', 'name', 'shift_max', 'time_mask_max', 'version'\]"),
        (_json(mask_value=...), r"expected fields .*, got \['freq_mask_max', 'name', "),
        (_json(time_mask_max=0), r"Recipe.time_mask_max: expected an int in \[1, 2\*\*32\), got 0"),
        (_json(freq_mask_max=2.0), r"Recipe.freq_mask_max: expected an int .*, got 2.0"),
        (_json(mask_value="0"), r"Recipe.mask_value: expected a finite number, got '0'"),
        (_json(mask_value=float("nan")), r"Recipe.mask_value: expected a finite number, got nan"),
        ("[1, 2]", r"augmentation recipe: expected a JSON object, got '\[1, 2\]'"),
        ("{name: cedaug}", r"augmentation recipe: expected a JSON object, got '\{name: cedaug\}': "
                           r"Expecting property name"),
    ],
)
def test_from_json_refuses(text, message):
    with pytest.raises(ValueError, match=message):
        Recipe.from_json(text)


def test_dict_round_trip_and_sorted_keys():
    recipe = Recipe(time_mask_max=100, mask_value=-1)
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert list(recipe.to_dict()) == sorted(recipe.to_dict())  # the stored JSON never varies
    assert json.dumps(recipe.to_dict(), sort_keys=True) == recipe.to_json()


def test_int_mask_value_is_stored_as_float():
    assert Recipe(mask_value=-80).mask_value == -80.0
    assert Recipe(mask_value=-80) == Recipe(mask_value=-80.0)


# ---- seed schedule -------------------------------------------------------------------------------


def test_seed_for_is_int32_and_deterministic():
    index = np.arange(100_000)
    seeds = seed_for(2024, 3, index)
    assert seeds.dtype == np.int32 and seeds.shape == (100_000,)
    np.testing.assert_array_equal(seeds, seed_for(2024, 3, index))
    assert seeds.min() < -(2**30) and seeds.max() > 2**30  # spans the signed range
    assert isinstance(seed_for(2024, 3, 7), np.int32)


def test_seed_for_distinct_for_different_epoch_and_index():
    epochs, index = np.meshgrid(np.arange(10), np.arange(1000), indexing="ij")
    seeds = seed_for(7, epochs, index)
    assert seeds.shape == (10, 1000)
    assert len(np.unique(seeds)) == seeds.size
    assert seed_for(7, 0, 0) != seed_for(8, 0, 0)


def test_seed_for_is_a_bijection_within_an_epoch():
    seeds = np.sort(seed_for(0, 5, np.arange(2**20)))
    assert np.all(seeds[1:] != seeds[:-1])


@given(st.integers(0, U64), st.integers(0, U64), st.lists(st.integers(0, 2**32 - 1), max_size=10))
def test_seed_for_vectorized_equals_scalar_and_reference(base, epoch, index):
    vec = seed_for(base, epoch, np.array(index, np.uint64))
    assert vec.shape == (len(index),)
    assert [int(s) for s in vec] == [int(seed_for(base, epoch, i)) for i in index]
    assert [int(s) for s in vec] == [ref_seed_for(base, epoch, i) for i in index]


def test_seed_for_independent_of_sharding():
    index = np.arange(1000)
    shards = [seed_for(1, 2, part) for part in np.array_split(index[::-1], 7)]
    np.testing.assert_array_equal(np.concatenate(shards)[::-1], seed_for(1, 2, index))


@pytest.mark.parametrize(
    "args, message",
    [
        ((-1, 0, 0), r"base_seed: expected integers in \[0, 2\*\*64\), got range \[-1, -1\]"),
        ((0, -2, 0), r"epoch: expected integers in \[0, 2\*\*64\), got range \[-2, -2\]"),
        ((0, 0, 2**32), r"sample_index: expected integers in \[0, 2\*\*32\), got range "
                        r"\[4294967296, 4294967296\]"),
        ((0, 0, 1.0), r"sample_index: expected integers, got float64 values"),
        ((2**64, 0, 0), r"base_seed: expected integers, got object values"),
    ],
)
def test_seed_for_refuses(args, message):
    with pytest.raises(ValueError, match=message):
        seed_for(*args)


@pytest.mark.parametrize("module", [ced_train.augment, ced_train.rng])
def test_docstring_examples(module):
    assert doctest.testmod(module).failed == 0


# ---- version 2: the time mask scales with the clip (issue 13 item 2) ------------------------


def test_v1_stores_replay_exactly_and_v2_scales_the_time_mask():
    from ced_train.augment import blanked_share
    from ced_train.rng import seed_for

    v1_json = '{"freq_mask_max": 24, "mask_value": 0.0, "name": "cedaug", "time_mask_max": 192, "version": 1}'
    v1 = Recipe.from_json(v1_json)  # a stored v1 recipe
    assert v1 == Recipe() and v1.to_json() == v1_json and v1.time_mask_max_percent is None
    seeds = seed_for(0, 0, np.arange(20_000))
    for frames in (51, 101, 1001):  # v1 resolves to the reference rule, field for field
        got = v1.params(seeds[:50], 8000, frames, 64)
        want = [ref_params(int(s), 8000, frames, 64) for s in seeds[:50]]
        for name in ("shift", "time_start", "time_width", "freq_start", "freq_width"):
            assert got[name].tolist() == [w[name] for w in want]
    v2 = Recipe(version=2)
    assert v2.time_mask_max_percent == 20
    assert Recipe.from_json(v2.to_json()) == v2 and '"time_mask_max_percent": 20' in v2.to_json()
    # 10 s clips: v2 draws exactly v1's masks; 1 s clips: at most 20 frames, never the whole clip
    p1, p2 = v1.params(seeds, 160_000, 1001, 64), v2.params(seeds, 160_000, 1001, 64)
    assert all(np.array_equal(p1[k], p2[k]) for k in p1)
    for frames in (4, 51, 101, 960, 1001, 5000):  # v2 against the reference rule
        got = Recipe(version=2, time_mask_max_percent=37).params(seeds[:50], 8000, frames, 64)
        want = [ref_params(int(s), 8000, frames, 64, time_mask_max_percent=37) for s in seeds[:50]]
        for name in ("shift", "time_start", "time_width", "freq_start", "freq_width"):
            assert got[name].tolist() == [w[name] for w in want]
    short = v2.params(seeds, 16_000, 101, 64)
    assert short["time_width"].max() == 19 and short["time_width"].min() == 0
    assert (v2.params(seeds, 100, 4, 64)["time_width"] == 0).all()  # max(1, 20% of 4 = 0): no mask
    # the numbers: v1 blanks 48% of 1 s clips and 74% of 0.5 s clips; v2 none
    assert blanked_share(v1, seeds, 101) == pytest.approx(0.476, abs=0.01)
    assert blanked_share(v1, seeds, 51) == pytest.approx(0.735, abs=0.01)
    assert blanked_share(v2, seeds, 51) == blanked_share(v2, seeds, 101) == blanked_share(v1, seeds, 1001) == 0.0


@pytest.mark.parametrize("data, message", [
    ({"time_mask_max_percent": 20}, r"augmentation recipe 'cedaug' version 1: expected fields \['freq_mask_max', "
                                    r"'mask_value', 'name', 'time_mask_max', 'version'\]"),
    ({"version": 2}, r"augmentation recipe 'cedaug' version 2: expected fields \['freq_mask_max', 'mask_value', "
                     r"'name', 'time_mask_max', 'time_mask_max_percent', 'version'\]"),
    ({"version": 2, "time_mask_max_percent": 0}, r"Recipe.time_mask_max_percent: expected an int in \[1, 100\], got 0"),
    ({"version": 2, "time_mask_max_percent": 101}, r"got 101"),
    ({"version": 3}, r"augmentation recipe 'cedaug' version 3 is not supported: this code implements 'cedaug' "
                     r"versions 1 and 2"),
])
def test_bad_v2_recipes(data, message):
    with pytest.raises(ValueError, match=message):
        Recipe.from_dict({**Recipe().to_dict(), **data})
    with pytest.raises(ValueError, match="needs version 2, got version 1 with 20"):
        Recipe(time_mask_max_percent=20)
