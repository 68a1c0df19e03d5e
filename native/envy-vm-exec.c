/*
 * envy-vm-exec: `envy exec` into a running VM, in C. The exec fast path (src/cli/exec-fast.ts)
 * execve's into this once it has found the environment's record, as it does into envy-ns for a
 * namespace environment, so what is left costs no Node: no node:net, no streams, no event loop to
 * wind down. It speaks the agent protocol (docs/vm-agent.md) over qemu's socket of one agent port.
 *
 *   envy-vm-exec --run DIR --ports N --id ID [--tty] [--uid U --gid G] [--cwd DIR] -- ARGV...
 *
 * Its own environment is the process's environment in the guest (nothing of the host leaks: the
 * caller builds it). A port is taken exactly as src/runtime/vm/channel.ts takes one: the first free
 * DIR/port-N.lock (JSON with pid and start time, created by link(2), stale when its owner is gone),
 * socket DIR/agent.sock for port 0, DIR/agent-N.sock for the others. The lock goes when we exit.
 *
 * stdio: pipes by default (SIGINT, SIGTERM, SIGHUP and SIGQUIT are forwarded to the process's group);
 * with --tty a pty in the guest, our terminal in raw mode and SIGWINCH as a resize. Output is written
 * before credit is granted, so a reader that stops stops the guest process, as with a local pipe.
 * Exit status: the process's (128+n after signal n); 127/126 when it could not start; 3 when the
 * channel fails, 8 when no port frees up, as the Node path reports them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define PROTO_VERSION 1u
#define HDR 9u
#define MAX_PAYLOAD (1u << 20)
#define WINDOW (256u * 1024u)
#define CHUNK (64u * 1024u)
#define CHANNEL 1u
#define EXIT_INTERNAL 3
#define EXIT_BUSY 8

enum { H_HELLO = 0x01, H_EXEC, H_STDIN, H_STDIN_EOF, H_RESIZE, H_SIGNAL, H_CREDIT };
enum { A_HELLO = 0x81, A_STARTED, A_STDOUT, A_STDERR, A_EXIT, A_DATA, A_CREDIT, A_RESULT, A_ERROR = 0x8f };

static char lock_path[4096];
static char lock_content[256];
static struct termios saved_termios;
static int raw_mode;
static int sock = -1;

static void restore(void) {
  if (raw_mode) tcsetattr(0, TCSADRAIN, &saved_termios), raw_mode = 0;
  if (lock_path[0]) {
    /* Only our own lock: a stale-lock takeover by another process must not be undone. */
    char now[256] = {0};
    int fd = open(lock_path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      ssize_t n = read(fd, now, sizeof now - 1);
      close(fd);
      if (n > 0 && strcmp(now, lock_content) == 0) unlink(lock_path);
    }
    lock_path[0] = 0;
  }
}

static void fail(int code, const char *fmt, ...) {
  restore();
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  dprintf(2, "envy: %s\n", msg);
  exit(code);
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---------- the port: a lock file shared with the Node side ---------- */

/* Field 22 of /proc/PID/stat, as src/state/lock.ts reads it; empty when the process is gone. */
static void start_time(long pid, char *out, size_t size) {
  char path[64], stat[1024];
  out[0] = 0;
  snprintf(path, sizeof path, "/proc/%ld/stat", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  ssize_t n = read(fd, stat, sizeof stat - 1);
  close(fd);
  if (n <= 0) return;
  stat[n] = 0;
  char *p = strrchr(stat, ')');
  if (!p) return;
  p += 2; /* field 3 */
  for (int field = 3; field < 22 && p; field++) p = strchr(p, ' ') ? strchr(p, ' ') + 1 : NULL;
  if (!p) return;
  size_t len = strcspn(p, " \n");
  if (len >= size) len = size - 1;
  memcpy(out, p, len);
  out[len] = 0;
}

/* The owner a lock file names is alive (same pid, same start time). A torn or foreign file: not. */
static int owner_alive(const char *path) {
  char text[512] = {0};
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, text, sizeof text - 1);
  close(fd);
  if (n <= 0) return 0;
  char *pid_at = strstr(text, "\"pid\":"), *start_at = strstr(text, "\"startTime\":\"");
  if (!pid_at || !start_at) return 0;
  long pid = strtol(pid_at + 6, NULL, 10);
  start_at += 13;
  size_t len = strcspn(start_at, "\"");
  char now[64];
  start_time(pid, now, sizeof now);
  return now[0] && strlen(now) == len && strncmp(now, start_at, len) == 0;
}

/* Take DIR/port-INDEX.lock if free or stale: write a temp file, link it into place. */
static int try_lock(const char *dir, int index, const char *id) {
  char path[4096], temp[4200], mine[64];
  snprintf(path, sizeof path, "%s/port-%d.lock", dir, index);
  start_time(getpid(), mine, sizeof mine);
  snprintf(lock_content, sizeof lock_content, "{\"pid\":%d,\"startTime\":\"%s\",\"purpose\":\"exec in VM %.100s\"}", (int)getpid(), mine, id);
  for (int attempt = 0; attempt < 3; attempt++) {
    snprintf(temp, sizeof temp, "%s.%d.%ld.tmp", path, (int)getpid(), (long)now_ms() + attempt);
    int fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) fail(EXIT_INTERNAL, "cannot write %s: %s", temp, strerror(errno));
    size_t len = strlen(lock_content);
    int wrote = write(fd, lock_content, len) == (ssize_t)len;
    close(fd);
    int linked = wrote && link(temp, path) == 0;
    int e = errno;
    unlink(temp);
    if (!wrote) fail(EXIT_INTERNAL, "cannot write %s", temp);
    if (linked) {
      snprintf(lock_path, sizeof lock_path, "%s", path);
      return 1;
    }
    if (e != EEXIST) fail(EXIT_INTERNAL, "cannot take %s: %s", path, strerror(e));
    if (owner_alive(path)) return 0;
    unlink(path); /* stale: its owner is gone */
  }
  return 0;
}

static int connect_port(const char *dir, int index) {
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  if (index == 0) snprintf(addr.sun_path, sizeof addr.sun_path, "%s/agent.sock", dir);
  else snprintf(addr.sun_path, sizeof addr.sun_path, "%s/agent-%d.sock", dir, index);
  int64_t deadline = now_ms() + 10000;
  for (;;) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0) return fd;
    int e = errno;
    if (fd >= 0) close(fd);
    if (now_ms() > deadline) fail(EXIT_INTERNAL, "the guest agent did not answer on %s within 10 s (%s)", addr.sun_path, strerror(e));
    usleep(20000);
  }
}

/* ---------- frames ---------- */

struct buf {
  uint8_t *p;
  size_t len, cap;
};

static void put(struct buf *b, const void *d, size_t n) {
  if (b->len + n > b->cap) {
    b->cap = (b->len + n) * 2 + 256;
    b->p = realloc(b->p, b->cap);
    if (!b->p) fail(EXIT_INTERNAL, "out of memory");
  }
  memcpy(b->p + b->len, d, n);
  b->len += n;
}
static void put_u8(struct buf *b, uint8_t v) { put(b, &v, 1); }
static void put_u16(struct buf *b, uint16_t v) {
  uint8_t d[2] = {v >> 8, v & 0xff};
  put(b, d, 2);
}
static void put_u32(struct buf *b, uint32_t v) {
  uint8_t d[4] = {v >> 24, (v >> 16) & 0xff, (v >> 8) & 0xff, v & 0xff};
  put(b, d, 4);
}
static void put_str(struct buf *b, const char *s) {
  put_u32(b, (uint32_t)strlen(s));
  put(b, s, strlen(s));
}
static uint32_t get_u32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

/* Blocking write of all of it (our stdout may be a pipe someone reads slowly: that is the flow control). */
static int write_all(int fd, const uint8_t *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && errno == EAGAIN) {
      struct pollfd pf = {.fd = fd, .events = POLLOUT};
      poll(&pf, 1, -1);
      continue;
    }
    if (w <= 0) return -1;
    p += w, n -= (size_t)w;
  }
  return 0;
}

static void send_frame(uint8_t type, uint32_t ch, const void *payload, size_t len) {
  struct buf b = {0};
  put_u8(&b, type);
  put_u32(&b, ch);
  put_u32(&b, (uint32_t)len);
  put(&b, payload, len);
  if (write_all(sock, b.p, b.len) < 0) fail(EXIT_INTERNAL, "the guest agent connection failed: %s", strerror(errno));
  free(b.p);
}

static void send_u32(uint8_t type, uint32_t ch, uint32_t v) {
  uint8_t d[4] = {v >> 24, (v >> 16) & 0xff, (v >> 8) & 0xff, v & 0xff};
  send_frame(type, ch, d, 4);
}

static struct buf in;
static size_t in_off;

/* The next whole frame from the socket buffer, or 0. */
static int next_frame(uint8_t *type, uint32_t *ch, const uint8_t **payload, uint32_t *len) {
  size_t have = in.len - in_off;
  if (have < HDR) return 0;
  const uint8_t *h = in.p + in_off;
  uint32_t n = get_u32(h + 5);
  if (n > MAX_PAYLOAD) fail(EXIT_INTERNAL, "the guest agent sent a malformed frame: %u bytes", n);
  if (have < HDR + n) return 0;
  *type = h[0], *ch = get_u32(h + 1), *payload = h + HDR, *len = n;
  in_off += HDR + n;
  return 1;
}

/* Read what the socket has; 0 at end of stream. */
static int fill(void) {
  if (in_off > 0 && in_off == in.len) in.len = in_off = 0;
  if (in.cap - in.len < CHUNK) {
    memmove(in.p, in.p + in_off, in.len - in_off);
    in.len -= in_off, in_off = 0;
    if (in.cap - in.len < CHUNK) {
      in.cap = in.len + CHUNK + HDR + MAX_PAYLOAD;
      in.p = realloc(in.p, in.cap);
      if (!in.p) fail(EXIT_INTERNAL, "out of memory");
    }
  }
  ssize_t n;
  do n = read(sock, in.p + in.len, in.cap - in.len);
  while (n < 0 && errno == EINTR);
  if (n < 0) fail(EXIT_INTERNAL, "the guest agent connection failed: %s", strerror(errno));
  in.len += (size_t)n;
  return n > 0;
}

/* Knock with hellos until the agent answers ours (qemu accepts before the guest opens its port). */
static void handshake(void) {
  uint32_t nonce = (uint32_t)(now_ms() * 2654435761u) ^ (uint32_t)getpid();
  uint8_t hello[8] = {0, 0, 0, PROTO_VERSION, nonce >> 24, (nonce >> 16) & 0xff, (nonce >> 8) & 0xff, nonce & 0xff};
  int64_t deadline = now_ms() + 10000, knock = 0;
  for (;;) {
    int64_t now = now_ms();
    if (now > deadline) fail(EXIT_INTERNAL, "the guest agent did not answer within 10 s (no hello from the agent)");
    if (now >= knock) send_frame(H_HELLO, 0, hello, sizeof hello), knock = now + 50;
    struct pollfd pf = {.fd = sock, .events = POLLIN};
    if (poll(&pf, 1, (int)(knock - now)) <= 0) continue;
    if (!fill()) fail(EXIT_INTERNAL, "the guest agent connection closed before the agent answered");
    uint8_t type;
    uint32_t ch, len;
    const uint8_t *p;
    while (next_frame(&type, &ch, &p, &len)) {
      if (type != A_HELLO || ch != 0 || len < 8 || get_u32(p + 4) != nonce) continue;
      if (get_u32(p) != PROTO_VERSION)
        fail(EXIT_INTERNAL, "the guest agent speaks protocol %u, this envy %u\nhint: restart the environment (`envy down`, then `envy up`) so the guest gets the agent of this envy", get_u32(p), PROTO_VERSION);
      return;
    }
  }
}

/* ---------- main ---------- */

static void usage(void) {
  dprintf(2, "usage: envy-vm-exec --run DIR --ports N --id ID [--tty] [--uid U --gid G] [--cwd DIR] -- ARGV...\n");
  exit(2);
}

int main(int argc, char **argv) {
  const char *run = NULL, *id = "", *cwd = "";
  int ports = 1, tty = 0, i;
  uint32_t uid = UINT32_MAX, gid = UINT32_MAX;
  for (i = 1; i < argc && strcmp(argv[i], "--") != 0; i++) {
    if (!strcmp(argv[i], "--tty")) tty = 1;
    else if (i + 1 >= argc) usage();
    else if (!strcmp(argv[i], "--run")) run = argv[++i];
    else if (!strcmp(argv[i], "--ports")) ports = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--id")) id = argv[++i];
    else if (!strcmp(argv[i], "--uid")) uid = (uint32_t)strtoul(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--gid")) gid = (uint32_t)strtoul(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--cwd")) cwd = argv[++i];
    else usage();
  }
  if (!run || i + 1 >= argc || ports < 1) usage();
  char **command = argv + i + 1;
  int command_count = argc - i - 1;

  /* Signals arrive as events, never as interruptions; SIGPIPE is an error return. */
  signal(SIGPIPE, SIG_IGN);
  sigset_t mask;
  sigemptyset(&mask);
  int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH};
  for (size_t k = 0; k < sizeof forwarded / sizeof *forwarded; k++) sigaddset(&mask, forwarded[k]);
  sigprocmask(SIG_BLOCK, &mask, NULL);
  int sig_fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);

  /* The first free port; when all are busy, say so once and look again every 100 ms. */
  int index = -1;
  for (int said = 0; index < 0;) {
    for (int k = 0; k < ports && index < 0; k++)
      if (try_lock(run, k, id)) index = k;
    if (index >= 0) break;
    if (!said) dprintf(2, "envy: all %d agent ports of the VM %s are in use: waiting for one\n", ports, id), said = 1;
    usleep(100000);
  }
  sock = connect_port(run, index);
  handshake();

  struct winsize ws = {0};
  if (tty) {
    ioctl(1, TIOCGWINSZ, &ws);
    if (isatty(0) && tcgetattr(0, &saved_termios) == 0) {
      struct termios raw = saved_termios;
      cfmakeraw(&raw);
      if (tcsetattr(0, TCSADRAIN, &raw) == 0) raw_mode = 1;
    }
  }
  struct buf req = {0};
  put_u32(&req, tty ? 1 : 0);
  put_u32(&req, uid);
  put_u32(&req, gid);
  put_u16(&req, ws.ws_row);
  put_u16(&req, ws.ws_col);
  put_str(&req, cwd);
  put_u32(&req, (uint32_t)command_count);
  for (int k = 0; k < command_count; k++) put_str(&req, command[k]);
  uint32_t envc = 0;
  for (char **e = environ; *e; e++) envc++;
  put_u32(&req, envc);
  for (char **e = environ; *e; e++) put_str(&req, *e);
  if (req.len > MAX_PAYLOAD) fail(EXIT_INTERNAL, "the command line and environment are too large for the guest agent (%zu bytes, limit 1 MiB)", req.len);
  send_frame(H_EXEC, CHANNEL, req.p, req.len);
  free(req.p);

  uint32_t credit = WINDOW; /* stdin bytes the agent will take */
  int stdin_open = 1;
  uint8_t data[CHUNK];
  for (;;) {
    struct pollfd pf[3] = {{.fd = sock, .events = POLLIN}, {.fd = sig_fd, .events = POLLIN}, {.fd = stdin_open && credit > 0 ? 0 : -1, .events = POLLIN}};
    if (poll(pf, 3, -1) < 0) {
      if (errno == EINTR) continue;
      fail(EXIT_INTERNAL, "poll: %s", strerror(errno));
    }
    if (pf[1].revents) {
      struct signalfd_siginfo si;
      while (read(sig_fd, &si, sizeof si) == sizeof si) {
        if (si.ssi_signo == SIGWINCH) {
          if (tty && ioctl(1, TIOCGWINSZ, &ws) == 0) {
            uint8_t d[4] = {ws.ws_row >> 8, ws.ws_row & 0xff, ws.ws_col >> 8, ws.ws_col & 0xff};
            send_frame(H_RESIZE, CHANNEL, d, 4);
          }
        } else if (!tty) {
          send_u32(H_SIGNAL, CHANNEL, si.ssi_signo);
        } else {
          /* A terminal session's keys reach the guest as bytes (raw mode): a signal sent to us ends us. */
          restore();
          signal((int)si.ssi_signo, SIG_DFL);
          sigprocmask(SIG_UNBLOCK, &mask, NULL);
          raise((int)si.ssi_signo);
          exit(128 + (int)si.ssi_signo);
        }
      }
    }
    if (pf[2].revents) {
      ssize_t n;
      do n = read(0, data, credit < CHUNK ? credit : CHUNK);
      while (n < 0 && errno == EINTR);
      if (n > 0) {
        credit -= (uint32_t)n;
        send_frame(H_STDIN, CHANNEL, data, (size_t)n);
      } else if (n == 0 || errno != EAGAIN) {
        stdin_open = 0;
        send_frame(H_STDIN_EOF, CHANNEL, NULL, 0);
      }
    }
    if (pf[0].revents) {
      if (!fill()) fail(EXIT_INTERNAL, "the guest agent connection closed");
      uint8_t type;
      uint32_t ch, len;
      const uint8_t *p;
      while (next_frame(&type, &ch, &p, &len)) {
        if (ch == 0) {
          if (type == A_ERROR && len >= 8) {
            uint32_t n = get_u32(p + 4);
            if (n > len - 8) n = len - 8;
            fail(EXIT_INTERNAL, "the guest agent rejected the stream: %.*s (errno %u)", (int)n, p + 8, get_u32(p));
          }
          continue; /* late hellos */
        }
        if (ch != CHANNEL) continue;
        switch (type) {
        case A_STDOUT:
        case A_STDERR:
          /* A reader that went away (EPIPE) drops the rest, as Node's pipe would; credit flows on. */
          write_all(type == A_STDOUT ? 1 : 2, p, len);
          if (len) send_u32(H_CREDIT, CHANNEL, len);
          break;
        case A_CREDIT:
          if (len >= 4) credit += get_u32(p);
          break;
        case A_EXIT:
          if (len < 4) fail(EXIT_INTERNAL, "the guest agent sent a malformed frame on channel %u", ch);
          restore();
          exit((int)(get_u32(p) & 0xff));
        case A_ERROR: {
          /* The process could not start: the Node path's message and codes (src/runtime/vm/channel.ts). */
          if (len < 8) fail(EXIT_INTERNAL, "the guest agent sent a malformed frame on channel %u", ch);
          int e = (int)get_u32(p);
          uint32_t n = get_u32(p + 4);
          if (n > len - 8) n = len - 8;
          char msg[1024];
          snprintf(msg, sizeof msg, "%.*s", (int)n, p + 8);
          const char *name = strerrorname_np(e);
          int code = e == ENOENT && !strstr(msg, "working directory") ? 127 : 126;
          restore();
          if (name) dprintf(2, "envy: %s (%s)\n", msg, name);
          else dprintf(2, "envy: %s (E%d)\n", msg, e);
          exit(code);
        }
        }
      }
    }
  }
}
