"""Data, by job.

- The runtime, what a training run uses (this package's top-level modules): ``stream`` (streaming
  WebDataset shards into batches), ``decoders`` (one per sample kind, and ``collate``), ``video``,
  ``transforms``, ``text`` (tokenization and masking).
- Writing shards: ``writer`` (resumable, with the ``conversion.json`` record) and ``cache`` (where
  generated datasets live, one generating process at a time).
- ``converters``: released datasets (MSRVTT, YouCook2, Kinetics, CMU-MOSI, CIFAR, VIOLET's and
  ALPRO's releases, text classification) -> shards.
- ``synthetic``: the generated datasets the tests, demos and quick recipes use.
- ``configurables``: the gin registrations of all of the above, the one home of the datasets'.

Modules that moved into ``converters`` and ``synthetic`` (issue 22) fail to import under their old
names with a message naming the new one.
"""

import importlib.abc
import sys

from meltr.data.decoders import (
    CorruptSampleError,
    FeatureText,
    ImageLabel,
    TensorLabel,
    TextLabel,
    VideoCaptions,
    VideoLabel,
    VideoQA,
    collate,
)
from meltr.data.stream import NoUsableSamplesError, eval_loader, train_loader
from meltr.data.text import MaskTokens, WordPieceTokenizer, mask_tokens
from meltr.data.writer import write_shards

MOVED = {
    **{
        f"meltr.data.{name}": f"meltr.data.converters.{name}"
        for name in (
            "alpro_qa",
            "cifar",
            "kinetics",
            "mosi",
            "mosi_sdk",
            "msrvtt",
            "msrvtt_features",
            "release_frames",
            "text_classification",
            "violet_release",
            "youcook2",
        )
    },
    "meltr.data.conversion": "meltr.data.converters.release_files",
    "meltr.data.synthetic_qa": "meltr.data.synthetic.video_qa",
    "meltr.data.synthetic_features": "meltr.data.synthetic.cooking_features",
    "meltr.data.synthetic_images": "meltr.data.synthetic.shape_images",
}


def moved(old: str, new: str) -> ImportError:
    """The error of importing ``old``, which moved to ``new``."""
    return ImportError(
        f"{old} moved to {new} (meltr.data is split by job: runtime, converters, synthetic); "
        "import it from there"
    )


class _MovedModules(importlib.abc.MetaPathFinder):
    """``import meltr.data.<moved>`` raises ``moved``'s error."""

    def find_spec(self, fullname, path, target=None):
        if fullname in MOVED:
            raise moved(fullname, MOVED[fullname])
        return None


def __getattr__(name: str):
    """``from meltr.data import <moved>`` raises ``moved``'s error."""
    if f"{__name__}.{name}" in MOVED:
        raise moved(f"{__name__}.{name}", MOVED[f"{__name__}.{name}"])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


sys.meta_path.append(_MovedModules())

__all__ = [
    "CorruptSampleError",
    "FeatureText",
    "ImageLabel",
    "MaskTokens",
    "NoUsableSamplesError",
    "TensorLabel",
    "TextLabel",
    "VideoCaptions",
    "VideoLabel",
    "VideoQA",
    "WordPieceTokenizer",
    "collate",
    "eval_loader",
    "mask_tokens",
    "train_loader",
    "write_shards",
]
