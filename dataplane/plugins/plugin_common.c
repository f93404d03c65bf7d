#include "plugin_common.h"

#include <stdio.h>
#include <string.h>

#include "log.h"

int auth_accept_consumer(struct plugin_req *r, const struct consumer_rt *c, const char *plugin,
                         int hide_rc)
{
    if (hide_rc < 0) {
        log_error("%s: cannot hide the credentials: %s", plugin, strerror(-hide_rc));
        plugin_respond_message(r, 500, "internal error");
        return PLUGIN_STOP;
    }
    /* The upstream learns who called, and a client cannot pose as another
     * consumer by sending it. */
    if (plugin_req_header_set(r, "X-Consumer-Username", c->username) < 0) {
        plugin_respond_message(r, 500, "internal error");
        return PLUGIN_STOP;
    }
    plugin_req_set_consumer(r, c);
    return PLUGIN_CONTINUE;
}

pcre2_code *plugin_regex_compile(const char *pat, const char *what, char *err, size_t errlen)
{
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, 0, &ec, &eo, NULL);
    if (!re) {
        char m[128];
        pcre2_get_error_message(ec, (PCRE2_UCHAR *)m, sizeof(m));
        snprintf(err, errlen, "%s %s: %s", what, pat, m);
    }
    return re;
}
