"""The tag vocabulary: names with optional descriptions, from the catalogue or a file."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from profiler.storage import read_json, write_json

__all__ = ["Tag", "Taxonomy", "category_tag"]


@dataclass(frozen=True)
class Tag:
    """One interest tag; the description helps the zero-shot tagger."""

    name: str
    description: str = ""


def category_tag(category: str, level: str | int = "top", sep: str = ">") -> str:
    """The tag a category path maps to.

    ``level="top"`` keeps the first segment (``"Dresses > Casual"`` -> ``"Dresses"``),
    ``"leaf"`` the last, ``"full"`` the whole normalised path, an int the first ``n``
    segments. Returns ``""`` for an empty category.
    """
    parts = [p.strip() for p in str(category).split(sep) if p.strip()]
    if not parts:
        return ""
    if level == "top":
        return parts[0]
    if level == "leaf":
        return parts[-1]
    if level == "full":
        return f" {sep} ".join(parts)
    if isinstance(level, int) and level > 0:
        return f" {sep} ".join(parts[:level])
    raise ValueError(f"level must be 'top', 'leaf', 'full' or a positive int, got {level!r}")


class Taxonomy:
    """An ordered set of tags; position ``j`` is column ``j`` of every probability matrix.

    Examples
    --------
    >>> tax = Taxonomy.from_categories(["Tops > Knits", "Dresses > Dresses"], level="leaf")
    >>> tax.names
    ['Dresses', 'Knits']
    """

    def __init__(self, tags: Sequence[Tag]) -> None:
        names = [t.name for t in tags]
        for position, name in enumerate(names):
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"tag at position {position} has no name: {name!r}")
        duplicates = [n for n, c in Counter(names).items() if c > 1]
        if duplicates:
            raise ValueError(f"duplicate tag names: {duplicates}")
        if not tags:
            raise ValueError("a taxonomy needs at least one tag")
        self.tags = list(tags)
        self._index = {name: j for j, name in enumerate(names)}

    def __len__(self) -> int:
        return len(self.tags)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Taxonomy) and self.tags == other.tags

    def __repr__(self) -> str:
        return f"Taxonomy({len(self)} tags: {self.names[:5]}{'...' if len(self) > 5 else ''})"

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tags]

    @property
    def descriptions(self) -> list[str]:
        return [t.description for t in self.tags]

    def index(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"unknown tag {name!r}; the taxonomy has {self.names[:10]}") from None

    def encode(self, labels: Sequence[Iterable[str]]) -> np.ndarray:
        """Multi-hot float32 ``[n, len(self)]`` for label lists; ``KeyError`` names an
        unknown label."""
        out = np.zeros((len(labels), len(self)), dtype=np.float32)
        for row, names in enumerate(labels):
            for name in names:
                out[row, self.index(name)] = 1.0
        return out

    @classmethod
    def from_categories(
        cls, categories: Iterable[str], *, level: str | int = "top", min_count: int = 1
    ) -> Taxonomy:
        """Tags from catalogue category paths, sorted by name; rare ones dropped."""
        counts = Counter(t for t in (category_tag(c, level) for c in categories) if t)
        names = sorted(name for name, n in counts.items() if n >= min_count)
        if not names:
            raise ValueError("no categories to make tags from (is the catalogue's category empty?)")
        return cls([Tag(name) for name in names])

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Taxonomy:
        """Read tags from JSON or YAML: a list of names or of ``{"name", "description"}``
        objects, or an object ``{"tags": [...]}``."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as exc:
                raise ImportError(
                    "reading YAML taxonomies needs PyYAML: pip install pyyaml"
                ) from exc
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        else:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def to_dict(self) -> dict:
        return {"tags": [{"name": t.name, "description": t.description} for t in self.tags]}

    @classmethod
    def from_dict(cls, data: Mapping | Sequence) -> Taxonomy:
        entries = data.get("tags") if isinstance(data, Mapping) else data
        if not isinstance(entries, Sequence) or isinstance(entries, str):
            raise ValueError("expected a list of tags or {'tags': [...]}")
        tags = []
        for position, entry in enumerate(entries):
            if isinstance(entry, str):
                tags.append(Tag(entry))
            elif isinstance(entry, Mapping) and "name" in entry:
                tags.append(Tag(str(entry["name"]), str(entry.get("description") or "")))
            else:
                raise ValueError(f"tag {position} must be a name or {{'name': ...}}, got {entry!r}")
        return cls(tags)

    def save(self, path: str | os.PathLike[str]) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Taxonomy:
        return cls.from_dict(read_json(path))
