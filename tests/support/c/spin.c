/* A hot variable: prints "<pid> <&watched>", then writes `watched` as fast as it can until it is
 * killed. */
#include <stdio.h>
#include <unistd.h>

volatile long watched;

__attribute__((noinline)) void spin(void) {
    for (;;) watched++;
}

int main(void) {
    printf("%d %p\n", getpid(), (void *)&watched);
    fflush(stdout);
    spin();
    return 0;
}
