/* proxy-rewrite: not implemented yet (placeholder so the registry links). */
#include "plugin.h"

const struct plugin_def plugin_def_proxy_rewrite = {
    .name = "proxy-rewrite",
    .priority = 1008,
    .flags = PLUGIN_HTTP,
};
