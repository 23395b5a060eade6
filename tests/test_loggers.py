"""Experiment loggers (robopretrain.loggers): TensorBoard by default, wandb with ``logger=wandb`` (offline here),
both fed the scalars that go to ``metrics.jsonl``, the config, and the pipeline report's plots."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import matplotlib
import pytest
from omegaconf import OmegaConf

from robopretrain.loggers import LoggerSettings, NullLogger, TensorBoardLogger, WandbLogger, make_logger
from robopretrain.metrics import read_jsonl

matplotlib.use("Agg")
REPO = Path(__file__).resolve().parents[1]
HAS_WANDB = importlib.util.find_spec("wandb") is not None


def png(path: Path, height: int = 20, width: int = 30) -> Path:
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(width / 10, height / 10), dpi=10)
    fig.add_subplot().plot([0, 1], [1, 0])
    fig.savefig(path)
    plt.close(fig)
    return path


def tensorboard_events(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def test_logger_group_files_match_the_settings_dataclass():
    """configs/logger/*.yaml name the three loggers; wandb.yaml's values are the dataclass defaults (no drift)."""
    files = {p.stem: OmegaConf.to_container(OmegaConf.load(p)) for p in (REPO / "configs" / "logger").glob("*.yaml")}
    assert sorted(files) == ["none", "tensorboard", "wandb"]
    for name, spec in files.items():
        assert LoggerSettings.from_mapping(spec).name == name
    assert LoggerSettings.from_mapping(files["wandb"]) == LoggerSettings(name="wandb")
    with pytest.raises(ValueError, match=r"unknown logger config key\(s\) \['projekt'\]"):
        LoggerSettings.from_mapping({"name": "wandb", "projekt": "x"})
    with pytest.raises(ValueError, match="logger='mlflow'; expected one of tensorboard, wandb, none"):
        LoggerSettings.from_mapping("mlflow")


def test_make_logger_picks_the_backend(tmp_path):
    assert isinstance(make_logger(None, tmp_path / "a"), TensorBoardLogger)
    assert isinstance(make_logger({"name": "tensorboard"}, tmp_path / "b", tensorboard=False), NullLogger)
    assert isinstance(make_logger("none", tmp_path / "c"), NullLogger)


def test_missing_wandb_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(ValueError, match=r"logger=wandb needs the wandb package: pip install -e '\.\[wandb\]'"):
        make_logger("wandb", tmp_path)


def test_tensorboard_logger_writes_scalars_config_and_images(tmp_path):
    logger = make_logger(None, tmp_path, config={"algo": {"name": "calql"}})
    logger.scalars(2, {"train/loss": 0.5, "eval/success": 1, "note": "text", "bad": float("nan"), "flag": True})
    logger.scalars(4, {"train/loss": 0.25})
    logger.images(None, {"curve": png(tmp_path / "curve.png")})
    logger.close()
    events = tensorboard_events(tmp_path / "tb")
    assert sorted(events.Tags()["scalars"]) == ["eval/success", "train/loss"]
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(2, 0.5), (4, 0.25)]
    (image,) = events.Images("curve")
    assert (image.step, image.height, image.width) == (4, 20, 30)
    assert "calql" in json.dumps([t.tensor_proto.string_val[0].decode() for t in events.Tensors("config/text_summary")])


def test_metrics_logger_takes_numpy_and_torch_scalars_as_numbers(tmp_path):
    """A 0-d tensor, a 0-d array and np.bool_ raised "not JSON serializable" (only np.floating / np.integer were
    converted): each is written as its Python number, a NaN as null, and the finite ones reach TensorBoard."""
    import numpy as np
    import torch

    from robopretrain.metrics import MetricsLogger

    logger = MetricsLogger(tmp_path, tensorboard=True)
    logger.log(3, {"t": torch.tensor(1.5), "a": np.array(2.5), "b": np.bool_(True), "i": np.int64(4),
                   "n": torch.tensor(float("nan")), "s": "text"}, prefix="train/")
    logger.close()
    (row,) = read_jsonl(tmp_path / "metrics.jsonl")
    assert row == {"step": 3, "train/t": 1.5, "train/a": 2.5, "train/b": True, "train/i": 4, "train/n": None,
                   "train/s": "text"}
    assert {"train/t", "train/a", "train/i"} <= set(tensorboard_events(tmp_path / "tb").Tags()["scalars"])


def test_pipeline_names_each_stage_run_and_logs_the_report(tmp_path):
    from robopretrain.pipeline import stage_logger
    from robopretrain.report import log_report

    cfg = OmegaConf.create({"name": "default", "logger": {"name": "wandb", "project": "p", "group": None,
                                                          "run_name": None}})
    assert stage_logger(cfg, "stage3/OpenDoorRight") == {"name": "wandb", "project": "p", "group": "default",
                                                        "run_name": "stage3/OpenDoorRight"}
    assert stage_logger(OmegaConf.create({"logger": {"name": "tensorboard"}}), "stage2") == {"name": "tensorboard"}
    assert stage_logger(OmegaConf.create({}), "stage2") is None
    (tmp_path / "evaluate" / "robustness").mkdir(parents=True)
    (tmp_path / "evaluate" / "results.json").write_text(json.dumps(
        {"OpenDoorRight": {"nominal": {"success": 0.75}, "randomized": {"success": 0.5}}}))
    plots = [png(tmp_path / "evaluate" / "stage3_success.png"), png(tmp_path / "evaluate" / "robustness" / "r.png")]
    assert sorted(log_report(OmegaConf.create({"name": "default"}), tmp_path, None)) == sorted(plots)
    events = tensorboard_events(tmp_path / "tb")
    assert {t: events.Scalars(t)[0].value for t in events.Tags()["scalars"]} == {
        "final/OpenDoorRight/nominal": 0.75, "final/OpenDoorRight/randomized": 0.5}
    assert sorted(events.Tags()["images"]) == ["robustness/r", "stage3_success"]


@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed (pip install -e '.[wandb]')")
def test_stage2_logs_the_same_scalars_and_config_to_wandb_offline(tmp_path, monkeypatch):
    """logger=wandb in offline mode (no network): every metrics.jsonl row reaches wandb, with the run's config; a
    rerun continues the same wandb run."""
    from _stages import collect_sim, stage2_config

    from robopretrain.train import run

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    sent, configs = [], []
    scalars, close = WandbLogger.scalars, WandbLogger.close

    def record_scalars(self, step, values):
        sent.append((step, dict(values)))
        scalars(self, step, values)

    def record_close(self):
        configs.append(dict(self.run.config))
        close(self)

    monkeypatch.setattr(WandbLogger, "scalars", record_scalars)
    monkeypatch.setattr(WandbLogger, "close", record_close)
    data = collect_sim(tmp_path / "reach.hdf5", ["Reach"], episodes=2)
    out = tmp_path / "run"
    logger = {"name": "wandb", "mode": "offline", "project": "tests"}
    run(stage2_config(data, out, steps=4, train={"tensorboard": True}, logger=logger))
    rows = read_jsonl(out / "metrics.jsonl")
    assert len(rows) >= 3 and len(sent) == len(rows)
    for (step, values), row in zip(sent, rows):
        assert step == row["step"] and values == {k: v for k, v in row.items() if k != "step"}
    assert configs[0]["algo"]["name"] == "calql" and configs[0]["train"]["steps"] == 4
    run_id = (out / "wandb_run_id").read_text()
    assert len(list((out / "wandb").glob(f"offline-run-*-{run_id}"))) == 1
    assert not (out / "tb").exists()  # wandb instead of TensorBoard, not both
    run(stage2_config(data, out, steps=6, train={"tensorboard": True}, logger=logger))  # resumes at step 4
    assert (out / "wandb_run_id").read_text() == run_id
    assert [s for s, _ in sent][-1] == 6
