"""The session report: plots, a markdown summary and a self-contained HTML page.

The content is built once as a list of blocks (headings, paragraphs, tables,
images) and rendered twice, so the markdown and the HTML cannot drift apart.
Plots use `matplotlib.figure.Figure` directly: no pyplot, so no global backend
or figure registry to touch, and a figure is freed like any other object.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mlflow_cv_yolo.decide.decision import delta_table
from mlflow_cv_yolo.decide.ranking import (
    METRIC,
    LevelEffect,
    RunRecord,
    axis_effects,
    excluded,
    rank_configs,
    runs_table,
    seed_noise,
)
from mlflow_cv_yolo.present import review

History = dict[str, list[tuple[int, float]]]
LOSSES = ("box_loss", "cls_loss", "dfl_loss")
# Shown in their own sections (the runs table and the seed-noise sentence come from the runs).
DECISION_KEYS = ("outcome", "reason", "candidate", "criteria", "table", "noise", "deltas", "evaluations")


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    markdown: Path
    plots: list[Path]  # the flipped images' gallery included
    review: Path  # review.md, for the pull request


class Link(NamedTuple):
    text: str
    url: str


Cell = str | Link


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


class Para:
    """A paragraph: text runs and links, rendered in order."""

    def __init__(self, *parts: Cell) -> None:
        self.parts = parts


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[Cell]]


@dataclass(frozen=True)
class Image:
    path: Path
    alt: str


Block = Heading | Para | Table | Image


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "pass" if value else "FAIL"
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


# --- plots -----------------------------------------------------------------


def _margins(
    fig: Figure, *, left: float, right: float, bottom: float, top: float, wspace: float, hspace: float
) -> None:
    """Fixed margins, in inches. matplotlib's constrained layout fitted them to the
    labels, and took most of the report's time (0.7 s of a session's 1.7 s)."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=wspace,
        hspace=hspace,
    )


def _plot_curves(
    path: Path, runs: Sequence[RunRecord], histories: dict[str, History], panels: list[list[str]], title: str
) -> Path:
    """One panel per metric name, every run on it with the same colour everywhere."""
    rows, cols = len(panels), len(panels[0])
    width, height = 4.5 * cols + 2.5, 3.5 * rows + 1
    fig = Figure(figsize=(width, height), dpi=100)
    axes = fig.subplots(rows, cols, sharex=True, sharey="col", squeeze=False)
    _margins(fig, left=0.8, right=2.5, bottom=0.6, top=0.8 if rows * cols > 1 else 0.6, wspace=0.3, hspace=0.35)
    colours = matplotlib.colormaps["tab10"]
    for r, names in enumerate(panels):
        for c, name in enumerate(names):
            ax = axes[r][c]
            if rows * cols > 1:
                ax.set_title(name)
            else:
                ax.set_ylabel(name)
            for i, run in enumerate(runs):
                points = sorted(histories.get(run.run_id, {}).get(name, []))
                if points:  # markers so that a one-epoch run still shows as a point
                    steps, values = zip(*points, strict=True)
                    ax.plot(steps, values, marker="o", color=colours(i % 10), label=run.name)
            if not ax.has_data():
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            ax.grid(alpha=0.3)
            if r == rows - 1:
                ax.set_xlabel("epoch")
    handles: dict[str, Any] = {}
    for ax in axes.flat:  # one legend entry per run, whichever panel drew it
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    if handles:  # in the right margin, level with the top of the panels
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="upper left",
            fontsize="small",
            bbox_to_anchor=(1 - 2.4 / width, fig.subplotpars.top),
        )
    fig.suptitle(title)
    fig.savefig(path)
    return path


def _plot_effects(path: Path, effects: dict[str, list[LevelEffect]], label: str) -> Path:
    fig = Figure(figsize=(max(6.0, 4.0 * len(effects)), 4.0), dpi=100)
    _margins(fig, left=0.9, right=0.2, bottom=0.6, top=0.6, wspace=0.1, hspace=0)
    if not effects:
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no hyperparameter varies", ha="center", va="center")
        ax.set_axis_off()
    else:
        axes = fig.subplots(1, len(effects), sharey=True, squeeze=False)[0]
        for ax, (axis, levels) in zip(axes, effects.items(), strict=True):
            ax.bar(
                [e.level for e in levels],
                [e.mean for e in levels],
                yerr=[e.std for e in levels],
                capsize=4,
                color="tab:blue",
                alpha=0.8,
            )
            ax.set_xlabel(axis)
            ax.grid(axis="y", alpha=0.3)
        axes[0].set_ylabel(f"{label} (mean ± std)")
    fig.suptitle("Hyperparameter effects")
    fig.savefig(path)
    return path


# --- content ---------------------------------------------------------------


def _decision_blocks(decision: dict[str, Any], link: Callable[[str | None], Cell]) -> list[Block]:
    blocks: list[Block] = [
        Heading("Decision"),
        Para(f"Outcome: {_fmt(decision.get('outcome')).upper()}. {_fmt(decision.get('reason'))}"),
        Para("Candidate: ", link(decision.get("candidate"))),
    ]
    criteria = decision.get("criteria") or []
    if criteria:
        headers = ["name", "threshold", "value", "passed"]
        headers = list(dict.fromkeys(headers + [k for c in criteria for k in c]))
        blocks.append(Table(headers, [[_fmt(c.get(h)) for h in headers] for c in criteria]))
    extra = [[key, _fmt(value)] for key, value in decision.items() if key not in DECISION_KEYS]
    if extra:
        blocks.append(Table(["field", "value"], extra))
    return blocks


def _blocks(
    session_id: str,
    runs: list[RunRecord],
    decision: dict[str, Any],
    run_url: Callable[[RunRecord], str],
    plots: dict[str, Path],
) -> list[Block]:
    by_id = {r.run_id: r for r in runs}
    by_name = {r.name: r for r in runs}

    def link(name: str | None) -> Cell:
        return Link(name, run_url(by_name[name])) if name in by_name else _fmt(name)

    rows = runs_table(runs)
    headers = [h for h in rows[0] if h != "name"] if rows else ["run"]
    # A reused run's row says which session trained it, linked to the run.
    table = Table(
        headers,
        [
            [
                Link(row["name"], run_url(by_id[row["run"]]))
                if h == "run"
                else Link(row[h], run_url(by_id[row["run"]]))
                if h == "reused from" and row[h]
                else _fmt(row[h])
                for h in headers
            ]
            for row in rows
        ],
    )
    ranking = rank_configs(runs)
    label = METRIC.removeprefix("best/")
    blocks: list[Block] = [Heading(f"Experiment report: session {session_id}", 1)]
    blocks += _decision_blocks(decision, link)
    blocks += [Heading(f"Runs, best first (val {label} of the best weights)"), table]
    left_out = excluded(runs)
    if left_out:
        blocks.append(Para("Not ranked: " + "; ".join(f"{r.name} ({why})" for r, why in left_out) + "."))
    blocks += [
        Heading("Configurations and seed noise"),
        Table(
            ["configuration", "seeds", f"mean {label}", "std (population)", "spread (max-min)", "best run"],
            [
                [s.config_id, str(s.n), _fmt(s.mean), _fmt(s.std), _fmt(s.spread), link(s.best_run.name)]
                for s in ranking
            ],
        ),
        Para(seed_noise(ranking).sentence),
        Heading("Hyperparameter effects"),
    ]
    effects = axis_effects(runs)
    if effects:
        blocks.append(
            Table(
                ["axis", "level", f"mean {label}", "std", "runs"],
                [
                    [axis, e.level, _fmt(e.mean), _fmt(e.std), str(e.n)]
                    for axis, levels in effects.items()
                    for e in levels
                ],
            )
        )
    else:
        blocks.append(Para("No hyperparameter varies among the ranked runs."))
    blocks += [
        Image(plots["effects"], "hyperparameter effects"),
        Heading("Curves"),
        Image(plots["map"], f"val {label} per epoch"),
        Image(plots["loss"], "losses per epoch"),
    ]
    return blocks


# --- rendering -------------------------------------------------------------


def _md(cell: Cell) -> str:
    return f"[{cell.text}]({cell.url})" if isinstance(cell, Link) else cell


def _md_cell(cell: Cell) -> str:
    return _md(cell).replace("|", "\\|").replace("\n", " ")


def _markdown(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Para):
            out.append("".join(_md(p) for p in b.parts))
        elif isinstance(b, Table):
            lines = ["| " + " | ".join(b.headers) + " |", "|" + "---|" * len(b.headers)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            out.append("\n".join(lines))
        else:
            out.append(f"![{b.alt}]({b.path.name})")
    return "\n\n".join(out) + "\n"


def _html_cell(cell: Cell) -> str:
    if isinstance(cell, Link):
        return f'<a href="{html.escape(cell.url)}">{html.escape(cell.text)}</a>'
    return html.escape(cell)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}
th{background:#f3f3f3}img{max-width:100%}"""


def _html(title: str, blocks: list[Block]) -> str:
    body = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            body.append("<p>" + "".join(_html_cell(p) for p in b.parts) + "</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.headers)
            rows = "".join("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>" for row in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        else:
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            body.append(f'<img alt="{html.escape(b.alt)}" src="data:image/png;base64,{data}">')
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(
    out_dir: Path,
    *,
    session_id: str,
    runs: list[RunRecord],
    histories: dict[str, History],
    decision: dict[str, Any],
    run_url: Callable[[RunRecord], str],
    session_url: str | None = None,
) -> ReportFiles:
    """Write plots, report.md, report.html and review.md for one session under `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ordered = [next(r for r in runs if r.run_id == row["run"]) for row in runs_table(runs)]
    label = METRIC.removeprefix("best/")
    plots = {
        "map": _plot_curves(out_dir / "curves_map.png", ordered, histories, [["mAP50-95"]], "val mAP50-95 per epoch"),
        "loss": _plot_curves(
            out_dir / "curves_loss.png",
            ordered,
            histories,
            [[f"{split}/{loss}" for loss in LOSSES] for split in ("train", "val")],
            "losses per epoch",
        ),
        "effects": _plot_effects(out_dir / "effects.png", axis_effects(runs), label),
    }
    found, drawn = review.gallery(decision.get("evaluations") or {}, out_dir)
    blocks = _blocks(session_id, runs, decision, run_url, plots)
    at = next(i for i, b in enumerate(blocks) if isinstance(b, Heading) and b.text.startswith("Runs, best first"))
    blocks[at:at] = _review_blocks(decision, found, drawn)  # the decision's section ends there
    markdown = out_dir / "report.md"
    markdown.write_text(_markdown(blocks), encoding="utf-8")
    page = out_dir / "report.html"
    page.write_text(_html(f"Experiment report {session_id}", blocks), encoding="utf-8")
    written = out_dir / "review.md"
    written.write_text(review.markdown(decision, found, session_url=session_url), encoding="utf-8")
    return ReportFiles(html=page, markdown=markdown, plots=[*plots.values(), *drawn], review=written)


def _review_blocks(decision: dict[str, Any], found: list[review.Flip], drawn: list[Path]) -> list[Block]:
    """The Δ table and the flipped images, when the session compared against a champion."""
    deltas = decision.get("deltas") or []
    if not deltas:
        return []
    lines = delta_table(tuple(deltas))
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    blocks: list[Block] = [
        Heading("Against production: Δ test mAP50-95 with 95% intervals (paired bootstrap)", 3),
        Table(cells[0], cells[2:]),
    ]
    if drawn:
        blocks.append(Heading("Images whose outcome flipped most", 3))
        blocks += [
            Image(path, f"{f.name}: candidate {f.candidate_found}, champion {f.champion_found}")
            for f, path in zip(found, drawn, strict=True)
        ]
    return blocks
