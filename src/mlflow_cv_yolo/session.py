"""One experiment session, from its stack's start to its promotion decision.

Like pytest-xdist's DSession, this object owns a session's whole life on the
controller (or the only process); the pytest plugin (fixtures/controller.py) calls one
method a hook, in this order:

1. `start()`      check every input, start the stack and resolve the weights, put the
                  data on the stack, open the session's parent run -> `SessionInfo`,
                  what each worker gets (xdist's workerinput)
2. `collected()`  the tests the session selected (after -k)
3. `record()`     each test's outcome, as pytest reports it (also a crashed worker's)
4. `finish()`     was the session complete? decide, promote, report -> `Conclusion`
5. `stop()`       the health monitor, then the stack
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_cv_yolo import preflight
from mlflow_cv_yolo.data.node_cache import DataSource
from mlflow_cv_yolo.decide import promotion, ranking
from mlflow_cv_yolo.decide.conclusion import Conclusion
from mlflow_cv_yolo.decide.promotion import Completeness
from mlflow_cv_yolo.errors import StackError
from mlflow_cv_yolo.handoff import SessionInfo
from mlflow_cv_yolo.preflight import InputError
from mlflow_cv_yolo.present import progress, report
from mlflow_cv_yolo.runs import reuse, tracking, training_run
from mlflow_cv_yolo.runs.executors import make_executor
from mlflow_cv_yolo.settings import Settings
from mlflow_cv_yolo.stack import ServiceError, StackInfo, choose, make_stack
from mlflow_cv_yolo.stack.claim import StackInUse, claim
from mlflow_cv_yolo.train import devices, interrupts, ray_cluster, weights
from mlflow_cv_yolo.train.grid import RunConfig

CURVES = (
    "mAP50-95",
    "train/box_loss",
    "train/cls_loss",
    "train/dfl_loss",
    "val/box_loss",
    "val/cls_loss",
    "val/dfl_loss",
)


@dataclass
class _Test:
    phases: dict[str, str] = field(default_factory=dict)  # "setup"/"call"/"teardown"/"???" -> outcome
    run_id: str | None = None
    reused_from: str | None = None  # its run is a FINISHED run of that session (see reuse)
    resumed_from: str | None = None  # its run continued one that session left unfinished

    @property
    def passed(self) -> bool:
        return self.phases.get("call") == "passed" and "failed" not in self.phases.values()


def _dvc_remote(s3) -> str:
    """Where a session's stack keeps the DVC remote: in its own S3."""
    return f"s3://{s3.bucket}/dvc"


def git_commit(root: Path) -> str | None:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return (result.stdout.strip() or None) if result.returncode == 0 else None


class Session:
    def __init__(self, settings: Settings, grid: list[RunConfig], log: Callable[[str], None] = print):
        self.settings = settings
        self.grid = grid
        self.log = log
        self.session_id = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
        self.stack = None
        self.stack_info: StackInfo | None = None
        self.info: SessionInfo | None = None
        self.monitor = None
        self.ray: ray_cluster.RayCluster | None = None
        self.selected: list[str] = []
        self.tests: dict[str, _Test] = {}
        self.stack_failure: str | None = None
        self._claim = None
        self._found: devices.Found | None = None
        self.devices: tuple[str, ...] = ()
        # xdist workers to start (devices.workers_to_start); 0: the tests run in this
        # process, every configuration reusing a finished run (reuse.plan)
        self.workers = settings.workers
        self._state_dir: Path | None = None
        self._ready_in = self._state_shown = ""

    # -- 1. start ---------------------------------------------------------------------

    def start(self) -> SessionInfo:
        """Raises InputError (nothing started) or StackError (what started is stopped)."""
        s = self.settings
        kind, reason = choose(s.stack)
        data_state = self._check_inputs(kind)
        choice = self._required_weights()
        self._state_dir = Path(tempfile.mkdtemp(prefix="cv-yolo-stack-")) if s.fresh_stack else s.stack_dir
        self._start_ray(kind)
        self.stack = make_stack(kind, self._state_dir, log=self.log, **s.images)
        if kind != "external":  # a shared external server has no folder of ours
            try:
                self._claim = claim(self.stack.state_dir, session=self.session_id, what="an experiment session")
            except StackInUse as exc:
                raise InputError(f"--stack-dir: {exc}") from None
        started = time.monotonic()
        # Looking for the weights (maybe downloading them) and AMP's check overlap the stack's start.
        with ThreadPoolExecutor(2) as pool:
            model = pool.submit(lambda: choice or weights.resolve(self.grid[0].model))
            amp = pool.submit(self._amp_check)
            try:
                self.stack_info = self.stack.start(reason)
            except (ServiceError, RuntimeError) as exc:
                raise StackError(f"--stack {kind}: {exc}") from None
            choice = model.result()
            amp_check = amp.result()
        ready = f"{time.monotonic() - started:.1f} s"
        # This process's MLflow calls by URI (models:/..., runs:/...) resolve on this session's server.
        mlflow.set_tracking_uri(self.stack_info.tracking_uri)
        # DVC's push of the dataset (about 2 s) overlaps the session's first tracking calls
        # and the reuse lookups; it has ended when start() returns, before any run needs it.
        with ThreadPoolExecutor(1) as pool:
            pushed = pool.submit(self._push_data, data_state)
            self._open(kind, choice, amp_check, self._lineage(data_state))
            pushed.result()
        self._ready_in, self._state_shown = (
            ready,
            (f"{self._state_dir} (throwaway)" if s.fresh_stack else str(self.stack.state_dir)),
        )
        self._start_monitor(kind)
        return self.info

    def _open(self, kind: str, choice: weights.ModelChoice, amp_check: str | None, lineage: dict) -> None:
        """The session's parent run and SessionInfo, and the reuse plan."""
        s = self.settings
        client = MlflowClient(self.stack_info.tracking_uri)
        try:
            experiment_id = tracking.ensure_experiment(client, s.experiment)
        except MlflowException as exc:
            raise InputError(f"--experiment {s.experiment}: {exc.message}") from None
        self._end_dead_session(client, experiment_id)
        commit = git_commit(s.root)
        parent = client.create_run(
            experiment_id,
            run_name=f"session-{self.session_id}",
            tags={
                tracking.TAG_SESSION: self.session_id,
                tracking.TAG_KIND: "session",
                "suite.stack": kind,
                "pretrained": str(choice.pretrained).lower(),
                **({"mlflow.source.git.commit": commit} if commit else {}),
            },
        )
        self.info = SessionInfo(
            session_id=self.session_id,
            experiment=s.experiment,
            experiment_id=experiment_id,
            tracking_uri=self.stack_info.tracking_uri,
            stack_kind=kind,
            data=str(s.data),
            model_requested=choice.requested,
            model_used=choice.used,
            pretrained=choice.pretrained,
            model_note=choice.note,
            workdir=str(s.runs_dir / self.session_id),
            parent_run_id=parent.info.run_id,
            git_commit=commit,
            devices=self.devices,
            amp_check=amp_check,
            executor=self._executor(lineage),
            **lineage,
        )
        self.info = dataclasses.replace(self.info, data_digest=reuse.data_digest(self.info))
        if self.info.dataset_md5:
            self.info = dataclasses.replace(self.info, dataset=training_run.dataset_fields(self.info))
            # Recorded once here, before any worker: the tracking store creates a dataset on
            # first use, and workers creating it at once collide on its unique key.
            training_run.log_dataset(client, parent.info.run_id, self.info)
        self._plan_reuse(client)

    def _plan_reuse(self, client: MlflowClient) -> None:
        """Look up the grid's reusable runs (reuse.plan). A session with nothing
        to train starts no worker: a worker's start (its imports, its connection) costs
        more than checking every reused run here."""
        if self.settings.rerun:
            return
        placement = devices.place(0, max(1, self.workers), self.devices, devices.cpu_count())
        device = make_executor(self.info.executor).device(placement)
        self.info = dataclasses.replace(self.info, reusable=reuse.plan(client, self.grid, self.info, device=device))
        if len(self.info.reusable) == len(self.grid):
            self.workers = 0

    def _check_inputs(self, kind: str):
        """Everything that can be refused before a process starts or a file is written."""
        s = self.settings
        self._found = devices.probe()
        try:
            self.devices = devices.select(s.device, self._found)
        except devices.DeviceError as exc:
            raise InputError(str(exc)) from None
        ray_cluster.check_settings(s.executor)
        if s.executor.kind == "local":  # Ray places its tasks itself: every worker only waits on one
            self.workers = devices.workers_to_start(s.workers, self.devices, devices.cpu_count())
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if kind == "external":
            if not uri:
                raise InputError("--stack external: set MLFLOW_TRACKING_URI to the tracking server's URL")
            preflight.check_tracking_uri(uri)
        data_state = None
        if s.default_data:
            from mlflow_cv_yolo.data import lineage  # DVC is slow to import; only the default dataset needs it

            try:
                lineage.ensure_built(s.root, log=self.log)
            except lineage.LineageError as exc:
                raise InputError(str(exc)) from None
            data_state = lineage.check_dataset(s.root, lineage.DEFAULT_OUT)
            if not data_state.clean and not s.allow_dirty_data:
                raise InputError(
                    f"{lineage.DEFAULT_OUT} differs from dvc.lock: {'; '.join(data_state.problems)}. "
                    "Run `dvc repro` (rebuild) or `dvc pull` (fetch the locked version), "
                    "or pass --allow-dirty-data to train on it anyway (runs are tagged dirty)"
                )
        preflight.check_dataset(s.data)
        preflight.check_model(self.grid[0].model)
        return data_state

    def _amp_check(self) -> str | None:
        """ultralytics' AMP check, once for the session, where runs train on CUDA with AMP."""
        device = self.devices[0].split()[0]
        if not device.startswith("cuda") or not any(c.values.get("amp", True) for c in self.grid):
            return None
        from mlflow_cv_yolo.train import training

        return training.amp_check(device)

    def _required_weights(self) -> weights.ModelChoice | None:
        """With --require-pretrained, missing weights stop the session before anything starts."""
        if not self.settings.require_pretrained:
            return None
        try:
            return weights.resolve(self.grid[0].model, require_pretrained=True)
        except weights.WeightsError as exc:
            raise InputError(str(exc)) from None

    def _start_ray(self, kind: str) -> None:
        """--executor ray: start or join the cluster before the stack, so that one the
        tracking server cannot serve is refused before anything else starts."""
        if self.settings.executor.kind != "ray":
            return
        from mlflow_cv_yolo.handoff import CLIENT_ENV

        self.ray = ray_cluster.RayCluster(
            self.settings.executor, dict(CLIENT_ENV), self._state_dir / "ray", log=self.log
        )
        self.ray.start()
        self.ray.check_reachable(kind, os.environ.get("MLFLOW_TRACKING_URI"))

    def _executor(self, lineage: dict) -> dict:
        """What workers build their executor from (executors.make_executor)."""
        s = self.settings.executor
        if self.ray is None:
            return {"kind": "local"}
        data = Path(self.settings.data)
        s3 = self.stack_info.s3
        source = DataSource(yaml_path=str(data), yaml_text=data.read_text(), md5=lineage.get("dataset_md5"))
        if source.md5 and s3 is not None:
            from mlflow_cv_yolo.data import lineage as dvc_lineage

            out = self.settings.root / dvc_lineage.DEFAULT_OUT
            source = dataclasses.replace(
                source,
                folder=os.path.relpath(out, data.parent),
                remote_url=lineage.get("dataset_source"),
                endpoint_url=s3.endpoint_url,
                credential_path=str(s3.credentials_file),
            )
        if self.ray.other_machines and not source.fetchable:
            self.log(
                f"ray: nodes on other machines ({', '.join(self.ray.other_machines)}) cannot fetch {data} "
                "(no DVC remote on an S3 they reach): only nodes that share this file system can train"
            )
        return {
            "kind": "ray",
            "address": self.ray.address,
            "cpus_per_run": s.cpus_per_run,
            "gpus_per_run": s.gpus_per_run,
            "data": dataclasses.asdict(source),
        }

    def _lineage(self, state) -> dict:
        """Lineage fields for the SessionInfo; {} for a dataset given with --data."""
        if state is None:
            return {}
        from mlflow_cv_yolo.data import lineage

        s3 = self.stack_info.s3
        source = _dvc_remote(s3) if s3 is not None else "dvc.lock (this stack has no S3 for a DVC remote)"
        return {
            "dataset_md5": state.md5,
            "dataset_dirty": not state.clean,
            "dataset_source": source,
            "dataset_lock_commit": lineage.lock_commit(self.settings.root),
        }

    def _push_data(self, state) -> None:
        """The stack's S3 becomes the DVC remote the lineage names, and gets the data."""
        s3 = self.stack_info.s3
        if state is None or s3 is None:
            return
        from mlflow_cv_yolo.data import lineage

        lineage.publish(
            self.settings.root,
            state,
            url=_dvc_remote(s3),
            endpoint_url=s3.endpoint_url,
            credential_path=s3.credentials_file,
            log=self.log,
        )

    def _end_dead_session(self, client: MlflowClient, experiment_id: str) -> None:
        """A controller killed with SIGKILL (OOM, a closed terminal) left its claim and
        its runs RUNNING: end them, saying so."""
        dead = self._claim.previous if self._claim else None
        if not dead or not dead.get("session"):
            return
        ended = tracking.end_running(
            client,
            experiment_id,
            dead["session"],
            status="KILLED",
            reason=f"session {dead['session']} died (its controller, pid {dead.get('pid')}, "
            f"ended without stopping); marked by session {self.session_id}",
        )
        if ended:
            self.log(
                f"session {dead['session']} was killed before it ended: marked its {len(ended)} RUNNING runs KILLED"
            )

    def _start_monitor(self, kind: str) -> None:
        if kind == "external":
            return
        from mlflow_cv_yolo.stack.monitor import HealthMonitor

        self.monitor = HealthMonitor(self.stack, log=self.log, on_failure=self._stack_failed)
        self.monitor.start()

    def _stack_failed(self, message: str) -> None:
        """From the monitor's thread: the stack is gone for good; stop the session now
        rather than leave every client retrying for many minutes."""
        self.stack_failure = message
        interrupts.interrupt_main("the tracking stack failed")

    def links(self, runs: list[ranking.RunRecord] = ()) -> dict[str, str]:
        """Where to look in MLflow's UI: this session's runs, best first (by id when some
        are reused: those carry their own session's tag), and its parent run."""
        info = self.info
        search = (
            f"attributes.run_id IN ({', '.join(repr(r.run_id) for r in runs)})"
            if any(r.reused_from for r in runs)
            else f"tags.`{tracking.TAG_SESSION}` = '{info.session_id}'"
        )
        return {
            "runs": tracking.runs_view_url(
                info.tracking_uri, info.experiment_id, search=search, order_by=f"metrics.`{ranking.METRIC}`"
            ),
            "session run": tracking.run_url(info.tracking_uri, info.experiment_id, info.parent_run_id),
        }

    def worker_input(self) -> dict:
        return self.info.to_dict()

    def header_lines(self) -> list[str]:
        info, stack = self.info, self.stack_info
        lines = [f"stack: {stack.kind} ({stack.reason})"]
        lines += [f"  {name}: {value}" for name, value in stack.endpoints.items()]
        lines += [f"  ready in: {self._ready_in}", f"  state: {self._state_shown}"]
        lines += [f"session: {info.session_id}, experiment {info.experiment!r}"]
        weights_line = f"weights: {info.model_used}" + ("" if info.pretrained else f" — {info.model_note}")
        lines += [weights_line if info.pretrained else "!" * 8 + " " + weights_line]
        if self.ray is not None:
            lines.append(self.ray.describe())
        data = f"data: {info.data}"
        if info.dataset_md5:
            data += f" (DVC {info.dataset_md5}{', DIRTY: differs from dvc.lock' if info.dataset_dirty else ''})"
        asked = self.settings.workers if self.workers else None  # none started: the reuse line says why
        lines += [
            data,
            devices.describe(
                self.settings.device,
                self._found,
                self.devices,
                max(1, self.workers),
                devices.cpu_count(),
                workers_asked=asked,
            ),
        ]
        if not self.settings.rerun:
            lines.append(
                f"reuse: {len(info.reusable)} of {len(self.grid)} configurations have a finished run with "
                "the same key (--rerun trains them again)"
                + ("; nothing to train: the tests run in this process, no worker started" if self.workers == 0 else "")
            )
        if info.amp_check:
            lines += [f"  AMP check: {info.amp_check}"]
        return lines

    # -- 2. and 3. the tests ----------------------------------------------------------

    def collected(self, test_ids: list[str]) -> None:
        self.selected = list(test_ids)

    def run_states(self) -> dict[str, str]:
        """Each selected test's state in words (queued, epoch k/N mAP x, finished, failed)."""
        epochs = {config.id: config.epochs for config in self.grid}
        states = progress.states(
            MlflowClient(self.info.tracking_uri), self.info.experiment_id, self.session_id, self.selected, epochs
        )
        return {
            test: "reused" if test in self.tests and self.tests[test].reused_from else state
            for test, state in states.items()
        }

    def record(
        self,
        test_id: str,
        *,
        phase: str,
        outcome: str,
        run_id: str | None = None,
        crash: str | None = None,
        reused_from: str | None = None,
        resumed_from: str | None = None,
    ) -> None:
        """One report of one test. A crashed worker's test ("???" phase) and a test that
        failed after its run FINISHED must not leave that run looking usable (a reused
        run is another session's result, and stays as it is)."""
        test = self.tests.setdefault(test_id, _Test())
        test.phases[phase] = outcome
        test.run_id = run_id or test.run_id
        test.reused_from = reused_from or test.reused_from
        test.resumed_from = resumed_from or test.resumed_from
        if outcome != "failed" or self.info is None or test.reused_from:
            return
        client = MlflowClient(self.info.tracking_uri)
        if crash is not None:
            tracking.end_running(
                client,
                self.info.experiment_id,
                self.session_id,
                status="FAILED",
                reason=crash,
                test_id=test_id,
                kinds=("grid",),
            )
        elif test.run_id and client.get_run(test.run_id).info.status == "FINISHED":
            client.set_tag(test.run_id, tracking.TAG_END, f"its test failed in {phase}: the run is not a result")
            client.set_terminated(test.run_id, "FAILED")

    # -- 4. the end -------------------------------------------------------------------

    def finish(self, *, interrupted: bool) -> Conclusion:
        if self.info is None:
            return Conclusion()
        if self.stack_failure:
            return Conclusion(stack_failure=self.stack_failure)
        try:
            return self._conclude(interrupted)
        except Exception:  # the gate must fail loudly, not pass
            return Conclusion(error=traceback.format_exc())

    def _completeness(self, runs, interrupted: bool) -> Completeness:
        status = {r.run_id: r.status for r in runs}
        tests = [self.tests.get(t, _Test()) for t in self.selected]
        finished = sum(1 for t in tests if t.passed and status.get(t.run_id) == "FINISHED")
        failed = sum(
            1 for t in tests if "failed" in t.phases.values() or (t.passed and status.get(t.run_id) != "FINISHED")
        )
        return Completeness(
            selected=len(self.selected), grid=len(self.grid), finished=finished, failed=failed, interrupted=interrupted
        )

    def _conclude(self, interrupted: bool) -> Conclusion:
        s, info = self.settings, self.info
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
        runs = self._runs(client)
        if not runs and not self.selected:
            client.set_terminated(info.parent_run_id, "KILLED" if interrupted else "FINISHED")
            return Conclusion()
        completeness = self._completeness(runs, interrupted)
        if not s.promote:
            decision = promotion.skipped(info.session_id, runs, "--no-promote")
        else:
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
            if decision.outcome == "promoted":
                decision = promotion.promote(
                    client,
                    decision,
                    registered_model=s.registered_model,
                    alias=s.promote_to,
                    tags={
                        "promoted_by.session": info.session_id,
                        "promoted_by.git_commit": info.git_commit or "",
                        **(
                            {"trained_by.session": decision.candidate_reused_from}
                            if decision.candidate_reused_from
                            else {}
                        ),
                        "pretrained": str(info.pretrained).lower(),
                    },
                    data=Path(info.data),
                    # a reused candidate that already holds the alias: nothing new
                    keep_if_held=bool(decision.candidate_reused_from),
                )
            runs = self._runs(client)  # with test/ metrics now
        folder = s.reports_dir / info.session_id
        md, js = decision.write(folder)
        files = report.write_report(
            folder,
            session_id=info.session_id,
            runs=runs,
            histories=tracking.histories(client, runs, CURVES),
            decision=decision.to_dict(),
            run_url=lambda run: tracking.run_url(info.tracking_uri, info.experiment_id, run.run_id),
        )
        # A reused candidate keeps the record of the session that trained it: this one's goes beside it.
        candidate_folder = f"decision/{info.session_id}" if decision.candidate_reused_from else "decision"
        for path in (md, js):
            client.log_artifact(info.parent_run_id, str(path), "decision")
            if decision.candidate_run_id:
                client.log_artifact(decision.candidate_run_id, str(path), candidate_folder)
        for path in (files.html, files.markdown, *files.plots):
            client.log_artifact(info.parent_run_id, str(path), "report")
        client.set_terminated(
            info.parent_run_id, "KILLED" if interrupted else "FAILED" if decision.blocks_the_gate else "FINISHED"
        )
        return Conclusion(
            decision,
            files.html,
            md,
            self.links(runs),
            counts=self._counts(),
            reused=tuple(
                (r.name, r.reused_from, tracking.run_url(info.tracking_uri, info.experiment_id, r.run_id))
                for r in runs
                if r.reused_from
            ),
        )

    def _runs(self, client: MlflowClient) -> list[ranking.RunRecord]:
        """The runs this session ranks: its own (by their session tag) and the finished
        runs of earlier sessions its tests reported as reused (by run id)."""
        own = tracking.session_runs(client, self.info.experiment_id, self.session_id)
        seen = {r.run_id for r in own}
        reused = {
            t.run_id: t.reused_from for t in self.tests.values() if t.reused_from and t.run_id and t.run_id not in seen
        }
        return own + tracking.reused_runs(client, reused)

    def _counts(self) -> str:
        """`6 reused, 2 trained (1 resumed)`: what the selected tests did with their runs."""
        tests = [self.tests[t] for t in self.selected if t in self.tests and self.tests[t].run_id]
        reused = sum(1 for t in tests if t.reused_from)
        resumed = sum(1 for t in tests if t.resumed_from and not t.reused_from)
        text = f"{reused} reused, {len(tests) - reused} trained"
        return text + (f" ({resumed} resumed)" if resumed else "")

    # -- 5. stop ------------------------------------------------------------------------

    def stop(self) -> None:
        """Idempotent: called by pytest's cleanup, and by atexit as a backstop."""
        if self.monitor is not None:
            self.monitor.stop()
            self.monitor = None
        if self.ray is not None:
            self.ray.stop()
            self.ray = None
        if self.stack is not None:
            self.stack.stop()
            self.stack = None
        if self._claim is not None:
            self._claim.release()
            self._claim = None
        if self.settings.fresh_stack and self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)
            self._state_dir = None
