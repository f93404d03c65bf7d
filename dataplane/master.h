/*
 * master: the data plane's master process. It owns the listening sockets,
 * the configuration (from a control plane or a standalone file) and the
 * worker processes; it never touches a request.
 *
 * Workers are this same binary started with --worker N (a fresh exec, so no
 * libuv state crosses a fork). Each gets fd 3, a socketpair to the master
 * that carries the config stream protocol (the master sends a snapshot, then
 * live changes; the worker ACKs each revision it serves), and fds 4.. , the
 * listening sockets of its slot (SO_REUSEPORT, one set per worker slot, held
 * by the master so a respawned or replacing worker picks up the same queue
 * and no pending connection is lost).
 *
 * Signals: SIGTERM/SIGINT drain workers (bounded by drain_timeout) and exit 0;
 * SIGHUP re-reads settings (and the standalone file), starts a new set of
 * workers and retires the old ones once the new ones serve.
 */
#ifndef AIRGW_DP_MASTER_H
#define AIRGW_DP_MASTER_H

/* Runs the master until it stops; returns the process exit code. argv is
 * kept to start workers and to re-read settings on SIGHUP. */
int master_main(int argc, char **argv);

#endif
