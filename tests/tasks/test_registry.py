from tasks.tracking import TrackingConfig, start_run


def test_final_checkpoint_is_registered_with_its_data_and_config(tmp_path):
    from mlflow import MlflowClient

    (tmp_path / "step-4").mkdir()
    (tmp_path / "step-4" / "config.json").write_text("{}")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = start_run(TrackingConfig(uri=uri, system_metrics=False), tmp_path, "run")
    assert tracker.register_model("refinevla-my run", tmp_path / "step-4", {"datasets": "a,b", "config": "{}"}) == "1"
    assert tracker.register_model("refinevla-my run", tmp_path / "step-4", {"datasets": "a,b", "config": "{}"}) == "2"
    v = MlflowClient(tracking_uri=uri).get_model_version("refinevla-my-run", "2")
    assert v.source.endswith("/step-4") and v.tags["datasets"] == "a,b" and v.run_id == tracker.ref.run_id


def test_a_finished_run_entered_again_registers_nothing_new(tmp_path, reasoning_dirs, checkpoint):
    import shutil

    from mlflow import MlflowClient

    from tasks.finetune import FinetuneConfig, run_finetune
    from tests.conftest import TINY_FINETUNE

    run = tmp_path / "run"
    shutil.copytree(checkpoint.parent, run)  # a finished run (step-4 of 4)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = start_run(TrackingConfig(uri=uri, system_metrics=False), tmp_path, "again")
    assert run_finetune(reasoning_dirs, run, FinetuneConfig(**TINY_FINETUNE), tracker)["resumed_from"] == 4
    assert MlflowClient(tracking_uri=uri).search_model_versions("name='refinevla-run'") == []
