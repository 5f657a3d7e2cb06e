/* hpcray_call: call an hpcray service from C over the direct path (protocol HPR1).
 *
 * Needs libzmq only:  cc -O2 -o hpcray_call hpcray_call.c -lzmq
 * Usage: hpcray_call ADDRESS TOKEN_FILE METHOD [JSON_PAYLOAD] [COUNT | stream]
 *   ADDRESS     a replica's "address" from the run's endpoints.json (tcp://host:port)
 *   TOKEN_FILE  the run's token file ("password_file" there); "-" if the run has none
 *   COUNT       requests to send (default 1); prints the last reply and RT percentiles
 *   stream      one streamed request: prints each piece as it arrives, then the last reply
 * The layout of every byte is in docs/direct-protocol.md. A Fortran program can call
 * hpcray_request() below through ISO_C_BINDING.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define HEADER 10
#define MAX_FRAME (1 << 20)

typedef struct {
    char status;                 /* 'o' ok, 'e' the handler raised, 'r' refused, 'p' a piece */
    char replica[256];
    uint64_t before_ns, inference_ns, after_ns;  /* the replica's own clock */
    double round_trip_s;         /* this program's clock */
    const char *payload;         /* JSON result, or the error message */
    size_t payload_len;
} hpcray_reply;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static uint64_t u64le(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* Send one request with the JSON codec and timing on. `stream` != 0 asks for the service's
 * <method>_stream: its pieces come back one reply each (status 'p'), then a last reply. */
int hpcray_send(void *sock, const char *id, const char *method, const char *json, int stream,
                unsigned char *buf, size_t cap) {
    size_t id_len = strlen(id), m_len = strlen(method), p_len = strlen(json);
    size_t n = HEADER + id_len + m_len + p_len;
    if (id_len == 0 || id_len > 255 || m_len > 65535 || n > cap) return -1;
    memcpy(buf, "HPR1Qj", 6);
    buf[6] = stream ? 3 : 1;                     /* flags: bit 0 timing, bit 1 stream */
    buf[7] = (unsigned char)id_len;
    buf[8] = (unsigned char)(m_len & 0xff);      /* method length, little-endian u16 */
    buf[9] = (unsigned char)(m_len >> 8);
    memcpy(buf + HEADER, id, id_len);
    memcpy(buf + HEADER + id_len, method, m_len);
    memcpy(buf + HEADER + id_len + m_len, json, p_len);
    return zmq_send(sock, buf, n, 0) == (int)n ? 0 : -2;
}

/* Receive the next reply to `id` into `buf`. 0 on success. */
int hpcray_recv(void *sock, const char *id, unsigned char *buf, size_t cap, hpcray_reply *out) {
    size_t id_len = strlen(id);
    int got = zmq_recv(sock, buf, cap, 0);
    if (got < HEADER || (size_t)got > cap || memcmp(buf, "HPR1A", 5) != 0) return -3;
    size_t rid = buf[7], rep = buf[8], tim = buf[9], pos = HEADER;
    if (HEADER + rid + rep + tim > (size_t)got) return -3;
    if (rid != id_len || memcmp(buf + pos, id, id_len) != 0) return -4;  /* not our reply */
    pos += rid;
    memcpy(out->replica, buf + pos, rep);
    out->replica[rep] = 0;
    pos += rep;
    out->before_ns = out->inference_ns = out->after_ns = 0;
    if (tim == 24) {
        out->before_ns = u64le(buf + pos);
        out->inference_ns = u64le(buf + pos + 8);
        out->after_ns = u64le(buf + pos + 16);
    }
    pos += tim;
    out->status = (char)buf[6];
    out->payload = (const char *)buf + pos;
    out->payload_len = (size_t)got - pos;
    return 0;
}

/* One request and its reply; the reply lands in `buf`. 0 on success. */
int hpcray_request(void *sock, const char *id, const char *method, const char *json,
                   unsigned char *buf, size_t cap, hpcray_reply *out) {
    double start = now_s();
    int rc = hpcray_send(sock, id, method, json, 0, buf, cap);
    if (rc != 0) return rc;
    rc = hpcray_recv(sock, id, buf, cap, out);
    out->round_trip_s = now_s() - start;
    return rc;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s ADDRESS TOKEN_FILE METHOD [JSON_PAYLOAD] [COUNT]\n", argv[0]);
        return 2;
    }
    const char *payload = argc > 4 ? argv[4] : "null";
    int stream = argc > 5 && strcmp(argv[5], "stream") == 0;
    int count = argc > 5 && !stream ? atoi(argv[5]) : 1;
    if (count < 1) count = 1;
    void *ctx = zmq_ctx_new();
    /* REQ takes one reply per request; a stream's many replies need DEALER */
    void *sock = zmq_socket(ctx, stream ? ZMQ_DEALER : ZMQ_REQ);
    int zero = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof zero);
    if (strcmp(argv[2], "-") != 0) {
        char token[512] = {0};
        FILE *f = fopen(argv[2], "r");
        if (!f || !fgets(token, sizeof token, f)) {
            fprintf(stderr, "cannot read the token file %s\n", argv[2]);
            return 2;
        }
        fclose(f);
        token[strcspn(token, "\r\n")] = 0;
        zmq_setsockopt(sock, ZMQ_PLAIN_USERNAME, "hpcray", 6);
        zmq_setsockopt(sock, ZMQ_PLAIN_PASSWORD, token, strlen(token));
    }
    int timeout_ms = 10000;
    zmq_setsockopt(sock, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
    if (zmq_connect(sock, argv[1]) != 0) {
        fprintf(stderr, "cannot connect to %s: %s\n", argv[1], zmq_strerror(zmq_errno()));
        return 1;
    }
    unsigned char *buf = malloc(MAX_FRAME);
    double *rt = malloc(sizeof(double) * count);
    hpcray_reply reply;
    char id[32];
    int rc = 0;
    if (stream) {  /* pieces until the last reply ('o' ok, 'e' failed, 'r' refused) */
        double start = now_s();
        int pieces = 0;
        rc = hpcray_send(sock, "c-stream", argv[3], payload, 1, buf, MAX_FRAME);
        while (rc == 0) {
            rc = hpcray_recv(sock, "c-stream", buf, MAX_FRAME, &reply);
            if (rc != 0 || reply.status != 'p') break;
            pieces++;
            printf("piece %d at_us=%.1f: %.*s\n", pieces, (now_s() - start) * 1e6,
                   (int)reply.payload_len, reply.payload);
        }
        if (rc != 0) {
            fprintf(stderr, "stream failed (%d)\n", rc);
            return 1;
        }
        printf("status=%c replica=%s pieces=%d rt_us=%.1f inference_us=%.1f\n", reply.status,
               reply.replica, pieces, (now_s() - start) * 1e6, reply.inference_ns / 1e3);
        printf("payload=%.*s\n", (int)reply.payload_len, reply.payload);
        return reply.status == 'o' ? 0 : 3;
    }
    for (int i = 0; i < count; i++) {
        snprintf(id, sizeof id, "c-%d", i);
        rc = hpcray_request(sock, id, argv[3], payload, buf, MAX_FRAME, &reply);
        if (rc != 0) {
            fprintf(stderr, "request %s failed (%d): %s\n", id, rc,
                    rc == -3 && zmq_errno() == EAGAIN ? "no reply within 10 s" : "bad reply");
            return 1;
        }
        rt[i] = reply.round_trip_s;
    }
    printf("status=%c replica=%s rt_us=%.1f before_us=%.1f inference_us=%.1f after_us=%.1f\n",
           reply.status, reply.replica, reply.round_trip_s * 1e6, reply.before_ns / 1e3,
           reply.inference_ns / 1e3, reply.after_ns / 1e3);
    printf("payload=%.*s\n", (int)reply.payload_len, reply.payload);
    qsort(rt, count, sizeof(double), cmp);
    printf("requests=%d p50_us=%.1f p99_us=%.1f\n", count, rt[count / 2] * 1e6,
           rt[(int)(count * 0.99)] * 1e6);
    free(rt);
    free(buf);
    zmq_close(sock);
    zmq_ctx_term(ctx);
    return reply.status == 'o' ? 0 : 3;
}
