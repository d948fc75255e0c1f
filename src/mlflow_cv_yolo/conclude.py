"""A session's conclusion, in an order that keeps the registry honest: rank and
decide, register the candidate's version, write the decision record and the report
and log them, and only then move the alias. The session's parent run ends whatever
happens on the way."""

from __future__ import annotations

from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from mlflow_cv_yolo.decide import promotion, registry
from mlflow_cv_yolo.decide.conclusion import Conclusion
from mlflow_cv_yolo.decide.decision import Decision, skipped
from mlflow_cv_yolo.decide.ledger import Ledger
from mlflow_cv_yolo.decide.ranking import METRIC
from mlflow_cv_yolo.handoff import SessionInfo
from mlflow_cv_yolo.present import report
from mlflow_cv_yolo.runs import tracking
from mlflow_cv_yolo.runs.record import RunRecord
from mlflow_cv_yolo.settings import Settings

CURVES = (
    "mAP50-95",
    "train/box_loss",
    "train/cls_loss",
    "train/dfl_loss",
    "val/box_loss",
    "val/cls_loss",
    "val/dfl_loss",
)


def session_runs(client: MlflowClient, info: SessionInfo, ledger: Ledger) -> list[RunRecord]:
    """The runs a session ranks: its own (by their session tag) and the finished runs
    of earlier sessions its tests reported as reused (by run id)."""
    own = tracking.session_runs(client, info.experiment_id, info.session_id)
    seen = {r.run_id for r in own}
    reused = {run_id: session for run_id, session in ledger.reused_runs().items() if run_id not in seen}
    return own + tracking.reused_runs(client, reused)


def links(info: SessionInfo, runs: list[RunRecord] = ()) -> dict[str, str]:
    """Where to look in MLflow's UI: the session's runs, best first (by id when some are
    reused: those carry their own session's tag), and its parent run."""
    if any(r.reused_from for r in runs):
        search = f"attributes.run_id IN ({', '.join(repr(r.run_id) for r in runs)})"
    else:
        search = f"tags.`{tracking.TAG_SESSION}` = '{info.session_id}'"
    return {
        "runs": tracking.runs_view_url(
            info.tracking_uri, info.experiment_id, search=search, order_by=f"metrics.`{METRIC}`"
        ),
        "session run": tracking.run_url(info.tracking_uri, info.experiment_id, info.parent_run_id),
    }


def conclude(settings: Settings, info: SessionInfo, ledger: Ledger, *, interrupted: bool) -> Conclusion:
    s = settings
    client = MlflowClient(info.tracking_uri)
    reason = (
        "the session was interrupted while it ran"
        if interrupted
        else "still RUNNING when its session ended (its test never reported)"
    )
    tracking.end_running(
        client,
        info.experiment_id,
        info.session_id,
        status="KILLED" if interrupted else "FAILED",
        reason=reason,
        kinds=("grid",),
    )
    runs = session_runs(client, info, ledger)
    if not runs and not ledger.selected:
        client.set_terminated(info.parent_run_id, "KILLED" if interrupted else "FINISHED")
        return Conclusion()
    ended = "KILLED" if interrupted else "FAILED"
    try:
        decision = _decide(client, s, info, ledger, runs, interrupted)
        if s.promote:
            runs = session_runs(client, info, ledger)  # with test/ metrics now
        folder = s.reports_dir / info.session_id
        md, js = decision.write(folder)
        files = report.write_report(
            folder,
            session_id=info.session_id,
            runs=runs,
            histories=tracking.histories(client, runs, CURVES),
            decision=decision.to_dict(),
            run_url=lambda run: tracking.run_url(info.tracking_uri, info.experiment_id, run.run_id),
            session_url=tracking.run_url(info.tracking_uri, info.experiment_id, info.parent_run_id),
        )
        _log_records(client, info, decision, (md, js), (files.html, files.markdown, files.review, *files.plots))
        if decision.outcome == "promoted":
            registry.move_alias(client, decision)
        ended = "KILLED" if interrupted else "FAILED" if decision.blocks_the_gate else "FINISHED"
    finally:
        client.set_terminated(info.parent_run_id, ended)
    reused = tuple(
        (r.name, r.reused_from, tracking.run_url(info.tracking_uri, info.experiment_id, r.run_id))
        for r in runs
        if r.reused_from
    )
    return Conclusion(decision, files.html, md, links(info, runs), counts=ledger.counts(), reused=reused)


def _decide(client, s: Settings, info: SessionInfo, ledger: Ledger, runs, interrupted: bool) -> Decision:
    """The decision, with the candidate's version registered (not yet the alias)."""
    if not s.promote:
        return skipped(info.session_id, runs, "--no-promote")
    completeness = ledger.completeness(
        {r.run_id: r.status for r in runs}, interrupted=interrupted, by_test={r.name: r.status for r in runs}
    )
    decision = promotion.decide(
        client,
        runs,
        session=info.session_id,
        completeness=completeness,
        criteria=s.criteria,
        pretrained=info.pretrained,
        weights_note=info.model_note,
        dataset_digest=info.dataset_md5,
        registered_model=s.registered_model,
        data=Path(info.data),
        workdir=Path(info.workdir),
        device=info.devices[0].split()[0],
    )
    if decision.outcome != "promoted":
        return decision
    tags = {
        "promoted_by.session": info.session_id,
        "promoted_by.git_commit": info.git_commit or "",
        **({"trained_by.session": decision.candidate_reused_from} if decision.candidate_reused_from else {}),
        "pretrained": str(info.pretrained).lower(),
    }
    return registry.register(
        client,
        decision,
        registered_model=s.registered_model,
        alias=s.promote_to,
        tags=tags,
        data=Path(info.data),
        keep_if_held=bool(decision.candidate_reused_from),  # a reused candidate that holds the alias: nothing new
    )


def _log_records(client: MlflowClient, info: SessionInfo, decision, records, report_files) -> None:
    """The decision record on the session run and the candidate's run (a reused
    candidate keeps the record of the session that trained it: this one goes beside
    it), the report on the session run."""
    candidate_folder = f"decision/{info.session_id}" if decision.candidate_reused_from else "decision"
    for path in records:
        client.log_artifact(info.parent_run_id, str(path), "decision")
        if decision.candidate_run_id:
            client.log_artifact(decision.candidate_run_id, str(path), candidate_folder)
    for path in report_files:
        client.log_artifact(info.parent_run_id, str(path), "report")
    for path in decision.evaluations.values():  # what each test image contributed, for a later look
        if path.endswith(".npz"):
            client.log_artifact(info.parent_run_id, path, "evaluation")
    champion = {
        f"champion/{name}": value
        for name, value in (decision.champion or {}).items()
        if name.startswith("test/") and isinstance(value, (int, float))
    }
    if champion:
        client.log_batch(info.parent_run_id, metrics=[Metric(k, float(v), 0, 0) for k, v in champion.items()])
