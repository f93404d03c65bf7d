/* shm_limits: node-wide limit counters in shared memory. TODO(limits). */
#include "plugin.h"
