"""The video kinds: video + captions (``VideoCaptions``), video + question/answer (``VideoQA``),
video + class label (``VideoLabel``). Member ``mp4``; clips are cut by ``VideoFrames``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from meltr.data.decoders.samples import (
    CorruptSampleError,
    SampleKind,
    Tokenizer,
    caption_items,
    class_label,
    extra_arrays,
    field,
    member_bytes,
    random_index,
    strings,
)
from meltr.data.transforms import video_transform
from meltr.data.video import VideoDecodeError, read_clip


class VideoFrames(SampleKind):
    """How clips are cut: ``num_frames`` frames, short side resized to ``resize``, a square crop
    of ``image_size`` pixels (random in training, centred in evaluation), ImageNet-normalised."""

    members = ("json", "mp4")

    def __init__(self, num_frames: int, image_size: int, resize: int) -> None:
        for name, value in (
            ("num_frames", num_frames),
            ("image_size", image_size),
            ("resize", resize),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if resize < image_size:
            raise ValueError(f"resize ({resize}) must be >= image_size ({image_size})")
        self.num_frames, self.image_size, self.resize = num_frames, image_size, resize

    def clip(
        self,
        sample: dict,
        random_frames: bool,
        random_crop: bool,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """float32 ``[num_frames, 3, image_size, image_size]``; frames first, then the crop drawn
        from ``generator``."""
        data = member_bytes(sample, "mp4")
        try:
            frames = read_clip(data, self.num_frames, random_frames, generator)
        except VideoDecodeError as error:
            raise CorruptSampleError(f"undecodable video: {error}") from error
        return video_transform(frames, self.resize, self.image_size, random_crop, generator)


class VideoCaptions(VideoFrames):
    """Video + captions: members ``mp4``, ``json`` ``{video_id, captions: [str, ...]}``.

    Items: ``video`` float32 ``[F, 3, S, S]``, ``text_ids`` / ``text_mask`` int64 ``[L]``,
    ``caption`` (str), ``video_id``, ``caption_index``, plus the extra ``arrays``. Training: one
    caption drawn at random, random frames in each segment, one random crop for the clip (drawn in
    that order). Evaluation: one item per caption sharing one clip (segment centres, or random
    frames when ``random_view``), centre crop.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        num_frames: int = 3,
        image_size: int = 224,
        resize: int = 268,
        arrays: Sequence[str] = (),
    ) -> None:
        super().__init__(num_frames, image_size, resize)
        self.tokenizer, self.arrays = tokenizer, tuple(arrays)

    @staticmethod
    def check_record(record: dict) -> None:
        field(record, "video_id", str, "a string")
        strings(record, "captions")

    def _items(
        self, sample: dict, record: dict, video: torch.Tensor, indices: Sequence[int]
    ) -> list[dict]:
        shared = {"video": video} | extra_arrays(sample, self.arrays)
        return caption_items(self.tokenizer, record, indices, shared)

    def train_item(self, sample: dict, generator: torch.Generator) -> dict:
        record = self.read_record(sample)
        index = random_index(len(record["captions"]), generator)
        video = self.clip(sample, random_frames=True, random_crop=True, generator=generator)
        return self._items(sample, record, video, [index])[0]

    def eval_items(self, sample: dict, generator: torch.Generator, random_view: bool) -> list:
        record = self.read_record(sample)
        video = self.clip(sample, random_view, random_crop=False, generator=generator)
        return self._items(sample, record, video, range(len(record["captions"])))


def question_with_option(question: str, option: str, options: Sequence[str]) -> str:
    """The default text of one multiple-choice option: the question followed by the option
    (``options``, all of the question's options, unused)."""
    return f"{question} {option}"


class VideoQA(VideoFrames):
    """Video + question/answer: members ``mp4``, ``json`` ``{video_id, question, answer: str,
    answer_index: int, options?: [str, ...]}``.

    ``answer_index`` indexes ``options`` for a multiple-choice question and the answer
    vocabulary for an open-ended one (-1: the answer is outside the vocabulary; such items are
    kept, and it is up to the loss to exclude them and to the metric to count them wrong).
    Items: ``video``, ``text_ids`` / ``text_mask`` (the question), ``question``, ``answer``,
    ``answer_index``, ``video_id``, ``key`` (the sample key), and for multiple choice
    ``option_ids`` / ``option_mask`` int64 ``[K, L]``, the tokens of ``choice_text(question,
    option, options)`` for each option; plus the extra ``arrays``. One item per sample, in
    training and evaluation; training draws random frames then a random crop.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        num_frames: int = 5,
        image_size: int = 224,
        resize: int = 224,
        choice_text: Callable[[str, str, Sequence[str]], str] = question_with_option,
        arrays: Sequence[str] = (),
    ) -> None:
        super().__init__(num_frames, image_size, resize)
        self.tokenizer, self.choice_text, self.arrays = tokenizer, choice_text, tuple(arrays)

    @staticmethod
    def check_record(record: dict) -> None:
        field(record, "video_id", str, "a string")
        field(record, "question", str, "a string")
        field(record, "answer", str, "a string")
        index = field(record, "answer_index", int, "an integer")
        if "options" in record:
            options = strings(record, "options")
            if not 0 <= index < len(options):
                raise CorruptSampleError(
                    f"json 'answer_index' {index} is not an index into the {len(options)} options"
                )
        elif index < -1:
            raise CorruptSampleError(f"json 'answer_index' is {index}, not >= -1")

    def _item(self, sample: dict, record: dict, video: torch.Tensor) -> dict:
        ids, mask = self.tokenizer.encode([record["question"]])
        item = {
            "video": video,
            "text_ids": ids[0],
            "text_mask": mask[0],
            "question": record["question"],
            "answer": record["answer"],
            "answer_index": record["answer_index"],
            "video_id": record["video_id"],
            "key": sample["__key__"],
        }
        if "options" in record:
            options = record["options"]
            texts = [self.choice_text(record["question"], o, options) for o in options]
            item["option_ids"], item["option_mask"] = self.tokenizer.encode(texts)
        return item | extra_arrays(sample, self.arrays)

    def train_item(self, sample: dict, generator: torch.Generator) -> dict:
        record = self.read_record(sample)
        video = self.clip(sample, random_frames=True, random_crop=True, generator=generator)
        return self._item(sample, record, video)

    def eval_items(self, sample: dict, generator: torch.Generator, random_view: bool) -> list:
        record = self.read_record(sample)
        video = self.clip(sample, random_view, random_crop=False, generator=generator)
        return [self._item(sample, record, video)]


class VideoLabel(VideoFrames):
    """Video + class label: members ``mp4``, ``json`` ``{video_id, label: int}``.

    Items: ``video``, ``label`` (int), ``video_id``, plus the extra ``arrays``; training draws
    random frames then a random crop; evaluation takes segment centres (random frames when
    ``random_view``) and a centre crop.
    """

    def __init__(
        self,
        num_frames: int = 5,
        image_size: int = 224,
        resize: int = 224,
        arrays: Sequence[str] = (),
    ) -> None:
        super().__init__(num_frames, image_size, resize)
        self.arrays = tuple(arrays)

    @staticmethod
    def check_record(record: dict) -> None:
        field(record, "video_id", str, "a string")
        class_label(record)

    def _item(self, sample: dict, record: dict, video: torch.Tensor) -> dict:
        item = {"video": video, "label": record["label"], "video_id": record["video_id"]}
        return item | extra_arrays(sample, self.arrays)

    def train_item(self, sample: dict, generator: torch.Generator) -> dict:
        record = self.read_record(sample)
        return self._item(sample, record, self.clip(sample, True, True, generator))

    def eval_items(self, sample: dict, generator: torch.Generator, random_view: bool) -> list:
        record = self.read_record(sample)
        return [self._item(sample, record, self.clip(sample, random_view, False, generator))]
