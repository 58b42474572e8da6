"""Request and response bodies of the profiler service (pydantic models, so ``/docs`` and
``/openapi.json`` show the whole schema).

Field names are the library's (``user_id``, ``history``, ``k``, ``query``, ``item_id``,
``reward``) and answers have the shapes of the CLI's ``--json`` lines. Bounds here are
what one request may ask for; the workspace checks the meaning (an unknown id, an empty
text) and the app turns its errors into 4xx answers.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

__all__ = [
    "AudienceResponse",
    "EventIn",
    "EventsRequest",
    "EventsResponse",
    "FeedbackRequest",
    "FeedbackResponse",
    "Item",
    "ItemsResponse",
    "ProfileResponse",
    "RecommendRequest",
    "RecommendResponse",
    "SearchRequest",
    "SearchResponse",
    "TagRequest",
    "TagsResponse",
    "TextTagsRequest",
]

#: Most items one answer may hold, and most texts or events one request may carry.
MAX_K = 200
MAX_TEXTS = 100
MAX_EVENTS = 10_000
MAX_TEXT_CHARS = 20_000

Id = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS)]


class _Strict(BaseModel):
    # an unknown field is a typo the caller should hear about, not a silent default
    model_config = ConfigDict(extra="forbid")


class Item(BaseModel):
    item_id: str
    score: float | None
    title: str
    reasons: dict[str, Any] | None = None


class RecommendRequest(_Strict):
    """One shopper: a known ``user_id`` or the ``history`` texts of an anonymous one."""

    user_id: Id | None = None
    history: Annotated[list[Text], Field(min_length=1, max_length=MAX_TEXTS)] | None = None
    k: Annotated[int, Field(ge=1, le=MAX_K)] = 10
    categories: Annotated[list[Id], Field(max_length=100)] | None = None
    diversity: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    explore: float | str | None = Field(
        None,
        description="exploration: a strength in [0, 1] or a config such as "
        "'policy=ucb,strength=0.2'; none (default) is the plain ranking",
    )
    seed: int | None = None

    @model_validator(mode="after")
    def _one_shopper(self) -> RecommendRequest:
        if (self.user_id is None) == (self.history is None):
            raise ValueError("give exactly one of user_id or history")
        return self


class RecommendResponse(BaseModel):
    user_id: str | None
    history: list[str] | None = None
    items: list[Item]


class SearchRequest(_Strict):
    query: Text
    k: Annotated[int, Field(ge=1, le=MAX_K)] = 10


class SearchResponse(BaseModel):
    query: str
    items: list[Item]


class ItemsResponse(BaseModel):
    item_id: str
    items: list[Item]


class AudienceUser(BaseModel):
    user_id: str
    score: float


class AudienceResponse(BaseModel):
    item_id: str
    users: list[AudienceUser]


class Evidence(BaseModel):
    event: int
    kind: str
    item_id: str | None
    timestamp: float
    snippet: str
    contribution: float
    rating: float | None
    rating_predicted: bool


class Tag(BaseModel):
    tag: str
    type: str
    confidence: float
    pinned: bool
    evidence: list[Evidence]


class TagsResponse(BaseModel):
    user_id: str | None
    text: str | None = None
    tags: list[Tag]


class TextTagsRequest(_Strict):
    texts: Annotated[list[Text], Field(min_length=1, max_length=MAX_TEXTS)]
    top: Annotated[int, Field(ge=1, le=50)] = 5
    joined: bool = Field(
        False,
        description="one answer for all texts together, as one shopper's, instead of one per text",
    )


class TagRequest(_Strict):
    """Pin a tag (always shown, and her recommendations lean to it) or remove it (never
    shown, and its items stay out of her recommendations)."""

    tag: Id
    action: Literal["pin", "remove"]


class Centre(BaseModel):
    weight: float
    items: list[Item]


class RecentEvent(BaseModel):
    timestamp: float
    kind: str
    item_id: str | None
    title: str
    text: str
    rating: float | None


class ProfileResponse(BaseModel):
    user_id: str
    stored_id: str
    events: int
    last_timestamp: float
    tags: list[Tag] | None = Field(
        None, description="null when the workspace has no tag model (train-tags)"
    )
    tags_note: str | None = None
    centres: list[Centre]
    recent_events: list[RecentEvent]


class EventIn(_Strict):
    user_id: Id
    timestamp: float | str
    kind: Literal["review", "search", "view", "click", "purchase", "like", "dislike"]
    item_id: Id | None = None
    text: Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)] | None = None
    rating: float | None = None
    device: Annotated[str, StringConstraints(max_length=64)] | None = None
    channel: Annotated[str, StringConstraints(max_length=64)] | None = None


class EventsRequest(_Strict):
    events: Annotated[list[EventIn], Field(min_length=1, max_length=MAX_EVENTS)]


class EventsResponse(BaseModel):
    added: int
    rejected: int = Field(description="rows the loader quarantined (see quarantine/)")
    generation: str | None


class FeedbackRequest(_Strict):
    user_id: Id
    item_id: Id
    reward: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    liked: bool | None = None
    event_id: Id | None = None
    timestamp: float | None = None

    @model_validator(mode="after")
    def _one_answer(self) -> FeedbackRequest:
        if (self.reward is None) == (self.liked is None):
            raise ValueError("give exactly one of reward or liked")
        return self


class FeedbackResponse(BaseModel):
    user_id: str
    item_id: str
    counted: bool = Field(description="false when the same event_id was counted before")
