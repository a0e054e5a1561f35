"""The analysed run's report after ``abs-eval analyze``: its files rewritten with the sensitivity section, and
its Prefect report artifact published again (one more version under the key the evaluate flow used).

Why analyze does it: the evaluate flow writes and publishes a run's report when the run ends, before any
variant exists; the sensitivity section (``tasks.results.report.sensitivity``) reads the variants from the
SQL views, so without this the curves would reach ``report.md`` and the Prefect UI only with the next
evaluation of the same settings. The files go where the evaluate flow writes them
(``runs/run=<id>/report.md``, its plots and gallery: ``tasks.results.report.write_report``), the artifact
under ``artifact_key("report", <the run's deployment>, <dataset>, <model>)``, the run's own series.

When: the report is rewritten when this analysis computed a variant part, or when ``report.md`` is missing
or lacks a row for one of the variants asked for (``report_shows_variants``): a rerun that computed nothing
writes nothing. Published when a Prefect API is there to take it: ``PREFECT_API_URL`` set (a server,
Prefect Cloud) or inside a flow run (a sweep); otherwise not, because any Prefect call without an API starts
a temporary local server first (~45 s, most of an analysis's time); ``publish=True`` asks for it anyway.
A publication that fails leaves the written files and says why in one line: the variants are committed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from tasks import defaults
from tasks.store import Storage, as_storage

__all__ = ["ReportUpdate", "prefect_api_configured", "update_report"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportUpdate:
    """What became of the analysed run's report."""

    report: str
    """``report.md``: its path or URL under the root."""
    written: bool
    """Rewritten by this call (``False``: it already showed every variant asked for, or ``--no-report``)."""
    artifact_key: str | None = None
    """The Prefect markdown artifact's key it was published under; ``None``: not published (``note`` says why)."""
    note: str = ""


def prefect_api_configured() -> bool:
    """Whether a Prefect API call goes to an API that exists: ``PREFECT_API_URL`` set, or inside a flow run."""
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value()) or FlowRunContext.get() is not None


def update_report(
    root: str | Storage,
    record: dict,
    variant_names: Sequence[str],
    *,
    computed: bool,
    write: bool | None = None,
    publish: bool | None = None,
) -> ReportUpdate:
    """Rewrite the report of the run ``record`` (its ``run.json``) when it is stale or ``write`` is True, and
    publish it when ``publish`` (default: when :func:`prefect_api_configured`). ``variant_names``: the
    variants this analysis asked for; ``computed``: whether it committed any variant part."""
    from tasks.results.report import report_file, report_shows_variants, write_report

    st = as_storage(root)
    run_id = record["run_id"]
    rel = report_file(run_id)
    where = st.url(rel)
    if write is False:
        return ReportUpdate(where, False, note="not rewritten (--no-report)")
    stale = (
        computed
        or not st.exists(rel)
        or not report_shows_variants(st.fs.cat_file(st.path(rel)).decode(), variant_names)
    )
    if not (stale or write or publish):
        return ReportUpdate(where, False, note="already shows these variants")
    manifest = write_report(st, run_id)
    if publish is False:
        return ReportUpdate(where, True, note="artifact not published (--no-publish)")
    if publish is None and not prefect_api_configured():
        return ReportUpdate(
            where,
            True,
            note="artifact not published: no Prefect API configured (set PREFECT_API_URL, or --publish "
            "to publish through a temporary local server)",
        )
    try:
        key = publish_report_artifact(manifest, record)
    except Exception as exc:  # the files are written and the variants committed: say why and go on
        log.warning("report artifact not published (%s: %s)", type(exc).__name__, exc)
        return ReportUpdate(where, True, note=f"artifact not published ({type(exc).__name__}: {exc})")
    return ReportUpdate(where, True, artifact_key=key)


def publish_report_artifact(manifest, record: dict) -> str:
    """Publish ``manifest``'s markdown (images embedded) under the run's report key, as the evaluate flow does
    (``flows.evaluate.publish_report``); returns the key. The accuracy table artifact is not published
    again: the variants change none of the run's own numbers.

    Which flow run the version belongs to: inside a flow run (a sweep), that one; otherwise the evaluate flow
    run that produced the run (``flow_run_id`` of its record) when this API knows it, so the new version shows
    in that run's Artifacts tab beside the first; else none (a run evaluated against another API)."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate
    from prefect.context import FlowRunContext
    from prefect.exceptions import ObjectNotFound

    from tasks.results.artifacts import artifact_key, report_artifacts

    art = report_artifacts(manifest)
    key = artifact_key("report", record.get("deployment") or defaults.DEPLOYMENT, record["dataset"], record["model"])
    if FlowRunContext.get() is not None:
        create_markdown_artifact(markdown=art["markdown"], key=key, description=art["markdown_description"])
        return key
    with get_client(sync_client=True) as client:
        flow_run_id = record.get("flow_run_id")
        if flow_run_id:
            try:
                flow_run_id = client.read_flow_run(UUID(str(flow_run_id))).id
            except (ObjectNotFound, ValueError):
                flow_run_id = None
        client.create_artifact(
            ArtifactCreate(
                type="markdown",
                key=key,
                description=art["markdown_description"],
                data=art["markdown"],
                flow_run_id=flow_run_id or None,
            )
        )
    return key
