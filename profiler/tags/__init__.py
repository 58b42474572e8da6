"""Interest tags: taxonomy, fine-tuned classifier, zero-shot tagger, calibration, per-user tags."""

from __future__ import annotations

from profiler.tags.taxonomy import Tag, Taxonomy, category_tag
from profiler.tags.users import TagOverrides, UserTag, aggregate_tags

__all__ = ["Tag", "TagOverrides", "Taxonomy", "UserTag", "aggregate_tags", "category_tag"]
