"""The trace schema, in one place: span kinds, attribute names (OpenTelemetry GenAI semantic
conventions and moakit's own ``moakit.*``), the columns of the ``spans`` table and which
attributes are promoted into them. Every other module writes these names through this one.

Conventions followed: the GenAI semantic conventions as they stand in their own repository
(semantic-conventions-genai v0.1.0, the first release after they left semantic-conventions at
v1.41.0):

* one ``chat {model}`` span per logical LLM call, covering its retries; each failed attempt
  is a child span of kind ``attempt`` with ``error.type`` and the wait that followed it;
* the run is an ``invoke_workflow`` operation (``gen_ai.operation.name``), its span named
  ``invoke_workflow {pipeline}``, the pipeline's name in ``gen_ai.agent.name`` (v0.1.0 merged
  the workflow span into the internal agent span and replaced ``gen_ai.workflow.name``);
* ``gen_ai.output.messages`` without the deprecated per-message ``finish_reason`` (finish
  reasons are in ``gen_ai.response.finish_reasons``).
"""

from __future__ import annotations

# The OpenTelemetry schema the exported spans declare (semantic-conventions-genai v0.1.0
# builds on semantic-conventions v1.45.0).
SCHEMA_URL = "https://opentelemetry.io/schemas/1.45.0"
GENAI_CONVENTIONS = "semantic-conventions-genai v0.1.0"

RECORDED_PREFIX = "recorded/"  # the model of imported outputs: served from the store only

# --- span kinds (column ``kind``) --------------------------------------------------------
KIND_RUN, KIND_STEP, KIND_CALL, KIND_ATTEMPT, KIND_IMPORT = "run", "step", "call", "attempt", "import"

# --- GenAI semantic conventions ---------------------------------------------------------
OPERATION_NAME = "gen_ai.operation.name"  # "chat" for LLM calls, "invoke_workflow" for a run
AGENT_NAME = "gen_ai.agent.name"  # run span: the pipeline's name
PROVIDER_NAME = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
REQUEST_TEMPERATURE = "gen_ai.request.temperature"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
REQUEST_SEED = "gen_ai.request.seed"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
RESPONSE_TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"  # seconds, streamed calls
USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
ERROR_TYPE = "error.type"

OPERATION_CHAT = "chat"
OPERATION_WORKFLOW = "invoke_workflow"

# --- moakit -----------------------------------------------------------------------------
SPAN_KIND = "moakit.span.kind"  # run | step | call | attempt | import
STEP_INDEX = "moakit.step.index"
STEP_KIND = "moakit.step.kind"
STEP_SPEC = "moakit.step.spec"  # the step as JSON
AGENT = "moakit.agent"
SAMPLE = "moakit.sample"  # index among repeated agents of one step (Self-MoA samples)
INPUT_SOURCES = "moakit.input.sources"  # JSON list: span id of the call behind each numbered response
INPUT_AGENTS = "moakit.input.agents"  # JSON list: agent behind each numbered response
INPUT_HASHES = "moakit.input.hashes"  # JSON list: text hash of each response as shown (after Map)
INPUT_RANDOMIZED = "moakit.input.randomized"  # the order shown was drawn at random (Shuffle / Sample)
INPUT_SHUFFLE_STEP = "moakit.input.shuffle_step"  # the step whose random draw set that order
RESPONSES_IN = "moakit.responses.in"  # JSON list of span ids entering a step
RESPONSES_OUT = "moakit.responses.out"  # JSON list of span ids leaving a step
PERMUTATION = "moakit.shuffle.permutation"
KEPT = "moakit.kept"  # Dropout / Sample / Take / Filter: indices kept
RANK_CHOICE = "moakit.rank.choice"  # JSON list of 0-based positions chosen
RANK_PARSED = "moakit.rank.parsed"  # False when the reply held no usable number
DROPPED_FAILED = "moakit.dropped_failed"  # step: agents whose calls finally failed, with their errors
COST_USD = "moakit.cost_usd"
CACHED = "moakit.cached"  # served from the trace store (replay)
REPLAYED_FROM = "moakit.replayed_from"  # the recorded span a cached call was served from
REQUEST_KEY = "moakit.request.key"
ATTEMPT = "moakit.attempt"  # call: attempts made (0 when served from the store); attempt: its number
RETRY_WAIT = "moakit.retry.wait_s"  # failed attempt: seconds waited before the next one
RETRY_REASON = "moakit.retry.reason"  # "retry-after" (the provider asked) or "backoff"
LAST_ATTEMPT_START = "moakit.attempt.last_start_ns"  # a retried call: when its last attempt started
QUEUE_WAIT = "moakit.wait.queue_s"  # call: seconds waited for a concurrency slot before the first attempt
RATE_WAIT = "moakit.wait.rate_s"  # call: seconds waited for a requests/tokens-per-minute budget
TRANSPORT = "moakit.transport"  # call: "litellm" or "direct"
PIPELINE = "moakit.pipeline"  # run span: the pipeline as JSON
PIPELINE_NAME = "moakit.pipeline.name"
SEED = "moakit.seed"
SEED_SENT = "moakit.seed.sent_to_models"
MAX_TOKENS_CAP = "moakit.max_tokens_cap"
QUERY = "moakit.query"  # run span: the query messages as JSON
OUTPUT = "moakit.output"  # run span: the final answer
PROMPT_SET = "moakit.prompts"
MODELS = "moakit.models"  # run span: agent -> model (no keys)
BATCH_ID = "moakit.batch.id"
BATCH_ITEM = "moakit.batch.item"
BATCH_SEED = "moakit.batch.seed"  # the seed given to run_batch (repeat r of an ablation: seed + r)
CALLS_PAID = "moakit.calls_paid"
CALLS_REUSED = "moakit.calls_reused"
IMPORT_SOURCE = "moakit.import.source"
IMPORT_INDEX = "moakit.import.index"
IMPORT_DATASET = "moakit.import.dataset"

# Attributes whose (long, repeated) text is stored once, content-addressed.
CONTENT_ATTRIBUTES = (INPUT_MESSAGES, OUTPUT_MESSAGES, SYSTEM_INSTRUCTIONS, OUTPUT)

# --- the spans table -----------------------------------------------------------------------
SPAN_COLUMNS = (
    "span_id", "trace_id", "parent_id", "name", "kind", "start_ns", "end_ns", "status", "error",
    "step_index", "step", "agent", "model", "sample", "input_tokens", "output_tokens", "cost_usd",
    "request_key", "input_hash", "output_hash", "attributes", "cached", "attempt", "system_hash",
)
# the position of each column in a row (rows are lists in SPAN_COLUMNS order)
COLUMN = {c: i for i, c in enumerate(SPAN_COLUMNS)}

# Attributes kept in indexed columns of the spans table (attribute -> column); on the way out
# (export, full_attributes) they are put back under these names.
PROMOTED = {
    STEP_INDEX: "step_index", STEP_KIND: "step", AGENT: "agent", REQUEST_MODEL: "model",
    SAMPLE: "sample", USAGE_INPUT_TOKENS: "input_tokens", USAGE_OUTPUT_TOKENS: "output_tokens",
    COST_USD: "cost_usd", REQUEST_KEY: "request_key", CACHED: "cached", ATTEMPT: "attempt",
    SPAN_KIND: "kind",
}
INT_COLUMNS = ("step_index", "sample", "input_tokens", "output_tokens", "attempt")
