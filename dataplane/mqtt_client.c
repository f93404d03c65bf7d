/* mqtt_client: a worker's MQTT publisher connection pool. TODO(device-api). */
#include "plugin.h"
