"""Privacy: keyed pseudonyms for user ids, PII scrubbing of free text, DP aggregates.

A workspace never writes a raw user id. :class:`Pseudonymizer` maps every id with
HMAC-SHA256 under a key created once per workspace (``privacy.key``, mode 0600, outside
the data generations so a rebuild keeps the same pseudonyms); the CLI and the Python
facade accept raw ids and map them. Without the key the pseudonyms cannot be linked back
to people; with it, only someone who already knows a raw id can find its pseudonym.

:class:`Scrubber` replaces e-mail addresses, phone numbers, payment-card numbers (checked
with the Luhn sum, so order numbers and prices stay) and street addresses in review and
search text before it is embedded or stored, and in quarantined records.

:func:`dp_aggregates` releases counts with discrete Laplace noise from OpenDP; the
budget is recorded in the workspace manifest and refused once spent.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "KEY_FILE",
    "SCRUB_KINDS",
    "WITHHELD",
    "BudgetSpentError",
    "ForgetReport",
    "PrivacyPolicy",
    "Pseudonymizer",
    "Scrubber",
    "dp_aggregates",
    "drop_quarantined",
    "interest_table",
    "luhn_ok",
    "without_rows",
]

KEY_FILE = "privacy.key"
_KEY_BYTES = 32
#: Pseudonym length in hex characters: 128 bits, so collisions never happen in practice.
PSEUDONYM_HEX = 32


class Pseudonymizer:
    """Raw user id -> ``HMAC-SHA256(key, id)`` as 32 hex characters.

    Examples
    --------
    >>> p = Pseudonymizer(b"k" * 32)
    >>> p("alice") == p("alice") != p("bob")
    True
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a pseudonym key needs at least 16 bytes")
        self._key = key

    @classmethod
    def for_workspace(cls, root: str | os.PathLike[str], *, create: bool = True) -> Pseudonymizer:
        """The workspace's key, created (0600) on first use; ``FileNotFoundError`` naming
        the file when it is missing and ``create`` is false."""
        path = Path(root) / KEY_FILE
        if not path.is_file():
            if not create:
                raise FileNotFoundError(
                    f"{path}: the workspace's pseudonym key is missing; without it raw ids "
                    "cannot be matched to stored shoppers (restore it from a backup)"
                )
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            key = secrets.token_bytes(_KEY_BYTES)
            # O_EXCL: two first builds never end up with two keys
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return cls(path.read_bytes())
            with os.fdopen(fd, "wb") as fh:
                fh.write(key)
                fh.flush()
                os.fsync(fh.fileno())
            return cls(key)
        key = path.read_bytes()
        if len(key) != _KEY_BYTES:
            raise ValueError(f"{path}: {len(key)} bytes, expected {_KEY_BYTES}; restore the key")
        return cls(key)

    def __call__(self, user_id: str) -> str:
        digest = hmac.new(self._key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()
        return digest[:PSEUDONYM_HEX]


# -- PII scrubbing ------------------------------------------------------------------------

_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# 13-19 digits, optionally grouped by spaces or dashes (how cards are written)
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
# +country, area code in parentheses, groups of 2-4 digits: at least 9 digits in all
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){1,4}(?!\w)"
    r"|(?<![\w+])\+?\d{9,13}(?!\w)"
)
_STREET_TYPES = (
    "street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|place|pl|"
    "terrace|way|highway|hwy|parkway|pkwy|square|sq|circle|cir"
)
_ADDRESS = re.compile(
    r"\b\d{1,6}[A-Za-z]?\s+(?:[A-Z][a-z]+\.?\s+){1,4}(?:" + _STREET_TYPES + r")\b\.?"
    r"(?:,?\s+(?:apt|apartment|suite|unit|#)\.?\s*\w+)?",
    flags=re.IGNORECASE,
)
#: What a quarantined unreadable line holds instead of its raw text in a pseudonymous
#: workspace.
WITHHELD = "[withheld: an unreadable line may hold a raw user id]"
#: What :class:`Scrubber` can remove, in the order it looks (cards before phones: a card
#: number is also a long digit run).
SCRUB_KINDS = ("email", "card", "phone", "address")


def luhn_ok(digits: str) -> bool:
    """Whether a digit string passes the Luhn checksum that payment cards carry."""
    total = 0
    for n, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if n % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


@dataclass(frozen=True)
class Scrubber:
    """Replace personal data in free text with ``[email]``, ``[card]``, ``[phone]``,
    ``[address]``.

    Patterns are this module's own and tested (``tests/test_privacy.py``): e-mail
    addresses; 13-19 digit card numbers that pass Luhn; phone numbers of 9+ digits in
    the usual groupings; house number + capitalised street name + street type. Prices,
    sizes, years and short numbers are left alone.

    Examples
    --------
    >>> Scrubber()("mail me at jo@example.com or call +1 (415) 555-0132")
    'mail me at [email] or call [phone]'
    """

    kinds: tuple[str, ...] = SCRUB_KINDS

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in SCRUB_KINDS]
        if unknown:
            raise ValueError(f"unknown scrub kinds {unknown}; choose from {list(SCRUB_KINDS)}")

    @classmethod
    def parse(cls, spec: str | Sequence[str] | None) -> Scrubber:
        """``"all"`` (or ``None``), ``"none"``, or a comma-separated list of kinds."""
        if spec is None or spec == "all":
            return cls()
        if spec == "none" or spec == "":
            return cls(())
        names = spec.split(",") if isinstance(spec, str) else list(spec)
        return cls(tuple(n.strip() for n in names if n.strip()))

    def __call__(self, text: str) -> str:
        return self.scrub(text)[0]

    def scrub(self, text: str) -> tuple[str, dict[str, int]]:
        """The text with personal data replaced, and how many of each kind were found."""
        found: dict[str, int] = {}
        if not text or not self.kinds:
            return text, found
        for kind in SCRUB_KINDS:
            if kind not in self.kinds:
                continue
            pattern = {"email": _EMAIL, "card": _CARD, "phone": _PHONE, "address": _ADDRESS}[kind]
            text = pattern.sub(lambda m, k=kind: self._replace(m, k, found), text)
        return text, found

    @staticmethod
    def _replace(match: re.Match, kind: str, found: dict[str, int]) -> str:
        value = match.group(0)
        if kind == "card":
            digits = re.sub(r"\D", "", value)
            # issuers' first digits (Amex 3, Visa 4, Mastercard 2/5, Discover 6) and Luhn
            if not (13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_ok(digits)):
                return value
        elif kind == "phone":
            digits = re.sub(r"\D", "", value)
            if len(digits) < 9 or len(digits) > 15:
                return value
            if re.fullmatch(r"(19|20)\d\d([ -](19|20)\d\d)+", value.strip()):
                return value  # a range of years, not a number to call
        found[kind] = found.get(kind, 0) + 1
        return f"[{kind}]"


@dataclass(frozen=True)
class PrivacyPolicy:
    """What a workspace does to incoming personal data: pseudonymise user ids and scrub
    text (recorded in the manifest's ``privacy`` section so updates do the same)."""

    pseudonymize: Pseudonymizer | None
    scrubber: Scrubber = field(default_factory=Scrubber)

    def user(self, user_id: str) -> str:
        return self.pseudonymize(user_id) if self.pseudonymize is not None else user_id

    def text(self, text: str) -> str:
        return self.scrubber(text) if text else text

    def record(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A quarantined row with its user id pseudonymised and every string scrubbed
        (in lists too: a CSV row's extra cells). The raw text of a line that could not be
        parsed is withheld when ids are pseudonymous: its user id cannot be found in it
        to map, so it would reach the disk raw; the file and line number still say where
        to look."""
        from profiler.data.loading import ROW_TEXT

        out: dict[str, Any] = {}
        for key, value in record.items():
            if key == "user_id" and isinstance(value, str) and value:
                value = self.user(value)
            elif key == ROW_TEXT and self.pseudonymize is not None:
                value = WITHHELD
            elif isinstance(value, str):
                value = self.text(value)
            elif isinstance(value, list):
                value = [self.text(v) if isinstance(v, str) else v for v in value]
            out[key] = value
        return out

    def describe(self) -> dict:
        return {"pseudonymous": self.pseudonymize is not None, "scrub": list(self.scrubber.kinds)}


# -- forgetting a shopper ---------------------------------------------------------------


@dataclass(frozen=True)
class ForgetReport:
    """What :meth:`profiler.workspace.Workspace.forget` removed for one shopper."""

    user: str
    events: int
    texts: int  # distinct texts only she wrote: their vectors are gone
    profile: bool
    user_index: bool
    overrides: bool
    explore_state: bool
    cache_entries: int
    quarantine_rows: int
    ranker: str  # "retrained" without her, or "kept" (trained before, with her rows)
    models_removed: tuple[str, ...]
    generation: str
    old_generations_held: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def without_rows(
    events: pd.DataFrame, event_vectors: np.ndarray, rows: np.ndarray
) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """The events less ``rows`` (one shopper's), with ``text_row`` renumbered; the rows
    of ``event_vectors`` to keep (texts someone else also wrote stay); and the texts only
    those rows had, whose vectors go."""
    mine = events.iloc[rows]
    rest = events.drop(events.index[rows]).reset_index(drop=True)
    hers = set(mine["text_row"][mine["text_row"] >= 0].tolist())
    others = set(rest["text_row"][rest["text_row"] >= 0].tolist())
    only_hers = sorted(hers - others)
    kept = np.setdiff1d(np.arange(len(event_vectors)), only_hers)
    remap = np.full(len(event_vectors) + 1, -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    rest["text_row"] = remap[rest["text_row"].to_numpy()]  # -1 reads the last slot: -1
    texts = mine.drop_duplicates("text_row").set_index("text_row")["text"]
    return rest, kept, [texts[r] for r in only_hers]


def drop_quarantined(directory: str | os.PathLike[str], user: str) -> int:
    """Rewrite every quarantine file in ``directory`` without the records of ``user``
    (her stored id); returns how many rows were dropped."""
    import json

    from profiler.storage import write_text

    dropped = 0
    for path in sorted(Path(directory).glob("*.jsonl")) if Path(directory).is_dir() else []:
        kept = []
        lines = path.read_text(encoding="utf-8").splitlines()
        for line in lines:
            try:
                record = json.loads(line).get("record") or {}
            except (json.JSONDecodeError, AttributeError):
                record = {}
            if isinstance(record, dict) and record.get("user_id") == user:
                dropped += 1
            else:
                kept.append(line)
        if len(kept) != len(lines):
            if kept:
                write_text(path, "\n".join(kept) + "\n")
            else:
                path.unlink()
    return dropped


# -- differentially private aggregates ---------------------------------------------------


class BudgetSpentError(ValueError):
    """An export would spend more privacy budget than the workspace has left."""


#: Activity segments of the category-interest statistic: a shopper's number of events.
SEGMENTS = ("1", "2-4", "5+")


def interest_table(
    events: pd.DataFrame, weights: np.ndarray, items: pd.DataFrame, level: str | int
) -> tuple[pd.DataFrame, dict[str, list[tuple[str, str]]]]:
    """What :func:`dp_aggregates` releases for a workspace, and its public domain.

    Each shopper's positive evidence (``weights`` > 0, aligned with ``events``) on items is
    summed per category key, strongest first: ``category_interest`` by top-level category
    within her activity segment (:data:`SEGMENTS`), ``tag_popularity`` by the category at
    ``level``. The domain lists every key the catalogue has (public: not personal)."""
    from profiler.tags.taxonomy import category_tag

    category = items.set_index("item_id")["category"].fillna("").to_dict()
    on_item = (events["item_id"] != "").to_numpy()
    frame = pd.DataFrame(
        {
            "user": events["user_id"].to_numpy()[on_item],
            "category": [category.get(i, "") for i in events["item_id"][on_item]],
            "weight": np.asarray(weights, dtype=float)[on_item],
        }
    )
    frame = frame[(frame["weight"] > 0) & (frame["category"] != "")]
    n_events = events.groupby("user_id").size()
    segment_of = pd.cut(n_events, [0, 1, 4, np.inf], labels=list(SEGMENTS)).astype(str)
    statistics = {
        "category_interest": (lambda c: category_tag(c, "top"), True),
        "tag_popularity": (lambda c: category_tag(c, level), False),
    }
    rows = []
    for statistic, (to_key, by_segment) in statistics.items():
        keyed = frame.assign(key=frame["category"].map(to_key))
        keyed = keyed.groupby(["user", "key"], as_index=False)["weight"].sum()
        keyed = keyed.sort_values(["user", "weight"], ascending=[True, False])
        keyed["segment"] = keyed["user"].map(segment_of) if by_segment else "all"
        keyed["statistic"] = statistic
        rows.append(keyed[["user", "statistic", "segment", "key"]])
    names = items["category"].fillna("")
    names = names[names != ""]
    tops = sorted({category_tag(c, "top") for c in names})
    domain = {
        "category_interest": [(segment, key) for segment in SEGMENTS for key in tops],
        "tag_popularity": [("all", k) for k in sorted({category_tag(c, level) for c in names})],
    }
    return pd.concat(rows, ignore_index=True), domain


def dp_aggregates(
    table: pd.DataFrame,
    domain: Mapping[str, Sequence[tuple[str, str]]],
    *,
    epsilon: float,
    per_user: int = 1,
) -> pd.DataFrame:
    """Noisy counts of shoppers per ``(statistic, segment, key)``.

    ``table`` holds one row per (``user``, ``statistic``, ``segment``, ``key``) she
    contributes to, strongest first; each shopper is cut to ``per_user`` rows per
    statistic, so adding or removing one shopper changes each statistic's histogram by
    at most ``per_user`` (its L1 sensitivity). ``domain`` lists every ``(segment, key)``
    cell of each statistic from public knowledge (the taxonomy, the catalogue's
    categories): every cell gets noise, the empty ones too, so which cells are released
    reveals nobody. Rows outside the domain are dropped. The budget ``epsilon`` is split
    evenly between the statistics and OpenDP's discrete Laplace mechanism adds integer
    noise of scale ``per_user / epsilon_stat`` (its privacy map is checked to spend no
    more than that share). Counts are then clipped at zero (post-processing, which spends
    no budget). OpenDP draws its noise from the operating system's secure generator, so
    no seed can make a release reproducible (one that could would leak the noise).

    Returns
    -------
    DataFrame
        ``statistic, segment, key, count, epsilon`` (the noisy count and the share of
        the budget its statistic used).
    """
    import opendp.prelude as dp

    # OpenDP gates mechanisms that are not yet peer-reviewed behind this flag (it is
    # OpenDP's own setting, not the process environment); the discrete Laplace
    # mechanism used here is in its contrib set.
    dp.enable_features("contrib")
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be a positive number, got {epsilon!r}")
    if per_user < 1:
        raise ValueError(f"per_user must be at least 1, got {per_user}")
    if not domain:
        raise ValueError("no statistic to release: the domain is empty")
    table = table.drop_duplicates(["user", "statistic", "segment", "key"])
    table = table[table.groupby(["user", "statistic"]).cumcount() < per_user]
    share = epsilon / len(domain)
    rows = []
    for statistic, cells in domain.items():
        counts = table[table["statistic"] == statistic].groupby(["segment", "key"]).size()
        true = [int(counts.get(cell, 0)) for cell in cells]
        mechanism = dp.m.make_laplace(
            dp.vector_domain(dp.atom_domain(T=int)),
            dp.l1_distance(T=int),
            scale=per_user / share,
        )
        spent = mechanism.map(per_user)
        if spent > share * (1 + 1e-9):
            raise RuntimeError(f"{statistic}: the mechanism would spend {spent}, not {share}")
        noisy = mechanism(true) if true else []
        for (segment, key), value in zip(cells, noisy):
            rows.append((statistic, segment, key, max(0, int(value)), share))
    return pd.DataFrame(rows, columns=["statistic", "segment", "key", "count", "epsilon"])
