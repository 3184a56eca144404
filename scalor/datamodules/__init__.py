"""LightningDataModules, one per source; batches follow docs/model.md §7.1 (see ``base``)."""

from scalor.datamodules.base import BaseDataModule, SpriteSceneDataModule
from scalor.datamodules.dsprites import DSpritesDataModule
from scalor.datamodules.grand_central import GrandCentralDataModule
from scalor.datamodules.mnist import MovingMNISTDataModule
from scalor.datamodules.video import VideoDataModule, iter_frames, video_fps

__all__ = ["BaseDataModule", "SpriteSceneDataModule", "DSpritesDataModule", "MovingMNISTDataModule",
           "GrandCentralDataModule", "VideoDataModule", "iter_frames", "video_fps"]
