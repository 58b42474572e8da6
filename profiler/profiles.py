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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from profiler.storage import atomic_path, write_json

__all__ = [
    "Evidence",
    "ProfileBuilder",
    "ProfileConfig",
    "UserProfile",
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
        share = self.config.text_share
        has_item = ~np.isnan(item_vectors[:, 0]) if len(events) else np.zeros(0, bool)
        has_text = ~np.isnan(text_vectors[:, 0]) if len(events) else np.zeros(0, bool)
        item = np.nan_to_num(item_vectors)
        text = np.nan_to_num(text_vectors)
        both = (has_item & has_text)[:, None]
        vectors = np.where(both, share * text + (1 - share) * item, item + text)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)

        kinds = events["kind"].to_numpy()
        unknown = set(kinds) - set(self.config.kind_weights)
        if unknown:
            raise ValueError(f"no weight for event kind(s) {sorted(unknown)}")
        weights = np.array([self.config.kind_weights[k] for k in kinds], dtype=np.float64)
        weights *= self.rating_factor(events["rating"].to_numpy(dtype=np.float64))
        weights[kinds == "dislike"] = -np.abs(weights[kinds == "dislike"])
        weights[~(has_item | has_text)] = 0.0
        return Evidence(vectors, weights, events["timestamp"].to_numpy(dtype=np.float64))

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


# -- persistence ----------------------------------------------------------------------------


def save_profiles(
    directory: str | os.PathLike[str], profiles: Mapping[str, UserProfile], config: ProfileConfig
) -> None:
    """Write ``profiles.parquet`` (one row per user), ``profiles.npz`` (vectors) and
    ``profiles.json`` (config) atomically."""
    directory = Path(directory)
    users = list(profiles)
    dim = next(iter(profiles.values())).pos_sum.shape[0] if profiles else 0
    counts = np.array([len(profiles[u].centres) for u in users], dtype=np.int64)
    table = pd.DataFrame(
        {
            "user_id": users,
            "n_events": [profiles[u].n_events for u in users],
            "last_timestamp": [profiles[u].last_timestamp for u in users],
            "pos_mass": [profiles[u].pos_mass for u in users],
            "neg_mass": [profiles[u].neg_mass for u in users],
            "n_centres": counts,
        }
    )
    with atomic_path(directory / "profiles.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    arrays = {
        "pos_sum": np.stack([profiles[u].pos_sum for u in users]) if users else np.empty((0, dim)),
        "neg_sum": np.stack([profiles[u].neg_sum for u in users]) if users else np.empty((0, dim)),
        "centres": np.concatenate([profiles[u].centres for u in users])
        if users
        else np.empty((0, dim)),
        "centre_weights": np.concatenate([profiles[u].centre_weights for u in users])
        if users
        else np.empty(0),
    }
    with atomic_path(directory / "profiles.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    write_json(directory / "profiles.json", {"config": config.to_dict(), "count": len(users)})


def load_profiles(
    directory: str | os.PathLike[str],
) -> tuple[dict[str, UserProfile], ProfileConfig]:
    """Read what :func:`save_profiles` wrote."""
    directory = Path(directory)
    meta = json.loads((directory / "profiles.json").read_text(encoding="utf-8"))
    table = pd.read_parquet(directory / "profiles.parquet")
    with np.load(directory / "profiles.npz", allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    if len(table) != meta["count"] or len(arrays["pos_sum"]) != len(table):
        raise ValueError(f"{directory}: profile files disagree on the number of users; rebuild")
    offsets = np.concatenate([[0], np.cumsum(table["n_centres"].to_numpy())])
    profiles = {}
    for row, record in enumerate(table.itertuples(index=False)):
        lo, hi = offsets[row], offsets[row + 1]
        profiles[record.user_id] = UserProfile(
            record.user_id,
            int(record.n_events),
            float(record.last_timestamp),
            arrays["pos_sum"][row],
            float(record.pos_mass),
            arrays["neg_sum"][row],
            float(record.neg_mass),
            arrays["centres"][lo:hi].astype(np.float32),
            arrays["centre_weights"][lo:hi],
        )
    return profiles, ProfileConfig.from_dict(meta["config"])
