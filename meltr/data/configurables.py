"""Every gin registration of the data side, and the one home of the built-in datasets'
(imported by ``meltr.train.configurables``; all under the gin module ``meltr.data``).

The runtime: ``WordPieceTokenizer``, ``MaskTokens``, the decoders ``VideoCaptions``, ``VideoQA``,
``VideoLabel``, ``FeatureText``, ``ImageLabel``, ``TextLabel``, ``TensorLabel`` and the streams
``train_loader`` / ``eval_loader``.

The generated datasets (``meltr.data.synthetic``), each a generator whose bindings set its
arguments (``synthetic_dataset.num_train = 512``) and the paths recipes put in their ``DATA_DIR``
/ ``VOCAB`` macros, which call the gin-configured generator so that those bindings apply:

- ``synthetic_dataset``: ``synthetic_data_dir``, ``synthetic_vocab`` (moving shapes + captions);
- ``synthetic_images``: ``synthetic_images_dir`` (the shape images);
- ``synthetic_features``: ``synthetic_features_dir``, ``synthetic_features_vocab`` (cooking
  steps as features);
- ``violet_synthetic_qa``: ``violet_qa_data_dir``, ``violet_qa_vocab`` (moving shapes + questions);
- ``alpro_quick_vocab``, ``alpro_quick_entities``: the files of the ALPRO quick recipes.

Arguments the training system supplies itself (the tokenizer, data positions) are denylisted.
"""

import gin

from meltr.data import decoders, stream
from meltr.data.synthetic import (
    alpro_quick,
    cooking_features,
    shape_images,
    video_captions,
    video_qa,
)
from meltr.data.text import MaskTokens, WordPieceTokenizer

MODULE = "meltr.data"

gin.external_configurable(WordPieceTokenizer, module=MODULE, denylist=["vocab_path"])
gin.external_configurable(MaskTokens, module=MODULE, denylist=["tokenizer"])
for decoder in (
    decoders.VideoCaptions,
    decoders.VideoQA,
    decoders.FeatureText,
    decoders.TextLabel,
):
    gin.external_configurable(decoder, module=MODULE, denylist=["tokenizer"])
for decoder in (decoders.VideoLabel, decoders.ImageLabel, decoders.TensorLabel):
    gin.external_configurable(decoder, module=MODULE)
gin.external_configurable(
    stream.train_loader,
    module=MODULE,
    denylist=["data_dir", "decoder", "batch_size", "transforms", "seed", "start_batch"],
)
gin.external_configurable(
    stream.eval_loader,
    module=MODULE,
    denylist=["data_dir", "decoder", "batch_size", "split", "view"],
)

synthetic_dataset = gin.external_configurable(
    video_captions.cached_synthetic_dataset, "synthetic_dataset", module=MODULE
)
synthetic_images = gin.external_configurable(
    shape_images.cached_synthetic_images, "synthetic_images", module=MODULE
)
synthetic_features = gin.external_configurable(
    cooking_features.cached_synthetic_features, "synthetic_features", module=MODULE
)
violet_synthetic_qa = gin.external_configurable(
    video_qa.cached_synthetic_qa, "violet_synthetic_qa", module=MODULE
)
alpro_quick_vocab = gin.external_configurable(alpro_quick.alpro_quick_vocab, module=MODULE)
alpro_quick_entities = gin.external_configurable(alpro_quick.alpro_quick_entities, module=MODULE)


@gin.configurable(module=MODULE)
def synthetic_data_dir() -> str:
    """The synthetic video dataset's shard directory (generated on first use)."""
    return synthetic_dataset()["root"]


@gin.configurable(module=MODULE)
def synthetic_vocab() -> str:
    """The synthetic video dataset's ``vocab.txt``."""
    return synthetic_dataset()["vocab"]


@gin.configurable(module=MODULE)
def synthetic_images_dir() -> str:
    """The synthetic image dataset's shard directory (generated on first use)."""
    return synthetic_images()["root"]


@gin.configurable(module=MODULE)
def synthetic_features_dir() -> str:
    """The generated feature dataset's shard directory (generated on first use)."""
    return synthetic_features()["root"]


@gin.configurable(module=MODULE)
def synthetic_features_vocab() -> str:
    """The generated feature dataset's ``vocab.txt``."""
    return synthetic_features()["vocab"]


@gin.configurable(module=MODULE)
def violet_qa_data_dir() -> str:
    """The generated moving-shapes QA dataset's shard directory (generated on first use)."""
    return violet_synthetic_qa()["root"]


@gin.configurable(module=MODULE)
def violet_qa_vocab() -> str:
    """The generated moving-shapes QA dataset's ``vocab.txt``."""
    return violet_synthetic_qa()["vocab"]
