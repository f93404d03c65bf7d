/* mqtt-auth: not implemented yet (placeholder so the registry links). */
#include "plugin.h"

const struct plugin_def plugin_def_mqtt_auth = {
    .name = "mqtt-auth",
    .priority = 2510,
    .flags = PLUGIN_STREAM,
};
