"""VisualizationCallback: panels, videos and tables, as files (CSV logger) and in an offline wandb run."""

from __future__ import annotations

import csv
import logging

import cv2
import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from torch.utils.data import DataLoader, Dataset

from scalor.callbacks.visualize import ROWS, VisualizationCallback, render_panels
from scalor.model import SCALOR, Schedule

torch.set_num_threads(1)

T, H = 3, 64


def tiny_model() -> SCALOR:
    torch.manual_seed(0)
    model = SCALOR.from_config(img_size=H, num_cell_h=4, num_cell_w=4, glimpse_size=16, max_num_obj=6)
    with torch.no_grad():
        model.discovery.proposal.pres_head[-1].bias.fill_(0.5)  # an untrained model that finds objects
    return model


class Squares(Dataset):
    """Sequences of a moving square, as the datamodules' batches: {"video": (T, 3, H, W)}."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        v = torch.zeros(T, 3, H, H)
        for t in range(T):
            v[t, :, 10 + 3 * t + i:22 + 3 * t + i, 20:32] = 1.0
        return {"video": v}


class TinyModule(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = tiny_model()
        self.schedules: list[int] = []

    def schedule_at(self, step: int) -> Schedule:
        self.schedules.append(step)
        return Schedule(tau=0.5, z_pres_prior=1e-3)

    def training_step(self, batch, batch_idx):
        return self.model(batch["video"], Schedule()).neg_elbo.mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/neg_elbo", self.model(batch["video"], Schedule()).neg_elbo.mean(), batch_size=2)

    def configure_optimizers(self):
        return torch.optim.RMSprop(self.parameters(), lr=1e-5)

    def train_dataloader(self):
        return DataLoader(Squares(), batch_size=2)

    def val_dataloader(self):
        return DataLoader(Squares(), batch_size=2)


def fit(tmp_path, logger, **kw):
    callback = VisualizationCallback(every_n_steps=1, num_sequences=2, fps=4, **kw)
    module = TinyModule()
    trainer = L.Trainer(max_steps=2, logger=logger, callbacks=[callback], accelerator="cpu", devices=1,
                        default_root_dir=tmp_path, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=1, num_sanity_val_steps=1,
                        val_check_interval=2)
    trainer.fit(module)
    return callback, module, trainer


def read_frames(path):
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def test_render_panels_layout():
    model = tiny_model().eval()
    video = torch.stack([Squares()[i]["video"] for i in range(2)])
    with torch.no_grad():
        out = model(video, Schedule(tau=0.5), visuals=True)
    panels = render_panels(video, out, min_side=128)
    assert len(panels) == 2
    grid, frames = panels[0]
    # rows of 128 px (64 enlarged twice) with 1 px padding; a label column on the left
    assert grid.dtype == np.uint8 and grid.shape[0] == len(ROWS) * 129 + 1
    assert grid.shape[1] > T * 129 + 1
    assert len(frames) == T and frames[0].shape == (128, 2 * 128 + 2, 3)
    assert grid.std() > 0  # something drawn


def test_callback_writes_files_with_csv_logger(tmp_path, caplog):
    logger = CSVLogger(tmp_path, name="csv")
    with caplog.at_level(logging.INFO, logger="scalor.callbacks.visualize"):
        callback, module, trainer = fit(tmp_path, logger)
    media = tmp_path / "csv" / "version_0" / "media"
    # step 1 and 2 from the training hook (on the stored validation batch); validation at step 2 adds nothing
    assert sorted(p.name for p in media.iterdir()) == ["step_1", "step_2"]
    for step in ("step_1", "step_2"):
        folder = media / step
        for i in range(2):
            img = cv2.imread(str(folder / f"val_panels_{i}.png"))
            assert img is not None and img.shape[0] == len(ROWS) * 129 + 1
            assert read_frames(folder / f"val_tracking_{i}.mp4") == T
        with open(folder / "val_sequences.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == 2 and {"neg_elbo", "kl_pres", "count_mean", "num_ids", "step"} <= set(rows[0])
        assert rows[0]["step"] == step.split("_")[1]
    assert sum("cannot show images" in r.getMessage() for r in caplog.records) == 1  # said once
    assert module.schedules == [1, 2]  # the module's schedule was used
    assert module.model.training  # train mode restored


def test_callback_uses_train_batch_without_validation(tmp_path):
    callback = VisualizationCallback(every_n_steps=2, num_sequences=1, media_dir=str(tmp_path / "media"))
    module = TinyModule()
    trainer = L.Trainer(max_steps=2, logger=False, callbacks=[callback], accelerator="cpu", devices=1,
                        default_root_dir=tmp_path, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module)
    assert sorted(p.name for p in (tmp_path / "media" / "step_2").iterdir()) == [
        "train_panels_0.png", "train_sequences.csv", "train_tracking_0.mp4"]


def test_callback_logs_to_offline_wandb(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="scalor-test")
    try:
        callback, _, _ = fit(tmp_path, logger)
    finally:
        import wandb

        wandb.finish()
    run_dirs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1
    media = run_dirs[0] / "files" / "media"
    images = list((media / "images").rglob("*.png"))
    videos = list((media / "videos").rglob("*.webm")) + list((media / "videos").rglob("*.mp4"))
    tables = list((media / "table").rglob("*.table.json"))
    assert len(images) == 4 and len(videos) == 4 and len(tables) == 2  # 2 sequences x steps 1, 2
    assert all(read_frames(v) == T for v in videos)
