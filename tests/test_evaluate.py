"""Personalization and evaluation: the metrics contract, and that each figure is computed on what it claims."""

import json

import numpy as np
import torch
from conftest import dvc

from regl.evaluation.scoring import accuracy, confusion_matrix, macro_accuracy, per_class_accuracy

CONTRACT = {"global_accuracy", "macro_accuracy", "per_class_accuracy", "personalized_accuracy_mean",
            "personalized_accuracy_std", "per_client"}


def test_per_class_accuracy_agrees_with_the_confusion_matrix():
    gen = np.random.default_rng(0)
    actual = gen.integers(0, 5, 400)
    predicted = np.where(gen.random(400) < 0.6, actual, gen.integers(0, 5, 400))
    cm = confusion_matrix(actual, predicted, 5)
    assert cm.sum() == 400 and cm[2, 3] == np.sum((actual == 2) & (predicted == 3))
    for k, acc in enumerate(per_class_accuracy(cm)):
        assert acc == np.mean(predicted[actual == k] == k)
    assert accuracy(actual, predicted) == np.trace(cm) / cm.sum() == np.mean(actual == predicted)
    assert np.isclose(macro_accuracy(cm), np.mean([np.mean(predicted[actual == k] == k) for k in range(5)]))
    assert np.isnan(per_class_accuracy(confusion_matrix(np.array([0]), np.array([0]), 2))[1])


def test_pipeline_end_to_end_metrics_plots_and_local_views(reproduced):
    repo = reproduced
    result = json.loads((repo / "metrics/eval.json").read_text())
    assert CONTRACT <= set(result)
    assert len(result["per_class_accuracy"]) == 10 and len(result["per_client"]) == 3
    # ReGL by default: every client trains on 2 synthetic images of each of the 10 classes (tiny settings)
    assert result["real_images"] == 900 and result["synthetic_images"] == 3 * 10 * 2
    train = json.loads((repo / "metrics/train.json").read_text())
    assert result["global_accuracy"] == train["accuracy"]  # the same model on the same test set
    for name in ("confusion_matrix.png", "label_distribution_synthetic.png", "predictions.csv"):
        assert (repo / "plots" / name).stat().st_size > 0
    assert len(list((repo / "plots/class_accuracy").glob("client_*.png"))) == 3

    # personalized accuracy is the personal model's accuracy on the client's local test view, and only there
    from regl.training.modelio import load_model
    from regl.data.shards import read_shard
    from regl.data.tensors import shard_tensors

    personal = json.loads((repo / "metrics/personalize.json").read_text())["per_client"]
    for cid in ("0", "2"):
        model, _ = load_model(repo / f"models/personal/client_{cid}.safetensors")
        x, y = shard_tensors(read_shard(repo / f"data/local_test/client_{cid}.parquet"), 1)
        with torch.no_grad():
            local = (model.eval()(x).argmax(1) == y).float().mean().item()
        assert personal[cid]["accuracy_after"] == round(local, 6)
        assert result["per_client"][cid]["personalized_accuracy"] == personal[cid]["accuracy_after"]
    assert "up to date" in dvc("repro", cwd=repo).stdout
