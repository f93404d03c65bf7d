/*
 * plugin_common: small pieces several plugins share: what key-auth and
 * basic-auth do once a request named a consumer, and compiling a
 * configured regular expression.
 */
#ifndef AIRGW_DP_PLUGIN_COMMON_H
#define AIRGW_DP_PLUGIN_COMMON_H

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>
#include <stddef.h>

#include "../plugin.h"

/* hide_rc is the result of removing the credentials from the request (0
 * when not asked to): < 0 answers 500. Otherwise, as APISIX 3.x's
 * attach_consumer, the upstream gets the consumer's name in
 * X-Consumer-Username (replacing a client's own) and the consumer is
 * attached to the request. PLUGIN_CONTINUE or PLUGIN_STOP. */
int auth_accept_consumer(struct plugin_req *r, const struct consumer_rt *c, const char *plugin,
                         int hide_rc);

/* Compiles pat (PCRE2, no options); NULL with err "<what> <pat>: <why>"
 * when it is not a valid pattern. */
pcre2_code *plugin_regex_compile(const char *pat, const char *what, char *err, size_t errlen);

#endif
