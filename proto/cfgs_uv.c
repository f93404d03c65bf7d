/*
 * cfgs_uv: see cfgs_uv.h.
 */
#include "cfgs_uv.h"

#include <errno.h>
#include <stdlib.h>

struct frame_write {
    uv_write_t req;          /* libuv request */
    struct cfgs_frame *f;    /* one reference */
    cfgs_write_err_fn on_err;/* may be NULL */
};

struct cfgs_frame *cfgs_frame_new(char *data, size_t len)
{
    struct cfgs_frame *f = malloc(sizeof(*f));
    if (!f) {
        free(data);
        return NULL;
    }
    f->refs = 1;
    f->len = len;
    f->data = data;
    return f;
}

void cfgs_frame_unref(struct cfgs_frame *f)
{
    if (f && --f->refs == 0) {
        free(f->data);
        free(f);
    }
}

static void on_written(uv_write_t *req, int status)
{
    struct frame_write *w = (struct frame_write *)req;
    cfgs_frame_unref(w->f);
    if (status < 0 && status != UV_ECANCELED && w->on_err)
        w->on_err(req->handle, status);
    free(w);
}

int cfgs_frame_write(uv_stream_t *s, struct cfgs_frame *f, cfgs_write_err_fn on_err)
{
    struct frame_write *w = malloc(sizeof(*w));
    if (!w)
        return UV_ENOMEM;
    w->f = f;
    w->on_err = on_err;
    f->refs++;
    uv_buf_t b = uv_buf_init(f->data, (unsigned)f->len);
    int rc = uv_write(&w->req, s, &b, 1, on_written);
    if (rc < 0) {
        f->refs--;
        free(w);
    }
    return rc;
}

int cfgs_write_buf(uv_stream_t *s, char *buf, size_t len, cfgs_write_err_fn on_err)
{
    struct cfgs_frame *f = cfgs_frame_new(buf, len);
    if (!f)
        return UV_ENOMEM;
    int rc = cfgs_frame_write(s, f, on_err);
    cfgs_frame_unref(f);
    return rc;
}
