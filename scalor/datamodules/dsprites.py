"""Moving dSprites-style scenes: squares, ellipses, hearts and triangles in random colours and sizes
(``data=dsprites``; the experiments ``dsprites_easy|crowded|dense|discovery|background``)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from scalor.datamodules.base import Sprite, SpriteSceneDataModule, random_colours, require, tight

SHAPES = ("square", "ellipse", "heart", "triangle")


def shape_mask(shape: str, h: int, w: int) -> np.ndarray:
    """bool (h, w) silhouette of ``shape`` filling an h x w box, evaluated at pixel centres."""
    u = (np.arange(w) + 0.5) / w * 2 - 1  # -1 left .. 1 right
    v = (np.arange(h)[:, None] + 0.5) / h * 2 - 1  # -1 top .. 1 bottom
    if shape == "square":
        return np.ones((h, w), bool)
    if shape == "ellipse":
        return u**2 + v**2 <= 1
    if shape == "triangle":  # apex at the top
        return np.abs(u) <= (v + 1) / 2
    if shape == "heart":  # (x^2 + y^2 - 1)^3 <= x^2 y^3, x in [-1.15, 1.15], y from 1.25 (top) to -1 (bottom)
        x, y = 1.15 * u, 1.25 - 1.125 * (v + 1)
        return (x**2 + y**2 - 1) ** 3 <= x**2 * y**3
    raise ValueError(shape)


class DSpritesDataModule(SpriteSceneDataModule):
    """dSprites-style moving shapes with exact boxes and identities; keys of ``SpriteSceneDataModule`` plus
    ``shapes`` (any of square, ellipse, heart, triangle). Ellipses have an aspect ratio in [0.7, 1] along a
    random axis; triangles point in one of four directions."""

    name = "dsprites"

    def __init__(self, shapes: Sequence[str] = SHAPES, **kwargs) -> None:
        super().__init__(**kwargs)
        self.shapes = [str(s) for s in shapes]

    def check_settings(self) -> None:
        super().check_settings()
        require(len(self.shapes) >= 1 and set(self.shapes) <= set(SHAPES),
                f"data.shapes={self.shapes} must be a non-empty list drawn from {list(SHAPES)}.")

    def generation_config(self) -> dict:
        return {**super().generation_config(), "shapes": self.shapes}

    def make_sprite(self, rng: np.random.Generator, split: str) -> Sprite:
        shape = self.shapes[rng.integers(len(self.shapes))]
        side = int(rng.integers(self.min_size, self.max_size + 1))
        h = w = side
        if shape == "ellipse":
            short = max(1, int(round(side * rng.uniform(0.7, 1.0))))
            h, w = (short, side) if rng.random() < 0.5 else (side, short)
        mask = shape_mask(shape, h, w)
        if shape == "triangle":
            mask = np.rot90(mask, int(rng.integers(4)))
        if not mask.any():  # a 1-pixel sprite
            mask = np.ones_like(mask)
        rgb = np.broadcast_to(random_colours(rng, 1)[0], (*mask.shape, 3))
        return tight(rgb, mask, SHAPES.index(shape))
