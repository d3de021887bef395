import json
import shutil
import tarfile
import warnings

import pytest
import torch

from meltr.data.decoders import VideoCaptions
from meltr.data.decoders import video as video_decoders
from meltr.data.stream import eval_loader, train_loader
from meltr.data.text import MaskTokens, WordPieceTokenizer
from meltr.data.transforms import video_transform
from meltr.data.video import read_clip

WORDS = ["a", "man", "dog", "runs", "plays", "the", "cat", "red", "sings"]
CLIP = {"num_frames": 3, "image_size": 16, "resize": 20}
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

# key -> (number of frames, captions)
TRAIN = {
    **{f"v{i}": (8, ["a man runs", "the dog plays"]) for i in range(5)},
    **{f"w{i}": (6, ["a red cat sings"]) for i in range(4)},
}
TEST = {
    "t0": (8, ["a man runs", "a dog"]),
    "t1": (5, ["the cat"]),
    "t2": (8, ["red dog"]),
    "t3": (7, ["a cat", "the man", "a dog plays"]),
    "t4": (8, ["a man"]),
    "t5": (4, ["the red cat"]),
    "t6": (8, ["dog runs"]),
}
CORRUPT_KEYS = ["badmp4", "nojson", "badjson", "nocaps"]


def corrupt_samples(make_sample):
    bad_mp4 = make_sample("badmp4", 8, ["a man"])
    bad_mp4["mp4"] = b"this is not an mp4 file" * 4
    no_json = make_sample("nojson", 8, ["a man"])
    del no_json["json"]
    bad_json = make_sample("badjson", 8, ["a man"])
    bad_json["json"] = b'{"video_id": "badjson", "captions": ['
    no_captions = make_sample("nocaps", 8, [])
    return [bad_mp4, no_json, bad_json, no_captions]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, shard_tools):
    """Directories `clean` (2 train shards, 4 test shards) and `corrupt` (corrupt samples mixed
    in); `mp4` and `captions` by key; the tokenizer."""
    write_tar, make_sample = shard_tools
    root = tmp_path_factory.mktemp("shards")
    clean, corrupt = root / "clean", root / "corrupt"
    clean.mkdir()
    corrupt.mkdir()
    train = {key: make_sample(key, n, captions) for key, (n, captions) in TRAIN.items()}
    test = {key: make_sample(key, n, captions, "test") for key, (n, captions) in TEST.items()}
    write_tar(clean / "train-000000.tar", [train[f"v{i}"] for i in range(5)])
    write_tar(clean / "train-000001.tar", [train[f"w{i}"] for i in range(4)])
    for index, keys in enumerate([["t0", "t1"], ["t2", "t3"], ["t4"], ["t5", "t6"]]):
        write_tar(clean / f"test-{index:06d}.tar", [test[key] for key in keys])

    bad = corrupt_samples(make_sample)
    write_tar(corrupt / "train-000000.tar", [*[train[f"v{i}"] for i in range(5)], *bad])
    # with 2 workers (every other sample) worker 1 reads bad, bad, t3, bad: the last corrupt one
    # comes after its last valid sample and must still be counted
    write_tar(
        corrupt / "test-000000.tar",
        [test["t0"], bad[0], test["t1"], bad[2], test["t2"], test["t3"], test["t4"], bad[3]],
    )

    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return {
        "clean": clean,
        "corrupt": corrupt,
        "mp4": {key: sample["mp4"] for key, sample in {**train, **test}.items()},
        "captions": {key: captions for key, (_, captions) in {**TRAIN, **TEST}.items()},
        "frames": {key: n for key, (n, _) in {**TRAIN, **TEST}.items()},
        "tokenizer": WordPieceTokenizer(vocab, max_length=8),
    }


def take(loader, count):
    iterator = iter(loader)
    return [next(iterator) for _ in range(count)]


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if torch.is_tensor(a[key]):
                assert torch.equal(a[key], b[key]), key
            else:
                assert a[key] == b[key], key


def frame_indices(clip: torch.Tensor) -> list[int]:
    """Frame numbers of a normalised clip of the uniform-grey test videos (level 20 + 25 i)."""
    grey = ((clip * STD + MEAN) * 255).mean(dim=(1, 2, 3))
    return [round((float(level) - 20) / 25) for level in grey]


def segments(num_total: int, num_frames: int) -> list[range]:
    bounds = [i * num_total // num_frames for i in range(num_frames + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(num_frames)]


def _decoder(dataset, kwargs):
    clip = {key: kwargs.pop(key, value) for key, value in CLIP.items()}
    return VideoCaptions(dataset["tokenizer"], **clip)


def train(dataset, name="clean", **kwargs):
    decoder = _decoder(dataset, kwargs)
    options = {"batch_size": 3, "num_workers": 0, "seed": 0, "shuffle_buffer": 4}
    transforms = [MaskTokens(dataset["tokenizer"])]
    return train_loader(dataset[name], decoder, transforms=transforms, **{**options, **kwargs})


def evaluate(dataset, name="clean", **kwargs):
    decoder = _decoder(dataset, kwargs)
    options = {"batch_size": 2, "num_workers": 0}
    return eval_loader(dataset[name], decoder, **{**options, **kwargs})


def test_train_batches_have_the_documented_format_and_content(dataset):
    tokenizer = dataset["tokenizer"]
    for batch in take(train(dataset), 4):
        assert batch["video"].dtype == torch.float32 and batch["video"].shape == (3, 3, 3, 16, 16)
        for key in ("text_ids", "text_mask", "mlm_ids", "mlm_labels"):
            assert batch[key].dtype == torch.int64 and batch[key].shape == (3, 8), key
        assert batch["caption_index"].dtype == torch.int64 and batch["num_corrupt"] == 0
        for row, video_id in enumerate(batch["video_id"]):
            captions = dataset["captions"][video_id]
            caption = captions[int(batch["caption_index"][row])]
            ids, mask = tokenizer.encode([caption])
            assert torch.equal(batch["text_ids"][row], ids[0])
            assert torch.equal(batch["text_mask"][row], mask[0])
            labels, masked = batch["mlm_labels"][row], batch["mlm_ids"][row]
            selected = labels != -100
            assert torch.equal(labels[selected], ids[0][selected])
            assert torch.equal(masked[~selected], ids[0][~selected])
            chosen = frame_indices(batch["video"][row])
            for index, segment in zip(
                chosen, segments(dataset["frames"][video_id], 3), strict=True
            ):
                assert index in segment


def test_train_uses_every_caption_and_random_frames(dataset):
    batches = take(train(dataset), 20)
    v_items = [
        (int(batch["caption_index"][row]), tuple(frame_indices(batch["video"][row])))
        for batch in batches
        for row, video_id in enumerate(batch["video_id"])
        if video_id.startswith("v")
    ]
    assert {caption for caption, _ in v_items} == {0, 1}
    assert len({frames for _, frames in v_items}) > 3


def test_train_reads_every_shard_once_per_pass(dataset):
    # without shuffling, each run of 9 samples (one pass over both shards) holds every video once
    batches = take(train(dataset, shuffle_buffer=1), 6)
    keys = [video_id for batch in batches for video_id in batch["video_id"]]
    assert sorted(keys[:9]) == sorted(TRAIN) and sorted(keys[9:18]) == sorted(TRAIN)


def test_train_is_deterministic_given_seed_rank_and_workers(dataset):
    reference = take(train(dataset, num_workers=2), 6)
    assert_same_batches(reference, take(train(dataset, num_workers=2), 6))
    for changed in ({"seed": 1}, {"rank": 1, "world_size": 2}):
        other = take(train(dataset, num_workers=2, **changed), 6)
        assert [b["video_id"] for b in other] != [b["video_id"] for b in reference], changed


@pytest.mark.parametrize("name", ["clean", "corrupt"])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_yields_exactly_the_remaining_batches(dataset, name, num_workers):
    reference = take(train(dataset, name, num_workers=num_workers), 9)
    # resume is exact as long as no window of raw samples is entirely corrupt
    assert all(len(b["video_id"]) + b["num_corrupt"] == 3 for b in reference)
    for start in (3, 4):
        resumed = take(train(dataset, name, num_workers=num_workers, start_batch=start), 9 - start)
        assert_same_batches(resumed, reference[start:])


def test_resume_does_not_decode_the_skipped_samples(dataset, monkeypatch):
    decoded = []
    real_read_clip = video_decoders.read_clip

    def counting_read_clip(*args, **kwargs):
        decoded.append(args)
        return real_read_clip(*args, **kwargs)

    monkeypatch.setattr(video_decoders, "read_clip", counting_read_clip)
    take(train(dataset, start_batch=50), 1)
    assert len(decoded) == 3


def test_corrupt_train_samples_are_skipped_counted_and_named(dataset):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = take(train(dataset, "corrupt"), 12)
    messages = [str(w.message) for w in caught if "corrupt sample" in str(w.message)]
    for key in CORRUPT_KEYS:
        assert any(f"'{key}'" in m and "train-000000.tar" in m for m in messages), key
    seen = [video_id for batch in batches for video_id in batch["video_id"]]
    assert not set(seen) & set(CORRUPT_KEYS)
    num_corrupt = sum(batch["num_corrupt"] for batch in batches)
    assert num_corrupt == len(messages) > 0
    # a batch is the valid part of its window of 3 raw samples (after any all-corrupt windows)
    assert all((len(b["video_id"]) + b["num_corrupt"]) % 3 == 0 for b in batches)

    two_workers = take(train(dataset, "corrupt", num_workers=2), 12)
    assert sum(batch["num_corrupt"] for batch in two_workers) > 0
    assert all((len(b["video_id"]) + b["num_corrupt"]) % 3 == 0 for b in two_workers)


@pytest.mark.parametrize("cut", ["at_a_sample_boundary", "inside_a_member"])
def test_a_truncated_shard_counts_its_unreadable_rest(dataset, tmp_path, cut):
    # train-000000 holds v0..v4 (json then mp4 member each); cut it after v1: the rest (v2, v3,
    # v4) is lost and counts as one corrupt sample per pass, also when tar sees no error.
    truncated = tmp_path / "truncated"
    shutil.copytree(dataset["clean"], truncated)
    shard = truncated / "train-000000.tar"
    with tarfile.open(shard) as tar:
        offset = tar.getmembers()[4].offset  # v2's first member
    shard.write_bytes(shard.read_bytes()[: offset + (700 if cut == "inside_a_member" else 0)])
    dataset = {**dataset, "truncated": truncated}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # a pass is 7 raw samples (v0, v1, the lost rest, w0..w3): one batch of 7 per pass
        batches = take(train(dataset, "truncated", batch_size=7, shuffle_buffer=1), 3)
    assert [batch["num_corrupt"] for batch in batches] == [1, 1, 1]
    assert all(
        sorted(batch["video_id"]) == ["v0", "v1", "w0", "w1", "w2", "w3"] for batch in batches
    )
    assert any("train-000000.tar" in str(w.message) for w in caught)

    test_shard = truncated / "test-000001.tar"  # t2, t3: cut after t2
    with tarfile.open(test_shard) as tar:
        offset = tar.getmembers()[2].offset
    test_shard.write_bytes(test_shard.read_bytes()[:offset])
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        evaluated = list(evaluate(dataset, "truncated"))
    assert sum(batch["num_corrupt"] for batch in evaluated) == 1
    assert ("t3", 0) not in pairs(evaluated) and ("t2", 0) in pairs(evaluated)


def expected_pairs():
    return sorted(
        (key, index) for key, (_, captions) in TEST.items() for index in range(len(captions))
    )


def pairs(batches):
    return [
        (video_id, int(index))
        for batch in batches
        for video_id, index in zip(batch["video_id"], batch["caption_index"], strict=True)
    ]


@pytest.mark.parametrize("world_size,num_workers", [(1, 0), (1, 2), (2, 2), (3, 2)])
def test_eval_reads_each_pair_exactly_once(dataset, world_size, num_workers):
    # 4 shards: (2, 2) deals out shards, (3, 2) has 6 readers and deals out samples
    read = []
    for rank in range(world_size):
        loader = evaluate(dataset, num_workers=num_workers, rank=rank, world_size=world_size)
        read += pairs(loader)
    assert sorted(read) == expected_pairs()


def test_eval_items_are_centre_frames_centre_crop_and_their_caption(dataset):
    tokenizer = dataset["tokenizer"]
    for batch in evaluate(dataset):
        assert batch["video"].shape[1:] == (3, 3, 16, 16) and batch["num_corrupt"] == 0
        for row, video_id in enumerate(batch["video_id"]):
            frames = read_clip(dataset["mp4"][video_id], 3, train=False)
            expected = video_transform(frames, resize=20, image_size=16, train=False)
            assert torch.equal(batch["video"][row], expected)
            caption = dataset["captions"][video_id][int(batch["caption_index"][row])]
            assert torch.equal(batch["text_ids"][row], tokenizer.encode([caption])[0][0])


def test_eval_views_are_reproducible_random_frames(dataset):
    def frames_by_pair(loader):
        return {
            pair: tuple(frame_indices(video))
            for batch in loader
            for pair, video in zip(pairs([batch]), batch["video"], strict=True)
        }

    centre = evaluate(dataset)
    assert_same_batches(list(centre), list(evaluate(dataset)))
    view_1 = frames_by_pair(evaluate(dataset, view=1))
    assert view_1 == frames_by_pair(evaluate(dataset, view=1, num_workers=2, batch_size=3))
    view_2 = frames_by_pair(evaluate(dataset, view=2))
    assert view_1 != view_2
    for (video_id, _), chosen in view_1.items():
        for index, segment in zip(chosen, segments(dataset["frames"][video_id], 3), strict=True):
            assert index in segment
    assert pairs(evaluate(dataset, view=1)) == pairs(centre)  # same order in every view


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_eval_samples_are_skipped_and_counted(dataset, num_workers):
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        batches = list(evaluate(dataset, "corrupt", num_workers=num_workers))
    expected = [("t0", 0), ("t0", 1), ("t1", 0), ("t2", 0), ("t3", 0), ("t3", 1), ("t3", 2)]
    assert sorted(pairs(batches)) == [*expected, ("t4", 0)]
    assert sum(batch["num_corrupt"] for batch in batches) == 3


def test_missing_shards_name_the_directory_and_pattern(dataset, tmp_path):
    decoder = VideoCaptions(dataset["tokenizer"], **CLIP)
    with pytest.raises(FileNotFoundError, match=rf"train-\*\.tar.*{tmp_path.name}"):
        train_loader(tmp_path, decoder, 2)
    with pytest.raises(FileNotFoundError, match=rf"test-\*\.tar.*{tmp_path.name}"):
        eval_loader(tmp_path, decoder, 2)


def test_bad_arguments_are_named(dataset):
    with pytest.raises(ValueError, match="rank"):
        train(dataset, rank=2, world_size=2)
    with pytest.raises(ValueError, match="resize"):
        train(dataset, resize=8)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(dataset, batch_size=0)


def test_sample_json_fields_reach_the_batch(dataset, tmp_path, shard_tools):
    write_tar, make_sample = shard_tools
    sample = make_sample("key-1", 4, ["a cat"], "test")
    sample["json"] = json.dumps({"video_id": "video-id-1", "captions": ["a cat"]}).encode()
    write_tar(tmp_path / "test-000000.tar", [sample])
    decoder = VideoCaptions(dataset["tokenizer"], **CLIP)
    (batch,) = list(eval_loader(tmp_path, decoder, 4, num_workers=0))
    assert batch["video_id"] == ["video-id-1"]
