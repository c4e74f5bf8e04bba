/* Ground-truth exec workload for bench/run.py.
 *
 * fork()s and execve()s N short-lived children, each with a unique argv token, and writes one
 * line per child to the ground-truth file once all have been reaped:
 *
 *     seq <TAB> pid <TAB> ppid <TAB> exec_realtime_ns <TAB> lifetime_ns <TAB> argv joined by \x1f
 *
 * exec_realtime_ns is CLOCK_REALTIME read in the child immediately before execve() and handed
 * back through a MAP_SHARED page, so the harness can measure exec-to-event latency against the
 * time it reads each event line. lifetime_ns is fork() to waitpid() as the parent sees it (what a
 * monitor's in-kernel hooks and CPU competition slow down). The last line of stdout is a summary:
 * "execs N wall_ns W failed F".
 *
 * usage: workload -n N [-r RATE] [-j PARALLEL] [-t TOKEN_PREFIX] [-o FILE] PROGRAM
 *   -r RATE      execs per second, paced against absolute deadlines (0: as fast as possible)
 *   -j PARALLEL  children in flight at once (default 1: fork, exec, wait, repeat)
 *
 * Each child runs: PROGRAM --token <prefix><seq> "x y"   (the space checks argv fidelity).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(clockid_t clk)
{
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_until(int64_t deadline_mono)
{
    struct timespec ts = {deadline_mono / 1000000000LL, deadline_mono % 1000000000LL};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static void usage(void)
{
    fprintf(stderr, "usage: workload -n N [-r RATE] [-j PARALLEL] [-t PREFIX] [-o FILE] PROGRAM\n");
    exit(2);
}

int main(int argc, char **argv)
{
    long n = 0, parallel = 1;
    double rate = 0;
    const char *prefix = "psb-", *outpath = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "n:r:j:t:o:")) != -1) {
        switch (opt) {
        case 'n': n = strtol(optarg, NULL, 10); break;
        case 'r': rate = strtod(optarg, NULL); break;
        case 'j': parallel = strtol(optarg, NULL, 10); break;
        case 't': prefix = optarg; break;
        case 'o': outpath = optarg; break;
        default: usage();
        }
    }
    if (optind != argc - 1 || n <= 0 || parallel <= 0)
        usage();
    const char *program = argv[optind];

    /* Per child: exec timestamp, written by the child just before execve. */
    int64_t *exec_ts = mmap(NULL, (size_t)n * sizeof(int64_t), PROT_READ | PROT_WRITE,
                            MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    pid_t *pids = calloc((size_t)n, sizeof(pid_t));
    int64_t *fork_mono = calloc((size_t)n, sizeof(int64_t));
    int64_t *life = calloc((size_t)n, sizeof(int64_t));
    if (exec_ts == MAP_FAILED || !pids || !fork_mono || !life) {
        perror("workload: alloc");
        return 1;
    }
    /* Tokens are built before the loop: the child only execs. */
    char (*tokens)[64] = calloc((size_t)n, 64);
    for (long i = 0; i < n; i++)
        snprintf(tokens[i], 64, "%s%ld", prefix, i);

    pid_t self = getpid();
    long started = 0, done = 0, failed = 0, inflight = 0;
    int64_t t0 = now_ns(CLOCK_MONOTONIC);
    double period_ns = rate > 0 ? 1e9 / rate : 0;

    while (done < n) {
        while (started < n && inflight < parallel) {
            if (period_ns > 0)
                sleep_until(t0 + (int64_t)(started * period_ns));
            long i = started;
            fork_mono[i] = now_ns(CLOCK_MONOTONIC);
            pid_t pid = fork();
            if (pid < 0) {
                if (errno == EAGAIN && inflight > 0)
                    break; /* reap one, then retry */
                perror("workload: fork");
                return 1;
            }
            if (pid == 0) {
                char *cargv[] = {(char *)program, "--token", tokens[i], "x y", NULL};
                exec_ts[i] = now_ns(CLOCK_REALTIME);
                execv(program, cargv);
                _exit(127);
            }
            pids[i] = pid;
            started++;
            inflight++;
        }
        int status;
        pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            perror("workload: waitpid");
            return 1;
        }
        int64_t t = now_ns(CLOCK_MONOTONIC);
        /* Find the child, newest first: it is usually among the last few started, and a PID
         * the kernel reused belongs to the newest child that has not been reaped. */
        for (long i = started - 1; i >= 0; i--) {
            if (pids[i] == pid && life[i] == 0) {
                life[i] = t - fork_mono[i];
                break;
            }
        }
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            failed++;
        inflight--;
        done++;
    }
    int64_t wall = now_ns(CLOCK_MONOTONIC) - t0;

    FILE *out = outpath ? fopen(outpath, "w") : NULL;
    if (outpath && !out) {
        perror("workload: open output");
        return 1;
    }
    if (out) {
        for (long i = 0; i < n; i++)
            fprintf(out, "%ld\t%d\t%d\t%" PRId64 "\t%" PRId64 "\t%s\x1f--token\x1f%s\x1fx y\n", i,
                    pids[i], self, exec_ts[i], life[i], program, tokens[i]);
        fclose(out);
    }
    printf("execs %ld wall_ns %" PRId64 " failed %ld\n", n, wall, failed);
    return failed ? 1 : 0;
}
