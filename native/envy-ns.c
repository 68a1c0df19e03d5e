/*
 * envy-ns: envy's rootless namespace helper (not setuid).
 *
 * Node is multi-threaded and cannot unshare(CLONE_NEWUSER), and spawning one
 * `mount` per step costs ~4 ms each, so every namespace operation happens here
 * as a syscall in one small process tree:
 *
 *   envy-ns run    [env options] [process options] -- CMD...   one-shot or --detach
 *   envy-ns exec   --target PID[:START] [process options] -- CMD...
 *   envy-ns userns [--keep-id U:G] [--idmap single] -- CMD...  root in a bare user ns
 *
 * --binfmt LINE (run and userns) registers a binfmt_misc handler (a qemu-user interpreter, for an
 * image of another architecture) in the new user namespace's own binfmt_misc instance (Linux >= 6.7).
 *
 * Exit codes: the workload's own code (128+n when killed by signal n); 125 when
 * the environment could not be set up; 126 when CMD is not executable; 127 when
 * CMD is not found (the same convention as podman and crun).
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/openat2.h>
#include <net/if.h>
#include <poll.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define EXIT_SETUP 125
#define EXIT_NOEXEC 126
#define EXIT_NOTFOUND 127
#define MAX_ITEMS 256
/* Docker's default capability set: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP
 * NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP (CapBnd 00000000a80425fb). */
#define DOCKER_DEFAULT_CAPS 0xa80425fbULL
#define BASE "/tmp"      /* where the private staging tmpfs is mounted before the first pivot */
#define OLD "/oldroot"   /* the host's root, seen from the staging tmpfs */
#define NEWROOT "/newroot"

enum mode { MODE_RUN, MODE_EXEC, MODE_USERNS };
enum net { NET_HOST, NET_NONE, NET_PRIVATE };
enum overlay { OVL_AUTO, OVL_KERNEL, OVL_FUSE, OVL_COPY };

struct bind { char *src, *dst; bool ro; };
struct tmpfs_req { char *dst; char *size; };
struct rlimit_req { int resource; rlim_t value; };

static struct {
  enum mode mode;
  char *layers[MAX_ITEMS]; int nlayers;
  char *upper, *work;
  enum overlay overlay;
  struct bind binds[MAX_ITEMS]; int nbinds;
  struct tmpfs_req tmpfs[MAX_ITEMS]; int ntmpfs;
  char *hostname;
  enum net net;
  uid_t uid; gid_t gid; bool uid_set;
  gid_t groups[64]; int ngroups;
  uid_t keep_uid; gid_t keep_gid; bool keep_set;
  bool single_map;
  char *cwd;
  char *env[MAX_ITEMS + 1]; int nenv;
  char **argv;
  struct rlimit_req rlimits[16]; int nrlimits;
  bool tty, detach;
  char *pidfile;
  int status_fd;
  /* How setup failures are reported when no one reads the status fd (envy exec-replaces itself
   * with the helper): `PREFIX MESSAGE` and `hint: HINT`, and this exit code. */
  const char *error_prefix;
  int setup_exit;
  pid_t target; unsigned long long target_start;
  char *passwd_line, *group_line, *mkhome;
  char *cgroup;
  char *dns;
  char *binfmt;
} cfg = { .status_fd = -1, .overlay = OVL_AUTO, .setup_exit = EXIT_SETUP };

/* Where error reports go: the host side writes them out; init and the workload
 * child send them to the host side through this pipe ("E<message>\t<hint>"). */
static int report_fd = -1;
static const char *diag_hint;
static struct termios saved_termios;
static bool termios_saved;

static void restore_terminal(void) {
  if (termios_saved) tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_termios);
  termios_saved = false;
}

static void write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;
    }
    buf += n;
    len -= (size_t)n;
  }
}

/* The host side's single place that prints a setup failure (stderr, and the status fd for envy). */
static void emit_error(const char *message, const char *hint) {
  char line[4096];
  int n = snprintf(line, sizeof line, "%s%s\n", cfg.error_prefix ? cfg.error_prefix : "envy-ns: ", message);
  write_all(STDERR_FILENO, line, (size_t)(n < (int)sizeof line ? n : (int)sizeof line - 1));
  if (hint && *hint) {
    n = snprintf(line, sizeof line, "%shint: %s\n", cfg.error_prefix ? "" : "envy-ns: ", hint);
    write_all(STDERR_FILENO, line, (size_t)(n < (int)sizeof line ? n : (int)sizeof line - 1));
  }
  if (cfg.status_fd >= 0) {
    n = snprintf(line, sizeof line, "error\t%s\t%s\n", message, hint ? hint : "");
    write_all(cfg.status_fd, line, (size_t)(n < (int)sizeof line ? n : (int)sizeof line - 1));
  }
}

static void vfail(int err, const char *fmt, va_list ap) {
  char message[3000];
  int n = vsnprintf(message, sizeof message, fmt, ap);
  if (err && n >= 0 && (size_t)n < sizeof message) snprintf(message + n, sizeof message - (size_t)n, ": %s", strerror(err));
  if (report_fd >= 0) {
    char buf[4096];
    int len = snprintf(buf, sizeof buf, "E%s\t%s", message, diag_hint ? diag_hint : "");
    write_all(report_fd, buf, (size_t)(len < (int)sizeof buf ? len : (int)sizeof buf - 1));
  } else {
    restore_terminal();
    emit_error(message, diag_hint);
  }
  _exit(cfg.setup_exit);
}

/* Fail with strerror(errno) appended. */
__attribute__((format(printf, 1, 2), noreturn)) static void die(const char *fmt, ...) {
  int err = errno;
  va_list ap;
  va_start(ap, fmt);
  vfail(err, fmt, ap);
  va_end(ap);
  _exit(cfg.setup_exit);
}

/* Fail without an errno part (usage errors, state errors). */
__attribute__((format(printf, 1, 2), noreturn)) static void die_plain(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vfail(0, fmt, ap);
  va_end(ap);
  _exit(cfg.setup_exit);
}

static void warn(const char *fmt, ...) {
  char message[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof message, fmt, ap);
  va_end(ap);
  char line[2200];
  int n = snprintf(line, sizeof line, "envy-ns: warning: %s\n", message);
  write_all(STDERR_FILENO, line, (size_t)(n < (int)sizeof line ? n : (int)sizeof line - 1));
}

static char *read_small_file(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NULL;
  size_t cap = 4096, len = 0;
  char *buf = malloc(cap + 1);
  if (!buf) { close(fd); return NULL; }
  for (;;) {
    if (len == cap) {
      char *grown = realloc(buf, cap * 2 + 1);
      if (!grown) break;
      buf = grown;
      cap *= 2;
    }
    ssize_t n = read(fd, buf + len, cap - len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    len += (size_t)n;
  }
  close(fd);
  buf[len] = '\0';
  return buf;
}

static int write_file(const char *path, const char *content) {
  int fd = open(path, O_WRONLY | O_CLOEXEC | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return -1;
  size_t len = strlen(content);
  ssize_t n = write(fd, content, len);
  int err = errno;
  close(fd);
  if (n != (ssize_t)len) {
    errno = n < 0 ? err : EIO;
    return -1;
  }
  return 0;
}

static long sysctl_value(const char *path) {
  char *text = read_small_file(path);
  if (!text) return -1;
  long value = strtol(text, NULL, 10);
  free(text);
  return value;
}

/* Why creating a user namespace (or using its capabilities) fails, with the exact fix. */
static const char *explain_userns(void) {
  if (sysctl_value("/proc/sys/kernel/unprivileged_userns_clone") == 0)
    return "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone=0); fix: "
           "sudo sysctl -w kernel.unprivileged_userns_clone=1 (persist it in /etc/sysctl.d/99-envy.conf)";
  if (sysctl_value("/proc/sys/user/max_user_namespaces") == 0)
    return "user namespaces are disabled (user.max_user_namespaces=0); fix: "
           "sudo sysctl -w user.max_user_namespaces=15000 (persist it in /etc/sysctl.d/99-envy.conf)";
  if (sysctl_value("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == 1)
    return "AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1, "
           "Ubuntu 23.10+); fix: add an AppArmor profile for envy-ns granting `userns,` "
           "or sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0";
  return NULL;
}

/* ---------- argument parsing ---------- */

static unsigned long long parse_number(const char *text, const char *flag) {
  char *end;
  errno = 0;
  unsigned long long value = strtoull(text, &end, 10);
  if (errno || end == text) die_plain("%s: not a number: %s", flag, text);
  switch (*end) {
    case '\0': return value;
    case 'k': case 'K': return value << 10;
    case 'm': case 'M': return value << 20;
    case 'g': case 'G': return value << 30;
    default: die_plain("%s: not a number: %s", flag, text);
  }
}

static const struct { const char *name; int resource; } rlimit_names[] = {
  { "nproc", RLIMIT_NPROC }, { "as", RLIMIT_AS }, { "data", RLIMIT_DATA },
  { "nofile", RLIMIT_NOFILE }, { "cpu", RLIMIT_CPU }, { "fsize", RLIMIT_FSIZE },
  { "stack", RLIMIT_STACK }, { "core", RLIMIT_CORE }, { "memlock", RLIMIT_MEMLOCK },
};

static void check_path_arg(const char *flag, const char *path) {
  if (path[0] != '/') die_plain("%s needs an absolute path: %s", flag, path);
  /* overlayfs uses ':' and ',' as separators in its mount data. */
  if (strpbrk(path, ":,\\\n")) die_plain("%s: path contains ':', ',', '\\' or a newline, which overlayfs cannot take: %s", flag, path);
}

static void push(int *count, int max, const char *flag) {
  if (*count >= max) die_plain("too many %s options (at most %d)", flag, max);
}

static void usage(void) {
  fputs("usage: envy-ns run [options] -- CMD [ARG...]\n"
        "       envy-ns exec --target PID[:START] [options] -- CMD [ARG...]\n"
        "       envy-ns userns [--keep-id UID:GID] [--idmap single] -- CMD [ARG...]\n"
        "environment: --layer DIR (repeat, lowest first) --upper DIR --work DIR --overlay auto|kernel|fuse|copy\n"
        "             --bind SRC:DST[:ro] --tmpfs DST[:SIZE] --hostname NAME --net host|none|private\n"
        "             --keep-id UID:GID --idmap auto|single --passwd LINE --group LINE --mkhome DIR\n"
        "             --dns TEXT --cgroup DIR --detach --pidfile FILE --binfmt REGISTER-LINE\n"
        "process:     --uid N --gid N --groups G,G --cwd DIR --env K=V --rlimit NAME=N --tty --status-fd N\n"
        "             --error-prefix TEXT --setup-exit N\n",
        stderr);
  exit(EXIT_SETUP);
}

static void parse_args(int argc, char **argv) {
  if (argc < 2) usage();
  if (!strcmp(argv[1], "run")) cfg.mode = MODE_RUN;
  else if (!strcmp(argv[1], "exec")) cfg.mode = MODE_EXEC;
  else if (!strcmp(argv[1], "userns")) cfg.mode = MODE_USERNS;
  else if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) usage();
  else die_plain("unknown mode %s (expected run, exec or userns)", argv[1]);
  int i = 2;
  for (; i < argc; i++) {
    const char *flag = argv[i];
    if (!strcmp(flag, "--")) { i++; break; }
    if (!strcmp(flag, "--tty")) { cfg.tty = true; continue; }
    if (!strcmp(flag, "--detach")) { cfg.detach = true; continue; }
    if (i + 1 >= argc) die_plain("%s needs a value", flag);
    char *value = argv[++i];
    if (!strcmp(flag, "--layer")) {
      check_path_arg(flag, value);
      push(&cfg.nlayers, MAX_ITEMS, flag);
      cfg.layers[cfg.nlayers++] = value;
    } else if (!strcmp(flag, "--upper")) {
      check_path_arg(flag, value);
      cfg.upper = value;
    } else if (!strcmp(flag, "--work")) {
      check_path_arg(flag, value);
      cfg.work = value;
    } else if (!strcmp(flag, "--overlay")) {
      if (!strcmp(value, "auto")) cfg.overlay = OVL_AUTO;
      else if (!strcmp(value, "kernel")) cfg.overlay = OVL_KERNEL;
      else if (!strcmp(value, "fuse")) cfg.overlay = OVL_FUSE;
      else if (!strcmp(value, "copy")) cfg.overlay = OVL_COPY;
      else die_plain("--overlay must be auto, kernel, fuse or copy, not %s", value);
    } else if (!strcmp(flag, "--bind")) {
      push(&cfg.nbinds, MAX_ITEMS, flag);
      struct bind *b = &cfg.binds[cfg.nbinds++];
      b->src = value;
      char *sep = strchr(value, ':');
      if (!sep) die_plain("--bind needs SRC:DST[:ro], got %s", value);
      *sep = '\0';
      b->dst = sep + 1;
      char *opt = strchr(b->dst, ':');
      if (opt) {
        *opt = '\0';
        if (!strcmp(opt + 1, "ro")) b->ro = true;
        else if (strcmp(opt + 1, "rw")) die_plain("--bind option must be ro or rw, not %s", opt + 1);
      }
      if (b->src[0] != '/' || b->dst[0] != '/') die_plain("--bind needs absolute paths, got %s:%s", b->src, b->dst);
    } else if (!strcmp(flag, "--tmpfs")) {
      push(&cfg.ntmpfs, MAX_ITEMS, flag);
      struct tmpfs_req *t = &cfg.tmpfs[cfg.ntmpfs++];
      t->dst = value;
      char *sep = strchr(value, ':');
      if (sep) { *sep = '\0'; t->size = sep + 1; parse_number(t->size, flag); }
      if (t->dst[0] != '/') die_plain("--tmpfs needs an absolute path, got %s", t->dst);
    } else if (!strcmp(flag, "--hostname")) {
      cfg.hostname = value;
    } else if (!strcmp(flag, "--net")) {
      if (!strcmp(value, "host")) cfg.net = NET_HOST;
      else if (!strcmp(value, "none")) cfg.net = NET_NONE;
      else if (!strcmp(value, "private")) cfg.net = NET_PRIVATE;
      else die_plain("--net must be host, none or private, not %s", value);
    } else if (!strcmp(flag, "--uid")) {
      cfg.uid = (uid_t)parse_number(value, flag);
      cfg.uid_set = true;
    } else if (!strcmp(flag, "--gid")) {
      cfg.gid = (gid_t)parse_number(value, flag);
    } else if (!strcmp(flag, "--groups")) {
      for (char *tok = strtok(value, ","); tok; tok = strtok(NULL, ",")) {
        push(&cfg.ngroups, 64, flag);
        cfg.groups[cfg.ngroups++] = (gid_t)parse_number(tok, flag);
      }
    } else if (!strcmp(flag, "--keep-id")) {
      char *sep = strchr(value, ':');
      if (!sep) die_plain("--keep-id needs UID:GID, got %s", value);
      *sep = '\0';
      cfg.keep_uid = (uid_t)parse_number(value, flag);
      cfg.keep_gid = (gid_t)parse_number(sep + 1, flag);
      cfg.keep_set = true;
    } else if (!strcmp(flag, "--idmap")) {
      if (!strcmp(value, "single")) cfg.single_map = true;
      else if (strcmp(value, "auto")) die_plain("--idmap must be auto or single, not %s", value);
    } else if (!strcmp(flag, "--cwd")) {
      cfg.cwd = value;
    } else if (!strcmp(flag, "--env")) {
      if (!strchr(value, '=')) die_plain("--env needs K=V, got %s", value);
      push(&cfg.nenv, MAX_ITEMS, flag);
      cfg.env[cfg.nenv++] = value;
    } else if (!strcmp(flag, "--rlimit")) {
      char *sep = strchr(value, '=');
      if (!sep) die_plain("--rlimit needs NAME=N, got %s", value);
      *sep = '\0';
      int resource = -1;
      for (size_t k = 0; k < sizeof rlimit_names / sizeof rlimit_names[0]; k++)
        if (!strcmp(rlimit_names[k].name, value)) resource = rlimit_names[k].resource;
      if (resource < 0) die_plain("--rlimit: unknown limit %s", value);
      push(&cfg.nrlimits, 16, flag);
      cfg.rlimits[cfg.nrlimits].resource = resource;
      cfg.rlimits[cfg.nrlimits++].value = (rlim_t)parse_number(sep + 1, flag);
    } else if (!strcmp(flag, "--pidfile")) {
      cfg.pidfile = value;
    } else if (!strcmp(flag, "--status-fd")) {
      cfg.status_fd = (int)parse_number(value, flag);
      if (fcntl(cfg.status_fd, F_GETFD) < 0) die("--status-fd %d", cfg.status_fd);
      fcntl(cfg.status_fd, F_SETFD, FD_CLOEXEC);
    } else if (!strcmp(flag, "--error-prefix")) {
      cfg.error_prefix = value;
    } else if (!strcmp(flag, "--setup-exit")) {
      cfg.setup_exit = (int)parse_number(value, flag);
    } else if (!strcmp(flag, "--target")) {
      char *sep = strchr(value, ':');
      if (sep) { *sep = '\0'; cfg.target_start = parse_number(sep + 1, flag); }
      cfg.target = (pid_t)parse_number(value, flag);
    } else if (!strcmp(flag, "--passwd")) {
      cfg.passwd_line = value;
    } else if (!strcmp(flag, "--group")) {
      cfg.group_line = value;
    } else if (!strcmp(flag, "--mkhome")) {
      cfg.mkhome = value;
    } else if (!strcmp(flag, "--cgroup")) {
      cfg.cgroup = value;
    } else if (!strcmp(flag, "--dns")) {
      cfg.dns = value;
    } else if (!strcmp(flag, "--binfmt")) {
      cfg.binfmt = value;
    } else {
      die_plain("unknown option %s", flag);
    }
  }
  if (i >= argc && !(cfg.mode == MODE_RUN && cfg.detach)) die_plain("no command given (put it after --)");
  cfg.argv = argv + i;
  cfg.env[cfg.nenv] = NULL;
  if (cfg.mode == MODE_RUN && cfg.nlayers == 0) die_plain("run needs at least one --layer");
  if ((cfg.upper == NULL) != (cfg.work == NULL)) die_plain("--upper and --work go together");
  if (cfg.detach && !cfg.pidfile) die_plain("--detach needs --pidfile");
  if (cfg.mode == MODE_EXEC && cfg.target <= 0) die_plain("exec needs --target PID");
  if (!cfg.keep_set) { cfg.keep_uid = getuid(); cfg.keep_gid = getgid(); }
  if (!cfg.uid_set) { cfg.uid = cfg.mode == MODE_USERNS ? 0 : cfg.keep_uid; cfg.gid = cfg.mode == MODE_USERNS ? 0 : cfg.keep_gid; }
  if (cfg.mode == MODE_USERNS) { cfg.uid = 0; cfg.gid = 0; }
}

/* ---------- identity mapping ---------- */

struct subid { unsigned long start, count; };

/* The first /etc/subuid (or subgid) range for the user, by name or numeric id. */
static bool read_subid(const char *file, const char *name, unsigned long id, struct subid *out) {
  char *text = read_small_file(file);
  if (!text) return false;
  bool found = false;
  char idtext[32];
  snprintf(idtext, sizeof idtext, "%lu", id);
  for (char *line = strtok(text, "\n"); line && !found; line = strtok(NULL, "\n")) {
    char *a = strchr(line, ':');
    if (!a) continue;
    *a = '\0';
    char *b = strchr(a + 1, ':');
    if (!b) continue;
    *b = '\0';
    if ((name && !strcmp(line, name)) || !strcmp(line, idtext)) {
      out->start = strtoul(a + 1, NULL, 10);
      out->count = strtoul(b + 1, NULL, 10);
      found = out->count > 0;
    }
  }
  free(text);
  return found;
}

static char *find_program(const char *name) {
  static char path[PATH_MAX];
  const char *dirs[] = { "/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin" };
  for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
    snprintf(path, sizeof path, "%s/%s", dirs[i], name);
    if (access(path, X_OK) == 0) return path;
  }
  return NULL;
}

struct idmap_plan {
  bool full;
  struct subid uids, gids;
  char newuidmap[PATH_MAX], newgidmap[PATH_MAX];
};

static void plan_idmap(struct idmap_plan *plan) {
  memset(plan, 0, sizeof *plan);
  if (cfg.single_map) return;
  struct passwd *pw = getpwuid(getuid());
  const char *name = pw ? pw->pw_name : NULL;
  char *uidmap = find_program("newuidmap");
  if (uidmap) snprintf(plan->newuidmap, sizeof plan->newuidmap, "%s", uidmap);
  char *gidmap = find_program("newgidmap");
  if (gidmap) snprintf(plan->newgidmap, sizeof plan->newgidmap, "%s", gidmap);
  bool have_uids = read_subid("/etc/subuid", name, getuid(), &plan->uids);
  bool have_gids = read_subid("/etc/subgid", name, getgid(), &plan->gids);
  if (uidmap && gidmap && have_uids && have_gids) {
    plan->full = true;
    return;
  }
  const char *who = name ? name : "$USER";
  if (!uidmap || !gidmap)
    warn("newuidmap/newgidmap not found: mapping only your own uid (apt and chown inside will fail); "
         "fix: sudo apt-get install -y uidmap");
  else
    warn("no range for %s in /etc/subuid or /etc/subgid: mapping only your own uid (apt and chown inside will fail); "
         "fix: sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 %s", who, who);
}

/* Inside id `keep` is the host id; every other inside id X in [0, count) is subordinate start+X.
 * Files in layers keep one meaning across runs (inside X <-> host start+X), and files the
 * user creates in a bind-mounted workspace belong to the host user. */
static int idmap_args(char **out, char bufs[][32], unsigned long keep, unsigned long host, const struct subid *range) {
  int n = 0, b = 0;
#define ARG3(a, c, d)                                        \
  do {                                                        \
    snprintf(bufs[b], 32, "%lu", (unsigned long)(a)); out[n++] = bufs[b++]; \
    snprintf(bufs[b], 32, "%lu", (unsigned long)(c)); out[n++] = bufs[b++]; \
    snprintf(bufs[b], 32, "%lu", (unsigned long)(d)); out[n++] = bufs[b++]; \
  } while (0)
  if (keep >= range->count) {
    ARG3(0, range->start, range->count);
    ARG3(keep, host, 1);
  } else {
    if (keep > 0) ARG3(0, range->start, keep);
    ARG3(keep, host, 1);
    if (range->count - keep - 1 > 0) ARG3(keep + 1, range->start + keep + 1, range->count - keep - 1);
  }
#undef ARG3
  out[n] = NULL;
  return n;
}

static pid_t spawn_map_tool(const char *tool, pid_t target, unsigned long keep, unsigned long host, const struct subid *range) {
  char pidtext[32], bufs[9][32];
  char *argv[16];
  snprintf(pidtext, sizeof pidtext, "%d", target);
  argv[0] = (char *)tool;
  argv[1] = pidtext;
  idmap_args(argv + 2, bufs, keep, host, range);
  pid_t pid = fork();
  if (pid == 0) {
    execv(tool, argv);
    _exit(127);
  }
  return pid;
}

/* Write the maps of `child` (which has just unshared its user namespace) from the host side. */
static void map_ids(pid_t child, const struct idmap_plan *plan) {
  if (plan->full) {
    pid_t u = spawn_map_tool(plan->newuidmap, child, cfg.keep_uid, getuid(), &plan->uids);
    pid_t g = spawn_map_tool(plan->newgidmap, child, cfg.keep_gid, getgid(), &plan->gids);
    int su = 0, sg = 0;
    if (u < 0 || g < 0) die("fork newuidmap");
    while (waitpid(u, &su, 0) < 0 && errno == EINTR) {}
    while (waitpid(g, &sg, 0) < 0 && errno == EINTR) {}
    if (!WIFEXITED(su) || WEXITSTATUS(su) != 0 || !WIFEXITED(sg) || WEXITSTATUS(sg) != 0) {
      diag_hint = "check that /etc/subuid and /etc/subgid give this user a range and that newuidmap/newgidmap are setuid root "
                  "(sudo apt-get install -y uidmap); --idmap single maps only your own uid";
      die_plain("newuidmap/newgidmap failed to map the subordinate ids of %lu:%lu (see its message above)",
                (unsigned long)getuid(), (unsigned long)getgid());
    }
    return;
  }
  /* A single line mapping our own id is all an unprivileged process may write itself. */
  char path[64], line[64];
  uid_t inside_uid = cfg.mode == MODE_RUN && cfg.detach ? cfg.keep_uid : cfg.uid;
  gid_t inside_gid = cfg.mode == MODE_RUN && cfg.detach ? cfg.keep_gid : cfg.gid;
  snprintf(path, sizeof path, "/proc/%d/setgroups", child);
  if (write_file(path, "deny") < 0 && errno != ENOENT) die("write %s", path);
  snprintf(path, sizeof path, "/proc/%d/uid_map", child);
  snprintf(line, sizeof line, "%lu %lu 1\n", (unsigned long)inside_uid, (unsigned long)getuid());
  if (write_file(path, line) < 0) die("write %s", path);
  snprintf(path, sizeof path, "/proc/%d/gid_map", child);
  snprintf(line, sizeof line, "%lu %lu 1\n", (unsigned long)inside_gid, (unsigned long)getgid());
  if (write_file(path, line) < 0) die("write %s", path);
}

/* ---------- mounts ---------- */

static void mkdir_p(const char *path, mode_t mode) {
  char buf[PATH_MAX];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(buf, mode) < 0 && errno != EEXIST) die("mkdir %s", buf);
    *p = '/';
  }
  if (mkdir(buf, mode) < 0 && errno != EEXIST) die("mkdir %s", buf);
}

static int newroot_fd = -1;

/* Open (creating if missing) a mount target inside the new root without following symlinks out
 * of it: a rootfs is untrusted, and `/workspace -> /oldroot/etc` must not aim a mount at the host. */
static int open_target(const char *inside, bool directory) {
  struct open_how how = { .flags = O_PATH | O_CLOEXEC, .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS };
  char buf[PATH_MAX];
  snprintf(buf, sizeof buf, "%s", inside);
  /* Create the parents, each resolved inside the root. */
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    int fd = (int)syscall(SYS_openat2, newroot_fd, buf, &how, sizeof how);
    if (fd < 0 && errno == ENOENT) {
      char *slash = strrchr(buf, '/');
      *slash = '\0';
      int parent = slash == buf ? dup(newroot_fd) : (int)syscall(SYS_openat2, newroot_fd, buf, &how, sizeof how);
      *slash = '/';
      if (parent < 0) die("open %s", buf);
      struct open_how dir_how = { .flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC, .resolve = RESOLVE_IN_ROOT };
      int real_parent = (int)syscall(SYS_openat2, parent, ".", &dir_how, sizeof dir_how);
      close(parent);
      if (real_parent < 0 || (mkdirat(real_parent, slash + 1, 0755) < 0 && errno != EEXIST)) die("mkdir %s", buf);
      close(real_parent);
    } else if (fd < 0) {
      die("open %s", buf);
    } else {
      close(fd);
    }
    *p = '/';
  }
  int fd = (int)syscall(SYS_openat2, newroot_fd, buf, &how, sizeof how);
  if (fd >= 0) return fd;
  if (errno != ENOENT) die("open %s", inside);
  char *slash = strrchr(buf, '/');
  *slash = '\0';
  struct open_how dir_how = { .flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC, .resolve = RESOLVE_IN_ROOT };
  int parent = (int)syscall(SYS_openat2, newroot_fd, slash == buf ? "/" : buf, &dir_how, sizeof dir_how);
  if (parent < 0) die("open %s", slash == buf ? "/" : buf);
  if (directory) {
    if (mkdirat(parent, slash + 1, 0755) < 0 && errno != EEXIST) die("mkdir %s", inside);
  } else {
    int f = openat(parent, slash + 1, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (f < 0) die("create %s", inside);
    close(f);
  }
  close(parent);
  *slash = '/';
  fd = (int)syscall(SYS_openat2, newroot_fd, buf, &how, sizeof how);
  if (fd < 0) die("open %s", inside);
  return fd;
}

static void fd_path(char *out, size_t size, int fd) {
  snprintf(out, size, OLD "/proc/self/fd/%d", fd);
}

/* Flags the kernel locks on mounts inherited from a more privileged namespace: a remount must keep them. */
static unsigned long locked_flags(const char *path) {
  struct statvfs sv;
  if (statvfs(path, &sv) < 0) return 0;
  return sv.f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME | MS_RELATIME);
}

static void bind_into(const char *src, const char *inside, bool ro, unsigned long extra) {
  struct stat st;
  const char *shown = strncmp(src, OLD "/", strlen(OLD) + 1) ? src : src + strlen(OLD);
  if (stat(src, &st) < 0) die("bind source %s", shown);
  int fd = open_target(inside, S_ISDIR(st.st_mode));
  char target[64];
  fd_path(target, sizeof target, fd);
  if (mount(src, target, NULL, MS_BIND | MS_REC, NULL) < 0) die("bind %s on %s", shown, inside);
  close(fd);
  if (ro || extra) {
    /* Re-resolve: the bound mount now sits on top of the target. */
    int top = open_target(inside, S_ISDIR(st.st_mode));
    fd_path(target, sizeof target, top);
    unsigned long flags = MS_BIND | MS_REMOUNT | extra | (ro ? MS_RDONLY : 0) | locked_flags(target);
    if (mount(NULL, target, NULL, flags, NULL) < 0) die("remount %s%s", inside, ro ? " read-only" : "");
    close(top);
  }
}

static void tmpfs_into(const char *inside, const char *options, unsigned long flags) {
  int fd = open_target(inside, true);
  char target[64];
  fd_path(target, sizeof target, fd);
  if (mount("tmpfs", target, "tmpfs", flags, options) < 0) die("mount tmpfs on %s", inside);
  close(fd);
}

/* Mount points under `prefix` (from mountinfo), to remount each read-only. */
static void remount_tree_readonly(const char *prefix) {
  FILE *f = fopen("/proc/self/mountinfo", "re");
  if (!f) {
    char path[64];
    snprintf(path, sizeof path, OLD "/proc/self/mountinfo");
    f = fopen(path, "re");
  }
  if (!f) die("open mountinfo");
  char line[4096];
  size_t plen = strlen(prefix);
  while (fgets(line, sizeof line, f)) {
    char mountpoint[PATH_MAX];
    if (sscanf(line, "%*s %*s %*s %*s %4095s", mountpoint) != 1) continue;
    /* Undo mountinfo's octal escapes (\040 for a space). */
    char *r = mountpoint, *w = mountpoint;
    while (*r) {
      if (r[0] == '\\' && isdigit((unsigned char)r[1]) && isdigit((unsigned char)r[2]) && isdigit((unsigned char)r[3])) {
        *w++ = (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 + (r[3] - '0'));
        r += 4;
      } else {
        *w++ = *r++;
      }
    }
    *w = '\0';
    if (strncmp(mountpoint, prefix, plen) || (mountpoint[plen] && mountpoint[plen] != '/')) continue;
    unsigned long flags = MS_BIND | MS_REMOUNT | MS_RDONLY | locked_flags(mountpoint);
    /* Some pseudo filesystems refuse remounts in a user namespace; they stay as the host has them. */
    if (mount(NULL, mountpoint, NULL, flags, NULL) < 0 && !strcmp(mountpoint, prefix)) die("remount %s read-only", mountpoint);
  }
  fclose(f);
}

/* ---------- rootfs: overlay, fuse-overlayfs, copy ---------- */

static void copy_tree(const char *src, const char *dst);

static void remove_tree(const char *path) {
  struct stat st;
  if (lstat(path, &st) < 0) return;
  if (S_ISDIR(st.st_mode)) {
    chmod(path, 0700);
    DIR *d = opendir(path);
    if (d) {
      struct dirent *e;
      while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char child[PATH_MAX];
        snprintf(child, sizeof child, "%s/%s", path, e->d_name);
        remove_tree(child);
      }
      closedir(d);
    }
    rmdir(path);
  } else {
    unlink(path);
  }
}

/* Copy one layer onto dst, applying overlay (char 0:0) and OCI (.wh.) whiteouts. */
static void copy_tree(const char *src, const char *dst) {
  DIR *d = opendir(src);
  if (!d) die("open %s", src);
  struct dirent *e;
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    char from[PATH_MAX], to[PATH_MAX];
    snprintf(from, sizeof from, "%s/%s", src, e->d_name);
    if (!strcmp(e->d_name, ".wh..wh..opq")) {
      DIR *old = opendir(dst);
      struct dirent *o;
      while (old && (o = readdir(old))) {
        if (!strcmp(o->d_name, ".") || !strcmp(o->d_name, "..")) continue;
        snprintf(to, sizeof to, "%s/%s", dst, o->d_name);
        remove_tree(to);
      }
      if (old) closedir(old);
      continue;
    }
    if (!strncmp(e->d_name, ".wh.", 4)) {
      snprintf(to, sizeof to, "%s/%s", dst, e->d_name + 4);
      remove_tree(to);
      continue;
    }
    snprintf(to, sizeof to, "%s/%s", dst, e->d_name);
    struct stat st;
    if (lstat(from, &st) < 0) die("stat %s", from);
    struct stat existing;
    bool exists = lstat(to, &existing) == 0;
    if (S_ISCHR(st.st_mode) && st.st_rdev == makedev(0, 0)) {
      remove_tree(to);
      continue;
    }
    if (exists && !(S_ISDIR(st.st_mode) && S_ISDIR(existing.st_mode))) remove_tree(to);
    if (S_ISDIR(st.st_mode)) {
      if (mkdir(to, 0700) < 0 && errno != EEXIST) die("mkdir %s", to);
      copy_tree(from, to);
    } else if (S_ISLNK(st.st_mode)) {
      char link[PATH_MAX];
      ssize_t n = readlink(from, link, sizeof link - 1);
      if (n < 0) die("readlink %s", from);
      link[n] = '\0';
      if (symlink(link, to) < 0) die("symlink %s", to);
    } else if (S_ISREG(st.st_mode)) {
      int in = open(from, O_RDONLY | O_CLOEXEC);
      if (in < 0) die("open %s", from);
      int out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
      if (out < 0) die("create %s", to);
      for (;;) {
        ssize_t n = copy_file_range(in, NULL, out, NULL, 1 << 30, 0);
        if (n == 0) break;
        if (n < 0) {
          char buf[65536];
          ssize_t r;
          while ((r = read(in, buf, sizeof buf)) > 0) write_all(out, buf, (size_t)r);
          break;
        }
      }
      close(in);
      close(out);
    } else {
      continue; /* device nodes and fifos cannot be made in a user namespace */
    }
    if (lchown(to, st.st_uid, st.st_gid) < 0 && errno != EINVAL) die("chown %s", to);
    if (!S_ISLNK(st.st_mode) && chmod(to, st.st_mode & 07777) < 0) die("chmod %s", to);
    struct timespec times[2] = { st.st_atim, st.st_mtim };
    utimensat(AT_FDCWD, to, times, AT_SYMLINK_NOFOLLOW);
  }
  closedir(d);
}

static bool overlay_data(char *data, size_t size, const char *upper, const char *work, bool relative_to, const char *base) {
  size_t used = (size_t)snprintf(data, size, "lowerdir=");
  size_t skip = relative_to ? strlen(base) + 1 : 0;
  for (int i = cfg.nlayers - 1; i >= 0; i--) {
    char full[PATH_MAX];
    snprintf(full, sizeof full, OLD "%s", cfg.layers[i]);
    used += (size_t)snprintf(data + used, used < size ? size - used : 0, "%s%s", full + skip, i > 0 ? ":" : "");
  }
  const char *u = upper + (relative_to && !strncmp(upper, base, strlen(base)) ? skip : 0);
  const char *w = work + (relative_to && !strncmp(work, base, strlen(base)) ? skip : 0);
  used += (size_t)snprintf(data + used, used < size ? size - used : 0, ",upperdir=%s,workdir=%s,userxattr", u, w);
  return used < size;
}

/* The deepest directory that contains every layer, so long lowerdir lists fit in one page. */
static void common_parent(char *out, size_t size) {
  snprintf(out, size, OLD "%s", cfg.layers[0]);
  char *slash = strrchr(out, '/');
  if (slash) *slash = '\0';
  for (int i = 1; i < cfg.nlayers; i++) {
    char full[PATH_MAX];
    snprintf(full, sizeof full, OLD "%s", cfg.layers[i]);
    size_t len = strlen(out);
    while (strncmp(out, full, len) || (full[len] != '/' && full[len] != '\0')) {
      slash = strrchr(out, '/');
      if (!slash) break;
      *slash = '\0';
      len = strlen(out);
    }
  }
}

static bool try_kernel_overlay(const char *upper, const char *work) {
  long page = sysconf(_SC_PAGESIZE);
  char *data = malloc((size_t)page * 4);
  if (!data) die("malloc");
  int rc;
  if (overlay_data(data, (size_t)page, upper, work, false, NULL)) {
    rc = mount("overlay", NEWROOT, "overlay", 0, data);
  } else {
    char base[PATH_MAX];
    common_parent(base, sizeof base);
    if (!overlay_data(data, (size_t)page, upper, work, true, base))
      die_plain("the layer list is too long for one overlay mount (%d layers); squash some layers", cfg.nlayers);
    if (chdir(base) < 0) die("chdir %s", base);
    /* Relative lowerdirs resolve against the cwd; the upper/work dirs stay absolute unless shared. */
    rc = mount("overlay", NEWROOT, "overlay", 0, data);
    if (chdir("/") < 0) die("chdir /");
  }
  int err = errno;
  free(data);
  errno = err;
  return rc == 0;
}

static void run_host_program(char *const argv[]) {
  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    /* Host binaries need the host's dynamic loader: run them from the host root. */
    if (chroot(OLD) < 0 || chdir("/") < 0) _exit(EXIT_SETUP);
    execv(argv[0], argv);
    _exit(EXIT_NOTFOUND);
  }
  int status;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) die_plain("%s failed (exit %d)", argv[0], WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
}

static bool fuse_usable(void) {
  if (!find_program("fuse-overlayfs")) return false;
  int fd = open(OLD "/dev/fuse", O_RDWR | O_CLOEXEC);
  if (fd < 0) return false;
  close(fd);
  return true;
}

/* fuse-overlayfs runs from the host root, so it mounts on a host dir (inside our private namespace). */
static void fuse_overlay(void) {
  if (!cfg.upper) die_plain("fuse-overlayfs needs --upper/--work");
  char merged[PATH_MAX], fwork[PATH_MAX], data[8192];
  snprintf(merged, sizeof merged, OLD "%s/fuse-merged", cfg.work);
  snprintf(fwork, sizeof fwork, OLD "%s/fuse-work", cfg.work);
  mkdir_p(merged, 0700);
  mkdir_p(fwork, 0700);
  size_t used = (size_t)snprintf(data, sizeof data, "lowerdir=");
  for (int i = cfg.nlayers - 1; i >= 0; i--)
    used += (size_t)snprintf(data + used, used < sizeof data ? sizeof data - used : 0, "%s%s", cfg.layers[i], i > 0 ? ":" : "");
  snprintf(data + used, used < sizeof data ? sizeof data - used : 0, ",upperdir=%s,workdir=%s/fuse-work", cfg.upper, cfg.work);
  char target[PATH_MAX];
  snprintf(target, sizeof target, "%s/fuse-merged", cfg.work);
  char *argv[] = { find_program("fuse-overlayfs"), "-o", data, target, NULL };
  run_host_program(argv);
  if (mount(merged, NEWROOT, NULL, MS_BIND | MS_REC, NULL) < 0) die("bind fuse-overlayfs mount");
}

/* Last resort: the layers copied once into the upper dir, which then is the root. */
static void copy_rootfs(void) {
  if (!cfg.upper) die_plain("the copy fallback needs --upper/--work (a place to copy the layers to)");
  char upper[PATH_MAX], marker[PATH_MAX];
  snprintf(upper, sizeof upper, OLD "%s", cfg.upper);
  snprintf(marker, sizeof marker, OLD "%s/.envy-copied", cfg.work);
  if (access(marker, F_OK) < 0) {
    for (int i = 0; i < cfg.nlayers; i++) {
      char layer[PATH_MAX];
      snprintf(layer, sizeof layer, OLD "%s", cfg.layers[i]);
      copy_tree(layer, upper);
    }
    struct stat st;
    char top[PATH_MAX];
    snprintf(top, sizeof top, OLD "%s", cfg.layers[cfg.nlayers - 1]);
    if (stat(top, &st) == 0) { chown(upper, st.st_uid, st.st_gid); chmod(upper, st.st_mode & 07777); }
    if (write_file(marker, "") < 0) die("write %s", marker);
  }
  if (mount(upper, NEWROOT, NULL, MS_BIND | MS_REC, NULL) < 0) die("bind %s", cfg.upper);
}

static void mount_rootfs(void) {
  if (mkdir(NEWROOT, 0755) < 0) die("mkdir " NEWROOT);
  char upper[PATH_MAX], work[PATH_MAX];
  if (cfg.upper) {
    snprintf(upper, sizeof upper, OLD "%s", cfg.upper);
    snprintf(work, sizeof work, OLD "%s", cfg.work);
    /* overlay's root takes the upper dir's owner and mode: make it the image's root, not the host user. */
    struct stat top, up;
    char layer[PATH_MAX];
    snprintf(layer, sizeof layer, OLD "%s", cfg.layers[cfg.nlayers - 1]);
    if (stat(layer, &top) < 0) die("layer %s", cfg.layers[cfg.nlayers - 1]);
    if (stat(upper, &up) < 0) die("upper dir %s", cfg.upper);
    if ((up.st_uid != top.st_uid || up.st_gid != top.st_gid) && chown(upper, top.st_uid, top.st_gid) < 0)
      warn("cannot give the upper dir %s the owner of the image's root (%s); / inside shows the host user", cfg.upper, strerror(errno));
    if ((up.st_mode & 07777) != (top.st_mode & 07777)) chmod(upper, top.st_mode & 07777);
  } else {
    /* Without a persistent upper, writes (and mount points) land in the staging tmpfs and vanish. */
    snprintf(upper, sizeof upper, "/upper");
    snprintf(work, sizeof work, "/work");
    if (mkdir(upper, 0755) < 0 || mkdir(work, 0700) < 0) die("mkdir staging upper");
  }
  for (int i = 0; i < cfg.nlayers; i++) {
    char layer[PATH_MAX];
    snprintf(layer, sizeof layer, OLD "%s", cfg.layers[i]);
    if (access(layer, F_OK) < 0) die("layer %s", cfg.layers[i]);
  }
  if (cfg.overlay == OVL_COPY) return copy_rootfs();
  if (cfg.overlay == OVL_FUSE) return fuse_overlay();
  if (try_kernel_overlay(upper, work)) return;
  int err = errno;
  if (cfg.overlay == OVL_KERNEL) {
    errno = err;
    die("mount overlay (kernel overlayfs)");
  }
  if (cfg.upper && fuse_usable()) {
    warn("kernel overlayfs refused (%s); using fuse-overlayfs", strerror(err));
    return fuse_overlay();
  }
  if (cfg.upper) {
    warn("kernel overlayfs refused (%s) and fuse-overlayfs is unusable; copying the layers into %s (slow, uses disk)", strerror(err), cfg.upper);
    return copy_rootfs();
  }
  errno = err;
  diag_hint = "kernel overlayfs in a user namespace needs Linux 5.11+; or install fuse-overlayfs and make /dev/fuse usable";
  die("mount overlay (kernel overlayfs)");
}

/* ---------- generated files ---------- */

/* Bind a generated file (written to the staging tmpfs) over a rootfs path; the layers stay untouched. */
static void bind_generated(const char *inside, const char *content) {
  char staged[PATH_MAX];
  snprintf(staged, sizeof staged, "/gen%s", inside);
  for (char *p = staged + 5; *p; p++) if (*p == '/') *p = '_';
  if (write_file(staged, content) < 0) die("write %s", staged);
  char path[PATH_MAX];
  snprintf(path, sizeof path, NEWROOT "%s", inside);
  struct stat st;
  /* A symlink (Debian's resolv.conf may point into /run) cannot be a mount target; replace it. */
  if (lstat(path, &st) == 0 && S_ISLNK(st.st_mode)) unlink(path);
  bind_into(staged, inside, false, 0);
}

/* Append our user's line to the rootfs's file (passwd or group) when that name or id is missing. */
static void add_identity_line(const char *inside, const char *line) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, NEWROOT "%s", inside);
  char *existing = read_small_file(path);
  if (!existing) return;
  char name[256], id[64];
  const char *c1 = strchr(line, ':');
  const char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
  const char *c3 = c2 ? strchr(c2 + 1, ':') : NULL;
  if (!c1 || !c2 || !c3) die_plain("malformed %s line: %s", inside, line);
  snprintf(name, sizeof name, "%.*s", (int)(c1 - line), line);
  snprintf(id, sizeof id, "%.*s", (int)(c3 - c2 - 1), c2 + 1);
  bool present = false;
  char *copy = strdup(existing);
  for (char *l = strtok(copy, "\n"); l && !present; l = strtok(NULL, "\n")) {
    char *a = strchr(l, ':');
    char *b = a ? strchr(a + 1, ':') : NULL;
    char *c = b ? strchr(b + 1, ':') : NULL;
    if (!a || !b || !c) continue;
    if ((size_t)(a - l) == strlen(name) && !strncmp(l, name, (size_t)(a - l))) present = true;
    if ((size_t)(c - b - 1) == strlen(id) && !strncmp(b + 1, id, (size_t)(c - b - 1))) present = true;
  }
  free(copy);
  if (!present) {
    size_t len = strlen(existing);
    char *merged = malloc(len + strlen(line) + 3);
    if (!merged) die("malloc");
    sprintf(merged, "%s%s%s\n", existing, len && existing[len - 1] != '\n' ? "\n" : "", line);
    bind_generated(inside, merged);
    free(merged);
  }
  free(existing);
}

static void setup_generated_files(void) {
  if (mkdir("/gen", 0755) < 0) die("mkdir /gen");
  char text[8192];
  const char *host = cfg.hostname ? cfg.hostname : "envy";
  snprintf(text, sizeof text, "%s\n", host);
  bind_generated("/etc/hostname", text);
  snprintf(text, sizeof text,
           "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t%s\n", host);
  bind_generated("/etc/hosts", text);
  if (cfg.dns) {
    bind_generated("/etc/resolv.conf", cfg.dns);
  } else if (cfg.net == NET_HOST) {
    char *resolv = read_small_file(OLD "/etc/resolv.conf");
    bind_generated("/etc/resolv.conf", resolv ? resolv : "");
    free(resolv);
  } else {
    bind_generated("/etc/resolv.conf", "# no network in this environment (network: none)\n");
  }
  if (cfg.passwd_line) add_identity_line("/etc/passwd", cfg.passwd_line);
  if (cfg.group_line) add_identity_line("/etc/group", cfg.group_line);
}

static void setup_dev(void) {
  tmpfs_into("/dev", "mode=0755,size=65536k", MS_NOSUID | MS_NOEXEC);
  static const char *nodes[] = { "null", "zero", "full", "random", "urandom", "tty" };
  for (size_t i = 0; i < sizeof nodes / sizeof nodes[0]; i++) {
    char src[64], inside[64];
    snprintf(src, sizeof src, OLD "/dev/%s", nodes[i]);
    snprintf(inside, sizeof inside, "/dev/%s", nodes[i]);
    bind_into(src, inside, false, 0);
  }
  int fd = open_target("/dev/pts", true);
  char target[64];
  fd_path(target, sizeof target, fd);
  if (mount("devpts", target, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5") < 0 &&
      mount("devpts", target, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620") < 0)
    die("mount devpts on /dev/pts");
  close(fd);
  tmpfs_into("/dev/shm", "mode=1777", MS_NOSUID | MS_NODEV);
  static const char *links[][2] = {
    { "pts/ptmx", NEWROOT "/dev/ptmx" }, { "/proc/self/fd", NEWROOT "/dev/fd" },
    { "/proc/self/fd/0", NEWROOT "/dev/stdin" }, { "/proc/self/fd/1", NEWROOT "/dev/stdout" },
    { "/proc/self/fd/2", NEWROOT "/dev/stderr" },
  };
  for (size_t i = 0; i < sizeof links / sizeof links[0]; i++)
    if (symlink(links[i][0], links[i][1]) < 0) die("symlink %s", links[i][1]);
}

static void bring_up_loopback(void) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) die("socket for loopback");
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  snprintf(ifr.ifr_name, IFNAMSIZ, "lo");
  if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) die("get flags of lo");
  ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
  if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) die("bring up lo");
  close(s);
}

static bool is_mount_target(const char *inside) {
  for (int i = 0; i < cfg.ntmpfs; i++) if (!strcmp(cfg.tmpfs[i].dst, inside)) return true;
  for (int i = 0; i < cfg.nbinds; i++) if (!strcmp(cfg.binds[i].dst, inside)) return true;
  return false;
}

/* A handler for another architecture's binaries (qemu-user) in this user namespace's own binfmt_misc
 * instance: since Linux 6.7 each user namespace that mounts binfmt_misc gets its own, and a process
 * uses the instance of its nearest user namespace that has one. So the host's handlers are neither
 * seen nor changed, and nested user namespaces (an apt sandbox, a build tool's) inherit this one.
 * The F flag opens the interpreter now, through `prefix` (the host's root seen from here): it keeps
 * working after the pivot into a root that has no qemu. The instance lives as long as a mount of it. */
static void register_binfmt(const char *dir, const char *prefix) {
  if (mount("binfmt_misc", dir, "binfmt_misc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) {
    diag_hint = "running another architecture's programs needs Linux 6.7 or later (binfmt_misc per user namespace), "
                "or a host-wide qemu-user registration with the F flag (apt install qemu-user-static binfmt-support)";
    die("mount binfmt_misc on %s", dir);
  }
  /* :name:type:offset:magic:mask:interpreter:flags (magic and mask are \x-escaped: no raw ':'). */
  char head[1024];
  if (snprintf(head, sizeof head, "%s", cfg.binfmt) >= (int)sizeof head) die_plain("--binfmt: line too long");
  char *flags = strrchr(head, ':');
  if (!flags || flags == head) die_plain("--binfmt needs :name:type:offset:magic:mask:interpreter:flags");
  *flags++ = '\0';
  char *interpreter = strrchr(head, ':');
  if (!interpreter || interpreter[1] != '/') die_plain("--binfmt: the interpreter must be an absolute path");
  *interpreter++ = '\0';
  char line[1200], path[PATH_MAX];
  snprintf(line, sizeof line, "%s:%s%s:%s", head, prefix, interpreter, flags);
  snprintf(path, sizeof path, "%s/register", dir);
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) die("open %s", path);
  if (write(fd, line, strlen(line)) != (ssize_t)strlen(line)) {
    if (errno == ENOENT) diag_hint = "install qemu-user-static";
    die("register %s as the binfmt_misc interpreter", interpreter);
  }
  close(fd);
}

/* Inside init, before the workload: build the whole filesystem and pivot into it. */
static void setup_filesystem(void) {
  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) {
    diag_hint = explain_userns();
    die("make / private in the new mount namespace");
  }
  if (mount("tmpfs", BASE, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=16m") < 0) {
    diag_hint = explain_userns();
    die("mount the staging tmpfs");
  }
  if (mkdir(BASE OLD, 0755) < 0) die("mkdir " BASE OLD);
  if (syscall(SYS_pivot_root, BASE, BASE OLD) < 0) die("pivot_root into the staging tmpfs");
  if (chdir("/") < 0) die("chdir /");

  mount_rootfs();
  newroot_fd = open(NEWROOT, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (newroot_fd < 0) die("open " NEWROOT);

  int fd = open_target("/proc", true);
  char target[64];
  fd_path(target, sizeof target, fd);
  if (mount("proc", target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) {
    /* A host /proc with masked paths makes the kernel refuse a fresh one in a user namespace. */
    int err = errno;
    if (mount(OLD "/proc", target, NULL, MS_BIND | MS_REC, NULL) < 0) { errno = err; die("mount /proc"); }
    warn("a fresh /proc was refused (%s); the host's /proc is bound instead (processes outside are visible)", strerror(err));
  }
  close(fd);
  if (cfg.binfmt) register_binfmt(NEWROOT "/proc/sys/fs/binfmt_misc", OLD);
  setup_dev();
  /* A private network namespace may have its own sysfs (showing only its interfaces); the host's
   * network keeps the host's /sys, bound read-only mount by mount. */
  fd = open_target("/sys", true);
  fd_path(target, sizeof target, fd);
  bool own_sysfs = cfg.net != NET_HOST && mount("sysfs", target, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) == 0;
  close(fd);
  if (!own_sysfs) {
    bind_into(OLD "/sys", "/sys", false, 0);
    remount_tree_readonly(NEWROOT "/sys");
  }
  if (!is_mount_target("/tmp")) tmpfs_into("/tmp", "mode=1777", MS_NOSUID | MS_NODEV);
  setup_generated_files();

  for (int i = 0; i < cfg.nbinds; i++) {
    char src[PATH_MAX];
    snprintf(src, sizeof src, OLD "%s", cfg.binds[i].src);
    bind_into(src, cfg.binds[i].dst, cfg.binds[i].ro, MS_NOSUID | MS_NODEV);
  }
  for (int i = 0; i < cfg.ntmpfs; i++) {
    char options[64];
    if (cfg.tmpfs[i].size) snprintf(options, sizeof options, "mode=1777,size=%llu", parse_number(cfg.tmpfs[i].size, "--tmpfs"));
    else snprintf(options, sizeof options, "mode=1777");
    tmpfs_into(cfg.tmpfs[i].dst, options, MS_NOSUID | MS_NODEV);
  }
  if (cfg.mkhome) {
    int home = open_target(cfg.mkhome, true);
    char path[64];
    fd_path(path, sizeof path, home);
    struct stat st;
    if (stat(path, &st) == 0 && st.st_uid == 0 && st.st_nlink == 2) {
      /* Freshly made (or an empty root-owned dir): give it to the user it is for. */
      DIR *d = opendir(path);
      int entries = 0;
      struct dirent *e;
      while (d && (e = readdir(d))) entries++;
      if (d) closedir(d);
      if (entries == 2 && chown(path, cfg.keep_uid, cfg.keep_gid) < 0) warn("chown %s: %s", cfg.mkhome, strerror(errno));
    }
    close(home);
  }
  if (!cfg.upper && mount(NULL, NEWROOT, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY, NULL) < 0)
    die("remount the root read-only");
  close(newroot_fd);

  if (chdir(NEWROOT) < 0) die("chdir " NEWROOT);
  if (syscall(SYS_pivot_root, ".", ".") < 0) die("pivot_root into the environment");
  if (umount2(".", MNT_DETACH) < 0) die("detach the old root");
  if (chdir("/") < 0) die("chdir /");
}

/* ---------- the workload ---------- */

static void drop_bounding_set(void) {
  for (int cap = 0; cap <= 63; cap++) {
    if (DOCKER_DEFAULT_CAPS & (1ULL << cap)) continue;
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
      if (errno == EINVAL) break; /* past the kernel's last capability */
      die("drop capability %d from the bounding set", cap);
    }
  }
  prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
}

static const char *env_path(void) {
  for (int i = 0; i < cfg.nenv; i++) if (!strncmp(cfg.env[i], "PATH=", 5)) return cfg.env[i] + 5;
  return "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
}

/* execve with a PATH search over the workload's PATH (not ours); returns 126 or 127. */
static int exec_workload(void) {
  const char *file = cfg.argv[0];
  if (strchr(file, '/')) {
    execve(file, cfg.argv, cfg.env);
    int err = errno;
    fprintf(stderr, "envy-ns: %s: %s\n", file, strerror(err));
    return err == ENOENT || err == ENOTDIR ? EXIT_NOTFOUND : EXIT_NOEXEC;
  }
  const char *path = env_path();
  bool denied = false;
  int denied_err = 0;
  while (*path) {
    const char *end = strchrnul(path, ':');
    char candidate[PATH_MAX];
    snprintf(candidate, sizeof candidate, "%.*s/%s", (int)(end - path), end == path ? "." : path, file);
    execve(candidate, cfg.argv, cfg.env);
    if (errno == EACCES || errno == ENOEXEC || errno == EISDIR) { denied = true; denied_err = errno; }
    path = *end ? end + 1 : end;
  }
  if (denied) {
    fprintf(stderr, "envy-ns: %s: %s\n", file, strerror(denied_err));
    return EXIT_NOEXEC;
  }
  fprintf(stderr, "envy-ns: %s: command not found\n", file);
  return EXIT_NOTFOUND;
}

/* In the forked child: become the workload. `slave` is the pty path or NULL. */
__attribute__((noreturn)) static void become_workload(const char *slave) {
  sigset_t none;
  sigemptyset(&none);
  for (int sig = 1; sig < NSIG; sig++) signal(sig, SIG_DFL);
  sigprocmask(SIG_SETMASK, &none, NULL);
  report_fd = -1;
  /* Its own session: terminal signals reach it once, forwarded, not also directly. */
  setsid();
  if (slave) {
    int fd = open(slave, O_RDWR);
    if (fd < 0) die("open %s", slave);
    if (ioctl(fd, TIOCSCTTY, 0) < 0) die("make %s the controlling terminal", slave);
    for (int i = 0; i < 3; i++) if (dup2(fd, i) < 0) die("dup2");
    if (fd > 2) close(fd);
  }
  for (int i = 0; i < cfg.nrlimits; i++) {
    struct rlimit rl = { cfg.rlimits[i].value, cfg.rlimits[i].value };
    if (setrlimit(cfg.rlimits[i].resource, &rl) < 0) die("setrlimit");
  }
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) die("set no_new_privs");
  drop_bounding_set();
  /* setgroups is denied under a single-id map; then there are no extra groups to drop anyway. */
  if (setgroups((size_t)cfg.ngroups, cfg.groups) < 0 && errno != EPERM) die("setgroups");
  if (setresgid(cfg.gid, cfg.gid, cfg.gid) < 0) {
    diag_hint = "only ids mapped into the user namespace can be used (see /proc/self/gid_map)";
    die("setgid %lu", (unsigned long)cfg.gid);
  }
  if (setresuid(cfg.uid, cfg.uid, cfg.uid) < 0) {
    diag_hint = "only ids mapped into the user namespace can be used (see /proc/self/uid_map)";
    die("setuid %lu", (unsigned long)cfg.uid);
  }
  const char *cwd = cfg.cwd ? cfg.cwd : "/";
  if (chdir(cwd) < 0) die("chdir %s", cwd);
  _exit(exec_workload());
}

static int wait_status_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return EXIT_SETUP;
}

static void forward_set(sigset_t *set) {
  sigemptyset(set);
  int sigs[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGCHLD, SIGPIPE };
  for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaddset(set, sigs[i]);
}

/* Forward a signal to the workload. The ones a terminal sends (Ctrl-C, Ctrl-\\, hangup) go to its whole process
 * group, as a terminal sends them to the foreground job: `sh -c 'sleep 9 && ...'` must stop at once,
 * not after the sleep. The workload leads its own session (setsid), so its group id is its pid. */
static void forward_signal(pid_t workload, int sig) {
  if ((sig == SIGINT || sig == SIGQUIT || sig == SIGHUP) && kill(-workload, sig) == 0) return;
  kill(workload, sig);
}

static void reap_all(pid_t watched, int *watched_status, bool *watched_done) {
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    if (pid == watched) { *watched_status = status; *watched_done = true; }
  }
}

/* pid 1 of a long-lived environment: reap, and on a stop signal end every process, then itself. */
__attribute__((noreturn)) static void init_idle_loop(void) {
  sigset_t set;
  forward_set(&set);
  bool stopping = false;
  int unused_status;
  bool unused_done;
  for (;;) {
    struct timespec tick = { 0, 20 * 1000 * 1000 };
    siginfo_t info;
    int sig = sigtimedwait(&set, &info, stopping ? &tick : NULL);
    reap_all(-1, &unused_status, &unused_done);
    if (sig == SIGTERM || sig == SIGINT || sig == SIGHUP || sig == SIGQUIT) {
      if (!stopping) kill(-1, SIGTERM);
      stopping = true;
    }
    /* kill(-1) from pid 1 reaches every other process of this pid namespace, exec'd ones included. */
    if (stopping && kill(-1, 0) < 0 && errno == ESRCH) _exit(0);
  }
}

/* pid 1 with a workload: forward signals to it, reap everything, exit as it exits. */
__attribute__((noreturn)) static void init_workload_loop(pid_t workload) {
  sigset_t set;
  forward_set(&set);
  int status = 0;
  bool done = false;
  for (;;) {
    siginfo_t info;
    int sig = sigwaitinfo(&set, &info);
    if (sig < 0) continue;
    if (sig == SIGCHLD) {
      reap_all(workload, &status, &done);
      if (done) _exit(wait_status_code(status));
    } else if (sig != SIGPIPE) {
      forward_signal(workload, sig);
    }
  }
}

static void send_fd(int sock, int fd) {
  char byte = 'M';
  struct iovec iov = { &byte, 1 };
  union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } u;
  memset(&u, 0, sizeof u);
  struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf };
  struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &fd, sizeof fd);
  if (sendmsg(sock, &msg, 0) < 0) die("send the pty to the host side");
}

static int recv_fd(int sock) {
  char byte;
  struct iovec iov = { &byte, 1 };
  union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } u;
  struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf };
  if (recvmsg(sock, &msg, MSG_CMSG_CLOEXEC) <= 0) return -1;
  struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
  if (!c || c->cmsg_type != SCM_RIGHTS) return -1;
  int fd;
  memcpy(&fd, CMSG_DATA(c), sizeof fd);
  return fd;
}

/* Open a pty in the current mount namespace's /dev/ptmx; returns the master, fills the slave path. */
static int open_pty(char *slave, size_t size, const struct winsize *ws) {
  int master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (master < 0) die("open /dev/ptmx");
  int unlock = 0;
  if (ioctl(master, TIOCSPTLCK, &unlock) < 0) die("unlock the pty");
  int n;
  if (ioctl(master, TIOCGPTN, &n) < 0) die("get the pty number");
  snprintf(slave, size, "/dev/pts/%d", n);
  if (ws && ws->ws_row) ioctl(master, TIOCSWINSZ, ws);
  return master;
}

/* ---------- host side ---------- */

static unsigned long long process_start_time(int proc_dir_fd) {
  int fd = openat(proc_dir_fd, "stat", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[1024];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  char *p = strrchr(buf, ')');
  if (!p) return 0;
  /* After "pid (comm)": field 3 is the state; the start time is field 22. */
  unsigned long long start = 0;
  int field = 2;
  for (char *tok = strtok(p + 1, " "); tok; tok = strtok(NULL, " ")) {
    if (++field == 22) { start = strtoull(tok, NULL, 10); break; }
  }
  return start;
}

static void write_pidfile(pid_t pid) {
  char dir[32];
  snprintf(dir, sizeof dir, "/proc/%d", pid);
  int dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
  unsigned long long start = dfd >= 0 ? process_start_time(dfd) : 0;
  if (dfd >= 0) close(dfd);
  char tmp[PATH_MAX], text[64];
  snprintf(tmp, sizeof tmp, "%s.tmp%d", cfg.pidfile, getpid());
  snprintf(text, sizeof text, "%d %llu\n", pid, start);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) die("write %s", tmp);
  write_all(fd, text, strlen(text));
  if (fsync(fd) < 0 || close(fd) < 0) die("write %s", tmp);
  if (rename(tmp, cfg.pidfile) < 0) die("rename %s", cfg.pidfile);
  if (cfg.status_fd >= 0) {
    snprintf(text, sizeof text, "ok\t%d\t%llu\n", pid, start);
    write_all(cfg.status_fd, text, strlen(text));
  }
}

static void set_raw(void) {
  if (!isatty(STDIN_FILENO) || tcgetattr(STDIN_FILENO, &saved_termios) < 0) return;
  termios_saved = true;
  struct termios raw = saved_termios;
  cfmakeraw(&raw);
  tcsetattr(STDIN_FILENO, TCSAFLUSH, &raw);
}

static bool copy_once(int from, int to) {
  char buf[16384];
  ssize_t n = read(from, buf, sizeof buf);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return true;
  if (n <= 0) return false;
  write_all(to, buf, (size_t)n);
  return true;
}

/* Relay signals to `child` (and the pty, if any) until it exits; returns its exit code. */
static int supervise(pid_t child, int master) {
  sigset_t set;
  forward_set(&set);
  int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0) die("signalfd");
  bool stdin_open = master >= 0, master_open = master >= 0, exited = false;
  int status = 0;
  if (master >= 0) set_raw();
  while (!exited || master_open) {
    struct pollfd fds[3] = { { sfd, POLLIN, 0 }, { master_open ? master : -1, POLLIN, 0 }, { stdin_open ? STDIN_FILENO : -1, POLLIN, 0 } };
    /* Once the child is gone, only drain what the pty still holds. */
    int timeout = exited ? 100 : -1;
    int n = poll(fds, 3, timeout);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0 && exited) break;
    if (fds[0].revents & POLLIN) {
      struct signalfd_siginfo si;
      while (read(sfd, &si, sizeof si) == sizeof si) {
        if (si.ssi_signo == SIGCHLD) {
          pid_t p;
          while ((p = waitpid(-1, &status, WNOHANG)) > 0) if (p == child) exited = true;
          if (exited) status = wait_status_code(status);
        } else if (si.ssi_signo == SIGWINCH && master >= 0) {
          struct winsize ws;
          if (ioctl(STDIN_FILENO, TIOCGWINSZ, &ws) == 0) ioctl(master, TIOCSWINSZ, &ws);
        } else if (si.ssi_signo != SIGPIPE && !exited) {
          forward_signal(child, (int)si.ssi_signo);
        }
      }
    }
    if (master_open && (fds[1].revents & (POLLIN | POLLHUP | POLLERR))) {
      if (!copy_once(master, STDOUT_FILENO)) master_open = false;
    }
    if (stdin_open && (fds[2].revents & (POLLIN | POLLHUP | POLLERR))) {
      if (!copy_once(STDIN_FILENO, master)) {
        stdin_open = false;
        /* Non-terminal stdin at EOF: hand the workload an end-of-file through the line discipline. */
        if (!isatty(STDIN_FILENO)) { char eof = 4; write_all(master, &eof, 1); }
      }
    }
  }
  restore_terminal();
  close(sfd);
  return status;
}

/* Read the setup report from init: 'K' when ready, or "E<message>\t<hint>". */
static bool read_report(int fd) {
  char buf[4200];
  size_t len = 0;
  for (;;) {
    ssize_t n = read(fd, buf + len, sizeof buf - 1 - len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    len += (size_t)n;
    if (buf[0] == 'K') return true;
    if (len >= sizeof buf - 1) break;
  }
  buf[len] = '\0';
  if (len > 0 && buf[0] == 'E') {
    char *hint = strchr(buf + 1, '\t');
    if (hint) *hint++ = '\0';
    emit_error(buf + 1, hint);
  } else {
    emit_error("the environment's init exited during setup", NULL);
  }
  return false;
}

static void write_status_ok(void) {
  if (cfg.status_fd >= 0) write_all(cfg.status_fd, "ok\n", 3);
}

static pid_t clone_namespaces(unsigned long flags) {
  pid_t pid = (pid_t)syscall(SYS_clone, flags | SIGCHLD, NULL, NULL, NULL, NULL);
  if (pid < 0) {
    int err = errno;
    diag_hint = explain_userns();
    if (!diag_hint && err == ENOSPC) diag_hint = "too many user namespaces exist (user.max_user_namespaces); raise it with sudo sysctl";
    errno = err;
    die("create namespaces (unshare CLONE_NEWUSER)");
  }
  return pid;
}

/* envy (our parent) owns this run and collects its result: when it dies (kill -9), the run must not go on
 * unsupervised, writing into a build's scratch dir that the next envy sweeps. */
static void die_with_parent(int sig) {
  pid_t parent = getppid();
  prctl(PR_SET_PDEATHSIG, sig);
  if (getppid() != parent) raise(sig);
}

static int run_mode(void) {
  /* init has PDEATHSIG SIGKILL too: the host side's death ends the whole namespace. */
  if (!cfg.detach) die_with_parent(SIGKILL);
  struct idmap_plan plan;
  plan_idmap(&plan);
  struct winsize ws = { 0 };
  if (cfg.tty) ioctl(STDIN_FILENO, TIOCGWINSZ, &ws);
  int go[2], report[2], sock[2] = { -1, -1 };
  if (pipe2(go, O_CLOEXEC) < 0 || pipe2(report, O_CLOEXEC) < 0) die("pipe");
  if (cfg.tty && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sock) < 0) die("socketpair");
  sigset_t set, old;
  forward_set(&set);
  sigprocmask(SIG_BLOCK, &set, &old);
  unsigned long flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC;
  if (cfg.net != NET_HOST) flags |= CLONE_NEWNET;
  pid_t init = clone_namespaces(flags);
  if (init == 0) {
    /* pid 1 of the new pid namespace. */
    close(go[1]);
    close(report[0]);
    if (sock[0] >= 0) close(sock[0]);
    report_fd = report[1];
    if (!cfg.detach) prctl(PR_SET_PDEATHSIG, SIGKILL);
    char byte;
    if (read(go[0], &byte, 1) != 1) _exit(EXIT_SETUP);
    close(go[0]);
    if (plan.full) {
      if (setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0) die("become root in the user namespace");
      if (setgroups(0, NULL) < 0) die("setgroups");
      /* Changing uid made us non-dumpable, which hides /proc/PID/ns from `exec`. Processes inside
       * still cannot ptrace init: their capabilities are not a superset of its. */
      prctl(PR_SET_DUMPABLE, 1);
    }
    /* Changing credentials also cleared the parent-death signal: without it, a build step whose envy
     * was SIGKILLed would run on as an orphan. */
    if (!cfg.detach) prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (cfg.hostname && sethostname(cfg.hostname, strlen(cfg.hostname)) < 0) die("sethostname");
    if (cfg.net != NET_HOST) bring_up_loopback();
    setup_filesystem();
    int master = -1;
    char slave[64] = "";
    if (cfg.tty) {
      master = open_pty(slave, sizeof slave, &ws);
      send_fd(sock[1], master);
      close(sock[1]);
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) die("set no_new_privs");
    /* Out of the caller's process group: Ctrl-C reaches the workload once, through the host side. */
    setsid();
    if (cfg.detach) {
      int null = open("/dev/null", O_RDWR);
      if (null < 0) die("open /dev/null");
      for (int i = 0; i < 3; i++) dup2(null, i);
      if (null > 2) close(null);
      write_all(report[1], "K", 1);
      /* Nothing of the caller's may stay open in a long-lived init (pipes would never see EOF). */
      syscall(SYS_close_range, 3, ~0U, 0);
      init_idle_loop();
    }
    pid_t workload = fork();
    if (workload < 0) die("fork the workload");
    if (workload == 0) {
      if (master >= 0) close(master);
      become_workload(cfg.tty ? slave : NULL);
    }
    if (master >= 0) close(master);
    write_all(report[1], "K", 1);
    close(report[1]);
    report_fd = -1;
    init_workload_loop(workload);
  }
  close(go[0]);
  close(report[1]);
  if (sock[1] >= 0) close(sock[1]);
  if (cfg.cgroup) {
    char path[PATH_MAX], text[32];
    snprintf(path, sizeof path, "%s/cgroup.procs", cfg.cgroup);
    snprintf(text, sizeof text, "%d\n", init);
    if (write_file(path, text) < 0) { kill(init, SIGKILL); die("join cgroup %s", cfg.cgroup); }
  }
  /* If mapping fails we exit; init then reads EOF on `go` and exits too. */
  map_ids(init, &plan);
  if (write(go[1], "G", 1) != 1) die("start init");
  close(go[1]);
  if (!read_report(report[0])) {
    int status;
    while (waitpid(init, &status, 0) < 0 && errno == EINTR) {}
    return EXIT_SETUP;
  }
  if (cfg.detach) {
    write_pidfile(init);
    return 0;
  }
  write_status_ok();
  int master = cfg.tty ? recv_fd(sock[0]) : -1;
  if (cfg.tty && master < 0) die_plain("did not receive the pty from init");
  return supervise(init, master);
}

static int exec_mode(void) {
  /* No die_with_parent here: a process exec'd into a long-lived environment may outlive its caller
   * (the service supervisor relies on that when it is killed and replaced). */
  char dir[32];
  snprintf(dir, sizeof dir, "/proc/%d", cfg.target);
  int pfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
  diag_hint = "start the environment again (envy up)";
  if (pfd < 0) die_plain("the environment is not running (no process %d)", cfg.target);
  if (cfg.target_start && process_start_time(pfd) != cfg.target_start)
    die_plain("the environment is not running (pid %d now belongs to another process)", cfg.target);
  diag_hint = NULL;
  static const struct { const char *name; int type; } kinds[] = {
    { "user", CLONE_NEWUSER }, { "mnt", CLONE_NEWNS }, { "pid", CLONE_NEWPID },
    { "uts", CLONE_NEWUTS }, { "ipc", CLONE_NEWIPC }, { "net", CLONE_NEWNET },
  };
  int fds[6];
  for (int i = 0; i < 6; i++) {
    char path[32], self[32];
    snprintf(path, sizeof path, "ns/%s", kinds[i].name);
    snprintf(self, sizeof self, "/proc/self/ns/%s", kinds[i].name);
    fds[i] = openat(pfd, path, O_RDONLY | O_CLOEXEC);
    if (fds[i] < 0) die("open %s/%s", dir, path);
    struct stat theirs, ours;
    /* Shared namespaces (network: host) are already ours; joining them again is refused. */
    if (fstat(fds[i], &theirs) == 0 && stat(self, &ours) == 0 && theirs.st_ino == ours.st_ino && theirs.st_dev == ours.st_dev) {
      close(fds[i]);
      fds[i] = -1;
    }
  }
  int rootfd = openat(pfd, "root", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (rootfd < 0) die("open %s/root", dir);
  for (int i = 0; i < 6; i++) {
    if (fds[i] < 0) continue;
    if (setns(fds[i], kinds[i].type) < 0) {
      if (i == 0) diag_hint = explain_userns();
      die("join the environment's %s namespace", kinds[i].name);
    }
    close(fds[i]);
  }
  if (fchdir(rootfd) < 0 || chroot(".") < 0 || chdir("/") < 0) die("enter the environment's root");
  close(rootfd);
  close(pfd);
  struct winsize ws = { 0 };
  int master = -1;
  char slave[64] = "";
  if (cfg.tty) {
    ioctl(STDIN_FILENO, TIOCGWINSZ, &ws);
    master = open_pty(slave, sizeof slave, &ws);
  }
  sigset_t set;
  forward_set(&set);
  sigprocmask(SIG_BLOCK, &set, NULL);
  /* Before the fork: a workload child that fails (chdir, setuid) reports after this, and the last
   * report wins. Written after the fork, "ok" could land after the child's error and hide it. */
  write_status_ok();
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {
    if (master >= 0) close(master);
    become_workload(cfg.tty ? slave : NULL);
  }
  return supervise(child, master);
}

static int userns_mode(void) {
  die_with_parent(SIGKILL);
  struct idmap_plan plan;
  plan_idmap(&plan);
  int go[2];
  if (pipe2(go, O_CLOEXEC) < 0) die("pipe");
  sigset_t set;
  forward_set(&set);
  sigprocmask(SIG_BLOCK, &set, NULL);
  /* With --binfmt, a mount namespace of its own keeps the binfmt_misc mount (and the programs'
   * mounts, e.g. a bootstrap's) off the host's tree. */
  pid_t child = clone_namespaces(CLONE_NEWUSER | (cfg.binfmt ? CLONE_NEWNS : 0));
  if (child == 0) {
    close(go[1]);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    char byte;
    if (read(go[0], &byte, 1) != 1) _exit(EXIT_SETUP);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0) die("become root in the user namespace");
    if (plan.full && setgroups(0, NULL) < 0) die("setgroups");
    if (cfg.binfmt) {
      if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0) die("make / a slave in the new mount namespace");
      register_binfmt("/proc/sys/fs/binfmt_misc", "");
    }
    execvp(cfg.argv[0], cfg.argv);
    int err = errno;
    fprintf(stderr, "envy-ns: %s: %s\n", cfg.argv[0], strerror(err));
    _exit(err == ENOENT ? EXIT_NOTFOUND : EXIT_NOEXEC);
  }
  close(go[0]);
  map_ids(child, &plan);
  if (write(go[1], "G", 1) != 1) die("start the child");
  close(go[1]);
  write_status_ok();
  return supervise(child, -1);
}

int main(int argc, char **argv) {
  parse_args(argc, argv);
  switch (cfg.mode) {
    case MODE_RUN: return run_mode();
    case MODE_EXEC: return exec_mode();
    case MODE_USERNS: return userns_mode();
  }
  return EXIT_SETUP;
}
