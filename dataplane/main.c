/*
 * airgw-dataplane: carries the traffic. Started by an operator it is the
 * master (master.c); started by the master with --worker N it is a worker
 * (worker.c). Exit codes: 0 after a clean stop, 1 when it cannot start, 2
 * for a bad flag or config file.
 */
#include <string.h>

#include "master.h"
#include "worker.h"

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--worker") == 0)
            return worker_main(argc, argv);
    return master_main(argc, argv);
}
