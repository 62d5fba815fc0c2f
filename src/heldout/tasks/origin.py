"""Origin identification on text: origin sentences and their generated variants.

A text stand-in for ID² (Wang et al.), where the origins are images and the generated items
their translations by text-guided diffusion models. Here an origin is a sentence built from a
small built-in grammar (a subject, a verb, an object, a place), and a generated item is one of
its variants made offline by three perturbations, each deterministic from the seed's random
stream (:func:`perturb`):

* **synonym swaps**: each word with an entry in the built-in lexicon (:data:`SYNONYMS`) is
  replaced, with probability ``swap``, by one of its synonyms;
* **word dropout**: each word is dropped with probability ``dropout`` (one word always stays);
* **reordering**: with probability ``reorder``, two random words trade places.

The origins are split into training and test origins (``test_fraction``), so a map fitted on
the training pairs is scored on origins it never saw. Splits (token ids of MiniLM's tokenizer,
pad id 0; ``y`` = the index of the item's origin among all origins):

* ``train``: the variants of the training origins; ``val``: empty;
* ``test``: the variants of the test origins;
* ``extra["origins"]``: every origin sentence, ``y = 0..origins-1`` (the retrieval gallery).

The map and the retrieval measure are :func:`heldout.measures.origin.fit_linear_map` and
:func:`heldout.measures.origin.retrieval_map`.

References:
    Wang, Sun, Yang, Chen, Jiang. Generalizable Origin Identification for Text-Guided
    Image-to-Image Diffusion Models. arXiv:2501.02376 (catalog #61).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from heldout.core.bounds import Annotated, Ge, Interval
from heldout.core.inputs import InputSpec
from heldout.core.sampling import stream_generator
from heldout.core.text import tokenize
from heldout.registry import TASKS
from heldout.tasks.base import Split, Splits, Task
from heldout.tasks.splitting import resolve_seed

__all__ = ["SYNONYMS", "OriginPairs", "origin_sentences", "perturb", "tokenize"]

_SUBJECTS = ("the farmer", "a young pilot", "the old teacher", "my neighbour", "the chef",
             "a tired doctor", "the small child", "our captain", "the quiet student",
             "a famous singer", "the nurse", "the engineer")
_VERBS = ("bought", "painted", "repaired", "carried", "found", "sold", "cleaned", "borrowed",
          "lost", "watched")
_OBJECTS = ("a red bicycle", "the wooden boat", "a large map", "the broken clock",
            "an old guitar", "the heavy box", "a blue kite", "the silver ring", "a new lamp",
            "the paper lantern")
_PLACES = ("near the river", "in the market", "behind the school", "at the station",
           "by the harbour", "in the garden", "on the hill", "inside the museum")
_VOCAB = (_SUBJECTS, _VERBS, _OBJECTS, _PLACES)

SYNONYMS: dict[str, tuple[str, ...]] = {
    "farmer": ("grower", "rancher"), "young": ("youthful", "junior"), "old": ("elderly", "aged"),
    "teacher": ("tutor", "instructor"), "neighbour": ("friend", "acquaintance"),
    "chef": ("cook",), "tired": ("weary", "exhausted"), "doctor": ("physician", "medic"),
    "small": ("little", "tiny"), "child": ("kid", "youngster"), "captain": ("skipper",),
    "quiet": ("silent", "shy"), "student": ("pupil", "learner"), "famous": ("celebrated",),
    "singer": ("vocalist",), "engineer": ("technician",), "bought": ("purchased",),
    "painted": ("coloured",), "repaired": ("fixed", "mended"), "carried": ("hauled",),
    "found": ("discovered",), "sold": ("traded",), "cleaned": ("washed", "scrubbed"),
    "lost": ("misplaced",), "watched": ("observed",), "large": ("big", "huge"),
    "broken": ("damaged",), "heavy": ("weighty",), "new": ("fresh",), "boat": ("ship",),
    "clock": ("watch",), "box": ("crate",), "lamp": ("light",), "river": ("stream",),
    "market": ("bazaar",), "station": ("depot",), "harbour": ("port",), "hill": ("slope",),
    "garden": ("yard",), "museum": ("gallery",), "near": ("close to",), "behind": ("beyond",),
}


def origin_sentences(count: int, generator: torch.Generator) -> list[str]:
    """``count`` distinct origin sentences (subject, verb, object, place), drawn without
    repeats from the grammar's combinations by ``generator``."""
    sizes = [len(part) for part in _VOCAB]
    total = sizes[0] * sizes[1] * sizes[2] * sizes[3]
    if not 1 <= count <= total:
        raise ValueError(f"origins must be in 1..{total} (the grammar's sentences), got {count}")
    sentences = []
    for code in torch.randperm(total, generator=generator)[:count].tolist():
        words = []
        for part, size in zip(_VOCAB, sizes, strict=True):
            code, index = divmod(code, size)
            words.append(part[index])
        sentences.append(" ".join(words))
    return sentences


def perturb(sentence: str, generator: torch.Generator, *, swap: float, dropout: float,
            reorder: float) -> str:
    """A generated variant of ``sentence``: synonym swaps, word dropout, then one swap of two
    words with probability ``reorder``; every draw from ``generator``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> perturb("the old teacher", g, swap=1.0, dropout=0.0, reorder=0.0) in (
        ...     "the elderly teacher", "the aged teacher", "the elderly tutor",
        ...     "the aged tutor", "the elderly instructor", "the aged instructor")
        True
    """
    for name, rate in (("swap", swap), ("dropout", dropout), ("reorder", reorder)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {rate!r}")
    words = []
    for word in sentence.split():
        options = SYNONYMS.get(word, ())
        draw, pick = torch.rand(2, generator=generator).tolist()
        words.append(options[int(pick * len(options))] if options and draw < swap else word)
    keep = (torch.rand(len(words), generator=generator) >= dropout).tolist()
    if not any(keep):
        keep[int(torch.randint(len(words), (1,), generator=generator))] = True
    words = [w for w, k in zip(words, keep, strict=True) if k]
    if len(words) > 1 and float(torch.rand(1, generator=generator)) < reorder:
        i, j = torch.randperm(len(words), generator=generator)[:2].tolist()
        words[i], words[j] = words[j], words[i]
    return " ".join(words)


@TASKS.register(
    "origin_pairs",
    summary="Origin identification: sentences and their generated variants (synonym swaps, "
    "word dropout, reordering); retrieve each variant's origin.",
    papers=(61,),
)
@dataclass(frozen=True)
class OriginPairs(Task):
    """Origin sentences and their perturbed variants (see the module docstring); a variant's
    label is the index of its origin, ``extra["origins"]`` holds the origins themselves.
    Deterministic from the seed (or ``data_seed``); the sentences, the split of the origins
    and the perturbations each draw from their own random stream."""

    origins: Annotated[int, Ge(2)] = 200  # origin sentences
    variants: Annotated[int, Ge(1)] = 3  # generated variants per origin
    swap: Annotated[float, Interval(0.0, 1.0)] = 0.5  # chance of each synonym swap
    dropout: Annotated[float, Interval(0.0, 1.0, closed="left")] = 0.15  # chance to drop a word
    reorder: Annotated[float, Interval(0.0, 1.0)] = 0.5  # chance of swapping two words
    test_fraction: Annotated[float, Interval(0.0, 1.0, closed="neither")] = 0.5  # test origins
    max_length: Annotated[int, Ge(4)] = 24  # tokens per text (with [CLS] and [SEP])
    data_seed: Annotated[int | None, Ge(0)] = None  # if set, builds the data instead of the seed

    def __post_init__(self) -> None:
        test = round(self.origins * self.test_fraction)
        if not 1 <= test < self.origins:
            raise ValueError(f"test_fraction {self.test_fraction} of {self.origins} origins "
                             "must leave at least one training and one test origin")
        super().__post_init__()

    @property
    def input(self) -> InputSpec:
        return InputSpec("tokens", (self.max_length,), vocab=30522)

    def texts(self, seed: int) -> tuple[list[str], list[str], torch.Tensor]:
        """``(origins, generated, origin_of_each_generated)`` as text, before tokenizing."""
        seed = resolve_seed(seed, self.data_seed)
        origins = origin_sentences(self.origins, stream_generator(seed, "origin/sentences"))
        perturbations = stream_generator(seed, "origin/perturb")
        generated = [perturb(s, perturbations, swap=self.swap, dropout=self.dropout,
                             reorder=self.reorder)
                     for s in origins for _ in range(self.variants)]
        return origins, generated, torch.arange(self.origins).repeat_interleave(self.variants)

    def splits(self, seed: int) -> Splits:
        origins, generated, source = self.texts(seed)
        order = torch.randperm(self.origins,
                               generator=stream_generator(resolve_seed(seed, self.data_seed),
                                                          "origin/split"))
        is_test = torch.zeros(self.origins, dtype=torch.bool)
        is_test[order[:round(self.origins * self.test_fraction)]] = True
        ids = tokenize(generated, self.max_length)
        in_test = is_test[source]
        empty = Split(ids[:0], source[:0])
        return Splits(
            train=Split(ids[~in_test], source[~in_test]),
            val=empty,
            test=Split(ids[in_test], source[in_test]),
            input=self.input,
            num_classes=self.origins,
            extra={"origins": Split(tokenize(origins, self.max_length),
                                    torch.arange(self.origins))},
        )
