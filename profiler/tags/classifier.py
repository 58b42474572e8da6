"""A fine-tuned transformer that reads a review or search and names its tags.

:class:`TagClassifier` starts from the bundled all-MiniLM-L6-v2 weights (any local
transformers/sentence-transformers folder works) with a fresh classification head, and
fine-tunes the whole network with the ``transformers`` ``Trainer``: binary cross-entropy
per tag for multi-label data, softmax cross-entropy when every text has exactly one tag
(it learns far faster and still ranks all tags), evaluation every epoch, early stopping
on validation loss, the best epoch kept, a fixed seed. The same code runs on CPU and GPU
(the Trainer picks the device).

After training, a temperature is fitted on the validation logits so that probabilities
are calibrated, and a per-tag threshold that maximises each tag's F1 on validation.
Everything is saved as safetensors plus JSON: never pickle.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from transformers import TrainerCallback

from profiler.embedding import resolve_model
from profiler.storage import read_json, write_json
from profiler.tags.calibration import TemperatureScaler, fit_thresholds
from profiler.tags.taxonomy import Taxonomy

__all__ = ["TagClassifier"]

logger = logging.getLogger(__name__)


def _check_targets(texts: Sequence[str], targets: np.ndarray, n_tags: int, what: str) -> np.ndarray:
    targets = np.asarray(targets, dtype=np.float32)
    if targets.shape != (len(texts), n_tags):
        raise ValueError(
            f"{what}: expected targets of shape ({len(texts)}, {n_tags}), got {targets.shape}"
        )
    for position, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{what}: text at position {position} is empty or not a str")
    return targets


class _LogCallback(TrainerCallback):
    """Send the Trainer's per-epoch losses to logging instead of stdout."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            shown = {k: round(v, 4) for k, v in logs.items() if isinstance(v, float)}
            logger.info("epoch %.1f: %s", state.epoch or 0.0, shown)


class TagClassifier:
    """Fine-tuned multi-label tag classifier with calibrated confidences.

    Parameters
    ----------
    base_model : str or path, optional
        Encoder to start from; the bundled all-MiniLM-L6-v2 when ``None``.
    epochs : int
        Most training epochs (early stopping may end sooner).
    batch_size : int
        Training batch size.
    learning_rate : float
        Peak learning rate (linear decay, 10% warm-up).
    max_length : int
        Tokens per text; longer reviews are truncated.
    patience : int
        Epochs without validation-loss improvement before stopping.
    seed : int
        Seeds the head's initialisation, data order and dropout.
    device : str, optional
        ``"cpu"`` forces the CPU; ``None`` lets the Trainer use a GPU when present.
    """

    def __init__(
        self,
        base_model: str | os.PathLike[str] | None = None,
        *,
        epochs: int = 3,
        batch_size: int = 32,
        learning_rate: float = 1e-4,
        max_length: int = 128,
        patience: int = 1,
        seed: int = 0,
        device: str | None = None,
    ) -> None:
        self.base_model = base_model
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.max_length = max_length
        self.patience = patience
        self.seed = seed
        self.device = device

    # -- training -------------------------------------------------------------------------

    def fit(
        self,
        texts: Sequence[str],
        targets: np.ndarray,
        taxonomy: Taxonomy,
        *,
        validation: tuple[Sequence[str], np.ndarray],
    ) -> TagClassifier:
        """Fine-tune on ``(texts, targets)``; early-stop, calibrate and pick thresholds on
        ``validation``. ``targets`` are multi-hot ``[n, len(taxonomy)]``."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import (
            AutoModelForSequenceClassification,
            AutoTokenizer,
            DataCollatorWithPadding,
            EarlyStoppingCallback,
            PrinterCallback,
            Trainer,
            TrainingArguments,
            set_seed,
        )
        from transformers.utils import logging as hf_logging

        texts = list(texts)
        val_texts = list(validation[0])
        targets = _check_targets(texts, targets, len(taxonomy), "training data")
        val_targets = _check_targets(val_texts, validation[1], len(taxonomy), "validation data")
        # One tag per text: softmax cross-entropy learns far faster than per-tag sigmoids,
        # and the tags still come out as one ranked, calibrated list.
        self.single_label_ = bool(
            (targets.sum(axis=1) == 1).all() and (val_targets.sum(axis=1) == 1).all()
        )
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        set_seed(self.seed)
        spec = resolve_model(self.base_model)
        self.taxonomy_ = taxonomy
        self.base_model_id_ = spec.model_id
        self.tokenizer_ = AutoTokenizer.from_pretrained(str(spec.path))
        self.model_ = AutoModelForSequenceClassification.from_pretrained(
            str(spec.path),
            num_labels=len(taxonomy),
            problem_type=(
                "single_label_classification"
                if self.single_label_
                else "multi_label_classification"
            ),
            id2label=dict(enumerate(taxonomy.names)),
            label2id={name: j for j, name in enumerate(taxonomy.names)},
        )
        train_set = self._dataset(texts, targets)
        val_set = self._dataset(val_texts, val_targets)
        with tempfile.TemporaryDirectory(prefix="tag-classifier-") as scratch:
            args = TrainingArguments(
                output_dir=scratch,
                num_train_epochs=self.epochs,
                per_device_train_batch_size=self.batch_size,
                per_device_eval_batch_size=max(self.batch_size, 64),
                learning_rate=self.learning_rate,
                warmup_steps=max(1, int(0.1 * self.epochs * len(texts) / self.batch_size)),
                weight_decay=0.01,
                eval_strategy="epoch",
                save_strategy="epoch",
                save_total_limit=1,
                load_best_model_at_end=True,
                metric_for_best_model="eval_loss",
                greater_is_better=False,
                logging_strategy="epoch",
                report_to=[],
                seed=self.seed,
                data_seed=self.seed,
                use_cpu=self.device == "cpu" or not torch.cuda.is_available(),
                disable_tqdm=True,
            )
            trainer = Trainer(
                model=self.model_,
                args=args,
                train_dataset=train_set,
                eval_dataset=val_set,
                data_collator=DataCollatorWithPadding(self.tokenizer_),
                callbacks=[EarlyStoppingCallback(early_stopping_patience=self.patience)],
            )
            trainer.remove_callback(PrinterCallback)  # results go to stdout; logs to logging
            trainer.add_callback(_LogCallback())
            result = trainer.train()
            self.history_ = [
                {k: v for k, v in row.items() if isinstance(v, (int, float))}
                for row in trainer.state.log_history
            ]
            self.epochs_trained_ = float(trainer.state.epoch or 0.0)
            logger.info(
                "trained %.1f epochs, training loss %.4f",
                self.epochs_trained_,
                result.training_loss,
            )
        self.model_.eval()
        val_logits = self.logits(val_texts)
        activation = "softmax" if self.single_label_ else "sigmoid"
        self.calibrator_ = TemperatureScaler(activation=activation).fit(val_logits, val_targets)
        self.thresholds_ = fit_thresholds(self.calibrator_.transform(val_logits), val_targets)
        return self

    def _dataset(self, texts: list[str], targets: np.ndarray):
        from datasets import Dataset

        encoded = self.tokenizer_(texts, truncation=True, max_length=self.max_length)
        if self.single_label_:
            labels = targets.argmax(axis=1).astype(np.int64).tolist()
        else:
            labels = targets.astype(np.float32).tolist()
        return Dataset.from_dict({**encoded, "labels": labels})

    # -- inference ------------------------------------------------------------------------

    def logits(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Raw logits ``[n, n_tags]``, batched, texts sorted by length for speed."""
        import torch

        self._check_fitted()
        texts = list(texts)
        out = np.empty((len(texts), len(self.taxonomy_)), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        device = next(self.model_.parameters()).device
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                rows = order[start : start + batch_size]
                batch = self.tokenizer_(
                    [texts[r] for r in rows],
                    truncation=True,
                    max_length=self.max_length,
                    padding=True,
                    return_tensors="pt",
                ).to(device)
                out[rows] = self.model_(**batch).logits.float().cpu().numpy()
        return out

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Calibrated probabilities ``[n, n_tags]``."""
        return self.calibrator_.transform(self.logits(texts))

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """0/1 decisions with the per-tag thresholds."""
        return (self.predict_proba(texts) >= self.thresholds_).astype(np.int8)

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise RuntimeError("this TagClassifier is not trained: call fit() or load()")

    # -- persistence ----------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the model (safetensors), tokenizer, taxonomy and calibration to a folder."""
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model_.save_pretrained(directory, safe_serialization=True)
        self.tokenizer_.save_pretrained(directory)
        self.taxonomy_.save(directory / "taxonomy.json")
        write_json(
            directory / "thresholds.json",
            {
                "temperature": self.calibrator_.to_dict(),
                "thresholds": [float(t) for t in self.thresholds_],
                "base_model": self.base_model_id_,
                "max_length": self.max_length,
                "epochs_trained": self.epochs_trained_,
                "seed": self.seed,
                "single_label": self.single_label_,
                "history": self.history_,
            },
        )

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, device: str | None = None) -> TagClassifier:
        """Load a classifier saved with :meth:`save` (GPU-trained ones load on CPU)."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        directory = Path(directory)
        if not (directory / "thresholds.json").is_file():
            raise FileNotFoundError(f"{directory}: no trained tag classifier (run train-tags)")
        meta = read_json(directory / "thresholds.json")
        classifier = cls(max_length=meta["max_length"], seed=meta["seed"], device=device)
        classifier.taxonomy_ = Taxonomy.load(directory / "taxonomy.json")
        classifier.tokenizer_ = AutoTokenizer.from_pretrained(str(directory))
        classifier.model_ = AutoModelForSequenceClassification.from_pretrained(str(directory))
        if device is not None:
            classifier.model_.to(device)
        classifier.model_.eval()
        classifier.calibrator_ = TemperatureScaler.from_dict(meta["temperature"])
        classifier.thresholds_ = np.asarray(meta["thresholds"], dtype=np.float64)
        classifier.base_model_id_ = meta["base_model"]
        classifier.epochs_trained_ = meta["epochs_trained"]
        classifier.single_label_ = bool(meta.get("single_label", False))
        classifier.history_ = list(meta.get("history", []))
        if classifier.model_.config.num_labels != len(classifier.taxonomy_):
            raise ValueError(
                f"{directory}: model has {classifier.model_.config.num_labels} outputs but the "
                f"taxonomy has {len(classifier.taxonomy_)} tags"
            )
        return classifier
