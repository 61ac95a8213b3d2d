/* cl_llm.h: OpenAI-compatible chat-completion bodies with cJSON: build a request body, parse a
 * response (content, finish reason, usage) or an error body (message, type, code) as OpenAI,
 * Azure, vLLM, llama.cpp's server and Ollama write them. No networking here (see cl_http.h). */
#ifndef CL_LLM_H
#define CL_LLM_H

#include "cl_common.h"

typedef struct {
    const char *role;    /* "system", "user", "assistant", ... */
    const char *content; /* UTF-8 text */
    const char *name;    /* optional participant name; NULL = omitted */
} cl_llm_message;

typedef struct {
    const char *model;
    const cl_llm_message *messages;
    size_t n_messages;
    int max_tokens;               /* < 0: omitted */
    const char *max_tokens_field; /* NULL: "max_tokens" (newer OpenAI models want "max_completion_tokens") */
    double temperature;           /* NaN: omitted */
    const char *extra_json;       /* NULL, or a JSON object whose members are added to the body (top_p, seed,
                                     stop, response_format, ...); may not repeat a member set above */
} cl_llm_request;

/* Serialize r as a compact JSON body. *body is NUL-terminated; free it with cl_llm_free. Errors:
 * CL_EINVAL (missing model or messages, bad extra_json), CL_ENOMEM. */
cl_status cl_llm_request_body(const cl_llm_request *r, char **body, size_t *len, cl_error *err);
void cl_llm_free(void *p);

typedef struct {
    char *content;       /* choices[0].message.content; NULL when null (a refusal or tool call) */
    char *finish_reason; /* NULL when absent */
    char *model;         /* the model that answered, NULL when absent */
    long prompt_tokens, completion_tokens, total_tokens; /* -1 when absent */
    int has_usage;
    char *error_message, *error_type, *error_code; /* from an error body; NULL when absent */
} cl_llm_response;

/* Parse a successful (2xx) chat-completion body into *out (zeroed first; free with
 * cl_llm_response_free even on failure). CL_EFORMAT when the body is not JSON, has no
 * choices[0].message, has a non-string content, or carries an error object (then the error
 * fields are filled too); CL_ENOMEM. */
cl_status cl_llm_response_parse(const char *body, size_t len, cl_llm_response *out, cl_error *err);

/* Best-effort reading of an error body: {"error": {"message", "type", "code"}} (OpenAI, Azure,
 * llama.cpp), {"error": "text"} (Ollama), {"message", "type", "code"} (vLLM), {"detail": ...}
 * (FastAPI); anything else: its first 200 printable characters as the message. Fills the error
 * fields of *out (zeroed first). Fails only with CL_ENOMEM. */
cl_status cl_llm_error_parse(const char *body, size_t len, cl_llm_response *out, cl_error *err);

void cl_llm_response_free(cl_llm_response *r);

#endif
