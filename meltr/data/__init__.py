"""Reading (and writing) WebDataset video shards: decoding, frame sampling, transforms,
tokenization, MLM masking and the train / eval DataLoaders."""

from meltr.data.pipeline import eval_loader, train_loader
from meltr.data.samples import CorruptSampleError
from meltr.data.text import WordPieceTokenizer, mask_tokens
from meltr.data.transforms import video_transform
from meltr.data.video import VideoDecodeError, read_clip, sample_frame_indices

__all__ = [
    "CorruptSampleError",
    "VideoDecodeError",
    "WordPieceTokenizer",
    "eval_loader",
    "mask_tokens",
    "read_clip",
    "sample_frame_indices",
    "train_loader",
    "video_transform",
]
