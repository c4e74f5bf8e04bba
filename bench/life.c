/* The realistic level's child (bench/run.py level "realistic"): a process that lives like a
 * small client does, long enough for every monitor to enrich it.
 *
 * usage: life --token TOKEN "x y"   (the argv bench/workload.c gives every child)
 *
 * It opens a regular file, makes a pipe (and keeps it on fd 0), connects to the TCP server on
 * 127.0.0.1:$PSBENCH_PORT (kept on fd 1, as a client that talks to its peer would), sends its
 * token and reads the echo, then lives 10-200 ms in all (a lifetime drawn from the token, so a
 * run is repeatable) and exits. Without PSBENCH_PORT it skips the connection.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    const char *token = argc > 2 ? argv[2] : "none";
    uint32_t h = 2166136261u;  /* FNV-1a of the token: the lifetime */
    for (const char *p = token; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    long life_ms = 10 + h % 191;

    int file = open("/etc/hostname", O_RDONLY);
    char buf[256];
    if (file >= 0 && read(file, buf, sizeof(buf)) < 0)
        return 3;
    int p[2];
    if (pipe(p) == 0) {
        dup2(p[0], 0);
        if (write(p[1], token, strlen(token)) < 0)
            return 3;
    }
    const char *port = getenv("PSBENCH_PORT");
    if (port) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(port))};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (s >= 0 && connect(s, (struct sockaddr *)&a, sizeof(a)) == 0) {
            dup2(s, 1);
            if (write(s, token, strlen(token)) > 0 && read(s, buf, sizeof(buf)) < 0)
                return 3;
        }
    }
    struct timespec t = {life_ms / 1000, (life_ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
    return 0;
}
