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
from profiler.tags.calibration import TemperatureScaler, fit_thresholds
from profiler.tags.classifier import TagClassifier
from profiler.tags.lexical import LexicalTagger
from profiler.tags.taxonomy import Tag, Taxonomy
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
    """Row indices of train / validation / test with every group on one side only.

    Groups are taken in order of first appearance, not sorted by name: user ids are
    keyed pseudonyms that differ between workspaces, and the split must not."""
    unique = np.array(list(dict.fromkeys(groups)))
    rng = np.random.default_rng(seed)
    rng.shuffle(unique)
    n_train = round(fractions[0] * len(unique))
    n_val = round(fractions[1] * len(unique))
    side = {g: 0 for g in unique[:n_train]}
    side.update({g: 1 for g in unique[n_train : n_train + n_val]})
    side.update({g: 2 for g in unique[n_train + n_val :]})
    which = np.array([side[g] for g in groups])
    return tuple(np.flatnonzero(which == s) for s in range(3))  # type: ignore[return-value]


#: Transformer shares tried by the stack (1: the transformer alone, 0: the lexical model).
STACK_WEIGHTS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))


class TagModel:
    """The tagger that serves: the fine-tuned transformer and the lexical model stacked.

    Both give log-scores per tag (log-probabilities for one-tag-per-text data, log-odds
    otherwise; the transformer's after its own temperature); the stack scores
    ``weight * transformer + (1 - weight) * lexical`` and a temperature fitted on
    validation turns that into calibrated probabilities. ``weight`` was chosen on
    validation from :data:`STACK_WEIGHTS`, so 1 serves the transformer alone and 0 the
    lexical model alone (the other is then not run). Tags with fewer than
    :data:`MIN_EXAMPLES` training examples take the zero-shot tagger's probabilities.
    """

    def __init__(
        self,
        classifier: TagClassifier,
        lexical: LexicalTagger,
        weight: float,
        scaler: TemperatureScaler,
        zeroshot: ZeroShotTagger,
        zero_shot_tags: Sequence[str],
        thresholds: np.ndarray,
    ) -> None:
        self.classifier = classifier
        self.lexical = lexical
        self.weight = float(weight)
        self.scaler = scaler
        self.zeroshot = zeroshot
        self.taxonomy = classifier.taxonomy_
        self.zero_shot_tags = list(zero_shot_tags)
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self._zs_columns = np.array(
            [self.taxonomy.index(t) for t in self.zero_shot_tags], dtype=int
        )

    @property
    def system(self) -> str:
        """``"transformer"``, ``"lexical"`` or ``"stacked"``: what the weight serves."""
        return {1.0: "transformer", 0.0: "lexical"}.get(self.weight, "stacked")

    def predict_proba(self, texts: Sequence[str], vectors: np.ndarray | None = None) -> np.ndarray:
        texts = list(texts)
        members = tuple(name for name, _ in _members(self.weight))
        scores = member_scores(self.classifier, self.lexical, texts, members)
        probs = self.scaler.transform(_stack(scores, self.weight))
        return self.with_zero_shot(probs, texts=texts, vectors=vectors)

    def with_zero_shot(
        self,
        probs: np.ndarray,
        *,
        texts: Sequence[str] | None = None,
        vectors: np.ndarray | None = None,
    ) -> np.ndarray:
        """``probs`` with the zero-shot tagger's probabilities in the rare tags' columns
        (a copy; ``vectors``, the texts' embeddings, spare encoding them again)."""
        if not len(self._zs_columns) or not len(probs):
            return probs
        zero = self.zeroshot.predict_proba(
            texts=None if vectors is not None else texts, vectors=vectors
        )
        probs = probs.copy()
        probs[:, self._zs_columns] = zero[:, self._zs_columns]
        return probs

    def save(self, directory: str | os.PathLike[str]) -> None:
        directory = Path(directory)
        self.classifier.save(directory)
        self.lexical.save(directory)
        write_json(
            directory / "tagger.json",
            {
                "system": self.system,
                "weight": self.weight,
                "scaler": self.scaler.to_dict(),
                "zero_shot_tags": self.zero_shot_tags,
                "zero_shot_scaler": self.zeroshot.scaler_.to_dict(),
                "thresholds": [float(t) for t in self.thresholds],
            },
        )

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], embedder, *, device: str | None = None
    ) -> TagModel:
        from profiler.storage import read_json
        from profiler.tags.calibration import PlattScaler

        directory = Path(directory)
        meta = read_json(directory / "tagger.json")
        classifier = TagClassifier.load(directory, device=device)
        taxonomy = classifier.taxonomy_
        zeroshot = ZeroShotTagger(embedder, taxonomy.names, taxonomy.descriptions)
        zeroshot.scaler_ = PlattScaler.from_dict(meta["zero_shot_scaler"])
        return cls(
            classifier,
            LexicalTagger.load(directory),
            meta["weight"],
            TemperatureScaler.from_dict(meta["scaler"]),
            zeroshot,
            meta["zero_shot_tags"],
            np.asarray(meta["thresholds"]),
        )


def transformer_scores(classifier: TagClassifier, texts: Sequence[str]) -> np.ndarray:
    """The classifier's calibrated log-scores: log-probabilities (one tag per text) or
    log-odds (several)."""
    from scipy.special import log_softmax

    scaled = classifier.logits(texts).astype(np.float64) / classifier.calibrator_.temperature_
    return log_softmax(scaled, axis=1) if classifier.single_label_ else scaled


def member_scores(
    classifier: TagClassifier,
    lexical: LexicalTagger,
    texts: Sequence[str],
    members: tuple[str, ...] = ("transformer", "lexical"),
) -> dict[str, np.ndarray]:
    """Each named member's log-scores ``[n, n_tags]``."""
    out = {}
    if "transformer" in members:
        out["transformer"] = transformer_scores(classifier, texts)
    if "lexical" in members:
        out["lexical"] = lexical.logits(texts)
    return out


def _members(weight: float) -> list[tuple[str, float]]:
    """The stack's members that carry a share at transformer share ``weight``."""
    return [(n, s) for n, s in (("transformer", weight), ("lexical", 1.0 - weight)) if s > 0]


def _stack(scores: dict[str, np.ndarray], weight: float) -> np.ndarray:
    total = sum(share * scores[name] for name, share in _members(weight))
    return np.asarray(total, dtype=np.float64)


def shopper_texts(
    texts: Sequence[str], targets: np.ndarray, groups: Sequence[str]
) -> tuple[list[str], np.ndarray]:
    """Each group's texts joined in order (one shopper's reviews as one text) and the union
    of their tags; groups with one text are left out (their text is already a row)."""
    rows: dict[str, list[int]] = {}
    for row, group in enumerate(groups):
        rows.setdefault(group, []).append(row)
    joined, union = [], []
    for members in rows.values():
        if len(members) > 1:
            joined.append(" ".join(texts[r] for r in members))
            union.append(targets[members].max(axis=0))
    width = targets.shape[1]
    return joined, np.array(union, dtype=targets.dtype).reshape(len(union), width)


def _soft(targets: np.ndarray, single_label: bool) -> np.ndarray:
    """Targets for a softmax loss: a row with several tags shares its mass among them."""
    if not single_label:
        return targets
    return targets / np.maximum(targets.sum(axis=1, keepdims=True), 1)


def _stack_fits(
    scores: dict[str, np.ndarray], targets: np.ndarray, single_label: bool
) -> dict[float, tuple[float, TemperatureScaler]]:
    """For every share in :data:`STACK_WEIGHTS`: the temperature fitted to the stack and
    the calibrated log-loss it reaches."""
    activation = "softmax" if single_label else "sigmoid"
    soft = _soft(targets, single_label)
    fits = {}
    for weight in map(float, STACK_WEIGHTS):
        stacked = _stack(scores, weight)
        scaler = TemperatureScaler(activation=activation).fit(stacked, soft)
        probs = np.clip(scaler.transform(stacked), 1e-12, 1.0)
        if single_label:
            loss = float(-(soft * np.log(probs)).sum(axis=1).mean())
        else:
            loss = float(
                -(soft * np.log(probs) + (1 - soft) * np.log(np.clip(1 - probs, 1e-12, 1))).mean()
            )
        fits[weight] = (loss, scaler)
    return fits


def _pick_stack(
    fits: dict[float, tuple[float, TemperatureScaler]],
) -> tuple[float, TemperatureScaler, dict[str, float]]:
    """The share with the lowest loss (the smallest share on a tie), its temperature and
    the loss at every share."""
    best = (np.inf, 1.0, None)
    for weight, (loss, scaler) in fits.items():
        if loss < best[0] - 1e-9:
            best = (loss, weight, scaler)
    return best[1], best[2], {f"{w:.1f}": loss for w, (loss, _) in fits.items()}


def choose_stack(
    scores: dict[str, np.ndarray], targets: np.ndarray, single_label: bool
) -> tuple[float, TemperatureScaler, dict[str, float]]:
    """The transformer share with the lowest calibrated validation log-loss, its
    temperature and the loss at every share tried."""
    return _pick_stack(_stack_fits(scores, targets, single_label))


def evaluate_tagger(probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray) -> dict:
    """Micro/macro F1 at ``thresholds``, mean average precision, calibration errors,
    top-1/top-3 accuracy (the best tag, or one of the best three, is a true one), the
    macro F1 of the top tag taken as the prediction, and macro ROC-AUC."""
    predictions = (probs >= thresholds).astype(np.int8)
    micro, macro = metrics.multilabel_f1(targets, predictions)
    order = np.argsort(-probs, axis=1)
    rows = np.arange(len(targets))
    top1 = np.zeros_like(predictions)
    top1[rows, order[:, 0]] = 1
    return {
        "micro_f1": micro,
        "macro_f1": macro,
        "map": metrics.mean_average_precision(targets, probs),
        "ece": metrics.expected_calibration_error(probs, targets),
        "top1_ece": metrics.top_label_calibration_error(probs, targets),
        "top1_accuracy": float(np.mean(targets[rows, order[:, 0]])),
        "top3_accuracy": float(np.mean(targets[rows[:, None], order[:, :3]].max(axis=1))),
        "top1_macro_f1": metrics.multilabel_f1(targets, top1)[1],
        "roc_auc": metrics.macro_roc_auc(targets, probs),
    }


def labelled_file(
    data: str | os.PathLike[str],
    text_column: str = "text",
    label_column: str = "label",
    group_column: str | None = None,
    taxonomy: str | os.PathLike[str] | None = None,
) -> tuple[TaggingData, Taxonomy]:
    """A labelled file's examples (labels separated by ``|``) and its tags: the
    ``taxonomy`` file's, else the labels' own, sorted."""
    examples = TaggingData.from_file(
        data, text_column=text_column, label_column=label_column, group_column=group_column
    )
    if taxonomy is not None:
        return examples, Taxonomy.from_file(taxonomy)
    return examples, Taxonomy([Tag(n) for n in sorted({n for ns in examples.labels for n in ns})])


def train_tags(
    data: TaggingData,
    taxonomy: Taxonomy,
    embedder,
    *,
    output: str | os.PathLike[str] | None = None,
    base_model: str | os.PathLike[str] | None = None,
    epochs: int = 4,
    batch_size: int = 16,
    max_length: int = 256,
    learning_rate: float = 3e-5,
    seed: int = 0,
    device: str | None = None,
) -> tuple[TagModel, list[dict]]:
    """Split by user, fine-tune the transformer, fit the lexical model, stack them on
    validation, and evaluate every system on the test users, per text and per shopper.

    Returns the :class:`TagModel` that serves (the stack at its validation-chosen weight)
    and one report row per (system, level) on the test rows: ``transformer``,
    ``lexical``, ``stacked`` (``default`` marks the one that serves), ``zero-shot`` and
    the ``tfidf-logreg`` baseline; level ``text`` scores each text, level ``shopper``
    each test user's texts joined into one. With ``output`` the model and
    ``report.{json,md}`` are written there.
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
    groups = np.array(data.groups, dtype=object)

    def level_rows(rows: np.ndarray) -> dict[str, tuple[list[str], np.ndarray]]:
        joined = shopper_texts(list(texts[rows]), targets[rows], list(groups[rows]))
        return {"text": (list(texts[rows]), targets[rows]), "shopper": joined}

    val_levels, test_levels = level_rows(val), level_rows(test)

    classifier = TagClassifier(
        base_model,
        epochs=epochs,
        batch_size=batch_size,
        max_length=max_length,
        learning_rate=learning_rate,
        seed=seed,
        device=device,
    ).fit(list(texts[train]), targets[train], taxonomy, validation=val_levels["text"])
    lexical = LexicalTagger(seed=seed).fit(list(texts[train]), targets[train])

    def scores_of(levels: dict) -> dict[str, dict[str, np.ndarray]]:
        return {
            level: member_scores(classifier, lexical, t) for level, (t, _) in levels.items() if t
        }

    val_scores, test_scores = scores_of(val_levels), scores_of(test_levels)
    pooled = {
        name: np.concatenate([val_scores[level][name] for level in val_scores])
        for name in ("transformer", "lexical")
    }
    pooled_targets = np.concatenate([val_levels[level][1] for level in val_scores])
    fits = _stack_fits(pooled, pooled_targets, classifier.single_label_)
    weight, _, losses = _pick_stack(fits)
    logger.info(
        "stack: transformer share %.1f has the lowest validation log-loss %.4f (%s)",
        weight,
        losses[f"{weight:.1f}"],
        ", ".join(f"{w}: {v:.4f}" for w, v in losses.items()),
    )

    zeroshot = ZeroShotTagger(embedder, taxonomy.names, taxonomy.descriptions)
    val_vectors = embedder.encode(val_levels["text"][0])
    zeroshot.fit(val_vectors, val_levels["text"][1])
    test_vectors = {level: embedder.encode(t) for level, (t, _) in test_levels.items() if t}

    systems = {"transformer": 1.0, "lexical": 0.0, "stacked": weight}
    report: list[dict] = []
    for name, share in systems.items():
        fitted = fits[share][1]
        candidate = TagModel(
            classifier, lexical, share, fitted, zeroshot, zero_shot_tags, np.zeros(len(taxonomy))
        )
        val_probs = fitted.transform(_stack(val_scores["text"], share))
        val_probs = candidate.with_zero_shot(val_probs, vectors=val_vectors)
        candidate.thresholds = fit_thresholds(val_probs, val_levels["text"][1])
        if name == "stacked":
            model = candidate
        for level, (level_texts, level_targets) in test_levels.items():
            if not level_texts:
                continue
            probs = fitted.transform(_stack(test_scores[level], share))
            probs = candidate.with_zero_shot(probs, vectors=test_vectors[level])
            report.append(
                {
                    "system": name,
                    "level": level,
                    "default": name == "stacked",
                    "transformer_share": share,
                    **evaluate_tagger(probs, level_targets, candidate.thresholds),
                }
            )
    zero_val = zeroshot.predict_proba(vectors=val_vectors)
    zero_thresholds = fit_thresholds(zero_val, val_levels["text"][1])
    baseline = TfidfLogisticTagger(seed=seed).fit(list(texts[train]), targets[train])
    base_thresholds = fit_thresholds(
        baseline.predict_proba(val_levels["text"][0]), val_levels["text"][1]
    )
    for level, (level_texts, level_targets) in test_levels.items():
        if not level_texts:
            continue
        zero = zeroshot.predict_proba(vectors=test_vectors[level])
        report.append(
            {
                "system": "zero-shot",
                "level": level,
                "default": False,
                **evaluate_tagger(zero, level_targets, zero_thresholds),
            }
        )
        report.append(
            {
                "system": "tfidf-logreg",
                "level": level,
                "default": False,
                **evaluate_tagger(
                    baseline.predict_proba(level_texts), level_targets, base_thresholds
                ),
            }
        )
    for row in report:
        row.update(
            test_texts=len(test_levels[row["level"]][0]),
            train_texts=len(train),
            tags=len(taxonomy),
            zero_shot_tags=len(zero_shot_tags),
            epochs_trained=float(classifier.epochs_trained_),
            stack_losses=losses,
        )
    if output is not None:
        output = Path(output)
        model.save(output)
        write_json(output / "report.json", report)
        write_text(output / "report.md", report_table(report))
    return model, report


def report_table(report: Sequence[dict]) -> str:
    """The evaluation rows as a markdown table (``*``: the system that serves)."""
    columns = [
        "top1_accuracy",
        "top3_accuracy",
        "top1_macro_f1",
        "macro_f1",
        "micro_f1",
        "map",
        "roc_auc",
        "ece",
    ]
    lines = [
        "| system | level | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for row in report:
        name = row["system"] + (" *" if row.get("default") else "")
        values = " | ".join(f"{row[c]:.4f}" for c in columns)
        lines.append(f"| {name} | {row.get('level', 'text')} | {values} |")
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
