"""Compare a session's runs, check the promotion criteria, and move a registry
alias to the winner. Selection uses val only; the held-out test split is
evaluated once, for the chosen candidate (and the champion), and reported.

Only a complete session promotes: every selected test passed with its run
FINISHED, and nothing interrupted it. A `-k` slice is a complete session over
fewer configurations, and the decision says so."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from mlflow_cv_yolo.decide import bootstrap, ranking
from mlflow_cv_yolo.decide import detection_stats as stats
from mlflow_cv_yolo.decide.decision import (
    IMPROVEMENT,
    NO_REGRESSION,
    Completeness,
    Criteria,
    Criterion,
    Decision,
)
from mlflow_cv_yolo.decide.registry import holder, weights_from_run
from mlflow_cv_yolo.runs.record import RunRecord
from mlflow_cv_yolo.train.per_image import evaluate_per_image, save_records
from mlflow_cv_yolo.train.training import evaluate


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
        weights = weights_from_run(client, candidate.run_id, work / "candidate")
        test, records = evaluate_per_image(
            weights, data=data, imgsz=imgsz, split="test", project=work, name="candidate-test", device=device
        )
        evaluations["candidate-test"] = str(save_records(records, work / "candidate-test.npz"))
        test.update({k.removeprefix("test/"): v for k, v in bootstrap.figures(records, slices, names=names).items()})
        now = int(time.time() * 1000)
        client.log_batch(candidate.run_id, metrics=[Metric(f"test/{k}", float(v), now, 0) for k, v in test.items()])
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
    about = dict(
        candidate=candidate.name,
        candidate_run_id=candidate.run_id,
        candidate_reused_from=candidate.reused_from,
        metrics=metrics,
        params=dict(candidate.params),
    )

    champion_record = None
    champion = holder(client, registered_model, "production")
    if champion is not None and champion.run_id == candidate.run_id:
        # A reused run that already holds production: nothing new to judge or register.
        return Decision(
            "kept",
            f"{candidate.name} is {registered_model} v{champion.version} @production already: nothing registered",
            criteria=tuple(checks),
            **about,
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
        weights = weights or weights_from_run(client, candidate.run_id, work / "candidate")
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
        criteria=tuple(checks),
        champion=champion_record,
        evaluations=evaluations,
        **about,
        **base,
    )
