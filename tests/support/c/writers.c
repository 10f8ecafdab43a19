/* Three writers of one watched word, for the hit tests.
 *
 * usage: writers A B C
 * Once its second thread is waiting, prints one line:
 *     <pid> <tid of the second thread> <&watched> <&writer_a> <&writer_b> <&writer_c>
 * then, on a line on stdin, the main thread calls writer_a(A) then writer_b(B) while the second
 * thread calls writer_c(C); each call stores to `watched` exactly that many times. It then prints
 * "done" and waits for the end of stdin, so that its maps can still be read. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

volatile long watched;

__attribute__((noinline)) void writer_a(long n) {
    for (long i = 0; i < n; i++) watched = i;
}

__attribute__((noinline)) void writer_b(long n) {
    for (long i = 0; i < n; i++) watched = i;
}

__attribute__((noinline)) void writer_c(long n) {
    for (long i = 0; i < n; i++) watched = i;
}

static pthread_barrier_t ready, go;
static long c_times;
static long second_tid;

static void *second(void *unused) {
    (void)unused;
    second_tid = syscall(SYS_gettid);
    pthread_barrier_wait(&ready);
    pthread_barrier_wait(&go);
    writer_c(c_times);
    return NULL;
}

int main(int argc, char **argv) {
    char line[64];
    pthread_t thread;
    if (argc != 4) {
        fprintf(stderr, "usage: writers A B C\n");
        return 2;
    }
    long a = atol(argv[1]), b = atol(argv[2]);
    c_times = atol(argv[3]);
    pthread_barrier_init(&ready, NULL, 2);
    pthread_barrier_init(&go, NULL, 2);
    pthread_create(&thread, NULL, second, NULL);
    pthread_barrier_wait(&ready);
    printf("%d %ld %p %p %p %p\n", getpid(), second_tid, (void *)&watched, (void *)writer_a,
           (void *)writer_b, (void *)writer_c);
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return 1;
    pthread_barrier_wait(&go);
    writer_a(a);
    writer_b(b);
    pthread_join(thread, NULL);
    printf("done\n");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
    }
    return 0;
}
