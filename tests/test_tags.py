"""Interest tags: taxonomy, aggregation with evidence, overrides, and the fine-tuned tagger."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from profiler.tags import Tag, TagOverrides, Taxonomy, aggregate_tags, category_tag


class TestTaxonomy:
    def test_from_categories_levels(self):
        cats = ["Tops > Knits", "Tops > Blouses", "Dresses > Dresses", "", "Tops > Knits"]
        assert Taxonomy.from_categories(cats).names == ["Dresses", "Tops"]
        assert Taxonomy.from_categories(cats, level="leaf").names == ["Blouses", "Dresses", "Knits"]
        assert Taxonomy.from_categories(cats, level="leaf", min_count=2).names == ["Knits"]
        assert category_tag("Tops>Knits", "full") == "Tops > Knits"
        assert category_tag("A > B > C", 2) == "A > B"
        with pytest.raises(ValueError, match="level"):
            category_tag("A", "middle")

    def test_encode_and_errors(self):
        tax = Taxonomy([Tag("hiking"), Tag("baby", "toys and clothes for babies")])
        assert tax.encode([["baby"], ["hiking", "baby"], []]).tolist() == [
            [0, 1],
            [1, 1],
            [0, 0],
        ]
        with pytest.raises(KeyError, match="cooking"):
            tax.encode([["cooking"]])
        with pytest.raises(ValueError, match="duplicate"):
            Taxonomy([Tag("a"), Tag("a")])
        with pytest.raises(ValueError, match="at least one"):
            Taxonomy([])

    def test_files_round_trip(self, tmp_path):
        (tmp_path / "tags.json").write_text(
            json.dumps({"tags": [{"name": "running", "description": "shoes, watches"}, "yoga"]})
        )
        tax = Taxonomy.from_file(tmp_path / "tags.json")
        assert tax.names == ["running", "yoga"] and tax.descriptions == ["shoes, watches", ""]
        (tmp_path / "tags.yaml").write_text(
            "- name: running\n  description: shoes, watches\n- yoga\n"
        )
        assert Taxonomy.from_file(tmp_path / "tags.yaml") == tax
        tax.save(tmp_path / "saved.json")
        assert Taxonomy.load(tmp_path / "saved.json") == tax
        (tmp_path / "bad.json").write_text('{"tags": [42]}')
        with pytest.raises(ValueError, match=r"bad\.json"):
            Taxonomy.from_file(tmp_path / "bad.json")


def events_frame(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "kind": ["review"] * n,
            "item_id": [f"i{j}" for j in range(n)],
            "timestamp": np.arange(n, dtype=float),
            "text": [f"review number {j}" for j in range(n)],
        }
    )


class TestAggregate:
    NAMES = ("running", "yoga", "baby")

    def test_weighted_mean_and_evidence(self):
        probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.0, 0.1], [0.0, 0.2, 0.9]])
        weights = np.array([1.0, 1.0, 0.5])
        tags = aggregate_tags(events_frame(3), probs, weights, self.NAMES, top=2)
        # running: (0.9 + 0.8) / 2.5 = 0.68; baby: (0.1 + 0.45) / 2.5 = 0.22; yoga 0.2/2.5=0.08
        assert [t.tag for t in tags] == ["running", "baby"]
        assert tags[0].confidence == pytest.approx(0.68)
        assert tags[1].confidence == pytest.approx(0.22)
        assert [e.event for e in tags[0].evidence] == [0, 1]
        assert tags[0].evidence[0].snippet == "review number 0"

    def test_negative_review_lowers_its_tag(self):
        probs = np.array([[0.9, 0.0, 0.0], [0.9, 0.0, 0.0], [0.0, 0.0, 0.9]])
        liked = aggregate_tags(events_frame(3), probs, np.array([1.0, 1.0, 1.0]), self.NAMES)
        panned = aggregate_tags(events_frame(3), probs, np.array([1.0, -1.0, 1.0]), self.NAMES)
        running = {t.tag: t.confidence for t in liked}["running"]
        assert running == pytest.approx(0.6)
        assert "running" not in {t.tag for t in panned}  # 0.9 - 0.9 = 0: below the floor

    def test_pin_and_remove(self):
        probs = np.array([[0.9, 0.0, 0.3]])
        tags = aggregate_tags(
            events_frame(1), probs, np.ones(1), self.NAMES, pinned=["yoga"], removed=["running"]
        )
        assert [(t.tag, t.pinned) for t in tags] == [("yoga", True), ("baby", False)]
        with pytest.raises(ValueError, match="expected probs"):
            aggregate_tags(events_frame(2), probs, np.ones(1), self.NAMES)

    def test_overrides_persist(self, tmp_path):
        overrides = TagOverrides.load(tmp_path / "overrides.json")
        overrides.pin("u1", "yoga")
        overrides.remove("u1", "running")
        overrides.remove("u1", "yoga")  # removing a pinned tag unpins it
        overrides.save()
        again = TagOverrides.load(tmp_path / "overrides.json")
        assert again.pinned("u1") == [] and again.removed("u1") == ["running", "yoga"]
        assert again.pinned("someone-else") == []


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_frames, embedder):
    """A tiny real workspace with a tagger fine-tuned on its reviews (class = tag)."""
    from profiler.tags.typed import BUNDLED_STYLES
    from profiler.workspace import Workspace

    items, events = tiny_frames
    # the bundled catalogue has no brands or prices: three made-up brands, spread prices
    items = items.assign(
        brand=[("Acme", "Bolt", "Cove")[i % 3] for i in range(len(items))],
        price=[10.0 + 7.0 * (i % 10) for i in range(len(items))],
    )
    ws = Workspace.build(
        tmp_path_factory.mktemp("tags") / "ws", catalog=items, events=events, embedder=embedder
    )
    report = ws.train_tags(
        level="leaf",
        epochs=8,
        batch_size=8,
        max_length=64,
        seed=0,
        learning_rate=3e-4,
        styles=BUNDLED_STYLES,
    )
    return ws, [row for row in report if row["system"] != "styles"]


def test_train_tags_learns_and_reports(trained):
    ws, report = trained
    systems = {(row["system"], row["level"]) for row in report}
    names = {"transformer", "lexical", "stacked", "zero-shot", "tfidf-logreg"}
    # every bundled shopper wrote one review: no shopper-level rows (see shopper_texts)
    assert systems == {(name, "text") for name in names}
    served = [row for row in report if row["default"]]
    assert {row["system"] for row in served} == {"stacked"}
    assert served[0]["transformer_share"] == ws.tag_model.weight
    for row in report:
        for metric in ("micro_f1", "macro_f1", "map", "ece", "top1_accuracy", "top3_accuracy"):
            assert 0.0 <= row[metric] <= 1.0
        assert 0.5 <= row["roc_auc"] <= 1.0 and row["top3_accuracy"] >= row["top1_accuracy"]
    by_system = {row["system"]: row for row in report if row["level"] == "text"}
    # 8 classes: chance top-1 is 0.125; the fine-tuned model has learned them
    assert by_system["transformer"]["top1_accuracy"] > 0.4
    # the kept epoch is the one with the lowest validation loss (epoch 0: the probe head)
    classifier = ws.tag_model.classifier
    losses = [h["eval_loss"] for h in classifier.history_]
    assert losses[int(classifier.epochs_trained_)] == min(losses)
    for name in ("model.safetensors", "head.safetensors", "taxonomy.json", "thresholds.json"):
        assert (ws.tags_dir / name).is_file(), name
    for name in ("tagger.json", "lexical.json", "lexical.coef.npy", "tagging.json"):
        assert (ws.tags_dir / name).is_file(), name
    recorded = json.loads((ws.tags_dir / "tagging.json").read_text())
    assert recorded["system"] == ws.tag_model.system and recorded["max_length"] == 64


def test_long_text_gets_the_tags_of_its_parts(trained):
    """A text beyond the window limit is read whole: windows cover every token, and a
    text made of two parts ranks both parts' tags first."""
    ws, _ = trained
    classifier = ws.tag_model.classifier
    swim = "I love this bikini, the swimsuit fits well at the beach and the pool. "
    jeans = "These denim jeans are comfortable, the waist and the legs fit nicely. "
    pieces, owner = classifier.windows([swim * 12, swim])
    assert owner.tolist().count(0) >= 3 and owner.tolist().count(1) == 1
    assert max(len(p) for p in pieces) <= classifier.max_length
    tokens = classifier.tokenizer_(swim * 12, add_special_tokens=False)["input_ids"]
    covered = sum(len(p) - 2 for p in pieces[: owner.tolist().count(0)])
    assert covered >= len(tokens)  # overlapping windows, nothing dropped
    probs = classifier.predict_proba([swim, swim * 12, jeans, swim * 6 + jeans * 6])
    names = classifier.taxonomy_.names
    assert names[probs[0].argmax()] == names[probs[1].argmax()]
    np.testing.assert_allclose(probs[1], probs[0], atol=0.15)
    both = {names[j] for j in np.argsort(-probs[3])[:2]}
    assert both == {names[probs[0].argmax()], names[probs[2].argmax()]}


def test_stack_weight_follows_the_better_member():
    from profiler.tags.training import choose_stack

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 400)
    targets = np.eye(4)[truth]
    signal = 3.0 * targets
    noise = rng.standard_normal((400, 4))
    weight, scaler, losses = choose_stack(
        {"transformer": noise, "lexical": signal + 0.5 * rng.standard_normal((400, 4))},
        targets,
        single_label=True,
    )
    assert weight <= 0.2 and set(losses) == {f"{w / 10:.1f}" for w in range(11)}
    weight, _, _ = choose_stack(
        {"transformer": signal + 0.5 * noise, "lexical": rng.standard_normal((400, 4))},
        targets,
        single_label=True,
    )
    assert weight >= 0.8
    # two members with independent errors: the mix beats either alone
    weight, _, losses = choose_stack(
        {
            "transformer": signal + 2.0 * rng.standard_normal((400, 4)),
            "lexical": signal + 2.0 * rng.standard_normal((400, 4)),
        },
        targets,
        single_label=True,
    )
    assert 0.2 <= weight <= 0.8 and losses[f"{weight:.1f}"] < min(losses["0.0"], losses["1.0"])
    # the temperature calibrates the stack: overconfident scores (x4) come back honest
    from profiler import metrics
    from profiler.tags.training import _stack

    members = {
        "transformer": 4.0 * (signal + 2.0 * rng.standard_normal((400, 4))),
        "lexical": 4.0 * (signal + 2.0 * rng.standard_normal((400, 4))),
    }
    weight, scaler, _ = choose_stack(members, targets, single_label=True)
    raw = np.exp(_stack(members, weight))
    raw /= raw.sum(axis=1, keepdims=True)
    calibrated = scaler.transform(_stack(members, weight))
    assert scaler.temperature_ > 2.0
    after = metrics.top_label_calibration_error(calibrated, targets)
    assert after < 0.06 and after < metrics.top_label_calibration_error(raw, targets) / 2


def test_lexical_tagger_learns_and_round_trips(tmp_path):
    from profiler.tags.lexical import LexicalTagger

    texts = ["red wool sweater", "blue wool jumper", "denim jeans slim", "black jeans denim"]
    texts += ["sweaters in wool", "jeans of denim"]
    targets = np.eye(2)[[0, 0, 1, 1, 0, 1]]
    tagger = LexicalTagger().fit(texts, targets)
    probs = tagger.predict_proba(["a wool sweater", "denim jeans", "woolen jumpers"])
    assert probs.argmax(axis=1).tolist() == [0, 1, 0]  # character n-grams: "woolen"
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    tagger.save(tmp_path)
    again = LexicalTagger.load(tmp_path)
    np.testing.assert_allclose(again.logits(texts), tagger.logits(texts), atol=1e-5)


def test_shopper_texts_join_each_users_texts():
    from profiler.tags.training import shopper_texts

    targets = np.eye(3)[[0, 1, 0, 2]]
    joined, union = shopper_texts(["a", "b", "c", "d"], targets, ["u1", "u1", "u2", "u1"])
    assert joined == ["a b d"] and union.tolist() == [[1, 1, 1]]


def test_saved_tagger_reloads_identically(trained):
    from profiler.tags.classifier import TagClassifier

    ws, _ = trained
    texts = ["these jeans are so comfortable", "the swimsuit top runs small"]
    before = ws.tag_model.classifier.predict_proba(texts)
    after = TagClassifier.load(ws.tags_dir, device="cpu").predict_proba(texts)
    np.testing.assert_allclose(before, after, atol=1e-5)


def test_user_tags_with_evidence_and_overrides(trained):
    ws, _ = trained
    user = ws.users[0]
    tags = ws.tags(user, top=3)
    assert tags and all(0.0 <= t.confidence <= 1.0 for t in tags)
    # category tags first, then brand, price and style; each type ranked by confidence
    order = {"category": 0, "brand": 1, "price": 2, "style": 3}
    assert [order[t.type] for t in tags] == sorted(order[t.type] for t in tags)
    for kind in order:
        ranked = [t.confidence for t in tags if t.type == kind]
        assert ranked == sorted(ranked, reverse=True)
    own_items = set(ws.user_events(user)["item_id"])
    assert {e.item_id for e in tags[0].evidence} <= own_items
    text_tags = ws.tags(texts=["a bikini for the beach"], top=3)
    assert "Swim" in {t.tag for t in text_tags}  # 8 tags, learned from ~60 reviews

    top = tags[0].tag
    ws.remove_tag(user, top)
    assert top not in {t.tag for t in ws.tags(user)}
    shown = ws.recommend(user, k=10)
    categories = dict(zip(ws.items["item_id"], ws.items["category"]))
    assert not any(categories[i].endswith(top) for i in shown.ids)
    ws.pin_tag(user, "Sleep")
    pinned = ws.tags(user)
    assert pinned[0].tag == "Sleep" and pinned[0].pinned
    with pytest.raises(KeyError, match="Gardening"):
        ws.pin_tag(user, "Gardening")


def test_typed_tags_brand_price_and_style(trained):
    from profiler.tags.typed import PRICE_BANDS, item_price_bands

    ws, _ = trained
    bands = dict(
        zip(ws.items["item_id"], item_price_bands(ws.items["category"], ws.items["price"]))
    )
    brands = dict(zip(ws.items["item_id"], ws.items["brand"]))
    seen_types = set()
    for user in ws.users[:40]:
        tags = ws.tags(user)
        seen_types |= {t.type for t in tags}
        mine = set(ws.user_events(user)["item_id"])
        for tag in tags:
            assert tag.type in {"category", "brand", "price", "style"}
            items = {e.item_id for e in tag.evidence}
            assert items <= mine
            if tag.type == "brand":
                assert all(brands[i] == tag.tag for i in items)
            if tag.type == "price":
                assert tag.tag in PRICE_BANDS and all(bands[i] == tag.tag for i in items)
            if tag.type == "style":
                assert tag.tag in ws.styles.names_
    assert {"category", "brand", "price"} <= seen_types
    report = {s["tag"]: s for s in ws.styles.report_}
    assert report["cozy"]["weak_positives"] > 0  # "soft", "warm" name real items


def test_price_bands_are_terciles_within_category():
    from profiler.tags.typed import item_price_bands

    categories = ["Shoes"] * 30 + ["Socks"] * 30 + ["Hats"]
    prices = list(range(100, 130)) + list(range(1, 31)) + [np.nan]
    bands = item_price_bands(categories, prices)
    assert bands[0] == "budget" and bands[29] == "premium" and bands[30] == "budget"
    assert bands[59] == "premium" and bands[60] == ""  # no price, no band
    assert (bands[:30] == "mid-range").sum() == 10


def test_tags_cli_json(trained, capsys):
    from profiler import cli

    ws, _ = trained
    user = ws.users[1]
    assert cli.main(["tags", "--workspace", str(ws.path), "--user", user, "--json", "-q"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["user_id"] == user and record["tags"]
    assert set(record["tags"][0]) == {"tag", "type", "confidence", "pinned", "evidence"}
    assert {t["type"] for t in record["tags"]} <= {"category", "brand", "price", "style"}
    code = cli.main(
        ["tags", "--workspace", str(ws.path), "--text", "wool sweater", "--text", "jeans", "--json"]
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and [line["user_id"] for line in lines] == [None, None]
    assert cli.main(["tags", "--workspace", str(ws.path), "--text", "x", "--pin", "Swim"]) == 2


@pytest.mark.slow
def test_fine_tuning_on_bundled_data_beats_tfidf(tmp_path, embedder):
    """The real training with train-tags' defaults: bundled reviews -> product class,
    against TF-IDF + LR on the same test shoppers."""
    from profiler.data import clothing_catalog, clothing_events
    from profiler.workspace import Workspace

    ws = Workspace.build(
        tmp_path / "ws", catalog=clothing_catalog(), events=clothing_events(), embedder=embedder
    )
    report = {row["system"]: row for row in ws.train_tags(level="leaf") if row["level"] == "text"}
    served, tfidf = report["stacked"], report["tfidf-logreg"]
    # measured: macro-F1 0.548 vs 0.478, top-1 0.687 vs 0.651, ECE 0.007 vs 0.042
    assert served["macro_f1"] >= tfidf["macro_f1"] + 0.05
    assert served["top1_accuracy"] > tfidf["top1_accuracy"]
    assert served["ece"] <= 0.05 and served["ece"] < tfidf["ece"]
    for member in ("transformer", "lexical"):  # the stack was kept because it beat both
        assert served["macro_f1"] >= report[member]["macro_f1"] - 0.01
    assert served["micro_f1"] > report["zero-shot"]["micro_f1"]
