import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tasks.attention import AttentionConfig, run_attention
from tasks.evaluate import run_evaluate
from tasks.finetune import FinetuneConfig, run_finetune
from tests.conftest import TINY_FINETUNE


def test_resume_continues_the_same_run(tmp_path, reasoning_dirs, checkpoint):
    """Kill after step 2 (keep its checkpoint, lose step 4), resume: same weights as the uninterrupted run."""
    run = tmp_path / "run"
    shutil.copytree(checkpoint.parent, run)
    shutil.rmtree(run / "step-4")
    summary = run_finetune(reasoning_dirs, run, FinetuneConfig(**TINY_FINETUNE))
    assert summary["resumed_from"] == 2 and summary["checkpoint"].endswith("step-4")
    a, b = load_file(checkpoint / "model.safetensors"), load_file(run / "step-4" / "model.safetensors")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    again = run_finetune(reasoning_dirs, run, FinetuneConfig(**TINY_FINETUNE))  # finished: nothing to do
    assert again["resumed_from"] == 4


def test_a_crashed_run_resumes_on_another_workers_mirror_of_shared_storage(tmp_path, reasoning_dirs, checkpoint, monkeypatch):
    """Worker A trained to step 2 and died; worker B (another mirror path) picks the run up from storage."""
    from pathlib import Path

    from data.storage import Workspace

    uri = (tmp_path / "bucket").as_uri()
    monkeypatch.setenv("REFINEVLA_CACHE_DIR", str(tmp_path / "worker-a"))
    a = Workspace(uri)
    for d in reasoning_dirs:
        shutil.copytree(d, a.root / "reasoning" / Path(d).name)
    shutil.copytree(checkpoint.parent, a.root / "checkpoints/run")
    shutil.rmtree(a.root / "checkpoints/run/step-4")
    a.push("reasoning", "checkpoints")

    monkeypatch.setenv("REFINEVLA_CACHE_DIR", str(tmp_path / "worker-b"))
    b = Workspace(uri)
    b.pull("reasoning", "checkpoints")
    summary = run_finetune([str(b.root / "reasoning" / Path(d).name) for d in reasoning_dirs], b.root / "checkpoints/run", FinetuneConfig(**TINY_FINETUNE))
    assert b.root != a.root and summary["resumed_from"] == 2 and summary["checkpoint"].endswith("step-4")


def test_lora_run_saves_merged_checkpoints_with_adapters_and_resumes(tmp_path, reasoning_dirs):
    from models.spatialvla.policy import load_checkpoint

    cfg = FinetuneConfig(**{**TINY_FINETUNE, "lora": True, "lora_rank": 4, "lora_alpha": 8.0, "learning_rate": 1e-2})
    full = run_finetune(reasoning_dirs, tmp_path / "a", cfg)
    step4 = tmp_path / "a" / "step-4"
    assert (step4 / "adapter" / "adapter_config.json").exists() and (tmp_path / "a" / "base" / "config.json").exists()
    assert full["params_trainable"] < full["params_total"] / 10 and full["lora_modules"] > 0
    load_checkpoint(step4)  # the merged checkpoint loads like any other
    base = load_file(tmp_path / "a" / "base" / "model.safetensors")
    merged = load_file(step4 / "model.safetensors")
    assert set(base) == set(merged) and any(not torch.equal(base[k], merged[k]) for k in base)
    assert all(torch.equal(base[k], merged[k]) for k in base if ".layers.0." in k or k.startswith("vision_tower."))  # frozen stays
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "step-4")
    resumed = run_finetune(reasoning_dirs, tmp_path / "b", cfg)
    assert resumed["resumed_from"] == 2
    again = load_file(tmp_path / "b" / "step-4" / "model.safetensors")
    for k in merged:
        assert torch.allclose(merged[k], again[k], atol=1e-6), k


def test_a_run_folder_holds_one_configuration(tmp_path, reasoning_dirs, checkpoint):
    run = tmp_path / "run"
    shutil.copytree(checkpoint.parent, run)
    with pytest.raises(ValueError, match="holds a run with other settings"):
        run_finetune(reasoning_dirs, run, FinetuneConfig(**{**TINY_FINETUNE, "reasoning_weight": 2.0}))


def test_training_writes_curves_and_history(checkpoint):
    state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
    assert [h["step"] for h in state["history"]] == [1, 2, 3, 4]
    h = state["history"][-1]
    assert h["loss"] == pytest.approx(h["loss_action"] + 0.5 * h["loss_reasoning"], rel=1e-5)
    assert 0 <= h["action_l1"] <= 2 and h["samples_per_s"] > 0 and h["tokens_per_s"] > 0
    png = Image.open(checkpoint.parent / "training_curves.png")
    assert png.size[0] > 500


def test_evaluate_writes_tables_and_sane_metrics(tmp_path, checkpoint, reasoning_dirs):
    s = run_evaluate(checkpoint, reasoning_dirs, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())["per_dataset"]
    assert set(metrics) == {"bridge_orig/1.0.0", "fractal20220817_data/0.1.0", "all"}
    assert metrics["all"]["samples"] == s["samples"] == sum(m["samples"] for k, m in metrics.items() if k != "all")
    for m in metrics.values():
        assert 0 <= m["action_token_acc"] <= 1 and 0 <= m["reasoning_token_acc"] <= 1 and 0 <= m["gripper_acc"] <= 1
        assert all(m[f"floor_l1_{d}"] <= 0.05 for d in ("x", "y", "z"))
    table = (tmp_path / "results.md").read_text()
    assert "| **all** |" in table and "bridge_orig/1.0.0" in table
    gens = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert len(gens) == 2 and np.array(gens[0]["actions"]).shape == (4, 7)


def test_attention_pngs_comparison_and_object_scores(tmp_path, checkpoint, reasoning_dirs, bridge_dir, fractal_dir):
    earlier = checkpoint.parent / "step-2"
    cfg = AttentionConfig(num_samples=2, top_k=4, compare_checkpoint=str(earlier), label="step-4", compare_label="step-2",
                          object_boxes_from=[str(bridge_dir), str(fractal_dir)])
    out = run_attention(checkpoint, reasoning_dirs, tmp_path, cfg)
    assert len(out["pngs"]) == 4  # 2 steps x 2 checkpoints
    for png in out["pngs"]:
        img = Image.open(png)
        assert img.format == "PNG" and img.size[0] > img.size[1] > 200
        heat = np.load(png.replace(".png", ".npy"))
        assert heat.shape == (16, 16) and abs(heat.sum() - 1) < 1e-5 and (heat >= 0).all()
    grid = Image.open(out["comparison"])
    assert grid.size == (1200, 800)  # 2 rows x (input + 2 checkpoints) at 4 in x 100 dpi
    # the sample data knows its object boxes: every step is scored, per checkpoint, beside the chance level
    for label in ("step-4", "step-2"):
        s = out["scores"][label]
        assert s["scored"] == 2 and 0 <= s["object_mass_mean"] <= 1 and 0 < s["uniform_mean"] < 1
    assert out["scores"]["step-4"]["per_step"] != out["scores"]["step-2"]["per_step"]
    assert "| step-2 | 2 of 2 |" in (tmp_path / "scores.md").read_text()


def test_two_process_ddp_run_through_torchrun(tmp_path, reasoning_dirs):
    """nproc_per_node=2 on CPU: torchrun + gloo; rank 0 saves a loadable checkpoint and reports the world size."""
    from models.spatialvla.policy import load_checkpoint

    cfg = FinetuneConfig(**{**TINY_FINETUNE, "batch_size": 2, "max_steps": 2, "save_steps": 2, "max_reasoning_tokens": 32, "nproc_per_node": 2})
    s = run_finetune(reasoning_dirs, tmp_path / "ddp", cfg)
    assert s["world_size"] == 2 and s["steps"] == 2 and s["checkpoint"].endswith("step-2")
    assert [h["step"] for h in torch.load(tmp_path / "ddp" / "step-2" / "trainer_state.pt", weights_only=False)["history"]] == [1, 2]
    load_checkpoint(tmp_path / "ddp" / "step-2")
