/*
 * check: the unit tests' tiny harness. A test file defines test functions,
 * lists them in main with RUN(), and ends with `return check_summary();`,
 * which prints the closing line "N passed, N failed" and returns the exit
 * status. CHECK records a failure and goes on; REQUIRE returns from the test.
 */
#ifndef AIRGW_CHECK_H
#define AIRGW_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_passed_, check_failed_, check_cur_failed_ __attribute__((unused));
static const char *check_cur_name_ __attribute__((unused));

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "  FAIL %s:%d (%s): %s\n", __FILE__, __LINE__, check_cur_name_,    \
                    #cond);                                                                    \
            check_cur_failed_ = 1;                                                             \
        }                                                                                      \
    } while (0)

#define REQUIRE(cond)                                                                          \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "  FAIL %s:%d (%s): %s\n", __FILE__, __LINE__, check_cur_name_,    \
                    #cond);                                                                    \
            check_cur_failed_ = 1;                                                             \
            return;                                                                            \
        }                                                                                      \
    } while (0)

#define CHECK_STREQ(a, b)                                                                      \
    do {                                                                                       \
        const char *ca_ = (a), *cb_ = (b);                                                     \
        if (!ca_ || !cb_ || strcmp(ca_, cb_) != 0) {                                           \
            fprintf(stderr, "  FAIL %s:%d (%s): \"%s\" != \"%s\"\n", __FILE__, __LINE__,       \
                    check_cur_name_, ca_ ? ca_ : "(null)", cb_ ? cb_ : "(null)");              \
            check_cur_failed_ = 1;                                                             \
        }                                                                                      \
    } while (0)

/* Substring check, for error messages. */
#define CHECK_CONTAINS(hay, needle)                                                            \
    do {                                                                                       \
        const char *ch_ = (hay), *cn_ = (needle);                                              \
        if (!ch_ || !strstr(ch_, cn_)) {                                                       \
            fprintf(stderr, "  FAIL %s:%d (%s): \"%s\" does not contain \"%s\"\n", __FILE__,   \
                    __LINE__, check_cur_name_, ch_ ? ch_ : "(null)", cn_);                     \
            check_cur_failed_ = 1;                                                             \
        }                                                                                      \
    } while (0)

#define RUN(fn)                                                                                \
    do {                                                                                       \
        check_cur_name_ = #fn;                                                                 \
        check_cur_failed_ = 0;                                                                 \
        fn();                                                                                  \
        if (check_cur_failed_) {                                                               \
            check_failed_++;                                                                   \
            fprintf(stderr, "not ok - %s\n", #fn);                                             \
        } else {                                                                               \
            check_passed_++;                                                                   \
            fprintf(stderr, "ok - %s\n", #fn);                                                 \
        }                                                                                      \
    } while (0)

static inline int check_summary(void)
{
    printf("%d passed, %d failed\n", check_passed_, check_failed_);
    return check_failed_ ? 1 : 0;
}

#endif
