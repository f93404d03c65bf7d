/* PLACEHOLDER */
#include "store.h"
#include <stdlib.h>
void store_item_clear(struct store_item *it) { free(it->key); free(it->value); it->key = it->value = NULL; }
