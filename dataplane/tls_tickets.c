/*
 * tls_tickets: see tls_tickets.h (and tls.h for the contract of the
 * tls_ticket_keys_* functions). Plain libc: no BoringSSL here.
 */
#include "tls_tickets.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#define TICKET_MAGIC 0x6169726777746b31ull /* "airgwtk1" */

struct ticket_shm {
    uint64_t magic;             /* TICKET_MAGIC once initialised */
    uint64_t seq;               /* odd while the master writes */
    uint64_t rotations;         /* how many keys were made (for logs and tests) */
    struct tls_ticket_key cur;  /* seals new tickets */
    struct tls_ticket_key prev; /* still opens tickets; name all zero: none */
};

struct tls_ticket_keys {
    int fd;                 /* the memfd */
    struct ticket_shm *shm; /* mapped */
};

static int fill_random(void *p, size_t n)
{
    uint8_t *b = p;
    while (n > 0) {
        ssize_t k = getrandom(b, n, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return k < 0 ? -errno : -EIO;
        b += k;
        n -= (size_t)k;
    }
    return 0;
}

static struct tls_ticket_keys *ring_map(int fd)
{
    struct tls_ticket_keys *k = calloc(1, sizeof(*k));
    if (!k)
        return NULL;
    void *p = mmap(NULL, sizeof(struct ticket_shm), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        free(k);
        return NULL;
    }
    k->fd = fd;
    k->shm = p;
    return k;
}

struct tls_ticket_keys *tls_ticket_keys_create(void)
{
    int fd = memfd_create("airgw-tls-tickets", MFD_CLOEXEC);
    if (fd < 0)
        return NULL;
    struct tls_ticket_keys *k = NULL;
    struct tls_ticket_key first;
    int rc = fill_random(&first, sizeof(first));
    if (rc < 0 || ftruncate(fd, sizeof(struct ticket_shm)) < 0 || !(k = ring_map(fd))) {
        if (rc < 0)
            errno = -rc;
        int e = errno;
        close(fd);
        explicit_bzero(&first, sizeof(first));
        errno = e;
        return NULL;
    }
    k->shm->cur = first;
    k->shm->rotations = 1;
    explicit_bzero(&first, sizeof(first));
    __atomic_store_n(&k->shm->magic, TICKET_MAGIC, __ATOMIC_RELEASE);
    return k;
}

struct tls_ticket_keys *tls_ticket_keys_attach(int fd)
{
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) < 0 || sb.st_size != (off_t)sizeof(struct ticket_shm))
        return NULL;
    struct tls_ticket_keys *k = ring_map(fd);
    if (k && __atomic_load_n(&k->shm->magic, __ATOMIC_ACQUIRE) != TICKET_MAGIC) {
        munmap(k->shm, sizeof(*k->shm));
        free(k);
        return NULL;
    }
    return k;
}

int tls_ticket_keys_fd(const struct tls_ticket_keys *k)
{
    return k->fd;
}

int tls_ticket_keys_rotate(struct tls_ticket_keys *k)
{
    struct tls_ticket_key next;
    int rc = fill_random(&next, sizeof(next));
    if (rc < 0)
        return rc;
    struct ticket_shm *m = k->shm;
    __atomic_add_fetch(&m->seq, 1, __ATOMIC_ACQ_REL); /* odd: readers retry */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    m->prev = m->cur;
    m->cur = next;
    m->rotations++;
    __atomic_add_fetch(&m->seq, 1, __ATOMIC_RELEASE); /* even again */
    explicit_bzero(&next, sizeof(next));
    return 0;
}

void tls_ticket_keys_free(struct tls_ticket_keys *k)
{
    if (!k)
        return;
    munmap(k->shm, sizeof(*k->shm));
    close(k->fd);
    free(k);
}

void tls_tickets_read(const struct tls_ticket_keys *k, struct tls_ticket_key *cur,
                      struct tls_ticket_key *prev)
{
    const struct ticket_shm *m = k->shm;
    /* The master writes a few hundred bytes: a retry or two at most. The
     * bound is for a master killed mid-write (a torn key then only fails
     * to open tickets: full handshakes, never a hang). */
    for (int tries = 0; tries < 100000; tries++) {
        uint64_t s0 = __atomic_load_n(&m->seq, __ATOMIC_ACQUIRE);
        memcpy(cur, (const void *)&m->cur, sizeof(*cur));
        memcpy(prev, (const void *)&m->prev, sizeof(*prev));
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (!(s0 & 1) && __atomic_load_n(&m->seq, __ATOMIC_RELAXED) == s0)
            return;
    }
}
