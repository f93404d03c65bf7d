/*
 * device_api: the pure parts of the device-api plugin (device_api.c),
 * exposed for unit tests: the ThingsBoard paths, the body checks and the
 * rewriting of telemetry bodies into what is published.
 */
#ifndef AIRGW_DP_DEVICE_API_H
#define AIRGW_DP_DEVICE_API_H

#include <stddef.h>
#include <stdint.h>

enum device_api_kind {
    DEVICE_API_NONE = 0, /* not a device API path: 404 */
    DEVICE_API_TELEMETRY = 1,
    DEVICE_API_ATTRIBUTES = 2,
};

/* Classifies a request path: ".../api/v1/{token}/telemetry",
 * ".../api/v1/{token}/attributes" (token set, *token_len > 0), or
 * ".../api/v1/telemetry", ".../api/v1/attributes" (token NULL). Any prefix
 * before "/api/v1/" is allowed. DEVICE_API_NONE for anything else. */
enum device_api_kind device_api_path(const char *uri, const char **token, size_t *token_len);

/* Checks a telemetry body (the ThingsBoard forms {"k":v,...},
 * {"ts":N,"values":{...}} and non-empty arrays of those) and makes the
 * payload to publish: the body unchanged when every entry has "ts", else
 * each entry without "ts" wrapped as {"ts":now_ms,"values":<entry as sent>}
 * (the entry's bytes copied, never re-serialised). *out is malloc'd (the
 * caller frees it). 0, -ENOMEM, or -EINVAL with a message in err naming the
 * problem. */
int device_api_telemetry(const char *body, size_t len, int64_t now_ms, char **out, size_t *out_len,
                         char *err, size_t errlen);

/* Checks an attributes body: a non-empty JSON object of keys to string,
 * boolean, number, object or array values. Published unchanged. 0 or
 * -EINVAL with a message in err. */
int device_api_attributes(const char *body, size_t len, char *err, size_t errlen);

/* The topic for a template ("{device}" replaced with device, every
 * occurrence); malloc'd, NULL when out of memory. */
char *device_api_topic(const char *tmpl, const char *device);

#endif
