"""The shipped ImageNet weights load into our Lite0 and Lite2 and classify two known pictures correctly."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from trainer.backbones.efficientnet_lite import VARIANTS, block_channels, efficientnet_lite
from trainer.models import REGISTRY

CLASSIFIER_SIZE = 224
EGYPTIAN_CAT = 285
ESPRESSO = 967


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def classifier(request: pytest.FixtureRequest) -> torch.nn.Module:
    return efficientnet_lite(request.param)


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return efficientnet_lite("efficientnet-lite0")


@pytest.mark.parametrize(("picture", "label"), [("chelsea", EGYPTIAN_CAT), ("coffee", ESPRESSO)])
def test_imagenet_weights_classify_known_pictures(classifier: torch.nn.Module, picture: str, label: int) -> None:
    image = cv2.resize(getattr(data, picture)(), (CLASSIFIER_SIZE, CLASSIFIER_SIZE), interpolation=cv2.INTER_AREA)
    x = (torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None] - 127.0) / 128.0
    with torch.no_grad():
        probs = classifier(x).softmax(dim=1)[0]
    assert int(probs.argmax()) == label
    assert float(probs[label]) > 0.5


def test_feature_taps_have_documented_channels_and_strides(lite0: torch.nn.Module) -> None:
    x = torch.zeros(1, 3, 256, 256)
    block4, block10 = lite0.features(x, (4, 10))
    assert block4.shape == (1, 40, 32, 32)  # stride 8
    assert block10.shape == (1, 112, 16, 16)  # stride 16


@pytest.mark.parametrize("model", sorted(REGISTRY))
def test_default_taps_sit_at_the_same_strides_in_every_backbone(model: str) -> None:
    """A recipe that names only the backbone taps the same strides (and so the same grid) in Lite0 and Lite2."""
    x = torch.zeros(1, 3, 256, 256)
    shapes = {}
    for name in VARIANTS:
        recipe = REGISTRY[model].recipe.model_validate({"backbone": name})
        with torch.no_grad():
            shapes[name] = [t.shape[-2:] for t in efficientnet_lite(name).features(x, recipe.taps)]
    assert shapes["efficientnet-lite0"] == shapes["efficientnet-lite2"]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_block_channels_without_building_match_the_built_backbone(name: str) -> None:
    assert block_channels(name) == efficientnet_lite(name).block_channels
