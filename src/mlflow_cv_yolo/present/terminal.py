"""A session in the terminal: its header (stack, weights, data, devices, reuse) and
its end (the runs table, the criteria, the decision and where the records are).
Lines with pytest's markup ({"red": True, ...}); the plugin writes them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mlflow_cv_yolo.decide.conclusion import STACK_FAILED, Conclusion
from mlflow_cv_yolo.decide.decision import failure_line
from mlflow_cv_yolo.handoff import SessionInfo
from mlflow_cv_yolo.stack import StackInfo

Line = tuple[str, dict]
RED, GREEN = {"red": True, "bold": True}, {"green": True, "bold": True}
COLUMNS = ("name", "status", "epochs", "imgsz", "lr0", "seed", "mAP50-95", "mAP50", "precision", "recall")


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def title(conclusion: Conclusion) -> str | None:
    """The separator line's text, or None when there is nothing to say."""
    if conclusion.stack_failure:
        return "tracking stack failed"
    if conclusion.error:
        return "promotion hook crashed"
    if conclusion.decision is not None:
        return f"experiment grid — session {conclusion.decision.session}"
    return None


def lines(conclusion: Conclusion) -> Iterator[Line]:
    if conclusion.stack_failure:
        yield conclusion.stack_failure, RED
        yield f"not promoted: the tracking stack could not be kept up (exit status {STACK_FAILED})", RED
        return
    if conclusion.error:
        yield conclusion.error, {}
        return
    decision = conclusion.decision
    if decision is None:
        return
    columns = COLUMNS + tuple(
        c for c in ("test/mAP50-95", "reused from", "pruned at") if any(c in row for row in decision.table)
    )
    widths = {c: max(len(c), *(len(_cell(row.get(c))) for row in decision.table)) for c in columns}
    yield "  ".join(c.ljust(widths[c]) for c in columns), {}
    for row in decision.table:
        yield "  ".join(_cell(row.get(c)).ljust(widths[c]) for c in columns), {}
    yield "", {}
    if conclusion.counts:
        yield conclusion.counts, {}
    for name, session, url in conclusion.reused:
        yield f"  {name}: reused from session {session} {url}", {}
    if decision.noise:
        yield f"seed noise: {decision.noise}", {}
    if decision.scope:
        yield decision.scope, {}
    for c in decision.criteria:
        value = "—" if c.value is None else f"{c.value:.4f}"
        threshold = "—" if c.threshold is None else f"{c.threshold:.4f}"
        yield f"  [{'pass' if c.passed else 'FAIL'}] {c.name}: {value} (threshold {threshold}) {c.note}", {}
    if decision.outcome == "promoted":
        yield (
            (
                f"decision: PROMOTED {decision.candidate} -> {decision.registered_model} "
                f"v{decision.version} @{decision.alias}"
            ),
            GREEN,
        )
    elif decision.outcome == "skipped":
        yield "decision: skipped (--no-promote)", {}
    elif decision.outcome == "kept":
        yield f"decision: {decision.reason}", GREEN
    else:
        yield f"decision: {decision.reason}", RED
        if decision.failed:
            yield failure_line(decision), RED
    yield f"decision record: {conclusion.record}", {}
    yield f"report: {conclusion.report}", {}
    for name, url in conclusion.links.items():
        yield f"mlflow {name}: {url}", {}


# Stacks whose MLflow server stops with the session and that `ui` reopens from their folder.
REOPENABLE = ("local", "embedded", "docker")


def reopen_line(kind: str, stack_dir: Path | None, fresh: bool) -> Line | None:
    """Under the links: their server stops with the session; how to get it back.
    None for an external server, which outlives the session."""
    if kind not in REOPENABLE or stack_dir is None:
        return None
    if fresh:
        return "the links die with this session's throwaway stack (--fresh-stack keeps nothing)", {}
    command = f"python -m mlflow_cv_yolo ui --stack {kind} --stack-dir {stack_dir}"
    return f"mlflow stops with this session: `{command}` (or `cv-yolo ui ...`) reopens these links", {}


def header_lines(
    info: SessionInfo,
    stack: StackInfo,
    *,
    ready_in: str,
    state: str,
    ray: str | None,
    devices_line: str,
    data_source: tuple[str, bool] | None = None,
) -> list[str]:
    """The session's lines in pytest's header: the stack and its endpoints, the weights
    (loud when not pretrained), the data (its source in words, loud when synthetic:
    `data_source` = (words, loud)) and the devices."""
    lines = [f"stack: {stack.kind} ({stack.reason})"]
    lines += [f"  {name}: {value}" for name, value in stack.endpoints.items()]
    lines += [f"  ready in: {ready_in}", f"  state: {state}"]
    lines += [f"session: {info.session_id}, experiment {info.experiment!r}"]
    weights_line = f"weights: {info.model_used}" + ("" if info.pretrained else f" — {info.model_note}")
    lines += [weights_line if info.pretrained else "!" * 8 + " " + weights_line]
    if ray is not None:
        lines.append(ray)
    data = f"data: {info.data}"
    if info.dataset_md5:
        data += f" (DVC {info.dataset_md5}{', DIRTY: differs from dvc.lock' if info.dataset_dirty else ''})"
    if data_source is not None:
        words, loud = data_source
        data += f" — {words}"
        data = "!" * 8 + " " + data if loud else data
    lines += [data, devices_line]
    if info.amp_check:
        lines += [f"  AMP check: {info.amp_check}"]
    return lines


def reuse_line(reusable: int, selected: int, *, workers: int, continued: int = 0) -> str:
    """Once the tests are selected (after -k): how many of them a finished run answers,
    and how many pruned runs are continued."""
    nothing = "; nothing to train: the tests run in this process, no worker started" if workers == 0 else ""
    runs = f"; {continued} pruned run{'s' if continued != 1 else ''} continued" if continued else ""
    return (
        f"reuse: {reusable} of {selected} configurations have a finished run with the same key "
        f"(--rerun trains them again){runs}{nothing}"
    )
