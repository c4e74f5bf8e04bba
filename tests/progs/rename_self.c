/* A process that renames itself without exec, as setproctitle and stress-ng's workers do:
 * prctl(PR_SET_NAME) for comm, then argv rewritten in place. Prints its PID, then sleeps
 * argv[1] seconds. No new program image: a sweep must not call it a missed exec. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    unsigned secs = argc > 1 ? (unsigned)atoi(argv[1]) : 3;
    char *start = argv[0], *end = argv[argc - 1] + strlen(argv[argc - 1]);
    prctl(PR_SET_NAME, "renamed-worker", 0, 0, 0);
    memset(start, 0, (size_t)(end - start));
    strncpy(start, "renamed-worker [run]", (size_t)(end - start));
    printf("%d\n", getpid());
    fflush(stdout);
    sleep(secs);
    return 0;
}
