"""Text classification under domain shift: a generated topic suite and a loader for your text.

``text_topics`` is generated offline and deterministically from the seed: sentences about one
of six topics (sports, finance, weather, health, technology, food) written in four domains of
different style and vocabulary, ``report`` (long formal sentences), ``chat`` (short informal
lower-case messages), ``headline`` (short Title-Case titles) and ``review`` (product reviews).
Every sentence is a domain template filled with two topic phrases; each phrase comes from the
topic's *shared* lexicon (used in every domain) with probability ``shared_fraction``, else from
the topic's lexicon of that domain (used there only). A model trained on some domains meets
unseen domain words on a held-out one, so its accuracy there drops, but the shared words keep
it above chance; a pre-trained encoder may also know what the unseen words mean.

``text_domains`` reads a user's CSV or Parquet table with a text column, a label column and a
domain column. Both follow :class:`heldout.tasks.domains.DomainSuite` (``held_out``,
per-domain splits, ``test@<domain>``); inputs are token ids of all-MiniLM-L6-v2's tokenizer,
``(max_length,)`` long, padded with 0, as :mod:`heldout.models.pretrained` expects, and the raw
texts of every split stay reachable (:meth:`TextTopics.texts`, :meth:`TextDomains.texts`).

Requires the ``text`` extra (the packaged tokenizer).

References:
    Gulrajani, Lopez-Paz. In Search of Lost Domain Generalization. arXiv:2007.01434.
    Koh et al. WILDS: A Benchmark of in-the-Wild Distribution Shifts. arXiv:2012.07421.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from heldout.core.bounds import Annotated, Ge, Interval
from heldout.core.inputs import InputSpec
from heldout.core.sampling import stream_generator
from heldout.core.text import VOCAB_SIZE, tokenize
from heldout.registry import TASKS
from heldout.tasks.base import Split, Splits
from heldout.tasks.domains.base import DOMAIN_REFERENCES, DomainData, DomainSuite
from heldout.tasks.long_tail import long_tail_counts
from heldout.tasks.noisy import flip_labels
from heldout.tasks.splitting import import_optional, resolve_seed

__all__ = ["DOMAINS", "TOPICS", "TextDomains", "TextTopics", "generate_texts",
           "tokenize_texts"]

_REFERENCES = (*DOMAIN_REFERENCES,
               "WILDS: A Benchmark of in-the-Wild Distribution Shifts (arXiv:2012.07421)")


def tokenize_texts(texts: Sequence[str], max_length: int = 32) -> Tensor:
    """Token ids ``(N, max_length)`` of ``texts`` with MiniLM's tokenizer
    (:func:`heldout.core.text.tokenize`)."""
    return tokenize(tuple(str(t) for t in texts), max_length)


# -------------------------------------------------------------------------- the topic suite

DOMAINS = ("report", "chat", "headline", "review")

# per domain: templates with two topic slots {a} and {b}
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "report": (
        "According to the official report, the {a} and the {b} were assessed in detail "
        "during the period under review.",
        "The committee noted that {a} remained a significant factor in its assessment of "
        "the {b}.",
        "Preliminary findings indicate that the {a} has had a measurable effect on the {b}.",
        "In its annual statement, the agency documented recent developments concerning "
        "the {a} and the {b}.",
        "Officials stated that further analysis of the {a} will inform future policy on "
        "the {b}.",
    ),
    "chat": (
        "lol did u see the {a} today",
        "omg the {a} was so wild tbh",
        "ngl im kinda into {a} and {b} rn",
        "yo {a} again haha",
        "gonna check the {a} later wanna come",
    ),
    "headline": (
        "{A} Surges As {B} Returns",
        "{A}: What Comes Next",
        "New {A} Shakes Up {B}",
        "{A} And {B} In Focus",
        "Why {A} Matters",
    ),
    "review": (
        "I bought this {a} last week and it works great, five stars.",
        "The {a} arrived quickly but the {b} was disappointing, two stars.",
        "Would recommend this {a} to anyone who cares about {b}.",
        "Decent {a} for the price, though the {b} could be better.",
        "Returned the {a} after a month, not worth the money.",
    ),
}

# per topic: (shared phrases, {domain: phrases of that domain only})
TOPICS: dict[str, tuple[tuple[str, ...], dict[str, tuple[str, ...]]]] = {
    "sports": (
        ("team", "match", "coach", "season", "league", "goal"),
        {"report": ("championship fixture", "athletic performance", "tournament schedule",
                    "sporting federation", "competitive fixture", "governing body of sport"),
         "chat": ("game", "ref", "squad", "lads", "playoffs", "highlights"),
         "headline": ("derby", "title race", "comeback", "transfer", "cup final",
                      "star striker"),
         "review": ("running shoes", "tennis racket", "football boots", "gym bag", "yoga mat",
                    "bike helmet")},
    ),
    "finance": (
        ("market", "stocks", "bank", "investors", "interest rates", "shares"),
        {"report": ("fiscal quarter", "monetary policy", "balance sheet", "bond yields",
                    "inflation outlook", "regulatory capital"),
         "chat": ("money", "crypto", "paycheck", "rent", "savings", "portfolio"),
         "headline": ("wall street", "rally", "selloff", "earnings", "merger", "dividend"),
         "review": ("budgeting app", "credit card", "trading platform", "savings account",
                    "calculator", "wallet")},
    ),
    "weather": (
        ("rain", "storm", "forecast", "temperature", "wind", "snow"),
        {"report": ("precipitation", "meteorological office", "atmospheric pressure",
                    "climate observations", "flood warning", "seasonal rainfall"),
         "chat": ("sunshine", "freezing cold", "heat", "thunder", "clouds", "weather"),
         "headline": ("heatwave", "blizzard", "hurricane", "drought", "cold snap", "tornado"),
         "review": ("umbrella", "raincoat", "thermometer", "weather station", "snow boots",
                    "windbreaker")},
    ),
    "health": (
        ("doctor", "hospital", "patients", "medicine", "vaccine", "disease"),
        {"report": ("clinical trial", "public health", "mortality rate",
                    "healthcare provision", "diagnosis", "treatment protocol"),
         "chat": ("flu", "headache", "dentist", "meds", "fever", "checkup"),
         "headline": ("outbreak", "cure", "pandemic", "surgeons", "cancer breakthrough",
                      "health alert"),
         "review": ("vitamins", "blood pressure monitor", "first aid kit", "face masks",
                    "pain relief tablets", "fitness tracker")},
    ),
    "technology": (
        ("software", "computer", "internet", "smartphone", "data", "app"),
        {"report": ("digital infrastructure", "cybersecurity", "semiconductor supply",
                    "information systems", "research and development", "broadband network"),
         "chat": ("wifi", "laptop", "new phone", "update", "game console", "pc"),
         "headline": ("ai", "startup", "chipmaker", "hackers", "silicon valley", "robots"),
         "review": ("wireless headphones", "keyboard", "charger", "usb cable", "tablet",
                    "smartwatch")},
    ),
    "food": (
        ("restaurant", "recipe", "cooking", "dinner", "chef", "meal"),
        {"report": ("food safety", "agricultural produce", "nutrition", "dietary guidelines",
                    "food prices", "catering sector"),
         "chat": ("pizza", "snacks", "takeout", "burgers", "brunch", "tacos"),
         "headline": ("michelin star", "food festival", "bakery", "celebrity chef",
                      "street food", "vegan trend"),
         "review": ("blender", "frying pan", "coffee maker", "knife set", "toaster",
                    "rice cooker")},
    ),
}


def _pick(options: Sequence[str], generator: torch.Generator) -> str:
    return options[int(torch.randint(len(options), (1,), generator=generator))]


@functools.lru_cache(maxsize=8)
def generate_texts(domain: str, count: int, shared_fraction: float, seed: int
                   ) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """``count`` sentences of ``domain`` and their topic ids (balanced: topic ``i % 6`` for
    the ``i``-th before shuffling), all draws from the seed's stream ``text@<domain>``.

    Each sentence is one of the domain's templates with its slots filled by phrases of the
    topic: the shared lexicon with probability ``shared_fraction``, else the domain's own
    (headline phrases in Title Case).

    Example:
        >>> texts, topics = generate_texts("chat", 6, 0.5, seed=0)
        >>> sorted(topics), texts[0] == generate_texts("chat", 6, 0.5, seed=0)[0][0]
        ([0, 1, 2, 3, 4, 5], True)
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {', '.join(DOMAINS)}, got {domain!r}")
    generator = stream_generator(seed, f"text@{domain}")
    names = list(TOPICS)
    topics = (torch.arange(count) % len(names))[torch.randperm(count, generator=generator)]
    texts = []
    for topic in topics.tolist():
        shared, own = TOPICS[names[topic]]
        words = [_pick(shared if float(torch.rand(1, generator=generator)) < shared_fraction
                       else own[domain], generator) for _ in range(2)]
        template = _pick(_TEMPLATES[domain], generator)
        texts.append(template.format(a=words[0], b=words[1], A=words[0].title(),
                                     B=words[1].title()))
    return tuple(texts), tuple(topics.tolist())


class _TextSuite(DomainSuite):
    """What both text suites share: token inputs, texts kept beside the token ids, and the
    training split made long-tailed and noisy after the per-domain split (so val and test
    stay balanced and clean)."""

    max_length: int
    long_tail: float = 0.0
    label_noise: float = 0.0

    def _check_text_fields(self) -> None:
        if self.long_tail and self.long_tail < 1:
            raise ValueError(f"long_tail must be 0 (balanced) or an imbalance ratio >= 1, "
                             f"got {self.long_tail}")

    @property
    def input(self) -> InputSpec:
        return InputSpec("tokens", (self.max_length,), vocab=VOCAB_SIZE)

    def domain_texts(self, seed: int) -> tuple[tuple[tuple[str, ...], tuple[int, ...]], ...]:
        """Per domain, its texts and labels before splitting (seed: the resolved one)."""
        raise NotImplementedError

    def _domains(self, seed: int) -> list[DomainData]:
        out = []
        for texts, labels in self.domain_texts(seed):
            out.append(DomainData(tokenize_texts(texts, self.max_length), torch.tensor(labels),
                                  index=torch.arange(len(labels))))
        return out

    def _training_rows(self, labels: Tensor, seed: int) -> Tensor:
        """The rows of the training split kept by ``long_tail`` (class 0 the most frequent)."""
        if not self.long_tail:
            return torch.arange(len(labels))
        counts = long_tail_counts(int(torch.bincount(labels, minlength=self.num_classes).min()),
                                  self.num_classes, self.long_tail)
        generator = stream_generator(seed, "long_tail")
        kept = []
        for label, count in enumerate(counts):
            members = torch.nonzero(labels == label).flatten()
            kept.append(members[torch.randperm(len(members), generator=generator)[:count]])
        order = torch.cat(kept)
        return order[torch.randperm(len(order), generator=generator)]

    def _build(self, seed: int) -> tuple[Splits, dict[str, list[str]]]:
        seed = resolve_seed(seed, self.data_seed)
        base = super().splits(seed)
        texts = [list(t) for t, _ in self.domain_texts(seed)]
        parts = self.domain_parts(seed, self.domains(seed))
        names = self.domain_names()
        out: dict[str, list[str]] = {}
        for index, name in enumerate(names):
            test_rows, val_rows, _ = parts[index]
            out[f"test@{name}"] = [texts[index][i] for i in test_rows.tolist()]
            out[f"val@{name}"] = [texts[index][i] for i in val_rows.tolist()]
        training = [i for i in range(len(names)) if i not in self.held_out]
        train_texts = [texts[i][j] for i in training for j in parts[i][2].tolist()]
        out["val"] = [t for i in training for t in out[f"val@{names[i]}"]]
        out["test"] = [t for i in sorted(self.held_out) for t in out[f"test@{names[i]}"]]
        rows = self._training_rows(base.train.y, seed)
        out["train"] = [train_texts[i] for i in rows.tolist()]
        clean = base.train.y[rows]
        noisy = flip_labels(clean, self.label_noise, self.num_classes, "symmetric",
                            stream_generator(seed, "label_noise"))
        groups = None if base.train.groups is None else base.train.groups[rows]
        train = Split(base.train.x[rows], noisy, clean if self.label_noise else None, groups)
        splits = Splits(train=train, val=base.val, test=base.test, input=base.input,
                        num_classes=base.num_classes, extra=base.extra)
        return splits, out

    def splits(self, seed: int) -> Splits:
        return self._build(seed)[0]

    def texts(self, seed: int) -> dict[str, list[str]]:
        """The raw texts of every split of :meth:`splits` (same seed), row for row:
        ``"train"``, ``"val"``, ``"test"``, ``"val@<domain>"``, ``"test@<domain>"``."""
        return self._build(seed)[1]


@TASKS.register(
    "text_topics",
    summary="Generated topic classification (6 topics) across 4 text domains (report, chat, "
    "headline, review) of different style and vocabulary; token ids of MiniLM's tokenizer.",
    references=_REFERENCES,
)
@dataclass(frozen=True)
class TextTopics(_TextSuite):
    """Six topics written in four domains (see the module docstring); token-id inputs.

    Each domain has ``examples_per_domain`` sentences, topics balanced, generated by
    :func:`generate_texts` from the seed. By default the ``review`` domain is held out.
    ``long_tail`` > 0 subsamples the *training split* to an exponential class profile of that
    imbalance ratio (topic 0 the most frequent, :func:`heldout.tasks.long_tail.long_tail_counts`);
    ``label_noise`` then flips each training label with that probability to a uniformly random
    other topic (``clean_y`` keeps the true ones). Val and test splits stay balanced and clean.

    With five templates and twelve phrases per topic and domain, some sentences repeat (at the
    defaults, 1,029 distinct of 1,200; chat, with one-slot templates, repeats most). The split
    is by example, so a training domain's val and test parts may share sentences with its train
    part; the held-out domain never does (its templates are its own).

    Example:
        >>> task = TextTopics(examples_per_domain=60)
        >>> splits = task.splits(seed=0)
        >>> task.domain_names(), splits.input.shape, splits.num_classes
        (('report', 'chat', 'headline', 'review'), (32,), 6)
        >>> len(task.texts(seed=0)["test"]) == len(splits.test)
        True
    """

    held_out: tuple[int, ...] = (3,)  # indices of the test domains (default: review)
    # sentences per domain (topics balanced)
    examples_per_domain: Annotated[int, Ge(30)] = 300
    max_length: Annotated[int, Interval(4, 512)] = 32  # token ids per text (truncated, padded)
    # 0: balanced training split; else its exponential imbalance ratio (>= 1)
    long_tail: Annotated[float, Ge(0)] = 0.0
    # probability that a training label flips (symmetric)
    label_noise: Annotated[float, Interval(0, 1)] = 0.0
    # probability that a topic phrase comes from the shared lexicon, not the domain's own
    shared_fraction: Annotated[float, Interval(0, 1)] = 0.5

    def __post_init__(self) -> None:
        self._check_text_fields()
        super().__post_init__()

    def domain_names(self) -> tuple[str, ...]:
        return DOMAINS

    def class_names(self) -> tuple[str, ...]:
        """The topics; class id ``i`` is ``class_names()[i]``."""
        return tuple(TOPICS)

    @property
    def num_classes(self) -> int:
        return len(TOPICS)

    def domain_texts(self, seed: int) -> tuple[tuple[tuple[str, ...], tuple[int, ...]], ...]:
        return tuple(generate_texts(name, self.examples_per_domain, self.shared_fraction, seed)
                     for name in DOMAINS)


# -------------------------------------------------------------------------- a user's table

TEXT_TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


@functools.lru_cache(maxsize=4)
def _read_columns(path: str, mtime: int, size: int, names: tuple[str, ...]
                  ) -> tuple[tuple[str, ...], ...]:
    """The named columns of a CSV or Parquet file, as strings (keyed by mtime and size)."""
    if path.lower().endswith(".csv"):
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            header = [h.strip() for h in reader.fieldnames or []]
            reader.fieldnames = header
            rows = list(reader)
    else:
        parquet = import_optional("pyarrow.parquet")
        table = parquet.read_table(path)
        header = list(table.column_names)
        columns = {name: table.column(name).to_pylist() for name in header}
        rows = [{name: columns[name][i] for name in header} for i in range(table.num_rows)]
    for role, name in zip(("text_column", "label_column", "domain_column"), names,
                          strict=True):
        if name not in header:
            raise ValueError(f"{role} {name!r} is not a column of {path!r}; available "
                             f"columns: {', '.join(header)}")
    if not rows:
        raise ValueError(f"{path!r} has no data rows")
    for line, row in enumerate(rows, start=2):
        if any(row.get(name) is None for name in names):
            raise ValueError(f"{path!r} data row {line - 1}: a missing value in "
                             f"{', '.join(names)}")
    return tuple(tuple(str(row[name]).strip() for row in rows) for name in names)


def _sorted_unique(values: Sequence[str]) -> tuple[str, ...]:
    try:
        return tuple(sorted(set(values), key=float))
    except ValueError:
        return tuple(sorted(set(values)))


@TASKS.register(
    "text_domains",
    summary="Your text table (CSV, or Parquet with pyarrow) with text, label and domain "
    "columns; token ids of MiniLM's tokenizer.",
    references=_REFERENCES,
)
@dataclass(frozen=True)
class TextDomains(_TextSuite):
    """Multi-domain text classification from a table with a text, a label and a domain column.

    A ``.csv`` file (header row; read with the ``csv`` module) or ``.parquet`` / ``.pq`` (needs
    pyarrow). Domains and classes are the distinct values of ``domain_column`` and
    ``label_column``, sorted (numerically when all are numbers) and numbered in that order.
    Texts are tokenized to ``max_length`` token ids. ``long_tail`` and ``label_noise`` act on
    the training split as in :class:`TextTopics`.

    Example:
        >>> task = TextDomains(path="reviews.csv", text_column="body", held_out=(0,))
        >>> # skipped: reads the user's table "reviews.csv"
        >>> task.splits(seed=0)  # doctest: +SKIP
    """

    path: str = ""  # the table: .csv, or .parquet / .pq (with pyarrow)
    text_column: str = "text"  # the column of texts
    label_column: str = "label"  # the column of class labels (numbers or strings)
    domain_column: str = "domain"  # the column naming each row's domain
    max_length: Annotated[int, Interval(4, 512)] = 32  # token ids per text (truncated, padded)
    # 0: balanced training split; else its exponential imbalance ratio (>= 1)
    long_tail: Annotated[float, Ge(0)] = 0.0
    # probability that a training label flips (symmetric)
    label_noise: Annotated[float, Interval(0, 1)] = 0.0

    domains_known_upfront: ClassVar[bool] = False  # known once the file is read

    def __post_init__(self) -> None:
        self._check_text_fields()
        names = (self.text_column, self.label_column, self.domain_column)
        if len(set(names)) != 3:
            raise ValueError(f"text_column, label_column and domain_column must differ, got "
                             f"{names}")
        super().__post_init__()

    def _columns(self) -> tuple[tuple[str, ...], ...]:
        if not self.path:
            raise ValueError("text_domains needs path: a .csv or .parquet file with text, "
                             "label and domain columns (set task.path=...)")
        path = Path(self.path).expanduser()
        if path.suffix.lower() not in TEXT_TABLE_SUFFIXES:
            raise ValueError(f"{str(path)!r}: unknown table file type; accepted: "
                             f"{', '.join(TEXT_TABLE_SUFFIXES)}")
        if not path.is_file():
            raise FileNotFoundError(f"table file {str(path)!r} does not exist")
        stat = path.stat()
        return _read_columns(str(path.resolve()), stat.st_mtime_ns, stat.st_size,
                             (self.text_column, self.label_column, self.domain_column))

    def domain_names(self) -> tuple[str, ...]:
        return _sorted_unique(self._columns()[2])

    def class_names(self) -> tuple[str, ...]:
        """The labels in class-id order: class id ``i`` is ``class_names()[i]``."""
        return _sorted_unique(self._columns()[1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names())

    def domain_texts(self, seed: int) -> tuple[tuple[tuple[str, ...], tuple[int, ...]], ...]:
        texts, labels, domains = self._columns()
        classes = {name: i for i, name in enumerate(self.class_names())}
        return tuple(
            (tuple(t for t, d in zip(texts, domains, strict=True) if d == name),
             tuple(classes[y] for y, d in zip(labels, domains, strict=True) if d == name))
            for name in self.domain_names())
