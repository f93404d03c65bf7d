/* store_etcd: the etcd v3 store. TODO(etcd). */
#include "store.h"
