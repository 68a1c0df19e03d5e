/*
 * envy-init: PID 1 of envy's VM initramfs (stage 1). Built statically for each
 * guest architecture by scripts/build.mjs; the host side (src/runtime/vm/initramfs.ts)
 * packs it as /init with the kernel modules the root disk and the agent channel need,
 * and /envy/init.conf, which tells it what to do:
 *
 *   module /modules/NN-name.ko   loaded with finit_module, in file order (the host
 *                                 computed the dependency order from the modules'
 *                                 .modinfo `depends=`: the Debian .deb has no modules.dep)
 *   root /dev/vda                 the ext4 root disk (virtio-blk)
 *   agent /envy/agent             copied to /run/envy/agent in the new root and exec'd as
 *                                 PID 1 with `--port /dev/vportNpM` for each of its ports
 *   port envy.0                   the virtio-serial port name the host listens on
 *   agent-port envy.1             more ports for the agent (one per concurrent host connection)
 *   hostname NAME                 (ENVY_HOSTNAME=NAME on the kernel command line wins)
 *   net 10.0.2.15/24 10.0.2.2     eth0's address and gateway (qemu user networking)
 *   boot-port envy-boot           stop at the boot gate (boot_gate below) once the modules are
 *                                 loaded, before the root disk is mounted: the host may save the
 *                                 machine there and later boots resume from that saved state
 *
 * Without an agent in the initramfs it runs a fallback: the command given on the kernel
 * command line after `--` (as init's argv), or else /bin/sh reading the agent port, each
 * as a child it waits for (the shell again each time it ends, the command once). SIGUSR2 or
 * SIGTERM to PID 1 (or the command ending) stops every process, remounts / read-only and powers
 * off, so qemu exits with a clean disk. Everything it says goes to /dev/console (the serial
 * log) prefixed with `envy-init:`.
 */
#define _GNU_SOURCE
#define MAX_AGENT_PORTS 31
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/random.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CONF "/envy/init.conf"
#define NEWROOT "/newroot"
#define MAX_MODULES 64
#define WAIT_DEVICE_MS 10000

static void say(const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if (n > (int)sizeof buf - 2) n = sizeof buf - 2;
  buf[n++] = '\n';
  ssize_t w = write(2, "envy-init: ", 11);
  w = write(2, buf, n);
  (void)w;
}

static void halt_now(void) {
  sync();
  reboot(RB_POWER_OFF);
  for (;;) pause();
}

static void die(const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  say("fatal: %s", buf);
  halt_now();
}

static void mkdirs(const char *path, mode_t mode) {
  char tmp[512];
  snprintf(tmp, sizeof tmp, "%s", path);
  for (char *p = tmp + 1; *p; p++) {
    if (*p != '/') continue;
    *p = 0;
    mkdir(tmp, 0755);
    *p = '/';
  }
  mkdir(tmp, mode);
}

static void must_mount(const char *src, const char *target, const char *type, unsigned long flags, const char *data) {
  mkdirs(target, 0755);
  if (mount(src, target, type, flags, data) != 0) die("mount %s on %s (%s): %s", src, target, type, strerror(errno));
}

static void soft_mount(const char *src, const char *target, const char *type, unsigned long flags, const char *data) {
  mkdirs(target, 0755);
  if (mount(src, target, type, flags, data) != 0) say("warning: mount %s on %s: %s", type, target, strerror(errno));
}

static long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
  nanosleep(&ts, NULL);
}

static bool wait_path(const char *path, long timeout_ms) {
  long deadline = now_ms() + timeout_ms;
  while (access(path, F_OK) != 0) {
    if (now_ms() > deadline) return false;
    sleep_ms(5);
  }
  return true;
}

static void load_module(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) die("open module %s: %s", path, strerror(errno));
  if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST) die("load module %s: %s", path, strerror(errno));
  close(fd);
  unlink(path); /* the initramfs is RAM: give it back */
}

/* /sys/class/virtio-ports/vportNpM/name holds the name the host gave the port. */
static bool find_port(const char *name, char *out, size_t size, long timeout_ms) {
  long deadline = now_ms() + timeout_ms;
  for (;;) {
    DIR *dir = opendir("/sys/class/virtio-ports");
    if (dir) {
      struct dirent *entry;
      while ((entry = readdir(dir))) {
        if (entry->d_name[0] == '.') continue;
        char path[300], value[128] = {0};
        snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", entry->d_name);
        int fd = open(path, O_RDONLY);
        if (fd < 0) continue;
        ssize_t n = read(fd, value, sizeof value - 1);
        close(fd);
        while (n > 0 && (value[n - 1] == '\n' || value[n - 1] == 0)) value[--n] = 0;
        if (n > 0 && strcmp(value, name) == 0) {
          snprintf(out, size, "/dev/%s", entry->d_name);
          closedir(dir);
          return wait_path(out, timeout_ms);
        }
      }
      closedir(dir);
    }
    if (now_ms() > deadline) return false;
    sleep_ms(5);
  }
}

static void copy_file(const char *from, const char *to, mode_t mode) {
  int in = open(from, O_RDONLY | O_CLOEXEC);
  if (in < 0) die("open %s: %s", from, strerror(errno));
  int out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (out < 0) die("create %s: %s", to, strerror(errno));
  char buf[65536];
  ssize_t n;
  while ((n = read(in, buf, sizeof buf)) > 0) {
    for (ssize_t off = 0; off < n;) {
      ssize_t w = write(out, buf + off, n - off);
      if (w < 0) die("write %s: %s", to, strerror(errno));
      off += w;
    }
  }
  if (n < 0) die("read %s: %s", from, strerror(errno));
  fchmod(out, mode);
  close(in);
  close(out);
}

static void set_flags_up(int sock, const char *ifname) {
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
  if (ioctl(sock, SIOCGIFFLAGS, &ifr) == 0) {
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(sock, SIOCSIFFLAGS, &ifr) != 0) say("warning: %s up: %s", ifname, strerror(errno));
  }
}

/* lo always; eth0 with a static address for qemu's user network (no DHCP client needed). */
static void setup_network(const char *cidr, const char *gateway) {
  int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (sock < 0) return;
  set_flags_up(sock, "lo");
  if (cidr && *cidr) {
    char addr[64];
    snprintf(addr, sizeof addr, "%s", cidr);
    int prefix = 24;
    char *slash = strchr(addr, '/');
    if (slash) {
      *slash = 0;
      prefix = atoi(slash + 1);
    }
    wait_path("/sys/class/net/eth0", 2000);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, IFNAMSIZ, "eth0");
    struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
    sin->sin_family = AF_INET;
    inet_pton(AF_INET, addr, &sin->sin_addr);
    if (ioctl(sock, SIOCSIFADDR, &ifr) != 0) say("warning: eth0 address: %s", strerror(errno));
    sin->sin_addr.s_addr = prefix == 0 ? 0 : htonl(~0u << (32 - prefix));
    if (ioctl(sock, SIOCSIFNETMASK, &ifr) != 0) say("warning: eth0 netmask: %s", strerror(errno));
    set_flags_up(sock, "eth0");
    if (gateway && *gateway) {
      struct rtentry route;
      memset(&route, 0, sizeof route);
      struct sockaddr_in *gw = (struct sockaddr_in *)&route.rt_gateway;
      gw->sin_family = AF_INET;
      inet_pton(AF_INET, gateway, &gw->sin_addr);
      ((struct sockaddr_in *)&route.rt_dst)->sin_family = AF_INET;
      ((struct sockaddr_in *)&route.rt_genmask)->sin_family = AF_INET;
      route.rt_flags = RTF_UP | RTF_GATEWAY;
      if (ioctl(sock, SIOCADDRT, &route) != 0) say("warning: default route: %s", strerror(errno));
    }
  }
  close(sock);
}

/*
 * The boot gate: where a VM's saved machine state is taken and resumed (docs/vm.md, "Saved boot
 * state"). Everything before this point is the same for every environment of a configuration
 * (kernel, initramfs, modules, device probe), nothing has read the root disk's contents beyond the
 * kernel's probe, and nothing has drawn on the random pool for something that must differ per boot.
 * init tells the host `ready` on the port and waits for `go NS SEED HOSTNAME HOW`; the host may save
 * the machine in between (the guest, blocked in read(), sees nothing). A resumed copy of that machine
 * wakes up in the same read() on another qemu and gets its own go. What differs per boot is set
 * from it: the wall clock (a resumed guest's clock reads the time of the save), the random pool
 * (reseeded from the host, or every resumed copy would draw the same numbers), the hostname, and
 * the root disk's cached blocks (the probe read another environment's disk).
 * Returns the milliseconds waited, so the boot's own figures can leave them out.
 */
static long boot_gate(const char *port_name, const char *root, char *hostname, size_t hostname_size) {
  long entered = now_ms();
  char port[300];
  if (!find_port(port_name, port, sizeof port, 5000)) die("no virtio-serial port named %s", port_name);
  int fd = open(port, O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) die("open %s: %s", port, strerror(errno));
  /* The port reports POLLHUP until the host is connected: a `ready` written before would be lost. */
  for (;;) {
    struct pollfd p = {fd, POLLOUT, 0};
    if (poll(&p, 1, 100) > 0 && !(p.revents & POLLHUP) && (p.revents & POLLOUT)) break;
    sleep_ms(5);
  }
  if (write(fd, "ready\n", 6) != 6) die("write %s: %s", port, strerror(errno));
  char line[512];
  size_t used = 0;
  for (;;) {
    ssize_t n = read(fd, line + used, sizeof line - 1 - used);
    if (n < 0 && errno != EINTR) die("read %s: %s", port, strerror(errno));
    /* 0: the host went away (a resumed machine sees the saving host leave); the next one writes go. */
    if (n <= 0) {
      sleep_ms(5);
      continue;
    }
    used += n;
    line[used] = 0;
    if (strchr(line, '\n') || used == sizeof line - 1) break;
  }
  close(fd);
  long long ns = 0;
  char seed_hex[129] = "", name[65] = "", how[16] = "";
  if (sscanf(line, "go %lld %128s %64s %15s", &ns, seed_hex, name, how) != 4) die("boot gate: unexpected message from the host: %.80s", line);
  struct timespec wall = {ns / 1000000000LL, ns % 1000000000LL};
  if (clock_settime(CLOCK_REALTIME, &wall) != 0) say("warning: setting the clock: %s", strerror(errno));
  struct {
    int entropy_count;
    int buf_size;
    unsigned char buf[64];
  } entropy = {0, 0, {0}};
  for (size_t i = 0; i + 1 < sizeof seed_hex && seed_hex[i] && seed_hex[i + 1] && entropy.buf_size < (int)sizeof entropy.buf; i += 2) {
    unsigned int byte;
    if (sscanf(seed_hex + i, "%2x", &byte) != 1) break;
    entropy.buf[entropy.buf_size++] = (unsigned char)byte;
  }
  entropy.entropy_count = entropy.buf_size * 8;
  int pool = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
  /* Mixing in alone would not change what the kernel's generator hands out until its next periodic
   * reseed: RNDRESEEDCRNG makes it draw from the pool now. */
  if (pool < 0 || ioctl(pool, RNDADDENTROPY, &entropy) != 0 || ioctl(pool, RNDRESEEDCRNG) != 0) die("reseeding the random pool: %s", strerror(errno));
  close(pool);
  if (strcmp(name, "-") != 0) snprintf(hostname, hostname_size, "%s", name);
  int disk = open(root, O_RDONLY | O_CLOEXEC);
  if (disk < 0 || ioctl(disk, BLKFLSBUF, 0) != 0) die("dropping %s's cached blocks: %s", root, strerror(errno));
  close(disk);
  long waited = now_ms() - entered;
  say("boot gate passed (%s) after %ld ms", how, waited);
  return waited;
}

static void stop_everything(void) {
  kill(-1, SIGTERM);
  long deadline = now_ms() + 3000;
  while (now_ms() < deadline) {
    if (waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD) break;
    sleep_ms(10);
  }
  kill(-1, SIGKILL);
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
  sync();
  /* Read-only before power-off: the ext4 journal is clean on the next boot. */
  if (mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL) != 0) say("warning: remount / read-only: %s", strerror(errno));
}

static volatile sig_atomic_t poweroff_requested = 0;

static void on_poweroff(int sig) {
  (void)sig;
  poweroff_requested = 1;
}

int main(int argc, char **argv) {
  if (getpid() != 1) {
    fprintf(stderr, "envy-init: must run as PID 1 of a VM's initramfs\n");
    return 2;
  }
  mkdirs("/dev", 0755);
  if (mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755") != 0 && errno != EBUSY) die("mount devtmpfs: %s", strerror(errno));
  int console = open("/dev/console", O_RDWR | O_NOCTTY);
  if (console >= 0) {
    dup2(console, 0);
    dup2(console, 1);
    dup2(console, 2);
    if (console > 2) close(console);
  }
  must_mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  must_mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);

  static char agent_ports[MAX_AGENT_PORTS][64];
  int agent_port_count = 0;
  char root[128] = "/dev/vda", boot_port[64] = "", agent[256] = "", port_name[64] = "envy.0", hostname[65] = "", net_addr[64] = "", net_gw[64] = "";
  char *modules[MAX_MODULES];
  int module_count = 0;
  FILE *conf = fopen(CONF, "r");
  if (!conf) die("%s: %s", CONF, strerror(errno));
  char line[512];
  while (fgets(line, sizeof line, conf)) {
    line[strcspn(line, "\r\n")] = 0;
    char *value = strchr(line, ' ');
    if (!value) continue;
    *value++ = 0;
    if (strcmp(line, "module") == 0 && module_count < MAX_MODULES) modules[module_count++] = strdup(value);
    else if (strcmp(line, "root") == 0) snprintf(root, sizeof root, "%s", value);
    else if (strcmp(line, "agent") == 0) snprintf(agent, sizeof agent, "%s", value);
    else if (strcmp(line, "port") == 0) snprintf(port_name, sizeof port_name, "%s", value);
    else if (strcmp(line, "agent-port") == 0 && agent_port_count < MAX_AGENT_PORTS) snprintf(agent_ports[agent_port_count++], 64, "%s", value);
    else if (strcmp(line, "hostname") == 0) snprintf(hostname, sizeof hostname, "%s", value);
    else if (strcmp(line, "net") == 0) sscanf(value, "%63s %63s", net_addr, net_gw);
    else if (strcmp(line, "boot-port") == 0) snprintf(boot_port, sizeof boot_port, "%s", value);
  }
  fclose(conf);

  /* Per-environment settings come on the kernel command line (the initramfs is shared per image):
   * the kernel hands NAME=VALUE words it does not know to init as environment variables. */
  const char *env_hostname = getenv("ENVY_HOSTNAME");
  if (env_hostname && *env_hostname) snprintf(hostname, sizeof hostname, "%s", env_hostname);

  long started = now_ms();
  for (int i = 0; i < module_count; i++) load_module(modules[i]);
  if (!wait_path(root, WAIT_DEVICE_MS)) die("the root disk %s did not appear within %d ms", root, WAIT_DEVICE_MS);
  long gated = boot_port[0] ? boot_gate(boot_port, root, hostname, sizeof hostname) : 0;
  must_mount(root, NEWROOT, "ext4", 0, NULL);
  /* CLOCK_MONOTONIC counts from the kernel's start: `started` is the kernel's own share of the boot. */
  say("%d modules loaded and %s mounted in %ld ms (the kernel took %ld ms to start init)", module_count, root, now_ms() - started - gated, started);

  /* The new root's pseudo filesystems; /dev moves along so device nodes stay. */
  soft_mount("proc", NEWROOT "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  soft_mount("sysfs", NEWROOT "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  mkdirs(NEWROOT "/dev", 0755);
  if (mount("/dev", NEWROOT "/dev", NULL, MS_MOVE, NULL) != 0) die("move /dev: %s", strerror(errno));
  soft_mount("devpts", NEWROOT "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5");
  unlink(NEWROOT "/dev/ptmx");
  if (symlink("pts/ptmx", NEWROOT "/dev/ptmx") != 0 && errno != EEXIST) say("warning: /dev/ptmx: %s", strerror(errno));
  soft_mount("shm", NEWROOT "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
  soft_mount("tmpfs", NEWROOT "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
  soft_mount("tmpfs", NEWROOT "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
  if (agent[0]) {
    mkdirs(NEWROOT "/run/envy", 0700);
    copy_file(agent, NEWROOT "/run/envy/agent", 0755);
  }
  umount("/proc");
  umount("/sys");

  if (chdir(NEWROOT) != 0 || mount(".", "/", NULL, MS_MOVE, NULL) != 0 || chroot(".") != 0 || chdir("/") != 0) {
    die("switching to the new root: %s", strerror(errno));
  }
  if (hostname[0] && sethostname(hostname, strlen(hostname)) != 0) say("warning: hostname: %s", strerror(errno));
  setup_network(net_addr, net_gw);
  setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
  setenv("HOME", "/root", 1);

  char port[300] = "";
  bool have_port = find_port(port_name, port, sizeof port, 5000);
  if (agent[0]) {
    if (!have_port) die("no virtio-serial port named %s", port_name);
    static char paths[MAX_AGENT_PORTS][300];
    char *args[2 * MAX_AGENT_PORTS + 4];
    int n = 0;
    args[n++] = "envy-agent";
    args[n++] = "--port";
    args[n++] = port;
    for (int i = 0; i < agent_port_count; i++) {
      /* All ports of the device are announced together: they are there once envy.0 is. */
      if (!find_port(agent_ports[i], paths[i], sizeof paths[i], 1000)) {
        say("warning: no virtio-serial port named %s", agent_ports[i]);
        continue;
      }
      args[n++] = "--port";
      args[n++] = paths[i];
    }
    args[n] = NULL;
    say("starting the agent on %s and %d more ports, %ld ms after the kernel started", port, (n - 3) / 2, now_ms());
    execv("/run/envy/agent", args);
    die("exec /run/envy/agent: %s", strerror(errno));
  }

  /* The fallback without an agent: a kernel-command-line command (one shot: power off when it
   * ends), or a shell reading command lines from the agent port, started again if it dies, until
   * SIGUSR2 asks for power-off. */
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_poweroff;
  sigaction(SIGUSR2, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  bool one_shot = argc > 1;
  if (!one_shot && !have_port) die("no agent, no command and no port named %s: nothing to run", port_name);
  int status = 0;
  while (!poweroff_requested) {
    pid_t child = fork();
    if (child < 0) die("fork: %s", strerror(errno));
    if (child == 0) {
      signal(SIGUSR2, SIG_DFL);
      signal(SIGTERM, SIG_DFL);
      setsid();
      if (one_shot) {
        execvp(argv[1], argv + 1);
        say("exec %s: %s", argv[1], strerror(errno));
        _exit(127);
      }
      int fd = open(port, O_RDWR | O_NOCTTY);
      if (fd < 0) _exit(1);
      dup2(fd, 0);
      dup2(fd, 1);
      dup2(fd, 2);
      if (fd > 2) close(fd);
      /* One process keeps the port open for the VM's life: the driver discards what is queued
       * on a port when its last reader closes it, so a shell that exited at a disconnect and
       * a new one opening it would lose the next command. `read` sees EOF while no host is
       * connected: wait and read again. */
      execl("/bin/sh", "sh", "-c", "while :; do if IFS= read -r line; then eval \"$line\"; else sleep 0.1; fi; done", (char *)NULL);
      _exit(127);
    }
    for (;;) {
      pid_t pid = wait(&status);
      if (pid == child) break;
      if (pid < 0 && errno == EINTR && poweroff_requested) break;
      if (pid < 0 && errno != EINTR) break;
    }
    if (one_shot) {
      if (WIFEXITED(status)) say("command exited with %d", WEXITSTATUS(status));
      else if (WIFSIGNALED(status)) say("command killed by signal %d", WTERMSIG(status));
      break;
    }
    if (!poweroff_requested) sleep_ms(100);
  }
  say("powering off");
  stop_everything();
  halt_now();
  return 0;
}
