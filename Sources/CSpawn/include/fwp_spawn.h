// Starting external programs for fwp's exec task so that they cannot outlive fwpd.
#ifndef FWP_SPAWN_H
#define FWP_SPAWN_H

#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Starts `path` with `argv` and `envp` (NULL-terminated) as the leader of a new process group:
/// stdin from /dev/null, stdout and stderr to `out_fd` and `err_fd`, working directory `dir`
/// (NULL: the caller's), SIGTERM, SIGINT, SIGPIPE and SIGHUP at their defaults, no signal blocked,
/// and a parent-death signal (SIGKILL), so that it dies when the thread that started it does —
/// with fwpd, whichever way fwpd ends. Returns the child's pid, or -1 with *error set to the errno
/// of what failed (fork, or the program's execve: ENOENT, EACCES, ETXTBSY, …).
pid_t fwp_spawn(const char *path, char *const argv[], char *const envp[], const char *dir, int out_fd, int err_fd,
                int *error);

/// Makes the calling process receive SIGKILL when its parent exits (the parent-death signal that
/// fwp_spawn gives its children, for processes started by another launcher, such as mpirun's
/// ranks). Returns 0, or -1 when the parent has already gone.
int fwp_die_with_parent(void);

#ifdef __cplusplus
}
#endif

#endif
