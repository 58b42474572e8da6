"""User profiles: weighted, time-decayed interest vectors with negative evidence.

Each event is one piece of evidence: a unit vector (its text's vector, its item's vector,
or a blend of both) and a signed weight::

    weight = kind_weight[kind] * rating_factor(rating) * 0.5 ** (age / half_life)

``rating_factor`` is ``(r - 2) / 3`` for ratings above ``negative_rating`` (3 stars: 0.33,
5 stars: 1), and ``-(negative_rating + 1 - r) / negative_rating`` at or below it (2 stars:
-0.5, 1 star: -1); events without a rating count 1. A ``dislike`` is always negative.
``age`` is measured from the user's latest event.

A profile keeps sufficient statistics, so adding events never needs the old ones:

* ``pos_sum``: weighted sum of positive evidence, minus ``negative_push`` times the
  negative evidence (a disliked item pushes the profile away from it);
* ``neg_sum``: weighted sum of negative evidence alone, used to demote items like it;
* several interest **centres** for broad users: average-linkage clustering (cosine) of the
  positive evidence, one centre per cluster with at least ``min_events_per_centre`` events.

:meth:`ProfileBuilder.update` rescales the sums to the new latest time and adds the new
evidence; the result equals a full rebuild to float tolerance.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from profiler.storage import NpyRows, atomic_path, write_json

__all__ = [
    "Evidence",
    "ProfileBuilder",
    "ProfileConfig",
    "ProfileStore",
    "UserProfile",
    "build_profiles",
    "load_profiles",
    "save_profiles",
]

logger = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400.0


def _default_kind_weights() -> dict[str, float]:
    # purchase > review > click > view; a search is stated intent; like/dislike are explicit.
    return {
        "purchase": 1.0,
        "review": 0.8,
        "like": 0.8,
        "search": 0.6,
        "click": 0.4,
        "view": 0.2,
        "dislike": 1.0,
    }


@dataclass(frozen=True)
class ProfileConfig:
    """How events become a profile. JSON round-trips with :meth:`to_dict`/:meth:`from_dict`.

    Parameters
    ----------
    kind_weights : mapping
        Weight per event kind (magnitude; the sign comes from rating or ``dislike``).
    half_life_days : float or None
        Evidence loses half its weight every this many days before the latest event;
        ``None`` turns decay off.
    text_share : float
        For an event with both text and item, the share of its vector from the text.
    negative_rating : float
        Ratings at or below this are negative evidence.
    negative_push : float
        How much of a negative event's weight is subtracted from the positive sum.
    max_centres : int
        Most interest centres per user.
    min_events_per_centre : int
        A cluster needs this many positive events to become a centre.
    centre_distance : float
        Cosine distance at which average-linkage clustering stops merging.
    """

    kind_weights: Mapping[str, float] = field(default_factory=_default_kind_weights)
    half_life_days: float | None = 365.0
    text_share: float = 0.3
    negative_rating: float = 2.0
    negative_push: float = 0.5
    max_centres: int = 4
    min_events_per_centre: int = 2
    centre_distance: float = 0.7

    def __post_init__(self) -> None:
        if self.half_life_days is not None and not self.half_life_days > 0:
            raise ValueError(f"half_life_days must be positive or None, got {self.half_life_days}")
        if not 0.0 <= self.text_share <= 1.0:
            raise ValueError(f"text_share must be in [0, 1], got {self.text_share}")
        if self.max_centres < 1 or self.min_events_per_centre < 1:
            raise ValueError("max_centres and min_events_per_centre must be at least 1")

    def to_dict(self) -> dict:
        return {**asdict(self), "kind_weights": dict(self.kind_weights)}

    @classmethod
    def from_dict(cls, data: Mapping) -> ProfileConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown profile settings {sorted(unknown)}")
        return cls(**data)


class Evidence(NamedTuple):
    """A user's events as evidence: unit vectors, signed undecayed weights, times."""

    vectors: np.ndarray
    weights: np.ndarray
    timestamps: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> Evidence:
        return cls(np.empty((0, dim), np.float32), np.empty(0), np.empty(0))

    def __len__(self) -> int:  # type: ignore[override]
        return len(self.weights)

    def concat(self, other: Evidence) -> Evidence:
        return Evidence(
            np.concatenate([self.vectors, other.vectors]),
            np.concatenate([self.weights, other.weights]),
            np.concatenate([self.timestamps, other.timestamps]),
        )


@dataclass(frozen=True, eq=False)
class UserProfile:
    """One user's interests. ``vector`` and ``negative`` are unit vectors (or zeros)."""

    user_id: str
    n_events: int
    last_timestamp: float
    pos_sum: np.ndarray
    pos_mass: float
    neg_sum: np.ndarray
    neg_mass: float
    centres: np.ndarray
    centre_weights: np.ndarray

    @property
    def vector(self) -> np.ndarray:
        return _unit(self.pos_sum)

    @property
    def negative(self) -> np.ndarray:
        return _unit(self.neg_sum)

    @property
    def has_negative(self) -> bool:
        return self.neg_mass > 0


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return (vector / norm).astype(np.float32) if norm > 1e-12 else np.zeros_like(vector)


class ProfileBuilder:
    """Turns events into :class:`UserProfile` objects and keeps them up to date.

    Examples
    --------
    >>> builder = ProfileBuilder(ProfileConfig(half_life_days=90))  # doctest: +SKIP
    >>> profile = builder.build("u1", builder.evidence(events, item_vectors, text_vectors))
    >>> profile = builder.update(profile, builder.evidence(new_events, ...))
    """

    def __init__(self, config: ProfileConfig | None = None) -> None:
        self.config = config or ProfileConfig()

    # -- evidence -------------------------------------------------------------------------

    def rating_factor(self, rating: np.ndarray) -> np.ndarray:
        """Signed factor per rating (NaN: 1). See the module docstring."""
        neg = self.config.negative_rating
        rating = np.asarray(rating, dtype=np.float64)
        out = np.ones_like(rating)
        known = ~np.isnan(rating)
        positive = known & (rating > neg)
        out[positive] = (rating[positive] - neg) / (5.0 - neg)
        negative = known & (rating <= neg)
        out[negative] = -(neg + 1.0 - rating[negative]) / neg
        return out

    def evidence(
        self,
        events: pd.DataFrame,
        item_vectors: np.ndarray,
        text_vectors: np.ndarray,
    ) -> Evidence:
        """Evidence for events whose item vectors (row per event, NaN row: no item) and
        text vectors (row per event, NaN row: no text) are given, aligned with ``events``."""
        has_item = ~np.isnan(item_vectors[:, 0]) if len(events) else np.zeros(0, bool)
        has_text = ~np.isnan(text_vectors[:, 0]) if len(events) else np.zeros(0, bool)
        return self.evidence_of(
            events,
            np.where(has_item[:, None], item_vectors, 0).astype(np.float32, copy=False),
            np.where(has_text[:, None], text_vectors, 0).astype(np.float32, copy=False),
            has_item,
            has_text,
        )

    def evidence_of(
        self,
        events: pd.DataFrame,
        item_vectors: np.ndarray,
        text_vectors: np.ndarray,
        has_item: np.ndarray,
        has_text: np.ndarray,
    ) -> Evidence:
        """:meth:`evidence` from float32 vectors that are 0 where ``has_item`` /
        ``has_text`` is False (no NaN rows to clean: a pass over 900k x 384 less each).
        ``item_vectors`` may be overwritten."""
        share = self.config.text_share
        vectors = item_vectors
        both = has_item & has_text
        vectors[both] *= 1 - share
        vectors[both] += share * text_vectors[both]
        only_text = has_text & ~has_item
        vectors[only_text] = text_vectors[only_text]
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64))
        vectors /= np.maximum(norms, 1e-12).astype(np.float32)[:, None]
        weights = self.weights(events, has_item | has_text)
        return Evidence(vectors, weights, events["timestamp"].to_numpy(dtype=np.float64))

    def weights(self, events: pd.DataFrame, has_vector: np.ndarray) -> np.ndarray:
        """Each event's signed weight before decay (0 where ``has_vector`` is False: an
        event with neither an item vector nor a text is no evidence)."""
        kinds = events["kind"].to_numpy()
        unknown = set(kinds) - set(self.config.kind_weights)
        if unknown:
            raise ValueError(f"no weight for event kind(s) {sorted(unknown)}")
        weights = np.array([self.config.kind_weights[k] for k in kinds], dtype=np.float64)
        weights *= self.rating_factor(events["rating"].to_numpy(dtype=np.float64))
        weights[kinds == "dislike"] = -np.abs(weights[kinds == "dislike"])
        weights[~has_vector] = 0.0
        return weights

    def decay(self, age_seconds: np.ndarray | float) -> np.ndarray | float:
        """Weight multiplier for evidence ``age_seconds`` older than the latest event."""
        if self.config.half_life_days is None:
            return np.ones_like(age_seconds) if isinstance(age_seconds, np.ndarray) else 1.0
        return 0.5 ** (np.asarray(age_seconds) / (self.config.half_life_days * SECONDS_PER_DAY))

    # -- profiles -------------------------------------------------------------------------

    def build(self, user_id: str, evidence: Evidence) -> UserProfile:
        """A profile from all of a user's evidence."""
        dim = evidence.vectors.shape[1]
        empty = UserProfile(
            user_id, 0, -math.inf, np.zeros(dim, np.float64), 0.0,
            np.zeros(dim, np.float64), 0.0, np.empty((0, dim), np.float32), np.empty(0),
        )  # fmt: skip
        return self.update(empty, evidence, history=Evidence.empty(dim))

    def update(
        self, profile: UserProfile, new: Evidence, *, history: Evidence | None = None
    ) -> UserProfile:
        """Add new evidence to a profile.

        Parameters
        ----------
        profile : UserProfile
            The current profile.
        new : Evidence
            Evidence of the new events (feedback is just another event).
        history : Evidence, optional
            The evidence the profile was built from. When given, centres are re-clustered
            over all evidence and equal a rebuild's; when omitted, each new positive event
            joins its nearest centre (cheaper, an approximation for broad users).
        """
        if not len(new):
            return profile
        last = max(profile.last_timestamp, float(new.timestamps.max()))
        rescale = self.decay(last - profile.last_timestamp) if profile.n_events else 1.0
        weights = new.weights * self.decay(last - new.timestamps)
        pos = np.maximum(weights, 0.0) - self.config.negative_push * np.maximum(-weights, 0.0)
        neg = np.maximum(-weights, 0.0)
        pos_sum = profile.pos_sum * rescale + pos @ new.vectors.astype(np.float64)
        neg_sum = profile.neg_sum * rescale + neg @ new.vectors.astype(np.float64)
        updated = replace(
            profile,
            n_events=profile.n_events + len(new),
            last_timestamp=last,
            pos_sum=pos_sum,
            pos_mass=profile.pos_mass * rescale + float(np.maximum(weights, 0).sum()),
            neg_sum=neg_sum,
            neg_mass=profile.neg_mass * rescale + float(neg.sum()),
        )
        if history is not None:
            everything = history.concat(new)
            decayed = everything.weights * self.decay(last - everything.timestamps)
            centres, centre_weights = self.centres(everything.vectors, decayed)
        else:
            centres, centre_weights = self._join_centres(profile, updated, new, weights, rescale)
        return replace(updated, centres=centres, centre_weights=centre_weights)

    def centres(self, vectors: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Interest centres of positive evidence: ``(centres [c, d], weights [c])``.

        A user with at most ``max_centres`` positive events has one centre per event: with
        so little evidence every event may be a separate interest. Otherwise events are
        clustered with average linkage on cosine distance, cut at ``centre_distance``;
        clusters of at least ``min_events_per_centre`` events become centres, heaviest
        first, at most ``max_centres``; with fewer than two, the one centre is the mean.
        """
        positive = weights > 0
        vectors, weights = vectors[positive].astype(np.float64), weights[positive]
        dim = vectors.shape[1]
        if not len(weights):
            return np.empty((0, dim), np.float32), np.empty(0)
        cfg = self.config
        if len(weights) <= cfg.max_centres:
            return np.stack([_unit(v) for v in vectors]), weights.copy()
        from scipy.cluster.hierarchy import fcluster, linkage

        tree = linkage(vectors, method="average", metric="cosine")
        labels = fcluster(tree, t=cfg.centre_distance, criterion="distance")
        groups = []
        for label in np.unique(labels):
            members = labels == label
            if members.sum() >= cfg.min_events_per_centre:
                groups.append((float(weights[members].sum()), members))
        groups.sort(key=lambda g: -g[0])
        groups = groups[: cfg.max_centres]
        if len(groups) < 2:
            return _unit(weights @ vectors)[None, :], np.array([float(weights.sum())])
        centres = np.stack([_unit(weights[m] @ vectors[m]) for _, m in groups])
        return centres, np.array([w for w, _ in groups])

    def _join_centres(
        self,
        old: UserProfile,
        updated: UserProfile,
        new: Evidence,
        decayed: np.ndarray,
        rescale: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Online centre update: while the user has at most ``max_centres`` events each new
        positive event is a centre of its own, later ones join their nearest centre."""
        weights = list(old.centre_weights * rescale)
        sums = [c.astype(np.float64) * w for c, w in zip(old.centres, weights)]
        n_events = old.n_events
        for vector, weight in zip(new.vectors, decayed):
            n_events += 1
            if weight <= 0:
                continue
            if not sums or n_events <= self.config.max_centres:
                sums.append(weight * vector.astype(np.float64))
                weights.append(weight)
                continue
            nearest = int(np.argmax([s @ vector for s in sums]))
            sums[nearest] += weight * vector
            weights[nearest] += weight
        if not sums:
            return np.empty((0, updated.pos_sum.shape[0]), np.float32), np.empty(0)
        return np.stack([_unit(s) for s in sums]), np.array(weights)


# -- many users at once ---------------------------------------------------------------------


def build_profiles(
    builder: ProfileBuilder,
    user_ids: np.ndarray,
    evidence: Evidence,
) -> ProfileStore:
    """Every user's profile from all evidence at once, with array operations.

    Equal to :meth:`ProfileBuilder.build` per user (tested), but the sums are one sparse
    product and the centres of users with at most ``max_centres`` positive events (one per
    event) are copied in bulk; only broader users are clustered one by one.

    Parameters
    ----------
    builder : ProfileBuilder
        How evidence becomes a profile.
    user_ids : ndarray of str, shape (n_events,)
        The user of each piece of evidence; within a user, evidence is oldest first.
    evidence : Evidence
        Aligned with ``user_ids``.
    """
    from scipy import sparse

    codes, users = pd.factorize(pd.Series(user_ids, dtype=object), sort=False)
    n_users, dim = len(users), evidence.vectors.shape[1]
    if not n_users:
        return ProfileStore.empty(dim)
    last = np.full(n_users, -np.inf)
    np.maximum.at(last, codes, evidence.timestamps)
    decayed = evidence.weights * builder.decay(last[codes] - evidence.timestamps)
    positive = np.maximum(decayed, 0.0)
    negative = np.maximum(-decayed, 0.0)
    push = positive - builder.config.negative_push * negative
    events = np.arange(len(codes))
    # float32 throughout: the sums are stored as float32, and a float64 copy of 900k
    # events' vectors is 2.8 GB
    vectors = np.ascontiguousarray(evidence.vectors, dtype=np.float32)

    def per_user(values: np.ndarray) -> np.ndarray:
        matrix = sparse.csr_matrix(
            (values.astype(np.float32), (codes, events)), shape=(n_users, len(codes))
        )
        return np.asarray(matrix @ vectors, dtype=np.float32)

    n_positive = np.bincount(codes, weights=(decayed > 0), minlength=n_users).astype(np.int64)
    simple = n_positive <= builder.config.max_centres
    keep = (decayed > 0) & simple[codes]
    # Positive events of simple users, grouped by user in event order: their centres.
    order = np.argsort(codes[keep], kind="stable")
    simple_rows = np.flatnonzero(keep)[order]
    centres_of: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    by_user = pd.Series(np.arange(len(codes))).groupby(codes).indices
    for user in np.flatnonzero(~simple):
        rows = by_user[user]
        centres_of[user] = builder.centres(evidence.vectors[rows], decayed[rows])
    counts = np.where(simple, n_positive, 0)
    for user, (centres, _) in centres_of.items():
        counts[user] = len(centres)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    all_centres = np.empty((offsets[-1], dim), np.float32)
    all_weights = np.empty(offsets[-1])
    simple_users = codes[simple_rows]
    slots = offsets[simple_users] + _rank_within(simple_users)
    norms = np.linalg.norm(vectors[simple_rows], axis=1, keepdims=True)
    unit = vectors[simple_rows] / np.maximum(norms, 1e-12)
    all_centres[slots] = np.where(norms > 1e-12, unit, 0.0)
    all_weights[slots] = decayed[simple_rows]
    for user, (centres, weights) in centres_of.items():
        all_centres[offsets[user] : offsets[user + 1]] = centres
        all_weights[offsets[user] : offsets[user + 1]] = weights
    return ProfileStore(
        list(users),
        n_events=np.bincount(codes, minlength=n_users).astype(np.int64),
        last_timestamp=last,
        pos_sum=per_user(push),
        pos_mass=np.bincount(codes, weights=positive, minlength=n_users),
        neg_sum=per_user(negative),
        neg_mass=np.bincount(codes, weights=negative, minlength=n_users),
        centre_offsets=offsets,
        centres=all_centres,
        centre_weights=all_weights,
    )


def _rank_within(sorted_codes: np.ndarray) -> np.ndarray:
    """0, 1, 2... within each run of equal values of a sorted code array."""
    if not len(sorted_codes):
        return np.empty(0, np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    run = np.repeat(starts, np.diff(np.r_[starts, len(sorted_codes)]))
    return np.arange(len(sorted_codes)) - run


# -- stored profiles ------------------------------------------------------------------------

_ARRAYS = (
    "n_events",
    "last_timestamp",
    "pos_sum",
    "pos_mass",
    "neg_sum",
    "neg_mass",
    "centre_offsets",
    "centres",
    "centre_weights",
)
#: the arrays of one vector per shopper (or per centre): read with ``pread`` when mapped
_ROW_READ = ("pos_sum", "neg_sum", "centres")


class ProfileStore(MutableMapping):
    """Every user's profile as arrays (row per user), readable as ``{user_id: UserProfile}``.

    Sums are stored as float32 (a profile's direction is all serving needs, and 300k users
    x 384 dims in float64 would be 0.9 GB per sum); opened with ``mmap=True`` the vectors are
    read by rows (:class:`~profiler.storage.NpyRows`) and the rest memory-mapped, so opening a
    large workspace reads only the rows a query touches. Profiles set after loading
    (``store[user] = profile``, incremental updates) are kept beside the arrays until
    :meth:`save` writes one consistent set.
    """

    def __init__(self, user_ids: list[str], **arrays: np.ndarray) -> None:
        missing = set(_ARRAYS) - set(arrays)
        if missing:
            raise ValueError(f"profile arrays missing: {sorted(missing)}")
        self._users = list(user_ids)
        self.row_ = {u: r for r, u in enumerate(self._users)}
        self._arrays = arrays
        self._changed: dict[str, UserProfile] = {}
        n = len(self._users)
        if any(len(arrays[name]) != n for name in _ARRAYS if not name.startswith("centre")):
            raise ValueError("profile arrays disagree on the number of users; rebuild")
        if len(arrays["centre_offsets"]) != n + 1:
            raise ValueError("profile centre offsets disagree with the number of users; rebuild")

    @classmethod
    def empty(cls, dim: int) -> ProfileStore:
        return cls([], **_empty_arrays(dim))

    @classmethod
    def from_profiles(cls, profiles: Mapping[str, UserProfile], dim: int) -> ProfileStore:
        store = cls.empty(dim)
        for user, profile in profiles.items():
            store[user] = profile
        return store

    @property
    def dim(self) -> int:
        return int(self._arrays["pos_sum"].shape[1])

    def __len__(self) -> int:
        return len(self._users) + sum(u not in self.row_ for u in self._changed)

    def __iter__(self) -> Iterator[str]:
        yield from self._users
        yield from (u for u in self._changed if u not in self.row_)

    def __contains__(self, user: object) -> bool:
        return user in self.row_ or user in self._changed

    def __getitem__(self, user: str) -> UserProfile:
        if user in self._changed:
            return self._changed[user]
        row = self.row_[user]
        a = self._arrays
        lo, hi = int(a["centre_offsets"][row]), int(a["centre_offsets"][row + 1])
        return UserProfile(
            user,
            int(a["n_events"][row]),
            float(a["last_timestamp"][row]),
            np.asarray(a["pos_sum"][row], dtype=np.float64),
            float(a["pos_mass"][row]),
            np.asarray(a["neg_sum"][row], dtype=np.float64),
            float(a["neg_mass"][row]),
            np.asarray(a["centres"][lo:hi], dtype=np.float32),
            np.asarray(a["centre_weights"][lo:hi], dtype=np.float64),
        )

    def __setitem__(self, user: str, profile: UserProfile) -> None:
        self._changed[user] = profile

    def __delitem__(self, user: str) -> None:
        raise NotImplementedError("profiles are removed by rebuilding without the user")

    def vectors(self, users: Iterable[str] | None = None) -> np.ndarray:
        """Unit profile vectors ``[n, dim]`` (float32) of ``users`` (default: all)."""
        users = list(self) if users is None else list(users)
        out = np.zeros((len(users), self.dim), np.float32)
        rows = [self.row_.get(u, -1) if u not in self._changed else -1 for u in users]
        stored = np.array([r >= 0 for r in rows], dtype=bool)
        if stored.any():
            sums = np.asarray(self._arrays["pos_sum"][np.array(rows)[stored]], np.float64)
            norms = np.linalg.norm(sums, axis=1, keepdims=True)
            out[stored] = np.where(norms > 1e-12, sums / np.maximum(norms, 1e-12), 0.0)
        for position in np.flatnonzero(~stored):
            out[position] = self[users[position]].vector
        return out

    def merged(self) -> ProfileStore:
        """One array set holding the stored and the changed profiles: the stored arrays
        copied and patched (a Python step per changed profile only, so an update of a few
        shoppers does not touch every profile)."""
        if not self._changed:
            return self
        a = self._arrays
        n_old = len(self._users)
        added = [u for u in self._changed if u not in self.row_]
        users = self._users + added
        changed = np.array([self.row_.get(u, -1) for u in self._changed], dtype=np.int64)
        changed[changed < 0] = n_old + np.arange(len(added))
        profiles = list(self._changed.values())
        fresh = _arrays_of(profiles, self.dim)  # the changed ones, in their order
        out = {}
        for name in ("n_events", "last_timestamp", "pos_sum", "pos_mass", "neg_sum", "neg_mass"):
            base = np.asarray(a[name])
            grown = np.concatenate([base, np.zeros((len(added), *base.shape[1:]), base.dtype)])
            grown[changed] = fresh[name]
            out[name] = grown
        old_offsets = np.asarray(a["centre_offsets"])
        counts = np.concatenate([np.diff(old_offsets), np.zeros(len(added), np.int64)])
        counts[changed] = np.diff(fresh["centre_offsets"])
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        kept = np.ones(n_old, dtype=bool)
        kept[changed[changed < n_old]] = False
        owner = np.repeat(np.arange(n_old), np.diff(old_offsets))  # old centre row -> user
        rows = np.flatnonzero(kept[owner])
        target = offsets[owner[rows]] + (rows - old_offsets[owner[rows]])
        for name in ("centres", "centre_weights"):
            old = np.asarray(a[name])
            merged = np.zeros((int(offsets[-1]), *old.shape[1:]), old.dtype)
            merged[target] = old[rows]
            for position, row in enumerate(changed.tolist()):
                lo, hi = fresh["centre_offsets"][position], fresh["centre_offsets"][position + 1]
                merged[offsets[row] : offsets[row + 1]] = fresh[name][lo:hi]
            out[name] = merged
        out["centre_offsets"] = offsets
        return ProfileStore(users, **out)

    def save(self, directory: str | os.PathLike[str], config: ProfileConfig) -> None:
        """Write ``profiles.parquet`` (one row per user), ``profiles.<array>.npy`` and
        ``profiles.json`` (config) atomically, the JSON last."""
        from profiler.storage import save_npy

        directory = Path(directory)
        store = self.merged()
        a = store._arrays
        table = pd.DataFrame(
            {
                "user_id": store._users,
                "n_events": np.asarray(a["n_events"]),
                "last_timestamp": np.asarray(a["last_timestamp"]),
                "n_centres": np.diff(np.asarray(a["centre_offsets"])),
            }
        )
        with atomic_path(directory / "profiles.parquet") as tmp:
            table.to_parquet(tmp, index=False)
        for name in _ARRAYS:
            save_npy(directory / f"profiles.{name}.npy", np.asarray(a[name]))
        write_json(
            directory / "profiles.json",
            {"config": config.to_dict(), "count": len(store._users), "dim": store.dim},
        )


def _empty_arrays(dim: int) -> dict[str, np.ndarray]:
    return {
        "n_events": np.empty(0, np.int64),
        "last_timestamp": np.empty(0),
        "pos_sum": np.empty((0, dim), np.float32),
        "pos_mass": np.empty(0),
        "neg_sum": np.empty((0, dim), np.float32),
        "neg_mass": np.empty(0),
        "centre_offsets": np.zeros(1, np.int64),
        "centres": np.empty((0, dim), np.float32),
        "centre_weights": np.empty(0),
    }


def _arrays_of(profiles: list[UserProfile], dim: int) -> dict[str, np.ndarray]:
    if not profiles:
        return _empty_arrays(dim)
    counts = np.array([len(p.centres) for p in profiles], dtype=np.int64)
    centres = [p.centres for p in profiles if len(p.centres)]
    return {
        "n_events": np.array([p.n_events for p in profiles], dtype=np.int64),
        "last_timestamp": np.array([p.last_timestamp for p in profiles]),
        "pos_sum": np.stack([p.pos_sum for p in profiles]).astype(np.float32),
        "pos_mass": np.array([p.pos_mass for p in profiles]),
        "neg_sum": np.stack([p.neg_sum for p in profiles]).astype(np.float32),
        "neg_mass": np.array([p.neg_mass for p in profiles]),
        "centre_offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "centres": np.concatenate(centres).astype(np.float32)
        if centres
        else np.empty((0, dim), np.float32),
        "centre_weights": np.concatenate([p.centre_weights for p in profiles]),
    }


def save_profiles(
    directory: str | os.PathLike[str], profiles: Mapping[str, UserProfile], config: ProfileConfig
) -> None:
    """Write profiles (a :class:`ProfileStore` or any mapping) to ``directory``."""
    if not isinstance(profiles, ProfileStore):
        dim = next(iter(profiles.values())).pos_sum.shape[0] if profiles else 0
        profiles = ProfileStore.from_profiles(profiles, dim)
    profiles.save(directory, config)


def load_profiles(
    directory: str | os.PathLike[str], *, mmap: bool = False
) -> tuple[ProfileStore, ProfileConfig]:
    """Read what :func:`save_profiles` wrote; ``mmap=True`` maps the arrays read-only."""
    directory = Path(directory)
    meta = json.loads((directory / "profiles.json").read_text(encoding="utf-8"))
    table = pd.read_parquet(directory / "profiles.parquet", columns=["user_id"])
    arrays = {
        name: np.load(
            directory / f"profiles.{name}.npy", mmap_mode="r" if mmap else None, allow_pickle=False
        )
        for name in _ARRAYS
        if not (mmap and name in _ROW_READ)
    }
    # the per-shopper vectors read row by row: no mapped pages left resident (NpyRows)
    for name in _ROW_READ if mmap else ():
        path = directory / f"profiles.{name}.npy"
        arrays[name] = NpyRows(path) if hasattr(os, "preadv") else np.load(path, mmap_mode="r")
    if len(table) != meta["count"] or len(arrays["pos_sum"]) != len(table):
        raise ValueError(f"{directory}: profile files disagree on the number of users; rebuild")
    store = ProfileStore(table["user_id"].tolist(), **arrays)
    return store, ProfileConfig.from_dict(meta["config"])
