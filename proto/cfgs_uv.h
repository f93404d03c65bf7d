/*
 * cfgs_uv: sending config stream frames on libuv streams.
 *
 * A frame encoded once can be queued on many streams (the control plane to
 * its data planes, a data plane master to its workers): the buffer is
 * refcounted and freed after its last write completes or is cancelled.
 */
#ifndef AIRGW_CFGS_UV_H
#define AIRGW_CFGS_UV_H

#include <stddef.h>
#include <uv.h>

struct cfgs_frame {
    unsigned refs; /* the creator's reference plus one per queued write */
    size_t len;    /* bytes in data */
    char *data;    /* the encoded frame (malloc'd by the encoder) */
};

/* Wraps an encoder's buffer (takes it; frees it on failure). NULL on ENOMEM. */
struct cfgs_frame *cfgs_frame_new(char *data, size_t len);

void cfgs_frame_unref(struct cfgs_frame *f);

/* Called when a queued write fails (not when it is cancelled by a close). */
typedef void (*cfgs_write_err_fn)(uv_stream_t *s, int status);

/* Queues f on s (taking a reference for the write). Returns 0 or a libuv
 * error (nothing queued). */
int cfgs_frame_write(uv_stream_t *s, struct cfgs_frame *f, cfgs_write_err_fn on_err);

/* Encoder result -> one write: takes buf whatever happens. */
int cfgs_write_buf(uv_stream_t *s, char *buf, size_t len, cfgs_write_err_fn on_err);

#endif
