/* The agent's own code, injected into an allowed binary (tests/attack_identity.rs).
 * Built on the host with the system compiler by the test. Its constructor runs
 * inside whatever process loads it (LD_PRELOAD, LD_AUDIT, an OpenSSL engine)
 * and leaves a marker, so the test knows the injection itself worked and the
 * refusal came from the gateway, not from a loader that ignored the variable. */
#include <fcntl.h>
#include <unistd.h>

__attribute__((constructor)) static void injected(void) {
    int fd = open("/tmp/injected", O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
        (void)write(fd, "x", 1);
        close(fd);
    }
}

/* LD_AUDIT needs this symbol to keep the library loaded. */
unsigned int la_version(unsigned int v) { return v; }
