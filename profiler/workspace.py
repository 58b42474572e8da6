"""The persisted workspace: one directory that the CLI, scripts, notebooks and jobs share.

Layout (see ``index/README.md`` and :mod:`profiler.store`)::

    CURRENT                names the published generation (replaced last, atomically)
    generations/<id>/      one consistent state, every file checksummed in its manifest:
      manifest.json        format version, model id + dim, counts, privacy, files, artifacts
      items.parquet        the validated catalogue
      items.faiss, items.ids.npy, items.labels.npy, items.json   item vectors (FAISS)
      events.parquet       validated events under pseudonymous user ids; ``text_row``
                           points into event_vectors.npy
      event_vectors.npy    one vector per distinct (scrubbed) event text
      profiles.*, users.*, interactions.*, lexical/, models/   profiles, user index,
                           counts, BM25, ranker, tag and sentiment models
      overrides.json       pinned and removed tags per shopper
    embeddings/            vector cache keyed by (model id, text hash)
    quarantine/            rejected input rows (scrubbed) with file, row, field and reason
    privacy.key            the key of the user-id pseudonyms (0600)

A write stages a new generation and publishes it in one step, so a crash or a kill leaves
the previous state or the new one, never a mix; readers keep the generation they opened.
Open once (model and indexes loaded once), then make many cheap calls.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
import threading
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from profiler.data import load_catalog, load_events
from profiler.embedding import Embedder, resolve_model
from profiler.jobs import ShardedEmbeddings
from profiler.privacy import ForgetReport, PrivacyPolicy, Pseudonymizer, Scrubber
from profiler.profiles import (
    ProfileBuilder,
    ProfileConfig,
    ProfileStore,
    load_profiles,
)
from profiler.ranking import (
    RankerConfig,
    State,
    TwoStageRecommender,
    event_evidence,
    event_weights,
    load_scorer,
    mmr,
    save_scorer,
    tune_candidate_search,
)
from profiler.recommender import Corpus, Query
from profiler.retrieval import (
    CHANNELS,
    FEATURES,
    Catalogue,
    ChannelConfig,
    Interactions,
    LexicalIndex,
)
from profiler.storage import atomic_path, read_frame, read_json, save_npy, write_json
from profiler.store import Generation, Lease, Store
from profiler.text import FIELD_LABELS
from profiler.vectors import FaissIndex, VectorIndex, load_index

__all__ = ["FORMAT_VERSION", "Results", "UnknownUserError", "Workspace", "item_document"]

logger = logging.getLogger(__name__)

# 2: two-stage recommender state (interactions, lexical/, models/ranker)
# 3: generations with checksums, pseudonymous user ids, scrubbed text
FORMAT_VERSION = 3


class Results(NamedTuple):
    """Ranked items, best first; ``reasons`` (recommendations only) explain each one:
    ``{"channels": [...], "features": [{"feature", "contribution"}, ...], "closest": ...}``."""

    ids: list[str]
    scores: np.ndarray
    titles: list[str]
    reasons: list[dict] | None = None

    def records(self) -> list[dict]:
        """``[{"item_id", "score", "title"[, "reasons"]}, ...]`` for JSON output."""
        out = [
            {"item_id": i, "score": round(float(s), 6) if np.isfinite(s) else None, "title": t}
            for i, s, t in zip(self.ids, self.scores, self.titles)
        ]
        for record, reason in zip(out, self.reasons or ()):
            record["reasons"] = reason
        return out

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"item_id": self.ids, "score": self.scores, "title": self.titles})


class UnknownUserError(KeyError):
    """A user id the workspace has no events for (a ``KeyError``, naming the id)."""

    def __init__(self, user: str) -> None:
        super().__init__(f"unknown user {user!r}")
        self.user = user


#: What every manifest holds: section -> keys (a hand-edited or truncated one is refused).
MANIFEST_KEYS = {"model": ("model_id", "dim"), "counts": ("items", "events", "users")}


def _check_manifest(manifest: dict, path: Path) -> None:
    for section, keys in MANIFEST_KEYS.items():
        part = manifest.get(section)
        if not isinstance(part, dict):
            raise ValueError(f"{path}: no {section!r} section; rebuild the workspace")
        missing = [k for k in keys if k not in part]
        if missing:
            raise ValueError(
                f"{path}: {section!r} lacks {missing}; the manifest was edited or cut short: "
                "rebuild the workspace"
            )


#: the item fields :func:`item_document` reads
_DOCUMENT_FIELDS = ("title", "category", "brand", "description")


def item_document(row: pd.Series | dict) -> str:
    """The text that represents an item: title, category, brand and description."""
    category, brand = FIELD_LABELS
    parts = [row["title"]]
    if row.get("category"):
        parts.append(f"{category}: {row['category']}")
    if row.get("brand"):
        parts.append(f"{brand}: {row['brand']}")
    if row.get("description"):
        parts.append(row["description"])
    return ". ".join(parts)


def display_titles(items: pd.DataFrame, events: pd.DataFrame) -> pd.Series:
    """What to call each item on screen (aligned with ``items``): its title; for an item
    without one, the first sentence of its best review of 4 stars or more (highest rating,
    then longest), never a negative one, else its category's last level and its id.

    The name is for display only: the item's own text (embedding, BM25) never takes
    review words, or an evaluation would see a held-out review inside its item."""
    titles = items["title"].fillna("").astype(str).str.strip()
    if not (titles == "").any():
        return titles
    reviews = events[(events["kind"] == "review") & (events["text"] != "")]
    reviews = reviews[reviews["rating"] >= 4]
    best: dict[str, str] = {}
    if len(reviews):
        ranked = reviews.assign(length=reviews["text"].str.len())
        ranked = ranked.sort_values(["rating", "length"], ascending=False, kind="stable")
        for item_id, text in zip(ranked["item_id"], ranked["text"]):
            best.setdefault(item_id, text)
    names = []
    for item_id, title, category in zip(items["item_id"], titles, items["category"].fillna("")):
        if title:
            names.append(title)
        elif item_id in best:
            names.append(_first_sentence(best[item_id]))
        else:
            leaf = str(category).split(">")[-1].strip()
            names.append(f"{leaf} {item_id}".strip() if leaf else str(item_id))
    return pd.Series(names, index=items.index)


def _first_sentence(text: str, limit: int = 60) -> str:
    import re

    sentence = re.split(r"(?<=[.!?])\s", " ".join(text.split()), maxsplit=1)[0].strip()
    return sentence if len(sentence) <= limit else sentence[: limit - 1].rstrip() + "…"


class _ReadWriteLock:
    """Many readers or one writer, in one process; a thread holding the write side may
    also read (a writer calls read methods), and waiting writers hold back new readers
    so that a stream of queries cannot starve an update."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer: int | None = None
        self._waiting = 0
        self._local = threading.local()

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        me = threading.get_ident()
        depth = getattr(self._local, "depth", 0)
        if self._writer == me or depth:
            self._local.depth = depth + 1
            try:
                yield
            finally:
                self._local.depth = depth
            return
        with self._cond:
            while self._writer is not None or self._waiting:
                self._cond.wait()
            self._readers += 1
        self._local.depth = 1
        try:
            yield
        finally:
            self._local.depth = 0
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        me = threading.get_ident()
        if self._writer == me:
            yield
            return
        with self._cond:
            self._waiting += 1
            while self._writer is not None or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = me
        try:
            yield
        finally:
            with self._cond:
                self._writer = None
                self._cond.notify_all()


def _reads(method):
    """Run a query method under the workspace's read lock (updates wait for it)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._rw.read():
            return method(self, *args, **kwargs)

    return wrapper


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("interest-profiler")
    except PackageNotFoundError:
        return "0+unknown"


class Workspace:
    """A built workspace: catalogue, events, item index and the embedder that made them.

    Use :meth:`build` to create one from input files and :meth:`open` to load one.

    Examples
    --------
    >>> ws = Workspace.build("index/shop", catalog="items.csv", events="ev.csv")  # doctest: +SKIP
    >>> ws.search("waterproof hiking boots", k=5).ids  # doctest: +SKIP
    """

    def __init__(
        self,
        path: Path,
        manifest: dict,
        items: pd.DataFrame,
        events: pd.DataFrame,
        item_index: VectorIndex,
        event_vectors: np.ndarray,
        embedder: Embedder,
        model: TwoStageRecommender | None = None,
        profile_config: ProfileConfig | None = None,
        *,
        data: Path | None = None,
        lease: Lease | None = None,
        privacy: PrivacyPolicy | None = None,
    ) -> None:
        self.path = path
        self.store = Store(path)
        self.data = data if data is not None else path  # the open generation's directory
        self._lease = lease
        self.privacy = privacy if privacy is not None else PrivacyPolicy(None, Scrubber(()))
        self._rw = _ReadWriteLock()
        self.manifest = manifest
        self.items = items
        self.item_index = item_index
        self.embedder = embedder
        self.profile_config = profile_config or ProfileConfig()
        self._model = model
        self._tag_model = None
        self._sentiment = None
        self._styles = None
        self._bands: np.ndarray | None = None
        self._brands: np.ndarray | None = None
        self._tag_level: str | int | None = None
        self._overrides = None
        self._arms = None
        self._explore = None
        self._item_ids: list[str] = items["item_id"].tolist()
        self._item_position = {item: p for p, item in enumerate(self._item_ids)}
        shown = items["display_title"] if "display_title" in items else items["title"]
        self._titles = ByItem(self._item_position, shown)
        self._categories = ByItem(self._item_position, items["category"].fillna(""))
        self._set_events(events, event_vectors)

    # -- generations ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _writing(self, *, carry=None, drop=(), exclusive: bool = True) -> Iterator[Path]:
        """Stage a new generation from the open one (files linked from it: all, less
        ``drop``, or only ``carry``), yield its directory to write into, and publish it
        when the block succeeds. Queries in other threads wait while the block runs
        (``exclusive``: it changes in-memory state), or, when the block takes the write
        lock itself around its changes (``exclusive=False``), only then and for the
        swap to the published generation."""
        if self.item_index.read_only:
            raise ValueError(
                f"{self.path}: opened with mmap=True, read-only; open it without mmap to change it"
            )
        with self.store.write_lock():
            current = self.store.current()
            if self._lease is not None and (
                current is None or current.id != self._lease.generation.id
            ):
                raise RuntimeError(
                    f"{self.path}: another process published a new state of this workspace "
                    "since it was opened here; open it again before changing it"
                )
            with self.store.staging(carry, drop=drop) as staged:
                with self._rw.write() if exclusive else contextlib.nullcontext():
                    yield staged.dir
                # checksumming and renaming touch only the staged files: queries go on,
                # and wait only for the swap to the published generation
                self.manifest["updated"] = _now()
                published, manifest = self.store.publish(staged, self.manifest)
                with self._rw.write():
                    self._hold(published, manifest)

    def _publish(self, staged: Generation, manifest: dict) -> None:
        self._hold(*self.store.publish(staged, manifest))

    def _hold(self, published: Generation, manifest: dict) -> None:
        self.manifest = manifest
        lease = self.store.hold(published)
        if self._lease is not None:
            self._lease.release()
        self._lease, self.data = lease, published.dir

    @property
    def generation(self) -> str | None:
        """The id of the generation this workspace has open."""
        return self.manifest.get("generation")

    def close(self) -> None:
        """Let go of the open generation (a later writer may then delete it)."""
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def stored_id(self, user: str) -> str:
        """The stored id of a shopper given by her raw id (or already by her pseudonym);
        :class:`UnknownUserError` names the id as given."""
        if not isinstance(user, str):
            raise TypeError(f"user ids are strings, got {type(user).__name__} {user!r}")
        stored = self.privacy.user(unicodedata.normalize("NFC", user))
        if stored in self._user_rows:
            return stored
        if user in self._user_rows:
            return user
        raise UnknownUserError(user)

    # -- review sentiment -----------------------------------------------------------------

    @property
    def sentiment_dir(self) -> Path:
        return self.data / "models" / "sentiment"

    def train_sentiment(
        self,
        *,
        data: str | os.PathLike[str] | None = None,
        text_column: str = "text",
        rating_column: str = "rating",
        group_column: str | None = None,
        model: str | os.PathLike[str] | None = None,
        epochs: int = 2,
        max_length: int = 256,
        seed: int = 0,
    ) -> dict:
        """Fine-tune the sentiment model (:mod:`profiler.sentiment`) on star-rated
        reviews: the workspace's own by default, or a file with text and rating columns
        (stars, or polarity labels: :func:`profiler.sentiment.rated_file`).
        Saves it to ``models/sentiment/``; then every review here without a rating of its
        own gets the predicted one (``rating_predicted``) and profiles are refitted.
        Returns the test report (model, VADER, majority)."""
        from profiler.sentiment import SentimentModel, rated_file

        if data is not None:
            texts, ratings, groups = rated_file(data, text_column, rating_column, group_column)
        else:
            rated = self.events[self._own_rating()]
            texts, ratings = list(rated["text"]), list(rated["rating"])
            groups = list(rated["user_id"])
        sentiment, report = SentimentModel.train(
            texts,
            ratings,
            groups,
            base_model=model,
            epochs=epochs,
            max_length=max_length,
            seed=seed,
        )
        with self._writing(drop=["models/sentiment"]) as staged:
            sentiment.save(staged / "models" / "sentiment", report)
            self._register(staged, "models/sentiment", data)
            self._sentiment = sentiment
            events = self.events.copy()
            if predict_ratings(events, sentiment):  # profiles, counts: refit on them
                self._set_events(events, self.event_vectors)
                recommender = self.recommender
                recommender.set_state(recommender.fit_state(self.events))
                self._save_state(staged)
        return report

    def _register(self, staged: Path, artifact: str, data) -> None:
        """Record what a derived model was trained from in the manifest's artifact
        registry: a file, or this workspace's own catalogue and events (then a rebuild
        with another catalogue marks it stale, and forgetting a shopper who contributed
        removes it)."""
        from profiler.store import file_digest

        source = (
            {"file": str(data), "blake2b": file_digest(Path(data))["blake2b"]}
            if data is not None and Path(data).is_file()
            else {"workspace": self.generation}
        )
        self.manifest.setdefault("artifacts", {})[artifact] = {
            "built_from": source,
            "catalogue": self.manifest["catalogue"],
            "trained": _now(),
        }

    @property
    def sentiment(self):
        """The trained :class:`~profiler.sentiment.SentimentModel` (loaded on first use)."""
        if self._sentiment is None:
            from profiler.sentiment import SentimentModel

            self._sentiment = SentimentModel.load(self.sentiment_dir)
        return self._sentiment

    def _own_rating(self) -> np.ndarray:
        """Reviews with text and a rating the shopper gave (not a predicted one)."""
        events = self.events  # _set_events gave every row its rating_predicted flag
        return (
            (events["kind"] == "review")
            & (events["text"] != "")
            & events["rating"].notna()
            & ~events["rating_predicted"]
        ).to_numpy()

    def _predict_ratings(self, events: pd.DataFrame) -> int:
        """Fill the ratings of reviews with text but no rating of their own from the
        sentiment model, in place, marking them ``rating_predicted``; returns how many."""
        trained = self._sentiment is not None or self.sentiment_dir.is_dir()
        return predict_ratings(events, self.sentiment if trained else None)

    # -- interest tags --------------------------------------------------------------------

    @property
    def tags_dir(self) -> Path:
        return self.data / "models" / "tags"

    def train_tags(
        self,
        *,
        data: str | os.PathLike[str] | None = None,
        text_column: str = "text",
        label_column: str = "label",
        group_column: str | None = None,
        level: str | int = "top",
        taxonomy: str | os.PathLike[str] | None = None,
        model: str | os.PathLike[str] | None = None,
        epochs: int = 4,
        batch_size: int = 16,
        max_length: int = 256,
        learning_rate: float = 3e-5,
        seed: int = 0,
        styles: str | os.PathLike[str] | None = None,
    ) -> list[dict]:
        """Fine-tune the transformer, fit the lexical model and stack them (the weight
        chosen on validation); evaluate all three against zero-shot and TF-IDF + LR, per
        text and per test shopper (see :func:`profiler.tags.training.train_tags`).

        Without ``data`` it learns from the workspace: each review or search with an item
        is labelled with the tag of that item's category (``level``: ``top``, ``leaf``,
        ``full`` or a depth). ``data`` is a labelled file (labels separated by ``|``).
        ``taxonomy`` is a JSON/YAML tag file; by default tags come from the catalogue's
        categories (or from the labels of ``data``). Saves to ``models/tags/`` and returns
        the evaluation rows. ``styles`` is a style taxonomy file (see
        :mod:`profiler.tags.typed`; ``profiler/data/clothing/styles.json`` is the bundled
        example): its tags are calibrated on the catalogue and shown as ``style`` tags.
        """
        from profiler.tags.taxonomy import Taxonomy
        from profiler.tags.training import labelled_file, train_tags, workspace_tagging_data

        if data is not None:
            examples, vocabulary = labelled_file(
                data, text_column, label_column, group_column, taxonomy
            )
        else:
            examples = workspace_tagging_data(self.events, self.items, level)
            vocabulary = (
                Taxonomy.from_file(taxonomy)
                if taxonomy is not None
                else Taxonomy.from_categories(self.items["category"].fillna(""), level=level)
            )
        with self._writing(drop=["models/tags"], exclusive=False) as staged:
            tags_dir = staged / "models" / "tags"
            tagger, report = train_tags(
                examples,
                vocabulary,
                self.embedder,
                output=tags_dir,
                base_model=model,
                epochs=epochs,
                batch_size=batch_size,
                max_length=max_length,
                learning_rate=learning_rate,
                seed=seed,
            )
            write_json(
                tags_dir / "tagging.json",
                {
                    "level": level,
                    "from_file": data is not None,
                    "system": tagger.system,
                    "transformer_share": tagger.weight,
                    "epochs": epochs,
                    "epochs_kept": tagger.classifier.epochs_trained_,
                    "batch_size": batch_size,
                    "max_length": max_length,
                    "learning_rate": learning_rate,
                },
            )
            if styles is not None:
                from profiler.tags.typed import StyleTagger, load_styles

                ids = list(self.items["item_id"])
                documents = [item_document(r) for r in self.items.to_dict(orient="records")]
                style_tagger = StyleTagger().fit(
                    load_styles(styles), documents, self.item_index.get(ids), self.embedder
                )
                style_tagger.save(tags_dir)
                report.append({"system": "styles", "level": "item", "styles": style_tagger.report_})
            self._register(staged, "models/tags", data)
        with self._rw.write():
            self._tag_model = self._tag_level = self._styles = None
        return report

    @property
    def tag_model(self):
        """The trained :class:`~profiler.tags.training.TagModel` (loaded on first use)."""
        if self._tag_model is None:
            from profiler.tags.training import TagModel

            if not (self.tags_dir / "tagger.json").is_file():
                raise FileNotFoundError(
                    f"{self.path}: no tag model yet; run "
                    f"`profiler train-tags --workspace {self.path}`"
                )
            self._tag_model = TagModel.load(self.tags_dir, self.embedder)
        return self._tag_model

    def tag_overrides(self):
        """Pinned and removed tags per user, read once per opened workspace: ``recommend``
        consults them on every call."""
        if self._overrides is None:
            from profiler.tags.users import TagOverrides

            self._overrides = TagOverrides.load(self.data / "overrides.json")
        return self._overrides

    @property
    def tag_level(self) -> str | int:
        """The category level the tagger was trained at (``tagging.json``, read once)."""
        if self._tag_level is None:
            self._tag_level = read_json(self.tags_dir / "tagging.json").get("level", "top")
        return self._tag_level

    @_reads
    def tags(
        self,
        user: str | None = None,
        *,
        texts: Sequence[str] | None = None,
        top: int = 5,
    ) -> list:
        """Interest tags with confidence and evidence, for a user or for free texts.

        A user's tags weigh her events like her profile does (a bad review lowers its
        tags) and honour her pinned and removed tags.
        """
        from profiler.tags.taxonomy import category_tag
        from profiler.tags.users import aggregate_tags, text_tags

        if (user is None) == (texts is None):
            raise ValueError("pass exactly one of user= or texts=")
        if user is None:
            return text_tags(self.tag_model, texts, top=top)
        user = self.stored_id(user)  # an unknown shopper first, then a missing model
        model = self.tag_model
        names = model.taxonomy.names
        events = self.user_events(user)
        builder = ProfileBuilder(self.profile_config)
        evidence = event_evidence(builder, events, self.item_index, self.event_vectors)
        weights = evidence.weights * builder.decay(evidence.timestamps.max() - evidence.timestamps)
        overrides = self.tag_overrides()
        pinned, removed = overrides.pinned(user), overrides.removed(user)
        probs = np.zeros((len(events), len(names)))
        has_text = (events["text"] != "").to_numpy()
        if has_text.any():
            probs[has_text] = model.predict_proba(list(events["text"][has_text]))
        level = self.tag_level
        for row in np.flatnonzero(~has_text):
            tag = category_tag(self._categories.get(events["item_id"].iloc[row], ""), level)
            if tag in model.taxonomy:
                probs[row, model.taxonomy.index(tag)] = 1.0
        tags = aggregate_tags(
            events, probs, weights, names, top=top, pinned=pinned, removed=removed
        )
        return tags + self._typed_tags(events, weights, removed)

    def _typed_tags(self, events: pd.DataFrame, weights: np.ndarray, removed) -> list:
        """Brand, price-band and style tags from the items of her events (see
        :mod:`profiler.tags.typed`), weighted like her category tags."""
        from dataclasses import replace

        from profiler.tags.typed import PRICE_BANDS
        from profiler.tags.users import aggregate_tags

        position = self.recommender.catalogue_.position
        rows = np.array([position.get(i, -1) for i in events["item_id"]], dtype=np.int64)
        if not (rows >= 0).any():
            return []
        rows_known = np.where(rows >= 0, rows, 0)
        out = []
        if self._brands is None:
            self._brands = self.items["brand"].fillna("").astype(str).to_numpy()
        brands = self._brands[rows_known]
        brands = np.where(rows >= 0, brands, "")
        names = sorted({b for b in brands if b})
        bands = self._price_bands()[rows_known]
        bands = np.where(rows >= 0, bands, "")
        kinds = [("brand", names, brands, 2), ("price", list(PRICE_BANDS), bands, 1)]
        for kind, values, per_event, limit in kinds:
            if not values:
                continue
            probs = (per_event[:, None] == np.array(values, dtype=object)[None, :]).astype(float)
            found = aggregate_tags(events, probs, weights, values, top=limit, removed=removed)
            out += [replace(t, type=kind) for t in found]
        styles = self.styles
        if styles is not None:
            carried = styles.item_probs_[rows_known] * styles.carried()[rows_known]
            carried[rows < 0] = 0.0
            found = aggregate_tags(events, carried, weights, styles.names_, top=3, removed=removed)
            out += [replace(t, type="style") for t in found]
        return out

    def _price_bands(self) -> np.ndarray:
        if self._bands is None:
            from profiler.tags.typed import item_price_bands

            prices = self.items["price"] if "price" in self.items else [np.nan] * len(self.items)
            self._bands = item_price_bands(self.items["category"].fillna(""), prices)
        return self._bands

    @property
    def styles(self):
        """The style tagger ``train-tags --styles`` fitted, or ``None``."""
        if self._styles is None and (self.tags_dir / "styles.json").is_file():
            from profiler.tags.typed import StyleTagger

            self._styles = StyleTagger.load(self.tags_dir)
        return self._styles

    def pin_tag(self, user: str, tag: str) -> None:
        """Always show ``tag`` for ``user`` and steer her recommendations toward it."""
        self._override(user, tag, pin=True)

    def remove_tag(self, user: str, tag: str) -> None:
        """Never show ``tag`` for ``user`` and keep its items out of her recommendations."""
        self._override(user, tag, pin=False)

    def _override(self, user: str, tag: str, *, pin: bool) -> None:
        stored = self.stored_id(user)
        self.tag_model.taxonomy.index(tag)
        with self._writing(drop=["overrides.json"]) as staged:
            overrides = self.tag_overrides()
            (overrides.pin if pin else overrides.remove)(stored, tag)
            overrides.save(staged / "overrides.json")

    @property
    def _text_rows(self) -> dict[str, int]:
        """Event text -> its row in ``event_vectors`` (only updates need it: built then)."""
        if self._text_row_map is None:
            self._text_row_map = dict(zip(self.events["text"], self.events["text_row"]))
        return self._text_row_map

    def _set_events(
        self, events: pd.DataFrame, event_vectors: np.ndarray, user_rows: dict | None = None
    ) -> None:
        # workspaces built before sentiment have no flag: none of their ratings is predicted
        flag = events.get("rating_predicted", False)
        events["rating_predicted"] = pd.Series(flag, index=events.index).fillna(False).astype(bool)
        self.events = events
        self.event_vectors = event_vectors
        self._user_rows = rows_by_user(events["user_id"]) if user_rows is None else user_rows
        self._text_row_map: dict[str, int] | None = None  # built by the first update
        self._explore_events = None
        self._corpus: Corpus | None = None
        if self._model is not None:
            self._model.text_vectors_ = event_vectors

    # -- construction -------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        path: str | os.PathLike[str],
        *,
        catalog: str | os.PathLike[str] | pd.DataFrame,
        events: str | os.PathLike[str] | pd.DataFrame,
        model: str | os.PathLike[str] | None = None,
        device: str | None = None,
        columns: dict[str, str] | None = None,
        batch_size: int = 64,
        show_progress_bar: bool | None = None,
        embedder: Embedder | None = None,
        item_vectors: str | os.PathLike[str] | ShardedEmbeddings | None = None,
        backend: str = "auto",
        dtype: str | None = None,
        pseudonymize: bool = True,
        scrub: str | Sequence[str] | Scrubber | None = "all",
        index: str | None = None,
    ) -> Workspace:
        """Validate inputs, embed items and event texts, index items, persist everything.

        Bad rows go to ``quarantine/`` and the build goes on. Vectors already in the
        workspace's embedding cache are not recomputed, so a rebuild is fast.

        Parameters
        ----------
        path : path
            Workspace directory (created if missing).
        catalog, events : path or DataFrame
            Inputs (CSV, JSON Lines or Parquet by extension).
        model : str or path, optional
            Sentence-transformers model; the bundled all-MiniLM-L6-v2 by default.
        device : str, optional
            ``auto`` (default), ``cpu`` or ``cuda``.
        columns : mapping, optional
            Source-to-our column renames applied to both inputs.
        embedder : Embedder, optional
            An already loaded embedder to reuse (``model`` and ``device`` are then
            ignored); its cache is pointed at this workspace.
        backend, dtype : str, optional
            The embedder's engine and precision (see :class:`profiler.embedding.Embedder`;
            the default is the fastest path that agrees with float32). The workspace
            records them, and :meth:`open` embeds queries with the same numerics.
        item_vectors : path or ShardedEmbeddings or ParquetVectors, optional
            Vectors keyed by ``item_id``, used instead of embedding the items again: the
            output folder of an embedding job (``profiler embed``) over the catalogue,
            whose model must be the workspace's, or a ``.parquet`` file of the user's own
            vectors (``item_id`` and a fixed-length ``vector`` column; see
            :class:`profiler.jobs.ParquetVectors`). A file records no model, so its
            vectors are taken as the workspace model's: only their dimension is checked,
            and non-unit rows are L2-normalised. Items they lack are embedded here.
        pseudonymize : bool
            Store user ids as keyed pseudonyms (default; see :mod:`profiler.privacy`).
            Raw ids still work everywhere in the API and the CLI.
        scrub : str or list, optional
            Personal data removed from event texts before they are embedded or stored:
            ``"all"`` (default: e-mail, card, phone, address), ``"none"``, or a list of
            those kinds.
        index : str, optional
            Where the item vectors are served from: ``faiss`` (in the workspace, the
            default for a new one), or Milvus (:mod:`profiler.milvus`):
            ``milvus://host:19530``, ``milvus+https://host`` or ``milvus:file.db`` (Milvus
            Lite). A rebuild keeps the previous build's choice unless given. The build
            fits the ranker on a FAISS copy either way.

        The result is published as one new generation (:mod:`profiler.store`): a build
        killed midway leaves the previous workspace as it was.
        """
        path = Path(path)
        store = Store(path)
        with store.write_lock():
            privacy = PrivacyPolicy(
                Pseudonymizer.for_workspace(path) if pseudonymize else None,
                scrub if isinstance(scrub, Scrubber) else Scrubber.parse(scrub),
            )
            quarantine = path / "quarantine"
            items = load_catalog(catalog, columns=columns, quarantine=quarantine / "catalog.jsonl")
            if items.frame.empty:
                raise ValueError(f"{items.report.file}: no valid catalogue rows; see {quarantine}")
            events_loaded = load_events(
                events,
                items=items.frame["item_id"],
                columns=columns,
                quarantine=quarantine / "events.jsonl",
                privacy=privacy,
            )
            event_frame = events_loaded.frame.sort_values("timestamp", kind="stable")
            event_frame = event_frame.reset_index(drop=True)
            previous = _previous_manifest(store)
            if index is None:
                index = (previous or {}).get("index", {}).get("spec", "faiss")
            from profiler.milvus import parse_spec

            parse_spec(index)  # a bad value fails before any work
            # models trained separately (tags, sentiment) and tag overrides carry over
            with store.staging(
                carry=["models/tags", "models/sentiment", "overrides.json"]
            ) as staged:
                sentiment = None
                if (staged.dir / "models" / "sentiment").is_dir():
                    # a model trained here before: reviews without stars get predicted ones
                    from profiler.sentiment import SentimentModel

                    sentiment = SentimentModel.load(staged.dir / "models" / "sentiment")
                    predict_ratings(event_frame, sentiment)
                ws = cls._build_into(
                    staged,
                    path,
                    items,
                    events_loaded,
                    event_frame,
                    previous,
                    privacy,
                    embedder=_workspace_embedder(
                        embedder,
                        path,
                        model=model,
                        device=device,
                        batch_size=batch_size,
                        show_progress_bar=show_progress_bar,
                        backend=backend,
                        dtype=dtype,
                    ),
                    item_vectors=item_vectors,
                    index_spec=index,
                )
                ws._sentiment = sentiment
                ws._publish(staged, ws.manifest)
            _secure_root(path)
            logger.info(
                "built %s: %d items, %d events, %d users; ranker: %s",
                path,
                len(items.frame),
                len(event_frame),
                ws.manifest["counts"]["users"],
                ws.manifest["recommender"]["why"],
            )
        return ws

    @classmethod
    def _build_into(
        cls,
        staged: Generation,
        path: Path,
        items,
        events_loaded,
        event_frame: pd.DataFrame,
        previous: dict | None,
        privacy: PrivacyPolicy,
        *,
        embedder: Embedder,
        item_vectors,
        index_spec: str = "faiss",
    ) -> Workspace:
        """Embed, index and fit into a staged generation; returns the workspace (its
        manifest complete but for the file table that publishing adds)."""
        from profiler.explore import choose_config
        from profiler.milvus import parse_spec

        target = staged.dir
        documents = [item_document(row) for row in items.frame.to_dict(orient="records")]
        item_vectors = _item_vectors(embedder, items.frame["item_id"], documents, item_vectors)
        index = FaissIndex(item_vectors.shape[1], model_id=embedder.model_id)
        index.add(items.frame["item_id"].tolist(), item_vectors)

        texts = event_frame["text"]
        unique_texts = pd.unique(texts[texts != ""])
        logger.info("embedding %d distinct event texts", len(unique_texts))
        event_vectors = embedder.encode(list(unique_texts))
        row_of = {text: row for row, text in enumerate(unique_texts)}
        event_frame["text_row"] = texts.map(row_of).fillna(-1).astype(np.int64)

        now = _now()
        manifest = {
            "format_version": FORMAT_VERSION,
            "library_version": _version(),
            "created": (previous or {}).get("created", now),
            "updated": now,
            "model": {
                "model_id": embedder.model_id,
                "base_model_id": embedder.spec.model_id,
                "backend": embedder.backend,
                "dtype": embedder.dtype,
                "dim": int(item_vectors.shape[1]),
                "path": str(embedder.spec.path),
            },
            "counts": {
                "items": len(items.frame),
                "events": len(event_frame),
                "users": int(event_frame["user_id"].nunique()),
                "rejected_items": items.report.n_rejected,
                "rejected_events": events_loaded.report.n_rejected,
                "duplicate_events": events_loaded.report.n_duplicates,
            },
            "inputs": {
                "catalog": items.report.file,
                "events": events_loaded.report.file,
            },
            "catalogue": _catalogue_fingerprint(items.frame),
            "privacy": {
                **privacy.describe(),
                # the DP budget outlives rebuilds: spending it again must not be free
                "dp": (previous or {}).get("privacy", {}).get("dp", {}),
            },
        }
        ws = cls(
            path,
            manifest,
            items.frame,
            event_frame,
            index,
            event_vectors,
            embedder,
            data=target,
            privacy=privacy,
        )
        corpus = ws._corpus_with(item_vectors)
        if index.needs_optimize:
            # the ranker's training queries search this index thousands of times: give
            # it its serving structure first (saving would build it anyway)
            index.optimize()
        logger.info("fitting the recommender: channels, profiles, ranker")
        with _one_thread():
            ws._model = TwoStageRecommender(ws.profile_config).fit(corpus, item_index=index)
        ws._model.item_text_ = ws._item_text
        report = ws._model.report_
        manifest["recommender"] = {
            "scorer": ws._model.scorer_.kind,
            "why": report.get("why"),
            "candidate_recall": report.get("candidate_recall"),
        }
        items.frame["display_title"] = display_titles(items.frame, event_frame)
        ws._titles = ByItem(ws._item_position, items.frame["display_title"])
        with _one_thread():
            manifest["recommender"]["candidate_search"] = tune_candidate_search(
                ws._model, ws._validation_queries
            )
        _write_parquet(target / "items.parquet", items.frame)
        manifest["index"] = {"spec": index_spec, "backend": "faiss"}
        uri = parse_spec(index_spec)
        if uri is None:
            index.save(target, "items")
        else:
            from profiler.milvus import MilvusIndex, collection_name

            ids = index.ids
            name = collection_name(f"items_{path.name}", ids, item_vectors)
            served = MilvusIndex.copy_of(index, uri=uri, collection=name)
            served.save(target, "items")
            manifest["index"].update(backend="milvus", uri=uri, collection=name)
            logger.info("item vectors served from Milvus collection %s at %s", name, uri)
        ws._model.lexical_.save(target / "lexical")
        save_scorer(ws._model.scorer_, target / "models", report)
        write_json(target / "models" / "recommender.json", ws._model.describe())
        ws._save_state(target)
        logger.info("choosing exploration settings by a validation replay")
        explore, manifest["explore"] = choose_config(ws)
        write_json(target / "explore.config.json", explore.to_dict())
        manifest["artifacts"] = _carried_artifacts(previous, manifest["catalogue"], target)
        # the ranker, BM25 and counts are refitted by every build: from this one's inputs
        for name in ("models/recommender.json", "lexical"):
            manifest["artifacts"][name] = {
                "built_from": {"workspace": "this generation"},
                "catalogue": manifest["catalogue"],
                "trained": now,
            }
        return ws

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        model: str | os.PathLike[str] | None = None,
        device: str | None = None,
        show_progress_bar: bool | None = None,
        embedder: Embedder | None = None,
        mmap: bool = False,
        verify: bool = True,
        verified: dict | None = None,
    ) -> Workspace:
        """Open a built workspace; the model is loaded only when a text must be embedded.

        ``embedder`` reuses an already loaded model (it must be the one the workspace was
        built with). With ``mmap=True`` the item and user indexes are memory-mapped
        read-only instead of read: opening a large workspace is quick and processes that
        serve from it share the pages. Such a workspace answers queries but
        :meth:`add_events` and :meth:`feedback` raise ``ValueError``.

        The workspace keeps the generation it opened (a shared lock) until
        :meth:`close`, whatever writers publish meanwhile. With ``verify`` (default) every
        file is checked against its size and checksum in the manifest, and float arrays
        for NaN/inf, before anything is loaded; a file listed unchanged in ``verified``
        (the file table of a generation opened before) has only its size checked.

        Raises
        ------
        FileNotFoundError
            If ``path`` holds no workspace.
        profiler.store.CorruptWorkspaceError
            A file does not match the manifest (a ``ValueError`` naming the file).
        ValueError
            If it was built by another format version, or ``model`` differs from the model
            it was built with.
        """
        path = Path(path)
        store = Store(path)
        if store.pointer() is None:
            if (path / "manifest.json").is_file():
                raise ValueError(
                    f"{path}: workspace format 2 or older (no generations); this library "
                    f"reads format {FORMAT_VERSION}: rebuild it with `profiler build`"
                )
            raise FileNotFoundError(
                f"{path}: no workspace here (no CURRENT); create one with `profiler build`"
            )
        lease, manifest = store.lease(verify=verify, verified=verified)
        data = lease.generation.dir
        manifest_path = data / "manifest.json"
        if manifest.get("format_version") != FORMAT_VERSION:
            lease.release()
            raise ValueError(
                f"{manifest_path}: workspace format {manifest.get('format_version')!r}; "
                f"this library reads format {FORMAT_VERSION}: rebuild it"
            )
        try:
            return cls._open_generation(
                path,
                data,
                lease,
                manifest,
                model=model,
                device=device,
                show_progress_bar=show_progress_bar,
                embedder=embedder,
                mmap=mmap,
            )
        except BaseException:
            lease.release()
            raise

    @classmethod
    def _open_generation(
        cls,
        path: Path,
        data: Path,
        lease: Lease,
        manifest: dict,
        *,
        model,
        device,
        show_progress_bar,
        embedder,
        mmap: bool,
    ) -> Workspace:
        manifest_path = data / "manifest.json"
        _check_manifest(manifest, manifest_path)
        for name, artifact in manifest.get("artifacts", {}).items():
            if artifact.get("stale"):
                logger.warning("%s: %s", data / name, artifact["stale"])
        settings = manifest.get("privacy", {})
        privacy = PrivacyPolicy(
            Pseudonymizer.for_workspace(path, create=False)
            if settings.get("pseudonymous")
            else None,
            Scrubber(tuple(settings.get("scrub", ()))),
        )
        built_with = manifest["model"]["model_id"]
        base = manifest["model"].get("base_model_id", built_with)
        if model is not None and resolve_model(model).model_id != base:
            raise ValueError(
                f"{path}: built with model {base!r}, not {resolve_model(model).model_id!r}; "
                "rebuild the workspace to use another model"
            )
        # Queries are embedded with the numerics the workspace was built with, whatever
        # this machine's default: vectors of different precisions are not mixed.
        embedder = _workspace_embedder(
            embedder,
            path,
            model=model if model is not None else _model_source(manifest),
            device=device,
            show_progress_bar=show_progress_bar,
            backend=manifest["model"].get("backend", "torch"),
            dtype=manifest["model"].get("dtype", "float32"),
        )
        if embedder.model_id != built_with:
            raise ValueError(
                f"{path}: built with model {built_with!r} but {embedder.model_id!r} "
                "is installed; rebuild the workspace"
            )
        dim = manifest["model"]["dim"]
        index = load_index(data, "items", model_id=built_with, dim=dim, mmap=mmap)
        items = read_frame(data / "items.parquet")
        events = read_frame(data / "events.parquet")
        event_vectors = np.load(
            data / "event_vectors.npy", allow_pickle=False, mmap_mode="r" if mmap else None
        )
        profiles, config = load_profiles(data, mmap=mmap)
        user_index = load_index(data, "users", model_id=built_with, dim=dim, mmap=mmap)
        described = read_json(data / "models" / "recommender.json")
        scorer, report = load_scorer(data / "models")
        ws = cls(
            path,
            manifest,
            items,
            events,
            index,
            event_vectors,
            embedder,
            None,
            config,
            data=data,
            lease=lease,
            privacy=privacy,
        )
        ws._model = TwoStageRecommender.assemble(
            config=config,
            channels=ChannelConfig.from_dict(described["channels"]),
            ranker=RankerConfig.from_dict(described["ranker"]),
            catalogue=_catalogue(items, ws._item_ids, ws._item_position),
            item_index=index,
            lexical=LexicalIndex.load(data / "lexical", mmap=mmap),
            text_vectors=event_vectors,
            item_text=ws._item_text,
            scorer=scorer,
            report=report,
            state=State(profiles, user_index, Interactions.load(data)),
            search_effort=described.get("search_effort"),
        )
        return ws

    def published(self) -> str | None:
        """The generation writers last published (``CURRENT``), this process's or
        another's; :meth:`reopen` when it is not :attr:`generation`."""
        pointer = self.store.pointer()
        return None if pointer is None else pointer["generation"]

    def reopen(self) -> Workspace:
        """The newest published generation, opened with what this one already holds.

        The loaded embedding model is shared; a file the new generation holds unchanged
        is not checksummed again (this one verified it); the tag, style and sentiment
        models are carried when none of their files changed. This workspace stays open
        on its own generation until :meth:`close`. A server process uses it to follow
        what other processes publish (:class:`profiler.service.live.LiveWorkspace`).
        """
        ws = Workspace.open(
            self.path,
            embedder=self.embedder,
            mmap=self.item_index.read_only,
            verified=self.manifest.get("files"),
        )
        old, new = self.manifest.get("files", {}), ws.manifest.get("files", {})

        def unchanged(directory: Path) -> bool:
            prefix = directory.relative_to(self.data).as_posix() + "/"
            mine = {k: v for k, v in old.items() if k.startswith(prefix)}
            theirs = {k: v for k, v in new.items() if k.startswith(prefix)}
            return bool(mine) and mine == theirs

        if unchanged(self.tags_dir):
            ws._tag_model, ws._styles, ws._tag_level = (
                self._tag_model,
                self._styles,
                self._tag_level,
            )
        if unchanged(self.sentiment_dir):
            ws._sentiment = self._sentiment
        return ws

    # -- queries ------------------------------------------------------------------------

    @property
    def users(self) -> list[str]:
        """Known user ids as stored (pseudonyms unless built with ``pseudonymize=False``),
        in order of first event; every method accepts them as well as raw ids."""
        return list(self._user_rows)

    def corpus(self) -> Corpus:
        """The catalogue, its vectors and all events, for evaluation (reads every item
        vector: serving never calls it)."""
        if self._corpus is None:
            self._corpus = self._corpus_with(self.item_index.get(self.items["item_id"].tolist()))
        return self._corpus

    def _corpus_with(self, item_vectors: np.ndarray) -> Corpus:
        items = self.items
        return Corpus(
            item_ids=items["item_id"].tolist(),
            item_vectors=item_vectors,
            item_texts=[item_document(row) for row in items.to_dict(orient="records")],
            item_categories=items["category"].fillna("").tolist(),
            events=self.events,
            text_vectors=self.event_vectors,
            item_brands=items["brand"].fillna("").tolist(),
            item_prices=items["price"].tolist(),
            item_titles=items["title"].tolist(),
        )

    def _validation_queries(self, n: int = 150, seed: int = 0) -> list[tuple[Query, bool]]:
        """Up to ``n`` known shoppers (served from their stored profiles) and ``n`` texts
        (distinct event texts, then item titles), sampled with ``seed``: what the
        candidate-search tuning measures recommendations on."""
        rng = np.random.default_rng(seed)
        users = sorted(self._user_rows)
        chosen = rng.choice(len(users), size=min(n, len(users)), replace=False)
        rows = self._user_rows
        queries = [
            (Query(users[i], self.events.iloc[rows[users[i]]]), True) for i in sorted(chosen)
        ]
        texts = self.events["text"].dropna()
        texts = texts[texts.str.strip() != ""].drop_duplicates().tolist()
        if len(texts) > n:
            texts = [texts[i] for i in np.sort(rng.choice(len(texts), n, replace=False))]
        titles = self.items["title"].dropna().drop_duplicates().tolist()
        if len(texts) < n and titles:
            wanted = min(n - len(texts), len(titles))
            texts += [titles[i] for i in np.sort(rng.choice(len(titles), wanted, replace=False))]
        if texts:
            vectors = self.embedder.encode(texts, store=False)
            empty = self.events.iloc[:0]
            queries += [
                (Query(None, empty, (t,), v[None, :]), False) for t, v in zip(texts, vectors)
            ]
        return queries

    def _item_text(self, position: int) -> str:
        """The text that represents the item at a catalogue position (read column by
        column: a row of the frame through ``iloc`` cost 0.3 ms)."""
        items = self.items
        return item_document(
            {name: items[name].iat[position] for name in _DOCUMENT_FIELDS if name in items}
        )

    def profile(self, user: str):
        """The stored :class:`~profiler.profiles.UserProfile` of a shopper (raw or stored
        id)."""
        return self.profiles[self.stored_id(user)]

    @property
    def profiles(self) -> ProfileStore:
        """Every user's stored profile, ``{stored user id: UserProfile}``."""
        return self.recommender.state_.profiles

    @property
    def user_index(self) -> VectorIndex:
        """Profile vectors by user id (nearest users)."""
        return self.recommender.state_.user_index

    def title(self, item_id: str) -> str:
        return self._titles[item_id]

    def search(self, query: str, k: int = 10) -> Results:
        """Items most similar to a free-text query."""
        return self.search_many([query], k)[0]

    @_reads
    def search_many(self, queries: Sequence[str], k: int = 10) -> list[Results]:
        """:meth:`search` for a batch of queries, embedded in one pass."""
        queries = list(queries)
        for position, query in enumerate(queries):
            if not isinstance(query, str) or not query.strip():
                raise ValueError(f"query at position {position} is empty or not text: {query!r}")
        if not queries:
            return []
        hits = self.item_index.search(self.embedder.encode(queries, store=False), k)
        return [self._results(ids, scores) for ids, scores in zip(hits.ids, hits.scores)]

    @_reads
    def user_events(self, user: str) -> pd.DataFrame:
        """The user's events, oldest first; :class:`UnknownUserError` (a ``KeyError``) for
        an unknown user."""
        return self.events.iloc[self._user_rows[self.stored_id(user)]]

    @property
    def recommender(self) -> TwoStageRecommender:
        """The two-stage recommender that ``build`` trained (:mod:`profiler.ranking`)."""
        if self._model is None:
            raise ValueError(f"{self.path}: no recommender; rebuild the workspace")
        return self._model

    @_reads
    def recommend(
        self,
        user: str | None = None,
        *,
        history: Sequence[str] | None = None,
        k: int = 10,
        categories: Sequence[str] | None = None,
        diversity: float = 0.0,
        explore=None,
        seed: int | None = None,
    ) -> Results:
        """Items for a known user, or for an anonymous shopper described by texts.

        Candidate channels propose items through the item, user and lexical indexes and
        the interaction counts; the ranker that ``build`` trained on this workspace's
        histories orders them (see :mod:`profiler.retrieval`, :mod:`profiler.ranking`).
        A known user is served from her stored profile. Items she already interacted
        with are never recommended; every item comes with its reasons.

        Parameters
        ----------
        user : str, optional
            A user id present in the workspace's events.
        history : list of str, optional
            Texts (searches, reviews) of an anonymous shopper.
        k : int
            Number of items.
        categories : list of str, optional
            Only items whose category starts with one of these (``"Dresses"`` keeps
            ``"Dresses > Casual"``).
        diversity : float
            0 (default) ranks by score; up to 1 re-ranks by maximal marginal relevance.
        explore : float or str or dict or ExploreConfig, optional
            Mix explore items into the slate (:mod:`profiler.explore`): a strength in
            [0, 1] for the workspace's policy (a number or its text, ``"0.3"``; ``True``:
            its default strength), a config
            (``"policy=ucb,strength=0.2"``, a dict or a JSON file). Each item's reasons
            then carry its ``source`` (``exploit`` or ``explore:<arm>``) and
            ``propensity``, the probability the policy shows it in that slot. ``None`` or
            0 (default): the plain ranking.
        seed : int, optional
            Seeds the policy's sampling (reproducible slates).
        """
        if (user is None) == (history is None):
            raise ValueError("pass exactly one of user= or history=")
        if not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if not 0.0 <= diversity <= 1.0:
            raise ValueError(f"diversity must be in [0, 1], got {diversity}")
        removed_tags: list[str] = []
        if user is not None:
            user = self.stored_id(user)
            query = Query(user, self.user_events(user))
            overrides = self.tag_overrides()
            pinned, removed_tags = overrides.pinned(user), overrides.removed(user)
            if pinned:  # a pinned tag is a standing search for it
                query = Query(
                    user, query.events, tuple(pinned), self.embedder.encode(pinned, store=False)
                )
        else:
            texts = [history] if isinstance(history, str) else list(history)
            texts = [t for t in texts if isinstance(t, str) and t.strip()]
            if not texts:
                raise ValueError("history must hold at least one non-empty text")
            query = Query(
                None, self.events.iloc[:0], tuple(texts), self.embedder.encode(texts, store=False)
            )
        model = self.recommender
        catalogue = model.catalogue_
        allowed = None
        if categories:
            prefixes = tuple(categories)
            names = np.array([n.startswith(prefixes) for n in catalogue.category_names] + [False])
            allowed = names[catalogue.categories]  # code -1 reads the final False
            if not allowed.any():
                raise ValueError(f"no item has a category starting with {list(prefixes)}")
        with _one_thread():
            shopper = model.shopper(query, stored=user is not None)
            extra = None
            if allowed is not None and np.any(shopper.profile.vector):
                # a filter may leave few candidates: a wider dense search, kept to the filter
                found = self.item_index.search(
                    shopper.profile.vector,
                    max(200, 20 * k),
                    effort=model.generator_.effort_for(shopper),
                )
                hits = catalogue.positions_of([i for i in found.ids[0] if i is not None])
                extra = hits[allowed[hits]]
            ranked = model.rank(shopper, extra=extra)
            keep = np.ones(len(ranked.positions), dtype=bool)
            if allowed is not None:
                keep &= allowed[ranked.positions]
            if removed_tags:
                codes = catalogue.categories[ranked.positions]
                keep &= ~self._removed_categories(removed_tags)[codes]
            rows = np.flatnonzero(keep)
            if diversity > 0 and len(rows):
                order = mmr(ranked.scores[rows], ranked.candidates.vectors[rows], k, diversity)
                rows = rows[order]
            config = self._resolve_explore(explore)
            if config is not None:
                return self._explore_slate(
                    user, shopper, ranked, rows, k, config, seed, allowed, removed_tags
                )
            rows = rows[:k]
            contributions = model.explain_rows(ranked, rows)
        ids = [catalogue.item_ids[p] for p in ranked.positions[rows]]
        reasons = [
            self._reasons(shopper, ranked, row, contributions[n]) for n, row in enumerate(rows)
        ]
        return Results(
            ids,
            ranked.scores[rows].astype(np.float32),
            [self._titles[i] for i in ids],
            reasons,
        )

    def _removed_categories(self, removed_tags: Sequence[str]) -> np.ndarray:
        """Per category code, whether its tag is one the shopper removed; one more entry,
        False, for code -1 (no category)."""
        from profiler.tags.taxonomy import category_tag

        dropped, level = set(removed_tags), self.tag_level
        names = self.recommender.catalogue_.category_names
        return np.array([category_tag(n, level) in dropped for n in names] + [False], dtype=bool)

    def _resolve_explore(self, explore):
        """``recommend``'s ``explore`` argument as a config, or ``None`` for no exploration."""
        from dataclasses import replace

        from profiler.explore import ExploreConfig, explore_share

        if explore is None or explore is False:
            return None
        if explore is True:
            config = self.explore_config()
        elif isinstance(explore, ExploreConfig):
            config = explore
        elif isinstance(explore, (int, float)) or _is_number(explore):
            # a strength, also as text (the command line's and the service's "0.3")
            config = replace(self.explore_config(), strength=float(explore))
        else:
            config = ExploreConfig.parse(explore, self.explore_config())
        # a config that never explores, even for a shopper with no evidence: plain ranking
        return config if explore_share(config, 0.0) > 0 else None

    def _explore_slate(
        self, user, shopper, ranked, rows, k, config, seed, allowed, removed_tags
    ) -> Results:
        """A slate mixing the exploit order with explore items, with propensities."""
        from profiler.explore import context_features, make_slate

        model = self.recommender
        catalogue = model.catalogue_
        arms = self.explore_arms()
        permitted = np.ones(len(catalogue.item_ids), dtype=bool)
        if allowed is not None:
            permitted &= allowed
        if removed_tags:
            permitted &= ~self._removed_categories(removed_tags)[catalogue.categories]
        seen = set()
        if user is not None:
            position = catalogue.position
            seen = {position[i] for i in self.user_events(user)["item_id"] if i in position}
        seen |= set(np.flatnonzero(~permitted).tolist())
        alpha, beta, evidence = self._explore_prior(user, config)
        succ, fail = self.explore_state().counts(user)
        when = datetime.now(timezone.utc).timestamp()
        slate = make_slate(
            ranked.positions[rows],
            k,
            arms,
            config,
            alpha,
            beta,
            evidence=evidence,
            rng=np.random.default_rng(seed),
            exclude=seen,
            context=context_features(when),
            state=self.explore_state(),
            rounds=int(succ.sum() + fail.sum()),
        )
        row_of = {int(p): r for r, p in enumerate(ranked.positions)}
        in_ranked = [row_of.get(int(p)) for p in slate.positions]
        known = np.array([r for r in in_ranked if r is not None], dtype=np.int64)
        contributions = model.explain_rows(ranked, known) if len(known) else []
        explained = dict(zip(known.tolist(), contributions))
        ids, scores, reasons = [], [], []
        for p, r, source, propensity in zip(
            slate.positions, in_ranked, slate.sources, slate.propensities
        ):
            ids.append(catalogue.item_ids[p])
            if r is not None:
                scores.append(float(ranked.scores[r]))
                reason = self._reasons(shopper, ranked, r, explained[r])
            else:  # an arm's most trending unseen item, which no channel proposed (an
                # explore pick, or exploitation's once her ranking is used up)
                scores.append(float("nan"))
                reason = {"channels": ["arm"], "features": [], "closest": None}
            reason.update(source=source, propensity=round(float(propensity), 6))
            reasons.append(reason)
        return Results(
            ids, np.array(scores, dtype=np.float32), [self._titles[i] for i in ids], reasons
        )

    def _reasons(self, shopper, ranked, row: int, contributions: np.ndarray) -> dict:
        """Channels that proposed the item, the features that moved it most and the
        shopper's event it is closest to."""
        channels = [c for c, hit in zip(CHANNELS, ranked.candidates.channels[row]) if hit]
        top = np.argsort(-np.abs(contributions))[:3]
        features = [
            {"feature": FEATURES[f], "contribution": round(float(contributions[f]), 4)}
            for f in top
            if abs(contributions[f]) > 0
        ]
        closest = None
        at = int(ranked.candidates.closest[row])
        if at >= 0:
            label = shopper.evidence_labels[at]
            if label in self._titles:
                closest = {"item_id": label, "title": self._titles[label]}
            else:
                closest = {"text": label}
        return {"channels": channels, "features": features, "closest": closest}

    @_reads
    def similar_users(self, user: str, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` users whose profile vectors are closest to ``user``'s (stored ids:
        pseudonyms in a pseudonymous workspace)."""
        given, user = user, self.stored_id(user)
        if user not in self.profiles:
            raise UnknownUserError(given)
        if self.user_index is None or user not in self.user_index:
            return []
        hits = self.user_index.search(self.profiles[user].vector[None, :], k, exclude={user})
        return [(u, float(s)) for u, s in zip(hits.ids[0], hits.scores[0]) if u is not None]

    def _item_vector(self, item_id: str) -> np.ndarray:
        if not isinstance(item_id, str) or item_id not in self._titles:
            raise KeyError(f"unknown item {item_id!r}: not in the catalogue")
        return self.item_index.get([item_id])

    @_reads
    def similar_items(self, item_id: str, k: int = 10) -> Results:
        """The ``k`` catalogue items closest to ``item_id`` (itself left out), through the
        item index."""
        hits = self.item_index.search(self._item_vector(item_id), k, exclude={item_id})
        return self._results(hits.ids[0], hits.scores[0])

    @_reads
    def audience(self, item_id: str, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` shoppers most likely to want ``item_id``: the user index's nearest
        profiles to the item's vector (stored ids: pseudonyms in a pseudonymous
        workspace)."""
        vector = self._item_vector(item_id)  # an unknown item is a KeyError either way
        if self.user_index is None or not len(self.user_index):
            return []
        hits = self.user_index.search(vector, k)
        return [(u, float(s)) for u, s in zip(hits.ids[0], hits.scores[0]) if u is not None]

    @_reads
    def describe(self, user: str, *, events: int = 10, items_per_centre: int = 3) -> dict:
        """What the profiler holds about a shopper, for a person to read: her event counts,
        her interest centres (each described by its nearest catalogue items) and her most
        recent ``events``. Tags are :meth:`tags`."""
        given, stored = user, self.stored_id(user)
        if stored not in self.profiles:
            raise UnknownUserError(given)
        profile = self.profiles[stored]
        centres = []
        if len(profile.centres):
            hits = self.item_index.search(profile.centres, items_per_centre)
            for weight, ids, scores in zip(profile.centre_weights, hits.ids, hits.scores):
                centres.append(
                    {
                        "weight": round(float(weight), 4),
                        "items": self._results(ids, scores).records(),
                    }
                )
        recent = self.user_events(stored).tail(events).iloc[::-1]
        return {
            "user_id": stored,
            "events": int(profile.n_events),
            "last_timestamp": float(profile.last_timestamp),
            "centres": centres,
            "recent_events": [
                {
                    "timestamp": float(row.timestamp),
                    "kind": row.kind,
                    "item_id": row.item_id or None,
                    "title": self._titles.get(row.item_id, "") if row.item_id else "",
                    "text": row.text,
                    "rating": None if pd.isna(row.rating) else float(row.rating),
                }
                for row in recent.itertuples()
            ],
        }

    # -- incremental updates ------------------------------------------------------------

    def add_events(
        self, events: str | os.PathLike[str] | pd.DataFrame, *, _stored_ids: bool = False
    ) -> int:
        """Validate and append events; affected profiles and the user index update.

        Bad rows go to ``quarantine/events-added.jsonl``. The result equals rebuilding the
        workspace with all events, without touching other users' profiles.

        Returns
        -------
        int
            Number of events added.
        """
        prepared = self._prepare_events(events, stored_ids=_stored_ids)
        if prepared is None:
            return 0
        with self._writing(exclusive=False) as staged:
            with self._rw.write():  # queries wait only while the new state goes in
                self._append(*prepared)
            self._save_state(staged)
        return len(prepared[0])

    def _prepare_events(self, events, *, stored_ids: bool = False):
        """Validated new events, sorted, with their fresh texts embedded (outside any lock:
        queries go on meanwhile); ``None`` when no row is valid."""
        if self.item_index.read_only:
            raise ValueError(
                f"{self.path}: opened with mmap=True, read-only; open it without mmap to add events"
            )
        loaded = load_events(
            events,
            items=self.items["item_id"],
            quarantine=self.path / "quarantine" / "events-added.jsonl",
            # raw ids are mapped to pseudonyms; ids the workspace itself stored are not
            privacy=PrivacyPolicy(None, self.privacy.scrubber) if stored_ids else self.privacy,
        )
        new = loaded.frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
        if new.empty:
            return None
        self._predict_ratings(new)
        fresh = [t for t in pd.unique(new["text"]) if t and t not in self._text_rows]
        return new, fresh, self.embedder.encode(fresh) if fresh else None

    def _append(self, new: pd.DataFrame, fresh: list[str], fresh_vectors) -> None:
        """Append prepared events to the in-memory state (inside ``_writing``)."""
        vectors = self.event_vectors
        if fresh_vectors is not None:
            vectors = np.concatenate([vectors, fresh_vectors])
        rows = dict(self._text_rows)
        rows.update({t: len(self.event_vectors) + i for i, t in enumerate(fresh)})
        new["text_row"] = new["text"].map(rows).fillna(-1).astype(np.int64)
        old_rows = self._user_rows
        events = pd.concat([self.events, new], ignore_index=True)
        model = self.recommender
        builder = model.builder_
        profiles = model.state_.profiles
        new_evidence = event_evidence(builder, new, self.item_index, vectors)
        new_rows = new.groupby("user_id", sort=False).indices
        updated = {}
        for user, rows_new in new_rows.items():
            user_new = type(new_evidence)(*(a[rows_new] for a in new_evidence))
            if user in profiles and user in old_rows:
                history = event_evidence(
                    builder, events.iloc[old_rows[user]], self.item_index, vectors
                )
                updated[user] = builder.update(profiles[user], user_new, history=history)
            else:
                updated[user] = builder.build(user, user_new)
        user_rows = dict(old_rows)  # the new rows appended: no regrouping of all events
        start = len(self.events)
        for user, rows_new in new_rows.items():
            known = user_rows.get(user)
            appended = rows_new + start
            user_rows[user] = appended if known is None else np.concatenate([known, appended])
        # every new piece computed: now change what queries read, all at once
        self._set_events(events, vectors, user_rows)
        self._text_row_map = rows
        for profile in updated.values():
            profiles[profile.user_id] = profile
            self._index_user(profile)
        position = model.catalogue_.position
        model.state_.interactions.add(
            new["user_id"].to_numpy(),
            np.array([position.get(i, -1) for i in new["item_id"]], dtype=np.int64),
            new["timestamp"].to_numpy(dtype=np.float64),
            new_evidence.weights > 0,
        )
        logger.info("added %d events for %d users", len(new), new["user_id"].nunique())

    def feedback(
        self,
        user: str,
        item_id: str,
        *,
        liked: bool | None = None,
        reward: float | None = None,
        timestamp: float | None = None,
        event_id: str | None = None,
    ) -> bool:
        """Record how a shopper answered a shown item: ``liked`` (True/False) or a graded
        ``reward`` in [0, 1] (0.5 and above counts as a like).

        One step updates her profile and the interaction counts (the answer is stored as a
        like or dislike event) and her explore posterior for the item's arm
        (:mod:`profiler.explore`). The same ``event_id`` given twice counts once: the
        second call changes nothing and returns False. An unknown shopper or item is a
        ``KeyError`` naming it.
        """
        import math

        from profiler.explore import context_features, with_prior_mean

        if (liked is None) == (reward is None):
            raise ValueError("pass exactly one of liked= or reward=")
        if reward is None:
            reward = 1.0 if liked else 0.0
        if isinstance(reward, bool) or not isinstance(reward, (int, float)):
            raise ValueError(f"reward must be a number in [0, 1], got {reward!r}")
        if not (math.isfinite(reward) and 0.0 <= reward <= 1.0):
            raise ValueError(f"reward must be in [0, 1], got {reward!r}")
        stored = self.stored_id(user)
        position = self.recommender.catalogue_.position
        if item_id not in position:
            raise KeyError(f"unknown item {item_id!r}: not in the catalogue")
        state = self.explore_state()
        key = None if event_id is None else f"{stored}\x1f{event_id}"
        if key is not None and key in state.seen:
            logger.info("feedback event %r of %s was counted before: ignored", event_id, user)
            return False
        when = datetime.now(timezone.utc).timestamp() if timestamp is None else timestamp
        event = {
            "user_id": stored,
            "timestamp": when,
            "kind": "like" if reward >= 0.5 else "dislike",
            "item_id": item_id,
        }
        prepared = self._prepare_events(pd.DataFrame([event]), stored_ids=True)
        if prepared is None:
            raise ValueError(f"feedback on {item_id!r} was rejected; see {self.path}/quarantine")
        arm = int(self.explore_arms().of_item[position[item_id]])
        with self._writing(exclusive=False) as staged:
            with self._rw.write():  # queries wait only while the new state goes in
                alpha, beta, _ = self._explore_prior(stored)  # before this answer counts
                self._append(*prepared)
                context = with_prior_mean(context_features(float(when)), alpha, beta, arm)
                state.update(stored, arm, float(reward), context)
                if key is not None:
                    state.seen.add(key)
            self._save_state(staged)
            state.save(staged)
        return True

    # -- exploration ----------------------------------------------------------------------

    def explore_arms(self):
        """The explore arms (:class:`profiler.explore.Arms`): top-level categories, else
        clusters of the item vectors; built once per open workspace."""
        if self._arms is None:
            from profiler.explore import Arms

            model = self.recommender
            catalogue = model.catalogue_
            self._arms = Arms.from_catalogue(
                catalogue.category_names,
                catalogue.categories,
                model.state_.interactions.trend_,
                item_vectors=lambda: self.item_index.get(catalogue.item_ids),
            )
        return self._arms

    def explore_state(self):
        """Feedback counts and LinUCB state (:class:`profiler.explore.ExploreState`)."""
        if self._explore is None:
            from profiler.explore import CONTEXT_DIM, ExploreState

            n_arms = len(self.explore_arms().names)
            self._explore = ExploreState.load(self.data, n_arms, CONTEXT_DIM)
        return self._explore

    def event_arms(self) -> tuple[np.ndarray, np.ndarray]:
        """Each event's explore arm (-1: none) and whether it is positive evidence (its
        profile weight is above 0); computed once per state of the events."""
        if self._explore_events is None:
            builder = self.recommender.builder_
            weights = event_weights(builder, self.events, self.item_index, self.event_vectors)
            position = self.recommender.catalogue_.position
            of_item = self.explore_arms().of_item
            arm = np.array(
                [of_item[position[i]] if i in position else -1 for i in self.events["item_id"]],
                dtype=np.int64,
            )
            self._explore_events = (arm, weights > 0)
        return self._explore_events

    def _explore_prior(
        self, stored: str | None, config=None
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """Her Beta posterior per arm (the prior from her positives and the population's,
        plus her feedback counts; ``None``: a new shopper) and her evidence: positives and
        accepted items, what lowers her explore share (misses do not)."""
        from profiler.explore import arm_positives, population_shares, prior

        arm, positive = self.event_arms()
        counted = positive & (arm >= 0)
        n_arms = len(self.explore_arms().names)
        positives = np.zeros(n_arms)
        if stored is not None and stored in self._user_rows:
            positives = arm_positives(arm, counted, self._user_rows[stored], n_arms)
        population = population_shares(arm, counted, n_arms)
        alpha, beta = prior(config or self.explore_config(), positives, population)
        succ, fail = self.explore_state().counts(stored)
        return alpha + succ, beta + fail, float(positives.sum() + succ.sum())

    def explore_config(self):
        """The workspace's explore settings: those ``build`` chose by a validation replay
        (``explore.config.json``, the report in ``manifest["explore"]``), or the defaults
        for a workspace built before."""
        from profiler.explore import ExploreConfig

        path = self.data / "explore.config.json"
        return ExploreConfig.from_dict(read_json(path)) if path.is_file() else ExploreConfig()

    def forget(self, user: str, *, retrain: bool = True, keep_models: bool = False) -> ForgetReport:
        """Delete a shopper everywhere, in a new generation, and say what was removed.

        Her events go, with the vectors of texts only she wrote (in the event vectors
        and the embedding cache), her profile and user-index entry (all profiles and
        counts are refitted from the remaining events, so co-occurrence and trending
        counts lose her contributions), her tag overrides, her explore posterior and
        feedback ids, and her quarantined rows.
        With ``retrain`` (default) the ranker is trained again without her rows;
        otherwise the old ranker is kept and the report says so. A tag or sentiment
        model trained on this workspace's data that she contributed to is removed
        (``keep_models=True`` keeps it; the report lists what went): train it again.
        Old generations are deleted once no open workspace holds them.
        """
        from profiler.embedding import text_keys
        from profiler.privacy import drop_quarantined, without_rows

        stored = self.stored_id(user)
        with self._writing(drop=self._models_with(stored, keep_models)) as staged:
            rows = self._user_rows[stored]
            n_events = len(rows)
            rest, kept, her_texts = without_rows(self.events, self.event_vectors, rows)
            documents = set(item_document(r) for r in self.items.to_dict(orient="records"))
            cache = self.embedder.cache
            cache_removed = (
                cache.remove(
                    text_keys(self.embedder.prompted([t for t in her_texts if t not in documents]))
                )
                if cache is not None
                else 0
            )
            quarantined = drop_quarantined(self.path / "quarantine", stored)
            overrides = self.tag_overrides()
            had_overrides = stored in overrides.users
            overrides.reset(stored)
            overrides.save(staged / "overrides.json")
            explore = self.explore_state()
            had_explore = explore.forget(stored)
            if had_explore or (self.data / "explore.json").is_file():
                explore.save(staged)
            in_index = stored in self.user_index
            self._set_events(rest, np.ascontiguousarray(self.event_vectors[kept]))
            model = self.recommender
            if retrain:
                with _one_thread():
                    fitted = TwoStageRecommender(self.profile_config).fit(
                        self.corpus(), item_index=self.item_index
                    )
                fitted.item_text_ = self._item_text
                fitted.lexical_ = model.lexical_  # items only: unchanged, not rewritten
                self._model = fitted
                save_scorer(fitted.scorer_, staged / "models", fitted.report_)
                write_json(staged / "models" / "recommender.json", fitted.describe())
            else:
                model.set_state(model.fit_state(rest, model.state_.user_index))
            self._save_state(staged)
            removed = [a for a in self.manifest.get("artifacts", {}) if not (staged / a).exists()]
            for name in removed:
                self.manifest["artifacts"].pop(name)
            if removed:
                self._tag_model = self._tag_level = self._styles = self._sentiment = None
            self._overrides = None
        held = [g.name for g in self.store.generations.iterdir() if g.name != self.generation]
        report = ForgetReport(
            user=user,
            events=n_events,
            texts=len(her_texts),
            profile=True,
            user_index=in_index,
            overrides=had_overrides,
            explore_state=had_explore,
            cache_entries=cache_removed,
            quarantine_rows=quarantined,
            ranker="retrained" if retrain else "kept",
            models_removed=tuple(removed),
            generation=self.generation,
            old_generations_held=tuple(held),
        )
        logger.info("forgot %s: %s", user, report.to_dict())
        return report

    def export_aggregates(
        self,
        epsilon: float,
        *,
        budget: float | None = None,
        per_user: int = 3,
    ) -> pd.DataFrame:
        """Differentially private counts of shoppers: interest per top-level category by
        activity segment (1, 2-4 or 5+ events), and tag popularity (categories at the
        tagger's level, or the second level without a tagger).

        Each shopper counts toward her ``per_user`` strongest categories of each
        statistic (positive evidence, decayed like her profile); ``epsilon`` is spent
        from the workspace's budget (``budget`` sets it on first use; default 1.0),
        recorded in the manifest, and refused with :class:`~profiler.privacy.
        BudgetSpentError` when it would overspend. Rebuilds keep the record.
        """
        import math

        from profiler.privacy import BudgetSpentError, dp_aggregates, interest_table

        if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
            raise ValueError(f"epsilon must be a positive number, got {epsilon!r}")
        dp = dict(self.manifest.get("privacy", {}).get("dp") or {})
        total = dp.get("budget")
        if total is None:
            total = 1.0 if budget is None else float(budget)
            if not (math.isfinite(total) and total > 0):
                raise ValueError(f"budget must be a positive number, got {budget!r}")
        elif budget is not None and float(budget) != total:
            raise ValueError(
                f"{self.path}: the privacy budget is already {total}; it cannot be changed"
            )
        spent = float(dp.get("spent", 0.0))
        if spent + epsilon > total + 1e-12:
            raise BudgetSpentError(
                f"{self.path}: epsilon {epsilon} would exceed the privacy budget "
                f"({spent:g} of {total:g} spent); no more aggregates can be released"
            )
        level = self.tag_level if (self.tags_dir / "tagging.json").is_file() else 2
        builder = ProfileBuilder(self.profile_config)
        weights = event_weights(builder, self.events, self.item_index, self.event_vectors)
        table, domain = interest_table(self.events, weights, self.items, level)
        released = dp_aggregates(table, domain, epsilon=epsilon, per_user=per_user)
        with self._writing():
            record = {
                "budget": total,
                "spent": spent + epsilon,
                "releases": [
                    *dp.get("releases", []),
                    {"epsilon": epsilon, "per_user": per_user, "when": _now()},
                ],
            }
            self.manifest.setdefault("privacy", {})["dp"] = record
        return released

    def _models_with(self, stored: str, keep: bool) -> list[str]:
        """Derived models trained on this workspace's data that ``stored`` contributed
        to: her text events (tags) or her own star ratings (sentiment)."""
        if keep:
            return []
        mine = self.events.iloc[self._user_rows[stored]]
        contributed = {
            "models/tags": bool((mine["text"] != "").any()),
            "models/sentiment": bool(
                ((mine["kind"] == "review") & mine["rating"].notna() & ~mine["rating_predicted"])
                .to_numpy()
                .any()
            ),
        }
        registry = self.manifest.get("artifacts", {})
        out = []
        for name, used in contributed.items():
            if not (self.data / name).exists() or not used:
                continue
            source = registry.get(name, {}).get("built_from", {"workspace": None})
            if "workspace" in source:  # unregistered models are taken as trained here
                out.append(name)
        return out

    def _index_user(self, profile) -> None:
        vector = profile.vector
        if not np.any(vector):
            return  # only negative evidence so far: nothing to be similar on
        self.user_index.upsert([profile.user_id], vector[None, :])

    def _save_state(self, target: Path) -> None:
        """Write events, event vectors, profiles, user index and counts into a staged
        generation (publishing writes the manifest)."""
        _write_parquet(target / "events.parquet", self.events)
        save_npy(target / "event_vectors.npy", self.event_vectors)
        state = self.recommender.state_
        if getattr(state.user_index, "needs_optimize", False):
            with self._rw.write():  # a new structure for the index queries are searching
                state.user_index.optimize()
        state.profiles.save(target, self.profile_config)
        state.user_index.save(target, "users")
        state.interactions.save(target)
        self.manifest["counts"].update(
            events=len(self.events), users=len(self._user_rows), profiles=len(self.profiles)
        )

    def _results(self, ids: np.ndarray, scores: np.ndarray) -> Results:
        keep = np.array([i is not None for i in ids], dtype=bool)
        kept = [str(i) for i in ids[keep]]
        return Results(kept, scores[keep], [self._titles.get(i, "") for i in kept])

    def __repr__(self) -> str:
        counts = self.manifest["counts"]
        return (
            f"Workspace({str(self.path)!r}, items={counts['items']}, events={counts['events']}, "
            f"users={counts['users']}, model={self.manifest['model']['model_id']!r})"
        )


def predict_ratings(events: pd.DataFrame, sentiment) -> int:
    """Give reviews with text and no rating of their own the ``sentiment`` model's expected
    rating, in place, with ``rating_predicted`` True (the column is added, False, where
    missing); ``sentiment=None`` only adds the column. Returns how many were predicted."""
    if "rating_predicted" not in events:
        events["rating_predicted"] = False
    if sentiment is None:
        return 0
    todo = (
        (events["kind"] == "review")
        & (events["text"] != "")
        & (events["rating"].isna() | events["rating_predicted"].astype(bool))
    ).to_numpy()
    if todo.any():
        expected, _ = sentiment.predict(list(events["text"][todo]))
        events.loc[todo, "rating"] = expected
        events.loc[todo, "rating_predicted"] = True
        logger.info("predicted the ratings of %d reviews without one", int(todo.sum()))
    return int(todo.sum())


def rows_by_user(users: pd.Series) -> dict[str, np.ndarray]:
    """Each user's event positions, ascending, users in order of first appearance: what
    ``groupby(sort=False).indices`` gives, without its per-group Python indexing of an
    Arrow column (5,000 users: 15 -> 3 ms; it runs whenever a server process follows a
    write)."""
    codes, uniques = pd.factorize(users, sort=False)
    order = np.argsort(codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=len(uniques)))])
    return {user: order[bounds[i] : bounds[i + 1]] for i, user in enumerate(uniques.tolist())}


def _is_number(text) -> bool:
    """Whether ``text`` is a string that reads as a number."""
    if not isinstance(text, str):
        return False
    try:
        float(text)
    except ValueError:
        return False
    return True


@functools.cache
def _thread_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run one query's retrieval and ranking on one BLAS and one OpenMP thread.

    Scoring one shopper is a few small products and single-query FAISS searches. With the
    default threads, OpenBLAS's workers stay spinning after each product and starve the
    transformer's threads on the next query's embedding (on 2 cores a one-query
    ``recommend`` went from p50 7 / p99 9 ms to 24 / 120 ms), and one FAISS search on 2
    OpenMP threads took 3-9x as long as on one (exact search over 1M vectors: 318 vs
    115 ms; ``benchmarks/recommend.py`` scale mode). Query texts are embedded outside
    this block, with the model's own threads.
    """
    with _thread_controller().limit(limits=1):
        yield


def _workspace_embedder(embedder: Embedder | None, path: Path, **kwargs) -> Embedder:
    """The given embedder with its cache moved into the workspace, or a new one."""
    if embedder is None:
        return Embedder(kwargs.pop("model"), cache_dir=path / "embeddings", **kwargs)
    if embedder.cache_dir != path / "embeddings":
        embedder = copy.copy(embedder)  # shares the loaded model, not the cache
        embedder.cache_dir = path / "embeddings"
        embedder._cache = None
    return embedder


def _model_source(manifest: dict) -> str | None:
    """Model to load for a workspace: the bundled one by name, else the folder it used."""
    from profiler.models import MODELS

    model_id = manifest["model"]["model_id"]
    if model_id.startswith("sentence-transformers/all-MiniLM-L6-v2@"):
        return None
    for name, spec in MODELS.items():  # an installed model: wherever it is installed now
        if model_id.startswith(f"{spec['model_id']}@{name}"):
            return name
    return manifest["model"].get("path")


def _catalogue(items: pd.DataFrame, item_ids: list[str], position: dict[str, int]) -> Catalogue:
    """The catalogue's arrays; ``item_ids`` and ``position`` (``items``' own, which the
    workspace holds already) are shared, not made again."""
    return Catalogue.from_columns(
        item_ids,
        items["category"].fillna("").tolist(),
        items["brand"].fillna("").tolist(),
        items["price"].tolist(),
        position=position,
    )


class ByItem(Mapping):
    """One column of the catalogue read by item id: ``{item_id: value}`` without a dict
    per column. The ids' positions are shared by every column and the values stay in
    their (Arrow-backed) Series, so a 1M-item catalogue's titles and categories do not
    become 2M Python strings in dicts (0.29 GB measured)."""

    def __init__(self, position: dict[str, int], values: pd.Series) -> None:
        if len(values) != len(position):
            raise ValueError(f"{len(values)} values for {len(position)} items")
        self._position = position
        self._values = values.reset_index(drop=True)

    def __getitem__(self, item_id: str):
        return self._values.iat[self._position[item_id]]

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._position

    def __iter__(self) -> Iterator[str]:
        return iter(self._position)

    def __len__(self) -> int:
        return len(self._position)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _previous_manifest(store: Store) -> dict | None:
    """The published manifest before a rebuild (unverified: only a few keys carry over),
    or ``None`` for a new workspace or one that cannot be read."""
    try:
        current = store.current()
        return read_json(current.dir / "manifest.json") if current is not None else None
    except (FileNotFoundError, ValueError):
        return None


def _catalogue_fingerprint(items: pd.DataFrame) -> str:
    """A checksum of what models trained on the catalogue depend on: ids, titles and
    categories (a rebuild with other values marks them stale)."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for column in ("item_id", "title", "category"):
        h.update("\x1f".join(items[column].fillna("").astype(str)).encode("utf-8"))
        h.update(b"\x1e")
    return h.hexdigest()


def _carried_artifacts(previous: dict | None, catalogue: str, target: Path) -> dict:
    """The registry entries of models a rebuild carried over, marked stale when they were
    trained on this workspace's data and the catalogue changed since."""
    out = {}
    for name, artifact in ((previous or {}).get("artifacts") or {}).items():
        if not (target / name).exists():
            continue
        artifact = dict(artifact)
        if "workspace" in artifact.get("built_from", {}) and artifact.get("catalogue") != catalogue:
            command = "train-tags" if name == "models/tags" else "train-sentiment"
            artifact["stale"] = (
                f"trained on an earlier catalogue of this workspace; run `profiler {command}` again"
            )
        out[name] = artifact
    return out


def _secure_root(path: Path) -> None:
    """Owner-only modes on what a workspace keeps outside its generations."""
    from profiler.store import _secure

    os.chmod(path, 0o700)
    for name in ("quarantine", "embeddings", "reports", "CURRENT", ".lock"):
        if (path / name).exists():
            _secure(path / name)


def _write_parquet(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def _item_vectors(
    embedder: Embedder,
    item_ids: pd.Series,
    documents: list[str],
    precomputed: str | os.PathLike[str] | ShardedEmbeddings | None,
) -> np.ndarray:
    """Item vectors: from precomputed vectors where given, the rest embedded here.

    ``precomputed`` is an embedding job's folder, a Parquet file of vectors or either
    one already open (:class:`profiler.jobs.ItemVectors`).
    """
    from profiler.jobs import open_item_vectors

    if precomputed is None:
        logger.info("embedding %d items", len(documents))
        return embedder.encode(documents, kind="passage")
    given = (
        open_item_vectors(precomputed)
        if isinstance(precomputed, (str, os.PathLike))
        else precomputed
    )
    if given.model_id is None:
        logger.info("%s records no model: vectors taken as %s's", given.source, embedder.model_id)
    elif given.model_id != embedder.model_id:
        raise ValueError(
            f"{given.source}: vectors were made with {given.model_id!r}, but this "
            f"workspace uses {embedder.model_id!r}; embed again with the same model"
        )
    dim = embedder.dim  # from the cache when it knows, else the model the build loads anyway
    if given.dim != dim:
        raise ValueError(
            f"{given.source}: vectors have {given.dim} dimensions, but this workspace's "
            f"model {embedder.model_id!r} makes {dim}; item vectors must come from "
            "the workspace's model (384 for the bundled all-MiniLM-L6-v2)"
        )
    found, vectors = given.lookup(item_ids.tolist())
    out = np.empty((len(documents), given.dim), dtype=np.float32)
    out[found] = vectors
    missing = np.flatnonzero(~found)
    logger.info(
        "item vectors: %d from %s, %d embedded here", found.sum(), given.source, len(missing)
    )
    if len(missing):
        out[missing] = embedder.encode([documents[i] for i in missing], kind="passage")
    return out
