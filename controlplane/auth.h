/*
 * auth: Admin API keys. Checks a presented key against the configured ones in
 * constant time, and makes sure an admin key exists: with none configured, one
 * is generated on first start and kept in STATE_DIR/admin.key (mode 0600), so
 * there is never a built-in default key.
 */
#ifndef AIRGW_CP_AUTH_H
#define AIRGW_CP_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include "settings.h"

/* Returns the role of the matching key, or -1 when none matches. The time
 * taken does not depend on where the keys differ. */
int auth_check_key(const struct cp_settings *s, const char *presented);

/* Ensures s has an admin-role key: if none is configured, reads
 * STATE_DIR/admin.key or creates it with 128 random bits. Sets *generated
 * when the key came from the state file (so the caller prints it). Returns 0
 * or a negative errno with a message in err. */
int auth_ensure_admin_key(struct cp_settings *s, const char **key_out, bool *from_state,
                          char *err, size_t errlen);

#endif
