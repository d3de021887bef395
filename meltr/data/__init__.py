"""Data: the generic WebDataset stream, one decoder per sample kind, video decoding, transforms,
tokenization and masking, the shard writer, converters' library code and the built-in datasets."""

from meltr.data.decoders import (
    CorruptSampleError,
    FeatureText,
    ImageLabel,
    VideoCaptions,
    VideoLabel,
    VideoQA,
    collate,
)
from meltr.data.stream import NoUsableSamplesError, eval_loader, train_loader
from meltr.data.text import MaskTokens, WordPieceTokenizer, mask_tokens
from meltr.data.writer import write_shards

__all__ = [
    "CorruptSampleError",
    "FeatureText",
    "ImageLabel",
    "MaskTokens",
    "NoUsableSamplesError",
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
