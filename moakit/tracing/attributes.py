"""Span attribute names: OpenTelemetry GenAI semantic conventions (semconv v1.41.0) and
moakit's own ``moakit.*`` attributes. The one place these strings are written."""

# --- GenAI semantic conventions ---------------------------------------------------------
OPERATION_NAME = "gen_ai.operation.name"  # "chat" for LLM calls, "invoke_workflow" for a run
PROVIDER_NAME = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
REQUEST_TEMPERATURE = "gen_ai.request.temperature"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
REQUEST_SEED = "gen_ai.request.seed"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
ERROR_TYPE = "error.type"

# --- moakit -----------------------------------------------------------------------------
SPAN_KIND = "moakit.span.kind"  # run | step | call
STEP_INDEX = "moakit.step.index"
STEP_KIND = "moakit.step.kind"
STEP_SPEC = "moakit.step.spec"  # the step as JSON
AGENT = "moakit.agent"
SAMPLE = "moakit.sample"  # index among repeated agents of one step (Self-MoA samples)
INPUT_SOURCES = "moakit.input.sources"  # JSON list: span id of the call behind each numbered response
INPUT_AGENTS = "moakit.input.agents"  # JSON list: agent behind each numbered response
RESPONSES_IN = "moakit.responses.in"  # JSON list of span ids entering a step
RESPONSES_OUT = "moakit.responses.out"  # JSON list of span ids leaving a step
PERMUTATION = "moakit.shuffle.permutation"
KEPT = "moakit.kept"  # Dropout / Sample / Take / Filter: indices kept
RANK_CHOICE = "moakit.rank.choice"  # JSON list of 0-based positions chosen
RANK_PARSED = "moakit.rank.parsed"  # False when the reply held no usable number
COST_USD = "moakit.cost_usd"
CACHED = "moakit.cached"  # served from the trace store (replay)
REQUEST_KEY = "moakit.request.key"
ATTEMPT = "moakit.attempt"
RETRY_WAIT = "moakit.retry.wait_s"  # on a failed attempt that is retried: seconds waited before the next
RETRY_REASON = "moakit.retry.reason"  # "retry-after" (the provider asked) or "backoff"
PIPELINE = "moakit.pipeline"  # run span: the pipeline as JSON
PIPELINE_NAME = "moakit.pipeline.name"
SEED = "moakit.seed"
QUERY = "moakit.query"  # run span: the query messages as JSON
OUTPUT = "moakit.output"  # run span: the final answer
PROMPT_SET = "moakit.prompts"
MODELS = "moakit.models"  # run span: agent -> model (no keys)
BATCH_ID = "moakit.batch.id"
BATCH_ITEM = "moakit.batch.item"
ERROR_MESSAGE = "moakit.error"

# Attributes whose (long, repeated) text is stored once, content-addressed.
CONTENT_ATTRIBUTES = (INPUT_MESSAGES, OUTPUT_MESSAGES, SYSTEM_INSTRUCTIONS, OUTPUT)

# Attributes kept in indexed columns of the spans table (attribute -> column).
PROMOTED = {
    STEP_INDEX: "step_index", STEP_KIND: "step", AGENT: "agent", REQUEST_MODEL: "model",
    SAMPLE: "sample", USAGE_INPUT_TOKENS: "input_tokens", USAGE_OUTPUT_TOKENS: "output_tokens",
    COST_USD: "cost_usd", REQUEST_KEY: "request_key", CACHED: "cached", ATTEMPT: "attempt",
    SPAN_KIND: "kind",
}
