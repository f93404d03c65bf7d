/*
 * worker: one data plane worker process: one libuv loop serving the HTTP
 * listeners it inherited from the master (fds 4..), configured through the
 * channel on fd 3 (config stream protocol: a snapshot, then changes; it ACKs
 * each revision once the compiled snapshot serves).
 *
 * A new snapshot is compiled after each batch of changes and swapped in
 * between requests; requests in flight keep the one they started with.
 * SIGTERM, or the master going away, drains: stop accepting, finish requests
 * in flight (bounded by the drain timeout), exit 0.
 */
#ifndef AIRGW_DP_WORKER_H
#define AIRGW_DP_WORKER_H

int worker_main(int argc, char **argv);

#endif
