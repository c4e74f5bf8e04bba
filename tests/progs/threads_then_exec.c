/* Starts threads, then a non-leader thread calls execve: after exec the caller becomes the
 * leader (de_thread), so the exec record has tid == tgid == the original pid, and old_tid is
 * the thread that called execve. argv[1] is the program to exec. */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

static char **target;

static void *sleeper(void *arg) { (void)arg; pause(); return NULL; }

static void *execer(void *arg)
{
    (void)arg;
    usleep(50 * 1000);
    execv(target[0], target);
    _exit(99);
}

int main(int argc, char **argv)
{
    pthread_t a, b, c;
    if (argc < 2)
        return 2;
    target = &argv[1];
    pthread_create(&a, NULL, sleeper, NULL);
    pthread_create(&b, NULL, sleeper, NULL);
    pthread_create(&c, NULL, execer, NULL);
    pause();
    return 0;
}
