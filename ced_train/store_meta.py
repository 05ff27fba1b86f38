"""The contract between a teacher store and what is trained from it: one file to audit.

A store is only useful with the audio, teacher, recipe and label space it was made from. This
module writes that provenance at extraction and checks it everywhere a store is used:

- :func:`store_metadata`: what an extraction writes (recipe, frontend, resampler, teacher,
  teacher input, label space, dataset hash, base seed);
- :func:`check_same_extraction`: a resumed extraction must find exactly that in the file;
- :func:`stored_recipe`, :func:`stored_frontend`, :func:`stored_teacher_input`: reading it back
  (the one place that turns metadata into a ``Recipe``);
- :func:`check_student_fits`: the student's class count, frontend, resampler and class names;
- :func:`join`: dataset keys to store records, with the coverage report;
- :func:`training_recipe`: which recipe (if any) the student's input gets, and whether the
  consistent input is the waveform shift only;
- :func:`check_written`: every record a run will read is written (an unfinished extraction is
  refused before the first step);
- :func:`store_identity`, :func:`dataset_sha256`: what a training run records about its store
  and data, so that a resume on other ones is refused.

Every refusal is a ``StoreMismatchError`` naming the store and both sides.

Example:
    >>> store = cedstore.open("teacher.ced")                              # doctest: +SKIP
    >>> check_student_fits(store, student, class_names)                    # doctest: +SKIP
    >>> joined = join(store, dataset.keys, allow_missing=False)            # doctest: +SKIP
    >>> recipe, wave_only = training_recipe(store, "store")                # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

import cedstore
from ced_train.audio import RESAMPLER
from ced_train.augment import Recipe
from ced_train.errors import CedTrainError, StoreMismatchError
from ced_train.frontend import FrontendConfig
from ced_train.labels import default_names

__all__ = [
    "FOREIGN_RECIPES", "Joined", "check_same_extraction", "check_student_fits", "check_written", "dataset_sha256",
    "join", "store_identity", "store_metadata", "stored_chunk_seconds", "stored_frontend", "stored_recipe",
    "stored_teacher_input", "training_recipe",
]

# Recipes recorded in stores this code did not extract: their stored seeds cannot be replayed.
FOREIGN_RECIPES = {
    "ced-original": "the original CED code's augmentation (a store imported from its logit files by "
                    "cedstore.import_ced): its seeds drive torch's global generator, which cedaug cannot replay",
}

# ---- written at extraction -----------------------------------------------------------------


def dataset_sha256(dataset) -> str:
    """The dataset's identity: ``manifest_sha256()`` (keys and labels), else a SHA-256 of its keys."""
    if hasattr(dataset, "manifest_sha256"):
        return dataset.manifest_sha256()
    return hashlib.sha256("".join(k + "\n" for k in dataset.keys).encode("utf-8")).hexdigest()


def store_metadata(
    teacher,
    dataset,
    *,
    num_classes: int,
    base_seed: int,
    recipe: Recipe | None,
    frontend_config: FrontendConfig,
    teacher_input: str,
    class_names: Sequence[str] | None = None,
    extra: dict | None = None,
) -> dict:
    """The metadata an extraction writes (and a resumed one must find): recipe, frontend,
    teacher, label space, dataset hash, base seed; ``extra`` entries are added (or replace).

    Raises:
        ValueError: ``class_names`` does not have ``num_classes`` names.

    Example:
        >>> store_metadata(teacher, ds, num_classes=527, base_seed=0, recipe=Recipe(),
        ...                frontend_config=FrontendConfig(), teacher_input="spectrogram")  # doctest: +SKIP
    """
    names = list(class_names) if class_names is not None else default_names(num_classes)
    if len(names) != num_classes:
        raise CedTrainError(f"got {len(names)} class names for a teacher with {num_classes} classes")
    description = getattr(teacher, "description", None)
    if description is None:
        kind = teacher if hasattr(teacher, "__qualname__") else type(teacher)  # function or object
        description = {"callable": f"{kind.__module__}.{kind.__qualname__}"}
    meta = {
        "activation": "sigmoid",
        "tail_policy": "zero",
        "label_space": cedstore.label_space(names),
        "teacher": description,
        "teacher_input": teacher_input,
        "frontend": frontend_config.to_dict(),
        # the audio's bits at the dataset's rate: a resumed extraction must resample as this one
        "resampler": RESAMPLER,
        "dataset_sha256": dataset_sha256(dataset),
        "base_seed": base_seed,
    }
    if recipe is not None:
        meta["augmentation"] = recipe.to_dict()
    meta.update(extra or {})
    return meta


def check_same_extraction(path: str, metadata: dict, shape: dict, keys: list[str],
                          resamples: bool = True) -> np.ndarray:
    """Raise unless the store at ``path`` was made by this same extraction (to resume it).

    A data set that lost files since the store was created (e.g. a corrupt file now skipped by
    ``--skip-bad``, or a row deleted from the TSV) still resumes when none of the lost chunks
    has a record yet: the remaining chunks keep their store ids (and so their seeds); the lost
    ones stay unwritten, so their epochs are never sealed, and training reads only the records
    of the chunks it has.

    Args:
        path: the existing store.
        metadata: :func:`store_metadata` of this extraction.
        shape: ``num_classes``, ``k``, ``num_samples``, ``num_epochs`` of this extraction.
        keys: the dataset's chunk keys.
        resamples: whether any of the dataset's files is resampled. A store that recorded no
            ``resampler`` (made before cedstore recorded it) resumes when none is: its records
            did not depend on the resampler.

    Returns:
        int64 ``[len(keys)]``: the store id of each dataset chunk.

    Raises:
        StoreMismatchError: listing every difference (shape, metadata entries, keys, lost
            chunks that already have records).
        cedstore.CedStoreError: the file is not a valid store.
    """
    with cedstore.open(path) as store:
        found = {name: getattr(store, name) for name in shape}
        stored = {key: value for key, value in store.metadata.items() if key != "writer"}
        stored_keys = store.keys
        written = np.stack([store.written(e) for e in range(store.num_epochs)]).any(axis=0)
    store_ids, problems, tolerated = _store_ids(stored_keys, keys), [], set()
    if store_ids is not None and len(store_ids) < len(stored_keys):
        lost = np.setdiff1d(np.arange(len(stored_keys)), store_ids)
        if written[lost].any():
            done = lost[written[lost]]
            problems.append(f"the data set lost {len(lost)} of the store's chunks, and {len(done)} of them already "
                            f"have records (e.g. {[stored_keys[i] for i in done[:3]]}): put their files back in the "
                            "TSV to resume")
        else:  # lost before any record was written: resume the others
            tolerated = {"num_samples", "dataset_sha256"}
    problems += [f"{name} is {found[name]} in the store, {shape[name]} in this extraction"
                 for name in shape if found[name] != shape[name] and name not in tolerated]
    expected = json.loads(json.dumps(metadata))  # the JSON round trip the store went through
    if stored.get("resampler") is None and not resamples:
        tolerated = tolerated | {"resampler"}
    for name in sorted(set(stored) | set(expected)):
        if stored.get(name) != expected.get(name) and name not in tolerated:
            problems.append(f"metadata {name!r} is {json.dumps(stored.get(name), sort_keys=True)} "
                            f"in the store, {json.dumps(expected.get(name), sort_keys=True)} in this extraction")
    if not problems and store_ids is None:
        problems.append("its keys differ from the dataset's chunk keys")
    if problems:
        raise StoreMismatchError(
            f"{path}: refusing to resume: the store was made by a different extraction ("
            + "; ".join(problems) + "). Use the original settings, or another store path."
        )
    return store_ids


def _store_ids(stored_keys: list[str], keys: list[str]) -> np.ndarray | None:
    """The store id of each key, or None when a key is not in the store."""
    index = {key: i for i, key in enumerate(stored_keys)}
    ids = [index.get(key, -1) for key in keys]
    return None if -1 in ids else np.asarray(ids, dtype=np.int64)


# ---- read back -----------------------------------------------------------------------------


def stored_recipe(store: cedstore.Store) -> Recipe | None:
    """The augmentation recipe in a store's metadata, or None for a store made without one.

    Raises:
        StoreMismatchError: the store's recipe is a foreign one (:data:`FOREIGN_RECIPES`).
        ValueError: the metadata holds a recipe this code does not implement.
    """
    spec = store.metadata.get("augmentation")
    foreign = _foreign_recipe(store)
    if foreign:
        raise StoreMismatchError(f"{store.path}: its augmentation recipe is {foreign}")
    return Recipe.from_dict(spec) if spec else None


def _foreign_recipe(store: cedstore.Store) -> str | None:
    """``"'name' (why it cannot be replayed)"`` for a foreign recipe, else None."""
    spec = store.metadata.get("augmentation")
    name = spec.get("name") if isinstance(spec, dict) else None
    return f"{name!r} ({FOREIGN_RECIPES[name]})" if name in FOREIGN_RECIPES else None


def stored_frontend(store: cedstore.Store) -> FrontendConfig:
    """The log-mel settings the teacher's inputs were computed with (defaults if not recorded)."""
    return FrontendConfig(**store.metadata.get("frontend", {}))


def stored_chunk_seconds(store: cedstore.Store, default: float = 10.0) -> float:
    """The chunk length the store's keys were cut with (``chunk_seconds`` metadata, written by
    the command line's extraction), else ``default``."""
    return float(store.metadata.get("chunk_seconds", default))


def stored_teacher_input(store: cedstore.Store) -> str:
    """``"spectrogram"`` (shift, frontend, masks) or ``"waveform"`` (the teacher saw the shift only)."""
    return store.metadata.get("teacher_input", "spectrogram")


# ---- checked before training ---------------------------------------------------------------


def check_student_fits(store: cedstore.Store, model, class_names: Sequence[str] | None = None) -> None:
    """Refuse a store whose class count, log-mel settings, resampler (when recorded) or class names
    differ from the student's.

    Args:
        store: the teacher store.
        model: the student; its ``config.num_classes`` / ``config.n_mels`` are checked when present.
        class_names: if given, checked against the store's ``label_space`` hash.

    Raises:
        StoreMismatchError: naming the store and both values.
    """
    config = getattr(model, "config", None)
    num_classes = getattr(config, "num_classes", None)
    if num_classes is not None and num_classes != store.num_classes:
        raise StoreMismatchError(
            f"{store.path}: the store has {store.num_classes} classes but the student has "
            f"{num_classes}; train a student with {store.num_classes} outputs"
        )
    frontend = store.metadata.get("frontend")
    n_mels = getattr(config, "n_mels", None)
    if isinstance(frontend, dict) and n_mels is not None and frontend != FrontendConfig(n_mels=n_mels).to_dict():
        raise StoreMismatchError(
            f"{store.path}: the teacher's inputs were computed with frontend {frontend}, the "
            f"student's frontend is {FrontendConfig(n_mels=n_mels).to_dict()}"
        )
    resampler = store.metadata.get("resampler")
    if resampler is not None and resampler != RESAMPLER:
        raise StoreMismatchError(
            f"{store.path}: the teacher heard audio resampled by {resampler!r}, the student's audio is "
            f"resampled by {RESAMPLER!r}; extract the store again with this version"
        )
    space = store.metadata.get("label_space")
    if class_names is not None and isinstance(space, dict) and "names_sha256" in space:
        mine = cedstore.label_space(list(class_names))["names_sha256"]
        if space["names_sha256"] != mine:
            raise StoreMismatchError(
                f"{store.path}: label space differs: the store's class names hash to "
                f"{space['names_sha256'][:12]}…, the given names to {mine[:12]}…"
            )


@dataclass(frozen=True)
class Joined:
    """Dataset chunks that have a store record: ``dataset_ids[j]`` is record ``store_ids[j]``."""

    dataset_ids: np.ndarray
    store_ids: np.ndarray
    report: cedstore.JoinReport


def join(store: cedstore.Store, keys: Sequence[str], *, allow_missing: bool,
         log: Callable[[str], None] = lambda message: None) -> Joined:
    """Join dataset keys to the store's records by key (the store's key table).

    Args:
        store: the teacher store.
        keys: the dataset's chunk keys.
        allow_missing: keep going when some keys have no record (they are left out and counted).
        log: receives the coverage report line(s).

    Returns:
        :class:`Joined`.

    Raises:
        StoreMismatchError: keys without a record (unless ``allow_missing``), or no key at all
            with a record.

    Example:
        >>> joined = join(store, dataset.keys, allow_missing=True, log=print)  # doctest: +SKIP
        join: 10 of 12 dataset keys have records; 2 missing in the store ...
    """
    report = store.join(keys)
    log(f"join: {report}")
    missing = report.missing_in_store
    if missing and not allow_missing:
        raise StoreMismatchError(
            f"{missing} of {len(report.ids)} dataset keys have no record in {store.path} "
            f"(e.g. {report.missing_in_store_examples}); allow missing keys to use the others"
        )
    if missing:
        log(f"join: skipping {missing} dataset keys without a record (missing keys allowed)")
    dataset_ids = np.flatnonzero(report.ids >= 0)
    if not len(dataset_ids):
        raise StoreMismatchError(
            f"no dataset key has a record in {store.path}: is this the store of this dataset?")
    return Joined(dataset_ids, report.ids[dataset_ids], report)


def training_recipe(store: cedstore.Store | None, student_aug: str,
                    recipe: Recipe | None = None) -> tuple[Recipe | None, bool]:
    """The recipe of the student's input, and whether it is the waveform shift only.

    Args:
        store: the teacher store (None for supervised training).
        student_aug: ``"store"`` (the stored seeds, with the store's recipe: consistent),
            ``"fresh"`` (new seeds: ``recipe``, else the store's, else ``Recipe()``; a foreign
            recipe such as ``"ced-original"`` counts as none) or ``"none"``.
        recipe: a recipe asked for by the caller; with ``"store"`` it must equal the store's.

    Returns:
        ``(recipe or None, wave_only)``; ``wave_only`` is True when the store's teacher took
        waveforms, so it saw the shift but no masks.

    Raises:
        StoreMismatchError: ``"store"`` with a store that has no recipe, a foreign recipe
            (:data:`FOREIGN_RECIPES`: its seeds cannot be replayed), or another recipe than the
            store's.
    """
    if student_aug == "none":
        return None, False
    foreign = _foreign_recipe(store) if store is not None else None
    if foreign and student_aug == "store":
        raise StoreMismatchError(
            f"{store.path}: its augmentation recipe is {foreign}, so student augmentation 'store' cannot "
            "show the student the teacher's inputs; use student augmentation 'none' or 'fresh'"
        )
    stored = stored_recipe(store) if store is not None and not foreign else None
    if student_aug == "fresh":
        return recipe or stored or Recipe(), False
    if stored is None:
        raise StoreMismatchError(
            f"{store.path} has no augmentation recipe (extracted without augmentation): "
            "student augmentation 'store' needs one; use 'fresh' or 'none'"
        )
    if recipe is not None and recipe != stored:
        raise StoreMismatchError(
            f"augmentation recipe mismatch: the store was made with {stored.to_json()}, "
            f"this run uses {recipe.to_json()}"
        )
    return stored, stored_teacher_input(store) == "waveform"


def check_written(store: cedstore.Store, store_ids: np.ndarray, epochs) -> None:
    """Refuse to train from records that are not written yet (an unfinished extraction).

    Args:
        store: the teacher store.
        store_ids: the sample ids the run reads.
        epochs: the store epochs the run reads (0-based; repeats are fine).

    Raises:
        StoreMismatchError: naming the first incomplete epoch, the count and example keys.

    Example:
        >>> check_written(store, joined.store_ids, {e % store.num_epochs for e in range(40)})  # doctest: +SKIP
    """
    for epoch in sorted(set(int(e) for e in epochs)):
        unwritten = np.flatnonzero(~store.written(epoch)[store_ids])
        if len(unwritten):
            keys = store.keys
            examples = [keys[store_ids[i]] if keys else int(store_ids[i]) for i in unwritten[:3]]
            raise StoreMismatchError(
                f"{store.path}: epoch {epoch} of the store (0-based, of {store.num_epochs}) has "
                f"{len(unwritten)} of the {len(store_ids)} records this run reads unwritten (e.g. {examples}): "
                "the extraction is unfinished; run it again to complete the store before training"
            )


def store_identity(store: cedstore.Store) -> dict:
    """What a training run records about its store: the path and a SHA-256 of the store's
    shape, metadata (but the cedstore version that wrote it) and keys (through the metadata's
    ``dataset_sha256`` when an extraction recorded it).

    The records are not hashed: a store being completed by its extraction keeps its identity.

    Example:
        >>> store_identity(cedstore.open("teacher.ced"))["sha256"][:12]  # doctest: +SKIP
        '3f2a9c0b17de'
    """
    described = {name: getattr(store, name) for name in ("num_classes", "k", "num_samples", "num_epochs",
                                                          "value_kind")}
    described["metadata"] = metadata = {key: value for key, value in store.metadata.items() if key != "writer"}
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode("utf-8"))
    if "dataset_sha256" not in metadata:  # (an extraction's dataset hash covers its keys already)
        for key in store.keys or ():
            digest.update(key.encode("utf-8") + b"\n")
    return {"path": os.path.abspath(store.path), "sha256": digest.hexdigest()}
