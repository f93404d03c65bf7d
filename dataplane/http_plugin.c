/* http_plugin: the plugin phases of the HTTP engine (see plugin.h). TODO(framework). */
#include "plugin.h"
