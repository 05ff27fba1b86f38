"""The store <-> training contract (ced_train.store_meta): recipe resolution, join, refusals."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from train_helpers import RECIPE, load, make_store, tiny_model, write_clips

import cedstore
from ced_train.augment import Recipe
from ced_train.errors import CedTrainError, StoreMismatchError
from ced_train.store_meta import check_student_fits, join, stored_recipe, training_recipe


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("meta")
    dataset = load(write_clips(folder, 6))
    return {"dataset": dataset,
            "augmented": cedstore.open(make_store(folder / "aug.ced", dataset, store_epochs=1)),
            "clean": cedstore.open(make_store(folder / "clean.ced", dataset, store_epochs=1, recipe=None))}


def test_the_stored_recipe_is_the_extraction_recipe_as_sorted_json(stores):
    store = stores["augmented"]
    assert stored_recipe(store) == RECIPE
    assert json.dumps(store.metadata["augmentation"]) == RECIPE.to_json()  # bytes as before
    assert stored_recipe(stores["clean"]) is None


@pytest.mark.parametrize(("store_name", "student_aug", "asked", "expected"), [
    ("augmented", "store", None, RECIPE),
    ("augmented", "store", RECIPE, RECIPE),
    ("augmented", "fresh", None, RECIPE),  # the store's recipe with new seeds
    ("augmented", "fresh", Recipe(), Recipe()),
    ("clean", "fresh", None, Recipe()),
    ("augmented", "none", RECIPE, None),
])
def test_training_recipe(stores, store_name, student_aug, asked, expected):
    assert training_recipe(stores[store_name], student_aug, asked) == (expected, False)


def test_training_recipe_refusals(stores):
    with pytest.raises(StoreMismatchError, match=r"augmentation recipe mismatch: the store was made with "
                                                 r"\{.*\"time_mask_max\": 12.*\}, this run uses "
                                                 r"\{.*\"time_mask_max\": 192.*\}"):
        training_recipe(stores["augmented"], "store", Recipe())
    with pytest.raises(StoreMismatchError, match=r"clean\.ced has no augmentation recipe \(extracted without "
                                                 r"augmentation\): student augmentation 'store' needs one; "
                                                 r"use 'fresh' or 'none'"):
        training_recipe(stores["clean"], "store")


def test_join_reports_coverage_and_refuses_unknown_keys(stores):
    store, keys = stores["augmented"], stores["dataset"].keys
    lines = []
    joined = join(store, keys[::-1] + ["other.wav#0-1"], allow_missing=True, log=lines.append)
    assert joined.store_ids.tolist() == list(range(5, -1, -1))
    assert joined.dataset_ids.tolist() == list(range(6))
    assert lines[0].startswith("join: ") and "6 of 7 dataset keys have records; 1 missing in the store" in lines[0]
    with pytest.raises(StoreMismatchError, match=r"1 of 7 dataset keys have no record in .*aug\.ced "
                                                 r"\(e\.g\. \['other\.wav#0-1'\]\); allow missing keys"):
        join(store, keys + ["other.wav#0-1"], allow_missing=False)
    with pytest.raises(StoreMismatchError, match=r"no dataset key has a record in .*aug\.ced"):
        join(store, ["other.wav#0-1"], allow_missing=True)


def test_student_refusals_are_ced_train_errors(stores):
    with pytest.raises(CedTrainError, match=r"the store has 5 classes but the student has 3"):
        check_student_fits(stores["augmented"], tiny_model(num_classes=3))
    check_student_fits(stores["augmented"], tiny_model(), [f"class_{i}" for i in range(5)])
    assert np.issubdtype(join(stores["augmented"], stores["dataset"].keys, allow_missing=False).store_ids.dtype,
                         np.integer)


def test_a_store_imported_from_the_original_ced_refuses_stored_seed_augmentation(tmp_path):
    from original_logits import imported_store

    store = cedstore.open(imported_store(tmp_path, [f"clip{i:03d}.wav" for i in range(6)]))
    assert store.metadata["augmentation"]["name"] == "ced-original"
    with pytest.raises(StoreMismatchError, match=r"^\S+imported\.ced: its augmentation recipe is 'ced-original' "
                                                 r"\(the original CED code's augmentation .*cannot replay\), so "
                                                 r"student augmentation 'store' cannot show the student the "
                                                 r"teacher's inputs; use student augmentation 'none' or 'fresh'$"):
        training_recipe(store, "store")
    assert training_recipe(store, "fresh") == (Recipe(), False)  # not the store's: it has none we can use
    assert training_recipe(store, "fresh", RECIPE) == (RECIPE, False)
    assert training_recipe(store, "none") == (None, False)
    with pytest.raises(StoreMismatchError, match=r"imported\.ced: its augmentation recipe is 'ced-original'"):
        stored_recipe(store)


def test_a_store_records_its_resampler_and_refuses_another_on_resume_and_training(stores, tmp_path):
    from ced_train.audio import RESAMPLER
    from ced_train.extract import Ensemble, extract
    assert stores["augmented"].metadata["resampler"] == RESAMPLER
    check_student_fits(stores["augmented"], tiny_model())
    path = tmp_path / "old.ced"
    run = dict(store_epochs=1, k=3, recipe=None, batch_size=4, progress=False)
    extract(Ensemble([tiny_model(seed=99).eval()]), stores["dataset"], path, metadata={"resampler": "soxr (0)"}, **run)
    with pytest.raises(StoreMismatchError, match=rf"refusing to resume: .*metadata 'resampler' is \"soxr \(0\)\" in "
                                                 rf"the store, \"{re.escape(RESAMPLER)}\" in this extraction"):
        extract(Ensemble([tiny_model(seed=99).eval()]), stores["dataset"], path, **run)
    with cedstore.open(path) as store, pytest.raises(
            StoreMismatchError, match=rf"old\.ced: the teacher heard audio resampled by 'soxr \(0\)', the student's "
                                      rf"audio is resampled by '{re.escape(RESAMPLER)}'; extract the store again"):
        check_student_fits(store, tiny_model())


def test_a_store_made_before_the_resampler_was_recorded_resumes_when_nothing_is_resampled(tmp_path):
    import soundfile as sf

    from ced_train.extract import Ensemble, extract
    dataset = load(write_clips(tmp_path / "clips", 4))
    assert not dataset.resamples
    path = tmp_path / "old.ced"
    run = dict(store_epochs=2, k=3, recipe=None, batch_size=4, progress=False)
    extract(Ensemble([tiny_model(seed=99).eval()]), dataset, path, metadata={"resampler": None}, **run)
    with cedstore.open(path) as store:
        assert store.metadata["resampler"] is None
        before = [store.records(e).tobytes() for e in range(2)]
    extract(Ensemble([tiny_model(seed=99).eval()]), dataset, path, **run)  # resumes (nothing left to write)
    with cedstore.open(path) as store:
        assert [store.records(e).tobytes() for e in range(2)] == before

    wave, rate = sf.read(str(tmp_path / "clips" / "clip000.wav"), dtype="float32")
    sf.write(str(tmp_path / "clips" / "clip000.wav"), np.repeat(wave, 2), 2 * rate, subtype="FLOAT")
    resampled = load(tmp_path / "clips" / "train.tsv")
    assert resampled.resamples and resampled.keys == dataset.keys
    with pytest.raises(StoreMismatchError, match=r"refusing to resume: .*metadata 'resampler' is null in the store"):
        extract(Ensemble([tiny_model(seed=99).eval()]), resampled, path, **run)
