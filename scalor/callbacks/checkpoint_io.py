"""Atomic checkpoint files: write a temporary file in the target folder, fsync, then rename over the target."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, made atomic for local paths.

    Lightning's own ``_atomic_save`` writes through an fsspec transaction whose temporary file lives in the
    system temp folder; when that is another file system, the final move is a copy and a crash mid-copy leaves
    a truncated checkpoint. Here the temporary file ``.<name>.<pid>.part`` is in the same folder, flushed and
    fsynced, then ``os.replace``d onto the target, which is atomic on POSIX and Windows: a reader sees the old
    file or the new one, never a partial one. On any error the temporary file is removed. Remote URLs
    (``s3://`` ...) keep Lightning's behaviour.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
