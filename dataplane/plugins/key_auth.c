/* key-auth: not implemented yet (placeholder so the registry links). */
#include "plugin.h"

const struct plugin_def plugin_def_key_auth = {
    .name = "key-auth",
    .priority = 2500,
    .flags = PLUGIN_HTTP,
};
