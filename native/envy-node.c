/*
 * envy-node: the one thing Node cannot do by itself on envy's hot path: replace the current
 * process with another program (execve), as a shell's `exec` does.
 *
 * `envy exec -- CMD` into a running environment ends in the namespace helper anyway. Spawning it as a
 * child costs Node's child_process/net/stream start-up plus a status pipe and Node's own exit (~10 ms,
 * a third of Node's whole start); becoming it costs nothing, and the helper then owns the pid the
 * user's shell and signals know: exit codes, signal forwarding and the pty are the helper's already.
 * Node 22.15+ has process.execve; envy supports Node 20, so this addon does it (Node-API, stable ABI).
 *
 * It also answers isatty(fd), which node:tty can only answer after loading node:net, and spawns the
 * helper for callers that go on afterwards, without node:child_process (see spawn_waiting).
 *
 * Built by scripts/build.mjs as dist/envy-node.node when Node's headers are at hand; without it envy
 * spawns the helper instead (src/runtime/namespace/replace.ts).
 */
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <node_api.h>
#include <uv.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

static napi_value throw_error(napi_env env, const char *message) {
  napi_throw_error(env, NULL, message);
  return NULL;
}

/* A JS array of strings as a NULL-terminated vector; NULL (with a pending exception) on a bad value. */
static char **string_vector(napi_env env, napi_value array) {
  bool is_array = false;
  uint32_t count = 0;
  if (napi_is_array(env, array, &is_array) != napi_ok || !is_array || napi_get_array_length(env, array, &count) != napi_ok) {
    throw_error(env, "expected an array of strings");
    return NULL;
  }
  char **vector = calloc((size_t)count + 1, sizeof *vector);
  if (!vector) {
    throw_error(env, "out of memory");
    return NULL;
  }
  for (uint32_t i = 0; i < count; i++) {
    napi_value item;
    size_t length = 0;
    if (napi_get_element(env, array, i, &item) != napi_ok || napi_get_value_string_utf8(env, item, NULL, 0, &length) != napi_ok) {
      throw_error(env, "expected an array of strings");
      return NULL;
    }
    vector[i] = malloc(length + 1);
    if (!vector[i]) {
      throw_error(env, "out of memory");
      return NULL;
    }
    napi_get_value_string_utf8(env, item, vector[i], length + 1, &length);
    if (strlen(vector[i]) != length) {
      throw_error(env, "a string holds a NUL byte");
      return NULL;
    }
  }
  return vector;
}

/* The (file, argv, env) every entry point takes first: false (with an exception pending) when malformed. */
static bool command_args(napi_env env, napi_value *args, const char *what, char file[4096], char ***argv, char ***envp) {
  size_t length = 0;
  if (napi_get_value_string_utf8(env, args[0], file, 4096, &length) != napi_ok || length >= 4096 - 1) {
    char message[128];
    snprintf(message, sizeof message, "%s: the file must be a string shorter than 4096 bytes", what);
    throw_error(env, message);
    return false;
  }
  *argv = string_vector(env, args[1]);
  if (!*argv) return false;
  *envp = string_vector(env, args[2]);
  return *envp != NULL;
}

/* execve(file, argv, envp): returns only by throwing (with strerror) when the exec failed. */
static napi_value replace_process(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value args[3];
  if (napi_get_cb_info(env, info, &argc, args, NULL, NULL) != napi_ok || argc != 3) return throw_error(env, "execve(file, argv, env)");
  char file[4096];
  char **argv, **envp;
  if (!command_args(env, args, "execve", file, &argv, &envp)) return NULL;
  /* What uv_spawn gives a child: Node ignores SIGPIPE (an ignored signal stays ignored across
   * execve) and the calling thread may have signals blocked (the mask is inherited too). A signal
   * arriving meanwhile gets its default action, which is what its sender asked of envy anyway. */
  struct sigaction saved_actions[NSIG];
  struct sigaction dfl = { .sa_handler = SIG_DFL };
  for (int sig = 1; sig < NSIG; sig++) sigaction(sig, &dfl, &saved_actions[sig]);
  sigset_t none, saved_mask;
  sigemptyset(&none);
  pthread_sigmask(SIG_SETMASK, &none, &saved_mask);
  /* Node marks every inherited fd close-on-exec at start (uv_disable_stdio_inheritance); child_process
   * hands a child stdin, stdout and stderr only, and so does this. */
  int saved_fd_flags[3];
  for (int fd = 0; fd < 3; fd++) {
    saved_fd_flags[fd] = fcntl(fd, F_GETFD);
    if (saved_fd_flags[fd] >= 0) fcntl(fd, F_SETFD, saved_fd_flags[fd] & ~FD_CLOEXEC);
  }
  /* Interval timers survive execve: a profiler's (node --cpu-prof) would kill the new program with SIGPROF. */
  struct itimerval off = { { 0, 0 }, { 0, 0 } }, saved_timer;
  setitimer(ITIMER_PROF, &off, &saved_timer);
  execve(file, argv, envp);
  int err = errno;
  setitimer(ITIMER_PROF, &saved_timer, NULL);
  for (int fd = 0; fd < 3; fd++) if (saved_fd_flags[fd] >= 0) fcntl(fd, F_SETFD, saved_fd_flags[fd]);
  for (int sig = 1; sig < NSIG; sig++) sigaction(sig, &saved_actions[sig], NULL);
  pthread_sigmask(SIG_SETMASK, &saved_mask, NULL);
  char message[4200];
  snprintf(message, sizeof message, "execve %s: %s", file, strerror(err));
  return throw_error(env, message);
}

/* isatty(fd): node:tty would answer too, but loading it loads node:net (~4 ms). */
static napi_value is_terminal(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value arg, result;
  int32_t fd = -1;
  if (napi_get_cb_info(env, info, &argc, &arg, NULL, NULL) != napi_ok || argc != 1 || napi_get_value_int32(env, arg, &fd) != napi_ok) {
    return throw_error(env, "isatty(fd)");
  }
  napi_get_boolean(env, fd >= 0 && isatty(fd) == 1, &result);
  return result;
}

/* ---------- spawn(file, argv, env, done): the helper as a child, without node:child_process ---------- */

/* NamespaceRuntime.exec from a Node program that goes on afterwards (the service supervisor, hooks,
 * `envy shell`): child_process costs ~6 ms to load before it spawns anything. This spawns with stdin,
 * stdout and stderr inherited plus the helper's status pipe as fd 3. The exit is watched with a pidfd
 * on Node's own event loop (no thread: a service may run for days, and a blocked libuv worker would
 * starve fs and dns), and the child is reaped on the main thread, so its pid cannot be reused while
 * Node may still forward a signal to it. */
struct child_watch {
  uv_poll_t poll;
  napi_env env;
  pid_t pid;
  int pidfd;
  int status_fd;
  napi_ref callback;
  napi_async_context context;
};

static void free_watch(uv_handle_t *handle) {
  free(handle->data);
}

static void child_exited(uv_poll_t *poll, int status, int events) {
  (void)status;
  (void)events;
  struct child_watch *watch = poll->data;
  int wstatus = 0, code = 125;
  pid_t reaped;
  while ((reaped = waitpid(watch->pid, &wstatus, WNOHANG)) < 0 && errno == EINTR) {}
  if (reaped == 0) return; /* not yet (a spurious wakeup): keep watching */
  if (reaped == watch->pid && WIFEXITED(wstatus)) code = WEXITSTATUS(wstatus);
  else if (reaped == watch->pid && WIFSIGNALED(wstatus)) code = 128 + WTERMSIG(wstatus);
  uv_poll_stop(poll);
  close(watch->pidfd);
  /* The helper wrote its report before exiting: what is in the pipe is all there is (a workload that
   * outlived it could still hold the write end, so never wait for end-of-file). */
  char text[4096];
  size_t length = 0;
  for (;;) {
    ssize_t n = read(watch->status_fd, text + length, sizeof text - 1 - length);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    length += (size_t)n;
    if (length >= sizeof text - 1) break;
  }
  close(watch->status_fd);
  napi_env env = watch->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value callback, resource, args[2];
  napi_get_reference_value(env, watch->callback, &callback);
  napi_create_object(env, &resource);
  napi_create_int32(env, code, &args[0]);
  napi_create_string_utf8(env, text, length, &args[1]);
  /* make_callback, not call_function: it runs the microtasks the callback queues (promise reactions). */
  napi_make_callback(env, watch->context, resource, callback, 2, args, NULL);
  napi_close_handle_scope(env, scope);
  napi_delete_reference(env, watch->callback);
  napi_async_destroy(env, watch->context);
  uv_close((uv_handle_t *)poll, free_watch);
}

static napi_value spawn_waiting(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value args[4];
  if (napi_get_cb_info(env, info, &argc, args, NULL, NULL) != napi_ok || argc != 4) return throw_error(env, "spawn(file, argv, env, done)");
  char file[4096];
  char **argv, **envp;
  if (!command_args(env, args, "spawn", file, &argv, &envp)) return NULL;
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) < 0) return throw_error(env, "spawn: pipe failed");
  fcntl(pipe_fds[0], F_SETFL, O_NONBLOCK);
  /* dup2 onto another number clears close-on-exec, which Node set on its stdio (see execve above). */
  int sources[4] = { fcntl(0, F_DUPFD_CLOEXEC, 10), fcntl(1, F_DUPFD_CLOEXEC, 10), fcntl(2, F_DUPFD_CLOEXEC, 10), fcntl(pipe_fds[1], F_DUPFD_CLOEXEC, 10) };
  close(pipe_fds[1]);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  for (int fd = 0; fd < 4; fd++) if (sources[fd] >= 0) posix_spawn_file_actions_adddup2(&actions, sources[fd], fd);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t all, none;
  sigfillset(&all);
  sigemptyset(&none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
  pid_t pid;
  int err = posix_spawn(&pid, file, &actions, &attr, argv, envp);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  for (int fd = 0; fd < 4; fd++) if (sources[fd] >= 0) close(sources[fd]);
  for (char **p = argv; *p; p++) free(*p);
  for (char **p = envp; *p; p++) free(*p);
  free(argv);
  free(envp);
  if (err != 0) {
    close(pipe_fds[0]);
    char message[4200];
    snprintf(message, sizeof message, "spawn %s: %s", file, strerror(err));
    return throw_error(env, message);
  }
  uv_loop_t *loop;
  napi_value name, result;
  struct child_watch *watch = calloc(1, sizeof *watch);
  int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (!watch || pidfd < 0 || napi_get_uv_event_loop(env, &loop) != napi_ok || uv_poll_init(loop, &watch->poll, pidfd) != 0) {
    /* Cannot happen where spawn is exported (init checked pidfd_open); never leave the child unwatched. */
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    close(pipe_fds[0]);
    if (pidfd >= 0) close(pidfd);
    free(watch);
    return throw_error(env, "spawn: cannot watch the child (pidfd_open)");
  }
  watch->poll.data = watch;
  watch->env = env;
  watch->pid = pid;
  watch->pidfd = pidfd;
  watch->status_fd = pipe_fds[0];
  napi_create_reference(env, args[3], 1, &watch->callback);
  napi_create_string_utf8(env, "envy-helper", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, NULL, name, &watch->context);
  uv_poll_start(&watch->poll, UV_READABLE, child_exited);
  napi_create_int32(env, pid, &result);
  return result;
}

static bool export_function(napi_env env, napi_value exports, const char *name, napi_callback callback) {
  napi_value function;
  return napi_create_function(env, name, NAPI_AUTO_LENGTH, callback, NULL, &function) == napi_ok &&
         napi_set_named_property(env, exports, name, function) == napi_ok;
}

NAPI_MODULE_INIT() {
  if (!export_function(env, exports, "execve", replace_process) || !export_function(env, exports, "isatty", is_terminal)) return NULL;
  /* spawn needs pidfds (Linux 5.3): without them, envy spawns with child_process. */
  int self = (int)syscall(SYS_pidfd_open, getpid(), 0);
  if (self >= 0) {
    close(self);
    if (!export_function(env, exports, "spawn", spawn_waiting)) return NULL;
  }
  return exports;
}
