"""A tiny text shift task for the prompt methods' tests (a stand-in for ``text_topics`` until
it lands): 3 topics × 3 domains of template sentences, tokenized with MiniLM's tokenizer, the
last domain held out. Registered only inside a test, through :func:`register_text_task`."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from heldout.core.inputs import InputSpec
from heldout.registry import TASKS
from heldout.tasks.base import Split, Splits, Task

NAME = "prompt_text_standin"
TOPICS = {"sports": ("football", "goal", "match", "team"),
          "money": ("bank", "price", "market", "stock"),
          "weather": ("rain", "storm", "sunny", "snow")}
DOMAINS = ("the report states that the {} and the {} were noted .",
           "lol the {} and {} today",
           "i bought it , the {} was great but the {} was bad")
LENGTH = 16


@dataclass(frozen=True)
class TinyTextTopics(Task):
    """Topic classification of template sentences; ``held_out`` = the review domain (2)."""

    per_cell: int = 8  # sentences per (topic, domain)

    @property
    def input(self) -> InputSpec:
        return InputSpec("tokens", (LENGTH,), vocab=30522)

    def _domain(self, domain: int, seed: int) -> tuple[list[str], list[int]]:
        generator = torch.Generator().manual_seed(seed * 10 + domain)
        texts, labels = [], []
        for label, words in enumerate(TOPICS.values()):
            pairs = list(itertools.permutations(words, 2))
            for i in torch.randperm(len(pairs), generator=generator)[:self.per_cell].tolist():
                texts.append(DOMAINS[domain].format(*pairs[i]))
                labels.append(label)
        return texts, labels

    def splits(self, seed: int) -> Splits:
        from heldout.models.pretrained import tokenize

        parts = []
        for domain in range(len(DOMAINS)):
            texts, labels = self._domain(domain, seed)
            parts.append(Split(tokenize(texts, LENGTH), torch.tensor(labels),
                               groups=torch.full((len(labels),), domain)))
        train = Split(torch.cat([p.x for p in parts[:2]]), torch.cat([p.y for p in parts[:2]]),
                      groups=torch.cat([p.groups for p in parts[:2]]))
        extra = {f"test@{name}": part for name, part in zip(("report", "chat", "review"), parts,
                                                             strict=True)}
        return Splits(train, parts[2], parts[2], self.input, len(TOPICS), extra)


def register_text_task(monkeypatch) -> str:
    """Register :class:`TinyTextTopics` for this test only; returns its name."""
    monkeypatch.setattr(TASKS, "_entries", dict(TASKS._entries))
    TASKS.register(NAME, summary="prompt tests' tiny text stand-in")(TinyTextTopics)
    return NAME
