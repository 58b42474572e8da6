"""Tags beyond category: brand, price band and style, each typed in the output.

A shopper's category tags come from the tagger (:mod:`profiler.tags.training`); the
others come from what she interacted with:

* ``brand``: the catalogue brand of her items, weighted like her profile (a bad review
  lowers its brand);
* ``price``: ``budget``, ``mid-range`` or ``premium``, her items' price terciles within
  their top-level category (a category with fewer than :data:`MIN_PRICED` priced items
  uses the whole catalogue's terciles), so a 40-dollar dress and a 4-dollar sock can both
  be premium;
* ``style``: attribute and style tags of a taxonomy file (``{"tags": [{"name", "description",
  "keywords"}]}``; :data:`BUNDLED_STYLES` is the example for the clothing data), scored
  zero-shot by embedding similarity between each item's text and the tag's text. Nobody
  labels styles, so the calibration is weakly supervised from the catalogue itself: an item
  whose text names one of the tag's keywords is a positive, a Platt scaler maps cosine to
  probability on those weak labels, and the threshold that maximises F1 on them decides
  whether an item carries the tag. The evidence is the shopper's events whose items carry
  it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from profiler import metrics
from profiler.storage import read_json, save_npy, write_json

__all__ = ["BUNDLED_STYLES", "PRICE_BANDS", "StyleTagger", "item_price_bands", "load_styles"]

logger = logging.getLogger(__name__)

#: Price band names, cheapest first.
PRICE_BANDS = ("budget", "mid-range", "premium")
#: Priced items a category needs for its own terciles.
MIN_PRICED = 20
#: The example style taxonomy of the bundled clothing data.
BUNDLED_STYLES = Path(__file__).resolve().parents[1] / "data" / "clothing" / "styles.json"


def item_price_bands(categories: Sequence[str], prices: Sequence[float]) -> np.ndarray:
    """The price band of every item (``""``: no price), from terciles within its
    top-level category."""
    top = pd.Series([str(c or "").split(">")[0].strip() for c in categories])
    price = pd.to_numeric(pd.Series(list(prices)), errors="coerce").to_numpy(dtype=np.float64)
    bands = np.full(len(price), "", dtype=object)
    priced = np.isfinite(price) & (price > 0)
    if not priced.any():
        return bands
    overall = np.quantile(price[priced], [1 / 3, 2 / 3])
    for name in top.unique():
        rows = np.flatnonzero((top == name).to_numpy() & priced)
        if not len(rows):
            continue
        cuts = np.quantile(price[rows], [1 / 3, 2 / 3]) if len(rows) >= MIN_PRICED else overall
        bands[rows] = np.array(PRICE_BANDS, dtype=object)[np.searchsorted(cuts, price[rows])]
    return bands


def load_styles(path: str | os.PathLike[str]) -> list[dict]:
    """Style tags of a JSON file: ``{"tags": [{"name", "description", "keywords": [...]}]}``."""
    data = read_json(path)
    tags = data.get("tags") if isinstance(data, dict) else None
    if not isinstance(tags, list) or not tags:
        raise ValueError(f"{path}: expected {{'tags': [...]}} with at least one style tag")
    out = []
    for number, tag in enumerate(tags, start=1):
        if not isinstance(tag, dict) or not str(tag.get("name") or "").strip():
            raise ValueError(f"{path}: tag {number} has no name")
        keywords = tag.get("keywords") or []
        if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
            raise ValueError(f"{path}: tag {tag['name']!r}: keywords must be a list of str")
        out.append(
            {
                "name": str(tag["name"]).strip(),
                "description": str(tag.get("description") or ""),
                "keywords": [k.lower() for k in keywords if k.strip()],
            }
        )
    return out


class StyleTagger:
    """Which catalogue items carry each style tag (zero-shot, weakly calibrated).

    Attributes
    ----------
    names_ : list of str
    item_probs_ : ndarray of float32, shape (n_items, n_styles)
        Calibrated probability that each item carries each style.
    thresholds_ : ndarray, shape (n_styles,)
    report_ : list of dict
        Per style: weak positives, the calibrated threshold and its F1 on the weak labels.
    """

    def fit(
        self, styles: list[dict], item_texts: Sequence[str], item_vectors: np.ndarray, embedder
    ) -> StyleTagger:
        from profiler.tags.calibration import PlattScaler, fit_thresholds
        from profiler.tags.zeroshot import ZeroShotTagger

        self.names_ = [s["name"] for s in styles]
        zeroshot = ZeroShotTagger(embedder, self.names_, [s["description"] for s in styles])
        cosine = zeroshot.scores(vectors=item_vectors)  # each item against "name: description"
        lowered = [str(t).lower() for t in item_texts]
        self.item_probs_ = np.zeros_like(cosine)
        self.thresholds_ = np.ones(len(styles))
        self.report_ = []
        for j, style in enumerate(styles):
            pattern = _keyword_pattern(style["keywords"] or [style["name"].lower()])
            weak = np.array([bool(pattern.search(t)) for t in lowered], dtype=np.int8)
            entry = {"tag": style["name"], "weak_positives": int(weak.sum())}
            if 0 < weak.sum() < len(weak):
                scaler = PlattScaler().fit(cosine[:, j], weak)
                probs = scaler.transform(cosine[:, j])
                self.item_probs_[:, j] = probs
                self.thresholds_[j] = fit_thresholds(probs[:, None], weak[:, None])[0]
                decided = (probs >= self.thresholds_[j]).astype(np.int8)
                f1, _ = metrics.multilabel_f1(weak[:, None], decided[:, None])
                entry.update(threshold=float(self.thresholds_[j]), weak_f1=round(f1, 4))
            else:
                entry.update(threshold=None, weak_f1=None)  # nothing to calibrate on
            self.report_.append(entry)
        logger.info("style tags: %s", self.report_)
        return self

    def carried(self) -> np.ndarray:
        """``[n_items, n_styles]`` bool: the items above each style's threshold."""
        return self.item_probs_ >= self.thresholds_

    def save(self, directory: str | os.PathLike[str]) -> None:
        directory = Path(directory)
        save_npy(directory / "styles.item_probs.npy", self.item_probs_.astype(np.float32))
        write_json(
            directory / "styles.json",
            {
                "names": self.names_,
                "thresholds": [float(t) for t in self.thresholds_],
                "report": self.report_,
            },
        )

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> StyleTagger:
        directory = Path(directory)
        meta = read_json(directory / "styles.json")
        out = cls()
        out.names_, out.report_ = list(meta["names"]), list(meta["report"])
        out.thresholds_ = np.asarray(meta["thresholds"], dtype=np.float64)
        out.item_probs_ = np.load(directory / "styles.item_probs.npy", allow_pickle=False)
        if out.item_probs_.shape[1] != len(out.names_):
            raise ValueError(f"{directory}: style arrays do not match styles.json")
        return out


def _keyword_pattern(keywords: Sequence[str]) -> re.Pattern:
    alternatives = "|".join(re.escape(k) for k in keywords)
    return re.compile(rf"\b(?:{alternatives})\b")
