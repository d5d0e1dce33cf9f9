"""Out-of-sample scores of PatchCore's own training images, for the few-shot start (trainer/few_shot.py).

With a handful of good images nothing can be held out of the bank without starving it, so each image is scored by
the bank of the others instead: leave one out. Features are extracted once; each round rebuilds the bank from the
other images' patch rows through `build_bank`, the fit's own code, so the score is exactly a fit without the image
would give (the coreset and the int8 scales follow the bank, so masking a distance matrix would not be exact). A
few images are at most a few thousand patches, which the default bank keeps whole: a round costs one bank
encoding and one image's search, not a feature extraction.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np
import torch

from trainer.models.prediction import Prediction

if TYPE_CHECKING:
    from trainer.models.patchcore.model import PatchCore

# A single image is cut into this many blocks of its patch grid (rows x columns), each scored against a bank of
# the others: the nearest stand-in for another good part the image itself holds. Quadrants keep every block a
# quarter of the part, large enough to hold its normal texture, and give 4 scores to calibrate on.
BLOCK_ROWS, BLOCK_COLUMNS = 2, 2


def _as_maps(features: np.ndarray, grid: tuple[int, int, int]) -> torch.Tensor:
    h, w, d = grid
    return torch.from_numpy(features).reshape(-1, h, w, d).permute(0, 3, 1, 2)


def leave_groups_out(
    model: PatchCore, features: np.ndarray, grid: tuple[int, int, int], groups: np.ndarray
) -> Prediction:
    """Each input's prediction (inputs in order) from a bank built without its group's patch rows. `features`:
    (inputs * h * w) x D patch rows, input by input; `groups`: the good image each input came from. The model is
    left holding the last round's bank; the caller builds the final one."""
    h, w, _ = grid
    owner = np.repeat(groups, h * w)
    maps = _as_maps(features, grid)
    scores = torch.zeros(len(groups))
    amaps: list[torch.Tensor | None] = [None] * len(groups)
    for group in np.unique(groups):
        model.build_bank(features[owner != group])
        inputs = np.flatnonzero(groups == group)
        predicted = model.score_features(maps[inputs])
        scores[inputs] = predicted.score
        for row, index in enumerate(inputs):
            amaps[index] = predicted.anomaly_map[row]
    return Prediction(torch.stack([a for a in amaps if a is not None]), scores)


def held_out_blocks(model: PatchCore, features: np.ndarray, grid: tuple[int, int, int]) -> torch.Tensor:
    """Every block of every input scored against a bank of all patches but that block's, block-major (block 0
    of each input, then block 1 ...). A block is scored as a part of its own size: its map is upsampled to its
    share of the input, and its score is that map's maximum, reweighted as an image's."""
    h, w, _ = grid
    height, width = model.recipe.input_size
    maps = _as_maps(features, grid)
    inputs = len(maps)
    row_edges = np.linspace(0, h, BLOCK_ROWS + 1).round().astype(int)
    column_edges = np.linspace(0, w, BLOCK_COLUMNS + 1).round().astype(int)
    scores: list[torch.Tensor] = []
    for top, bottom in itertools.pairwise(row_edges):
        for left, right in itertools.pairwise(column_edges):
            in_block = np.zeros((inputs, h, w), bool)
            in_block[:, top:bottom, left:right] = True
            for index in range(inputs):
                others = np.ones_like(in_block)
                others[index] = ~in_block[index]
                model.build_bank(features[others.reshape(-1)])
                block = maps[index : index + 1, :, top:bottom, left:right]
                size = (round(height * (bottom - top) / h), round(width * (right - left) / w))
                scores.append(model.score_features(block, size).score)
    return torch.cat(scores)
