"""The evaluation task registry: the built-in tasks' records, and a new task registered from a
test (one class, one ``register_task``) used by ``evaluate_run`` / ``oats.evaluate`` and
reported with its primary metric and direction, with no other file touched."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

import oats
from oats import OatsConfig, compress_model, report
from oats.core.linear import use_mode
from oats.errors import ConfigError, DataError
from oats.evaluation import (PRIMARY_METRIC, CausalLMEvaluator, EncoderEvaluator, Evaluator, VisionEvaluator,
                             a_model_of, evaluate_run, evaluation_tokens, primary_metric, register_task, task_of,
                             tasks, unregister_task)
from oats.explain import verdict
from oats.models.loaded import LoadedModel
from tiny_models import batches, tiny_llama

CFG = OatsConfig(compression=0.5, rank_ratio=0.25, iterations=3)


def test_builtin_tasks_records():
    got = {t.name: (t.primary, t.higher_is_better, t.evaluator, t.models) for t in tasks()}
    assert got == {"causal-lm": ("perplexity", False, CausalLMEvaluator, ("causal-lm",)),
                   "encoder": ("cosine", True, EncoderEvaluator, ("encoder",)),
                   "vision": ("cls_cosine", True, VisionEvaluator, ("vision",))}
    assert dict(PRIMARY_METRIC) == {"causal-lm": ("perplexity", False), "encoder": ("cosine", True),
                                    "vision": ("cls_cosine", True)}
    assert primary_metric(None) is None and primary_metric("nope") is None
    assert verdict.primary_metric("encoder") == ("cosine", True) and verdict.task_of("cls_cosine") == "vision"
    assert [a_model_of(t) for t in ("causal-lm", "encoder", "vision", "toy", None)] == [
        "a causal language model", "a sentence encoder", "a vision model", "a toy model", "a model of an unknown kind"]
    with pytest.raises(ConfigError, match="already registered"):
        register_task("encoder", primary="x", higher_is_better=True, model_kind="x")(EncoderEvaluator)


class ToyEvaluator(Evaluator):
    """Mean absolute difference of the last position's logits from the dense model's on fixed
    token batches (lower is better)."""

    def prepare(self, q, text, image_folder):
        self._batches = batches(seed=7, n=2 - q)
        self.settings.update(batches=len(self._batches))
        return {"": self._batches}

    @torch.no_grad()
    def _logits(self, model):
        return torch.cat([model(**b).logits[:, -1] for b in self._batches])

    def reference(self, model):
        with use_mode(model, "dense"):
            return self._logits(model)

    def metrics(self, model, ref):
        return {"logit_gap": float((self._logits(model) - ref).abs().mean())}

    def tokens_per_pass(self):
        return sum(b["input_ids"].numel() for b in self._batches)


@pytest.fixture
def toy_task():
    register_task("toy-task", primary="logit_gap", higher_is_better=False, model_kind="toy language model",
                  models=("toy",))(ToyEvaluator)
    try:
        yield
    finally:
        unregister_task("toy-task")


def _toy_run():
    loaded = LoadedModel(name="toy", model=tiny_llama(), task="toy")
    run = compress_model(loaded.model, batches(), CFG, model_name="toy")
    run.loaded = loaded
    return loaded, run


def test_a_task_registered_from_a_test_is_used_and_reported(toy_task):
    loaded, run = _toy_run()
    assert PRIMARY_METRIC["toy-task"] == ("logit_gap", False) and primary_metric("toy") == ("logit_gap", False)
    assert task_of("logit_gap") == "toy-task" and a_model_of("toy") == "a toy language model"
    res = evaluate_run(run, loaded, modes=("dense", "both", "sparse"))
    assert list(res) == ["dense", "both", "sparse"]
    assert res["dense"] == {"logit_gap": 0.0} and res["both"]["logit_gap"] > 1e-4
    assert res["sparse"]["logit_gap"] > 1e-4 and res["sparse"] != res["both"]
    assert evaluation_tokens(loaded) == 2 * 2 * 12 and evaluation_tokens(loaded, quick=True) == 2 * 12
    ev = oats.evaluate(run, quick=True)
    assert (ev.task, ev.primary, ev.higher_is_better) == ("toy-task", "logit_gap", False)
    assert ev.settings == {"task": "toy-task", "quick": True, "batches": 1, "domains": []}
    assert ev.value("dense") == 0.0 and ev.value("both") > 1e-4
    # the report and the verdict ask the registry too
    info = SimpleNamespace(task="toy", model_name="toy")
    assert report.primary(info, res) == ("logit_gap", False)
    assert verdict.primary_metric("toy-task") == ("logit_gap", False)


def test_an_unregistered_task_is_one_clear_error(toy_task):
    loaded, run = _toy_run()
    unregister_task("toy-task")
    assert "toy-task" not in PRIMARY_METRIC and primary_metric("toy") is None
    with pytest.raises(DataError, match=r"no evaluation for task 'toy': expected one of causal-lm, encoder, vision"):
        evaluate_run(run, loaded)
    with pytest.raises(DataError, match="no evaluation for task 'vision2'"):
        Evaluator(dataclasses.replace(loaded, task="vision2"))


def test_evaluate_run_checks_modes_with_the_registry(toy_task):
    loaded, run = _toy_run()
    with pytest.raises(ConfigError, match="unknown variant 'foo': choose among dense, both, sparse, lowrank"):
        evaluate_run(run, loaded, modes=("both", "foo"))
    with pytest.raises(ConfigError, match="no variant given"):
        evaluate_run(run, loaded, modes=())
    with pytest.raises(ConfigError, match="unknown variant 'foo'"):
        oats.evaluate(run, modes=("dense", "foo"), quick=True)
