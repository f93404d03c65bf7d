/*
 * fuzz_router: libFuzzer target for the route matcher and vars expressions.
 *
 * Input: a JSON array of routes, a NUL byte, then requests, one per line:
 * "METHOD HOST PATH". Routes that fail to compile are skipped (that is the
 * router's job: a clean error); every request must match or not without a
 * crash, a leak or undefined behaviour. Variables come from the request
 * line itself so vars expressions are exercised too.
 */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "router.h"

struct vars {
    const char *method, *host, *path;
};

static const char *var(void *ud, const char *name, size_t *len)
{
    struct vars *v = ud;
    const char *r = NULL;
    if (strcmp(name, "uri") == 0)
        r = v->path;
    else if (strcmp(name, "host") == 0 || strcmp(name, "http_host") == 0)
        r = v->host;
    else if (strcmp(name, "request_method") == 0)
        r = v->method;
    else if (strncmp(name, "arg_", 4) == 0)
        r = strchr(v->path, '?') ? strchr(v->path, '?') + 1 : NULL;
    if (r)
        *len = strlen(r);
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536)
        return 0;
    const uint8_t *nul = memchr(data, 0, size);
    size_t jlen = nul ? (size_t)(nul - data) : size;
    json_t *routes = json_loadb((const char *)data, jlen, 0, NULL);
    struct router *r = router_new();
    if (!r) {
        json_decref(routes);
        return 0;
    }
    size_t i;
    json_t *route;
    char err[256];
    static int payloads[64];
    json_array_foreach(routes, i, route) {
        if (i >= 64)
            break;
        router_add(r, route, &payloads[i], err, sizeof(err));
    }
    router_build(r);
    if (nul) {
        char *text = strndup((const char *)nul + 1, size - jlen - 1);
        char *save = NULL;
        for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
            char *m = strtok(line, " ");
            char *h = m ? strtok(NULL, " ") : NULL;
            char *p = h ? strtok(NULL, " ") : NULL;
            if (!p)
                continue;
            struct vars v = {m, h, p};
            struct router_req req;
            router_req_init(&req, m, h, p);
            char *q = strchr(p, '?');
            if (q)
                req.path_len = (size_t)(q - p);
            req.var = var;
            req.ud = &v;
            struct router_match match;
            router_match_ex(r, &req, &match);
        }
        free(text);
    }
    router_free(r);
    json_decref(routes);
    return 0;
}
