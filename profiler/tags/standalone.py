"""Tags for texts from a directory that holds only a tagger: no catalogue, no shoppers.

A team that wants interest tags for review or search texts should not have to invent a
catalogue. ``profiler train-tags --workspace DIR --data FILE ...`` on a directory that
holds no built workspace trains the same tagger a workspace trains
(:func:`profiler.tags.training.train_tags`: the fine-tuned transformer stacked with the
lexical model, calibrated, evaluated against zero-shot and TF-IDF + LR) into::

    DIR/tagger.json    what was trained: model, data file, settings, the report's summary
    DIR/tags/          the tag model (safetensors + JSON)
    DIR/embeddings/    the embedding cache of the zero-shot member

and ``profiler tags --workspace DIR --texts FILE`` answers from it. A retrain writes the
new model beside the old one and swaps it in only when it is complete.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from profiler.storage import read_json, replacing, write_json

__all__ = ["TextTagger", "is_workspace"]

logger = logging.getLogger(__name__)

MARKER = "tagger.json"


def is_workspace(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` holds a built workspace (its ``CURRENT``, or a format-2
    ``manifest.json``) rather than a text-only tagger or nothing."""
    directory = Path(directory)
    return (directory / "CURRENT").exists() or (directory / "manifest.json").exists()


class TextTagger:
    """A tag model served from its own directory (module docstring)."""

    def __init__(self, directory: Path, model, meta: dict) -> None:
        self.directory = directory
        self.model = model
        self.meta = meta

    @staticmethod
    def exists(directory: str | os.PathLike[str]) -> bool:
        """Whether ``directory`` holds a standalone tagger."""
        return (Path(directory) / MARKER).is_file()

    @classmethod
    def train(
        cls,
        directory: str | os.PathLike[str],
        *,
        data: str | os.PathLike[str],
        text_column: str = "text",
        label_column: str = "label",
        group_column: str | None = None,
        taxonomy: str | os.PathLike[str] | None = None,
        model: str | os.PathLike[str] | None = None,
        epochs: int = 4,
        batch_size: int = 16,
        max_length: int = 256,
        learning_rate: float = 3e-5,
        seed: int = 0,
    ) -> tuple[TextTagger, list[dict]]:
        """Train a tagger on the labelled file ``data`` into ``directory`` (created if
        missing; one that holds a built workspace is refused: train that one's tagger
        through the workspace). Tags are the labels' (or ``taxonomy``'s). Returns the
        tagger and the evaluation rows."""
        from profiler.embedding import Embedder
        from profiler.tags.training import labelled_file, train_tags

        directory = Path(directory)
        if is_workspace(directory):
            raise ValueError(
                f"{directory}: holds a built workspace; `profiler train-tags` trains its tagger "
                "in place (a text-only tagger needs a directory of its own)"
            )
        examples, vocabulary = labelled_file(
            data, text_column, label_column, group_column, taxonomy
        )
        directory.mkdir(parents=True, exist_ok=True)
        embedder = Embedder(model, cache_dir=directory / "embeddings", show_progress_bar=False)
        with replacing(directory / "tags") as staging:
            tagger, report = train_tags(
                examples,
                vocabulary,
                embedder,
                output=staging,
                base_model=model,
                epochs=epochs,
                batch_size=batch_size,
                max_length=max_length,
                learning_rate=learning_rate,
                seed=seed,
            )
        default = next(r for r in report if r.get("default") and r["level"] == "text")
        meta = {
            "model": str(model) if model is not None else None,
            "model_id": embedder.model_id,
            "data": str(data),
            "text_column": text_column,
            "label_column": label_column,
            "tags": len(vocabulary),
            "texts": len(examples.texts),
            "trained": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "system": tagger.system,
            "settings": {
                "epochs": epochs,
                "batch_size": batch_size,
                "max_length": max_length,
                "learning_rate": learning_rate,
                "seed": seed,
            },
            "test_macro_f1": default.get("macro_f1"),
        }
        write_json(directory / MARKER, meta)  # last: its presence marks a usable tagger
        logger.info("trained a text tagger in %s (%d tags)", directory, len(vocabulary))
        return cls(directory, tagger, meta), report

    @classmethod
    def open(cls, directory: str | os.PathLike[str]) -> TextTagger:
        """Load the tagger of ``directory`` (``FileNotFoundError`` saying what to run)."""
        from profiler.embedding import Embedder
        from profiler.tags.training import TagModel

        directory = Path(directory)
        if not cls.exists(directory):
            raise FileNotFoundError(
                f"{directory}: no workspace and no text tagger; run `profiler train-tags "
                f"--workspace {directory} --data FILE` first"
            )
        meta = read_json(directory / MARKER)
        embedder = Embedder(
            meta["model"], cache_dir=directory / "embeddings", show_progress_bar=False
        )
        if embedder.spec.model_id != meta["model_id"].split("+")[0]:
            raise ValueError(
                f"{directory}: trained with {meta['model_id']!r}, but {embedder.model_id!r} "
                "is installed; train it again"
            )
        return cls(directory, TagModel.load(directory / "tags", embedder), meta)

    def tags(self, texts: Sequence[str] | str, *, top: int = 5) -> list:
        """Tags of the texts taken together (one shopper's texts), with confidence and
        the texts behind each (:class:`profiler.tags.users.UserTag`)."""
        from profiler.tags.users import text_tags

        return text_tags(self.model, texts, top=top)
