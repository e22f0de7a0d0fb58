"""EvalRun: serve the models with vLLM, run the eval Job against them, keep the summary,
remove the servers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crucible.api.common import Phase, Reason
from crucible.api.contract import WorkloadReport
from crucible.api.evalrun import EvalRunSpec, EvalRunStatus, Scoring
from crucible.api.kinds import EVAL_RUN, RAG_INDEX
from crucible.controllers.lifecycle import (
    Context,
    FailedError,
    Reference,
    config_map_key,
    dependency,
)
from crucible.controllers.registry import register
from crucible.controllers.serving import ServedInputs, ServingController
from crucible.metrics.report import lineage
from crucible.resources import evalrun
from crucible.resources.serving import ServedModel, ServedTarget

# Output heads as peft names them (Llama-like models, GPT-NeoX): LoRA on them is scored wrong.
OUTPUT_HEADS = frozenset({"lm_head", "embed_out"})


@dataclass(frozen=True)
class EvalInputs(ServedInputs):
    rag: evalrun.RagInputs | None
    lineage: dict[str, str]  # each model in words, for the report


async def made_of(ctx: Context, sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ModelMerges and FineTuneJobs the model sources were made from, all the way down
    (as far as they exist)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    todo = [s["modelRef"] for s in sources if s.get("modelRef")]
    while todo:
        ref = todo.pop()
        key = (ref["kind"], ref["name"])
        if key in found:
            continue
        body = await ctx.lookup_run(ref["kind"], ctx.owner.namespace, ref["name"])
        if body is None:
            continue
        found[key] = {**body, "kind": ref["kind"]}
        spec = body.get("spec") or {}
        todo += [
            s["modelRef"]
            for s in [spec.get("baseModel"), *spec.get("models", [])]
            if s and s.get("modelRef")
        ]
    return list(found.values())


async def rag_inputs(ctx: Context, spec: EvalRunSpec) -> evalrun.RagInputs | None:
    if spec.rag is None:
        return None
    index_spec, _ = await dependency(ctx, RAG_INDEX, spec.rag.index_name, "spec.rag.indexName")
    return evalrun.RagInputs(
        table=index_spec.database.table,
        embedding=index_spec.embedding,
        connection=index_spec.database.connection_secret_ref,
    )


class EvalRunController(ServingController[EvalRunSpec, EvalInputs]):
    kind = EVAL_RUN
    role = evalrun.ROLE

    def targets(self, spec: EvalRunSpec) -> list[ServedTarget]:
        return evalrun.served_targets(spec)

    def references(self, spec: EvalRunSpec) -> list[Reference]:
        refs = super().references(spec)
        if spec.rag is not None:
            refs.append(Reference(RAG_INDEX.kind, spec.rag.index_name))
        refs += [
            Reference("ConfigMap", source.config_map.name)
            for source in (spec.dataset, spec.prompts)
            if source is not None and source.config_map is not None
        ]
        return refs

    async def resolve(self, ctx: Context, spec: EvalRunSpec) -> EvalInputs:
        served = await self.served(ctx, spec)
        if spec.scoring != Scoring.GENERATION:
            for target, model in zip(self.targets(spec), served, strict=True):
                if heads := OUTPUT_HEADS.intersection(model.adapter_modules):
                    raise FailedError(
                        Reason.INVALID_REFERENCE,
                        f"{target.field}.modelRef: the adapter of FineTuneJob "
                        f"{target.target.model_ref.name if target.target.model_ref else ''!r} "
                        f"adapts the output head ({', '.join(sorted(heads))}), whose change "
                        "vLLM leaves out of prompt log-probabilities "
                        "(vllm-project/vllm#51594): set spec.scoring: Generation, or set "
                        "spec.mergeAdapter: true on the FineTuneJob to serve merged weights",
                    )
        rag = await rag_inputs(ctx, spec)
        for field, source in (("spec.dataset", spec.dataset), ("spec.prompts", spec.prompts)):
            if source is not None and source.config_map is not None:
                ref = source.config_map
                await config_map_key(ctx, ref.name, ref.key, f"{field}.configMap")
        models = [m.to_api() for m in spec.models]
        return EvalInputs(served, rag, lineage(models, await made_of(ctx, models)))

    def build(
        self, ctx: Context, spec: EvalRunSpec, inputs: EvalInputs, served: list[ServedModel]
    ) -> list[dict[str, Any]]:
        return evalrun.eval_job(
            ctx.owner, spec, served, inputs.rag, ctx.config, lineage=inputs.lineage
        )

    def from_report(
        self, ctx: Context, spec: EvalRunSpec, report: WorkloadReport | None, phase: Phase
    ) -> EvalRunStatus | None:
        if phase != Phase.SUCCEEDED:
            return None
        wanted = [
            ("results", spec.dataset is not None and not (report and report.results)),
            ("judge ratings", spec.prompts is not None and not (report and report.judge_ratings)),
        ]
        if report is None or any(missing for _, missing in wanted):
            what = " and ".join(name for name, missing in wanted if missing) or "report"
            raise FailedError(
                Reason.MISSING_REPORT,
                f"the eval Job succeeded but reported no {what} (neither its pod's "
                "termination message nor a push to the report endpoint has them)",
            )
        best = max(report.results or [], key=lambda r: r.accuracy_mean, default=None)
        return EvalRunStatus(
            results=report.results or None,
            paired_tests=report.paired_tests or None,
            judge_ratings=report.judge_ratings or None,
            judge_comparisons=report.judge_comparisons,
            results_uri=report.results_uri,
            output_uri=report.results_uri,
            best_model=best.model + (" (RAG)" if best.rag else "") if best else None,
            best_accuracy=round(best.accuracy_mean, 4) if best else None,
        )


register(EvalRunController())
