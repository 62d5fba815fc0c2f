"""The text shift suite (text_topics) and the text-table loader (text_domains)."""

import re

import numpy as np
import pytest
import torch

from heldout.registry import TASKS
from heldout.tasks.long_tail import long_tail_counts
from heldout.tasks.text import DOMAINS, TOPICS, generate_texts, tokenize_texts

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def task():
    return TASKS.build("text_topics", examples_per_domain=240)


@pytest.fixture(scope="module")
def splits(task):
    return task.splits(0)


def _words(texts):
    return set(w for t in texts for w in re.findall(r"[a-z]+", t.lower()))


def _jaccard(a, b):
    return len(a & b) / len(a | b)


def test_domains_differ_in_vocabulary_and_length():
    texts = {d: generate_texts(d, 240, 0.5, 0)[0] for d in DOMAINS}
    within = {d: _jaccard(_words(t[:120]), _words(t[120:])) for d, t in texts.items()}
    between = [_jaccard(_words(texts[a]), _words(texts[b]))
               for i, a in enumerate(DOMAINS) for b in DOMAINS[i + 1:]]
    assert max(between) < min(within.values())
    lengths = {d: np.mean([len(tokenize_texts([t], 64)[0].nonzero()) for t in texts[d][:60]])
               for d in DOMAINS}
    assert lengths["headline"] < lengths["chat"] < lengths["review"] < lengths["report"]
    # headlines are Title Case, chat is lower case
    assert all(t == t.lower() for t in texts["chat"])
    assert all(w[0].isupper() for t in texts["headline"] for w in t.replace(":", "").split())
    # a domain's own words appear only in that domain
    for domain in DOMAINS:
        own = {w for _, per in TOPICS.values() for w in per[domain]}
        others = " ".join(t.lower() for d in DOMAINS if d != domain for t in texts[d])
        assert not any(f" {w} " in f" {others} " for w in own if len(w) > 4 and " " in w)


def test_held_out_domain_is_harder_but_above_chance(task, splits):
    """A bag-of-words logistic regression: the held-out domain's accuracy is lower than the
    training domains' val accuracy, and above chance (1/6)."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    texts = task.texts(0)
    vectorizer = CountVectorizer().fit(texts["train"])
    model = LogisticRegression(max_iter=500).fit(vectorizer.transform(texts["train"]),
                                                 splits.train.y.numpy())
    val = model.score(vectorizer.transform(texts["val"]), splits.val.y.numpy())
    held = model.score(vectorizer.transform(texts["test"]), splits.test.y.numpy())
    assert val > 0.9 and 1 / 6 + 0.15 < held < val - 0.1


def test_splits_follow_the_domain_convention(task, splits):
    assert task.domain_names() == ("report", "chat", "headline", "review")
    assert splits.input.kind == "tokens" and splits.input.shape == (32,)
    assert splits.input.vocab == 30522 and splits.num_classes == 6 >= 6
    assert set(splits.train.groups.tolist()) == {0, 1, 2}  # review (3) held out
    assert set(splits.test.groups.tolist()) == {3}
    assert sorted(splits.extra) == sorted(f"{p}@{d}" for p in ("val", "test") for d in DOMAINS)
    assert torch.equal(splits.extra["test@review"].x, splits.test.x)
    for index, domain in enumerate(DOMAINS):
        assert set(splits.extra[f"test@{domain}"].groups.tolist()) == {index}
    texts = task.texts(0)
    for name in ("train", "val", "test", "test@chat", "val@review"):
        assert torch.equal(tokenize_texts(texts[name], 32), splits[name].x)
    assert set(texts["train"]).isdisjoint(texts["test"])
    # balanced classes
    assert torch.bincount(splits.train.y).tolist() == [len(splits.train) // 6] * 6
    assert splits.train.clean_y is None


def test_deterministic_from_the_seed(task, splits):
    again = TASKS.build("text_topics", examples_per_domain=240).splits(0)
    assert torch.equal(again.train.x, splits.train.x) and torch.equal(again.test.y,
                                                                       splits.test.y)
    other = task.splits(1)
    assert not torch.equal(other.train.x, splits.train.x)
    fixed = TASKS.build("text_topics", examples_per_domain=240, data_seed=0)
    assert torch.equal(fixed.splits(5).train.x, splits.train.x)


def test_long_tail_and_label_noise_on_the_training_split(splits):
    task = TASKS.build("text_topics", examples_per_domain=240, long_tail=10.0,
                       label_noise=0.3)
    noisy = task.splits(0)
    n_max = len(splits.train) // 6
    assert torch.bincount(noisy.train.clean_y).tolist() == long_tail_counts(n_max, 6, 10.0)
    flipped = noisy.train.corrupted
    rate = float(flipped.float().mean())
    n = len(noisy.train)
    assert abs(rate - 0.3) < 4 * (0.3 * 0.7 / n) ** 0.5  # binomial, 4 sigma
    assert bool((noisy.train.y[flipped] != noisy.train.clean_y[flipped]).all())
    # val and test stay balanced and clean, and equal the clean task's
    assert torch.equal(noisy.val.y, splits.val.y) and noisy.val.clean_y is None
    assert torch.equal(noisy.test.x, splits.test.x)
    texts = task.texts(0)
    assert torch.equal(tokenize_texts(texts["train"], 32), noisy.train.x)


def test_tokenize_matches_the_model_tokenizer():
    from heldout.models.pretrained import tokenize

    sentences = ["Storm Warning In Focus", "lol did u see the game today"]
    assert torch.equal(tokenize_texts(sentences, 16), tokenize(sentences, 16))


@pytest.mark.parametrize(("params", "message"), [
    ({"long_tail": 0.5}, "long_tail"),
    ({"held_out": (4,)}, "held_out"),
    ({"held_out": (0, 1, 2, 3)}, "held_out"),
    ({"max_length": 2}, "max_length"),
    ({"examples_per_domain": 10}, "examples_per_domain"),
    ({"label_noise": 1.5}, "label_noise"),
])
def test_bad_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        TASKS.build("text_topics", **params)


# ------------------------------------------------------------------------------ text_domains

def _rows():
    rows = []
    for i in range(48):
        domain = ("forum", "news")[i % 2]
        label = ("cats", "dogs")[i // 2 % 2]
        rows.append((f"{domain} post {i} about {label}, \"quoted\"", label, domain))
    return rows


def test_text_domains_from_csv_and_parquet(tmp_path):
    import csv

    rows = _rows()
    with open(tmp_path / "t.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["body", "label", "site"])
        writer.writerows(rows)
    task = TASKS.build("text_domains", path=str(tmp_path / "t.csv"), text_column="body",
                       domain_column="site", held_out=(1,), max_length=16)
    assert task.domain_names() == ("forum", "news") and task.class_names() == ("cats", "dogs")
    splits = task.splits(0)
    texts = task.texts(0)
    # the training domain (forum, 24 rows) is split into train, val and test parts
    assert len(splits.train) + len(splits.val) + len(splits["test@forum"]) == 24
    assert torch.equal(splits.test.x, splits["test@news"].x) and splits.input.shape == (16,)
    assert all(t.startswith("news") for t in texts["test"])
    assert all(t.startswith("forum") for t in texts["train"])
    by_text = {t: label for t, label, _ in rows}
    assert [("cats", "dogs")[y] for y in splits.train.y.tolist()] == [
        by_text[t] for t in texts["train"]]
    assert torch.equal(tokenize_texts(texts["train"], 16), splits.train.x)

    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow

    table = pyarrow.table({"body": [r[0] for r in rows], "label": [r[1] for r in rows],
                           "site": [r[2] for r in rows]})
    pq.write_table(table, tmp_path / "t.parquet")
    parquet = TASKS.build("text_domains", path=str(tmp_path / "t.parquet"),
                          text_column="body", domain_column="site", held_out=(1,),
                          max_length=16).splits(0)
    assert torch.equal(parquet.train.x, splits.train.x)
    assert torch.equal(parquet.test.y, splits.test.y)


def test_text_domains_errors_name_the_parameter(tmp_path):
    (tmp_path / "t.csv").write_text("text,label,domain\nhello,a,x\nbye,b,y\n")
    with pytest.raises(ValueError, match="path"):
        TASKS.build("text_domains").splits(0)
    with pytest.raises(ValueError, match="text_column 'body'"):
        TASKS.build("text_domains", path=str(tmp_path / "t.csv"), text_column="body",
                    held_out=(1,)).splits(0)
    with pytest.raises(ValueError, match="unknown table file type"):
        TASKS.build("text_domains", path=str(tmp_path / "t.txt")).splits(0)
    with pytest.raises(FileNotFoundError):
        TASKS.build("text_domains", path=str(tmp_path / "none.csv")).splits(0)
    with pytest.raises(ValueError, match="must differ"):
        TASKS.build("text_domains", path="t.csv", text_column="label")
    with pytest.raises(ValueError, match="held_out index 5"):
        TASKS.build("text_domains", path=str(tmp_path / "t.csv"), held_out=(5,)).splits(0)
