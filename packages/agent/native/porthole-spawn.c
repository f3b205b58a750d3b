/*
 * porthole-spawn: starts commands for the Porthole guest agent and carries
 * their stdio.
 *
 * Why a helper: fork() copies the page tables of the whole process, and under
 * emulation (QEMU TCG) a fork of the agent, a Node process of ~60 MiB, costs
 * ~13 ms per command; so does wrapping each command's pipes in Node streams.
 * This process is a few hundred KiB, starts each command with vfork() and
 * multiplexes every command's stdin, stdout and stderr over its own stdin and
 * stdout. The agent does everything else (policy, users, timeouts, signals).
 *
 * Records both ways: u32 length (little-endian) of what follows, u8 type,
 * u32 id (little-endian), payload.
 * agent -> helper
 *   'S' start: fields each ended by NUL: flags ("i": a stdin pipe, else
 *       /dev/null), uid, gid (decimal, or empty to keep the helper's), cwd
 *       (empty: keep), path, argc, argv[0..argc-1], then the environment
 *   'I' bytes for the command's stdin          -> 'W' once written (or dropped)
 *   'C' close the command's stdin
 *   'A' u8 fd (1, 2): the last 'O' of that fd was taken, send more
 *   'D' close the command's output pipes (the agent stopped reading them)
 * helper -> agent
 *   'R' id = protocol version, once at start
 *   'P' u32 pid: started          'F' u32 errno: not started (nothing follows)
 *   'O' u8 fd + bytes: output     'E' u8 fd: that output ended
 *   'W' stdin bytes written       'X' i32 exit code (-1 if killed), u32 signal
 * 'P' is held back up to START_HOLD_MS, with the 'E's that come meanwhile (a command's pipes end just
 * before it exits), and sent at once before its output or exit: a command that ends within it (most of
 * what an agent runs: true, test, cat of a small file) reaches the agent in one batch of records, start
 * to exit, which the agent reads and answers the host in one turn.
 * Each output has one 'O' in flight, of everything its pipe held (up to
 * OUTPUT_CHUNK): a command whose output the agent does not take is held by its
 * full pipe, not buffered here. The helper ends when its
 * stdin ends; the commands keep running.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROTOCOL 1
/* argv + environment are limited by the kernel to a few MiB anyway. */
#define MAX_RECORD (16u << 20)
/* Bytes per 'O' record: one record per protocol message the agent sends (its CHUNK_SIZE). */
#define OUTPUT_CHUNK (128 * 1024)
/* Kernel buffer of each output pipe and of the helper's own stdout: a command writing in small
 * pieces (head, cat: 8 KiB) goes on while a record is in flight, and the next read takes all of it. */
#define PIPE_BYTES (1024 * 1024)
/* How long a start waits for the command's output or end to go with it (see the top). */
#define START_HOLD_MS 20
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

struct command {
  struct command *next;
  uint32_t id;
  pid_t pid;
  int start_held;  /* 'P' not sent yet: it goes at start_due, or before any other record of the command */
  int held_ends;   /* bit fd: that output ended while the start was held; its 'E' follows the 'P' */
  long long start_due;
  int exited;
  int in;          /* stdin pipe, -1 once closed */
  int close_in;    /* 'C' came while stdin bytes were still queued */
  char *pending;   /* stdin bytes of the last 'I' not yet written */
  size_t pending_len, pending_off;
  int out[3];      /* [1], [2]: stdout, stderr pipes, -1 once ended */
  int waiting[3];  /* an 'O' of that fd is in flight */
};
static struct command *commands;

static void fatal(const char *what) {
  fprintf(stderr, "porthole-spawn: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void write_all(const void *data, size_t len) {
  for (size_t off = 0; off < len;) {
    ssize_t w = write(1, (const char *)data + off, len - off);
    if (w < 0 && errno == EINTR) continue;
    /* The agent is gone: nobody to work for. */
    if (w <= 0) exit(0);
    off += w;
  }
}

/* Records for the agent are gathered and written once per turn of the loop: a command's
 * start, outputs, ends and exit reach the agent in as few reads (and wake-ups) as possible. */
static char *outbox;
static size_t outbox_len, outbox_cap;

static void send_record(char type, uint32_t id, const void *payload, size_t len) {
  if (outbox_cap - outbox_len < 9 + len) {
    while (outbox_cap - outbox_len < 9 + len) outbox_cap = outbox_cap ? outbox_cap * 2 : 1 << 16;
    if (!(outbox = realloc(outbox, outbox_cap))) fatal("realloc");
  }
  uint32_t n = 5 + len;
  char *at = outbox + outbox_len;
  memcpy(at, &n, 4);
  at[4] = type;
  memcpy(at + 5, &id, 4);
  if (len) memcpy(at + 9, payload, len);
  outbox_len += 9 + len;
}

static void flush_records(void) {
  write_all(outbox, outbox_len);
  outbox_len = 0;
}

static void send_u32(char type, uint32_t id, uint32_t value) {
  send_record(type, id, &value, 4);
}

static long long now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000LL + t.tv_nsec / 1000000;
}

/* Sends the held 'P' of c, if any: every other record of a command comes after its start. */
static void release_start(struct command *c) {
  if (!c->start_held) return;
  c->start_held = 0;
  send_u32('P', c->id, c->pid);
  for (char fd = 1; fd <= 2; fd++)
    if (c->held_ends & (1 << fd)) send_record('E', c->id, &fd, 1);
  c->held_ends = 0;
}

static struct command *find(uint32_t id) {
  for (struct command *c = commands; c; c = c->next)
    if (c->id == id) return c;
  return NULL;
}

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

static void close_stdin(struct command *c) {
  release_start(c);
  close_fd(&c->in);
  free(c->pending);
  c->pending = NULL;
  if (c->pending_len) send_record('W', c->id, NULL, 0);
  c->pending_len = c->pending_off = 0;
}

/* A command is forgotten once it exited and both outputs ended; 1 when c was freed. */
static int forget_if_done(struct command *c) {
  if (!c->exited || c->out[1] >= 0 || c->out[2] >= 0) return 0;
  close_stdin(c);
  for (struct command **p = &commands; *p; p = &(*p)->next) {
    if (*p != c) continue;
    *p = c->next;
    free(c);
    return 1;
  }
  return 0;
}

/* The executable for a bare name, searched in the command's own PATH as execvp would. */
static int resolve(const char *name, char **env, char *out, size_t size) {
  if (strchr(name, '/')) return (size_t)snprintf(out, size, "%s", name) >= size ? ENAMETOOLONG : 0;
  const char *path = DEFAULT_PATH;
  for (char **e = env; *e; e++)
    if (!strncmp(*e, "PATH=", 5)) path = *e + 5;
  int err = ENOENT;
  for (const char *p = path;; p++) {
    const char *end = strchrnul(p, ':');
    size_t len = end - p;
    struct stat st;
    /* An empty PATH entry means the current directory. */
    if (len + strlen(name) + 2 <= size) {
      snprintf(out, size, "%.*s%s%s", (int)len, len ? p : "", len ? "/" : "", name);
      if (stat(out, &st) == 0 && S_ISREG(st.st_mode)) {
        if (access(out, X_OK) == 0) return 0;
        err = EACCES;
      }
    }
    if (!*end) return err;
    p = end;
  }
}

static int parse_id(const char *s, long *out) {
  if (!*s) return 0;
  char *end;
  errno = 0;
  *out = strtol(s, &end, 10);
  return !*end && !errno && *out >= 0 ? 1 : -1;
}

struct child_spec {
  const char *exe;
  char **argv, **env;
  const char *cwd;
  int has_uid, has_gid;
  long uid, gid;
  int stdio[3];
  volatile int *err;
};

/* Signals this process ignores (SIGPIPE, and any it was started with ignored): a command starts with
 * every signal at its default, and exec resets only caught ones, so these are reset in the child, not
 * all 64 (a system call each, ~5 µs apiece under emulation). */
static int ignored[NSIG], n_ignored;

static void note_ignored_signals(void) {
  for (int s = 1; s < NSIG; s++) {
    struct sigaction old;
    if (sigaction(s, NULL, &old) == 0 && old.sa_handler == SIG_IGN) ignored[n_ignored++] = s;
  }
}

/* The vforked child, in a frame of its own so that nothing it spills can land in
 * a frame the parent resumes with. Never returns. */
__attribute__((noinline, noreturn)) static void run_child(const struct child_spec *c) {
  sigset_t none;
  sigemptyset(&none);
  for (int i = 0; i < n_ignored; i++) signal(ignored[i], SIG_DFL);
  sigprocmask(SIG_SETMASK, &none, NULL);
  /* Its own session and process group, so the agent can signal everything it starts. */
  if (setsid() < 0) goto failed;
  /* As Node's spawn does: no supplementary groups once a user or group is chosen. */
  if (c->has_uid || c->has_gid) (void)setgroups(0, NULL);
  if (c->has_gid && setgid(c->gid)) goto failed;
  if (c->has_uid && setuid(c->uid)) goto failed;
  if (*c->cwd && chdir(c->cwd)) goto failed;
  for (int i = 0; i < 3; i++)
    if (dup2(c->stdio[i], i) < 0) goto failed;
  execve(c->exe, c->argv, c->env);
failed:
  *c->err = errno;
  _exit(127);
}

/* vfork() in a frame that holds nothing but c: the caller keeps no values across it. */
__attribute__((noinline)) static pid_t vfork_child(const struct child_spec *c) {
  pid_t pid = vfork();
  if (pid == 0) run_child(c);
  return pid;
}

/* Starts the command; its errno when it cannot be started. */
static int start(uint32_t id, char **f, int nf) {
  if (nf < 6 || find(id)) return EINVAL;
  long uid = -1, gid = -1, argc = strtol(f[5], NULL, 10);
  int has_uid = parse_id(f[1], &uid), has_gid = parse_id(f[2], &gid);
  if (has_uid < 0 || has_gid < 0 || argc < 1 || argc > nf - 6) return EINVAL;
  char **argv = calloc(argc + 1, sizeof *argv), **env = calloc(nf - 6 - argc + 1, sizeof *env);
  struct command *cmd = calloc(1, sizeof *cmd);
  if (!argv || !env || !cmd) fatal("calloc");
  memcpy(argv, f + 6, argc * sizeof *argv);
  memcpy(env, f + 6 + argc, (nf - 6 - argc) * sizeof *env);

  char exe[PATH_MAX];
  int err = resolve(f[4], env, exe, sizeof exe);
  /* [0..2]: the helper's ends (stdin write, stdout read, stderr read); [3..5]: the command's. */
  int fds[6] = {-1, -1, -1, -1, -1, -1}, p[2];
  if (!err && strchr(f[0], 'i')) {
    if (pipe2(p, O_CLOEXEC)) err = errno;
    else fds[0] = p[1], fds[3] = p[0];
  } else if (!err && (fds[3] = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0) {
    err = errno;
  }
  for (int i = 1; i <= 2 && !err; i++) {
    if (pipe2(p, O_CLOEXEC)) err = errno;
    else fds[i] = p[0], fds[i + 3] = p[1], (void)fcntl(p[0], F_SETPIPE_SZ, PIPE_BYTES); /* best effort: the default also works */
  }
  pid_t pid = -1;
  if (!err) {
    volatile int child_err = 0;
    struct child_spec spec = {exe, argv, env, f[3], has_uid > 0, has_gid > 0, uid, gid, {fds[3], fds[4], fds[5]}, &child_err};
    pid = vfork_child(&spec);
    if (pid < 0) err = errno;
    else if (child_err) {
      err = child_err;
      waitpid(pid, NULL, 0);
    }
  }
  for (int i = 3; i < 6; i++) close_fd(&fds[i]);
  free(argv);
  free(env);
  if (err) {
    for (int i = 0; i < 3; i++) close_fd(&fds[i]);
    free(cmd);
    return err;
  }
  /* Non-blocking on the helper's side only: one slow command must not stall the others. */
  for (int i = 0; i < 3; i++)
    if (fds[i] >= 0) fcntl(fds[i], F_SETFL, O_NONBLOCK);
  cmd->id = id;
  cmd->pid = pid;
  cmd->in = fds[0];
  cmd->out[0] = -1, cmd->out[1] = fds[1], cmd->out[2] = fds[2];
  cmd->next = commands;
  commands = cmd;
  cmd->start_held = 1;
  cmd->start_due = now_ms() + START_HOLD_MS;
  return 0;
}

static void write_stdin(struct command *c) {
  while (c->pending_off < c->pending_len) {
    ssize_t w = write(c->in, c->pending + c->pending_off, c->pending_len - c->pending_off);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && errno == EAGAIN) return; /* polled for POLLOUT */
    if (w < 0) { /* EPIPE: the command closed its stdin; the rest is dropped */
      close_stdin(c);
      return;
    }
    c->pending_off += w;
  }
  free(c->pending);
  c->pending = NULL;
  c->pending_len = c->pending_off = 0;
  send_record('W', c->id, NULL, 0);
  if (c->close_in) close_stdin(c);
}

/* Reads what an output's pipe holds (up to OUTPUT_CHUNK) into one record; 1 when it ended the
 * command's last output and c was freed. */
static int read_output(struct command *c, int fd) {
  static char buf[OUTPUT_CHUNK + 1];
  size_t got = 0;
  ssize_t r = 0;
  while (got < OUTPUT_CHUNK) {
    r = read(c->out[fd], buf + 1 + got, OUTPUT_CHUNK - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += r;
  }
  if (got) { /* an end or error after data is read again at the next poll */
    release_start(c);
    buf[0] = fd;
    c->waiting[fd] = 1;
    send_record('O', c->id, buf, got + 1);
    return 0;
  }
  if (r < 0 && errno == EAGAIN) return 0;
  close_fd(&c->out[fd]);
  if (c->start_held) {
    c->held_ends |= 1 << fd;
    return 0; /* not done: it has not exited, or the start would have gone */
  }
  char which = fd;
  send_record('E', c->id, &which, 1);
  return forget_if_done(c);
}

static void reap(int sfd) {
  struct signalfd_siginfo si;
  while (read(sfd, &si, sizeof si) == sizeof si) {}
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    struct command *c = commands;
    while (c && c->pid != pid) c = c->next;
    if (!c || !(WIFEXITED(status) || WIFSIGNALED(status))) continue;
    int32_t result[2] = {WIFEXITED(status) ? WEXITSTATUS(status) : -1, WIFSIGNALED(status) ? WTERMSIG(status) : 0};
    c->exited = 1;
    release_start(c);
    send_record('X', c->id, result, sizeof result);
    /* Nobody reads the stdin of an ended command (its group may still, through an inherited pipe: not ours to feed). */
    close_stdin(c);
    forget_if_done(c);
  }
}

static void handle(char type, uint32_t id, char *payload, uint32_t len) {
  struct command *c = find(id);
  switch (type) {
  case 'S': {
    if (!len || payload[len - 1] != '\0') {
      send_u32('F', id, EINVAL);
      return;
    }
    int nf = 0;
    for (uint32_t i = 0; i < len; i++) nf += payload[i] == '\0';
    char **f = malloc(nf * sizeof *f);
    if (!f) fatal("malloc");
    for (int i = 0, off = 0; i < nf; i++) f[i] = payload + off, off += strlen(payload + off) + 1;
    int err = start(id, f, nf);
    free(f);
    if (err) send_u32('F', id, err);
    return;
  }
  case 'I':
    if (!c || c->in < 0 || c->pending) { /* gone, closed, or the agent did not wait for 'W' */
      send_record('W', id, NULL, 0);
      return;
    }
    if (!(c->pending = malloc(len ? len : 1))) fatal("malloc");
    memcpy(c->pending, payload, len);
    c->pending_len = len;
    c->pending_off = 0;
    write_stdin(c);
    return;
  case 'C':
    if (c && c->pending) c->close_in = 1;
    else if (c) close_stdin(c);
    return;
  case 'A':
    if (c && len == 1 && (payload[0] == 1 || payload[0] == 2)) c->waiting[(int)payload[0]] = 0;
    return;
  case 'D':
    if (!c) return;
    close_fd(&c->out[1]);
    close_fd(&c->out[2]);
    forget_if_done(c);
    return;
  default:
    fprintf(stderr, "porthole-spawn: unknown record type %d\n", type);
    exit(2);
  }
}

/* Handles every complete record in buf[0..len); returns the bytes consumed. */
static size_t records(char *buf, size_t len) {
  size_t used = 0;
  while (len - used >= 4) {
    uint32_t n, id;
    memcpy(&n, buf + used, 4);
    if (n < 5 || n > MAX_RECORD) {
      fprintf(stderr, "porthole-spawn: bad record length %u\n", n);
      exit(2);
    }
    if (len - used - 4 < n) break;
    memcpy(&id, buf + used + 5, 4);
    handle(buf[used + 4], id, buf + used + 9, n - 5);
    used += 4 + n;
  }
  return used;
}

int main(int argc, char **argv) {
  if (argc > 1) {
    if (!strcmp(argv[1], "--version")) {
      printf("porthole-spawn protocol %d\n", PROTOCOL);
      return 0;
    }
    fprintf(stderr, "usage: porthole-spawn [--version]\n"
                    "Started by porthole-agent, which talks to it over stdin and stdout.\n");
    return 2;
  }
  /* A write to a gone agent or command fails with EPIPE instead of killing the helper. */
  signal(SIGPIPE, SIG_IGN);
  note_ignored_signals();
  (void)fcntl(1, F_SETPIPE_SZ, PIPE_BYTES);
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  if (sigprocmask(SIG_BLOCK, &chld, NULL)) fatal("sigprocmask");
  int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0) fatal("signalfd");
  send_record('R', PROTOCOL, NULL, 0);

  size_t cap = 1 << 16, len = 0, nfds = 16;
  char *buf = malloc(cap);
  struct pollfd *fds = malloc(nfds * sizeof *fds);
  struct command **owner = malloc(nfds * sizeof *owner);
  if (!buf || !fds || !owner) fatal("malloc");
  for (;;) {
    size_t n = 2;
    int timeout = -1;
    long long now = now_ms();
    for (struct command *c = commands; c; c = c->next) {
      if (!c->start_held) continue;
      if (c->start_due <= now) release_start(c);
      else if (timeout < 0 || c->start_due - now < timeout) timeout = (int)(c->start_due - now);
    }
    fds[0] = (struct pollfd){.fd = 0, .events = POLLIN};
    fds[1] = (struct pollfd){.fd = sfd, .events = POLLIN};
    for (struct command *c = commands; c; c = c->next) {
      if (n + 3 > nfds) {
        nfds *= 2;
        if (!(fds = realloc(fds, nfds * sizeof *fds)) || !(owner = realloc(owner, nfds * sizeof *owner))) fatal("realloc");
      }
      for (int fd = 1; fd <= 2; fd++)
        if (c->out[fd] >= 0 && !c->waiting[fd]) owner[n] = c, fds[n++] = (struct pollfd){.fd = c->out[fd], .events = POLLIN};
      if (c->pending) owner[n] = c, fds[n++] = (struct pollfd){.fd = c->in, .events = POLLOUT};
    }
    flush_records();
    if (poll(fds, n, timeout) < 0) {
      if (errno == EINTR) continue;
      fatal("poll");
    }
    /* Outputs before exits: the output a command wrote reaches the agent before its exit status. */
    for (size_t i = 2; i < n; i++) {
      if (!fds[i].revents) continue;
      struct command *c = owner[i];
      if (fds[i].fd == c->in) write_stdin(c);
      else if (read_output(c, fds[i].fd == c->out[1] ? 1 : 2))
        for (size_t j = i + 1; j < n; j++) /* c is freed: its later entries are stale */
          if (owner[j] == c) fds[j].revents = 0;
    }
    if (fds[1].revents) reap(sfd);
    if (fds[0].revents) {
      if (cap - len < (1 << 16)) {
        cap *= 2;
        if (cap > MAX_RECORD * 2 || !(buf = realloc(buf, cap))) fatal("record buffer");
      }
      ssize_t r = read(0, buf + len, cap - len);
      if (r < 0 && errno != EINTR) fatal("read");
      if (r == 0) {
        flush_records();
        return 0;
      }
      if (r > 0) {
        len += r;
        size_t used = records(buf, len);
        memmove(buf, buf + used, len - used);
        len -= used;
      }
    }
  }
}
