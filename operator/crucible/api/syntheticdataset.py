"""SyntheticDataset: question/answer pairs written by a teacher model from your documents."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from crucible.api.base import ApiModel, api_config, cel, defaulted
from crucible.api.common import (
    EXACTLY_ONE_TARGET,
    MAX_TEXT,
    MAX_URI,
    MODEL_URI_HELP,
    InferenceTarget,
    Resources,
    Serving,
    ServingStatus,
)
from crucible.api.formats import MODEL_URI, ModelUri
from crucible.api.ragindex import Chunking, DocumentSource

DEFAULT_PROMPT = (
    "Below is an excerpt of a product's documentation.\n\n"
    "---\n{chunk}\n---\n\n"
    "Write {pairs} question and answer pairs that a user of the product could ask and that "
    "this excerpt answers. Each answer must be correct, self-contained and use the excerpt's "
    "own terms; do not ask about anything the excerpt does not say.\n"
    'Reply with JSON only: {"pairs": [{"question": "...", "answer": "..."}]}'
)


class SyntheticFormat(StrEnum):
    CHAT = "chat"
    PREFERENCE = "preference"


class Teacher(InferenceTarget):
    """The model that writes the pairs: a model the operator serves with vLLM for the
    duration of the run, or an OpenAI-compatible endpoint."""

    model_config = api_config(EXACTLY_ONE_TARGET)


class Filters(ApiModel):
    """Which generated pairs are kept."""

    max_pair_tokens: int = Field(
        default=512,
        ge=8,
        le=65536,
        description="Pairs whose question plus answer is longer than this (in spec.tokenizer's "
        "tokens) are dropped as tooLong.",
    )
    min_grounding: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Fraction of the answer's content words that must occur in its chunk; "
        "below it a pair is dropped as ungrounded (a cheap lexical check, 0 disables it).",
    )


class SyntheticDatasetSpec(ApiModel):
    """Documents to learn from, the teacher that writes Q&A pairs about them, and how many."""

    model_config = api_config(
        cel(
            "self.format != 'preference' || has(self.rejectedModel)",
            "spec.rejectedModel is required for format preference: name a weaker model "
            "(uri, modelRef or endpoint) whose answers become the rejected ones, or use "
            "format chat",
            field_path=".rejectedModel",
            reason="FieldValueRequired",
        ),
        cel(
            "self.format == 'preference' || !has(self.rejectedModel)",
            "spec.rejectedModel is only used with format preference: remove it or set "
            "format: preference",
            field_path=".rejectedModel",
            reason="FieldValueForbidden",
        ),
        cel(
            "!has(self.prompt) || self.prompt.contains('{chunk}')",
            "spec.prompt must contain the placeholder {chunk}: put {chunk} where the excerpt "
            "goes ({pairs} is replaced by spec.pairsPerChunk)",
            field_path=".prompt",
            reason="FieldValueInvalid",
        ),
    )

    source: DocumentSource = Field(description="Where the documents are (as for a RagIndex).")
    chunking: Chunking = defaulted(
        Chunking(),
        description="How documents are split (default 300 tokens with 30 overlap).",
    )
    tokenizer: ModelUri | None = MODEL_URI.field(
        default=None,
        description=f"Model whose tokenizer counts chunk and pair tokens: {MODEL_URI_HELP}; "
        "defaults to the teacher's when the operator serves it, otherwise words and "
        "punctuation are counted.",
        max_length=MAX_URI,
    )
    teacher: Teacher = Field(description="The model that writes the pairs.")
    pairs_per_chunk: int = Field(
        default=3, ge=1, le=50, description="Pairs asked for per chunk and pass."
    )
    passes: int = Field(
        default=3,
        ge=1,
        le=20,
        description="Times every chunk is sent to the teacher (duplicates are dropped).",
    )
    temperature: float = Field(default=0.5, ge=0, le=2, description="Teacher sampling temperature.")
    max_tokens: int = Field(
        default=1024, ge=16, le=32768, description="Tokens the teacher may write per reply."
    )
    prompt: str | None = Field(
        default=None,
        description="Prompt template: {chunk} is replaced by the excerpt and {pairs} by "
        "pairsPerChunk; the default asks for JSON {pairs: [{question, answer}]}.",
        max_length=MAX_TEXT,
    )
    format: SyntheticFormat = Field(
        default=SyntheticFormat.CHAT,
        description="chat (messages rows, for sft) or preference (prompt, chosen, rejected "
        "rows, for dpo; the rejected answer comes from spec.rejectedModel).",
    )
    rejected_model: InferenceTarget | None = Field(
        default=None,
        description="A weaker model answering each question without the excerpt; its answer "
        "is the rejected one of a preference pair.",
    )
    validation_fraction: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="Fraction of the kept pairs held out as validation.jsonl.",
    )
    filters: Filters = defaulted(Filters(), description="Which generated pairs are kept.")
    seed: int = Field(
        default=0, ge=0, description="Seed sent to the teacher and of the validation split."
    )
    concurrency: int = Field(default=8, ge=1, le=1024, description="Teacher requests in flight.")
    serving: Serving = defaulted(
        Serving(),
        description="vLLM settings for a teacher or rejected model given as uri or modelRef.",
    )
    resources: Resources = defaulted(
        Resources(gpus=0),
        description="Compute for the generation Job (no GPU unless asked for).",
    )


class DroppedPairs(ApiModel):
    """Generated pairs that were not kept, by reason."""

    unparsed: int = Field(default=0, ge=0, description="Teacher replies with no readable pair.")
    empty: int = Field(default=0, ge=0, description="Pairs with an empty question or answer.")
    duplicate: int = Field(
        default=0, ge=0, description="Pairs whose question repeats one already kept."
    )
    too_long: int = Field(default=0, ge=0, description="Pairs over filters.maxPairTokens.")
    ungrounded: int = Field(
        default=0, ge=0, description="Pairs whose answer is not found in its chunk."
    )
    no_contrast: int = Field(
        default=0,
        ge=0,
        description="Preference pairs whose rejected answer is empty or equals the chosen one.",
    )


class PairCounts(ApiModel):
    """What the generation produced."""

    generated: int = Field(ge=0, description="Pairs read from the teacher's replies.")
    kept: int = Field(ge=0, description="Pairs written.")
    train: int = Field(ge=0, description="Kept pairs in train.jsonl.")
    validation: int = Field(ge=0, description="Kept pairs in validation.jsonl.")
    dropped: DroppedPairs = Field(description="Pairs not kept, by reason.")


class SyntheticDatasetStatus(ServingStatus):
    """Observed state of a SyntheticDataset."""

    documents: int | None = Field(default=None, ge=0, description="Documents read.")
    chunks: int | None = Field(default=None, ge=0, description="Chunks sent to the teacher.")
    pairs: PairCounts | None = Field(default=None, description="Pairs generated, kept, dropped.")
    content_hash: str | None = Field(
        default=None,
        description="sha256 over the documents and every setting that shapes the output; a "
        "run with the same hash reuses the earlier result.",
    )
    reused_from: str | None = Field(
        default=None, description="The earlier output reused, when nothing had changed."
    )
