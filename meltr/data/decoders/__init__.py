"""One decoder per sample kind: a raw shard sample -> model-ready items (docs/ARCHITECTURE.md).

A raw sample is what webdataset groups from a shard: ``{"__key__", "__url__", "json": bytes,
<member>: bytes, ...}``. A decoder (a ``SampleKind``)

- names the members its kind needs (``members``) and checks a sample's json record
  (``check_record``) and its own array members (``check_array``); the shard writer runs the same
  checks, so what is written can be read;
- turns a sample into one training item (``train_item(sample, generator)``: every random choice
  drawn from ``generator``) or into its evaluation items (``eval_items(sample, generator,
  random_view)``: one per caption or question), parsing the json record once for either;
- raises ``CorruptSampleError`` (the message says what is wrong) for a sample it cannot use.

``collate`` stacks items of any kind into a batch. The kinds live by what they read: ``video``
(``VideoCaptions``, ``VideoQA``, ``VideoLabel``), ``features`` (``FeatureText``), ``labelled``
(``ImageLabel``, ``TextLabel``, ``TensorLabel``); ``samples`` holds what they share.
"""

from meltr.data.decoders.features import FeatureText
from meltr.data.decoders.labelled import ImageLabel, TensorLabel, TextLabel
from meltr.data.decoders.samples import (
    CorruptSampleError,
    SampleKind,
    Tokenizer,
    collate,
    load_array,
)
from meltr.data.decoders.video import VideoCaptions, VideoLabel, VideoQA, question_with_option

__all__ = [
    "CorruptSampleError",
    "FeatureText",
    "ImageLabel",
    "SampleKind",
    "TensorLabel",
    "TextLabel",
    "Tokenizer",
    "VideoCaptions",
    "VideoLabel",
    "VideoQA",
    "collate",
    "load_array",
    "question_with_option",
]
