/* tests/c/test_download.c: the Hub client's C parts without Python. SHA-256 against the FIPS 180-4
 * examples (one-shot, byte-split and from a file descriptor); the download engine (cl_download)
 * against a tiny forked HTTP server on 127.0.0.1 that serves a 100 kB body with Range support:
 * HEAD metadata, a complete GET renamed into place, a resumed GET (Range from the partial file's
 * length), a connection dropped half-way then resumed, a wrong sha256 (failure, partial file
 * deleted), a full disk (/dev/full), a closed port, cancellation, and the option checks. The
 * Hub's own behaviour is covered by tests/test_hub.py against tests/fake_hub.py. Ends with
 * "N passed, N failed". */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cl_download.h"
#include "cl_sha256.h"

static int passed, failed;
#define CHECK(cond, ...) do { if (cond) passed++; else { failed++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } } while (0)

static void hex_of(const void *data, size_t n, char out[65]) {
    cl_sha256 s;
    unsigned char d[32];
    cl_sha256_init(&s);
    cl_sha256_update(&s, data, n);
    cl_sha256_final(&s, d);
    cl_sha256_hex(d, out);
}

static void test_sha256(void) {
    char h[65];
    hex_of("", 0, h);
    CHECK(!strcmp(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"), "empty: %s", h);
    hex_of("abc", 3, h);
    CHECK(!strcmp(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"), "abc: %s", h);
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    hex_of(two, strlen(two), h);
    CHECK(!strcmp(h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"), "448 bits: %s", h);
    size_t n = 1000000;
    char *a = malloc(n);
    memset(a, 'a', n);
    hex_of(a, n, h);
    CHECK(!strcmp(h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"), "a million a: %s", h);
    /* any split into updates gives the same digest (the block buffer's edges: 55, 56, 63, 64, 65) */
    unsigned seed = 7;
    for (int trial = 0; trial < 20; trial++) {
        cl_sha256 s;
        unsigned char d[32];
        char h2[65];
        cl_sha256_init(&s);
        size_t off = 0;
        while (off < 5000) {
            seed = seed * 1103515245u + 12345u;
            size_t k = trial < 5 ? (size_t)(55 + trial) : (seed >> 16) % 200;
            if (k > 5000 - off) k = 5000 - off;
            cl_sha256_update(&s, a + off, k);
            off += k;
        }
        cl_sha256_final(&s, d);
        cl_sha256_hex(d, h2);
        hex_of(a, 5000, h);
        CHECK(!strcmp(h, h2), "split %d", trial);
    }
    /* from a file descriptor, a prefix */
    char path[] = "/tmp/cl_sha256_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0 && write(fd, a, 4096) == 4096, "temp file");
    cl_sha256 s;
    unsigned char d[32];
    cl_error err = {0};
    cl_sha256_init(&s);
    CHECK(cl_sha256_fd(&s, fd, 3000, NULL, &err) == CL_OK, "fd: %s", err.msg);
    cl_sha256_final(&s, d);
    cl_sha256_hex(d, h);
    char want[65];
    hex_of(a, 3000, want);
    CHECK(!strcmp(h, want), "fd prefix");
    cl_sha256_init(&s);
    CHECK(cl_sha256_fd(&s, fd, 5000, NULL, &err) == CL_EIO && strstr(err.msg, "shorter"), "past the end: %s", err.msg);
    close(fd);
    unlink(path);
    free(a);
}

/* ---- a tiny HTTP server in a child process ---- */

#define BODY_N 100000
static unsigned char body[BODY_N];
static char body_sha[65];

static void write_all(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w <= 0) return;
        c += w;
        n -= (size_t)w;
    }
}

/* Serves `body` to every connection (one request each, then close); honours "Range: bytes=N-".
 * drop_first: the first GET gets half its body, then the connection closes. */
static void serve(int lfd, int drop_first) {
    int gets = 0;
    signal(SIGPIPE, SIG_IGN);
    for (;;) {
        int c = accept(lfd, NULL, NULL);
        if (c < 0) continue;
        char req[4096];
        size_t got = 0;
        req[0] = '\0';
        while (got < sizeof req - 1) {
            ssize_t k = read(c, req + got, sizeof req - 1 - got);
            if (k <= 0) break;
            got += (size_t)k;
            req[got] = '\0';
            if (strstr(req, "\r\n\r\n")) break;
        }
        int head = !strncmp(req, "HEAD ", 5);
        long start = 0;
        char *r = strcasestr(req, "\r\nRange: bytes=");
        if (r) start = strtol(r + 15, NULL, 10);
        if (start < 0 || start > BODY_N) start = 0;
        char hdr[512], cr[96] = "";
        if (r) snprintf(cr, sizeof cr, "Content-Range: bytes %ld-%d/%d\r\n", start, BODY_N - 1, BODY_N);
        int hl = snprintf(hdr, sizeof hdr,
                          "HTTP/1.1 %d X\r\nContent-Length: %ld\r\nETag: \"%s\"\r\nX-Repo-Commit: 0123456789abcdef0123456789abcdef01234567\r\n"
                          "X-Linked-Size: %d\r\n%sConnection: close\r\n\r\n",
                          r ? 206 : 200, (long)BODY_N - start, body_sha, BODY_N, cr);
        write_all(c, hdr, (size_t)hl);
        if (!head) {
            size_t n = (size_t)(BODY_N - start);
            if (drop_first && gets == 0) n /= 2;
            write_all(c, body + start, n);
            gets++;
        }
        shutdown(c, SHUT_RDWR);
        close(c);
    }
}

static pid_t start_server(int drop_first, int *port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    bind(s, (struct sockaddr *)&a, sizeof a);
    getsockname(s, (struct sockaddr *)&a, &al);
    listen(s, 64);
    *port = ntohs(a.sin_port);
    pid_t pid = fork();
    if (pid == 0) {
        serve(s, drop_first);
        _exit(0);
    }
    close(s);
    return pid;
}

static void stop_server(pid_t pid) {
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

static int file_equals(const char *path, const unsigned char *want, size_t n) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    unsigned char *b = malloc(n + 1);
    size_t got = fread(b, 1, n + 1, f);
    fclose(f);
    int ok = got == n && !memcmp(b, want, n);
    free(b);
    return ok;
}

static int on_cancel(void *ctx) { return ++*(int *)ctx >= 2; }

static cl_dl_opts fast_opts(void) {
    cl_dl_opts o = cl_dl_opts_default();
    o.backoff_base_s = 0.01;
    o.backoff_max_s = 0.05;
    o.stall_timeout_s = 5;
    o.seed = 1;
    return o;
}

static void test_engine(void) {
    for (size_t i = 0; i < BODY_N; i++) body[i] = (unsigned char)((i * 2654435761u) >> 13);
    hex_of(body, BODY_N, body_sha);
    char dir[] = "/tmp/cl_dl_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "temp dir");
    char part[256], final[256], url[96];
    snprintf(part, sizeof part, "%s/blob.incomplete", dir);
    snprintf(final, sizeof final, "%s/blob", dir);
    int port;
    pid_t pid = start_server(0, &port);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/org/m/resolve/main/model.safetensors", port);
    cl_dl_opts o = fast_opts();
    cl_error err = {0};
    cl_dl_result res[2];

    /* HEAD: the metadata headers */
    cl_dl_req hreq = {.url = url, .head = 1};
    cl_dl_batch b = {.reqs = &hreq, .n = 1, .results = res};
    CHECK(cl_download_run(&o, &b, &err) == CL_OK, "head: %s", err.msg);
    CHECK(res[0].ok && res[0].status == 200 && res[0].content_length == BODY_N && res[0].linked_size == BODY_N &&
              !strcmp(res[0].commit, "0123456789abcdef0123456789abcdef01234567") && res[0].etag[0] == '"' &&
              !res[0].location && res[0].url && strstr(res[0].url, "/resolve/main/"),
          "head result: ok %d status %ld len %lld commit %s", res[0].ok, res[0].status, (long long)res[0].content_length,
          res[0].commit);
    cl_dl_results_free(res, 1);

    /* GET: complete, verified, renamed */
    cl_dl_req g = {.url = url, .part_path = part, .final_path = final, .size = BODY_N, .sha256 = body_sha};
    b.reqs = &g;
    CHECK(cl_download_run(&o, &b, &err) == CL_OK && res[0].ok, "get: %s %s", err.msg, res[0].error);
    CHECK(file_equals(final, body, BODY_N) && access(part, F_OK) != 0, "file in place, partial gone");
    CHECK(res[0].range_attempts == 0 && res[0].resumed_from == -1 && res[0].received == BODY_N, "fresh get stats");
    cl_dl_results_free(res, 1);
    unlink(final);

    /* GET resumed from a partial file of 40000 good bytes */
    int fd = open(part, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    write_all(fd, body, 40000);
    close(fd);
    CHECK(cl_download_run(&o, &b, &err) == CL_OK && res[0].ok, "resume: %s %s", err.msg, res[0].error);
    CHECK(res[0].range_attempts == 1 && res[0].resumed_from == 40000 && res[0].received == BODY_N - 40000 &&
              file_equals(final, body, BODY_N),
          "resume stats: ranges %d from %lld received %lld", res[0].range_attempts, (long long)res[0].resumed_from,
          (long long)res[0].received);
    cl_dl_results_free(res, 1);
    unlink(final);

    /* a partial file that already holds everything: verified and renamed with no request */
    fd = open(part, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    write_all(fd, body, BODY_N);
    close(fd);
    CHECK(cl_download_run(&o, &b, &err) == CL_OK && res[0].ok && res[0].attempts == 0 && file_equals(final, body, BODY_N),
          "complete partial: attempts %d", res[0].attempts);
    cl_dl_results_free(res, 1);
    unlink(final);

    /* wrong sha256: failure, nothing left */
    char wrong[65];
    memcpy(wrong, body_sha, 65);
    wrong[0] = wrong[0] == '0' ? '1' : '0';
    g.sha256 = wrong;
    CHECK(cl_download_run(&o, &b, &err) == CL_OK && !res[0].ok && res[0].failure == CL_DL_HASH &&
              strstr(res[0].error, "sha256 mismatch") && access(part, F_OK) != 0 && access(final, F_OK) != 0,
          "hash: failure %d '%s'", res[0].failure, res[0].error);
    cl_dl_results_free(res, 1);
    g.sha256 = body_sha;

    /* wrong size announced */
    g.size = BODY_N - 1;
    CHECK(cl_download_run(&o, &b, &err) == CL_OK && !res[0].ok && res[0].failure == CL_DL_SIZE && access(part, F_OK) != 0,
          "size: failure %d '%s'", res[0].failure, res[0].error);
    cl_dl_results_free(res, 1);
    g.size = BODY_N;

    /* a full disk */
    if (access("/dev/full", W_OK) == 0) {
        cl_dl_req full = {.url = url, .part_path = "/dev/full", .size = BODY_N};
        b.reqs = &full;
        CHECK(cl_download_run(&o, &b, &err) == CL_OK && !res[0].ok && res[0].failure == CL_DL_DISK &&
                  strstr(res[0].error, "disk is full"),
              "disk: failure %d '%s'", res[0].failure, res[0].error);
        cl_dl_results_free(res, 1);
        b.reqs = &g;
    }

    /* cancellation */
    int calls = 0;
    b.cancel = (cl_cancel){on_cancel, &calls};
    o.backoff_base_s = 10;
    cl_dl_req refused = {.url = "http://127.0.0.1:9/x", .head = 1};
    b.reqs = &refused;
    CHECK(cl_download_run(&o, &b, &err) == CL_ECANCELLED && res[0].failure == CL_DL_CANCELLED, "cancel: %d", res[0].failure);
    cl_dl_results_free(res, 1);
    b.cancel = (cl_cancel){NULL, NULL};
    o = fast_opts();
    stop_server(pid);

    /* the first connection drops half-way: the retry resumes from there */
    pid = start_server(1, &port);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/org/m/resolve/main/model.safetensors", port);
    b.reqs = &g;
    CHECK(cl_download_run(&o, &b, &err) == CL_OK && res[0].ok, "drop: %s %s", err.msg, res[0].error);
    CHECK(res[0].attempts == 2 && res[0].range_attempts == 1 && res[0].received == BODY_N && file_equals(final, body, BODY_N),
          "drop stats: attempts %d ranges %d received %lld", res[0].attempts, res[0].range_attempts, (long long)res[0].received);
    cl_dl_results_free(res, 1);
    unlink(final);
    stop_server(pid);

    /* a closed port: failed after max_connect_retries, as a network failure */
    o.max_connect_retries = 1;
    hreq.url = "http://127.0.0.1:9/x";
    b.reqs = &hreq;
    CHECK(cl_download_run(&o, &b, &err) == CL_OK && !res[0].ok && res[0].failure == CL_DL_NETWORK && res[0].attempts == 2,
          "refused: failure %d attempts %d", res[0].failure, res[0].attempts);
    cl_dl_results_free(res, 1);

    /* option and request checks */
    cl_dl_req two[2] = {g, g};
    b.reqs = two;
    b.n = 2;
    CHECK(cl_download_run(&o, &b, &err) == CL_EINVAL && strstr(err.msg, "same file"), "duplicate part: %s", err.msg);
    b.n = 1;
    two[0].sha256 = "xyz";
    CHECK(cl_download_run(&o, &b, &err) == CL_EINVAL && strstr(err.msg, "sha256"), "bad sha: %s", err.msg);
    two[0] = g;
    two[0].part_path = NULL;
    CHECK(cl_download_run(&o, &b, &err) == CL_EINVAL && strstr(err.msg, "partial-file"), "no part: %s", err.msg);
    o.concurrency = 0;
    b.reqs = &g;
    CHECK(cl_download_run(&o, &b, &err) == CL_EINVAL && strstr(err.msg, "concurrency"), "concurrency: %s", err.msg);
    o = fast_opts();
    const char *evil[] = {"Authorization: Bearer x\r\nInjected: 1"};
    b.headers = evil;
    b.n_headers = 1;
    CHECK(cl_download_run(&o, &b, &err) == CL_EINVAL && strstr(err.msg, "line break"), "header injection: %s", err.msg);
    rmdir(dir);
}

int main(void) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    test_sha256();
    test_engine();
    curl_global_cleanup();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
