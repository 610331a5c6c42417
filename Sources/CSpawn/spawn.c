// fork + execve with a parent-death signal: posix_spawn cannot set PR_SET_PDEATHSIG in the child,
// and only C can run the few async-signal-safe calls a forked child of a threaded process may.
#define _GNU_SOURCE
#include "fwp_spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/prctl.h>
#endif
#include <sys/syscall.h>
#include <sys/wait.h>

// Closes every descriptor from `first` on except `keep` (async-signal-safe).
static void close_from(int first, int keep) {
#if defined(__linux__) && defined(SYS_close_range)
    if (keep > first) syscall(SYS_close_range, (unsigned)first, (unsigned)keep - 1, 0);
    if (syscall(SYS_close_range, (unsigned)keep + 1, ~0U, 0) == 0) return;
#endif
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 65536) max = 65536;
    for (int fd = first; fd < max; fd++)
        if (fd != keep) close(fd);
}

pid_t fwp_spawn(const char *path, char *const argv[], char *const envp[], const char *dir, int out_fd, int err_fd,
                int *error) {
    int report[2];  // the child writes the errno of a failed step here; execve closes it on success
    if (pipe2(report, O_CLOEXEC) != 0) {
        *error = errno;
        return -1;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        *error = errno;
        close(report[0]);
        close(report[1]);
        return -1;
    }
    if (pid == 0) {
        // The child: only async-signal-safe calls until execve.
        int e = 0;
        setpgid(0, 0);
#if defined(__linux__)
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) e = errno;
        if (getppid() != parent) _exit(127);  // the parent died before the signal was armed
#endif
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        int defaults[] = {SIGTERM, SIGINT, SIGPIPE, SIGHUP};
        for (unsigned i = 0; i < sizeof defaults / sizeof defaults[0]; i++) signal(defaults[i], SIG_DFL);
        int in = open("/dev/null", O_RDONLY);
        if (!e && (in < 0 || dup2(in, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(err_fd, 2) < 0)) e = errno;
        if (!e && dir && chdir(dir) != 0) e = errno;
        // Nothing else of fwpd's crosses over (its sockets, its database): every descriptor from
        // 3 on is closed but the report pipe, which closes itself on execve.
        if (!e) close_from(3, report[1]);
        if (!e) {
            execve(path, argv, envp);
            e = errno;
        }
        ssize_t unused = write(report[1], &e, sizeof e);
        (void)unused;
        _exit(127);
    }
    close(report[1]);
    int e = 0;
    ssize_t n;
    do { n = read(report[0], &e, sizeof e); } while (n < 0 && errno == EINTR);
    close(report[0]);
    if (n == (ssize_t)sizeof e) {  // the child failed before or in execve, and has exited
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        *error = e;
        return -1;
    }
    return pid;
}

int fwp_die_with_parent(void) {
    pid_t parent = getppid();
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    return getppid() != parent ? -1 : 0;
}
