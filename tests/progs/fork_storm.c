/* Ground truth for completeness tests: fork+exec argv[2] (with a unique token argument)
 * argv[1] times as fast as possible, wait for each, and print every child PID. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    long n = atol(argv[1]);
    char token[32];
    for (long i = 0; i < n; i++) {
        snprintf(token, sizeof(token), "tok-%ld", i);
        pid_t pid = fork();
        if (pid == 0) {
            char *args[] = {argv[2], token, NULL};
            execv(argv[2], args);
            _exit(127);
        }
        if (pid < 0) {
            perror("fork");
            return 1;
        }
        int status;
        waitpid(pid, &status, 0);
        printf("%d\n", pid);
    }
    return 0;
}
