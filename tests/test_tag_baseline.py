"""TF-IDF + logistic regression learns a toy taxonomy and survives constant tag columns."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from profiler.tags.baseline import TfidfLogisticTagger

# Tags: 0 outdoor, 1 formal, 2 sporty. Each group shares its keywords; held-out texts reuse them.
TRAIN = [
    ("waterproof hiking jacket for mountain trails", 0),
    ("hiking boots with grip for rocky trails", 0),
    ("a warm fleece for camping in the mountains", 0),
    ("rain jacket that packs small for hiking", 0),
    ("camping trip gear: waterproof trousers", 0),
    ("trail boots broke in after one hike", 0),
    ("insulated jacket for cold mountain camping", 0),
    ("windproof shell for trail running in the hills", 0),
    ("backpacking trousers that dry fast on trails", 0),
    ("hiking socks that prevent blisters", 0),
    ("a silk tie for the wedding reception", 1),
    ("tailored suit for office meetings", 1),
    ("black tie evening gown for the gala", 1),
    ("dress shirt with french cuffs for a wedding", 1),
    ("wool suit trousers, sharp for interviews", 1),
    ("cufflinks and a tie for a formal dinner", 1),
    ("an evening gown with a long train", 1),
    ("blazer for the office, tailored and sharp", 1),
    ("formal shoes polished for the wedding", 1),
    ("a tuxedo for the gala night", 1),
    ("running shorts for the gym and track", 2),
    ("sports bra with support for running", 2),
    ("gym leggings that stay put during squats", 2),
    ("track jacket for training sessions", 2),
    ("running shoes with cushioning for marathons", 2),
    ("sweat wicking gym tee for workouts", 2),
    ("training shorts for football practice", 2),
    ("compression tights for running recovery", 2),
    ("gym bag and a workout towel", 2),
    ("breathable tank top for training at the gym", 2),
]

HELD_OUT = [
    ("a waterproof jacket for hiking mountain trails", 0),
    ("tailored suit and tie for a wedding", 1),
    ("running leggings for the gym", 2),
    ("boots for camping trips", 0),
    ("an evening gown for a formal gala", 1),
    ("shorts for training and running", 2),
]


@pytest.fixture(scope="module")
def toy() -> tuple[list[str], np.ndarray]:
    texts = [text for text, _ in TRAIN]
    return texts, np.eye(3)[[tag for _, tag in TRAIN]]


def test_learns_the_top_tag_of_held_out_texts(toy):
    texts, targets = toy
    tagger = TfidfLogisticTagger().fit(texts, targets)
    probs = tagger.predict_proba([text for text, _ in HELD_OUT])
    assert probs.shape == (len(HELD_OUT), 3)
    assert ((probs >= 0) & (probs <= 1)).all()
    assert probs.argmax(axis=1).tolist() == [tag for _, tag in HELD_OUT]


def test_constant_tag_columns_get_constant_probabilities(toy):
    texts, targets = toy
    never = np.zeros((len(texts), 1))
    always = np.ones((len(texts), 1))
    tagger = TfidfLogisticTagger().fit(texts, np.hstack([targets, never, always]))
    probs = tagger.predict_proba(["waterproof hiking jacket", "something unseen entirely"])
    assert tagger.trained_.tolist() == [True, True, True, False, False]
    np.testing.assert_array_equal(probs[:, 3], 0.0)
    np.testing.assert_array_equal(probs[:, 4], 1.0)
    assert probs[0, :3].argmax() == 0


def test_only_constant_columns_do_not_crash():
    tagger = TfidfLogisticTagger().fit(["red shoes", "blue hat"], np.zeros((2, 2)))
    np.testing.assert_array_equal(tagger.predict_proba(["red shoes"]), [[0.0, 0.0]])


def test_is_deterministic(toy):
    texts, targets = toy
    first = TfidfLogisticTagger(seed=1).fit(texts, targets).predict_proba(texts[:5])
    second = TfidfLogisticTagger(seed=1).fit(texts, targets).predict_proba(texts[:5])
    np.testing.assert_array_equal(first, second)


def test_bad_input(toy):
    texts, targets = toy
    with pytest.raises(NotFittedError, match="call fit"):
        TfidfLogisticTagger().predict_proba(["x"])
    with pytest.raises(ValueError, match=r"\[30, T\].*\(29, 3\)"):
        TfidfLogisticTagger().fit(texts, targets[:29])
    with pytest.raises(ValueError, match=r"0/1, got 0\.5 at row 0, column 0"):
        TfidfLogisticTagger().fit(texts, np.full((30, 3), 0.5))
    with pytest.raises(ValueError, match="single str"):
        TfidfLogisticTagger().fit("one text", targets[:1])
    with pytest.raises(ValueError, match=r"texts\[1\] is int"):
        TfidfLogisticTagger().fit(["a", 3], targets[:2])
