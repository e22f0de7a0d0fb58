"""Experiment: the search for a base model behind OpenPipe's "Mistral 7B Fine-Tune Optimized".
Every candidate is fine-tuned on every task; an LLM judge compares the fine-tunes and the hosted
baselines pairwise, and a Bradley-Terry model fitted to all comparisons ranks them; the top
candidates and a baseline candidate are then fine-tuned on a task held out from the whole
search, where the winner's lead must hold."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from crucible.api.base import ApiModel, api_config, cel, defaulted
from crucible.api.common import (
    EXACTLY_ONE_MODEL,
    MAX_TEXT,
    ModelSource,
    Reason,
    Resources,
    RunStatus,
    Serving,
)
from crucible.api.evalrun import EvalModel, EvaluationData, Judge, JudgeRating, Scoring
from crucible.api.finetunejob import (
    Dataset,
    Hyperparameters,
    Lora,
    TrainingMethod,
    TrainingResources,
)
from crucible.api.formats import DNS_LABEL, DnsLabel

# Whether two training data sources are the same file: CEL cannot compare two objects declared
# apart, so field by field.
SAME_DATA = (
    "(has({a}.configMap) && has({b}.configMap) && {a}.configMap.name == {b}.configMap.name "
    "&& {a}.configMap.key == {b}.configMap.key) "
    "|| (has({a}.pvc) && has({b}.pvc) && {a}.pvc.claimName == {b}.pvc.claimName "
    "&& {a}.pvc.path == {b}.pvc.path) "
    "|| (has({a}.uri) && has({b}.uri) && {a}.uri == {b}.uri) "
    "|| (has({a}.datasetRef) && has({b}.datasetRef) && {a}.datasetRef.name == {b}.datasetRef.name)"
)

# Names join into child names (<experiment>-<candidate>-<task>), which stay under 63 characters.
MAX_PART = 20


class Candidate(ModelSource):
    """A base model to search over: a stored model (uri) or a ModelMerge or FineTuneJob
    (modelRef; a FineTuneJob must write merged weights)."""

    model_config = api_config(EXACTLY_ONE_MODEL)

    name: DnsLabel = DNS_LABEL.field(
        description="Name of the candidate in rankings, metrics and its fine-tunes' names.",
        min_length=1,
        max_length=MAX_PART,
    )


class ExperimentTask(ApiModel):
    """One task: data to fine-tune every candidate on, and how to evaluate the results."""

    name: DnsLabel = DNS_LABEL.field(
        description="Name of the task in rankings and its children's names.",
        min_length=1,
        max_length=MAX_PART,
    )
    dataset: Dataset = Field(
        description="Training data, as a FineTuneJob takes it (configMap, pvc, uri or a "
        "SyntheticDataset's datasetRef) and its format."
    )
    evaluation: EvaluationData = Field(
        description="What the task's fine-tunes are judged and scored on: the judge compares "
        "answers to the prompts (or, without them, to the multiple-choice questions)."
    )


class FineTuneTemplate(ApiModel):
    """The FineTuneJob every (candidate, task) gets; its base model and data are filled in."""

    model_config = api_config(
        cel(
            "self.method != 'cpt'",
            "spec.fineTune.method: a task trains on its dataset's rows, and cpt reads "
            "documents: use sft or dpo",
            field_path=".method",
            reason="FieldValueInvalid",
        )
    )

    method: TrainingMethod = Field(
        default=TrainingMethod.SFT, description="sft or dpo (dpo needs preference data)."
    )
    lora: Lora = defaulted(Lora(), description="LoRA/QLoRA adapter settings.")
    hyperparameters: Hyperparameters = defaulted(
        Hyperparameters(), description="Optimisation settings."
    )
    merge_adapter: bool = Field(
        default=False,
        description="Also write merged weights, which the evaluations then serve (no LoRA at "
        "serving time).",
    )
    resources: TrainingResources = defaulted(
        TrainingResources(), description="Compute of each training Job."
    )


class EvaluationTemplate(ApiModel):
    """The settings of the EvalRuns the experiment creates (one per task)."""

    scoring: Scoring = Field(
        default=Scoring.AUTO, description="How multiple-choice answers are scored (EvalRun)."
    )
    repeats: int = Field(default=5, ge=1, le=200, description="Rounds of generation scoring.")
    seed: int = Field(default=0, ge=0, description="Seed of shuffles and sampling.")
    temperature: float = Field(
        default=0.7, ge=0, le=2, description="Sampling temperature of the models' answers."
    )
    max_tokens: int = Field(default=256, ge=1, le=32768, description="Tokens per answer.")
    concurrency: int = Field(default=8, ge=1, le=1024, description="Requests in flight per model.")
    system_prompt: str | None = Field(
        default=None, description="System prompt of the models' answers.", max_length=MAX_TEXT
    )
    serving: Serving = defaulted(Serving(), description="vLLM settings of the fine-tunes.")
    resources: Resources = defaulted(
        Resources(gpus=0), description="Compute of each eval Job (no GPU unless asked for)."
    )


class Validation(ApiModel):
    """Which candidates go on to the held-out task."""

    top: int = Field(
        default=1,
        ge=1,
        le=16,
        description="How many of the best-ranked candidates are fine-tuned on the held-out task "
        "(with the baseline candidate; and the runner-up when the winner is the baseline "
        "candidate and no hosted baseline is there to compare it with).",
    )
    baseline: str = Field(
        description="The candidate the winner is checked against there (e.g. the plain base "
        "model); it is fine-tuned on the held-out task too.",
        min_length=1,
        max_length=MAX_PART,
    )


class Baseline(EvalModel):
    """A hosted model ranked beside the fine-tunes: an OpenAI-compatible endpoint."""

    model_config = api_config(
        cel(
            "has(self.endpoint) && !has(self.uri) && !has(self.modelRef)",
            "a baseline is an endpoint (an OpenAI-compatible server that is already running); "
            "put models to fine-tune under spec.candidates",
            reason="FieldValueInvalid",
        )
    )


class ExperimentSpec(ApiModel):
    """The search: candidates by tasks, a held-out task, how to fine-tune and judge."""

    model_config = api_config(
        cel(
            "!self.tasks.exists(t, t.name == self.heldOut.name)",
            "spec.heldOut.name names one of spec.tasks: the held-out task must stay out of the "
            "search; give it its own name and data",
            field_path=".heldOut.name",
            reason="FieldValueInvalid",
        ),
        cel(
            "!self.tasks.exists(t, "
            + SAME_DATA.format(a="t.dataset", b="self.heldOut.dataset")
            + ")",
            "spec.heldOut.dataset is the training data of one of spec.tasks: the held-out task "
            "must stay out of the search; give it data of its own",
            field_path=".heldOut.dataset",
            reason="FieldValueInvalid",
        ),
        cel(
            "self.candidates.all(c1, self.candidates.all(c2, c1.name == c2.name || "
            "(self.tasks.map(t, t.name) + [self.heldOut.name]).all(t1, "
            "(self.tasks.map(t, t.name) + [self.heldOut.name]).all(t2, "
            "c1.name + '-' + t1 != c2.name + '-' + t2))))",
            "two candidate and task names join into the same fine-tune name (candidate a with "
            "task b-c, and candidate a-b with task c, both make <experiment>-a-b-c): rename "
            "one of them",
            field_path=".candidates",
            reason="FieldValueInvalid",
        ),
        cel(
            "self.candidates.exists(c, c.name == self.validation.baseline)",
            "spec.validation.baseline must be the name of one of spec.candidates: set it to "
            "one of their names",
            field_path=".validation.baseline",
            reason="FieldValueInvalid",
        ),
        cel(
            "!has(self.baselines) || !self.baselines.exists(b, "
            "self.candidates.exists(c, c.name == b.name))",
            "a baseline has the name of a candidate: names in rankings must be unique",
            field_path=".baselines",
            reason="FieldValueInvalid",
        ),
    )

    candidates: list[Candidate] = Field(
        min_length=1,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="Base models to search over; names must be unique.",
    )
    tasks: list[ExperimentTask] = Field(
        min_length=1,
        max_length=8,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="Tasks every candidate is fine-tuned and judged on; names must be unique.",
    )
    held_out: ExperimentTask = Field(
        description="The task held out from the search, on which the winner is checked."
    )
    fine_tune: FineTuneTemplate = defaulted(
        FineTuneTemplate(), description="How every candidate is fine-tuned on every task."
    )
    evaluation: EvaluationTemplate = defaulted(
        EvaluationTemplate(), description="How every task's fine-tunes are evaluated."
    )
    baselines: list[Baseline] | None = Field(
        default=None,
        max_length=8,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="Hosted models ranked beside the fine-tunes on every task and the held-out "
        "one (endpoints with their API keys from Secrets).",
    )
    judge: Judge = Field(
        description="The LLM judge of every pairwise comparison (served by the operator from a "
        "model source, or an endpoint)."
    )
    validation: Validation = Field(description="Which candidates go on to the held-out task.")
    max_concurrent_jobs: int = Field(
        default=4,
        ge=1,
        le=1000,
        description="At most this many children run at once (fine-tunes, evaluations and the "
        "ranking Jobs); the others wait, not yet created.",
    )


ChildPhase = Literal["Pending", "Waiting", "Running", "Succeeded", "Failed", "NotStarted"]


class ChildCounts(ApiModel):
    """Children of one kind by phase."""

    not_started: int = Field(default=0, ge=0, description="Not created yet (waiting their turn).")
    pending: int = Field(default=0, ge=0, description="Created, not running yet.")
    waiting: int = Field(default=0, ge=0, description="Waiting for an input.")
    running: int = Field(default=0, ge=0, description="Running.")
    succeeded: int = Field(default=0, ge=0, description="Succeeded.")
    failed: int = Field(default=0, ge=0, description="Failed.")


Stage = Literal["Search", "Ranking", "HeldOut", "Verdict", "Done"]


class ExperimentProgress(ApiModel):
    """How far the experiment got."""

    stage: Stage = Field(
        description="Search (fine-tunes and evaluations per task), Ranking (the overall "
        "ranking), HeldOut (the top candidates on the held-out task), Verdict, Done."
    )
    fine_tune_jobs: ChildCounts = Field(description="The experiment's FineTuneJobs by phase.")
    eval_runs: ChildCounts = Field(description="The experiment's EvalRuns by phase.")
    active: int = Field(ge=0, description="Children running now (at most maxConcurrentJobs).")


class RankedModel(ApiModel):
    """One model of the overall ranking."""

    model: str = Field(description="A candidate (its fine-tunes) or a baseline.")
    baseline: bool = Field(description="Whether it is a hosted baseline rather than a candidate.")
    rating: float = Field(description="Bradley-Terry rating on the Elo-like scale (mean 1000).")
    ci95_low: float = Field(description="Lower bound of the bootstrap 95% interval.")
    ci95_high: float = Field(description="Upper bound of the bootstrap 95% interval.")
    regularized: bool = Field(
        default=False,
        description="True when no maximum-likelihood estimate exists and a weak prior was "
        "used (some model never won or never lost).",
    )


class TaskRanking(ApiModel):
    """The ranking on one task: its EvalRun's judge ratings."""

    task: str = Field(description="Name of the task.")
    eval_run: str = Field(description="The EvalRun that judged it.")
    comparisons: int = Field(ge=0, description="Readable verdicts of the judge on this task.")
    ratings: list[JudgeRating] = Field(max_length=32, description="Ratings, best first.")


class ChildFailure(ApiModel):
    """A child that failed, and what the experiment did about it."""

    kind: str = Field(description="Kind of the child.")
    name: str = Field(description="Name of the child.")
    reason: Reason = Field(description="Reason of its Ready condition, or TooFewModels.")
    message: str = Field(description="Why it failed, as it says.", max_length=4096)
    consequence: str = Field(description="What the experiment does without it.")


class HeldOutVerdict(ApiModel):
    """Whether the search's winner keeps its lead on the held-out task."""

    task: str = Field(description="The held-out task.")
    winner: str = Field(description="The search's best-ranked candidate.")
    runner_up: str = Field(description="The best of the other models on the held-out task.")
    rating_difference: float = Field(
        description="Winner's rating minus the runner-up's, on the held-out task."
    )
    ci95_low: float = Field(description="Lower bound of the bootstrap 95% interval of it.")
    ci95_high: float = Field(description="Upper bound of that interval.")
    comparisons: int = Field(ge=0, description="Readable verdicts of the judge on the task.")
    holds: bool = Field(
        description="True when the interval lies above zero: the winner's lead holds."
    )
    ratings: list[JudgeRating] = Field(
        max_length=32, description="Ratings on the held-out task, best first."
    )


class ExperimentStatus(RunStatus):
    """Observed state of an Experiment."""

    progress: ExperimentProgress | None = Field(default=None, description="How far it got.")
    comparisons: int | None = Field(
        default=None, ge=0, description="Judge verdicts the overall ranking is fitted to."
    )
    ranking: list[RankedModel] | None = Field(
        default=None,
        max_length=32,
        description="The overall ranking: Bradley-Terry by maximum likelihood over the "
        "comparisons of all tasks, each candidate one player across tasks; best first.",
    )
    task_rankings: list[TaskRanking] | None = Field(
        default=None, max_length=8, description="The ranking on each task."
    )
    held_out: HeldOutVerdict | None = Field(
        default=None, description="The verdict on the held-out task."
    )
    failures: list[ChildFailure] | None = Field(
        default=None, max_length=64, description="Children that failed."
    )
    results_uri: str | None = Field(
        default=None, description="Where the ranking and all its comparisons were written."
    )
