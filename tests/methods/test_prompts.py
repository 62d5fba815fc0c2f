"""Prompt methods on tiny_bert: soft prompt tuning, PromptSRC, GRAM, SPG and OGEN, each
against an oracle (a hand-computed case, scipy, or a degenerate setting equal to a simpler
method)."""

import math
import tempfile

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import entropy

from heldout.core.inputs import InputSpec
from heldout.methods.averaging.gaussian import GaussianAveraging
from heldout.methods.prompts import (
    GRAM,
    OGEN,
    PromptedClassifier,
    PromptGenerator,
    PromptSRC,
    PromptTuning,
    class_prototypes,
    gram_meta_step,
    initial_prompts,
    nearest_classes,
    prepend_prompts,
    prototype_logits,
    regulated_gradient,
    self_consistency_loss,
    uniform_cross_entropy,
)
from heldout.models.pretrained import TinyBert, tokenize
from heldout.run.execute import execute
from heldout.store import Store
from tests.conftest import assert_resume_is_exact, tiny_config
from tests.methods.prompt_text import register_text_task

TEXTS = ["the match ended with a late goal", "the bank raised its price",
         "heavy rain and a storm tonight", "lol that team is great"]
TOKEN_SETTING = ("model=tiny_bert", "model.hidden=8", "model.layers=1", "task.p=11",
                 "batch_size=16")


def _base(seed=0, classes=3):
    torch.manual_seed(seed)
    return TinyBert(hidden=16, layers=1, heads=2).build(InputSpec("tokens", (12,), vocab=30522),
                                                         classes).eval()


def _ids():
    return tokenize(TEXTS, 12)


def _final_metrics(*overrides):
    return execute(tiny_config(*TOKEN_SETTING, *overrides), Store(tempfile.mkdtemp())).metrics


# --- prompt tuning -----------------------------------------------------------------------


def test_prepend_prompts_shapes_mask_and_errors():
    embeds, mask = torch.randn(2, 3, 4), torch.tensor([[1, 1, 0], [1, 0, 0]])
    out, extended = prepend_prompts(embeds, mask, torch.ones(2, 4))
    assert torch.equal(out[:, :2], torch.ones(2, 2, 4)) and torch.equal(out[:, 2:], embeds)
    assert extended.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]
    per_example = torch.randn(2, 5, 4)
    assert torch.equal(prepend_prompts(embeds, mask, per_example)[0][:, :5], per_example)
    with pytest.raises(ValueError, match="prompts must be"):
        prepend_prompts(embeds, mask, torch.ones(2, 3))


def test_zero_prompts_equal_the_frozen_classifier():
    base, ids = _base(), _ids()
    expected = base(ids)
    prompted = PromptedClassifier(base, torch.zeros(0, 16)).eval()
    assert torch.equal(prompted(ids), expected)


def test_prompts_change_the_output_and_only_prompts_and_head_get_gradients():
    base, ids = _base(), _ids()
    prompted = PromptedClassifier(base, initial_prompts(base, 4)).train()
    assert not base.encoder.training  # the frozen encoder stays in eval mode
    logits = prompted(ids)
    assert not torch.allclose(logits, base(ids))
    logits.sum().backward()
    assert all(p.grad is None for p in base.encoder.parameters())
    assert prompted.prompt.grad is not None and prompted.prompt.grad.abs().sum() > 0
    assert base.head.weight.grad is not None


def test_prompts_initialized_from_words_are_their_embeddings():
    base = _base()
    ids = tokenize(["storm rain"], 8)[0, 1:3]  # [CLS] storm rain [SEP]
    prompt = initial_prompts(base, 3, ("storm", "rain"))
    table = base.encoder.get_input_embeddings().weight
    assert torch.equal(prompt, table[torch.stack([ids[0], ids[1], ids[0]])])


def test_prompt_tuning_refuses_a_model_that_is_not_a_text_classifier():
    with pytest.raises(ValueError, match="pre-trained text classifier"):
        PromptTuning().transform_model(torch.nn.Linear(2, 2))


# --- PromptSRC ----------------------------------------------------------------------------


def test_self_consistency_loss_by_hand_and_scipy():
    features, frozen = torch.tensor([[3.0, 4.0]]), torch.tensor([[4.0, 3.0]])
    logits, frozen_logits = torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]])
    l1 = self_consistency_loss(features, frozen, logits, logits, 10.0, 1.0)
    assert float(l1) == pytest.approx(10 * 0.2)  # |0.6-0.8|, |0.8-0.6| → mean 0.2
    kl = self_consistency_loss(features, features, logits, frozen_logits, 10.0, 1.0)
    assert float(kl) == pytest.approx(entropy([0.75, 0.25], [0.5, 0.5]), rel=1e-6)


def test_prototype_logits_and_class_prototypes_by_hand():
    prototypes = class_prototypes(torch.tensor([[2.0, 0.0], [4.0, 0.0], [0.0, 1.0]]),
                                  torch.tensor([0, 0, 1]), 2)
    assert prototypes.tolist() == [[3.0, 0.0], [0.0, 1.0]]
    logits = prototype_logits(torch.tensor([[1.0, 1.0]]), prototypes, 2.0)
    assert logits[0].tolist() == pytest.approx([math.sqrt(2), math.sqrt(2)])
    with pytest.raises(ValueError, match="no examples"):
        class_prototypes(torch.ones(2, 2), torch.tensor([0, 0]), 2)


def test_promptsrc_with_zero_weights_equals_prompt_tuning():
    plain = _final_metrics("techniques=prompt_tuning")
    src = _final_metrics("techniques=promptsrc", "techniques.promptsrc.feature_weight=0",
                         "techniques.promptsrc.logit_weight=0",
                         "techniques.promptsrc.evaluate_average=false")
    assert src == plain
    regulated = _final_metrics("techniques=promptsrc",
                               "techniques.promptsrc.evaluate_average=false")
    assert regulated != plain


def test_promptsrc_reuses_gaussian_averaging_and_checks_its_templates():
    assert issubclass(PromptSRC, GaussianAveraging) and PromptSRC().every is None
    with pytest.raises(ValueError, match="templates"):
        PromptSRC(templates=("no slot",))


def test_promptsrc_textual_diversity_averages_the_templates():
    from heldout.methods.prompts.promptsrc import text_prototypes

    prompted = PromptedClassifier(_base(), torch.zeros(0, 16))
    got = text_prototypes(prompted, ["rain"], ("{}", "a report about {}"))
    expected = prompted.frozen_features(tokenize(["rain", "a report about rain"])).mean(0)
    assert torch.allclose(got[0], expected)


# --- GRAM ---------------------------------------------------------------------------------


def test_regulated_gradient_gate_by_hand():
    gate = regulated_gradient(torch.tensor([2.0, 2.0]), torch.tensor([0.0, math.log(3.0)]))
    assert gate.tolist() == pytest.approx([2.0, 2 * 2 * 0.75])


def test_gram_meta_step_is_first_order_maml_with_the_regulator():
    model = PromptedClassifier(_base(), initial_prompts(_base(), 2))
    ids, y = _ids(), torch.tensor([0, 1, 2, 0])
    support, query, alpha = (ids[:2], y[:2]), (ids[2:], y[2:]), 0.5
    regulator = torch.zeros_like(model.prompt, requires_grad=True)
    loss = gram_meta_step(model, regulator, support, query, alpha)
    loss.backward()
    # by hand: P' = P − α g_s (ψ = identity at ρ = 0); dL/dP = ∇L_q(P'),
    # dL/dρ = ∇L_q(P') ⊙ (−α g_s) ⊙ 2σ'(0) = −0.5 α g_s ⊙ ∇L_q(P')
    prompt = model.prompt.detach().clone().requires_grad_(True)
    g_s = torch.autograd.grad(F.cross_entropy(
        torch.func.functional_call(model, {"prompt": prompt}, (support[0],)), support[1]),
        prompt)[0]
    adapted = (prompt - alpha * g_s).detach().requires_grad_(True)
    query_loss = F.cross_entropy(
        torch.func.functional_call(model, {"prompt": adapted}, (query[0],)), query[1])
    g_q = torch.autograd.grad(query_loss, adapted)[0]
    assert float(loss.detach()) == pytest.approx(float(query_loss.detach()), rel=1e-6)
    assert torch.allclose(model.prompt.grad, g_q, atol=1e-6)
    assert torch.allclose(regulator.grad, -0.5 * alpha * g_s * g_q, atol=1e-7)


def test_gram_regulates_the_prompt_gradient_after_backward():
    from types import SimpleNamespace

    gram = GRAM(num_prompts=2)
    model = gram.transform_model(_base())
    model.get_buffer("regulator").fill_(math.log(3.0))  # gate 2·σ(log 3) = 1.5
    model.prompt.grad = torch.ones_like(model.prompt)
    gram.on_after_backward(SimpleNamespace(model=model))
    assert torch.allclose(model.prompt.grad, torch.full_like(model.prompt, 1.5))


def test_gram_with_zero_meta_steps_equals_prompt_tuning():
    plain = _final_metrics("techniques=prompt_tuning")
    assert _final_metrics("techniques=gram", "techniques.gram.meta_steps=0") == plain
    assert _final_metrics("techniques=gram", "techniques.gram.meta_steps=3") != plain


def test_gram_meta_learning_moves_the_init_and_sets_the_regulator(monkeypatch):
    task = register_text_task(monkeypatch)
    from heldout.run.assembly import build

    trainer = build(tiny_config(f"task={task}", "model=tiny_bert", "model.hidden=8",
                                "model.layers=1", "techniques=gram", "steps=1",
                                "techniques.gram.meta_steps=4"))
    start = trainer.model.prompt.detach().clone()
    trainer.fit()
    assert bool(trainer.model.get_buffer("meta_done"))
    assert trainer.model.get_buffer("regulator").abs().sum() > 0
    assert not torch.equal(trainer.model.prompt, start)
    assert GRAM().touches == {"model", "gradients"}


# --- Soft Prompt Generation ---------------------------------------------------------------


class _Constant(torch.nn.Module):
    def __init__(self, prompt):
        super().__init__()
        self.prompt = prompt

    def forward(self, features):
        return self.prompt.expand(len(features), -1, -1)


def test_a_constant_generator_equals_prompt_tuning_with_that_prompt():
    base, ids = _base(), _ids()
    prompt = initial_prompts(base, 3)
    tuned = PromptedClassifier(base, prompt).eval()(ids)
    generated = PromptedClassifier(base, prompt[:0], _Constant(prompt)).eval()(ids)
    assert torch.allclose(generated, tuned, atol=1e-6)


def test_prompt_generator_starts_at_its_base_prompt_and_depends_on_the_input():
    start = torch.randn(2, 16)
    generator = PromptGenerator(start, hidden=8)
    features = torch.randn(3, 16)
    assert torch.equal(generator(features), start.expand(3, -1, -1))
    with torch.no_grad():
        generator.mlp[2].weight.normal_()
    out = generator(features)
    assert not torch.allclose(out[0], out[1])


# --- OGEN ---------------------------------------------------------------------------------


def test_nearest_classes_and_uniform_cross_entropy_by_hand():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.2]])
    assert nearest_classes(keys, keys, 1, exclude_self=True).flatten().tolist() == [2, 2, 0]
    assert nearest_classes(torch.tensor([[0.1, 1.0]]), keys, 2).tolist() == [[1, 2]]
    with pytest.raises(ValueError, match="k must be"):
        nearest_classes(keys, keys, 3, exclude_self=True)
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = (1/4, 3/4)
    assert float(uniform_cross_entropy(logits)) == pytest.approx(
        -(math.log(0.25) + math.log(0.75)) / 2)


def _ogen_metrics(task, *overrides):
    cfg = tiny_config(f"task={task}", "model=tiny_bert", "model.hidden=8", "model.layers=1",
                      "batch_size=16", *overrides)
    return execute(cfg, Store(tempfile.mkdtemp())).metrics


def test_ogen_with_zero_weights_equals_the_frozen_classifier(monkeypatch):
    task = register_text_task(monkeypatch)
    frozen = _ogen_metrics(task, "techniques=prompt_tuning",
                           "techniques.prompt_tuning.num_prompts=0")
    zero = _ogen_metrics(task, "techniques=ogen", "techniques.ogen.synth_weight=0",
                         "techniques.ogen.unknown_weight=0", "techniques.ogen.distill_weight=0")
    assert zero == frozen
    assert _ogen_metrics(task, "techniques=ogen") != frozen


def test_ogen_terms_train_the_synthesizer_and_the_teacher_follows(monkeypatch):
    task = register_text_task(monkeypatch)
    from heldout.run.assembly import build

    trainer = build(tiny_config(f"task={task}", "model=tiny_bert", "model.hidden=8",
                                "model.layers=1", "techniques=ogen", "steps=4"))
    synth = [p.detach().clone() for p in trainer.model.synthesizer.parameters()]
    trainer.fit()
    after = list(trainer.model.synthesizer.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(synth, after, strict=True))
    ogen = trainer.techniques[0]
    assert isinstance(ogen, OGEN) and not torch.equal(ogen.state_dict()["weight"],
                                                      trainer.model.head.weight)


def test_ogen_refuses_names_outside_the_vocabulary():
    with pytest.raises(Exception, match="vocabulary"):
        execute(tiny_config(*TOKEN_SETTING, "techniques=ogen"), Store(tempfile.mkdtemp()))


def test_ogen_contract_checks_on_a_text_task(monkeypatch, tmp_path):
    """The contract tests' checks for ogen (it needs a text task: text_topics in the suite)."""
    task = register_text_task(monkeypatch)
    setting = (f"task={task}", "model=tiny_bert", "model.hidden=8", "model.layers=1",
               "batch_size=16", "techniques=ogen")
    first = execute(tiny_config(*setting), Store(tmp_path / "a"))
    second = execute(tiny_config(*setting), Store(tmp_path / "b"))
    assert first.status == "done" and first.metrics == second.metrics
    assert all(math.isfinite(v) for v in first.metrics.values())
    assert_resume_is_exact(tiny_config(*setting), tmp_path / "resume", monkeypatch)
