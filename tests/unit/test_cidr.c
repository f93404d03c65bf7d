/*
 * Unit tests for common/cidr.c: parsing IPv4/IPv6 CIDR ranges and matching
 * addresses against them.
 */
#include "check.h"
#include "cidr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/un.h>

/* The range's network address as text, for comparisons. */
static const char *net_str(const struct cidr *c)
{
    static char buf[INET6_ADDRSTRLEN];
    if (!inet_ntop(c->family, c->addr, buf, sizeof(buf)))
        return "(bad)";
    return buf;
}

static int parses(const char *s, int family, const char *net, int prefix)
{
    struct cidr c;
    int rc = cidr_parse(s, &c);
    if (rc != 0) {
        fprintf(stderr, "    cidr_parse(\"%s\") = %d\n", s, rc);
        return 0;
    }
    if (c.family != family || c.prefix != prefix || strcmp(net_str(&c), net) != 0) {
        fprintf(stderr, "    cidr_parse(\"%s\"): family %d prefix %d net %s\n", s, c.family,
                c.prefix, net_str(&c));
        return 0;
    }
    return 1;
}

static int rejects(const char *s)
{
    struct cidr c;
    int rc = cidr_parse(s, &c);
    if (rc != -EINVAL) {
        fprintf(stderr, "    cidr_parse(\"%s\") = %d, want -EINVAL\n", s, rc);
        return 0;
    }
    return 1;
}

static int in(const char *range, const char *addr)
{
    struct cidr c;
    if (cidr_parse(range, &c) != 0) {
        fprintf(stderr, "    cannot parse %s\n", range);
        return -1;
    }
    return cidr_match_str(&c, addr) ? 1 : 0;
}

static void test_parse_v4(void)
{
    CHECK(parses("10.0.0.0/8", AF_INET, "10.0.0.0", 8));
    CHECK(parses("192.168.1.0/24", AF_INET, "192.168.1.0", 24));
    CHECK(parses("1.2.3.4", AF_INET, "1.2.3.4", 32));
    CHECK(parses("0.0.0.0/0", AF_INET, "0.0.0.0", 0));
    CHECK(parses("255.255.255.255/32", AF_INET, "255.255.255.255", 32));
    CHECK(parses("172.16.0.0/12", AF_INET, "172.16.0.0", 12));
    CHECK(parses("10.0.0.0/08", AF_INET, "10.0.0.0", 8));
}

static void test_parse_v6(void)
{
    CHECK(parses("::1", AF_INET6, "::1", 128));
    CHECK(parses("::/0", AF_INET6, "::", 0));
    CHECK(parses("2001:db8::/32", AF_INET6, "2001:db8::", 32));
    CHECK(parses("fe80::/10", AF_INET6, "fe80::", 10));
    CHECK(parses("2001:DB8:0:0:0:0:0:1/128", AF_INET6, "2001:db8::1", 128));
    CHECK(parses("::ffff:1.2.3.4", AF_INET6, "::ffff:1.2.3.4", 128));
    CHECK(parses("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255/128", AF_INET6,
                 "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 128));
}

static void test_prefix_bounds(void)
{
    CHECK(parses("1.2.3.4/32", AF_INET, "1.2.3.4", 32));
    CHECK(rejects("1.2.3.4/33"));
    CHECK(rejects("1.2.3.4/128"));
    CHECK(parses("::1/128", AF_INET6, "::1", 128));
    CHECK(rejects("::1/129"));
    CHECK(rejects("::1/256"));
    CHECK(rejects("1.2.3.4/-1"));
    CHECK(rejects("1.2.3.4/+8"));
    CHECK(rejects("1.2.3.4/"));
    CHECK(rejects("1.2.3.4/ 8"));
    CHECK(rejects("1.2.3.4/8 "));
    CHECK(rejects("1.2.3.4/8x"));
    CHECK(rejects("1.2.3.4/0x8"));
    CHECK(rejects("1.2.3.4/99999999999999999999999"));
    CHECK(rejects("1.2.3.4/8/8"));
    CHECK(rejects("/8"));
}

static void test_host_bits_cleared(void)
{
    CHECK(parses("10.1.2.3/8", AF_INET, "10.0.0.0", 8));
    CHECK(parses("192.168.1.255/23", AF_INET, "192.168.0.0", 23));
    CHECK(parses("255.255.255.255/1", AF_INET, "128.0.0.0", 1));
    CHECK(parses("255.255.255.255/31", AF_INET, "255.255.255.254", 31));
    CHECK(parses("9.9.9.9/0", AF_INET, "0.0.0.0", 0));
    CHECK(parses("2001:db8:ffff::1/32", AF_INET6, "2001:db8::", 32));
    CHECK(parses("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/65", AF_INET6,
                 "ffff:ffff:ffff:ffff:8000::", 65));
    CHECK(parses("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/127", AF_INET6,
                 "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", 127));
    /* For IPv4 the bytes past the fourth stay zero. */
    struct cidr c;
    memset(&c, 0xaa, sizeof(c));
    REQUIRE(cidr_parse("1.2.3.4/32", &c) == 0);
    static const uint8_t zero[12];
    CHECK(memcmp(c.addr + 4, zero, sizeof(zero)) == 0);
}

static void test_match_v4(void)
{
    CHECK(in("10.0.0.0/8", "10.0.0.0") == 1);
    CHECK(in("10.0.0.0/8", "10.255.255.255") == 1);
    CHECK(in("10.0.0.0/8", "11.0.0.0") == 0);
    CHECK(in("10.0.0.0/8", "9.255.255.255") == 0);
    CHECK(in("192.168.0.0/23", "192.168.1.200") == 1);
    CHECK(in("192.168.0.0/23", "192.168.2.0") == 0);
    CHECK(in("1.2.3.4", "1.2.3.4") == 1);
    CHECK(in("1.2.3.4", "1.2.3.5") == 0);
    CHECK(in("0.0.0.0/0", "203.0.113.9") == 1);
    CHECK(in("128.0.0.0/1", "127.255.255.255") == 0);
    CHECK(in("128.0.0.0/1", "128.0.0.0") == 1);
    /* Host bits in the range text do not narrow it. */
    CHECK(in("10.9.9.9/8", "10.1.1.1") == 1);
    /* Families do not mix (besides v4-mapped). */
    CHECK(in("0.0.0.0/0", "::1") == 0);
    CHECK(in("::/0", "1.2.3.4") == 0);
}

static void test_match_v6(void)
{
    CHECK(in("2001:db8::/32", "2001:db8:1234::1") == 1);
    CHECK(in("2001:db8::/32", "2001:db9::1") == 0);
    CHECK(in("fe80::/10", "febf::1") == 1);
    CHECK(in("fe80::/10", "fec0::1") == 0);
    CHECK(in("::1", "::1") == 1);
    CHECK(in("::1", "::2") == 0);
    CHECK(in("::/0", "2001:db8::1") == 1);
    CHECK(in("2001:db8::/127", "2001:db8::1") == 1);
    CHECK(in("2001:db8::/127", "2001:db8::2") == 0);
}

static void test_v4_mapped(void)
{
    CHECK(in("10.0.0.0/8", "::ffff:10.1.2.3") == 1);
    CHECK(in("10.0.0.0/8", "::ffff:11.1.2.3") == 0);
    CHECK(in("1.2.3.4", "::ffff:1.2.3.4") == 1);
    CHECK(in("0.0.0.0/0", "::ffff:8.8.8.8") == 1);
    /* Only ::ffff:0:0/96 is mapped; the old "compatible" form is not. */
    CHECK(in("10.0.0.0/8", "::10.1.2.3") == 0);
    CHECK(in("10.0.0.0/8", "::fffe:10.1.2.3") == 0);
    CHECK(in("0.0.0.0/0", "::") == 0);

    /* Through sockaddrs, as accept() gives them on a dual-stack socket. */
    struct cidr c;
    REQUIRE(cidr_parse("192.168.0.0/16", &c) == 0);
    struct sockaddr_in6 s6;
    memset(&s6, 0, sizeof(s6));
    s6.sin6_family = AF_INET6;
    REQUIRE(inet_pton(AF_INET6, "::ffff:192.168.7.7", &s6.sin6_addr) == 1);
    CHECK(cidr_match(&c, (struct sockaddr *)&s6));
    REQUIRE(inet_pton(AF_INET6, "::ffff:192.169.7.7", &s6.sin6_addr) == 1);
    CHECK(!cidr_match(&c, (struct sockaddr *)&s6));
}

static void test_match_sockaddr(void)
{
    struct cidr c;
    REQUIRE(cidr_parse("172.16.0.0/12", &c) == 0);
    struct sockaddr_in s4;
    memset(&s4, 0, sizeof(s4));
    s4.sin_family = AF_INET;
    s4.sin_port = htons(1234);
    REQUIRE(inet_pton(AF_INET, "172.31.255.1", &s4.sin_addr) == 1);
    CHECK(cidr_match(&c, (struct sockaddr *)&s4));
    REQUIRE(inet_pton(AF_INET, "172.32.0.1", &s4.sin_addr) == 1);
    CHECK(!cidr_match(&c, (struct sockaddr *)&s4));

    REQUIRE(cidr_parse("2001:db8::/48", &c) == 0);
    struct sockaddr_in6 s6;
    memset(&s6, 0, sizeof(s6));
    s6.sin6_family = AF_INET6;
    REQUIRE(inet_pton(AF_INET6, "2001:db8:0:ffff::1", &s6.sin6_addr) == 1);
    CHECK(cidr_match(&c, (struct sockaddr *)&s6));
    /* A v4 sockaddr never matches a v6 range. */
    CHECK(!cidr_match(&c, (struct sockaddr *)&s4));

    struct sockaddr_un su;
    memset(&su, 0, sizeof(su));
    su.sun_family = AF_UNIX;
    CHECK(!cidr_match(&c, (struct sockaddr *)&su));
}

static void test_bad_inputs(void)
{
    const char *bad[] = {
        "",
        "abc",
        "1.2.3",
        "1.2.3.4.5",
        "256.0.0.1",
        "1.2.3.-1",
        " 1.2.3.4",
        "1.2.3.4 ",
        "1.2.3.4\n",
        "::g",
        ":::",
        "1::2::3",
        "2001:db8::/",
        "fe80::1%eth0",
        "fe80::1%eth0/64",
        "localhost",
        "0x0a000001",
        "10/8",
        "1.2.3.4/32/",
        "/",
        "/0",
        /* longer than any address */
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
        "1111111111111111111111111111111111111111111111111111111111111111111111111111.1.1.1",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK(rejects(bad[i]));

    struct cidr c;
    REQUIRE(cidr_parse("10.0.0.0/8", &c) == 0);
    CHECK(!cidr_match_str(&c, ""));
    CHECK(!cidr_match_str(&c, "10.0.0"));
    CHECK(!cidr_match_str(&c, "10.0.0.1/32"));
    CHECK(!cidr_match_str(&c, "ten.0.0.1"));
    CHECK(!cidr_match_str(&c, "10.0.0.1 "));
}

int main(void)
{
    RUN(test_parse_v4);
    RUN(test_parse_v6);
    RUN(test_prefix_bounds);
    RUN(test_host_bits_cleared);
    RUN(test_match_v4);
    RUN(test_match_v6);
    RUN(test_v4_mapped);
    RUN(test_match_sockaddr);
    RUN(test_bad_inputs);
    return check_summary();
}
