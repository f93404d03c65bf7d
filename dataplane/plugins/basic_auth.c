/* basic-auth: not implemented yet (placeholder so the registry links). */
#include "plugin.h"

const struct plugin_def plugin_def_basic_auth = {
    .name = "basic-auth",
    .priority = 2520,
    .flags = PLUGIN_HTTP,
};
