/*
 * fsutil: file system helpers both daemons use.
 */
#ifndef AIRGW_FSUTIL_H
#define AIRGW_FSUTIL_H

#include <sys/types.h>

/* mkdir -p: parents get 0755, the last component mode. 0 or -errno. */
int fs_mkdirs(const char *path, mode_t mode);

#endif
