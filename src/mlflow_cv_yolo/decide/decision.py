"""A promotion decision as a value: the criteria and their thresholds, how complete
the session was, the decision itself and its words (the record's markdown, the
review's Δ table, the CI log's failure line)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mlflow_cv_yolo.decide import bootstrap, ranking
from mlflow_cv_yolo.runs.record import RunRecord

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


def skipped(session: str, runs: list[RunRecord], why: str) -> Decision:
    return Decision("skipped", why, session, table=tuple(ranking.runs_table(runs)))
