/*
 * store: the parts of the store interface (store.h) that do not depend on
 * an implementation. The implementations live in store_sqlite.c and
 * store_etcd.c.
 */
#include "store.h"

#include <stdlib.h>

/* Frees what an item owns and zeroes it, so clearing twice (or clearing an
 * item that was never filled, if it was zeroed first) is harmless. */
void store_item_clear(struct store_item *it)
{
    if (!it)
        return;
    free(it->key);
    free(it->value);
    it->key = NULL;
    it->value = NULL;
    it->create_rev = 0;
    it->mod_rev = 0;
}
