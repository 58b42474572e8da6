"""Exploration: posteriors, slates with propensities, feedback, off-policy estimators and the
replay simulator."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from profiler import cli
from profiler.explore import (
    CONTEXT_DIM,
    Arms,
    ExploreConfig,
    ExploreState,
    Replay,
    SimulationResult,
    choose_config,
    doubly_robust,
    ips,
    make_slate,
    prior,
    simulate,
    snips,
)
from profiler.workspace import Workspace
from tests.conftest import copy_workspace

# -- posteriors -------------------------------------------------------------------------


def test_prior_is_the_population_for_a_new_shopper_and_sharp_for_a_known_one():
    config = ExploreConfig(prior_strength=4.0)
    population = np.array([0.5, 0.3, 0.2])
    alpha, beta = prior(config, np.zeros(3), population)
    np.testing.assert_allclose(alpha / (alpha + beta), (1 + 4 * population) / 6)
    alpha, beta = prior(config, np.array([20.0, 0.0, 0.0]), population)
    mean = alpha / (alpha + beta)
    assert mean[0] > 0.8 and mean[1] < 0.1  # her 20 positives on arm 0 dominate
    assert (alpha + beta)[0] == pytest.approx(2 + 24)  # sharper: 24 pseudo-observations


def test_state_updates_and_round_trips(tmp_path):
    state = ExploreState(3, CONTEXT_DIM)
    x = np.ones(CONTEXT_DIM)
    state.update("u", 1, 1.0, x)
    state.update("u", 1, 0.0, x)
    state.update("u", 2, 0.25, None)
    state.seen.add("u\x1fe1")
    s, f = state.counts("u")
    assert s.tolist() == [0, 1, 0.25] and f.tolist() == [0, 1, 0.75]
    assert state.A[1][0, 0] == 3.0 and state.b[1][0] == 1.0
    state.save(tmp_path)
    again = ExploreState.load(tmp_path, 3, CONTEXT_DIM)
    assert again.counts("u")[0].tolist() == [0, 1, 0.25] and again.seen == {"u\x1fe1"}
    np.testing.assert_array_equal(again.A, state.A)
    assert ExploreState.load(tmp_path, 4, CONTEXT_DIM).successes == {}  # arms changed
    assert again.forget("u") and again.seen == set() and again.counts("u")[0].sum() == 0


def test_config_parsing_and_validation(tmp_path):
    assert ExploreConfig.parse("policy=ucb,strength=0.2") == ExploreConfig("ucb", 0.2)
    assert ExploreConfig.parse('{"policy": "epsilon", "epsilon": 0.3}').epsilon == 0.3
    (tmp_path / "c.json").write_text(json.dumps({"policy": "linucb"}))
    assert ExploreConfig.parse(tmp_path / "c.json").policy == "linucb"
    with pytest.raises(ValueError, match="unknown policy"):
        ExploreConfig.parse("policy=greedy")
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        ExploreConfig(strength=2.0)
    with pytest.raises(ValueError, match="unknown explore settings"):
        ExploreConfig.parse({"policy": "ucb", "temperature": 1})
    # settings a spec does not name come from the base (a workspace's chosen ones)
    base = ExploreConfig(strength=0.05, prior_strength=20.0)
    assert ExploreConfig.parse("policy=ucb", base) == ExploreConfig("ucb", 0.05, 20.0)
    assert ExploreConfig.parse(None, base) is base


# -- slates -----------------------------------------------------------------------------


def _arms() -> Arms:
    # 12 items in 3 arms; trend makes item 0, 4, 8 the most trending of their arm
    of_item = np.repeat([0, 1, 2], 4)
    trend = -np.arange(12, dtype=float)
    return Arms.from_catalogue(["A", "B", "C"], of_item, trend)


@pytest.mark.parametrize("policy", ["thompson", "ucb", "epsilon", "linucb"])
def test_propensities_sum_to_one_per_slot_and_label_sources(policy):
    arms = _arms()
    state = ExploreState(3, CONTEXT_DIM)
    config = ExploreConfig(policy=policy, strength=0.8, epsilon=0.5)
    slate = make_slate(
        np.array([0, 1, 2, 3]),
        6,
        arms,
        config,
        np.ones(3) * 2,
        np.ones(3) * 5,
        evidence=0.0,
        rng=np.random.default_rng(3),
        exclude={1},
        context=np.ones(CONTEXT_DIM),
        state=state,
    )
    assert len(slate.positions) == 6 and len(set(slate.positions.tolist())) == 6
    assert 1 not in slate.positions  # her history is never shown
    for dist, item, p in zip(slate.slot_distributions, slate.positions, slate.propensities):
        assert sum(dist.values()) == pytest.approx(1.0)
        assert dist[int(item)] == pytest.approx(p) and 0 < p <= 1
    assert all(s == "exploit" or s.startswith("explore:") for s in slate.sources)


def test_strength_zero_is_the_exploit_order():
    arms = _arms()
    for policy in ("thompson", "exploit"):
        config = ExploreConfig(policy=policy, strength=0.0)
        slate = make_slate(
            np.array([5, 0, 9, 2]),
            3,
            arms,
            config,
            np.ones(3),
            np.ones(3),
            evidence=0.0,
            rng=np.random.default_rng(0),
        )
        assert slate.positions.tolist() == [5, 0, 9] and set(slate.sources) == {"exploit"}
        assert slate.propensities.tolist() == [1.0, 1.0, 1.0]


def test_a_used_up_ranking_continues_with_the_best_arm_and_keeps_the_explore_share():
    arms = _arms()  # arms A: 0-3, B: 4-7, C: 8-11, most trending first
    alpha, beta = np.array([1.0, 9.0, 1.0]), np.array([9.0, 1.0, 9.0])  # B is best

    def slate(config, seed=0, **options):  # her ranking holds one item, item 2 of arm A
        rng = np.random.default_rng(seed)
        return make_slate(
            np.array([2]), 4, arms, config, alpha, beta, evidence=0.0, rng=rng, **options
        )

    exploit = slate(ExploreConfig(policy="exploit"))
    assert exploit.positions.tolist() == [2, 4, 5, 6] and set(exploit.sources) == {"exploit"}
    config = ExploreConfig(strength=0.5, prior_strength=4.0)
    after = []  # the sources of the slots after her ranking is used up
    for seed in range(20):
        shown = slate(config, seed)
        rows = zip(shown.slot_distributions, shown.positions, shown.sources)
        for slot, (dist, item, source) in enumerate(rows):
            assert sum(dist.values()) == pytest.approx(1.0)
            if source == "exploit":  # half of every slot at least: exploitation's pick
                assert dist[int(item)] >= 0.5
                ranked_left = 2 not in shown.positions[:slot]
                assert item == 2 if ranked_left else arms.of_item[item] == 1  # then arm B
            if 2 in shown.positions[:slot]:
                after.append(source)
    # exploration keeps its share (half) there instead of taking every slot
    assert 0.3 < after.count("exploit") / len(after) < 0.7
    # a replay's slates (no propensities): the same policy, one Thompson draw per slot
    fast = slate(config, propensities=False)
    assert len(set(fast.positions.tolist())) == 4 and np.isnan(fast.propensities).all()
    assert fast.slot_distributions == [] and fast.positions[0] in (2, 4)
    plain = slate(ExploreConfig(policy="exploit"), propensities=False)
    assert plain.positions.tolist() == exploit.positions.tolist()


def test_thompson_prefers_the_arm_with_the_better_posterior():
    arms = _arms()
    config = ExploreConfig(policy="thompson", strength=1.0)
    alpha, beta = np.array([1.0, 50.0, 1.0]), np.array([50.0, 1.0, 50.0])
    slate = make_slate(
        np.empty(0, np.int64),
        1,
        arms,
        config,
        alpha,
        beta,
        evidence=0.0,
        rng=np.random.default_rng(0),
    )
    assert slate.sources == ["explore:B"] and slate.positions.tolist() == [4]
    assert slate.propensities[0] > 0.99
    # equal posteriors: each arm about a third of the time
    even = make_slate(
        np.empty(0, np.int64),
        1,
        arms,
        config,
        np.ones(3),
        np.ones(3),
        evidence=0.0,
        rng=np.random.default_rng(0),
    )
    assert all(abs(p - 1 / 3) < 0.07 for p in even.slot_distributions[0].values())


def test_a_known_shopper_explores_less():
    config = ExploreConfig(strength=0.4, prior_strength=4.0)
    from profiler.explore import explore_share

    assert explore_share(config, 0) == pytest.approx(0.4)
    assert explore_share(config, 36) == pytest.approx(0.04)
    assert explore_share(ExploreConfig(policy="exploit"), 0) == 0.0


# -- off-policy estimators --------------------------------------------------------------


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _bandit(seed: int, n: int = 5000):
    """A logged contextual bandit with a known value: 4 actions, reward probabilities
    sigmoid(x.w_a + c_a), an epsilon-softmax logging policy and a sharper target."""
    rng = np.random.default_rng(seed)
    world = np.random.default_rng(12345)  # the same world for every seed
    w, c = world.normal(size=(4, 3)), world.normal(size=4) * 0.5
    v, u = world.normal(size=(3, 4)), world.normal(size=(3, 4))

    def probs(x):
        return 1 / (1 + np.exp(-(x @ w.T + c)))

    def logging(x):
        return 0.5 * _softmax(x @ v) + 0.5 / 4

    def target(x):
        return _softmax(2 * x @ u)

    x = rng.normal(size=(n, 3))
    mu, pi = logging(x), target(x)
    actions = np.array([rng.choice(4, p=row) for row in mu])
    rewards = (rng.random(n) < probs(x)[np.arange(n), actions]).astype(float)
    big = world.normal(size=(200_000, 3))
    truth = float((target(big) * probs(big)).sum(axis=1).mean())
    q = np.tile(rewards.mean(), (n, 4))  # a poor reward model: DR must still be unbiased
    rows = np.arange(n)
    return dict(
        rewards=rewards,
        logging_p=mu[rows, actions],
        target_p=pi[rows, actions],
        q_logged=q[rows, actions],
        q_target=(pi * q).sum(axis=1),
        truth=truth,
    )


def test_estimators_are_exact_on_known_cases():
    r = np.array([1.0, 0.0, 1.0, 1.0])
    mu = np.array([0.5, 0.5, 0.25, 1.0])
    assert ips(r, mu, mu).value == pytest.approx(r.mean())  # target = logging
    assert ips(r, mu, np.zeros(4)).value == 0.0
    pi = np.array([1.0, 0.0, 0.5, 0.0])
    assert ips(r, mu, pi).value == pytest.approx((2 + 0 + 2 + 0) / 4)
    assert snips(r, mu, pi).value == pytest.approx(4 / (2 + 0 + 2 + 0))
    q = np.full(4, 0.5)
    assert doubly_robust(r, mu, pi, q, q).value == pytest.approx(np.mean(0.5 + pi / mu * (r - 0.5)))
    with pytest.raises(ValueError, match="logging propensities"):
        ips(r, np.zeros(4), pi)


def test_estimators_cover_the_true_value_on_a_synthetic_bandit():
    covered = {"ips": 0, "snips": 0, "dr": 0}
    for seed in range(100):
        d = _bandit(seed)
        args = (d["rewards"], d["logging_p"], d["target_p"])
        estimates = {
            "ips": ips(*args, n_boot=400, seed=seed),
            "snips": snips(*args, n_boot=400, seed=seed),
            "dr": doubly_robust(*args, d["q_logged"], d["q_target"], n_boot=400, seed=seed),
        }
        for name, estimate in estimates.items():
            covered[name] += estimate.covers(d["truth"])
    print(f"true value inside the 95% interval, of 100 seeds: {covered}")  # pytest -s
    assert all(n >= 93 for n in covered.values()), covered


# -- the workspace: recommend(explore=...), feedback, persistence, forget -----------------


@pytest.fixture
def built(tmp_path, tiny_workspace_template, embedder):
    """The tiny slice built from its frames (a copy of the session's build)."""
    return copy_workspace(tiny_workspace_template, tmp_path, embedder)


def test_explore_zero_is_plain_recommend_and_slates_carry_propensities(built):
    user = built.users[0]
    plain = built.recommend(user, k=8)
    assert built.recommend(user, k=8, explore=0).ids == plain.ids
    assert built.recommend(user, k=8, explore="policy=exploit").ids == plain.ids
    assert built.recommend(user, k=8, explore="0").ids == plain.ids  # a strength as text
    as_text = built.recommend(user, k=8, explore="1", seed=4)
    assert as_text.ids == built.recommend(user, k=8, explore=1.0, seed=4).ids
    mixed = built.recommend(user, k=8, explore="policy=thompson,strength=1", seed=4)
    assert len(mixed.ids) == 8 and len(set(mixed.ids)) == 8
    sources = [r["source"] for r in mixed.reasons]
    assert any(s.startswith("explore:") for s in sources)
    assert all(0 < r["propensity"] <= 1 for r in mixed.reasons)
    assert not set(mixed.ids) & set(built.user_events(user)["item_id"])
    again = built.recommend(user, k=8, explore="policy=thompson,strength=1", seed=4)
    assert again.ids == mixed.ids  # seeded


def test_feedback_is_idempotent_persists_and_is_forgotten(built, embedder):
    user = built.users[0]
    item = built.recommend(user, k=1).ids[0]
    n_events = len(built.events)
    arm = int(built.explore_arms().of_item[built.recommender.catalogue_.position[item]])
    assert built.feedback(user, item, reward=1.0, event_id="e-1") is True
    assert built.feedback(user, item, reward=1.0, event_id="e-1") is False  # replayed
    assert len(built.events) == n_events + 1
    assert built.explore_state().counts(user)[0][arm] == 1.0
    assert item not in built.recommend(user, k=10).ids  # seen now
    with pytest.raises(KeyError, match="unknown item 'nope'"):
        built.feedback(user, "nope", reward=1.0)
    with pytest.raises(KeyError, match="ghost"):
        built.feedback("ghost", item, reward=1.0)
    with pytest.raises(ValueError, match=r"reward must be in \[0, 1\]"):
        built.feedback(user, item, reward=3.0)
    reopened = Workspace.open(built.path, embedder=embedder)
    assert reopened.explore_state().counts(user)[0][arm] == 1.0
    assert reopened.feedback(user, item, reward=1.0, event_id="e-1") is False
    report = reopened.forget(user)
    assert report.explore_state
    assert Workspace.open(built.path, embedder=embedder).explore_state().successes == {}


def test_simulate_and_compare_cli(built, capsys):
    path = str(built.path)
    built.close()
    argv = ["simulate", "--workspace", path, "--policy", "thompson", "--rounds", "3", "--json"]
    assert cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {
        "policy",
        "rounds",
        "users",
        "cumulative_reward",
        "coverage",
        "mean_rounds_to_first_hit",
        "novelty",
    }
    assert result["users"] > 0 and 0 < result["coverage"] <= 1
    argv = ["compare", "--workspace", path, "--a", "policy=exploit", "--b", "policy=epsilon"]
    assert cli.main([*argv, "--rounds", "3", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["metric"] for r in rows] == ["hit_rate", "rounds_to_first_hit", "novelty", "coverage"]
    assert all(r["verdict"] for r in rows)
    hit = rows[0]
    assert hit["low"] <= hit["diff"] <= hit["high"]
    user = Workspace.open(path).users[0]
    item = Workspace.open(path).items["item_id"].iloc[0]
    args = ["feedback", "--workspace", path, "--user", user, "--item", item, "--reward", "1"]
    assert cli.main([*args, "--event-id", "x"]) == 0
    assert cli.main([*args, "--event-id", "x"]) == 0
    assert "already counted" in capsys.readouterr().out
    assert cli.main([*args[:-2], "--reward", "7"]) == 2


def test_simulation_holds_out_each_shoppers_last_event(built):
    events = built.events.copy()
    before = (len(built.events), built.generation)
    result = simulate(built, ExploreConfig(policy="exploit"), rounds=2, k=5, seed=0)
    assert (len(built.events), built.generation) == before  # nothing changed
    assert set(result.per_user.columns) >= {"user", "hit", "first_hit_round", "novelty"}
    assert result.users == len(result.per_user) <= events["user_id"].nunique()
    assert len(result.curve) == 2 and result.curve[0] <= result.curve[1]
    assert pd.Series(result.curve).between(0, 1).all()


def test_build_chooses_explore_settings_by_validation_replay(built, monkeypatch):
    report = built.manifest["explore"]
    assert report["why"].startswith(("highest mean cumulative reward", "no setting reached"))
    assert built.explore_config() == ExploreConfig.from_dict(report["chosen"])
    reopened = Workspace.open(built.path, embedder=built.embedder)
    assert reopened.explore_config() == built.explore_config()  # persisted
    config, report = choose_config(built, users=50, rounds=3, k=5, streams=(2, 3))
    rows = report["candidates"]
    assert len(rows) == 12 and report["exploit"]["policy"] == "exploit"
    for row in rows:  # each setting scored by its mean over the streams
        assert len(row["rewards"]) == 2 and row["cumulative_reward"] == np.mean(row["rewards"])
    paying = [r for r in rows if r["cumulative_reward"] >= r["exploit_reward"]]
    for k, exploit in report["exploits"].items():  # one exploitation run per prior strength
        same_prior = [r for r in rows if r["config"]["prior_strength"] == float(k)]
        assert {r["exploit_reward"] for r in same_prior} == {exploit["cumulative_reward"]}
    if paying:
        best = max(r["cumulative_reward"] for r in paying)
        chosen = [r["config"] for r in paying if r["cumulative_reward"] == best]
        assert config.to_dict() in chosen
    else:  # exploration did not pay on validation: the smallest explore share
        assert config.strength == 0.02
    assert config.policy == "thompson" and report["validation"]["users"] <= 50
    # shoppers kept out of the validation (an out-of-sample check's test half)
    held = sorted(Replay(built, k=5, max_users=None).held_users)
    kept_out = set(held[:5])
    _, report = choose_config(built, users=None, rounds=2, k=5, streams=(2,), skip_users=kept_out)
    assert report["validation"]["users"] == len(held) - 5
    # the rule itself, on known numbers: a setting that loses to exploitation is not chosen
    scores = {0.02: 10.0, 0.05: 12.0, 0.1: 11.0, 0.3: 9.0}

    def run(self, config, *, rounds=10, stream=1):
        reward = 11.5 if config.policy == "exploit" else scores[config.strength]
        return SimulationResult(config.policy, rounds, 60, reward, 0.5, 2.0, 1.0, None, [])

    monkeypatch.setattr(Replay, "run", run)
    assert choose_config(built, users=50)[0].strength == 0.05  # 12 beats exploitation's 11.5
    scores[0.05] = 11.0
    config, report = choose_config(built, users=50)  # nothing reaches 11.5: the gentlest
    assert (config.strength, config.prior_strength) == (0.02, 4.0)
    assert report["why"].startswith("no setting reached")
    monkeypatch.undo()
    # too few shoppers to replay: the defaults, and the report says why
    monkeypatch.setattr("profiler.explore.MIN_VALIDATION_USERS", 10_000)
    config, report = choose_config(built, users=50, rounds=3, k=5)
    assert config == ExploreConfig() and report["why"].startswith("defaults: ")


def test_replay_holds_out_shoppers_with_history_when_enough_have_one(built, monkeypatch, caplog):
    everyone = Replay(built, k=5, seed=0, max_users=None)
    assert everyone.min_history == 0  # one-off visitors only: replayed as cold start
    items = built.items["item_id"]
    for n, user in enumerate(built.users[:3]):
        assert built.feedback(user, items.iloc[-1 - n], reward=1.0)
    counts = built.events.groupby("user_id").size()
    with_history = set(counts[counts > 1].index)
    assert len(with_history) == 3
    monkeypatch.setattr("profiler.explore.MIN_HISTORY_SHOPPERS", 3)
    with caplog.at_level("INFO", logger="profiler.explore"):
        replay = Replay(built, k=5, seed=0, max_users=None)
    assert replay.min_history == 1 and replay.held_users == with_history
    said = "3 shoppers with 1 or more events before the held-out one; [1-9][0-9]* with fewer"
    assert re.search(said, caplog.text)
    assert all(len(s["seen"]) >= 1 for s in replay.shoppers)
    assert Replay(built, k=5, seed=0, max_users=None, min_history=0).min_history == 0
    with pytest.raises(ValueError, match="no shopper with 2 or more events"):
        Replay(built, k=5, seed=0, max_users=None, min_history=2)
    with pytest.raises(ValueError, match="must not be negative"):
        Replay(built, k=5, min_history=-1)


def test_replay_gives_every_config_the_same_shoppers_and_draws(built):
    replay = Replay(built, k=5, seed=3, max_users=20)
    config = ExploreConfig(strength=1.0)
    first, again = replay.run(config, rounds=2), replay.run(config, rounds=2)
    assert first.summary() == again.summary()  # runs do not leak state into each other
    others = Replay(built, k=5, seed=3, skip_users=replay.held_users)
    assert not others.held_users & replay.held_users
