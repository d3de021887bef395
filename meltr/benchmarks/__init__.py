"""The benchmarks and measurement tools behind ``tools/bench_*.py`` and
``tools/hessian_spectrum.py`` (each tool calls one module's ``main``). Not part of the core: these
modules may import anything; nothing in ``meltr`` imports them.

- ``scale`` (``tools/bench_scale.py``): meta-step cost at the paper's model sizes; its models in
  ``workloads``, its rows in ``scale_rows``, ``--profile`` and ``--accuracy`` in
  ``scale_analysis``;
- ``hypergrad`` (``tools/bench_hypergrad.py``): the solvers and products on a small transformer
  (``transformer``) against an exact reference (``hypergrad_reference``);
- ``training`` (``tools/bench_train.py``): training cost through the real training loop (the
  paper's Table 8 on our data);
- ``distributed`` (``tools/bench_distributed.py``): data-parallel throughput and memory per rank;
- ``hessian_spectrum`` (``tools/hessian_spectrum.py``): the extreme eigenvalues of a recipe's
  inner Hessian;
- ``common``: what they share (hypergradient errors, memory peaks, timing, tables);
- ``internals``: the only place that reaches into the learner's private parts.
"""
