/* device-api: not implemented yet (placeholder so the registry links). */
#include "plugin.h"

const struct plugin_def plugin_def_device_api = {
    .name = "device-api",
    .priority = 410,
    .flags = PLUGIN_HTTP,
};
