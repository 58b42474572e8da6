"""Zero-shot tagging with the real bundled model, and its contract with a fake encoder."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from profiler.tags.zeroshot import ZeroShotTagger
from tests.conftest import HashingEncoder

NAMES = ["dresses", "jeans", "swimwear"]

LABELLED = [
    ("a floral summer dress with a flowing skirt", 0),
    ("this maxi dress is perfect for a wedding", 0),
    ("little black dress for evening parties", 0),
    ("a cotton sundress with thin straps", 0),
    ("high waisted denim jeans with a slim fit", 1),
    ("these bootcut jeans stretch nicely", 1),
    ("distressed blue denim with a relaxed leg", 1),
    ("classic five pocket jeans in a dark wash", 1),
    ("a one-piece swimsuit for the pool", 2),
    ("bikini top with padded cups", 2),
    ("board shorts for surfing at the beach", 2),
    ("swim trunks that dry quickly", 2),
]


@pytest.fixture(scope="module")
def labelled() -> tuple[list[str], np.ndarray]:
    texts = [text for text, _ in LABELLED]
    targets = np.eye(len(NAMES))[[tag for _, tag in LABELLED]]
    return texts, targets


@pytest.fixture(scope="module")
def labelled_vectors(embedder, labelled) -> np.ndarray:
    """The labelled texts embedded once for the module (the model is the slow part)."""
    return embedder.encode(labelled[0])


@pytest.fixture(scope="module")
def calibrated(embedder, labelled, labelled_vectors) -> ZeroShotTagger:
    return ZeroShotTagger(embedder, NAMES).fit(labelled_vectors, labelled[1])


class TestWithTheBundledModel:
    def test_obvious_texts_score_highest_on_their_tag(self, embedder):
        tagger = ZeroShotTagger(embedder, NAMES)
        scores = tagger.scores(
            ["this bikini fits perfectly at the beach", "these skinny denim pants"]
        )
        assert scores.shape == (2, 3)
        assert scores.dtype == np.float32
        assert [NAMES[j] for j in scores.argmax(axis=1)] == ["swimwear", "jeans"]

    def test_texts_and_vectors_give_the_same_scores(self, calibrated, labelled, labelled_vectors):
        np.testing.assert_allclose(
            calibrated.scores(texts=labelled[0]),
            calibrated.scores(vectors=labelled_vectors),
            atol=1e-6,
        )

    def test_calibrated_probabilities_keep_the_score_order(self, calibrated, embedder):
        assert calibrated.scaler_.a_ > 0
        queries = ["a red party dress", "denim for everyday wear", "goggles and a swim cap"]
        vectors = embedder.encode(queries)
        probs, scores = (
            calibrated.predict_proba(vectors=vectors),
            calibrated.scores(vectors=vectors),
        )
        assert probs.shape == (3, 3)
        assert ((probs >= 0) & (probs <= 1)).all()
        np.testing.assert_array_equal(np.argsort(probs, axis=1), np.argsort(scores, axis=1))
        assert probs.argmax(axis=1).tolist() == [0, 1, 2]

    def test_fit_accepts_raw_texts(self, calibrated, embedder, labelled):
        from_texts = ZeroShotTagger(embedder, NAMES).fit(*labelled)
        assert from_texts.scaler_.a_ == pytest.approx(calibrated.scaler_.a_, rel=1e-3)
        assert from_texts.scaler_.b_ == pytest.approx(calibrated.scaler_.b_, rel=1e-3)

    def test_predict_proba_before_fit_says_what_to_do(self, embedder):
        with pytest.raises(NotFittedError, match=r"call fit.*scores\(\)"):
            ZeroShotTagger(embedder, NAMES).predict_proba(["a dress"])


class CountingEncoder(HashingEncoder):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []

    def encode(self, texts):
        self.batches.append(list(texts))
        return super().encode(texts)


class TestContract:
    def test_tag_texts_follow_template_and_descriptions(self, fake_encoder):
        tagger = ZeroShotTagger(fake_encoder, ["jeans", "swim"], descriptions=[None, "swimsuits"])
        tagger.scores(["x"])
        assert tagger.tag_texts_ == ["jeans", "swim: swimsuits"]
        custom = ZeroShotTagger(
            fake_encoder,
            ["jeans", "swim"],
            descriptions=["denim", ""],
            template="shoppers who like {name} ({description})",
        )
        custom.scores(["x"])
        assert custom.tag_texts_ == ["shoppers who like jeans (denim)", "shoppers who like swim ()"]

    def test_tag_vectors_are_embedded_once(self):
        encoder = CountingEncoder()
        tagger = ZeroShotTagger(encoder, ["a", "b"])
        tagger.scores(["one"])
        tagger.scores(["two"])
        assert encoder.batches == [["a", "b"], ["one"], ["two"]]
        assert tagger.tag_vectors_.shape == (2, encoder.dim)

    def test_empty_batch(self, fake_encoder):
        tagger = ZeroShotTagger(fake_encoder, NAMES)
        assert tagger.scores([]).shape == (0, 3)
        tagger.fit(["jeans", "swimwear"], np.array([[0, 1, 0], [0, 0, 1]]))
        assert tagger.predict_proba([]).shape == (0, 3)

    def test_bad_input(self, fake_encoder):
        tagger = ZeroShotTagger(fake_encoder, NAMES)
        with pytest.raises(ValueError, match="exactly one"):
            tagger.scores()
        with pytest.raises(ValueError, match="exactly one"):
            tagger.scores(texts=["a"], vectors=np.ones((1, 32)))
        with pytest.raises(ValueError, match="single str"):
            tagger.scores("a dress")
        with pytest.raises(ValueError, match=r"\[n, 32\].*\(2, 5\)"):
            tagger.scores(vectors=np.ones((2, 5)))
        with pytest.raises(ValueError, match=r"rows \[1\] are zero"):
            tagger.scores(vectors=np.vstack([np.ones(32), np.zeros(32)]))
        with pytest.raises(ValueError, match=r"targets must have shape \(1, 3\)"):
            tagger.fit(["a dress"], np.ones((1, 2)))
        with pytest.raises(ValueError, match="duplicate tags: \\['a'\\]"):
            ZeroShotTagger(fake_encoder, ["a", "b", "a"]).scores(["x"])
        with pytest.raises(ValueError, match="descriptions has 1 entries but names has 2"):
            ZeroShotTagger(fake_encoder, ["a", "b"], descriptions=["d"]).scores(["x"])
