/*
 * cfg_state: see cfg_state.h.
 */
#include "cfg_state.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void cfg_state_init(struct cfg_state *st)
{
    memset(st, 0, sizeof(*st));
    st->res = json_object();
}

void cfg_state_free(struct cfg_state *st)
{
    json_decref(st->res);
    json_decref(st->pending);
    memset(st, 0, sizeof(*st));
}

int cfg_state_apply(struct cfg_state *st, const struct cfgs_msg *m, bool *changed)
{
    *changed = false;
    switch (m->type) {
    case CFGS_SNAPSHOT_BEGIN:
        json_decref(st->pending);
        st->pending = json_object();
        st->pending_rev = m->revision;
        return 0;
    case CFGS_PUT:
        if (st->pending) {
            json_object_set(st->pending, m->key, m->value);
            return 0;
        }
        json_object_set(st->res, m->key, m->value);
        if (m->revision > st->revision)
            st->revision = m->revision;
        *changed = true;
        return 0;
    case CFGS_DELETE:
        if (st->pending)
            return -EPROTO;
        json_object_del(st->res, m->key);
        if (m->revision > st->revision)
            st->revision = m->revision;
        *changed = true;
        return 0;
    case CFGS_SNAPSHOT_END:
        if (!st->pending)
            return -EPROTO;
        json_decref(st->res);
        st->res = st->pending;
        st->pending = NULL;
        st->revision = m->revision;
        *changed = true;
        return 0;
    case CFGS_RESUME:
        if (st->pending)
            return -EPROTO;
        return 0;
    default:
        return 0;
    }
}

void cfg_state_replace(struct cfg_state *st, json_t *res, int64_t revision)
{
    json_decref(st->res);
    json_decref(st->pending);
    st->pending = NULL;
    st->res = res;
    st->revision = revision;
}

int cfg_state_save(const struct cfg_state *st, const char *path, char *err, size_t errlen)
{
    char tmp[4200];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    json_t *doc = json_pack("{s:I, s:O}", "revision", (json_int_t)st->revision, "resources",
                            st->res);
    char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    if (!text) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int rc = 0;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        rc = -errno;
        snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
        goto out;
    }
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            rc = -errno;
            break;
        }
        off += (size_t)w;
    }
    if (rc == 0 && fsync(fd) < 0)
        rc = -errno;
    if (close(fd) < 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, path) < 0)
        rc = -errno;
    if (rc < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(-rc));
        unlink(tmp);
    }
out:
    free(text);
    return rc;
}

int cfg_state_load(struct cfg_state *st, const char *path, char *err, size_t errlen)
{
    json_error_t e;
    if (access(path, F_OK) != 0)
        return -ENOENT;
    json_t *doc = json_load_file(path, JSON_REJECT_DUPLICATES, &e);
    if (!doc) {
        snprintf(err, errlen, "%s: %s (line %d)", path, e.text, e.line);
        return -EINVAL;
    }
    json_t *rev = json_object_get(doc, "revision"), *res = json_object_get(doc, "resources");
    if (!json_is_integer(rev) || !json_is_object(res)) {
        json_decref(doc);
        snprintf(err, errlen, "%s: not a data plane state file", path);
        return -EINVAL;
    }
    cfg_state_replace(st, json_incref(res), json_integer_value(rev));
    json_decref(doc);
    return 0;
}

int cfg_state_encode(const struct cfg_state *st, void (*emit)(void *ud, char *buf, size_t len),
                     void *ud)
{
    char *buf;
    size_t len;
    int rc = cfgs_encode_rev(CFGS_SNAPSHOT_BEGIN, st->revision, &buf, &len);
    if (rc < 0)
        return rc;
    emit(ud, buf, len);
    const char *k;
    json_t *v;
    int64_t count = 0;
    json_object_foreach(st->res, k, v) {
        rc = cfgs_encode_put(st->revision, k, v, 0, 0, &buf, &len);
        if (rc < 0)
            return rc;
        emit(ud, buf, len);
        count++;
    }
    rc = cfgs_encode_snapshot_end(st->revision, count, &buf, &len);
    if (rc < 0)
        return rc;
    emit(ud, buf, len);
    return 0;
}

#define PACER_FREE_NS 1000000ull    /* cheaper than 1 ms: never delayed */
#define PACER_MAX_DELAY_MS 5000ull  /* bound, whatever one run cost */
#define PACER_IDLE_RATIO 3ull       /* after a run, rest this many times its cost */

uint64_t cfg_pacer_delay_ms(const struct cfg_pacer *p, uint64_t now_ns)
{
    if (p->runs == 0 || p->cost_ns < PACER_FREE_NS)
        return 0;
    uint64_t ready = p->ended_ns + PACER_IDLE_RATIO * p->cost_ns;
    if (now_ns >= ready)
        return 0;
    uint64_t ms = (ready - now_ns + 999999ull) / 1000000ull;
    return ms > PACER_MAX_DELAY_MS ? PACER_MAX_DELAY_MS : ms;
}

void cfg_pacer_start(struct cfg_pacer *p, uint64_t now_ns)
{
    p->started_ns = now_ns;
}

void cfg_pacer_done(struct cfg_pacer *p, uint64_t now_ns)
{
    p->cost_ns = now_ns > p->started_ns ? now_ns - p->started_ns : 0;
    p->ended_ns = now_ns;
    p->runs++;
}
