"""The `skulab` command: `check` validates params.yaml; `list` prints every registered method of each
ablation axis; `init-tracking` creates the MLflow store;
`grid` trains the dirty recognizer cells N at a time through DVC's experiment queue; `predict` runs
the packaged model on images."""

import argparse
import json
import os
import subprocess
import sys
import time
from fnmatch import fnmatchcase
from pathlib import Path

from skulab.axes import AXES, describe, schedule_iterations, uses_metric_loss
from skulab.errors import SkulabError, exit_on_user_error
from skulab.io import read_json
from skulab.layout import CROPS
from skulab.params import PARAMS_FILE, Params, load_params


def check_schedules(params: Params, crops: Path, source: str) -> None:
    """Warm-up and milestones become iterations only with the train split's size, so they are
    checked once the crops exist (training refuses them the same way otherwise), with the schedules'
    own arithmetic (skulab.axes.schedule_iterations, no torch)."""
    train_crops = read_json(crops / "stats.json")["train"]["crops"]
    for name in params.recognizer.variants:
        cfg = params.recognizer.resolve(name)
        iters = train_crops // cfg.batch_size  # drop_last batches; the PK sampler draws at least one
        if uses_metric_loss(cfg.loss):
            iters = max(iters, 1)
        try:
            schedule_iterations(cfg, iters)
        except SkulabError as exc:
            detail = str(exc).removeprefix("recognizer: ")
            raise SkulabError(f"{source}: recognizer.variants.{name}: {detail} ({train_crops} train crops in {crops})") from None


# --- skulab grid: the dirty recognizer cells, N at a time, through DVC's experiment queue ----------

RECOGNIZER_STAGE = "train_recognizer"
QUEUE_POLL_S = 3.0
WORKERS_GONE_S = 60.0  # queued experiments and no worker left for this long: the workers died
WORKER_RESTART_S = 15.0  # queued experiments and no worker for this long: start the workers again
WORKER_RESTARTS = 3


def _bin_env() -> dict[str, str]:
    """The environment for dvc and its queue workers: this venv's bin first on PATH (the workers start
    `dvc`, the stages `python`)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def shared_core_env(jobs: int, environ: dict[str, str]) -> dict[str, str]:
    """What the queue's workers (and so the cells) get added to their environment when `jobs` cells
    share the machine's cores: OpenMP threads that sleep when idle. Its default spinning wait is the
    fastest for one process alone and several times slower for processes sharing cores
    (metrics/bench/omp_wait.md); it changes no result. A user's own OMP_WAIT_POLICY wins."""
    return {"OMP_WAIT_POLICY": "PASSIVE"} if jobs > 1 and "OMP_WAIT_POLICY" not in environ else {}


def _dvc(root: Path, *args: str) -> str:
    """Run dvc in `root`; its stdout. Output goes through a file, not a pipe: `dvc queue start` leaves
    workers running that inherit it, and a pipe would only close when they exit."""
    import tempfile

    command = ["dvc", *args]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        code = subprocess.run(command, cwd=root, env=_bin_env(), stdout=out, stderr=err, stdin=subprocess.DEVNULL).returncode
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if code != 0:
        detail = (stderr or stdout).strip().splitlines()
        raise SkulabError(f"`{' '.join(command)}` failed in {root}: {detail[-1] if detail else f'exit code {code}'}")
    return stdout


def _git(root: Path, *args: str) -> bytes:
    result = subprocess.run(["git", *args], cwd=root, capture_output=True)
    if result.returncode != 0:
        raise SkulabError(f"`git {' '.join(args)}` failed in {root}: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def dirty_cells(root: Path) -> list[str]:
    """The recognizer cells `dvc status` reports changed, after checking that nothing they read is stale."""
    status = json.loads(_dvc(root, "status", "--json", "--with-deps", RECOGNIZER_STAGE) or "{}")
    upstream = sorted(name for name in status if not name.startswith(f"{RECOGNIZER_STAGE}@"))
    if upstream:
        raise SkulabError(
            f"dvc status: {', '.join(upstream)} not up to date, and the recognizer cells read "
            f"{'its' if len(upstream) == 1 else 'their'} outputs; run `dvc repro {' '.join(name.split(':')[-1] for name in upstream)}` first"
        )
    return sorted(status)


def queue_states(root: Path) -> dict[str, str]:
    """Every entry of the repo's DVC experiment queue: name -> Queued | Running | Success | Failed."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {entry["name"]: entry["status"] for entry in repo.experiments.celery_queue.status() if entry.get("name")}


def _workers_alive(root: Path) -> bool:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return bool(repo.experiments.celery_queue.worker_status())


def wait_for_queue(root: Path, names: list[str], jobs: int = 1) -> dict[str, str]:
    """Poll the queue until every one of `names` has finished; print a line whenever the counts change.

    DVC's queue workers sometimes stop with experiments still queued (treeverse/dvc#10562; a stale
    shutdown message from an earlier `dvc queue stop` does it too): they are started again, up to
    WORKER_RESTARTS times, before giving up.
    """
    shown, idle_since, restarts = None, None, 0
    while True:
        states = queue_states(root)
        mine = {name: states.get(name, "Unknown") for name in names}
        counts = {state: sum(value == state for value in mine.values()) for state in ("Queued", "Running", "Success", "Failed")}
        if counts != shown:
            shown = counts
            print(f"grid: {counts['Success'] + counts['Failed']}/{len(names)} done "
                  f"({counts['Running']} running, {counts['Queued']} queued, {counts['Failed']} failed)", flush=True)
        if counts["Queued"] + counts["Running"] == 0:
            return mine
        if counts["Running"] == 0 and not _workers_alive(root):
            idle_since = idle_since or time.monotonic()
            if restarts < WORKER_RESTARTS and time.monotonic() - idle_since > WORKER_RESTART_S:
                restarts += 1
                print(f"grid: the queue's workers stopped with {counts['Queued']} cells queued; starting them again "
                      f"({restarts}/{WORKER_RESTARTS}, treeverse/dvc#10562)", flush=True)
                _dvc(root, "queue", "start", "--jobs", str(jobs))
                idle_since = None
            elif time.monotonic() - idle_since > WORKERS_GONE_S:
                raise SkulabError(f"the DVC queue has {counts['Queued']} grid experiments queued and no worker; "
                                  "run `dvc queue start --jobs N` (see `dvc queue status`)")
        else:
            idle_since = None
        time.sleep(QUEUE_POLL_S)


def queue_cells(root: Path, names: dict[str, str]) -> None:
    """`dvc exp run --queue <cell> --name <name>` for each cell, in this process (one DVC start-up for all)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        for cell, name in names.items():
            try:
                repo.experiments.run(targets=[cell], queue=True, name=name)
            except DvcException as exc:
                raise SkulabError(f"dvc exp run --queue {cell}: {exc}") from None
            print(f"  dvc exp run --queue {cell} --name {name}", flush=True)


def experiment_rev(root: Path, baseline: str, name: str) -> str:
    return _git(root, "rev-parse", f"refs/exps/{baseline[:2]}/{baseline[2:]}/{name}").decode().strip()


def bring_into_workspace(root: Path, revs: dict[str, str]) -> None:
    """Make the workspace hold each cell (stage -> experiment commit) as its experiment left it: its
    dvc.lock entry, the outputs git tracks (metrics, plots: cache false) from the experiment commit,
    the cached ones (checkpoints) from the DVC cache."""
    from dvc.utils.serialize import modify_yaml, parse_yaml_for_update

    lock_path = root / "dvc.lock"
    for stage, rev in revs.items():
        lock = parse_yaml_for_update(_git(root, "show", f"{rev}:dvc.lock").decode(), "dvc.lock")
        entry = lock["stages"][stage]
        for out in entry.get("outs", []):
            listing = _git(root, "ls-tree", "-r", "-z", "--name-only", rev, "--", out["path"]).decode()
            for path in filter(None, listing.split("\0")):  # an uncached output: in the experiment's commit
                target = root / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(_git(root, "show", f"{rev}:{path}"))
        if not lock_path.is_file():
            lock_path.write_text("schema: '2.0'\nstages: {}\n")
        with modify_yaml(str(lock_path)) as data:
            if data.get("stages") is None:
                data["stages"] = {}
            data["stages"][stage] = entry
    if revs:
        _dvc(root, "checkout", "--force", *revs)


def check_patterns(root: Path, patterns: list[str]) -> None:
    """Each cell pattern must match a cell of params.yaml (a typo would silently train nothing)."""
    if patterns:
        params = load_params(root / PARAMS_FILE, sections=("recognizer",))
        known = [f"{variant}-{seed}" for variant in params.recognizer.variants for seed in params.recognizer.seeds]
        for pattern in patterns:
            if not any(fnmatchcase(cell, pattern) for cell in known):
                raise SkulabError(f"cell pattern '{pattern}' matches no recognizer cell; {PARAMS_FILE} has {', '.join(known)}")


def select_cells(dirty: list[str], patterns: list[str]) -> list[str]:
    """The dirty cells whose <variant>-<seed> matches one of the shell-style patterns (all when none)."""
    return [cell for cell in dirty if not patterns or any(fnmatchcase(cell.split("@", 1)[1], p) for p in patterns)]


def run_grid(jobs: int, patterns: list[str]) -> int:
    from skulab.tracking import repo_root

    root = repo_root()
    try:
        baseline = _git(root, "rev-parse", "--verify", "HEAD").decode().strip()
    except SkulabError:
        raise SkulabError(f"{root}: not a git repository with a commit; DVC's experiment queue needs one (git init, git commit)") from None
    check_patterns(root, patterns)
    cells = select_cells(dirty_cells(root), patterns)
    if not cells:
        print(f"grid: every recognizer cell{' matching ' + ' '.join(patterns) if patterns else ''} is up to date (dvc status); nothing to train")
        return 0
    if _git(root, "status", "--porcelain", "--", "dvc.lock").strip():
        # A queued experiment starts from the last commit's dvc.lock: upstream stages run there again, in every cell.
        raise SkulabError("dvc.lock has uncommitted changes, and DVC's queue runs each cell from the last commit, where the "
                          "stages before the cells would run again in every one; commit them first (git add dvc.lock metrics; git commit)")
    busy = sorted(name for name, state in queue_states(root).items() if state in ("Queued", "Running"))
    if busy:
        raise SkulabError(f"the DVC queue already holds {len(busy)} unfinished experiments ({', '.join(busy[:3])}...); "
                          "wait for them or `dvc queue remove --queued` (see `dvc queue status`)")
    shared = shared_core_env(jobs, os.environ)
    os.environ.update(shared)  # for `dvc queue start` below, whose workers run the cells
    stamp = time.strftime("%m%d-%H%M%S")
    names = {cell: f"{cell.split('@', 1)[1]}-{stamp}" for cell in cells}
    print(f"grid: {len(cells)} dirty recognizer cells, {jobs} at a time: {', '.join(cells)}", flush=True)
    if shared:
        print("grid: the cells share the cores: OMP_WAIT_POLICY=PASSIVE for them (results unchanged; set it to override)", flush=True)
    queue_cells(root, names)
    print(f"  dvc queue start --jobs {jobs}", flush=True)
    started = time.monotonic()
    _dvc(root, "queue", "start", "--jobs", str(jobs))
    try:
        states = wait_for_queue(root, list(names.values()), jobs)
    except KeyboardInterrupt:
        print("\ngrid: stopped waiting; the queue goes on (`dvc queue status`; `dvc queue kill <name>` stops one)", file=sys.stderr)
        return 130
    elapsed = time.monotonic() - started
    done = {cell: name for cell, name in names.items() if states[name] == "Success"}
    bring_into_workspace(root, {cell: experiment_rev(root, baseline, name) for cell, name in done.items()})
    print(f"grid: {len(done)}/{len(cells)} cells trained in {elapsed:.0f} s with --jobs {jobs}")
    print(f"{'cell':<40} {'experiment':<32} val_proto_acc  test_proto_acc")
    for cell, name in names.items():
        final = root / "metrics/recognizer" / cell.split("@", 1)[1] / "final.json"
        if cell in done and final.is_file():
            metrics = json.loads(final.read_text())
            print(f"{cell:<40} {name:<32} {metrics.get('val_proto_acc', float('nan')):>13.4f}  {metrics.get('test_proto_acc', float('nan')):>14.4f}")
        else:
            print(f"{cell:<40} {name:<32} {states[name]}: see `dvc queue logs {name}`")
    print("Their dvc.lock entries and outputs are in the workspace now (`dvc repro` goes on with evaluate); "
          "each cell is also a DVC experiment: compare them with `dvc exp show`, restore one with `dvc exp apply <experiment>`.")
    return 0 if len(done) == len(cells) else 1


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="skulab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate every section of params.yaml")
    check.add_argument("--params", default=PARAMS_FILE, help="params file (default: %(default)s)")
    listing = commands.add_parser(
        "list", help="every registered method of each ablation axis: its kind, description and the keys it reads",
        description="Print the registered names of every axis (or of one): losses, optimizers, schedules, augmentations, "
        "backbones, detectors, each with its kind (where the axis has kinds), a description and the params.yaml keys it reads. "
        "The records live in src/skulab/axes.py.",
    )
    listing.add_argument("axis", nargs="?", choices=list(AXES), help="only this axis (default: all)")
    init = commands.add_parser("init-tracking", help="create the MLflow store and experiment once")
    init.add_argument("--params", default=PARAMS_FILE, help="params file (default: %(default)s)")
    grid = commands.add_parser(
        "grid", help="train the dirty recognizer cells N at a time through DVC's experiment queue",
        description="Queue every recognizer cell that `dvc status` reports changed as its own DVC experiment "
        "(`dvc exp run --queue train_recognizer@<variant>-<seed>`), run them JOBS at a time (`dvc queue start --jobs JOBS`), "
        "wait, then bring each finished cell's dvc.lock entry and outputs into the workspace. Each cell keeps its own MLflow "
        "run in this checkout's store. Run the stages before the cells first (dvc repro crop).",
    )
    grid.add_argument("cells", nargs="*", metavar="CELL", help="only the cells <variant>-<seed> matching these shell patterns "
                      "('ranger*', '*-0'), e.g. to split the grid between machines (default: every dirty cell)")
    grid.add_argument("--jobs", "-j", type=int, default=1, help="cells trained at once (default: %(default)s)")
    predict = commands.add_parser(
        "predict", help="products and counts per SKU on images, with the packaged model",
        description="Run the packaged shelf model (dvc stage `package`) on images: one JSON line per image with its "
        "products (box [x, y, w, h], detector_score, sku, confidence, similarity, alternatives) and counts per SKU. "
        "A bad file is named on stderr and the others go on; the exit code is 1 if any file failed.",
    )
    predict.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files, or folders of them")
    predict.add_argument("--model", default=None, help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model or a model folder "
                         "(default: models:/<package.model_name>@<package.alias> from params.yaml, i.e. models:/skulab-shelf@champion)")
    predict.add_argument("--out", default="-", help="results as JSON lines (default: stdout)")
    predict.add_argument("--draw", default=None, metavar="OUT_DIR", help="also write each image with its labelled boxes as PNG here")
    predict.add_argument("--chunk", type=int, default=8, help="images predicted together, their crops batched through the recognizer (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.command == "grid":
        if args.jobs < 1:
            raise SkulabError(f"--jobs: must be at least 1, got {args.jobs}")
        raise SystemExit(run_grid(args.jobs, args.cells))
    if args.command == "predict":
        from skulab.serving.predict import run

        if args.chunk < 1:
            parser.error("--chunk must be >= 1")
        raise SystemExit(run(args.inputs, args.model, args.out, args.draw, args.chunk))
    if args.command == "list":
        print(describe([args.axis] if args.axis else AXES))
        return
    if args.command == "check":
        params = load_params(args.params)
        crops = Path(args.params).parent / CROPS
        if (crops / "stats.json").is_file():
            check_schedules(params, crops, args.params)
        recognizer, detectors = params.recognizer, list(params.detector.variants)
        cells = len(recognizer.variants) * len(recognizer.seeds)
        print(
            f"{args.params}: ok ({len(detectors)} detectors: {', '.join(detectors)}; "
            f"{len(recognizer.variants)} recognizer variants x {len(recognizer.seeds)} seeds = {cells} cells)"
        )
    else:
        from skulab.tracking import ensure_experiment, tracking_uri

        params = load_params(args.params, sections=("mlflow",))
        experiment_id = ensure_experiment(params.mlflow.experiment)
        print(f"MLflow experiment '{params.mlflow.experiment}' (id {experiment_id}) at {tracking_uri()}")


if __name__ == "__main__":
    main()
