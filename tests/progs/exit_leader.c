/* The group leader exits first (pthread_exit from main), another thread ends the process
 * later with exit(7): the process exit must be reported once, with status 7, only when the
 * last thread goes (sched_process_exit fires for each thread; signal->live reaches 0 once). */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

static void *worker(void *arg)
{
    (void)arg;
    usleep(100 * 1000);
    exit(7);
}

int main(void)
{
    pthread_t t;
    if (pthread_create(&t, NULL, worker, NULL) != 0)
        return 1;
    pthread_exit(NULL);
}
