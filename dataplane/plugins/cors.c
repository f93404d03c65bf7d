/* cors: not implemented yet (placeholder so the registry links). */
#include "plugin.h"

const struct plugin_def plugin_def_cors = {
    .name = "cors",
    .priority = 4000,
    .flags = PLUGIN_HTTP,
};
