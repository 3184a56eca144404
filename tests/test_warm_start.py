"""init_from=PATH: a fit starts from every weight of another run's checkpoint whose name and shape match."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from scalor.errors import ConfigError
from scalor.tasks import build_module, run
from scalor.warm_start import warm_start


@pytest.fixture
def quick_ckpt(compose_cfg) -> Path:
    """A one-step fit of the quick experiment without a background module (64 px, 4x4 grid, 16 px glimpses)."""
    cfg = compose_cfg("trainer.max_steps=1", "model.no_background=true", run="source")
    run(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"


def test_matching_weights_are_loaded_and_the_others_kept(compose_cfg, quick_ckpt):
    saved = {k[len("model."):]: v for k, v in torch.load(quick_ckpt, map_location="cpu",
                                                          weights_only=True)["state_dict"].items()}
    # another grid (8x8: the image encoder's last layers change shape) and a background module (not in the source)
    module = build_module(compose_cfg("grid=8x8", run="target"))
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    report = warm_start(module.model, str(quick_ckpt))
    after = module.model.state_dict()
    assert report.loaded and report.other_shape and report.not_in_checkpoint
    assert any(name.startswith("glimpse_decoder.") for name in report.loaded)
    assert all(name.startswith("background.") for name in report.not_in_checkpoint)
    for name in report.loaded:
        assert torch.equal(after[name], saved[name]), name
    for name in report.other_shape + report.not_in_checkpoint:
        assert torch.equal(after[name], before[name]), name
    assert sorted(report.loaded + report.other_shape + report.not_in_checkpoint) == sorted(after)
    assert 0 < report.loaded_values < report.total_values == sum(v.numel() for v in after.values())
    assert f"{len(report.loaded)} of {len(after)} weight tensors loaded" in report.line()


def test_fit_with_init_from_reports_what_it_loaded(compose_cfg, quick_ckpt, capsys):
    cfg = compose_cfg("trainer.max_steps=1", "grid=8x8", f"init_from={quick_ckpt}", run="warm")
    run(cfg)
    report = json.loads((Path(cfg.paths.output_dir) / "init_from.json").read_text())
    assert report["path"] == str(quick_ckpt) and report["loaded"] and report["other_shape"]
    assert f"init_from={quick_ckpt}: {len(report['loaded'])} of" in capsys.readouterr().out
    # resuming that run takes its weights from its own checkpoint, not from init_from again
    resumed = compose_cfg("trainer.max_steps=2", "grid=8x8", f"init_from={quick_ckpt}",
                          f"ckpt_path={Path(cfg.paths.output_dir) / 'checkpoints' / 'last.ckpt'}", run="resumed")
    capsys.readouterr()
    run(resumed)
    assert not (Path(resumed.paths.output_dir) / "init_from.json").exists()
    assert f"init_from={quick_ckpt} is not read: the fit resumes from ckpt_path=" in capsys.readouterr().out


def test_bad_init_from_is_one_error_line(compose_cfg, quick_ckpt, tmp_path):
    tensor = tmp_path / "tensor.ckpt"
    torch.save(torch.zeros(3), tensor)
    cases = [(["init_from=/no/such.ckpt"], "init_from=/no/such.ckpt is not a file"),
             ([f"init_from={tensor}"], "holds no SCALOR weights"),
             (["task=test", f"ckpt_path={quick_ckpt}", f"init_from={quick_ckpt}"], "starts a fit from trained weights")]
    empty = tmp_path / "empty.ckpt"
    torch.save({"state_dict": {}}, empty)
    cases.append(([f"init_from={empty}"], "holds no SCALOR weights"))
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"model.unrelated.weight": torch.zeros(3)}}, foreign)
    cases.append(([f"init_from={foreign}"], "shares no weight of the same name and shape"))
    for overrides, message in cases:
        with pytest.raises(ConfigError) as err:
            run(compose_cfg("trainer.max_steps=1", *overrides, run="bad"))
        assert message in str(err.value) and "\n" not in str(err.value)


def test_cli_missing_init_from_exits_2(tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "run.py", f"paths.output_root={tmp_path / 'out'}",
                           f"paths.data_dir={tmp_path / 'data'}", "init_from=/no/such.ckpt"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: init_from=/no/such.ckpt is not a file; pass a .ckpt written "
                                                "by `python run.py` (task=fit)."]
    assert not (tmp_path / "data").exists()
