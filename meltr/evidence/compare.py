"""Run one recipe under several loss-combination methods and seeds, each as a ``tools/train.py``
run, kept under ``output/<method>/seed-<k>``.

A method is a name and a list of specs, each a gin file (``gin/baselines/mtl.gin``) or a binding
(``MetaLearner.solver=@Neumann()``); an empty list is the recipe as it is.
Bindings given for every run (``--gin_param`` and sweep-style ``--X.y=v``) go into
``output/shared.gin``, read by each run after the recipe's and the method's files, so that one a
method does not use (a meta-network size under a fixed-weights baseline) is not an error there;
gin still refuses an unknown name when the plan is made. A method's own bindings come last.

``output/comparison.json`` records the plan; a later call with the same plan (any number of seeds)
resumes or extends it: a finished run (one with ``results.json``) is kept, an interrupted one is
continued with ``--resume``, a missing one is run.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from meltr.train.cli import CONFIG_ERROR
from meltr.train.config import ConfigError, parse_gin, sweep_args_to_bindings, value_to_gin

TRAIN_SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "train.py"
PLAN_FILE = "comparison.json"
SHARED_FILE = "shared.gin"
_METHOD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Method:
    """A named way of training: extra gin files and bindings applied after the recipe's, on the
    first ``seeds`` seeds of the plan (None: all of them)."""

    name: str
    gin_files: tuple[str, ...] = ()
    bindings: tuple[str, ...] = ()
    seeds: int | None = None


@dataclass(frozen=True)
class Plan:
    """Every run of a comparison: the recipe files, the bindings shared by every run, the
    methods and the seeds."""

    gin_files: tuple[str, ...]
    shared_bindings: tuple[str, ...]
    methods: tuple[Method, ...]
    seeds: tuple[int, ...]

    def run_dir(self, output: Path, method: Method, seed: int) -> Path:
        return output / method.name / f"seed-{seed}"

    def command(self, output: Path, method: Method, seed: int, resume: bool) -> list[str]:
        """The ``tools/train.py`` command line of one run (the seed bound to ``train.seed``)."""
        command = [sys.executable, str(TRAIN_SCRIPT)]
        for path in (*self.gin_files, *method.gin_files, str(output / SHARED_FILE)):
            command += ["--gin", path]
        for binding in method.bindings:
            command += ["--gin_param", binding]
        command += [f"--train.seed={seed}"]
        command += ["--output", str(self.run_dir(output, method, seed))]
        return command + (["--resume"] if resume else [])


def parse_method(text: str) -> Method:
    """``NAME[:SEEDS]=SPEC[;SPEC...]`` -> Method; a SPEC ending in ``.gin`` is a file, any other
    is a ``Configurable.param=value`` binding; ``:SEEDS`` runs the method on the first SEEDS
    seeds only. ConfigError naming the argument when malformed."""
    label, has_spec, specs = text.partition("=")
    name, _, seeds = label.partition(":")
    if not has_spec or not _METHOD_NAME.match(name) or (seeds and not seeds.isdigit()):
        raise ConfigError(
            f"--method {text!r}: expected NAME[:SEEDS]=SPEC[;SPEC...] with NAME made of letters, "
            "digits, '_', '-' or '.' and SEEDS a number (e.g. multi-task=gin/baselines/mtl.gin, "
            "famo:3=gin/baselines/famo.gin)"
        )
    gin_files, bindings = [], []
    for spec in filter(None, (part.strip() for part in specs.split(";"))):
        if spec.endswith(".gin"):
            gin_files.append(spec)
            continue
        selector, has_value, value = spec.partition("=")
        if not has_value:
            raise ConfigError(f"--method {name}: {spec!r} is neither a .gin file nor X.y=value")
        selector = selector.strip()
        bindings.append(f"{selector} = {value_to_gin(selector, value)}")
    return Method(name, tuple(gin_files), tuple(bindings), int(seeds) if seeds else None)


def make_plan(
    gin_files: Sequence[str],
    bindings: Sequence[str],
    extra_args: Sequence[str],
    methods: Sequence[str],
    seeds: int,
) -> Plan:
    """The checked plan. ConfigError (before anything is created) for no methods, a repeated
    method name, fewer than one seed, or a method whose configuration gin cannot parse (a
    missing file, an unknown configurable or parameter, a value that does not parse)."""
    if not methods:
        raise ConfigError(
            "no --method given (e.g. --method meltr= --method mtl=gin/baselines/mtl.gin)"
        )
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    parsed = tuple(parse_method(text) for text in methods)
    for method in parsed:
        if method.seeds is not None and not 1 <= method.seeds <= seeds:
            raise ConfigError(
                f"--method {method.name}:{method.seeds}: its seed count must be 1..{seeds} "
                "(--seeds)"
            )
    names = [method.name for method in parsed]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"--method names must be unique; repeated: {', '.join(repeated)}")
    shared = (*bindings, *sweep_args_to_bindings(extra_args))
    for method in parsed:
        try:
            parse_gin([*gin_files, *method.gin_files], [*shared, *method.bindings])
        except ConfigError as error:
            raise ConfigError(f"method {method.name}: {error}") from None
    return Plan(tuple(gin_files), shared, parsed, tuple(range(seeds)))


def plan_record(plan: Plan) -> dict:
    """The JSON form of ``plan`` written to ``comparison.json`` (a method's ``seeds`` only when
    set, so records written before per-method seed counts existed compare equal)."""
    record = json.loads(json.dumps(asdict(plan)))
    for method in record["methods"]:
        if method["seeds"] is None:
            del method["seeds"]
    return record


def open_output(output: Path, plan: Plan) -> None:
    """Create ``output`` with its ``comparison.json`` and ``shared.gin``, or check that the
    comparison there has the same plan up to the number of seeds (ConfigError otherwise: an
    existing comparison is never mixed with another). ``--seeds`` may change, to add seeds to a
    finished comparison: the record then holds the new seeds."""
    path = output / PLAN_FILE
    record = plan_record(plan)
    if path.is_file():
        existing = json.loads(path.read_text())
        if {**existing, "seeds": None} != {**record, "seeds": None}:
            raise ConfigError(
                f"{output} holds a comparison with another plan ({path}); choose a new --output, "
                "or repeat the original command (any --seeds) to resume or extend it"
            )
        path.write_text(json.dumps(record, indent=2) + "\n")
        return
    if output.exists() and any(output.iterdir()):
        raise ConfigError(f"--output {output} exists and is not a comparison directory")
    output.mkdir(parents=True, exist_ok=True)
    (output / SHARED_FILE).write_text("".join(f"{binding}\n" for binding in plan.shared_bindings))
    path.write_text(json.dumps(record, indent=2) + "\n")


@dataclass
class RunOutcome:
    """What happened to one (method, seed) run: ``status`` is ``done`` (results.json written),
    ``failed`` (exit code ``returncode``; its output is in ``log``) or ``kept`` (finished
    before)."""

    method: str
    seed: int
    run_dir: Path
    status: str
    returncode: int = 0
    log: Path | None = None


def _run_one(plan: Plan, output: Path, method: Method, seed: int) -> RunOutcome:
    """Run (or resume) one unfinished run, its output appended to ``<run dir>.log``."""
    run_dir = plan.run_dir(output, method, seed)
    resume = (run_dir / "config.gin").is_file()
    log = run_dir.parent / f"{run_dir.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as file:
        returncode = subprocess.call(
            plan.command(output, method, seed, resume), stdout=file, stderr=subprocess.STDOUT
        )
    done = returncode == 0 and (run_dir / "results.json").is_file()
    return RunOutcome(method.name, seed, run_dir, "done" if done else "failed", returncode, log)


def run_all(plan: Plan, output: Path, jobs: int = 1) -> list[RunOutcome]:
    """Run every (method, seed) of ``plan`` not finished yet, ``jobs`` at a time, started in
    seed-major order (all methods on seed 0, then on seed 1, ...), each writing its output to
    ``output/<method>/seed-<k>.log``. A run that fails with a configuration error (exit 2:
    every other run would too) starts no further run and raises ConfigError quoting its log once
    the runs in flight have ended; a run that diverges (exit 1) is recorded and the others go
    on. The outcomes are in plan order."""
    # seed-major, so that a comparison stopped early has every method on its first seeds
    pairs = [
        (method, seed)
        for seed in plan.seeds
        for method in plan.methods
        if method.seeds is None or seed < method.seeds
    ]
    outcomes: dict[tuple[str, int], RunOutcome] = {}
    pending = []
    for method, seed in pairs:
        run_dir = plan.run_dir(output, method, seed)
        if (run_dir / "results.json").is_file():
            outcomes[method.name, seed] = RunOutcome(method.name, seed, run_dir, "kept")
        else:
            pending.append((method, seed))
    config_error = None
    with (
        tqdm(total=len(pairs), initial=len(outcomes), desc="compare", unit="run") as bar,
        ThreadPoolExecutor(max_workers=jobs) as pool,
    ):
        running: set[Future] = set()
        while (pending and config_error is None) or running:
            while pending and config_error is None and len(running) < jobs:
                method, seed = pending.pop(0)
                running.add(pool.submit(_run_one, plan, output, method, seed))
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                outcome = future.result()
                outcomes[outcome.method, outcome.seed] = outcome
                bar.update(1)
                bar.set_postfix_str(f"{outcome.method} seed {outcome.seed} {outcome.status}")
                if outcome.returncode == CONFIG_ERROR and config_error is None:
                    tail = "".join(outcome.log.read_text().splitlines(keepends=True)[-15:])
                    config_error = f"run {outcome.method} seed {outcome.seed} (log {outcome.log}):"
                    config_error += f"\n{tail}"
    if config_error is not None:
        raise ConfigError(config_error)
    return [
        outcomes[method.name, seed] for method, seed in pairs if (method.name, seed) in outcomes
    ]
