"""Reading back what a converter wrote: the raw samples of a split's shards, as webdataset groups
them (``{"__key__": key, <member>: bytes}``), for the converter tests in this folder."""

import tarfile
from pathlib import Path


def read_samples(out: Path, split: str) -> dict[str, dict[str, bytes]]:
    """``{key: sample}`` of every ``<split>-*.tar`` in ``out``."""
    samples: dict[str, dict] = {}
    for shard in sorted(out.glob(f"{split}-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, name = member.name.split(".", 1)
                samples.setdefault(key, {"__key__": key})[name] = tar.extractfile(member).read()
    return samples
