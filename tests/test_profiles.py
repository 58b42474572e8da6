"""Profiles from hand-built evidence: decay, rating signs, negatives, updates, centres, files."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from profiler.profiles import (
    Evidence,
    ProfileBuilder,
    ProfileConfig,
    ProfileStore,
    UserProfile,
    build_profiles,
    load_profiles,
    save_profiles,
)
from profiler.storage import NpyRows
from tests.conftest import unit_vectors

DIM = 6
DAY = 86_400.0
T0 = 1_700_000_000.0
E = np.eye(DIM, dtype=np.float32)
COLUMNS = ["user_id", "timestamp", "kind", "item_id", "text", "rating", "text_row"]


def events(rows: list[tuple]) -> pd.DataFrame:
    """Rows of (timestamp, kind[, rating]) for one user as an events table."""
    records = [
        ("u", float(ts), kind, f"item-{n}", "", float(rest[0]) if rest else np.nan, -1)
        for n, (ts, kind, *rest) in enumerate(rows)
    ]
    return pd.DataFrame(records, columns=COLUMNS)


def item_evidence(builder: ProfileBuilder, rows: list[tuple], vectors: np.ndarray) -> Evidence:
    """Evidence of item events (no texts) with the given item vectors, one row per event."""
    no_text = np.full((len(rows), DIM), np.nan, dtype=np.float32)
    return builder.evidence(events(rows), np.asarray(vectors, dtype=np.float32), no_text)


def near(axis: int, n: int, seed: int, noise: float = 0.15) -> np.ndarray:
    """``n`` unit vectors scattered around basis vector ``axis``."""
    rng = np.random.default_rng(seed)
    vectors = E[axis] + noise * rng.standard_normal((n, DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def assert_same_profile(got: UserProfile, want: UserProfile, *, centres: bool = True) -> None:
    assert got.n_events == want.n_events
    assert got.last_timestamp == want.last_timestamp
    np.testing.assert_allclose(got.pos_sum, want.pos_sum, atol=1e-6)
    np.testing.assert_allclose(got.neg_sum, want.neg_sum, atol=1e-6)
    assert got.pos_mass == pytest.approx(want.pos_mass, abs=1e-6)
    assert got.neg_mass == pytest.approx(want.neg_mass, abs=1e-6)
    if centres:
        assert got.centres.shape == want.centres.shape
        np.testing.assert_allclose(got.centres, want.centres, atol=1e-6)
        np.testing.assert_allclose(got.centre_weights, want.centre_weights, atol=1e-6)


class TestEvidence:
    def test_rating_factor(self):
        builder = ProfileBuilder(ProfileConfig(negative_rating=2.0))
        factors = builder.rating_factor(np.array([5.0, 4.0, 3.0, 2.0, 1.0, np.nan]))
        np.testing.assert_allclose(factors, [1.0, 2 / 3, 1 / 3, -0.5, -1.0, 1.0])

    def test_weight_is_kind_times_rating_and_vectors_are_unit(self):
        builder = ProfileBuilder(ProfileConfig(half_life_days=None))
        rows = [(T0, "purchase"), (T0, "review", 4.0), (T0, "view"), (T0, "dislike")]
        evidence = item_evidence(builder, rows, 3 * E[:4])
        np.testing.assert_allclose(evidence.weights, [1.0, 0.8 * 2 / 3, 0.2, -1.0])
        np.testing.assert_allclose(evidence.vectors, E[:4])

    def test_text_share_blends_text_and_item(self):
        builder = ProfileBuilder(ProfileConfig(text_share=0.25))
        item, text = E[[0]], E[[1]]
        evidence = builder.evidence(events([(T0, "review", 5.0)]), item, text)
        blend = 0.25 * E[1] + 0.75 * E[0]
        np.testing.assert_allclose(evidence.vectors[0], blend / np.linalg.norm(blend), atol=1e-6)

    def test_event_without_vectors_weighs_nothing(self):
        builder = ProfileBuilder()
        missing = np.full((1, DIM), np.nan, dtype=np.float32)
        assert builder.evidence(events([(T0, "purchase")]), missing, missing).weights[0] == 0

    def test_unknown_kind(self):
        with pytest.raises(ValueError, match="teleport"):
            item_evidence(ProfileBuilder(), [(T0, "teleport")], E[:1])


class TestDecay:
    def test_one_half_life_older_counts_half(self):
        builder = ProfileBuilder(ProfileConfig(half_life_days=30.0))
        # identical purchases on orthogonal items; the first is exactly one half-life older
        rows = [(T0 - 30 * DAY, "purchase"), (T0, "purchase")]
        profile = builder.build("u", item_evidence(builder, rows, E[[1, 0]]))
        np.testing.assert_allclose(profile.pos_sum, 1.0 * E[0] + 0.5 * 1.0 * E[1], atol=1e-12)
        assert profile.pos_mass == pytest.approx(1.5)
        assert profile.last_timestamp == T0

    def test_two_half_lives_count_a_quarter(self):
        builder = ProfileBuilder(ProfileConfig(half_life_days=10.0))
        rows = [(T0 - 20 * DAY, "review", 5.0), (T0, "review", 5.0)]
        profile = builder.build("u", item_evidence(builder, rows, E[[1, 0]]))
        np.testing.assert_allclose(profile.pos_sum, 0.8 * E[0] + 0.25 * 0.8 * E[1], atol=1e-12)

    def test_no_half_life_no_decay(self):
        builder = ProfileBuilder(ProfileConfig(half_life_days=None))
        rows = [(T0 - 3650 * DAY, "purchase"), (T0, "purchase")]
        profile = builder.build("u", item_evidence(builder, rows, E[[1, 0]]))
        np.testing.assert_allclose(profile.pos_sum, E[0] + E[1], atol=1e-12)


class TestNegativeEvidence:
    @pytest.mark.parametrize(
        ("row", "weight"), [((T0, "review", 1.0), 0.8), ((T0, "dislike"), 1.0)]
    )
    def test_negative_event_is_pushed_away_and_remembered(self, row, weight):
        config = ProfileConfig(half_life_days=None, negative_push=0.5)
        builder = ProfileBuilder(config)
        profile = builder.build("u", item_evidence(builder, [(T0, "purchase"), row], E[[0, 1]]))
        np.testing.assert_allclose(profile.neg_sum, weight * E[1], atol=1e-12)
        np.testing.assert_allclose(profile.pos_sum, E[0] - 0.5 * weight * E[1], atol=1e-12)
        assert profile.has_negative and profile.neg_mass == pytest.approx(weight)
        assert profile.pos_mass == pytest.approx(1.0)
        np.testing.assert_allclose(profile.negative, E[1], atol=1e-6)
        assert profile.vector @ E[1] < 0 < profile.vector @ E[0]
        # a disliked item is never an interest centre
        assert len(profile.centres) == 1 and profile.centres[0] @ E[1] == pytest.approx(0)

    def test_positive_only_has_no_negative(self):
        builder = ProfileBuilder()
        profile = builder.build("u", item_evidence(builder, [(T0, "review", 3.0)], E[:1]))
        assert not profile.has_negative and profile.neg_mass == 0
        assert not profile.negative.any() and not profile.neg_sum.any()


def mixed_evidence(builder: ProfileBuilder, n: int = 12, seed: int = 0) -> Evidence:
    """A broad user's evidence: two interests, assorted kinds and ratings, one dislike."""
    rng = np.random.default_rng(seed)
    kinds = ["purchase", "review", "view", "click", "like", "dislike"]
    rows = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        rating = (1.0 + rng.integers(0, 5),) if kind == "review" else ()
        rows.append((T0 + i * 7 * DAY + rng.uniform(0, DAY), kind, *rating))
    vectors = np.concatenate([near(0, n // 2, seed), near(1, n - n // 2, seed + 1)])
    return item_evidence(builder, rows, vectors[rng.permutation(n)])


def take(evidence: Evidence, rows) -> Evidence:
    return Evidence(evidence.vectors[rows], evidence.weights[rows], evidence.timestamps[rows])


class TestIncrementalUpdate:
    @pytest.mark.parametrize("k", [1, 4, 7, 11])
    def test_update_with_history_equals_rebuild(self, k):
        builder = ProfileBuilder(ProfileConfig(half_life_days=20.0, max_centres=3))
        evidence = mixed_evidence(builder)
        old, new = take(evidence, slice(None, k)), take(evidence, slice(k, None))
        updated = builder.update(builder.build("u", old), new, history=old)
        assert_same_profile(updated, builder.build("u", evidence))

    def test_late_events_equal_rebuild(self):
        builder = ProfileBuilder(ProfileConfig(half_life_days=20.0, max_centres=3))
        evidence = mixed_evidence(builder, seed=3)
        # the profile holds the newest events; older ones arrive late, out of order
        order = np.argsort(-evidence.timestamps)
        recent, late = take(evidence, order[:5]), take(evidence, order[5:][::-1])
        profile = builder.build("u", recent)
        updated = builder.update(profile, late, history=recent)
        assert updated.last_timestamp == evidence.timestamps.max() == profile.last_timestamp
        assert_same_profile(updated, builder.build("u", recent.concat(late)))
        # sums do not depend on the order at all
        assert_same_profile(updated, builder.build("u", evidence), centres=False)

    def test_update_in_steps_equals_rebuild(self):
        builder = ProfileBuilder(ProfileConfig(half_life_days=5.0, max_centres=2))
        evidence = mixed_evidence(builder, seed=5)
        profile = builder.build("u", Evidence.empty(DIM))
        for i in range(len(evidence)):
            profile = builder.update(profile, take(evidence, [i]), history=take(evidence, slice(i)))
        assert_same_profile(profile, builder.build("u", evidence))

    def test_update_without_history_keeps_the_sums(self):
        builder = ProfileBuilder(ProfileConfig(half_life_days=20.0, max_centres=3))
        evidence = mixed_evidence(builder, seed=7)
        old, new = take(evidence, slice(None, 6)), take(evidence, slice(6, None))
        updated = builder.update(builder.build("u", old), new)
        assert_same_profile(updated, builder.build("u", evidence), centres=False)
        assert 1 <= len(updated.centres) <= len(evidence)
        np.testing.assert_allclose(np.linalg.norm(updated.centres, axis=1), 1.0, atol=1e-6)

    def test_empty_update_is_a_no_op(self):
        builder = ProfileBuilder()
        profile = builder.build("u", mixed_evidence(builder))
        assert builder.update(profile, Evidence.empty(DIM)) is profile


class TestCentres:
    def test_few_events_one_centre_each(self):
        builder = ProfileBuilder(ProfileConfig(half_life_days=None, max_centres=3))
        vectors = unit_vectors(3, DIM, seed=1)
        rows = [(T0, "purchase"), (T0, "view"), (T0, "review", 4.0)]
        profile = builder.build("u", item_evidence(builder, rows, vectors))
        np.testing.assert_allclose(profile.centres, vectors, atol=1e-6)
        np.testing.assert_allclose(profile.centre_weights, [1.0, 0.2, 0.8 * 2 / 3])

    def test_broad_user_gets_a_centre_per_interest(self):
        config = ProfileConfig(half_life_days=None, max_centres=3, min_events_per_centre=2)
        builder = ProfileBuilder(config)
        vectors = np.concatenate([near(0, 6, seed=1), near(1, 6, seed=2)])
        profile = builder.build("u", item_evidence(builder, [(T0, "purchase")] * 12, vectors))
        assert profile.centres.shape == (2, DIM)
        closeness = profile.centres @ E[:2].T  # [centre, axis]
        assert sorted(closeness.argmax(axis=1).tolist()) == [0, 1]
        assert closeness.max(axis=1).min() > 0.95
        np.testing.assert_allclose(profile.centre_weights, [6.0, 6.0])

    def test_narrow_user_gets_one_centre(self):
        config = ProfileConfig(half_life_days=None, max_centres=3, min_events_per_centre=2)
        builder = ProfileBuilder(config)
        vectors = near(2, 8, seed=3)
        profile = builder.build("u", item_evidence(builder, [(T0, "purchase")] * 8, vectors))
        assert profile.centres.shape == (1, DIM)
        np.testing.assert_allclose(profile.centres[0], profile.vector, atol=1e-6)
        assert profile.centre_weights.tolist() == [8.0]

    def test_small_clusters_are_not_centres(self):
        config = ProfileConfig(half_life_days=None, max_centres=4, min_events_per_centre=3)
        builder = ProfileBuilder(config)
        # 4 events near e0, 4 near e1, 2 near e2 (too few for a centre of their own)
        vectors = np.concatenate([near(0, 4, 1), near(1, 4, 2), near(2, 2, 3)])
        profile = builder.build("u", item_evidence(builder, [(T0, "purchase")] * 10, vectors))
        assert profile.centres.shape == (2, DIM)
        assert (np.abs(profile.centres @ E[2]) < 0.3).all()


class TestConfig:
    def test_json_round_trip(self):
        config = ProfileConfig(
            kind_weights={"purchase": 2.0, "dislike": 1.5},
            half_life_days=None,
            text_share=0.6,
            max_centres=2,
        )
        again = ProfileConfig.from_dict(json.loads(json.dumps(config.to_dict())))
        assert again == config and again.half_life_days is None
        assert ProfileConfig.from_dict(ProfileConfig().to_dict()) == ProfileConfig()

    def test_from_dict_rejects_unknown_keys(self):
        with pytest.raises(ValueError, match="half_life"):
            ProfileConfig.from_dict({"half_life": 30})

    @pytest.mark.parametrize(
        "settings",
        [
            {"half_life_days": 0},
            {"half_life_days": -1.0},
            {"half_life_days": math.nan},
            {"text_share": 2},
            {"text_share": -0.1},
            {"max_centres": 0},
            {"min_events_per_centre": 0},
        ],
    )
    def test_invalid_settings(self, settings):
        with pytest.raises(ValueError, match=next(iter(settings)).split("_")[0]):
            ProfileConfig(**settings)


class TestPersistence:
    def test_round_trip(self, tmp_path):
        config = ProfileConfig(half_life_days=30.0, max_centres=3, text_share=0.5)
        builder = ProfileBuilder(config)
        profiles = {
            "broad": builder.build("broad", mixed_evidence(builder)),
            "one": builder.build("one", item_evidence(builder, [(T0, "purchase")], E[:1])),
            # only a dislike: negative evidence, no centres
            "hater": builder.build("hater", item_evidence(builder, [(T0, "dislike")], E[3:4])),
            "nothing": builder.build("nothing", Evidence.empty(DIM)),
        }
        assert len(profiles["hater"].centres) == 0 and len(profiles["nothing"].centres) == 0
        save_profiles(tmp_path, profiles, config)
        loaded, loaded_config = load_profiles(tmp_path)
        assert loaded_config == config
        assert list(loaded) == list(profiles)
        for user, profile in profiles.items():
            assert loaded[user].user_id == user
            assert_same_profile(loaded[user], profile)
            assert loaded[user].centres.dtype == np.float32
        assert loaded["nothing"].last_timestamp == -math.inf

    def test_empty_mapping(self, tmp_path):
        save_profiles(tmp_path, {}, ProfileConfig())
        loaded, config = load_profiles(tmp_path)
        assert loaded == {} and config == ProfileConfig()

    def test_mismatched_files_fail(self, tmp_path):
        builder = ProfileBuilder()
        one = {"u": builder.build("u", item_evidence(builder, [(T0, "purchase")], E[:1]))}
        save_profiles(tmp_path, one, builder.config)
        meta = json.loads((tmp_path / "profiles.json").read_text())
        meta["count"] = 2
        (tmp_path / "profiles.json").write_text(json.dumps(meta))
        with pytest.raises(ValueError, match="rebuild"):
            load_profiles(tmp_path)


class TestBuildMany:
    def test_equals_one_build_per_user(self):
        builder = ProfileBuilder(ProfileConfig(half_life_days=30.0, max_centres=2))
        rng = np.random.default_rng(3)
        parts, users = [], []
        # users with 0 positives, few positives (centres copied) and many (clustered)
        for n, user in enumerate(["dislikes", "one", "few", "broad", "mixed"]):
            size = [1, 1, 2, 9, 6][n]
            kinds = ["dislike"] if user == "dislikes" else ["purchase", "view", "review"]
            rows = [
                (T0 + DAY * i * (n + 1), kinds[i % len(kinds)], *([2.0] if i == 3 else []))
                for i in range(size)
            ]
            vectors = unit_vectors(size, DIM, seed=10 + n)
            parts.append(item_evidence(builder, rows, vectors))
            users += [user] * size
        # interleave users to check that event order within a user is all that matters
        evidence = parts[0]
        for part in parts[1:]:
            evidence = evidence.concat(part)
        shuffled = rng.permutation(len(users))
        owners = np.array(users)[shuffled]
        for user in set(users):  # keep each user's own events oldest first
            shuffled[owners == user] = np.sort(shuffled[owners == user])
        store = build_profiles(
            builder,
            np.array(users)[shuffled],
            Evidence(*(a[shuffled] for a in evidence)),
        )
        assert set(store) == set(users)
        # stored as float32, as the store's arrays from profile objects are
        assert {store._arrays[n].dtype for n in ("pos_sum", "neg_sum", "centres")} == {
            np.dtype(np.float32)
        }
        for user, part in zip(["dislikes", "one", "few", "broad", "mixed"], parts):
            assert_same_profile(store[user], builder.build(user, part))

    def test_store_round_trip_and_changes(self, tmp_path):
        builder = ProfileBuilder()
        profiles = {
            "a": builder.build("a", item_evidence(builder, [(T0, "purchase")], E[:1])),
            "b": builder.build("b", mixed_evidence(builder)),
        }
        store = ProfileStore.from_profiles(profiles, DIM)
        store.save(tmp_path, builder.config)
        loaded, _ = load_profiles(tmp_path, mmap=True)
        assert isinstance(loaded["a"].pos_sum, np.ndarray) and len(loaded) == 2
        # the per-shopper vectors are read by rows (pread), not mapped
        assert isinstance(loaded._arrays["pos_sum"], NpyRows)
        assert isinstance(loaded._arrays["centres"], NpyRows)
        np.testing.assert_allclose(loaded["b"].pos_sum, profiles["b"].pos_sum, rtol=1e-6)
        loaded["c"] = profiles["a"]
        assert list(loaded) == ["a", "b", "c"]
        np.testing.assert_allclose(loaded.vectors(["b", "c"])[1], profiles["a"].vector)
        loaded.save(tmp_path, builder.config)
        again, _ = load_profiles(tmp_path)
        assert list(again) == ["a", "b", "c"]
        assert_same_profile(again["b"], profiles["b"])


def test_merged_store_patches_arrays_like_a_store_built_from_every_profile():
    """``merged`` copies the arrays and patches the changed and added profiles: the same
    arrays as building the store again from every profile object."""
    from profiler.profiles import ProfileStore, UserProfile, _arrays_of

    rng = np.random.default_rng(0)
    dim = 6

    def profile(user: str, n_centres: int) -> UserProfile:
        return UserProfile(
            user,
            int(rng.integers(1, 9)),
            float(rng.random()),
            rng.standard_normal(dim),
            float(rng.random()),
            rng.standard_normal(dim),
            float(rng.random()),
            rng.standard_normal((n_centres, dim)).astype(np.float32),
            rng.random(n_centres),
        )

    users = [f"u{i}" for i in range(12)]
    stored = ProfileStore(
        users, **_arrays_of([profile(u, i % 4) for i, u in enumerate(users)], dim)
    )
    stored["u3"] = profile("u3", 3)  # more centres than before
    stored["u7"] = profile("u7", 0)  # fewer
    stored["new-a"] = profile("new-a", 2)
    stored["new-b"] = profile("new-b", 0)
    merged = stored.merged()
    expected = ProfileStore(list(stored), **_arrays_of([stored[u] for u in stored], dim))
    assert merged._users == expected._users
    for name, values in expected._arrays.items():
        assert np.allclose(merged._arrays[name], values), name
    assert np.allclose(merged["u3"].centres, stored["u3"].centres)
    assert np.allclose(merged["u4"].pos_sum, stored["u4"].pos_sum)
