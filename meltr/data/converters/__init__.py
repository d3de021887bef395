"""Converters: released datasets -> WebDataset shards of one sample kind (docs/ARCHITECTURE.md).

Each module reads one release's layout (its docstring lists the files) into a plan, names every
listed item it cannot write (``release_files.MissingItemsError``, unless skipped) and writes the
plan with ``meltr.data.writer.write_shards``, whose ``conversion.json`` record keeps two
conversions from mixing in one directory. The command-line front ends are ``datasets/*.py``.

- videos + captions: ``msrvtt`` (mp4 files), ``violet_release`` (VIOLET's frame pickles, with
  ``release_frames``), ``kinetics`` (video + label);
- videos + questions: ``alpro_qa``, ``violet_release`` (TGIF-QA, MSVD-QA);
- features + text: ``youcook2``, ``msrvtt_features``, ``mosi`` and ``mosi_sdk`` (CMU-MOSI);
- images / text + label: ``cifar``, ``text_classification``;
- ``release_files``: reading the releases' pickle, csv and json files with errors that name the
  file, and the items that cannot be written.
"""
