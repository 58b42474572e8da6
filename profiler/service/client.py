"""A Python client of the profiler service with the workspace's method names::

    ws = profiler.open("index/shop")                      # local
    ws = profiler.Client("http://127.0.0.1:8000")         # the same calls, over HTTP
    ws.recommend("u123", k=10).ids
    ws.tags("u123")[0].tag

Answers come back as the library's own types (:class:`~profiler.workspace.Results`,
:class:`~profiler.tags.users.UserTag`, :class:`~profiler.privacy.ForgetReport`), and
errors as the library's exception types: a 404 is a ``KeyError``, a 4xx about the request
a ``ValueError``, both also :class:`ServiceError` with the status and the server's message.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pandas as pd

__all__ = ["Client", "InvalidRequestError", "NotFoundError", "ServiceError"]


class ServiceError(RuntimeError):
    """The service answered with an error status; ``status`` and ``detail`` say which."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class NotFoundError(ServiceError, KeyError):
    """404: an unknown shopper or item (a ``KeyError``, as the workspace raises)."""

    def __str__(self) -> str:
        return RuntimeError.__str__(self)


class InvalidRequestError(ServiceError, ValueError):
    """400, 413 or 422: the request was malformed or out of bounds (a ``ValueError``)."""


class Client:
    """The service at ``url``; ``api_key`` is sent in the ``X-API-Key`` header."""

    def __init__(
        self, url: str, *, api_key: str | None = None, timeout: float = 60.0, transport=None
    ) -> None:
        headers = {"X-API-Key": api_key} if api_key is not None else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # -- plumbing --------------------------------------------------------------------------

    def _call(self, method: str, path: str, **kwargs):
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            status = response.status_code
            if status == 404:
                raise NotFoundError(status, str(detail))
            if status in (400, 413, 422):
                raise InvalidRequestError(status, str(detail))
            raise ServiceError(status, str(detail))
        return response.json()

    @staticmethod
    def _results(items: list[dict]):
        from profiler.workspace import Results

        return Results(
            [i["item_id"] for i in items],
            np.array([np.nan if i["score"] is None else i["score"] for i in items], dtype=float),
            [i["title"] for i in items],
            [i["reasons"] for i in items] if items and "reasons" in items[0] else None,
        )

    @staticmethod
    def _tags(tags: list[dict]) -> list:
        from profiler.tags.users import Evidence, UserTag

        return [
            UserTag(
                tag=t["tag"],
                confidence=t["confidence"],
                evidence=tuple(
                    Evidence(**{**e, "item_id": e["item_id"] or ""}) for e in t["evidence"]
                ),
                pinned=t["pinned"],
                type=t["type"],
            )
            for t in tags
        ]

    # -- the workspace's methods ------------------------------------------------------------

    def ready(self) -> dict:
        """``/readyz``: the generation served and the workspace's counts."""
        return self._call("GET", "/readyz")

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
    ):
        """See :meth:`profiler.workspace.Workspace.recommend`."""
        body = _recommend_body(
            user,
            history=history,
            k=k,
            categories=categories,
            diversity=diversity,
            explore=explore,
            seed=seed,
        )
        return self._results(self._call("POST", "/recommend", json=body)["items"])

    def recommend_many(self, users: Sequence[str], **options) -> list:
        """:meth:`recommend` for many known shoppers in one request (at most 100)."""
        bodies = [_recommend_body(u, **options) for u in users]
        return [self._results(r["items"]) for r in self._call("POST", "/recommend", json=bodies)]

    def search(self, query: str, k: int = 10):
        return self._results(self._call("POST", "/search", json={"query": query, "k": k})["items"])

    def search_many(self, queries: Sequence[str], k: int = 10) -> list:
        return [self.search(q, k) for q in queries]

    def similar_items(self, item_id: str, k: int = 10):
        found = self._call("GET", f"/items/{_part(item_id)}/similar", params={"k": k})
        return self._results(found["items"])

    def audience(self, item_id: str, k: int = 10) -> list[tuple[str, float]]:
        found = self._call("GET", f"/items/{_part(item_id)}/audience", params={"k": k})
        return [(u["user_id"], u["score"]) for u in found["users"]]

    def tags(self, user: str | None = None, *, texts: Sequence[str] | None = None, top: int = 5):
        """Her tags, or the tags of ``texts`` joined as one shopper's (as the workspace)."""
        if (user is None) == (texts is None):
            raise ValueError("pass exactly one of user= or texts=")
        if user is not None:
            found = self._call("GET", f"/users/{_part(user)}/tags", params={"top": top})
            return self._tags(found["tags"])
        texts = [texts] if isinstance(texts, str) else list(texts)
        found = self._call("POST", "/tags", json={"texts": texts, "top": top, "joined": True})
        return self._tags(found[0]["tags"])

    def describe(self, user: str, *, events: int = 10) -> dict:
        """Her profile for a person to read: tags, interest centres, recent events."""
        return self._call("GET", f"/users/{_part(user)}/profile", params={"events": events})

    def pin_tag(self, user: str, tag: str) -> None:
        self._call("POST", f"/users/{_part(user)}/tags", json={"tag": tag, "action": "pin"})

    def remove_tag(self, user: str, tag: str) -> None:
        self._call("POST", f"/users/{_part(user)}/tags", json={"tag": tag, "action": "remove"})

    def add_events(self, events: str | os.PathLike[str] | pd.DataFrame | Sequence[dict]) -> int:
        """Append events (a table, records or a CSV/JSON Lines/Parquet file); returns how
        many were added (the rest went to the workspace's quarantine)."""
        records = _event_records(events)
        return self._call("POST", "/events", json={"events": records})["added"]

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
        body = {"user_id": user, "item_id": item_id, "liked": liked, "reward": reward}
        body.update(timestamp=timestamp, event_id=event_id)
        body = {k: v for k, v in body.items() if v is not None}
        return self._call("POST", "/feedback", json=body)["counted"]

    def forget(self, user: str, *, retrain: bool = True, keep_models: bool = False):
        from profiler.privacy import ForgetReport

        params = {"retrain": str(retrain).lower(), "keep_models": str(keep_models).lower()}
        found = self._call("DELETE", f"/users/{_part(user)}", params=params)
        return ForgetReport(**{k: tuple(v) if isinstance(v, list) else v for k, v in found.items()})


def _part(value: str) -> str:
    """An id as one URL path segment (a ``/`` or ``?`` in it is escaped)."""
    return quote(str(value), safe="")


def _recommend_body(
    user, *, history=None, k=10, categories=None, diversity=0.0, explore=None, seed=None
) -> dict:
    body = {"user_id": user, "history": None if history is None else list(history), "k": k}
    body.update(categories=None if categories is None else list(categories))
    body.update(diversity=diversity, explore=explore, seed=seed)
    return {key: value for key, value in body.items() if value is not None}


def _event_records(events) -> list[dict]:
    if isinstance(events, (str, os.PathLike)):
        path = Path(events)
        if path.suffix == ".parquet":
            events = pd.read_parquet(path)
        elif path.suffix in (".jsonl", ".json"):
            events = pd.read_json(path, lines=path.suffix == ".jsonl")
        else:
            events = pd.read_csv(path)
    if isinstance(events, pd.DataFrame):
        frame = events.astype(object).where(events.notna(), None)
        events = frame.to_dict(orient="records")
    out = []
    for record in events:
        record = {k: v for k, v in record.items() if v is not None and v != ""}
        if isinstance(record.get("timestamp"), pd.Timestamp):
            record["timestamp"] = record["timestamp"].isoformat()
        out.append(record)
    return out
