/*
 * auth: see auth.h.
 */
#include "auth.h"

#include "fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

/* Compares without an early exit; the length difference is folded in. */
static bool ct_equal(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned char diff = (unsigned char)(la != lb);
    for (size_t i = 0; i < lb; i++)
        diff |= (unsigned char)(a[i < la ? i : 0] ^ b[i]) | (unsigned char)(i >= la);
    return diff == 0;
}

int auth_check_key(const struct cp_settings *s, const char *presented)
{
    int role = -1;
    if (!presented || !*presented)
        return -1;
    for (size_t i = 0; i < s->nkeys; i++)
        if (ct_equal(presented, s->keys[i].key) && role < 0)
            role = (int)s->keys[i].role;
    return role;
}

int auth_ensure_admin_key(struct cp_settings *s, const char **key_out, bool *from_state,
                          char *err, size_t errlen)
{
    *from_state = false;
    for (size_t i = 0; i < s->nkeys; i++) {
        if (s->keys[i].role == ROLE_ADMIN) {
            *key_out = s->keys[i].key;
            return 0;
        }
    }
    char path[4200];
    snprintf(path, sizeof(path), "%s/admin.key", s->state_dir);
    char key[65] = {0};
    FILE *f = fopen(path, "r");
    if (f) {
        size_t n = fread(key, 1, sizeof(key) - 1, f);
        fclose(f);
        while (n > 0 && (key[n - 1] == '\n' || key[n - 1] == '\r' || key[n - 1] == ' '))
            key[--n] = '\0';
        if (n < 16) {
            snprintf(err, errlen, "%s: the stored admin key is too short; remove the file to "
                     "generate a new one", path);
            return -EINVAL;
        }
    } else {
        int rc = fs_mkdirs(s->state_dir, 0700);
        if (rc < 0) {
            snprintf(err, errlen, "cannot create state dir %s: %s", s->state_dir, strerror(-rc));
            return rc;
        }
        unsigned char rnd[16];
        if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
            snprintf(err, errlen, "getrandom: %s", strerror(errno));
            return -EIO;
        }
        for (size_t i = 0; i < sizeof(rnd); i++)
            snprintf(key + 2 * i, 3, "%02x", rnd[i]);
        char tmp[4300];
        snprintf(tmp, sizeof(tmp), "%s.tmp", path);
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd < 0) {
            snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
            return -errno;
        }
        size_t len = strlen(key);
        key[len] = '\n';
        ssize_t w = write(fd, key, len + 1);
        key[len] = '\0';
        if (w != (ssize_t)(len + 1) || fsync(fd) < 0 || close(fd) < 0 || rename(tmp, path) < 0) {
            snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
            unlink(tmp);
            return -EIO;
        }
    }
    settings_add_key(s, "generated", key, ROLE_ADMIN);
    *key_out = s->keys[s->nkeys - 1].key;
    *from_state = true;
    return 0;
}
