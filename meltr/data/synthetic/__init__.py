"""The built-in generated datasets: every sample a pure function of the dataset's seed, the split
and its index, generated once into ``meltr.data.cache.cache_root()`` (``generation.py`` says how a
dataset's directory is reused, resumed or replaced).

- ``video_captions``: moving coloured shapes described by a small grammar (video + captions);
- ``video_qa``: questions about the same clips (video + question/answer, with visual-token codes);
- ``cooking_features``: cooking steps as feature sequences with captions and transcripts;
- ``shape_images``: ten classes of drawn shapes (image + label), the stand-in for CIFAR;
- ``alpro_quick``: the vocabulary and entity list of the ALPRO quick recipes.

``moving_shapes`` (the clips' scenes, rendering and grammar), ``drawing`` (shape masks) and
``words`` (the generated vocabularies) are what the generators share.
"""

import importlib

from meltr.data import moved

# What the single module ``meltr.data.synthetic`` held before it became this package.
_FORMER_HOMES = ("moving_shapes", "words", "generation", "video_captions")


def __getattr__(name: str):
    """``from meltr.data.synthetic import <a name of the former module>`` raises ``moved``'s
    error naming the module that holds it now."""
    for home in _FORMER_HOMES:
        if not name.startswith("_") and hasattr(
            importlib.import_module(f"{__name__}.{home}"), name
        ):
            raise moved(f"{__name__}.{name}", f"{__name__}.{home}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
