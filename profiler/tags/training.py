"""Train, calibrate and evaluate interest tagging on labelled text, in one run.

:func:`train_tags` takes texts with tag lists (reviews and searches labelled with the
category of the item they are about, or a user's labelled file), splits them by user
(train / validation / test, no user on two sides), fine-tunes a :class:`TagClassifier`,
fits the zero-shot tagger's calibration for tags with too few examples, and scores the
fine-tuned classifier, the zero-shot tagger and a TF-IDF + logistic regression baseline
on the same test rows: micro/macro F1, mean average precision, calibration error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from profiler import metrics
from profiler.storage import write_json, write_text
from profiler.tags.baseline import TfidfLogisticTagger
from profiler.tags.calibration import fit_thresholds
from profiler.tags.classifier import TagClassifier
from profiler.tags.taxonomy import Taxonomy
from profiler.tags.zeroshot import ZeroShotTagger

__all__ = ["TagModel", "TaggingData", "evaluate_tagger", "split_by_group", "train_tags"]

logger = logging.getLogger(__name__)

#: A tag needs this many training examples to be learned; rarer tags are zero-shot.
MIN_EXAMPLES = 5


@dataclass(frozen=True, eq=False)
class TaggingData:
    """Texts, their tag lists and a group per text (the user) for leak-free splits."""

    texts: list[str]
    labels: list[list[str]]
    groups: list[str]

    def __post_init__(self) -> None:
        if not (len(self.texts) == len(self.labels) == len(self.groups)):
            raise ValueError("texts, labels and groups must have the same length")
        if not self.texts:
            raise ValueError("no labelled texts to train tags on")

    def subset(self, rows: np.ndarray) -> TaggingData:
        return TaggingData(
            [self.texts[r] for r in rows],
            [self.labels[r] for r in rows],
            [self.groups[r] for r in rows],
        )

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        text_column: str = "text",
        label_column: str = "label",
        group_column: str | None = None,
        separator: str = "|",
    ) -> TaggingData:
        """A labelled CSV/JSONL/Parquet file: one text per row, labels separated by ``|``.

        Rows with an empty text or label are skipped with a warning naming the row.
        """
        from profiler.data import iter_rows

        texts, labels, groups = [], [], []
        skipped = 0
        for row_number, row in enumerate(iter_rows(path), start=1):
            if text_column not in row or label_column not in row:
                raise ValueError(
                    f"{path}: row {row_number} has no column {text_column!r} or "
                    f"{label_column!r}; columns are {sorted(row)}"
                )
            text = str(row[text_column] or "").strip()
            names = [n.strip() for n in str(row[label_column] or "").split(separator) if n.strip()]
            if not text or not names:
                skipped += 1
                if skipped <= 5:
                    logger.warning("%s row %d: empty text or label, skipped", path, row_number)
                continue
            texts.append(text)
            labels.append(names)
            group = row.get(group_column) if group_column else None
            groups.append(str(group) if group is not None else f"row-{row_number}")
        if skipped:
            logger.warning("%s: %d rows without text or label skipped", path, skipped)
        return cls(texts, labels, groups)


def split_by_group(
    groups: Sequence[str], fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of train / validation / test with every group on one side only."""
    unique = np.array(sorted(set(groups)))
    rng = np.random.default_rng(seed)
    rng.shuffle(unique)
    n_train = round(fractions[0] * len(unique))
    n_val = round(fractions[1] * len(unique))
    side = {g: 0 for g in unique[:n_train]}
    side.update({g: 1 for g in unique[n_train : n_train + n_val]})
    side.update({g: 2 for g in unique[n_train + n_val :]})
    which = np.array([side[g] for g in groups])
    return tuple(np.flatnonzero(which == s) for s in range(3))  # type: ignore[return-value]


class TagModel:
    """The fine-tuned classifier and the zero-shot tagger as one ranked tagger.

    Tags the classifier learned from at least :data:`MIN_EXAMPLES` examples take its
    calibrated probabilities; the others take the zero-shot tagger's (calibrated on
    validation). ``predict_proba`` returns one ``[n, n_tags]`` matrix either way.
    """

    def __init__(
        self,
        classifier: TagClassifier,
        zeroshot: ZeroShotTagger,
        zero_shot_tags: Sequence[str],
        thresholds: np.ndarray,
    ) -> None:
        self.classifier = classifier
        self.zeroshot = zeroshot
        self.taxonomy = classifier.taxonomy_
        self.zero_shot_tags = list(zero_shot_tags)
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self._zs_columns = np.array(
            [self.taxonomy.index(t) for t in self.zero_shot_tags], dtype=int
        )

    def predict_proba(self, texts: Sequence[str], vectors: np.ndarray | None = None) -> np.ndarray:
        probs = self.classifier.predict_proba(texts)
        if len(self._zs_columns):
            zero = self.zeroshot.predict_proba(
                texts=None if vectors is not None else texts, vectors=vectors
            )
            probs[:, self._zs_columns] = zero[:, self._zs_columns]
        return probs

    def save(self, directory: str | os.PathLike[str]) -> None:
        directory = Path(directory)
        self.classifier.save(directory)
        write_json(
            directory / "zeroshot.json",
            {
                "zero_shot_tags": self.zero_shot_tags,
                "scaler": self.zeroshot.scaler_.to_dict(),
                "combined_thresholds": [float(t) for t in self.thresholds],
            },
        )

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], embedder, *, device: str | None = None
    ) -> TagModel:
        from profiler.storage import read_json
        from profiler.tags.calibration import PlattScaler

        directory = Path(directory)
        classifier = TagClassifier.load(directory, device=device)
        meta = read_json(directory / "zeroshot.json")
        taxonomy = classifier.taxonomy_
        zeroshot = ZeroShotTagger(embedder, taxonomy.names, taxonomy.descriptions)
        zeroshot.scaler_ = PlattScaler.from_dict(meta["scaler"])
        return cls(
            classifier, zeroshot, meta["zero_shot_tags"], np.asarray(meta["combined_thresholds"])
        )


def evaluate_tagger(probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray) -> dict:
    """Micro/macro F1 at ``thresholds``, mean average precision, calibration errors."""
    predictions = (probs >= thresholds).astype(np.int8)
    micro, macro = metrics.multilabel_f1(targets, predictions)
    return {
        "micro_f1": micro,
        "macro_f1": macro,
        "map": metrics.mean_average_precision(targets, probs),
        "ece": metrics.expected_calibration_error(probs, targets),
        "top1_ece": metrics.top_label_calibration_error(probs, targets),
        "top1_accuracy": float(np.mean(targets[np.arange(len(targets)), probs.argmax(axis=1)])),
    }


def train_tags(
    data: TaggingData,
    taxonomy: Taxonomy,
    embedder,
    *,
    output: str | os.PathLike[str] | None = None,
    base_model: str | os.PathLike[str] | None = None,
    epochs: int = 3,
    batch_size: int = 32,
    max_length: int = 128,
    learning_rate: float = 1e-4,
    seed: int = 0,
    device: str | None = None,
) -> tuple[TagModel, list[dict]]:
    """Split by user, fine-tune, calibrate, evaluate against zero-shot and TF-IDF + LR.

    Returns the combined :class:`TagModel` and one report row per system (on the test
    rows); with ``output`` the model and ``report.{json,md}`` are written there.
    """
    known = [[name for name in names if name in taxonomy] for names in data.labels]
    dropped = sum(1 for a, b in zip(known, data.labels) if len(a) != len(b))
    if dropped:
        logger.warning(
            "%d texts carry labels outside the taxonomy; those labels are ignored", dropped
        )
    keep = np.array([bool(k) for k in known])
    data = TaggingData(
        [t for t, k in zip(data.texts, keep) if k],
        [k for k in known if k],
        [g for g, k in zip(data.groups, keep) if k],
    )
    targets = taxonomy.encode(data.labels)
    train, val, test = split_by_group(data.groups, seed=seed)
    if not len(val) or not len(test):
        raise ValueError(f"too few users to split ({len(set(data.groups))}); need at least 7")
    logger.info("tag data: %d train, %d validation, %d test texts", len(train), len(val), len(test))
    counts = targets[train].sum(axis=0)
    zero_shot_tags = [name for name, n in zip(taxonomy.names, counts) if n < MIN_EXAMPLES]
    if zero_shot_tags:
        logger.info(
            "zero-shot for %d tags with < %d examples: %s",
            len(zero_shot_tags),
            MIN_EXAMPLES,
            zero_shot_tags[:10],
        )
    texts = np.array(data.texts, dtype=object)

    classifier = TagClassifier(
        base_model,
        epochs=epochs,
        batch_size=batch_size,
        max_length=max_length,
        learning_rate=learning_rate,
        seed=seed,
        device=device,
    ).fit(list(texts[train]), targets[train], taxonomy, validation=(list(texts[val]), targets[val]))

    zeroshot = ZeroShotTagger(embedder, taxonomy.names, taxonomy.descriptions)
    val_vectors = embedder.encode(list(texts[val]))
    test_vectors = embedder.encode(list(texts[test]))
    zeroshot.fit(val_vectors, targets[val])
    zero_val = zeroshot.predict_proba(vectors=val_vectors)
    zero_test = zeroshot.predict_proba(vectors=test_vectors)

    model = TagModel(classifier, zeroshot, zero_shot_tags, np.zeros(len(taxonomy)))
    val_probs = model.predict_proba(list(texts[val]), vectors=val_vectors)
    model.thresholds = fit_thresholds(val_probs, targets[val])

    baseline = TfidfLogisticTagger(seed=seed).fit(list(texts[train]), targets[train])
    base_val = baseline.predict_proba(list(texts[val]))
    base_test = baseline.predict_proba(list(texts[test]))

    test_probs = model.predict_proba(list(texts[test]), vectors=test_vectors)
    report = [
        {"system": "fine-tuned", **evaluate_tagger(test_probs, targets[test], model.thresholds)},
        {
            "system": "zero-shot",
            **evaluate_tagger(zero_test, targets[test], fit_thresholds(zero_val, targets[val])),
        },
        {
            "system": "tfidf-logreg",
            **evaluate_tagger(base_test, targets[test], fit_thresholds(base_val, targets[val])),
        },
    ]
    for row in report:
        row.update(
            test_texts=len(test),
            train_texts=len(train),
            tags=len(taxonomy),
            zero_shot_tags=len(zero_shot_tags),
            epochs_trained=float(classifier.epochs_trained_),
        )
    if output is not None:
        output = Path(output)
        model.save(output)
        write_json(output / "report.json", report)
        write_text(output / "report.md", report_table(report))
    return model, report


def report_table(report: Sequence[dict]) -> str:
    """The evaluation rows as a markdown table."""
    columns = ["micro_f1", "macro_f1", "map", "ece", "top1_ece", "top1_accuracy"]
    lines = ["| system | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for row in report:
        lines.append(f"| {row['system']} | " + " | ".join(f"{row[c]:.4f}" for c in columns) + " |")
    return "\n".join(lines) + "\n"


def workspace_tagging_data(
    events: pd.DataFrame, items: pd.DataFrame, level: str | int
) -> TaggingData:
    """Review and search texts labelled with the category tag of the item they are about."""
    from profiler.tags.taxonomy import category_tag

    category = dict(zip(items["item_id"], items["category"].fillna("")))
    rows = events[(events["text"] != "") & (events["item_id"] != "")]
    tags = [category_tag(category.get(i, ""), level) for i in rows["item_id"]]
    keep = [bool(t) for t in tags]
    return TaggingData(
        [t for t, k in zip(rows["text"], keep) if k],
        [[t] for t, k in zip(tags, keep) if k],
        [u for u, k in zip(rows["user_id"], keep) if k],
    )
