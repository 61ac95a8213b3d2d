/* tests/c/test_llm.c: the LLM client's C parts without Python: request bodies and response /
 * error parsing (cl_llm), Retry-After parsing, option checks, and the engine (cl_http) against a
 * closed local port (every attempt refused, retried with backoff, reported once) and against a
 * cancel callback; the start queue both engines share (cl_http_queue). The HTTP paths with real responses are covered by tests/test_llm.py against a
 * mock server. Ends with "N passed, N failed". */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cl_http.h"
#include "cl_llm.h"

static int passed, failed;
#define CHECK(cond, ...) do { if (cond) passed++; else { failed++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } } while (0)

static void test_body(void) {
    cl_llm_message m[2] = {{"system", "Be \"brief\".\n", NULL}, {"user", "caf\xc3\xa9", "bob"}};
    cl_llm_request r = {.model = "gpt-4o", .messages = m, .n_messages = 2, .max_tokens = 7, .temperature = 0.5,
                        .extra_json = "{\"seed\": 3, \"stop\": [\"x\"]}"};
    char *body = NULL;
    size_t len = 0;
    cl_error err = {0};
    CHECK(cl_llm_request_body(&r, &body, &len, &err) == CL_OK, "body: %s", err.msg);
    const char *want = "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"system\",\"content\":\"Be \\\"brief\\\".\\n\"},"
                       "{\"role\":\"user\",\"content\":\"caf\xc3\xa9\",\"name\":\"bob\"}],\"max_tokens\":7,\"temperature\":0.5,"
                       "\"seed\":3,\"stop\":[\"x\"]}";
    CHECK(body && !strcmp(body, want) && len == strlen(want), "body is %s", body ? body : "(null)");
    cl_llm_free(body);
    r.max_tokens = -1;
    r.temperature = NAN;
    r.extra_json = NULL;
    r.max_tokens_field = "max_completion_tokens";
    CHECK(cl_llm_request_body(&r, &body, &len, &err) == CL_OK && !strstr(body, "max_") && !strstr(body, "temperature"),
          "omitted fields: %s", body ? body : err.msg);
    cl_llm_free(body);
    r.max_tokens = 4;
    CHECK(cl_llm_request_body(&r, &body, &len, &err) == CL_OK && strstr(body, "\"max_completion_tokens\":4"), "field name");
    cl_llm_free(body);
    r.extra_json = "{\"max_completion_tokens\": 9}";
    CHECK(cl_llm_request_body(&r, &body, &len, &err) == CL_EINVAL && strstr(err.msg, "set twice") && !body, "dup: %s", err.msg);
    r.extra_json = "[1, 2]";
    CHECK(cl_llm_request_body(&r, &body, &len, &err) == CL_EINVAL, "extra not an object");
    r.extra_json = "{\"a\": ";
    CHECK(cl_llm_request_body(&r, &body, &len, &err) == CL_EINVAL, "extra malformed");
    r.extra_json = NULL;
    r.n_messages = 0;
    CHECK(cl_llm_request_body(&r, &body, &len, &err) == CL_EINVAL, "no messages");
    cl_llm_message bad = {"user", NULL, NULL};
    r.messages = &bad;
    r.n_messages = 1;
    CHECK(cl_llm_request_body(&r, &body, &len, &err) == CL_EINVAL && strstr(err.msg, "message 0"), "null content");
}

static void test_parse(void) {
    cl_llm_response p;
    cl_error err = {0};
    const char *ok = "{\"id\":\"x\",\"model\":\"m-1\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                     "\"content\":\"yes\\u00e9\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":12,"
                     "\"completion_tokens\":1}}";
    CHECK(cl_llm_response_parse(ok, strlen(ok), &p, &err) == CL_OK && !strcmp(p.content, "yes\xc3\xa9") &&
              !strcmp(p.finish_reason, "stop") && !strcmp(p.model, "m-1") && p.has_usage && p.prompt_tokens == 12 &&
              p.completion_tokens == 1 && p.total_tokens == 13,
          "ok body: %s", err.msg);
    cl_llm_response_free(&p);
    const char *bad[] = {"", "{", "{\"choices\":[{\"message\":", "null", "[1]", "{\"choices\":[]}",
                         "{\"choices\":[{\"message\":{\"content\":[1]}}]}", "{\"choices\":[{\"text\":\"legacy\"}]}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(cl_llm_response_parse(bad[i], strlen(bad[i]), &p, &err) == CL_EFORMAT, "malformed %zu accepted", i);
        cl_llm_response_free(&p);
    }
    /* a lone surrogate escape is kept as its 3-byte form; a pair, escaped backslashes and quotes as JSON says;
       a truncated lone escape at the end of the body is still malformed */
    const char *sur = "{\"choices\":[{\"message\":{\"content\":\"a\\ud83d\\ude00b\\\\ud800\\\"\\udc00\"}}]}";
    CHECK(cl_llm_response_parse(sur, strlen(sur), &p, &err) == CL_OK &&
              !strcmp(p.content, "a\xf0\x9f\x98\x80" "b\\ud800\"\xed\xb0\x80"),
          "lone surrogate: %s", err.msg);
    cl_llm_response_free(&p);
    const char *sur_cut = "{\"choices\":[{\"message\":{\"content\":\"a\\ud80";
    CHECK(cl_llm_response_parse(sur_cut, strlen(sur_cut), &p, &err) == CL_EFORMAT, "cut escape accepted");
    cl_llm_response_free(&p);
    /* not NUL-terminated at len: only len bytes are read */
    const char *trunc = "{\"choices\":[{\"message\":{\"content\":\"a\"}}]}GARBAGE";
    CHECK(cl_llm_response_parse(trunc, strlen(trunc) - 7, &p, &err) == CL_OK && !strcmp(p.content, "a"), "length respected");
    cl_llm_response_free(&p);
    const char *err200 = "{\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\",\"code\":503}}";
    CHECK(cl_llm_response_parse(err200, strlen(err200), &p, &err) == CL_EFORMAT && strstr(err.msg, "overloaded") &&
              !strcmp(p.error_code, "503"),
          "error in a 200: %s", err.msg);
    cl_llm_response_free(&p);
    struct { const char *body, *msg, *type, *code; } e[] = {
        {"{\"error\":{\"message\":\"Rate limit\",\"type\":\"requests\",\"code\":\"rate_limit_exceeded\"}}", "Rate limit",
         "requests", "rate_limit_exceeded"},
        {"{\"error\":\"model 'x' not found\"}", "model 'x' not found", NULL, NULL},
        {"{\"object\":\"error\",\"message\":\"too long\",\"type\":\"BadRequestError\",\"code\":400}", "too long",
         "BadRequestError", "400"},
        {"{\"detail\":[{\"loc\":[\"body\"],\"msg\":\"field required\"}]}", "[{\"loc\":[\"body\"],\"msg\":\"field required\"}]",
         NULL, NULL},
        {"upstream connect error\r\n\x01", "upstream connect error", NULL, NULL},
        {"", NULL, NULL, NULL},
    };
    for (size_t i = 0; i < sizeof e / sizeof e[0]; i++) {
        CHECK(cl_llm_error_parse(e[i].body, strlen(e[i].body), &p, &err) == CL_OK, "error body %zu", i);
#define SAME(a, b) ((a) == NULL ? (b) == NULL : (b) != NULL && !strcmp((a), (b)))
        CHECK(SAME(e[i].msg, p.error_message) && SAME(e[i].type, p.error_type) && SAME(e[i].code, p.error_code),
              "error body %zu: message '%s' type '%s' code '%s'", i, p.error_message ? p.error_message : "-",
              p.error_type ? p.error_type : "-", p.error_code ? p.error_code : "-");
        cl_llm_response_free(&p);
    }
    char big[1000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    CHECK(cl_llm_error_parse(big, strlen(big), &p, &err) == CL_OK && strlen(p.error_message) == 203, "excerpt length");
    cl_llm_response_free(&p);
}

static void test_retry_after(void) {
    CHECK(cl_http_parse_retry_after("12") == 12.0, "seconds");
    CHECK(cl_http_parse_retry_after("  1.5 \r\n") == 1.5, "decimal with spaces");
    CHECK(cl_http_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT") == 0.0, "past date");
    CHECK(cl_http_parse_retry_after("-3") < 0 && cl_http_parse_retry_after("") < 0 && cl_http_parse_retry_after("later") < 0,
          "garbage");
    char date[64];
    time_t t = time(NULL) + 120;
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", gmtime(&t));
    double d = cl_http_parse_retry_after(date);
    CHECK(d > 110 && d <= 121, "future date gives %g", d);
}

typedef struct {
    int done_calls, failures, last_attempts;
    long last_status;
    char last_error[256];
    int cancel_after; /* cancel callback returns 1 once called this many times */
    int cancel_calls;
} probe;

static cl_status on_done(void *ctx, size_t i, const cl_http_result *r, cl_error *err) {
    probe *p = ctx;
    p->done_calls++;
    if (!r->ok) p->failures++;
    p->last_attempts = r->attempts;
    p->last_status = r->status;
    snprintf(p->last_error, sizeof p->last_error, "%s", r->error);
    return CL_OK;
}

static int on_cancel(void *ctx) {
    probe *p = ctx;
    return ++p->cancel_calls >= p->cancel_after;
}

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static void test_engine(void) {
    cl_error err = {0};
    cl_http_opts o = cl_http_opts_default();
    probe p = {0};
    /* option checks */
    cl_http_req one = {"http://127.0.0.1:9/", "{}", 2, 1};
    cl_http_batch b = {.reqs = &one, .n = 1, .done = on_done, .ctx = &p};
    o.concurrency = 0;
    CHECK(cl_http_run(&o, &b, NULL, &err) == CL_EINVAL && strstr(err.msg, "concurrency"), "concurrency 0: %s", err.msg);
    o = cl_http_opts_default();
    o.rpm = -1;
    CHECK(cl_http_run(&o, &b, NULL, &err) == CL_EINVAL, "negative rpm");
    o = cl_http_opts_default();
    const char *evil[] = {"X-A: 1\r\nInjected: 2"};
    b.headers = evil;
    b.n_headers = 1;
    CHECK(cl_http_run(&o, &b, NULL, &err) == CL_EINVAL && strstr(err.msg, "line break"), "header injection: %s", err.msg);
    b.headers = NULL;
    b.n_headers = 0;
    cl_http_req nourl = {NULL, "{}", 2, 0};
    b.reqs = &nourl;
    CHECK(cl_http_run(&o, &b, NULL, &err) == CL_EINVAL, "no url");
    b.reqs = NULL;
    b.n = 0;
    CHECK(cl_http_run(&o, &b, NULL, &err) == CL_OK && p.done_calls == 0, "empty batch");

    /* a port nothing listens on: each request refused, retried twice with backoff, reported once */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    bind(s, (struct sockaddr *)&a, sizeof a);
    getsockname(s, (struct sockaddr *)&a, &al);
    close(s);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/chat/completions", ntohs(a.sin_port));
    cl_http_req reqs[5];
    for (int i = 0; i < 5; i++) reqs[i] = (cl_http_req){url, "{}", 2, 10};
    const char *hdr[] = {"Authorization: Bearer sk-secret"};
    memset(&p, 0, sizeof p);
    b = (cl_http_batch){.reqs = reqs, .n = 5, .headers = hdr, .n_headers = 1, .done = on_done, .ctx = &p};
    o.concurrency = 2;
    o.max_retries = 2;
    o.backoff_base_s = 0.05;
    o.backoff_max_s = 0.05;
    o.connect_timeout_s = 2;
    o.seed = 42;
    cl_http_stats st;
    double t0 = mono();
    cl_status rc = cl_http_run(&o, &b, &st, &err);
    double dt = mono() - t0;
    CHECK(rc == CL_OK, "refused run: %s", err.msg);
    CHECK(p.done_calls == 5 && p.failures == 5 && p.last_attempts == 3 && p.last_status == 0, "done %d failures %d attempts %d",
          p.done_calls, p.failures, p.last_attempts);
    CHECK(strlen(p.last_error) > 0 && !strstr(p.last_error, "sk-secret"), "error '%s'", p.last_error);
    CHECK(st.attempts == 15 && st.retries == 10 && st.failed == 5 && st.transport_errors == 15 && st.max_in_flight <= 2,
          "stats attempts %ld retries %ld failed %ld transport %ld inflight %d", st.attempts, st.retries, st.failed,
          st.transport_errors, st.max_in_flight);
    CHECK(dt >= 2 * 0.025 && dt < 5, "backoff time %g s", dt);

    /* rpm limiter without a server: 6 refused attempts at 1200 rpm take >= 5 * 50 ms; the state carries over */
    cl_http_limiter lim = {0, 0, 0};
    memset(&p, 0, sizeof p);
    b.n = 3;
    b.limiter = &lim;
    o.rpm = 1200;
    o.max_retries = 1;
    o.backoff_base_s = 0;
    t0 = mono();
    CHECK(cl_http_run(&o, &b, &st, &err) == CL_OK && st.attempts == 6, "rpm run: %s", err.msg);
    dt = mono() - t0;
    CHECK(dt >= 5 * 0.05 - 0.005 && dt < 2, "6 attempts at 1200 rpm took %g s", dt);
    CHECK(lim.rpm_next > 0, "limiter state saved");
    t0 = mono();
    b.n = 1;
    o.max_retries = 0;
    CHECK(cl_http_run(&o, &b, &st, &err) == CL_OK, "second run");
    CHECK(mono() - t0 >= 0.04, "the next run waits for the carried-over limiter (%g s)", mono() - t0);

    /* cancellation: stops with CL_ECANCELLED, done is not called for the rest */
    memset(&p, 0, sizeof p);
    p.cancel_after = 3;
    o = cl_http_opts_default();
    o.backoff_base_s = 10; /* would wait long without the cancel */
    b = (cl_http_batch){.reqs = reqs, .n = 5, .done = on_done, .ctx = &p, .cancel = {on_cancel, &p}};
    t0 = mono();
    rc = cl_http_run(&o, &b, &st, &err);
    CHECK(rc == CL_ECANCELLED && mono() - t0 < 1.0 && p.done_calls == 0, "cancel: rc %d after %g s, %d done", rc, mono() - t0,
          p.done_calls);
}

/* Fresh requests in batch order; a retry once its time has come, the earliest due first, before
 * any fresh one; nothing while no retry is due and every request has been tried. */
static void test_queue(void) {
    cl_error err = {0};
    cl_http_queue q;
    size_t i = 99;
    double wake = INFINITY;
    CHECK(cl_http_queue_init(&q, 4, &err) == CL_OK, "init: %s", err.msg);
    CHECK(cl_http_queue_peek(&q, 0.0, &i, &wake) && i == 0 && isinf(wake), "first fresh");
    CHECK(cl_http_queue_peek(&q, 0.0, &i, &wake) && i == 0, "peek takes nothing");
    cl_http_queue_take(&q);
    CHECK(cl_http_queue_peek(&q, 0.0, &i, &wake) && i == 1, "then the next fresh");
    cl_http_queue_take(&q);
    cl_http_queue_retry(&q, 0, 5.0);
    cl_http_queue_retry(&q, 1, 3.0);
    CHECK(cl_http_queue_peek(&q, 1.0, &i, &wake) && i == 2 && wake == 3.0, "no retry due: fresh, wake at 3");
    wake = 2.0;
    CHECK(cl_http_queue_peek(&q, 1.0, &i, &wake) && wake == 2.0, "an earlier wake is kept");
    wake = INFINITY;
    CHECK(cl_http_queue_peek(&q, 3.0, &i, &wake) && i == 1 && isinf(wake), "due retry before fresh, no wake: %zu", i);
    cl_http_queue_take(&q);
    CHECK(q.n_retry == 1 && q.next_fresh == 2, "the retry left, fresh untouched");
    CHECK(cl_http_queue_peek(&q, 10.0, &i, &wake) && i == 0, "the other retry");
    cl_http_queue_take(&q);
    for (size_t want = 2; want < 4; want++) {
        CHECK(cl_http_queue_peek(&q, 10.0, &i, &wake) && i == want, "fresh %zu: got %zu", want, i);
        cl_http_queue_take(&q);
    }
    CHECK(q.next_fresh == 4 && q.n_retry == 0, "all tried");
    CHECK(!cl_http_queue_peek(&q, 10.0, &i, &wake) && isinf(wake), "none left");
    cl_http_queue_retry(&q, 3, 20.0);
    CHECK(!cl_http_queue_peek(&q, 10.0, &i, &wake) && wake == 20.0, "a retry not yet due: none, wake at 20");
    CHECK(cl_http_queue_peek(&q, 20.0, &i, &wake) && i == 3, "due at its time");
    cl_http_queue_free(&q);
    cl_http_queue_free(&q); /* twice is harmless */
}

int main(void) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    test_body();
    test_parse();
    test_retry_after();
    test_engine();
    test_queue();
    curl_global_cleanup();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
