"""Token-level distillation from a language model's vocabulary with cedstore: one record per
token keyed ``doc#position``, sparse batches, and a KL loss that never builds a dense target.

    python examples/token_kd.py             # seconds on a CPU; writes into a temporary folder

At C = 50,257 (GPT-2's vocabulary) a dense float32 target is 201 KB a token; a record at
K = 20 is 124 bytes, and a sparse batch row (values, indices, tail) 244 bytes. The teacher's
softmax is stored with the ``uniform`` tail policy: the mass outside the top-K is spread
evenly over the other classes, so the KL below is against a full distribution.

More than 32,767 classes do not fit int16 class indices: ``cedstore.create`` picks the wide
layout of format 1.2 by itself (int32 indices, ``store.index_dtype``; 84-byte records at
C <= 32,767, e.g. Llama-2's 32,000, 124-byte records here).

Synthetic documents and a random bigram teacher keep it self-contained.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

import cedstore
from cedstore import targets
from cedstore.torch import EpochSampler, TargetDataset, collate, sparse_kl_div

VOCAB, K, INPUT_TOKENS, DIM = 50_257, 20, 500, 32  # GPT-2's vocabulary
DOC_LENGTHS = {"doc0": 37, "doc1": 52, "doc2": 18, "doc3": 41, "doc4": 60, "doc5": 29}


def make_documents() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {doc: rng.integers(0, INPUT_TOKENS, length) for doc, length in DOC_LENGTHS.items()}


def make_teacher() -> torch.nn.Module:
    """Next-token distribution from the current token: a random bigram model over VOCAB."""
    torch.manual_seed(1)
    teacher = torch.nn.Sequential(torch.nn.Embedding(INPUT_TOKENS, DIM), torch.nn.Linear(DIM, VOCAB)).eval()
    with torch.no_grad():
        teacher[1].weight.mul_(8)  # peaked: the top-20 holds about 70% of the mass
    return teacher


def extract(path: Path, documents: dict[str, np.ndarray], teacher) -> np.ndarray:
    """One record per token, keyed doc#position; returns the input token of every record."""
    keys = [f"{doc}#{position}" for doc, tokens in documents.items() for position in range(len(tokens))]
    inputs = np.concatenate(list(documents.values()))
    metadata = {"activation": "softmax", "tail_policy": "uniform", "temperature": 1.0,
                "teacher": "random bigram model", "user": {"documents": DOC_LENGTHS}}
    with cedstore.create(path, num_classes=VOCAB, k=K, num_samples=len(keys), keys=keys, metadata=metadata) as writer:
        start = 0
        for tokens in documents.values():
            ids = np.arange(start, start + len(tokens))
            with torch.no_grad():  # bfloat16, as a model in bf16 emits it: Writer.write casts it
                probs = torch.softmax(teacher(torch.from_numpy(tokens)), dim=1).bfloat16()
            writer.write(0, ids, probs=probs, seeds=np.zeros(len(ids), np.int32))  # no augmentation: seed 0
            start += len(tokens)
    return inputs


def document_records(store: cedstore.Store, doc: str) -> np.ndarray:
    """The sample ids of a document's tokens, in position order: a binary search per key."""
    length = store.metadata["user"]["documents"][doc]
    ids = store.lookup([f"{doc}#{position}" for position in range(length)])
    assert (ids >= 0).all(), f"{store.path}: {doc} has tokens without records"
    return ids


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the store (default: a temporary one)")
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        documents, teacher = make_documents(), make_teacher()
        path = out / "tokens.ced"
        inputs = extract(path, documents, teacher)
        store = cedstore.open(path)
        print(f"{store.num_samples} token records, C = {store.num_classes}, K = {store.k}, "
              f"{store.index_dtype} class indices, {store.record_size}-byte records: "
              f"{store.file_size / 1e3:.0f} kB on disk; dense float32 would be "
              f"{store.num_samples * store.num_classes * 4 / 1e6:.1f} MB")

        ids = document_records(store, "doc3")
        values, indices, tail, _ = targets.sparse(store, 0, ids, tail="uniform")
        print(f"doc3: records {ids[0]}..{ids[-1]}; token 0's top-{K} holds {values[0].sum():.3f} of the mass, "
              f"each other class {tail[0]:.2e}")

        data = TargetDataset(store, tail="uniform", sparse=True)
        sampler = EpochSampler(RandomSampler(data, generator=torch.Generator().manual_seed(0)))
        loader = DataLoader(data, batch_size=64, sampler=sampler, collate_fn=collate)
        torch.manual_seed(0)
        student = torch.nn.Sequential(torch.nn.Embedding(INPUT_TOKENS, DIM), torch.nn.Linear(DIM, VOCAB))
        optimizer = torch.optim.SGD(student.parameters(), lr=2.0, momentum=0.9)
        inputs = torch.from_numpy(inputs)
        losses = []
        for epoch in range(args.epochs):
            sampler.set_epoch(epoch)  # one stored epoch: every epoch reads it (epoch % 1)
            total = 0.0
            for batch in loader:  # {"ids": [B], "values": [B, K], "indices": [B, K], "tail": [B], "seeds": [B]}
                logits = student(inputs[batch["ids"]])
                loss = sparse_kl_div(logits, batch["values"], batch["indices"], batch["tail"])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch["ids"])
            losses.append(total / len(data))
            print(f"epoch {epoch}: KL(teacher || student) {losses[-1]:.3f}")
        return {"losses": losses, "doc3_ids": ids.tolist()}


if __name__ == "__main__":
    main()
