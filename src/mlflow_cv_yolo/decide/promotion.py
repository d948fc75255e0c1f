"""Compare a session's runs, check the promotion criteria, and move a registry
alias to the winner. Selection uses val only; the held-out test split is
evaluated once, for the chosen candidate (and the champion), and reported.

Only a complete session promotes: every selected test passed with its run
FINISHED, and nothing interrupted it. A `-k` slice is a complete session over
fewer configurations, and the decision says so."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_cv_yolo.decide import bootstrap, ranking
from mlflow_cv_yolo.decide import detection_stats as stats
from mlflow_cv_yolo.decide.ranking import RunRecord
from mlflow_cv_yolo.detector import COLUMNS
from mlflow_cv_yolo.runs.tracking import log_model, logged_models
from mlflow_cv_yolo.train.per_image import evaluate_per_image, save_records
from mlflow_cv_yolo.train.training import evaluate

# The registry keeps a version's description in a 5000-character column.
DESCRIPTION_LIMIT = 5000
GATE_STATS = ("ci", "point")
IMPROVEMENT = "improvement over champion"
NO_REGRESSION = "no regression by size or slice"  # or class, on multi-class data


@dataclass(frozen=True)
class Criteria:
    min_map: float  # for runs that started from pretrained weights
    min_map_scratch: float  # for runs trained from scratch (no pretrained weights available)
    min_improvement: float  # over the production champion: the interval's lower bound (ci) or val mAP50-95 (point)
    max_drop: float = 0.01  # the most a gated size or slice may lose: its interval's upper bound >= -max_drop
    gate_stat: str = "ci"  # "ci": paired bootstrap on test; "point": val point figures alone


@dataclass(frozen=True)
class Completeness:
    """How much of what the session set out to run finished."""

    selected: int  # tests the session ran (after -k)
    grid: int  # configurations in the whole grid
    finished: int  # selected tests that passed, with their run FINISHED
    failed: int  # selected tests that failed or crashed
    interrupted: bool  # Ctrl-C, SIGTERM, or a stack that could not be kept up
    killed: int = 0  # selected tests whose run an interruption ended (KILLED) mid-training

    @property
    def not_run(self) -> int:
        return self.selected - self.finished - self.failed - self.killed

    @property
    def complete(self) -> bool:
        return self.selected > 0 and self.finished == self.selected and not self.interrupted

    @property
    def note(self) -> str:
        parts = [f"{self.finished} of {self.selected} runs finished"]
        counts = ((self.failed, "failed"), (self.killed, "killed"), (self.not_run, "not run"))
        parts += [f"{n} {what}" for n, what in counts if n]
        return "; ".join(parts + (["interrupted"] if self.interrupted else []))

    @property
    def scope(self) -> str:
        """'' for the whole grid; a -k slice is named, not hidden."""
        return f"partial grid: {self.selected} of {self.grid} configurations" if self.selected < self.grid else ""


@dataclass(frozen=True)
class Criterion:
    name: str
    threshold: float | None
    value: float | None
    passed: bool
    note: str = ""
    measure: str = ""  # what `value` is, where the name does not say


@dataclass(frozen=True)
class Decision:
    outcome: str  # "promoted", "kept" (already production), "rejected", "incomplete" or "skipped"
    reason: str
    session: str
    scope: str = ""  # "partial grid: 2 of 8 configurations" for a -k slice
    candidate: str | None = None
    candidate_run_id: str | None = None
    candidate_reused_from: str | None = None  # the earlier session that trained the candidate (see reuse)
    criteria: tuple[Criterion, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    champion: dict | None = None
    noise: str = ""
    registered_model: str | None = None
    version: str | None = None
    alias: str | None = None
    dataset_digest: str | None = None
    table: tuple[dict, ...] = ()
    deltas: tuple[dict, ...] = ()  # the Δ table (bootstrap.Delta as dicts): overall, sizes, slices
    evaluations: dict[str, str] = field(default_factory=dict)  # "candidate-test" -> kept per-image .npz

    @property
    def image_noise(self) -> str:
        """How much the test images move Δ, beside the seed noise (how much training does)."""
        overall = next((d for d in self.deltas if d["kind"] == "overall" and d["low"] is not None), None)
        if overall is None:
            return ""
        return (
            f"between test images, the 95% interval of Δ test mAP50-95 is {overall['high'] - overall['low']:.4f} wide "
            f"([{overall['low']:+.4f}, {overall['high']:+.4f}], {overall['images']} images, paired bootstrap)"
        )

    @property
    def failed(self) -> list[Criterion]:
        return [c for c in self.criteria if not c.passed]

    @property
    def blocks_the_gate(self) -> bool:
        """True when the session must exit non-zero."""
        return self.outcome in ("rejected", "incomplete")

    def to_dict(self) -> dict:
        return asdict(self)

    def markdown(self) -> str:
        lines = [
            f"# Promotion decision — session {self.session}",
            "",
            f"**Outcome: {self.outcome}.** {self.reason}",
            "",
        ]
        if self.scope:
            lines += [f"Scope: {self.scope}.", ""]
        if self.candidate:
            lines += [f"Candidate: `{self.candidate}` (run `{self.candidate_run_id}`)", ""]
            if self.candidate_reused_from:
                lines += [
                    f"The candidate's run was reused from session {self.candidate_reused_from}: trained "
                    "there with the same run key (arguments, weights, data, code, libraries, device), "
                    "not retrained by this session; this session evaluated it on test and decided.",
                    "",
                ]
            if self.version:
                lines += [f"Registered as `{self.registered_model}` version {self.version}, alias `{self.alias}`.", ""]
        if self.dataset_digest:
            lines += [f"Dataset digest (DVC): `{self.dataset_digest}`", ""]
        if self.criteria:
            lines += ["| criterion | threshold | value | outcome | note |", "|---|---|---|---|---|"]
            lines += [
                f"| {c.name} | {_fmt(c.threshold)} | {_fmt(c.value)} | {'pass' if c.passed else 'FAIL'} | {c.note} |"
                for c in self.criteria
            ]
        if self.deltas:
            lines += ["", *delta_table(self.deltas)]
        if self.metrics:
            lines += ["", "Candidate metrics: " + ", ".join(f"{k} = {v:.4f}" for k, v in sorted(self.metrics.items()))]
        if self.params:
            lines += [
                "",
                "Candidate params: "
                + ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()) if not k.startswith("version.")),
            ]
        if self.champion:
            lines += ["", "Champion: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in self.champion.items())]
        if self.noise:
            lines += ["", f"Seed noise: {self.noise}"]
        if self.image_noise:
            lines += ["", f"Image noise: {self.image_noise}"]
        if self.table:
            keys = list(self.table[0])
            lines += ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(_fmt(row.get(k)) for k in keys) + " |" for row in self.table]
        return "\n".join(lines) + "\n"

    def write(self, folder: Path) -> tuple[Path, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        md, js = folder / "decision.md", folder / "decision.json"
        md.write_text(self.markdown())
        js.write_text(json.dumps(self.to_dict(), indent=2, default=str))
        return md, js


def delta_table(deltas: tuple[dict, ...]) -> list[str]:
    """The Δ table as markdown lines: one row per view, the gated ones marked."""
    lines = [
        "| test mAP50-95 | candidate | champion | Δ | 95% interval | images | objects | gated |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in deltas:
        interval = "—" if d["low"] is None else f"[{d['low']:+.4f}, {d['high']:+.4f}]"
        delta = "—" if d["delta"] is None else f"{d['delta']:+.4f}"
        gated = "yes" if d["gated"] else f"no (< {bootstrap.MIN_SUPPORT} objects)"
        lines.append(
            f"| {d['name']} | {_fmt(d['candidate'])} | {_fmt(d['champion'])} | {delta} | {interval} "
            f"| {d['images']} | {d['objects']} | {gated if d['kind'] != 'overall' else '—'} |"
        )
    return lines


def ci_criteria(rows: list[bootstrap.Delta], criteria: Criteria, on_val: str) -> list[Criterion]:
    """*improvement*: the overall interval's lower bound exceeds min_improvement;
    *no regression*: no gated size, slice or class has its upper bound below -max_drop."""
    overall = next(r for r in rows if r.kind == "overall")
    improved = overall.low is not None and overall.low > criteria.min_improvement
    note = (
        f"Δ test mAP50-95 {overall.delta:+.4f}, 95% interval {overall.interval} over {overall.images} images "
        f"(paired bootstrap); {on_val}"
        if overall.delta is not None
        else f"no ground truth on test; {on_val}"
    )
    checks = [Criterion(IMPROVEMENT, criteria.min_improvement, overall.low, improved, note, "interval's lower bound")]
    gated = [r for r in rows if r.kind != "overall" and r.gated and r.high is not None]
    shown = [r.name for r in rows if r.kind != "overall" and not r.gated]
    worse = [r for r in gated if r.high < -criteria.max_drop]
    if worse:
        note = "; ".join(f"{r.name} Δ {r.delta:+.4f} {r.interval}" for r in worse)
    else:
        note = f"gated: {', '.join(r.name for r in gated) or 'none'}"
        note += f"; shown only (< {bootstrap.MIN_SUPPORT} objects): {', '.join(shown)}" if shown else ""
    lowest = min((r.high for r in gated), default=None)
    checks.append(Criterion(NO_REGRESSION, 0.0 - criteria.max_drop, lowest, not worse, note, "lowest upper bound"))
    return checks


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "—" if value is None else str(value)


def failure_line(decision: Decision) -> str:
    """One line for the CI log: which criterion failed and by how much."""
    parts = []
    for c in decision.failed:
        if c.name == NO_REGRESSION:
            parts.append(f"{c.name}: {c.note} (upper bound below {c.threshold:+.4f})")
        elif c.value is not None and c.threshold is not None:
            parts.append(
                f"{c.name} = {c.value:.4f}, needs >= {c.threshold:.4f} (short by {c.threshold - c.value:.4f})"
                if c.name != IMPROVEMENT
                else f"{c.name} = {c.value:+.4f}, needs > {c.threshold:.4f}"
                + (f" ({c.measure} on test)" if c.measure else "")
            )
        else:
            parts.append(f"{c.name}: {c.note}")
    return "promotion gate FAILED: " + "; ".join(parts)


def _weights_from_run(client: MlflowClient, run_id: str, into: Path) -> Path:
    return Path(client.download_artifacts(run_id, "weights/best.pt", str(into)))


def _holder(client: MlflowClient, name: str, alias: str):
    """The version holding `alias`, or None (no such model or alias yet)."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def skipped(session: str, runs: list[RunRecord], why: str) -> Decision:
    return Decision("skipped", why, session, table=tuple(ranking.runs_table(runs)))


def decide(
    client: MlflowClient,
    runs: list[RunRecord],
    *,
    session: str,
    completeness: Completeness,
    criteria: Criteria,
    pretrained: bool,
    weights_note: str,
    dataset_digest: str | None,
    registered_model: str,
    data: Path,
    workdir: Path,
    device: str | None = None,
) -> Decision:
    """Rank, evaluate the candidate (and any champion) on val and test, check criteria;
    evaluations run on `device` (default: a GPU where torch sees one, else the CPU)."""
    ranked = ranking.rank_configs(runs)
    base = dict(
        session=session,
        scope=completeness.scope,
        dataset_digest=dataset_digest,
        table=tuple(ranking.runs_table(runs)),
        noise=ranking.seed_noise(ranked).sentence,
    )
    if not completeness.complete:
        return Decision("incomplete", f"not promoted: incomplete session ({completeness.note})", **base)
    candidate = ranking.choose_candidate(ranked)
    complete = Criterion(
        "complete session",
        None,
        None,
        True,
        f"{completeness.note}" + (f" ({completeness.scope})" if completeness.scope else ""),
    )
    if candidate is None:
        return Decision(
            "rejected", "no run finished with a finite mAP50-95: nothing to promote", criteria=(complete,), **base
        )

    threshold, why = (
        (criteria.min_map, "min_map: runs started from pretrained weights")
        if pretrained
        else (
            criteria.min_map_scratch,
            f"min_map_scratch: the runs did not start from the pretrained weights asked for, "
            f"for which min_map ({criteria.min_map}) is set",
        )
    )
    best = candidate.metrics[ranking.METRIC]
    checks = [complete, Criterion("best mAP50-95 (val)", threshold, best, best >= threshold, why)]

    workdir.mkdir(parents=True, exist_ok=True)  # a session that reused every run trained nothing there
    work = Path(tempfile.mkdtemp(prefix="decide-", dir=workdir))
    names = stats.dataset_names(data)
    slices = stats.load_slices(stats.slices_path(data), names)
    imgsz = int(candidate.params.get("imgsz", 320))
    weights = None
    records = None  # the candidate's per-image test evaluation, when this session made one
    evaluations: dict[str, str] = {}
    if candidate.reused_from and {"test/mAP50-95", "test/mAP50"} <= set(candidate.metrics):
        # Evaluated on test when an earlier session chose it: the same weights and data (its key).
        test = {"mAP50-95": candidate.metrics["test/mAP50-95"], "mAP50": candidate.metrics["test/mAP50"]}
    else:
        weights = _weights_from_run(client, candidate.run_id, work / "candidate")
        test, records = evaluate_per_image(
            weights, data=data, imgsz=imgsz, split="test", project=work, name="candidate-test", device=device
        )
        evaluations["candidate-test"] = str(save_records(records, work / "candidate-test.npz"))
        client.log_metric(candidate.run_id, "test/mAP50-95", test["mAP50-95"])
        client.log_metric(candidate.run_id, "test/mAP50", test["mAP50"])
        for key, value in bootstrap.figures(records, slices, names=names).items():
            client.log_metric(candidate.run_id, key, value)
            test[key.removeprefix("test/")] = value
    metrics = {
        **{k: v for k, v in candidate.metrics.items() if k.startswith("best/")},
        **{f"test/{k}": v for k, v in test.items()},
    }
    # The table shows the candidate's test figures beside everyone's val figures.
    runs = [
        dataclasses.replace(r, metrics={**r.metrics, **{f"test/{k}": v for k, v in test.items()}})
        if r.run_id == candidate.run_id
        else r
        for r in runs
    ]
    base["table"] = tuple(ranking.runs_table(runs))

    champion_record = None
    champion = _holder(client, registered_model, "production")
    if champion is not None and champion.run_id == candidate.run_id:
        # A reused run that already holds production: nothing new to judge or register.
        return Decision(
            "kept",
            f"{candidate.name} is {registered_model} v{champion.version} @production already: nothing registered",
            candidate=candidate.name,
            candidate_run_id=candidate.run_id,
            candidate_reused_from=candidate.reused_from,
            criteria=tuple(checks),
            metrics=metrics,
            params=dict(candidate.params),
            **base,
        )
    if champion is None:
        checks.append(
            Criterion(
                IMPROVEMENT,
                criteria.min_improvement,
                None,
                True,
                "no version holds `production`: the absolute threshold alone decides",
            )
        )
    else:
        source = Path(
            mlflow.artifacts.download_artifacts(
                f"models:/{registered_model}@production", dst_path=str(work / "champion")
            )
        )
        champ_weights = next(source.rglob("best.pt"))
        weights = weights or _weights_from_run(client, candidate.run_id, work / "candidate")
        champ_imgsz = int(client.get_run(champion.run_id).data.params.get("imgsz", imgsz)) if champion.run_id else imgsz
        # Re-evaluated beside the champion, so both val figures come from one evaluation code path.
        val = evaluate(weights, data=data, imgsz=imgsz, split="val", project=work, name="candidate-val", device=device)
        champ_val = evaluate(
            champ_weights, data=data, imgsz=champ_imgsz, split="val", project=work, name="champion-val", device=device
        )
        champ_test, champ_records = evaluate_per_image(
            champ_weights, data=data, imgsz=champ_imgsz, split="test", project=work, name="champion-test", device=device
        )
        evaluations["champion-test"] = str(save_records(champ_records, work / "champion-test.npz"))
        evaluations["test-images"] = str(stats.split_images(data, "test"))
        champion_record = {
            "version": champion.version,
            "run_id": champion.run_id,
            "val/mAP50-95": champ_val["mAP50-95"],
            "test/mAP50-95": champ_test["mAP50-95"],
            "candidate val/mAP50-95 (same evaluation)": val["mAP50-95"],
            **bootstrap.figures(champ_records, slices, names=names),
        }
        on_val = f"candidate {val['mAP50-95']:.4f} vs production v{champion.version} {champ_val['mAP50-95']:.4f} on val"
        if criteria.gate_stat == "point":
            gain = val["mAP50-95"] - champ_val["mAP50-95"]
            checks.append(
                Criterion(IMPROVEMENT, criteria.min_improvement, gain, gain > criteria.min_improvement, on_val)
            )
        else:
            if records is None:  # a reused candidate: its test figures were kept, its per-image evaluation not
                _, records = evaluate_per_image(
                    weights, data=data, imgsz=imgsz, split="test", project=work, name="candidate-test", device=device
                )
                evaluations["candidate-test"] = str(save_records(records, work / "candidate-test.npz"))
            rows = bootstrap.compare(records, champ_records, slices, names=names)
            base["deltas"] = tuple(dataclasses.asdict(r) for r in rows)
            checks += ci_criteria(rows, criteria, on_val)

    failed = [c for c in checks if not c.passed]
    if failed:
        outcome, reason = "rejected", "; ".join(f"{c.name} failed" for c in failed) + ": nothing registered"
    else:
        outcome, reason = "promoted", f"{candidate.name} passed every criterion"
    if not pretrained:
        reason += f" [weights: {weights_note}]"
    return Decision(
        outcome,
        reason,
        candidate=candidate.name,
        candidate_run_id=candidate.run_id,
        candidate_reused_from=candidate.reused_from,
        criteria=tuple(checks),
        metrics=metrics,
        params=dict(candidate.params),
        champion=champion_record,
        evaluations=evaluations,
        **base,
    )


def check_loads(model_uri: str) -> None:
    """Load the model as a user will and predict on its own input example."""
    from mlflow.models import Model

    model = mlflow.pyfunc.load_model(model_uri)
    example = Model.load(model_uri).load_input_example(mlflow.artifacts.download_artifacts(model_uri))
    frame, params = example if isinstance(example, tuple) else (example, None)
    boxes = model.predict(frame, params=params)
    if list(boxes.columns) != COLUMNS:
        raise RuntimeError(f"{model_uri} predicts columns {list(boxes.columns)}, expected {COLUMNS}")


def _description(markdown: str) -> str:
    if len(markdown) <= DESCRIPTION_LIMIT:
        return markdown
    tail = "\n\n(truncated: the whole record is the run's artifact decision/decision.md)\n"
    return markdown[: DESCRIPTION_LIMIT - len(tail)] + tail


def candidate_model(client: MlflowClient, run_id: str, *, data: Path, imgsz: int) -> str:
    """The candidate's pyfunc model id: logged into its run now, once (runs keep only
    their weights; logging and checking a model costs every run a second)."""
    existing = logged_models(client, run_id)
    if existing:
        return existing[0].model_id
    from mlflow_cv_yolo.runs.training_run import example_image

    with tempfile.TemporaryDirectory() as tmp:
        weights = _weights_from_run(client, run_id, Path(tmp))
        return log_model(run_id, weights, example_image=example_image(data), imgsz=imgsz)


def register(
    client: MlflowClient,
    decision: Decision,
    *,
    registered_model: str,
    alias: str,
    tags: dict[str, str],
    data: Path,
    keep_if_held: bool = False,
) -> Decision:
    """Log the candidate's model and register it as a new, complete version (tags and
    description set) that `move_alias` then points `alias` at. With `keep_if_held` (a
    reused candidate), a run whose version already holds `alias` is kept: outcome "kept"."""
    held = _holder(client, registered_model, alias) if keep_if_held else None
    if held is not None and held.run_id == decision.candidate_run_id:  # a reused run promoted before
        return dataclasses.replace(
            decision,
            outcome="kept",
            reason=(f"{decision.candidate} is {registered_model} v{held.version} @{alias} already: nothing registered"),
            registered_model=registered_model,
            version=held.version,
            alias=alias,
        )
    imgsz = int(client.get_run(decision.candidate_run_id).data.params.get("imgsz", 320))
    model_id = candidate_model(client, decision.candidate_run_id, data=data, imgsz=imgsz)
    check_loads(f"models:/{model_id}")
    try:  # the client, not mlflow.register_model, which prints to the terminal
        client.create_registered_model(registered_model)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(
        registered_model,
        f"models:/{model_id}",
        run_id=decision.candidate_run_id,
        tags=tags,
        model_id=model_id,
    ).version
    promoted = dataclasses.replace(decision, registered_model=registered_model, version=version, alias=alias)
    client.update_model_version(registered_model, version, description=_description(promoted.markdown()))
    return promoted


def promote(client: MlflowClient, decision: Decision, **register_args) -> Decision:
    """`register`, then `move_alias` (a kept candidate moves nothing). A session writes
    its records between the two; this is both steps at once."""
    registered = register(client, decision, **register_args)
    if registered.outcome == "promoted":
        move_alias(client, registered)
    return registered


def move_alias(client: MlflowClient, decision: Decision) -> None:
    """Point the alias at the registered version, read it back, and take the `stage`
    tag off the version that lost it. Last of a promotion's steps: a failure before
    it leaves the alias on a complete version."""
    registered_model, alias, version = decision.registered_model, decision.alias, decision.version
    previous = _holder(client, registered_model, alias)
    client.set_registered_model_alias(registered_model, alias, version)
    held = client.get_model_version_by_alias(registered_model, alias)
    if held.version != version:
        raise RuntimeError(f"alias {alias} of {registered_model} points at v{held.version}, not v{version}")
    client.set_model_version_tag(registered_model, version, "stage", alias)
    if previous is not None and previous.version != version and previous.tags.get("stage") == alias:
        others = [a for a in client.get_model_version(registered_model, previous.version).aliases if a != alias]
        if others:
            client.set_model_version_tag(registered_model, previous.version, "stage", others[0])
        else:
            client.delete_model_version_tag(registered_model, previous.version, "stage")
