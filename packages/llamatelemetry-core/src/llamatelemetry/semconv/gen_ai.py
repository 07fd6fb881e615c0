"""OpenTelemetry GenAI semantic conventions (v1.41) used by llamatelemetry, as constants."""

from __future__ import annotations

from typing import Final

SEMCONV_VERSION: Final = "1.41.0"
SCHEMA_URL: Final = "https://opentelemetry.io/schemas/1.41.0"

# ---- attributes: operation and provider
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_CONVERSATION_ID: Final = "gen_ai.conversation.id"

# ---- attributes: request
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P: Final = "gen_ai.request.top_p"
GEN_AI_REQUEST_TOP_K: Final = "gen_ai.request.top_k"
GEN_AI_REQUEST_FREQUENCY_PENALTY: Final = "gen_ai.request.frequency_penalty"
GEN_AI_REQUEST_PRESENCE_PENALTY: Final = "gen_ai.request.presence_penalty"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_SEED: Final = "gen_ai.request.seed"
GEN_AI_REQUEST_STOP_SEQUENCES: Final = "gen_ai.request.stop_sequences"
GEN_AI_REQUEST_STREAM: Final = "gen_ai.request.stream"

# ---- attributes: response
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: Final = "gen_ai.response.time_to_first_chunk"

# ---- attributes: usage
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"

# ---- attributes: content (opt-in only, see llamatelemetry.semconv.content)
GEN_AI_INPUT_MESSAGES: Final = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES: Final = "gen_ai.output.messages"
GEN_AI_SYSTEM_INSTRUCTIONS: Final = "gen_ai.system_instructions"

# ---- general attributes the GenAI conventions reference
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
ERROR_TYPE: Final = "error.type"

# ---- well-known values
OPERATION_CHAT: Final = "chat"
OPERATION_TEXT_COMPLETION: Final = "text_completion"
OPERATION_EMBEDDINGS: Final = "embeddings"
PROVIDER_LLAMA_CPP: Final = "llama_cpp"
PROVIDER_TRANSFORMERS: Final = "transformers"
PROVIDER_UNSLOTH: Final = "unsloth"
TOKEN_TYPE_INPUT: Final = "input"
TOKEN_TYPE_OUTPUT: Final = "output"
FINISH_REASON_STOP: Final = "stop"
FINISH_REASON_LENGTH: Final = "length"

# ---- events
GEN_AI_CLIENT_INFERENCE_OPERATION_DETAILS: Final = "gen_ai.client.inference.operation.details"

# ---- metrics
GEN_AI_CLIENT_OPERATION_DURATION: Final = "gen_ai.client.operation.duration"
GEN_AI_CLIENT_TOKEN_USAGE: Final = "gen_ai.client.token.usage"
GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK: Final = "gen_ai.client.operation.time_to_first_chunk"
GEN_AI_CLIENT_OPERATION_TIME_PER_OUTPUT_CHUNK: Final = "gen_ai.client.operation.time_per_output_chunk"
GEN_AI_SERVER_REQUEST_DURATION: Final = "gen_ai.server.request.duration"
GEN_AI_SERVER_TIME_TO_FIRST_TOKEN: Final = "gen_ai.server.time_to_first_token"
GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN: Final = "gen_ai.server.time_per_output_token"

# ---- deprecated names, emitted only with the "deprecated" compatibility switch
GEN_AI_SYSTEM_DEPRECATED: Final = "gen_ai.system"
GEN_AI_USAGE_PROMPT_TOKENS_DEPRECATED: Final = "gen_ai.usage.prompt_tokens"
GEN_AI_USAGE_COMPLETION_TOKENS_DEPRECATED: Final = "gen_ai.usage.completion_tokens"

#: Deprecated name -> current name it duplicates.
DEPRECATED_ALIASES: Final[dict[str, str]] = {
    GEN_AI_SYSTEM_DEPRECATED: GEN_AI_PROVIDER_NAME,
    GEN_AI_USAGE_PROMPT_TOKENS_DEPRECATED: GEN_AI_USAGE_INPUT_TOKENS,
    GEN_AI_USAGE_COMPLETION_TOKENS_DEPRECATED: GEN_AI_USAGE_OUTPUT_TOKENS,
}

#: Legacy ``llm.*`` names (OpenLLMetry-style dashboards), emitted only with the "llm" switch.
LEGACY_LLM_ALIASES: Final[dict[str, str]] = {
    "llm.request.type": GEN_AI_OPERATION_NAME,
    "llm.vendor": GEN_AI_PROVIDER_NAME,
    "llm.request.model": GEN_AI_REQUEST_MODEL,
    "llm.response.model": GEN_AI_RESPONSE_MODEL,
    "llm.request.max_tokens": GEN_AI_REQUEST_MAX_TOKENS,
    "llm.temperature": GEN_AI_REQUEST_TEMPERATURE,
    "llm.top_p": GEN_AI_REQUEST_TOP_P,
    "llm.top_k": GEN_AI_REQUEST_TOP_K,
    "llm.usage.prompt_tokens": GEN_AI_USAGE_INPUT_TOKENS,
    "llm.usage.completion_tokens": GEN_AI_USAGE_OUTPUT_TOKENS,
}
