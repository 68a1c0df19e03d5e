/*
 * envy-agent: the guest side of envy's VM backend. It runs as PID 1 of the guest (after the stage-1
 * init switched to the image's root) and serves several host connections at once, each its own byte
 * stream: the virtio-serial ports named envy.N (qemu's socket chardev takes one client per port, so
 * every envy process takes a port of its own), or for tests a unix socket (every accepted connection
 * is a host) or stdin/stdout.
 *
 * The protocol (docs/vm-agent.md) is framed and multiplexed: [type u8][channel u32][len u32][payload],
 * big-endian. One channel per exec, file operation or watch; data streams in both directions are
 * credit-based, so a fast producer (a command writing gigabytes, a large file upload) never grows a
 * buffer beyond one window per channel.
 *
 * Single-threaded: one poll(2) loop over the connection, the children's pipes or ptys, inotify and a
 * signalfd. Statically linked against libc only, so the same binary drops into any image.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define PROTO_VERSION 1u
#define HDR 9u
#define MAX_PAYLOAD (1u << 20)
#define WINDOW (256u * 1024u)
#define CHUNK (64u * 1024u)
/* Above this much unsent output, stop reading children and files until the host catches up. */
#define OUT_HIGH (4u << 20)
#define TEMP_PREFIX ".envy-sync-tmp."

enum {
  H_HELLO = 0x01, H_EXEC, H_STDIN, H_STDIN_EOF, H_RESIZE, H_SIGNAL, H_CREDIT, H_FILE, H_WATCH, H_CLOSE, H_PRUNE, H_SHUTDOWN, H_SERVE,
};
enum {
  A_HELLO = 0x81, A_STARTED, A_STDOUT, A_STDERR, A_EXIT, A_DATA, A_CREDIT, A_RESULT, A_ERROR = 0x8f,
};
enum { OP_STAT = 1, OP_READDIR, OP_READ, OP_WRITE, OP_MKDIR, OP_SYMLINK, OP_REMOVE, OP_RENAME, OP_CHMOD, OP_SETMTIME, OP_HASH };
enum { EV_ADD = 1, EV_CHANGE, EV_UNLINK, EV_ADDDIR, EV_UNLINKDIR };
enum { K_EXEC = 1, K_READ, K_HASH, K_WRITE, K_WATCH };

/* ---------- small utilities ---------- */

static int is_pid1;
static struct rlimit child_nofile;

static void logmsg(const char *fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line - 1, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n > sizeof line - 2) n = sizeof line - 2;
  line[n++] = '\n';
  ssize_t ignored = write(2, "envy-agent: ", 12);
  ignored = write(2, line, (size_t)n);
  (void)ignored;
}

static void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) {
    logmsg("out of memory");
    abort();
  }
  return q;
}

struct buf {
  uint8_t *p;
  size_t off, len, cap; /* valid bytes are p[off .. off+len) */
};

static void buf_reserve(struct buf *b, size_t extra) {
  if (b->off + b->len + extra <= b->cap) return;
  if (b->off > 0) {
    memmove(b->p, b->p + b->off, b->len);
    b->off = 0;
    if (b->len + extra <= b->cap) return;
  }
  size_t cap = b->cap ? b->cap : 4096;
  while (cap < b->len + extra) cap *= 2;
  b->p = xrealloc(b->p, cap);
  b->cap = cap;
}
static void buf_put(struct buf *b, const void *d, size_t n) {
  buf_reserve(b, n);
  memcpy(b->p + b->off + b->len, d, n);
  b->len += n;
}
static void buf_consume(struct buf *b, size_t n) {
  b->off += n;
  b->len -= n;
  if (b->len == 0) b->off = 0;
}
static void buf_free(struct buf *b) {
  free(b->p);
  memset(b, 0, sizeof *b);
}
static void put_u8(struct buf *b, uint8_t v) { buf_put(b, &v, 1); }
static void put_u32(struct buf *b, uint32_t v) {
  uint8_t d[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
  buf_put(b, d, 4);
}
static void put_u64(struct buf *b, uint64_t v) {
  put_u32(b, (uint32_t)(v >> 32));
  put_u32(b, (uint32_t)v);
}
static void put_str(struct buf *b, const char *s, size_t n) {
  put_u32(b, (uint32_t)n);
  buf_put(b, s, n);
}

/* A cursor over a received payload; any overrun marks it bad and later reads return zeros. */
struct rd {
  const uint8_t *p;
  size_t n;
  int bad;
};
static int rd_need(struct rd *r, size_t k) {
  if (r->bad || r->n < k) {
    r->bad = 1;
    return 0;
  }
  return 1;
}
static uint8_t get_u8(struct rd *r) {
  if (!rd_need(r, 1)) return 0;
  uint8_t v = r->p[0];
  r->p += 1, r->n -= 1;
  return v;
}
static uint16_t get_u16(struct rd *r) {
  if (!rd_need(r, 2)) return 0;
  uint16_t v = (uint16_t)(r->p[0] << 8 | r->p[1]);
  r->p += 2, r->n -= 2;
  return v;
}
static uint32_t get_u32(struct rd *r) {
  if (!rd_need(r, 4)) return 0;
  uint32_t v = (uint32_t)r->p[0] << 24 | (uint32_t)r->p[1] << 16 | (uint32_t)r->p[2] << 8 | r->p[3];
  r->p += 4, r->n -= 4;
  return v;
}
static uint64_t get_u64(struct rd *r) {
  uint64_t hi = get_u32(r);
  return hi << 32 | get_u32(r);
}
/* A string as a fresh NUL-terminated copy; embedded NULs make the payload malformed. */
static char *get_str(struct rd *r) {
  uint32_t n = get_u32(r);
  if (!rd_need(r, n)) return NULL;
  if (memchr(r->p, 0, n)) {
    r->bad = 1;
    return NULL;
  }
  char *s = xrealloc(NULL, (size_t)n + 1);
  memcpy(s, r->p, n);
  s[n] = 0;
  r->p += n, r->n -= n;
  return s;
}

/* ---------- SHA-256 (FIPS 180-4), for the sync engine's content digests ---------- */

struct sha256 {
  uint32_t h[8];
  uint64_t bits;
  uint8_t block[64];
  size_t used;
};
static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be,
    0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa,
    0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85,
    0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3,
    0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f,
    0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
static void sha256_block(struct sha256 *s, const uint8_t *p) {
  uint32_t w[64], a, b, c, d, e, f, g, h;
  for (int i = 0; i < 16; i++) w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
  for (int i = 16; i < 64; i++) {
    uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
    uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
  for (int i = 0; i < 64; i++) {
    uint32_t t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
    uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
    h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
  }
  s->h[0] += a, s->h[1] += b, s->h[2] += c, s->h[3] += d, s->h[4] += e, s->h[5] += f, s->h[6] += g, s->h[7] += h;
}
static void sha256_init(struct sha256 *s) {
  static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  memcpy(s->h, iv, sizeof iv);
  s->bits = 0;
  s->used = 0;
}
static void sha256_update(struct sha256 *s, const uint8_t *p, size_t n) {
  s->bits += (uint64_t)n * 8;
  while (n > 0) {
    size_t k = 64 - s->used < n ? 64 - s->used : n;
    memcpy(s->block + s->used, p, k);
    s->used += k, p += k, n -= k;
    if (s->used == 64) {
      sha256_block(s, s->block);
      s->used = 0;
    }
  }
}
static void sha256_hex(struct sha256 *s, char out[65]) {
  uint64_t bits = s->bits;
  uint8_t pad = 0x80, zero = 0, len[8];
  sha256_update(s, &pad, 1);
  while (s->used != 56) sha256_update(s, &zero, 1);
  for (int i = 0; i < 8; i++) len[i] = (uint8_t)(bits >> (56 - 8 * i));
  sha256_update(s, len, 8);
  for (int i = 0; i < 8; i++) snprintf(out + 8 * i, 9, "%08x", s->h[i]);
}

/* ---------- channels ---------- */

struct watchdir {
  int wd;
  char *rel;
};

struct host;

struct chan {
  uint32_t id;
  int kind;
  struct host *host; /* channel numbers are the host's own: each host has its channels */
  struct chan *next;
  uint32_t credit;    /* bytes we may still send the host on this channel */
  uint32_t in_window; /* bytes the host may still send us */
  /* exec */
  pid_t pid;
  int tty, in_fd, out_fd, err_fd;
  struct buf inq;
  int in_eof, exited, status;
  int64_t exited_at;
  uint64_t after_exit; /* output bytes read after the exit */
  /* read, hash, write */
  int fd;
  struct sha256 sha;
  int dirfd;
  char *name, *temp;
  uint32_t mode;
  uint64_t mtime_ns;
  /* watch */
  struct watchdir *wds;
  size_t nwds;
  char *root;
};

/* One host connection: a virtio port (which stays open while hosts come and go), an accepted unix
   socket, or stdin/stdout. Hosts are independent: a protocol error or a disconnect of one touches
   only its own channels and processes. */
struct host {
  struct host *next;
  int conn_in, conn_out;
  int port_fd; /* a virtio port; -1 for an accepted socket or stdio */
  int connected;
  int poisoned; /* a malformed frame was seen: drop input until the host disconnects */
  struct buf out; /* framed bytes waiting for the connection */
  struct buf in;  /* received bytes not yet parsed into frames */
  struct chan *chans;
};

static struct host *hosts;
/* The host whose frame is being handled or whose channel is being served: replies go to it. */
static struct host *cur;
static int listen_fd = -1;
static int mode_stdio;
static int sig_fd = -1;
#define MAX_PORTS 32
static const char *port_path_args[MAX_PORTS];
static int n_port_args;

static struct host *host_new(int conn_in, int conn_out, int port_fd) {
  struct host *h = calloc(1, sizeof *h);
  if (!h) abort();
  h->conn_in = conn_in;
  h->conn_out = conn_out;
  h->port_fd = port_fd;
  h->next = hosts;
  hosts = h;
  return h;
}

static struct chan *chan_find(uint32_t id) {
  for (struct chan *c = cur->chans; c; c = c->next)
    if (c->id == id) return c;
  return NULL;
}

static struct chan *chan_new(uint32_t id, int kind) {
  struct chan *c = calloc(1, sizeof *c);
  if (!c) abort();
  c->id = id;
  c->kind = kind;
  c->host = cur;
  c->credit = WINDOW;
  c->in_window = WINDOW;
  c->in_fd = c->out_fd = c->err_fd = c->fd = c->dirfd = -1;
  c->next = cur->chans;
  cur->chans = c;
  return c;
}

/* Whether `c` is still a live channel of some host (it may have been freed earlier in a poll pass). */
static int chan_live(const struct chan *c) {
  for (struct host *h = hosts; h; h = h->next)
    for (struct chan *x = h->chans; x; x = x->next)
      if (x == c) return 1;
  return 0;
}

static void closefd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

static void chan_free(struct chan *c) {
  struct chan **pp = &c->host->chans;
  while (*pp && *pp != c) pp = &(*pp)->next;
  if (*pp) *pp = c->next;
  if (c->kind == K_EXEC && c->pid > 0 && !c->exited) kill(-c->pid, SIGKILL);
  if (c->kind == K_WRITE && c->temp && c->dirfd >= 0) unlinkat(c->dirfd, c->temp, 0);
  if (c->kind == K_WATCH) {
    for (size_t i = 0; i < c->nwds; i++) free(c->wds[i].rel);
    free(c->wds);
  }
  closefd(&c->in_fd);
  closefd(&c->out_fd);
  closefd(&c->err_fd);
  closefd(&c->fd);
  closefd(&c->dirfd);
  buf_free(&c->inq);
  free(c->name);
  free(c->temp);
  free(c->root);
  free(c);
}

/* ---------- output frames ---------- */

static void send_frame(uint8_t type, uint32_t ch, const void *data, size_t len) {
  if (!cur || !cur->connected) return;
  put_u8(&cur->out, type);
  put_u32(&cur->out, ch);
  put_u32(&cur->out, (uint32_t)len);
  if (len) buf_put(&cur->out, data, len);
}
static void send_built(uint8_t type, uint32_t ch, struct buf *payload) {
  send_frame(type, ch, payload->p + payload->off, payload->len);
  buf_free(payload);
}
static void send_u32(uint8_t type, uint32_t ch, uint32_t v) {
  struct buf b = {0};
  put_u32(&b, v);
  send_built(type, ch, &b);
}
static void send_error(uint32_t ch, int err, const char *fmt, ...) {
  char msg[600];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  struct buf b = {0};
  put_u32(&b, (uint32_t)err);
  put_str(&b, msg, strlen(msg));
  send_built(A_ERROR, ch, &b);
}
static void send_result(uint32_t ch, int err) { send_u32(A_RESULT, ch, (uint32_t)err); }

/* ---------- connection lifecycle ---------- */

static void drop_channels(struct host *h) {
  while (h->chans) chan_free(h->chans);
}

static void drop_all_channels(void) {
  for (struct host *h = hosts; h; h = h->next) drop_channels(h);
}

/* The host went away: its processes are killed, its reads, writes and watches dropped. A port waits
   for the next host; an accepted socket's host is removed at the end of the poll pass. */
static void host_gone(struct host *h) {
  if (!h->connected) return;
  h->connected = 0;
  h->poisoned = 0;
  drop_channels(h);
  buf_free(&h->out);
  buf_free(&h->in);
  if (mode_stdio) exit(0);
  if (h->port_fd < 0) {
    closefd(&h->conn_in);
    h->conn_out = -1;
  }
}

/* Free the hosts of accepted sockets that have gone. */
static void remove_gone_hosts(void) {
  for (struct host **pp = &hosts; *pp;) {
    struct host *h = *pp;
    if (!h->connected && h->port_fd < 0) {
      *pp = h->next;
      if (cur == h) cur = NULL;
      free(h);
    } else {
      pp = &h->next;
    }
  }
}

static void protocol_error(const char *fmt, ...) {
  char msg[300];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  logmsg("protocol error: %s", msg);
  /* The stream cannot be trusted past a bad frame: say why, then ignore input until the host reconnects. */
  drop_channels(cur);
  buf_free(&cur->in);
  send_error(0, EPROTO, "protocol error: %s", msg);
  cur->poisoned = 1;
}

/* ---------- paths: every component under the root opened without following links ---------- */

static int check_rel(const char *rel) {
  if (rel[0] == 0) return 0;
  if (rel[0] == '/' || strlen(rel) >= PATH_MAX) return -1;
  const char *p = rel;
  while (*p) {
    const char *slash = strchr(p, '/');
    size_t n = slash ? (size_t)(slash - p) : strlen(p);
    if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.')) return -1;
    p += n;
    if (*p == '/') {
      p++;
      if (*p == 0) return -1;
    }
  }
  return 0;
}

/*
 * Open the directory holding `rel` under `root` and return the last component in *name. The root
 * itself (rel "") comes back as AT_FDCWD plus the root path. Returns -errno.
 */
static int resolve(const char *root, const char *rel, int *dirfd, char **name) {
  if (root[0] != '/' || check_rel(rel) < 0) return -EINVAL;
  if (rel[0] == 0) {
    *dirfd = AT_FDCWD;
    *name = strdup(root);
    return 0;
  }
  int fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -errno;
  char *copy = strdup(rel);
  char *part = copy, *slash;
  while ((slash = strchr(part, '/')) != NULL) {
    *slash = 0;
    int next = openat(fd, part, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (next < 0) {
      int err = errno;
      struct stat st;
      if (err == ENOTDIR && fstatat(fd, part, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode)) err = ELOOP;
      close(fd);
      free(copy);
      return -err;
    }
    close(fd);
    fd = next;
    part = slash + 1;
  }
  *dirfd = fd;
  *name = strdup(part);
  free(copy);
  return 0;
}

static void release(int dirfd, char *name) {
  if (dirfd >= 0) close(dirfd);
  free(name);
}

static uint8_t type_of(mode_t m) {
  if (S_ISREG(m)) return 1;
  if (S_ISDIR(m)) return 2;
  if (S_ISLNK(m)) return 3;
  return 4;
}

static uint64_t mtime_of(const struct stat *st) { return (uint64_t)((int64_t)st->st_mtim.tv_sec * 1000000000LL + st->st_mtim.tv_nsec); }

/* Entry encoding: type u8, mode u32, size u64, mtime_ns u64, link target str. */
static void put_entry(struct buf *b, int dirfd, const char *name, const struct stat *st) {
  put_u8(b, type_of(st->st_mode));
  put_u32(b, st->st_mode & 07777);
  put_u64(b, (uint64_t)st->st_size);
  put_u64(b, mtime_of(st));
  char target[PATH_MAX];
  ssize_t n = 0;
  if (S_ISLNK(st->st_mode)) {
    n = readlinkat(dirfd, name, target, sizeof target);
    if (n < 0) n = 0;
  }
  put_str(b, target, (size_t)n);
}

static int remove_tree_at(int dirfd, const char *name) {
  struct stat st;
  if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) return errno == ENOENT ? 0 : -errno;
  if (!S_ISDIR(st.st_mode)) return unlinkat(dirfd, name, 0) < 0 && errno != ENOENT ? -errno : 0;
  int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? 0 : -errno;
  DIR *d = fdopendir(fd);
  if (!d) {
    close(fd);
    return -errno;
  }
  int rc = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    int r = remove_tree_at(fd, e->d_name);
    if (r < 0 && rc == 0) rc = r;
  }
  closedir(d);
  if (rc == 0 && unlinkat(dirfd, name, AT_REMOVEDIR) < 0 && errno != ENOENT) rc = -errno;
  return rc;
}

static unsigned temp_counter;
static char *temp_name(void) {
  char *s = NULL;
  if (asprintf(&s, TEMP_PREFIX "agent.%d.%u", (int)getpid(), ++temp_counter) < 0) abort();
  return s;
}

/* ---------- file operations ---------- */

static void op_result_entry(uint32_t ch, int dirfd, const char *name) {
  struct stat st;
  if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
    send_result(ch, errno);
    return;
  }
  struct buf b = {0};
  put_u32(&b, 0);
  put_entry(&b, dirfd, name, &st);
  send_built(A_RESULT, ch, &b);
}

static void op_readdir(uint32_t ch, int dirfd, const char *name) {
  int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    /* A link where a directory was asked for is "not a directory"; ELOOP stays for links on the way. */
    send_result(ch, errno == ELOOP ? ENOTDIR : errno);
    return;
  }
  DIR *d = fdopendir(fd);
  if (!d) {
    send_result(ch, errno);
    close(fd);
    return;
  }
  struct buf b = {0};
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    struct stat st;
    if (fstatat(fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) continue; /* vanished meanwhile */
    if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode) && !S_ISLNK(st.st_mode)) continue;
    put_str(&b, e->d_name, strlen(e->d_name));
    put_entry(&b, fd, e->d_name, &st);
    if (b.len > 60000) {
      send_frame(A_DATA, ch, b.p + b.off, b.len);
      buf_free(&b);
    }
  }
  if (b.len) send_frame(A_DATA, ch, b.p + b.off, b.len);
  buf_free(&b);
  closedir(d);
  send_result(ch, 0);
}

/* The sync root and its parents (the guest image may not have them yet). */
static int mkdir_p(const char *path, mode_t mode) {
  if (path[0] != '/' || strlen(path) >= PATH_MAX) return -EINVAL;
  char copy[PATH_MAX];
  strcpy(copy, path);
  for (char *p = copy + 1;; p++) {
    if (*p == '/' || *p == 0) {
      char c = *p;
      *p = 0;
      if (mkdir(copy, c ? 0755 : mode) < 0 && errno != EEXIST) return -errno;
      *p = c;
      if (!c) break;
    }
  }
  struct stat st;
  if (stat(path, &st) < 0) return -errno;
  return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

static void handle_file(uint32_t ch, struct rd *r) {
  uint8_t op = get_u8(r);
  char *root = get_str(r), *rel = get_str(r);
  char *arg = NULL;
  uint32_t mode = 0;
  uint64_t mtime = 0;
  if (op == OP_WRITE) {
    mode = get_u32(r);
    mtime = get_u64(r);
  } else if (op == OP_MKDIR || op == OP_CHMOD) {
    mode = get_u32(r);
  } else if (op == OP_SETMTIME) {
    mtime = get_u64(r);
  } else if (op == OP_SYMLINK || op == OP_RENAME) {
    arg = get_str(r);
  } else if (op < OP_STAT || op > OP_HASH) {
    r->bad = 1;
  }
  if (r->bad || r->n != 0) {
    free(root), free(rel), free(arg);
    protocol_error("malformed file request on channel %u", ch);
    return;
  }
  int dirfd = -1;
  char *name = NULL;
  if (rel[0] == 0 && (op == OP_WRITE || op == OP_SYMLINK || op == OP_RENAME || op == OP_REMOVE)) {
    send_result(ch, EINVAL); /* the root itself is never replaced or removed */
    goto done;
  }
  if (rel[0] == 0 && op == OP_MKDIR) {
    send_result(ch, -mkdir_p(root, mode & 07777));
    goto done;
  }
  int rc = resolve(root, rel, &dirfd, &name);
  if (rc < 0) {
    if ((op == OP_REMOVE) && (rc == -ENOENT || rc == -ENOTDIR)) rc = 0;
    send_result(ch, -rc);
    goto done;
  }
  switch (op) {
  case OP_STAT:
    op_result_entry(ch, dirfd, name);
    break;
  case OP_READDIR:
    op_readdir(ch, dirfd, name);
    break;
  case OP_READ:
  case OP_HASH: {
    int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
      int err = fd < 0 ? errno : S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
      if (fd >= 0) close(fd);
      send_result(ch, err);
      break;
    }
    struct chan *c = chan_new(ch, op == OP_READ ? K_READ : K_HASH);
    c->fd = fd;
    if (op == OP_HASH) {
      sha256_init(&c->sha);
    } else {
      /* The open succeeded: the host can hand out a stream now, errors after this end it. */
      struct buf b = {0};
      put_u64(&b, (uint64_t)st.st_size);
      send_built(A_STARTED, ch, &b);
    }
    break;
  }
  case OP_WRITE: {
    char *temp = temp_name();
    int fd = openat(dirfd, temp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode & 0777);
    if (fd < 0) {
      send_result(ch, errno);
      free(temp);
      break;
    }
    struct chan *c = chan_new(ch, K_WRITE);
    c->fd = fd;
    c->dirfd = dirfd;
    c->name = name;
    c->temp = temp;
    c->mode = mode & 07777;
    c->mtime_ns = mtime;
    dirfd = -1;
    name = NULL;
    break;
  }
  case OP_MKDIR: {
    struct stat st;
    if (mkdirat(dirfd, name, mode & 07777) < 0) {
      int err = errno;
      if (err != EEXIST || fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode)) {
        send_result(ch, err);
        break;
      }
    }
    send_result(ch, fchmodat(dirfd, name, mode & 07777, 0) < 0 ? errno : 0);
    break;
  }
  case OP_SYMLINK: {
    char *temp = temp_name();
    if (symlinkat(arg, dirfd, temp) < 0) {
      send_result(ch, errno);
    } else if (renameat(dirfd, temp, dirfd, name) < 0) {
      send_result(ch, errno);
      unlinkat(dirfd, temp, 0);
    } else {
      op_result_entry(ch, dirfd, name);
    }
    free(temp);
    break;
  }
  case OP_REMOVE:
    send_result(ch, rel[0] == 0 ? EINVAL : -remove_tree_at(dirfd, name));
    break;
  case OP_RENAME: {
    int dirfd2 = -1;
    char *name2 = NULL;
    int rc2 = resolve(root, arg, &dirfd2, &name2);
    if (rc2 < 0) send_result(ch, -rc2);
    else send_result(ch, renameat(dirfd, name, dirfd2, name2) < 0 ? errno : 0);
    release(dirfd2, name2);
    break;
  }
  case OP_CHMOD: {
    struct stat st;
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) send_result(ch, errno);
    else if (S_ISLNK(st.st_mode) || (st.st_mode & 07777) == (mode & 07777)) send_result(ch, 0);
    else send_result(ch, fchmodat(dirfd, name, mode & 07777, 0) < 0 ? errno : 0);
    break;
  }
  case OP_SETMTIME: {
    struct timespec ts[2] = {{.tv_nsec = UTIME_OMIT}, {.tv_sec = (time_t)(mtime / 1000000000ull), .tv_nsec = (long)(mtime % 1000000000ull)}};
    send_result(ch, utimensat(dirfd, name, ts, AT_SYMLINK_NOFOLLOW) < 0 ? errno : 0);
    break;
  }
  }
done:
  release(dirfd, name);
  free(root), free(rel), free(arg);
}

static void write_finish(struct chan *c) {
  struct timespec ts[2] = {{.tv_sec = (time_t)(c->mtime_ns / 1000000000ull), .tv_nsec = (long)(c->mtime_ns % 1000000000ull)}, {0}};
  ts[1] = ts[0];
  int err = 0;
  /* fchmod after creation: the umask may have narrowed the mode given to open. */
  if (fchmod(c->fd, c->mode) < 0 || futimens(c->fd, ts) < 0) err = errno;
  if (!err && close(c->fd) < 0) err = errno;
  c->fd = -1;
  if (!err && renameat(c->dirfd, c->temp, c->dirfd, c->name) < 0) err = errno;
  if (err) {
    send_result(c->id, err);
  } else {
    free(c->temp);
    c->temp = NULL;
    op_result_entry(c->id, c->dirfd, c->name);
  }
  chan_free(c);
}

/* ---------- watch (inotify over a tree) ---------- */

#define WATCH_MASK (IN_CREATE | IN_DELETE | IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_EXCL_UNLINK | IN_ONLYDIR | IN_DONT_FOLLOW)

static char *join_rel(const char *dir, const char *name) {
  char *s = NULL;
  if (asprintf(&s, "%s%s%s", dir, dir[0] ? "/" : "", name) < 0) abort();
  return s;
}

static void put_event(struct buf *b, uint8_t kind, const char *rel) {
  put_u8(b, kind);
  put_str(b, rel, strlen(rel));
}

/* Watch `rel` and every directory below it; with `announce`, report what is found as added. */
static int watch_tree(struct chan *c, const char *rel, int announce, struct buf *events) {
  char *abs = rel[0] ? join_rel(c->root, rel) : strdup(c->root);
  int wd = inotify_add_watch(c->fd, abs, WATCH_MASK);
  if (wd < 0) {
    int err = errno;
    free(abs);
    return err == ENOENT || err == ENOTDIR ? 0 : -err;
  }
  int known = 0;
  for (size_t i = 0; i < c->nwds; i++)
    if (c->wds[i].wd == wd) {
      free(c->wds[i].rel);
      c->wds[i].rel = strdup(rel);
      known = 1;
    }
  if (!known) {
    c->wds = xrealloc(c->wds, (c->nwds + 1) * sizeof *c->wds);
    c->wds[c->nwds].wd = wd;
    c->wds[c->nwds].rel = strdup(rel);
    c->nwds++;
  }
  int fd = open(abs, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  free(abs);
  if (fd < 0) return 0;
  DIR *d = fdopendir(fd);
  if (!d) {
    close(fd);
    return 0;
  }
  int rc = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || !strncmp(e->d_name, TEMP_PREFIX, strlen(TEMP_PREFIX))) continue;
    struct stat st;
    if (fstatat(fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) continue;
    char *child = join_rel(rel, e->d_name);
    if (S_ISDIR(st.st_mode)) {
      if (announce) put_event(events, EV_ADDDIR, child);
      rc = watch_tree(c, child, announce, events);
    } else if (announce) {
      put_event(events, EV_ADD, child);
    }
    free(child);
    if (rc < 0) break;
  }
  closedir(d);
  return rc;
}

static void unwatch_prefix(struct chan *c, const char *rel) {
  size_t n = strlen(rel);
  for (size_t i = 0; i < c->nwds;) {
    const char *r = c->wds[i].rel;
    if (!strcmp(r, rel) || (n == 0) || (!strncmp(r, rel, n) && r[n] == '/')) {
      inotify_rm_watch(c->fd, c->wds[i].wd);
      free(c->wds[i].rel);
      c->wds[i] = c->wds[--c->nwds];
    } else {
      i++;
    }
  }
}

static const char *wd_rel(struct chan *c, int wd) {
  for (size_t i = 0; i < c->nwds; i++)
    if (c->wds[i].wd == wd) return c->wds[i].rel;
  return NULL;
}

static void handle_watch(uint32_t ch, struct rd *r) {
  char *root = get_str(r);
  if (r->bad || r->n != 0 || root[0] != '/') {
    free(root);
    protocol_error("malformed watch request on channel %u", ch);
    return;
  }
  struct chan *c = chan_new(ch, K_WATCH);
  c->root = root;
  c->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (c->fd < 0) {
    send_result(ch, errno);
    chan_free(c);
    return;
  }
  struct buf none = {0};
  int rc = watch_tree(c, "", 0, &none);
  buf_free(&none);
  if (rc < 0) {
    send_result(ch, -rc);
    chan_free(c);
    return;
  }
  send_result(ch, 0);
}

static void service_watch(struct chan *c) {
  char raw[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
  struct buf events = {0};
  for (;;) {
    ssize_t n = read(c->fd, raw, sizeof raw);
    if (n <= 0) break;
    for (char *p = raw; p < raw + n;) {
      struct inotify_event *ev = (struct inotify_event *)p;
      p += sizeof *ev + ev->len;
      if (ev->mask & IN_Q_OVERFLOW) {
        /* Events were lost: ask the host to look at the whole tree again. */
        put_event(&events, EV_ADDDIR, "");
        continue;
      }
      if (ev->mask & IN_IGNORED) {
        for (size_t i = 0; i < c->nwds; i++)
          if (c->wds[i].wd == ev->wd) {
            free(c->wds[i].rel);
            c->wds[i] = c->wds[--c->nwds];
            break;
          }
        continue;
      }
      const char *dir = wd_rel(c, ev->wd);
      if (!dir || ev->len == 0 || !ev->name[0]) continue;
      if (!strncmp(ev->name, TEMP_PREFIX, strlen(TEMP_PREFIX))) continue;
      char *rel = join_rel(dir, ev->name);
      int isdir = (ev->mask & IN_ISDIR) != 0;
      if (ev->mask & (IN_CREATE | IN_MOVED_TO)) {
        put_event(&events, isdir ? EV_ADDDIR : EV_ADD, rel);
        /* Entries may have appeared before the new directory's watch existed: report them too. */
        if (isdir && watch_tree(c, rel, 1, &events) < 0) put_event(&events, EV_ADDDIR, "");
      } else if (ev->mask & (IN_DELETE | IN_MOVED_FROM)) {
        if (isdir) unwatch_prefix(c, rel);
        put_event(&events, isdir ? EV_UNLINKDIR : EV_UNLINK, rel);
      } else if (ev->mask & (IN_MODIFY | IN_CLOSE_WRITE | IN_ATTRIB)) {
        put_event(&events, EV_CHANGE, rel);
      }
      free(rel);
      if (events.len > 60000) {
        send_frame(A_DATA, c->id, events.p + events.off, events.len);
        buf_free(&events);
      }
    }
  }
  if (events.len) send_frame(A_DATA, c->id, events.p + events.off, events.len);
  buf_free(&events);
}

/* ---------- exec ---------- */

static void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

/* What the child of an exec does before it runs the program. */
struct child_setup {
  int tty;
  const char *slave_name;
  uint32_t uid, gid;
  const char *cwd;
  char **argv, **envp;
  int in_r, out_w, err_w, status_w;
};

/* vfork: no page tables to copy and no copy-on-write faults in this process afterwards, which under
   TCG made fork a large share of a short exec. The child uses only `c`, its own locals and syscalls
   until it execs or _exits, and hands envp to execvpe rather than setting environ (ours, shared).
   A function of its own, so nothing of handle_exec lives across the vfork. Returns the pid, or -1. */
static pid_t __attribute__((noinline)) start_child(const struct child_setup *c) {
  pid_t pid = vfork();
  if (pid != 0) return pid;
  sigset_t all;
  sigemptyset(&all);
  sigprocmask(SIG_SETMASK, &all, NULL);
  signal(SIGPIPE, SIG_DFL);
  setrlimit(RLIMIT_NOFILE, &child_nofile);
  setsid();
  const char *stage = "open the terminal";
  if (c->tty) {
    int slave = open(c->slave_name, O_RDWR);
    if (slave < 0 || ioctl(slave, TIOCSCTTY, 0) < 0) goto child_fail;
    /* The terminal belongs to whoever runs in it (grantpt gave it to us): tty(1), mesg, ssh agree. */
    if (c->uid != UINT32_MAX && fchown(slave, c->uid, (gid_t)-1) < 0) goto child_fail;
    dup2(slave, 0), dup2(slave, 1), dup2(slave, 2);
    if (slave > 2) close(slave);
  } else {
    dup2(c->in_r, 0), dup2(c->out_w, 1), dup2(c->err_w, 2);
  }
  stage = "set the user";
  if (c->gid != UINT32_MAX) {
    gid_t g = c->gid;
    if (setgroups(1, &g) < 0 || setgid(g) < 0) goto child_fail;
  }
  if (c->uid != UINT32_MAX && setuid(c->uid) < 0) goto child_fail;
  stage = "change to the working directory";
  if (c->cwd[0] && chdir(c->cwd) < 0) goto child_fail;
  stage = "run";
  execvpe(c->argv[0], c->argv, c->envp);
child_fail: {
  int e = errno;
  char msg[256];
  int n = snprintf(msg, sizeof msg, "%d:%s", e, stage);
  ssize_t ignored = write(c->status_w, msg, (size_t)n);
  (void)ignored;
  _exit(127);
}
}

static void handle_exec(uint32_t ch, struct rd *r) {
  uint32_t flags = get_u32(r), uid = get_u32(r), gid = get_u32(r);
  uint16_t rows = get_u16(r), cols = get_u16(r);
  char *cwd = get_str(r);
  uint32_t argc = get_u32(r);
  if (argc == 0 || argc > 65536) r->bad = 1;
  char **argv = calloc(r->bad ? 1 : argc + 1, sizeof *argv);
  for (uint32_t i = 0; !r->bad && i < argc; i++) argv[i] = get_str(r);
  uint32_t envc = r->bad ? 0 : get_u32(r);
  if (envc > 65536) r->bad = 1;
  char **envp = calloc(r->bad ? 1 : envc + 1, sizeof *envp);
  for (uint32_t i = 0; !r->bad && i < envc; i++) envp[i] = get_str(r);
  if (r->bad || r->n != 0) {
    protocol_error("malformed exec request on channel %u", ch);
    goto out;
  }
  int tty = flags & 1;
  int in_p[2] = {-1, -1}, out_p[2] = {-1, -1}, err_p[2] = {-1, -1}, status_p[2] = {-1, -1};
  int master = -1;
  char slave_name[128];
  if (pipe2(status_p, O_CLOEXEC) < 0) goto fail;
  if (tty) {
    master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0 || grantpt(master) < 0 || unlockpt(master) < 0 || ptsname_r(master, slave_name, sizeof slave_name) != 0) goto fail;
    struct winsize ws = {.ws_row = rows ? rows : 24, .ws_col = cols ? cols : 80};
    ioctl(master, TIOCSWINSZ, &ws);
  } else if (pipe2(in_p, O_CLOEXEC) < 0 || pipe2(out_p, O_CLOEXEC) < 0 || pipe2(err_p, O_CLOEXEC) < 0) {
    goto fail;
  }
  struct child_setup setup = {tty, slave_name, uid, gid, cwd, argv, envp, in_p[0], out_p[1], err_p[1], status_p[1]};
  pid_t pid = start_child(&setup);
  if (pid < 0) goto fail;
  close(status_p[1]);
  status_p[1] = -1;
  char msg[256];
  ssize_t n;
  do n = read(status_p[0], msg, sizeof msg - 1);
  while (n < 0 && errno == EINTR);
  close(status_p[0]);
  if (n > 0) {
    msg[n] = 0;
    int e = atoi(msg);
    const char *stage = strchr(msg, ':') ? strchr(msg, ':') + 1 : "run";
    waitpid(pid, NULL, 0);
    closefd(&master);
    for (int i = 0; i < 2; i++) closefd(&in_p[i]), closefd(&out_p[i]), closefd(&err_p[i]);
    if (!strcmp(stage, "change to the working directory")) send_error(ch, e, "cannot %s %s: %s", stage, cwd, strerror(e));
    else if (!strcmp(stage, "run")) send_error(ch, e, "cannot run %s: %s", argv[0], strerror(e));
    else send_error(ch, e, "cannot %s: %s", stage, strerror(e));
    goto out;
  }
  struct chan *c = chan_new(ch, K_EXEC);
  c->pid = pid;
  c->tty = tty;
  if (tty) {
    set_nonblock(master);
    c->out_fd = master;
    c->in_fd = dup(master);
    fcntl(c->in_fd, F_SETFD, FD_CLOEXEC);
  } else {
    close(in_p[0]), close(out_p[1]), close(err_p[1]);
    c->in_fd = in_p[1], c->out_fd = out_p[0], c->err_fd = err_p[0];
    set_nonblock(c->in_fd), set_nonblock(c->out_fd), set_nonblock(c->err_fd);
  }
  send_u32(A_STARTED, ch, (uint32_t)pid);
  goto out;
fail: {
  int e = errno;
  closefd(&master);
  for (int i = 0; i < 2; i++) closefd(&in_p[i]), closefd(&out_p[i]), closefd(&err_p[i]), closefd(&status_p[i]);
  send_error(ch, e, "cannot start %s: %s", argv[0], strerror(e));
}
out:
  free(cwd);
  for (uint32_t i = 0; argv && argv[i]; i++) free(argv[i]);
  for (uint32_t i = 0; envp && envp[i]; i++) free(envp[i]);
  free(argv);
  free(envp);
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void exec_maybe_finish(struct chan *c) {
  if (!c->exited || c->out_fd >= 0 || c->err_fd >= 0) return;
  send_u32(A_EXIT, c->id, (uint32_t)c->status);
  chan_free(c);
}

/* Move bytes from a child's output into frames, within the channel's credit. Returns 1 if it made progress. */
static int pump_output(struct chan *c, int *fd, uint8_t type) {
  if (*fd < 0 || c->credit == 0 || c->host->out.len >= OUT_HIGH) return 0;
  uint8_t data[CHUNK];
  size_t want = c->credit < CHUNK ? c->credit : CHUNK;
  ssize_t n = read(*fd, data, want);
  if (n > 0) {
    send_frame(type, c->id, data, (size_t)n);
    c->credit -= (uint32_t)n;
    /* What the process left in the pipe is at most a pipe's capacity (1 MiB at the most, see
       pipe-max-size); more means a background process keeps writing, and it must not hold the exit
       status back forever. */
    if (c->exited && (c->after_exit += (uint64_t)n) > (1u << 20) + CHUNK) {
      closefd(fd);
      if (c->tty && fd == &c->out_fd) closefd(&c->in_fd);
      exec_maybe_finish(c);
    }
    return 1;
  }
  if (n < 0 && errno == EINTR) return 1;
  /* EOF, or EIO on a pty whose last slave closed; after the exit, an empty pipe also ends it
     (a background process that keeps the pipe open does not hold the exit status hostage). */
  /* A pty moves the child's last bytes to the master from a kernel work queue: an empty read just
     after the exit may be early, so a terminal gets a short grace before it counts as drained. */
  if (n < 0 && errno == EAGAIN && c->exited && c->tty && now_ms() - c->exited_at < 30) return 0;
  if (n == 0 || errno != EAGAIN || c->exited) {
    closefd(fd);
    if (c->tty && fd == &c->out_fd) closefd(&c->in_fd);
    exec_maybe_finish(c);
    return 1;
  }
  return 0;
}

static void drain_exited(struct chan *c) {
  uint32_t id = c->id;
  for (int i = 0; i < 64; i++) {
    int progressed = 0;
    if (c->out_fd >= 0) progressed |= pump_output(c, &c->out_fd, A_STDOUT);
    if (chan_find(id) != c) return;
    if (c->err_fd >= 0) progressed |= pump_output(c, &c->err_fd, A_STDERR);
    if (chan_find(id) != c) return;
    if (!progressed) break;
  }
  exec_maybe_finish(c);
}

static void pump_input(struct chan *c) {
  if (c->in_fd < 0) {
    if (c->inq.len) {
      send_u32(A_CREDIT, c->id, (uint32_t)c->inq.len);
      c->in_window += (uint32_t)c->inq.len;
      buf_consume(&c->inq, c->inq.len);
    }
    return;
  }
  while (c->inq.len) {
    ssize_t n = write(c->in_fd, c->inq.p + c->inq.off, c->inq.len);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return;
      closefd(&c->in_fd); /* EPIPE: the child closed its stdin; drop the rest */
      pump_input(c);
      return;
    }
    buf_consume(&c->inq, (size_t)n);
    c->in_window += (uint32_t)n;
    send_u32(A_CREDIT, c->id, (uint32_t)n);
  }
  if (c->in_eof == 1) {
    if (c->tty) {
      /* A terminal has no end of input; ^D at the start of a line is what a shell reads as one. */
      uint8_t eot = 4;
      if (write(c->in_fd, &eot, 1) < 0 && errno == EAGAIN) return;
    } else {
      closefd(&c->in_fd);
    }
    c->in_eof = 2;
  }
}

static void forget_served(pid_t pid);
static void handle_serve(uint32_t ch, struct rd *r);

static void reap(void) {
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    forget_served(pid);
    for (struct host *h = hosts; h; h = h->next)
      for (struct chan *c = h->chans; c; c = c->next) {
        if (c->kind != K_EXEC || c->pid != pid) continue;
        c->exited = 1;
        c->exited_at = now_ms();
        c->status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        goto next;
      }
  next:;
  }
}

/* ---------- shutdown ---------- */

static void flush_out_blocking(void) {
  for (struct host *h = hosts; h; h = h->next)
    for (int tries = 0; h->connected && h->out.len && h->conn_out >= 0 && tries < 200; tries++) {
      ssize_t n = write(h->conn_out, h->out.p + h->out.off, h->out.len);
      if (n > 0) buf_consume(&h->out, (size_t)n);
      else if (n < 0 && errno != EAGAIN && errno != EINTR) break;
      else usleep(5000);
    }
}

static void power_off(void) {
  flush_out_blocking();
  drop_all_channels();
  if (!is_pid1) exit(0);
  logmsg("shutting down");
  kill(-1, SIGTERM);
  /* Every process left is our child (orphans are reparented to PID 1): ECHILD means all are gone.
     kill(-1, 0) cannot tell, because kernel threads count as signalable. */
  for (int i = 0; i < 100; i++) {
    pid_t pid;
    while ((pid = waitpid(-1, NULL, WNOHANG)) > 0) {}
    if (pid < 0 && errno == ECHILD) break;
    usleep(20000);
  }
  kill(-1, SIGKILL);
  while (waitpid(-1, NULL, WNOHANG) > 0) {}
  sync();
  reboot(RB_POWER_OFF);
  for (;;) pause();
}

/* ---------- frame dispatch ---------- */

static void handle_frame(uint8_t type, uint32_t ch, const uint8_t *payload, uint32_t len) {
  struct rd r = {payload, len, 0};
  struct chan *c = chan_find(ch);
  switch (type) {
  case H_HELLO: {
    uint32_t version = get_u32(&r), nonce = get_u32(&r);
    (void)version;
    struct buf b = {0};
    put_u32(&b, PROTO_VERSION);
    put_u32(&b, nonce);
#if defined(__x86_64__)
    const char *arch = "x86_64";
#elif defined(__aarch64__)
    const char *arch = "aarch64";
#else
    const char *arch = "unknown";
#endif
    put_str(&b, arch, strlen(arch));
    put_u32(&b, (uint32_t)getpid());
    send_built(A_HELLO, ch, &b);
    return;
  }
  case H_EXEC:
  case H_FILE:
  case H_WATCH:
  case H_SERVE:
    if (ch == 0 || c) {
      protocol_error("channel %u is %s", ch, ch == 0 ? "reserved" : "already in use");
      return;
    }
    if (type == H_EXEC) handle_exec(ch, &r);
    else if (type == H_SERVE) handle_serve(ch, &r);
    else if (type == H_FILE) handle_file(ch, &r);
    else handle_watch(ch, &r);
    return;
  case H_STDIN:
  case H_STDIN_EOF:
    if (!c) return; /* late input for a finished channel */
    if (c->kind != K_EXEC && c->kind != K_WRITE) {
      protocol_error("input on channel %u, which takes none", ch);
      return;
    }
    if (type == H_STDIN_EOF) {
      if (c->kind == K_WRITE) write_finish(c);
      else if (!c->in_eof) c->in_eof = 1, pump_input(c);
      return;
    }
    if (len > c->in_window) {
      protocol_error("channel %u sent %u bytes with %u of credit", ch, len, c->in_window);
      return;
    }
    c->in_window -= len;
    if (c->kind == K_WRITE) {
      for (uint32_t done = 0; done < len;) {
        ssize_t n = write(c->fd, payload + done, len - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
          send_result(ch, errno);
          chan_free(c);
          return;
        }
        done += (uint32_t)n;
      }
      c->in_window += len;
      send_u32(A_CREDIT, ch, len);
    } else {
      buf_put(&c->inq, payload, len);
      pump_input(c);
    }
    return;
  case H_RESIZE: {
    uint16_t rows = get_u16(&r), cols = get_u16(&r);
    if (r.bad) break;
    if (c && c->kind == K_EXEC && c->tty && c->out_fd >= 0) {
      struct winsize ws = {.ws_row = rows, .ws_col = cols};
      ioctl(c->out_fd, TIOCSWINSZ, &ws); /* the kernel sends SIGWINCH to the foreground group */
    }
    return;
  }
  case H_SIGNAL: {
    uint32_t sig = get_u32(&r);
    if (r.bad || sig == 0 || sig >= 65) break;
    if (c && c->kind == K_EXEC && !c->exited) {
      if (kill(-c->pid, (int)sig) < 0) kill(c->pid, (int)sig);
    }
    return;
  }
  case H_CREDIT: {
    uint32_t n = get_u32(&r);
    if (r.bad) break;
    if (c) {
      if ((uint64_t)c->credit + n > WINDOW) {
        protocol_error("channel %u granted credit beyond the window", ch);
        return;
      }
      c->credit += n;
    }
    return;
  }
  case H_CLOSE:
    if (c) chan_free(c);
    return;
  case H_PRUNE: {
    char *rel = get_str(&r);
    if (r.bad || check_rel(rel) < 0) {
      free(rel);
      break;
    }
    if (c && c->kind == K_WATCH) unwatch_prefix(c, rel);
    free(rel);
    return;
  }
  case H_SHUTDOWN:
    send_result(ch, 0);
    power_off();
    return;
  default:
    protocol_error("unknown frame type 0x%02x", type);
    return;
  }
  protocol_error("malformed frame of type 0x%02x on channel %u", type, ch);
}

static void parse_input(void) {
  struct buf *inb = &cur->in;
  while (!cur->poisoned && inb->len >= HDR) {
    const uint8_t *h = inb->p + inb->off;
    uint8_t type = h[0];
    uint32_t ch = (uint32_t)h[1] << 24 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 8 | h[4];
    uint32_t len = (uint32_t)h[5] << 24 | (uint32_t)h[6] << 16 | (uint32_t)h[7] << 8 | h[8];
    if (len > MAX_PAYLOAD) {
      protocol_error("frame of %u bytes exceeds the %u-byte limit", len, MAX_PAYLOAD);
      return;
    }
    if (inb->len < HDR + len) return;
    handle_frame(type, ch, h + HDR, len);
    if (cur->poisoned) return;
    buf_consume(inb, HDR + len);
  }
}

/* ---------- the ports: find, open, and notice when a host connects ---------- */

/* The device node of /sys/class/virtio-ports/NAME, made from its dev file when devtmpfs is missing. */
static int port_node(const char *entry, char *path, size_t size) {
  snprintf(path, size, "/dev/%s", entry);
  if (access(path, F_OK) == 0) return 0;
  char file[PATH_MAX], dev[32] = {0};
  unsigned maj, min;
  snprintf(file, sizeof file, "/sys/class/virtio-ports/%s/dev", entry);
  int fd = open(file, O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    ssize_t n = read(fd, dev, sizeof dev - 1);
    close(fd);
    if (n > 0 && sscanf(dev, "%u:%u", &maj, &min) == 2) mknod(path, S_IFCHR | 0600, makedev(maj, min));
  }
  return access(path, F_OK) == 0 ? 0 : -1;
}

/* Every port whose name is envy.N, into `paths`; returns how many, or -1 until envy.0 is among them. */
static int find_ports(char paths[][PATH_MAX], int max) {
  DIR *d = opendir("/sys/class/virtio-ports");
  if (!d) return -1;
  struct dirent *e;
  int found = 0, first = 0;
  while ((e = readdir(d)) != NULL && found < max) {
    if (e->d_name[0] == '.') continue;
    char file[PATH_MAX], name[64] = {0};
    snprintf(file, sizeof file, "/sys/class/virtio-ports/%s/name", e->d_name);
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ssize_t n = read(fd, name, sizeof name - 1);
    close(fd);
    if (n <= 0 || strncmp(name, "envy.", 5) != 0) continue;
    name[strcspn(name, "\n")] = 0;
    if (port_node(e->d_name, paths[found], PATH_MAX) < 0) continue;
    if (!strcmp(name, "envy.0")) first = 1;
    found++;
  }
  closedir(d);
  return first ? found : -1;
}

static void open_ports(void) {
  static char paths[MAX_PORTS][PATH_MAX];
  int count = 0;
  for (int tries = 0;; tries++) {
    if (n_port_args) {
      count = 0;
      for (int i = 0; i < n_port_args; i++)
        if (access(port_path_args[i], F_OK) == 0) snprintf(paths[count++], PATH_MAX, "%s", port_path_args[i]);
      if (count == n_port_args) break;
    } else if ((count = find_ports(paths, MAX_PORTS)) > 0) {
      break;
    }
    if (tries == 50) logmsg("still waiting for the virtio-serial ports envy.N (%s)", n_port_args ? port_path_args[0] : "/sys/class/virtio-ports");
    usleep(100000);
  }
  for (int i = 0; i < count; i++) {
    int fd = open(paths[i], O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
      logmsg("open %s: %s", paths[i], strerror(errno));
      continue;
    }
    /* The guest kernel sends SIGIO when a host connects to the port (and when data arrives): it
       wakes the loop at once, where the 10 ms poll for a host alone cost up to 10 ms per exec. */
    fcntl(fd, F_SETOWN, getpid());
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_ASYNC);
    host_new(fd, fd, fd);
  }
  if (!hosts) {
    logmsg("no virtio-serial port could be opened");
    exit(1);
  }
}

/* A virtio-serial port reports POLLHUP for as long as no host is connected. */
static int port_host_present(const struct host *h) {
  struct pollfd p = {.fd = h->port_fd, .events = POLLIN};
  if (poll(&p, 1, 0) < 0) return 0;
  return !(p.revents & POLLHUP);
}

/* ---------- serve: a second agent on a port of its own, as a user ---------- */

/* The workspace sync's agent (docs/vm.md): started by this agent in one round trip, instead of a
   root exec and a user exec of shell scripts (each a fork+exec of several programs: hundreds of ms
   under TCG). Remembered per port, so asking again while it runs is answered with its pid. */
#define MAX_SERVED 4
static struct {
  char name[64];
  pid_t pid;
} served[MAX_SERVED];

static void forget_served(pid_t pid) {
  for (int i = 0; i < MAX_SERVED; i++)
    if (served[i].pid == pid) served[i].pid = 0;
}

/* The device of the virtio-serial port called `want`. */
static int find_port_named(const char *want, char *path, size_t size) {
  DIR *d = opendir("/sys/class/virtio-ports");
  if (!d) return -1;
  struct dirent *e;
  int found = -1;
  while (found < 0 && (e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    char file[PATH_MAX], name[64] = {0};
    snprintf(file, sizeof file, "/sys/class/virtio-ports/%s/name", e->d_name);
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ssize_t n = read(fd, name, sizeof name - 1);
    close(fd);
    if (n <= 0) continue;
    name[strcspn(name, "\n")] = 0;
    if (!strcmp(name, want)) found = port_node(e->d_name, path, size);
  }
  closedir(d);
  return found;
}

/* uid u32, gid u32, port name str, dir str: make `dir` (if given) and hand it and the port to the
   user, then run this agent's own binary as that user, in a session of its own, on that port.
   Answers result {errno, pid u32}. */
/* The directories a served agent works in (newline-separated absolute paths: the workspace and the
 * other synced mounts), made with their parents and given to uid:gid. The agent runs as that user and
 * could not make them at the top of the guest's tree itself. Returns 0 or an errno. */
static int make_served_dirs(char *dirs, uint32_t uid, uint32_t gid) {
  for (char *dir = dirs; dir && *dir;) {
    char *end = strchr(dir, '\n');
    if (end) *end = 0;
    int err = -mkdir_p(dir, 0755);
    if (!err && chown(dir, uid, gid) < 0) err = errno;
    if (end) *end = '\n';
    if (err) return err;
    dir = end ? end + 1 : NULL;
  }
  return 0;
}

static void handle_serve(uint32_t ch, struct rd *r) {
  uint32_t uid = get_u32(r), gid = get_u32(r);
  char *name = get_str(r), *dir = get_str(r);
  char port[PATH_MAX];
  int exe = -1, status_p[2] = {-1, -1}, slot = -1;
  if (r->bad || r->n != 0 || !name[0] || strlen(name) >= sizeof served[0].name || uid == UINT32_MAX || gid == UINT32_MAX) {
    protocol_error("malformed serve request on channel %u", ch);
    goto out;
  }
  for (int i = 0; i < MAX_SERVED; i++) {
    if (served[i].pid > 0 && !strcmp(served[i].name, name)) {
      int made = make_served_dirs(dir, uid, gid);
      if (made) {
        send_result(ch, made);
        goto out;
      }
      struct buf b = {0};
      put_u32(&b, 0);
      put_u32(&b, (uint32_t)served[i].pid);
      send_built(A_RESULT, ch, &b);
      goto out;
    }
    if (served[i].pid <= 0 && slot < 0) slot = i;
  }
  int err = 0;
  if (slot < 0) err = EAGAIN;
  else if (find_port_named(name, port, sizeof port) < 0) err = ENOENT;
  else if ((err = make_served_dirs(dir, uid, gid)) != 0) {}
  else if (chown(port, uid, gid) < 0) err = errno;
  else if ((exe = open("/proc/self/exe", O_RDONLY | O_CLOEXEC)) < 0 || pipe2(status_p, O_CLOEXEC) < 0) err = errno;
  if (err) {
    send_result(ch, err);
    goto out;
  }
  pid_t pid = fork();
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    setsid();
    gid_t g = gid;
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) dup2(null, 0), dup2(null, 1);
    if (setgroups(1, &g) == 0 && setgid(g) == 0 && setuid(uid) == 0 && chdir("/") == 0) {
      char *args[] = {"envy-agent", "--port", port, NULL};
      fexecve(exe, args, environ);
    }
    int e = errno;
    ssize_t ignored = write(status_p[1], &e, sizeof e);
    (void)ignored;
    _exit(127);
  }
  if (pid < 0) {
    send_result(ch, errno);
    goto out;
  }
  close(status_p[1]);
  status_p[1] = -1;
  int e = 0;
  ssize_t n;
  do n = read(status_p[0], &e, sizeof e);
  while (n < 0 && errno == EINTR);
  if (n == sizeof e) {
    waitpid(pid, NULL, 0);
    send_result(ch, e);
    goto out;
  }
  snprintf(served[slot].name, sizeof served[slot].name, "%s", name);
  served[slot].pid = pid;
  logmsg("serving %s as %u:%u (pid %d)", name, uid, gid, (int)pid);
  struct buf b = {0};
  put_u32(&b, 0);
  put_u32(&b, (uint32_t)pid);
  send_built(A_RESULT, ch, &b);
out:
  if (exe >= 0) close(exe);
  for (int i = 0; i < 2; i++) closefd(&status_p[i]);
  free(name);
  free(dir);
}

/* ---------- PID 1 duties ---------- */

/* The stage-1 init may have mounted some of these already: a mount point sits on another device than its parent. */
static void mount_if_missing(const char *src, const char *target, const char *type, unsigned long flags, const char *data) {
  struct stat here, parent;
  char up[64];
  mkdir(target, 0755);
  snprintf(up, sizeof up, "%s/..", target);
  if (stat(target, &here) == 0 && stat(up, &parent) == 0 && here.st_dev != parent.st_dev) return;
  if (mount(src, target, type, flags, data) < 0 && errno != EBUSY) logmsg("mount %s on %s: %s", type, target, strerror(errno));
}

static void pid1_setup(void) {
  mount_if_missing("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  mount_if_missing("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  mount_if_missing("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
  mount_if_missing("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666");
  mount_if_missing("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
  mount_if_missing("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
  if (access("/dev/ptmx", F_OK) < 0) symlink("pts/ptmx", "/dev/ptmx");
  /* Loopback up: tools expect localhost even without a network device. */
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s >= 0) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
      ifr.ifr_flags |= IFF_UP;
      ioctl(s, SIOCSIFFLAGS, &ifr);
    }
    close(s);
  }
  reboot(RB_DISABLE_CAD); /* ctrl-alt-del becomes SIGINT to us */
  if (!getenv("PATH")) setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
}

/* ---------- main loop ---------- */

static void usage(void) {
  fprintf(stderr,
          "usage: envy-agent [--port PATH]... | --listen unix:PATH | --stdio\n"
          "  the guest agent of envy's VM backend; see docs/vm-agent.md\n"
          "  default (as PID 1 or with no option): every virtio-serial port named envy.N\n");
  exit(2);
}

static void write_out(struct host *h) {
  if (!h->connected || !h->out.len || h->conn_out < 0) return;
  ssize_t put = write(h->conn_out, h->out.p + h->out.off, h->out.len);
  if (put > 0) buf_consume(&h->out, (size_t)put);
  else if (put < 0 && errno != EAGAIN && errno != EINTR) host_gone(h);
}

static void read_in(struct host *h, short revents) {
  if (h->conn_in < 0) return;
  uint8_t data[CHUNK];
  ssize_t got = read(h->conn_in, data, sizeof data);
  if (got > 0) {
    if (!h->poisoned) {
      buf_put(&h->in, data, (size_t)got);
      cur = h;
      parse_input();
    }
  } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
    host_gone(h);
  } else if (revents & POLLHUP) {
    host_gone(h);
  }
}

int main(int argc, char **argv) {
  const char *listen_path = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--port") && i + 1 < argc && n_port_args < MAX_PORTS) port_path_args[n_port_args++] = argv[++i];
    else if (!strcmp(argv[i], "--listen") && i + 1 < argc && !strncmp(argv[i + 1], "unix:", 5)) listen_path = argv[++i] + 5;
    else if (!strcmp(argv[i], "--stdio")) mode_stdio = 1;
    else usage();
  }
  /* Three descriptors per exec: lift the soft limit for the agent, and give children the original
     back (select() users break above 1024). */
  getrlimit(RLIMIT_NOFILE, &child_nofile);
  struct rlimit mine = child_nofile;
  mine.rlim_cur = mine.rlim_max;
  setrlimit(RLIMIT_NOFILE, &mine);
  is_pid1 = getpid() == 1;
  if (is_pid1) pid1_setup();
  signal(SIGPIPE, SIG_IGN);
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGHUP);
  sigaddset(&mask, SIGIO);
  sigprocmask(SIG_BLOCK, &mask, NULL);
  sig_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  if (sig_fd < 0) {
    logmsg("signalfd: %s", strerror(errno));
    return 1;
  }

  if (mode_stdio) {
    set_nonblock(0), set_nonblock(1);
    host_new(0, 1, -1)->connected = 1;
  } else if (listen_path) {
    listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(listen_path) >= sizeof addr.sun_path) {
      logmsg("socket path too long: %s", listen_path);
      return 2;
    }
    strcpy(addr.sun_path, listen_path);
    unlink(listen_path);
    if (bind(listen_fd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(listen_fd, 16) < 0) {
      logmsg("listen on %s: %s", listen_path, strerror(errno));
      return 1;
    }
  } else {
    open_ports();
  }

  for (;;) {
    int waiting_port = 0;
    for (struct host *h = hosts; h; h = h->next) {
      if (h->port_fd >= 0 && !h->connected) {
        if (port_host_present(h)) h->connected = 1;
        else waiting_port = 1;
      }
    }

    /* 0 conn-in, 1 conn-out, 2 listen, 3 signals, 10 child in, 11 child out, 12 child err, 13 watch */
    static struct pollfd *pfds;
    static struct chan **owner;
    static struct host **hostof;
    static int *which;
    static size_t cap;
    size_t need = 3;
    for (struct host *h = hosts; h; h = h->next) {
      need += 2;
      for (struct chan *c = h->chans; c; c = c->next) need += 3;
    }
    if (need > cap) {
      cap = need * 2;
      pfds = xrealloc(pfds, cap * sizeof *pfds);
      owner = xrealloc(owner, cap * sizeof *owner);
      hostof = xrealloc(hostof, cap * sizeof *hostof);
      which = xrealloc(which, cap * sizeof *which);
    }
    nfds_t n = 0;
#define ADD(fd_, ev_, who_, c_, h_) \
  do { \
    pfds[n] = (struct pollfd){.fd = (fd_), .events = (ev_)}, which[n] = (who_), owner[n] = (c_), hostof[n] = (h_), n++; \
  } while (0)
    ADD(sig_fd, POLLIN, 3, NULL, NULL);
    if (listen_fd >= 0) ADD(listen_fd, POLLIN, 2, NULL, NULL);
    int busy = 0, grace = 0;
    for (struct host *h = hosts; h; h = h->next) {
      if (h->connected) {
        ADD(h->conn_in, POLLIN, 0, NULL, h);
        if (h->out.len) ADD(h->conn_out, POLLOUT, 1, NULL, h);
      }
      for (struct chan *c = h->chans; c; c = c->next) {
        if (c->kind == K_EXEC) {
          int room = c->credit > 0 && h->out.len < OUT_HIGH;
          if (c->in_fd >= 0 && (c->inq.len || c->in_eof == 1)) ADD(c->in_fd, POLLOUT, 10, c, h);
          if (c->out_fd >= 0 && room) ADD(c->out_fd, POLLIN, 11, c, h);
          if (c->err_fd >= 0 && room) ADD(c->err_fd, POLLIN, 12, c, h);
          if (c->exited && room) {
            if (c->tty) grace = 1;
            else busy = 1;
          }
        } else if (c->kind == K_WATCH) {
          ADD(c->fd, POLLIN, 13, c, h);
        } else if ((c->kind == K_READ && c->credit > 0 && h->out.len < OUT_HIGH) || c->kind == K_HASH) {
          busy = 1;
        }
      }
    }
    int timeout = busy ? 0 : grace ? 5 : waiting_port ? 10 : -1;
    int ready = poll(pfds, n, timeout);
    if (ready < 0 && errno != EINTR) {
      logmsg("poll: %s", strerror(errno));
      usleep(10000);
      continue;
    }

    for (nfds_t i = 0; ready > 0 && i < n; i++) {
      if (!pfds[i].revents) continue;
      struct chan *c = owner[i];
      struct host *h = hostof[i];
      if (c) {
        /* Channels freed earlier in this pass must not be touched. */
        int fd = pfds[i].fd;
        if (!chan_live(c) || (fd != c->in_fd && fd != c->out_fd && fd != c->err_fd && fd != c->fd)) continue;
      }
      /* A host that went earlier in this pass has no connection to serve. */
      if (h && !h->connected) continue;
      cur = h;
      switch (which[i]) {
      case 3: {
        struct signalfd_siginfo si;
        while (read(sig_fd, &si, sizeof si) == sizeof si) {
          if (si.ssi_signo == SIGCHLD) reap();
          else if (si.ssi_signo == SIGIO) continue; /* a port's host came or data arrived: the loop looks */
          else if (si.ssi_signo == SIGTERM || (si.ssi_signo == SIGINT && is_pid1)) power_off();
          else if (!is_pid1) {
            drop_all_channels();
            exit(0);
          }
        }
        break;
      }
      case 2: {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) host_new(fd, fd, -1)->connected = 1;
        break;
      }
      case 0:
        read_in(h, pfds[i].revents);
        break;
      case 1:
        write_out(h);
        break;
      case 10:
        pump_input(c);
        break;
      case 11:
        pump_output(c, &c->out_fd, A_STDOUT);
        break;
      case 12:
        pump_output(c, &c->err_fd, A_STDERR);
        break;
      case 13:
        service_watch(c);
        break;
      }
    }

    /* Work that poll does not announce: draining exited children, reading and hashing files. */
    for (struct host *h = hosts; h; h = h->next) {
      cur = h;
      for (struct chan *c = h->chans, *next; c; c = next) {
        next = c->next;
        if (c->kind == K_EXEC && c->exited) {
          drain_exited(c);
        } else if (c->kind == K_READ && c->credit > 0 && h->out.len < OUT_HIGH) {
          uint8_t data[CHUNK];
          size_t want = c->credit < CHUNK ? c->credit : CHUNK;
          ssize_t got = read(c->fd, data, want);
          if (got > 0) {
            send_frame(A_DATA, c->id, data, (size_t)got);
            c->credit -= (uint32_t)got;
          } else if (got == 0 || errno != EINTR) {
            send_result(c->id, got == 0 ? 0 : errno);
            chan_free(c);
          }
        } else if (c->kind == K_HASH) {
          uint8_t data[CHUNK];
          ssize_t got = read(c->fd, data, sizeof data);
          if (got > 0) {
            sha256_update(&c->sha, data, (size_t)got);
          } else if (got == 0) {
            char hex[65];
            sha256_hex(&c->sha, hex);
            struct buf b = {0};
            put_u32(&b, 0);
            put_str(&b, hex, 64);
            send_built(A_RESULT, c->id, &b);
            chan_free(c);
          } else if (errno != EINTR) {
            send_result(c->id, errno);
            chan_free(c);
          }
        }
      }
      /* Write eagerly: most frames fit the socket buffer and need no extra poll round. */
      write_out(h);
      /* A socket host that broke the protocol is told why, then disconnected; a port waits for its host to go. */
      if (h->poisoned && !h->out.len && h->connected && h->port_fd < 0) host_gone(h);
    }
    cur = NULL;
    remove_gone_hosts();
  }
}
