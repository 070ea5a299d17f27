/*
 * The containment probe: run inside an imsctl sandbox (one-shot customize, jobs shell/exec, an
 * SSH session; jailed or not; as root or rootless), it tries every route from a customization
 * to the host that we know of and prints one line per route:
 *
 *     ROUTE <name>: refused (<why>)
 *     ROUTE <name>: OPEN (<what got through>)
 *
 * and `PROBE DONE` at the end. The test (tests/it/containment.rs) asserts that every expected
 * route was tried and none is OPEN. Built static by the test with the host's gcc.
 *
 * Arguments (key=value):
 *   marker=/tmp/imsctl-probe-X/marker   a host file holding `secret`: no route may reach it
 *   secret-reversed=S                   the secret planted in the host's files and in imsctl's
 *                                       environment, reversed (so that this process's own
 *                                       command line does not hold it)
 *   hostpid=N                           a host process (outside the sandbox's pid namespace)
 *   blockdev=MAJ:MIN                    the host's root disk
 *   caps=HEX                            the bounding set every process inside may have at most
 *   hidden=PATH (repeatable)            host paths the sandbox must not show
 *
 * Any route found later is added here, with its own line.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/reboot.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/swap.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>
#include <linux/if_ether.h>
#include <netinet/in.h>

static const char *marker = "";
static const char *secret = "";
static pid_t host_pid = 0;
static unsigned blk_major = 0, blk_minor = 0;
static unsigned long long allowed_caps = 0;
static const char *hidden[16];
static int n_hidden = 0;
static int open_routes = 0;

static void refused(const char *route, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void opened(const char *route, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#include <stdarg.h>
static void refused(const char *route, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("ROUTE %s: refused (", route);
    vprintf(fmt, ap);
    printf(")\n");
    va_end(ap);
    fflush(stdout);
}

static void opened(const char *route, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("ROUTE %s: OPEN (", route);
    vprintf(fmt, ap);
    printf(")\n");
    va_end(ap);
    fflush(stdout);
    open_routes++;
}

/* A refusal as the syscall's errno, or OPEN when it succeeded. */
static void expect_fail(const char *route, long rc, const char *what) {
    if (rc == -1)
        refused(route, "%s: %s", what, strerror(errno));
    else
        opened(route, "%s succeeded", what);
}

/* Whether the host marker (relative path `rel`) is reachable below directory fd `dir`. */
static int marker_below(int dir, const char *rel) {
    char buf[256];
    int fd = openat(dir, rel, O_RDONLY | O_NOFOLLOW);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    return strstr(buf, secret) != NULL;
}

/* Walk up from `path` (a directory reached through /proc) and look for the marker at each
 * level; returns 1 when the host was reached, -1 when the path could not be opened. */
static int walk_up_from(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return -1;
    const char *rel = marker[0] == '/' ? marker + 1 : marker;
    for (int level = 0; level < 64; level++) {
        if (marker_below(fd, rel)) {
            close(fd);
            return 1;
        }
        int up = openat(fd, "..", O_RDONLY | O_DIRECTORY);
        close(fd);
        if (up < 0)
            return 0;
        fd = up;
    }
    close(fd);
    return 0;
}

static int is_pid(const char *name) {
    if (!*name)
        return 0;
    for (const char *p = name; *p; p++)
        if (*p < '0' || *p > '9')
            return 0;
    return 1;
}

/* Every /proc/<pid>/fd/N, cwd and root that can be opened as a directory is walked up. */
static void route_proc_links(void) {
    int tried = 0, openable = 0, reached = 0;
    char reached_at[700] = "";
    DIR *procs = opendir("/proc");
    if (!procs) {
        refused("proc-fd-walk", "no /proc: %s", strerror(errno));
        refused("proc-cwd-root-walk", "no /proc");
        return;
    }
    struct dirent *p;
    int cwd_tried = 0, cwd_open = 0, cwd_reached = 0;
    while ((p = readdir(procs))) {
        if (!is_pid(p->d_name))
            continue;
        char path[512];
        snprintf(path, sizeof path, "/proc/%s/fd", p->d_name);
        DIR *fds = opendir(path);
        if (fds) {
            struct dirent *f;
            while ((f = readdir(fds))) {
                if (!is_pid(f->d_name))
                    continue;
                char fdpath[600];
                snprintf(fdpath, sizeof fdpath, "/proc/%s/fd/%s", p->d_name, f->d_name);
                tried++;
                int r = walk_up_from(fdpath);
                if (r >= 0)
                    openable++;
                if (r == 1) {
                    reached++;
                    snprintf(reached_at, sizeof reached_at, "%s", fdpath);
                }
            }
            closedir(fds);
        }
        const char *links[] = {"cwd", "root"};
        for (int i = 0; i < 2; i++) {
            snprintf(path, sizeof path, "/proc/%s/%s", p->d_name, links[i]);
            cwd_tried++;
            int r = walk_up_from(path);
            if (r >= 0)
                cwd_open++;
            if (r == 1) {
                cwd_reached++;
                snprintf(reached_at, sizeof reached_at, "%s", path);
            }
        }
    }
    closedir(procs);
    if (reached)
        opened("proc-fd-walk", "host marker reached from %s", reached_at);
    else
        refused("proc-fd-walk", "%d descriptors, %d directories opened, none leads to the host",
                tried, openable);
    if (cwd_reached)
        opened("proc-cwd-root-walk", "host marker reached from %s", reached_at);
    else
        refused("proc-cwd-root-walk", "%d cwd/root links, %d opened, none leads to the host",
                cwd_tried, cwd_open);
}

static void route_proc1_links(void) {
    char buf[512];
    const char *links[] = {"/proc/1/root", "/proc/1/cwd", "/proc/1/exe", "/proc/1/fd/0"};
    int got = 0;
    char what[600] = "";
    for (int i = 0; i < 4; i++) {
        ssize_t n = readlink(links[i], buf, sizeof buf - 1);
        if (n >= 0) {
            buf[n] = 0;
            /* pid 1's own root and cwd are the sandbox's "/" in any case; its exe is a host file. */
            if (i == 2 || i == 3) {
                got++;
                snprintf(what, sizeof what, "%s -> %s", links[i], buf);
            }
        }
    }
    if (got)
        opened("pid1-links", "%s", what);
    else
        refused("pid1-links", "/proc/1/exe and /proc/1/fd/* unreadable: pid 1 is not dumpable");
    const char *rel = marker[0] == '/' ? marker + 1 : marker;
    char p[600];
    snprintf(p, sizeof p, "/proc/1/root/%s", rel);
    int fd = open(p, O_RDONLY);
    if (fd >= 0) {
        opened("pid1-root", "%s opened", p);
        close(fd);
    } else {
        refused("pid1-root", "%s: %s", p, strerror(errno));
    }
}

static void route_chroot_escape(void) {
    pid_t child = fork();
    if (child == 0) {
        mkdir("/tmp/.probe-chroot", 0700);
        if (chroot("/tmp/.probe-chroot") != 0)
            _exit(2);
        for (int i = 0; i < 64; i++)
            if (chdir("..") != 0)
                break;
        if (chroot(".") != 0)
            _exit(3);
        int fd = open(marker, O_RDONLY);
        _exit(fd >= 0 ? 1 : 0);
    }
    int status = 0;
    waitpid(child, &status, 0);
    rmdir("/tmp/.probe-chroot");
    if (WIFEXITED(status) && WEXITSTATUS(status) == 1)
        opened("chroot-escape", "the host marker is reachable after a chroot break-out");
    else
        refused("chroot-escape", "the namespace's root is the sandbox's (exit %d)",
                WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

static void route_ptrace(void) {
    if (ptrace(PTRACE_ATTACH, 1, 0, 0) == 0) {
        waitpid(1, NULL, __WALL);
        ptrace(PTRACE_DETACH, 1, 0, 0);
        opened("ptrace-pid1", "attached to pid 1");
    } else {
        refused("ptrace-pid1", "PTRACE_ATTACH pid 1: %s", strerror(errno));
    }
    /* Every other process we can see (not ourselves). */
    DIR *procs = opendir("/proc");
    int tried = 0, attached = 0;
    pid_t me = getpid(), victim = 0;
    struct dirent *p;
    while (procs && (p = readdir(procs))) {
        if (!is_pid(p->d_name))
            continue;
        pid_t pid = atoi(p->d_name);
        if (pid == me || pid == 1)
            continue;
        tried++;
        if (ptrace(PTRACE_ATTACH, pid, 0, 0) == 0) {
            attached++;
            victim = pid;
            waitpid(pid, NULL, __WALL);
            ptrace(PTRACE_DETACH, pid, 0, 0);
        }
    }
    if (procs)
        closedir(procs);
    /* A child of our own, the easiest target there is. */
    pid_t child = fork();
    if (child == 0) {
        pause();
        _exit(0);
    }
    tried++;
    if (ptrace(PTRACE_ATTACH, child, 0, 0) == 0) {
        attached++;
        victim = child;
        waitpid(child, NULL, __WALL);
        ptrace(PTRACE_DETACH, child, 0, 0);
    }
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    if (attached)
        opened("ptrace-siblings", "attached to pid %d", victim);
    else
        refused("ptrace-siblings", "%d processes, none could be attached", tried);
    char buf[16];
    struct iovec local = {buf, sizeof buf}, remote = {(void *)0x400000, sizeof buf};
    expect_fail("process-vm-read-pid1", syscall(SYS_process_vm_readv, 1, &local, 1, &remote, 1, 0),
                "process_vm_readv pid 1");
}

static void route_mounts(void) {
    expect_fail("mount-tmpfs", mount("none", "/tmp", "tmpfs", 0, NULL), "mount tmpfs on /tmp");
    expect_fail("mount-bind", mount("/", "/tmp", NULL, MS_BIND | MS_REC, NULL), "bind / on /tmp");
    expect_fail("mount-remount-rw", mount(NULL, "/proc/sys", NULL, MS_REMOUNT | MS_BIND, NULL),
                "remount /proc/sys read-write");
    expect_fail("umount-proc", umount2("/proc", MNT_DETACH), "umount /proc");
    expect_fail("fsopen", syscall(SYS_fsopen, "tmpfs", 0), "fsopen tmpfs");
    expect_fail("open-tree", syscall(SYS_open_tree, AT_FDCWD, "/", 1 /* OPEN_TREE_CLONE */),
                "open_tree /");
    expect_fail("pivot-root", syscall(SYS_pivot_root, ".", "."), "pivot_root");
}

static void route_namespaces(void) {
    pid_t child = fork();
    if (child == 0)
        _exit(unshare(CLONE_NEWUSER) == 0 ? 1 : 0);
    int st = 0;
    waitpid(child, &st, 0);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 1)
        opened("unshare-user", "a new user namespace was made");
    else
        refused("unshare-user", "unshare(CLONE_NEWUSER) failed");
    child = fork();
    if (child == 0)
        _exit(unshare(CLONE_NEWNS) == 0 ? 1 : 0);
    waitpid(child, &st, 0);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 1)
        opened("unshare-mount", "a new mount namespace was made");
    else
        refused("unshare-mount", "unshare(CLONE_NEWNS) failed");
    long rc = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (rc == 0)
        _exit(0);
    if (rc > 0) {
        waitpid(rc, NULL, 0);
        opened("clone-newuser", "clone(CLONE_NEWUSER) made pid %ld", rc);
    } else {
        refused("clone-newuser", "clone(CLONE_NEWUSER): %s", strerror(errno));
    }
    int fd = open("/proc/1/ns/mnt", O_RDONLY);
    if (fd < 0) {
        refused("setns", "/proc/1/ns/mnt: %s", strerror(errno));
    } else {
        expect_fail("setns", setns(fd, 0), "setns /proc/1/ns/mnt");
        close(fd);
    }
}

static void route_kernel(void) {
    expect_fail("init-module", syscall(SYS_init_module, "", 0, ""), "init_module");
    expect_fail("finit-module", syscall(SYS_finit_module, -1, "", 0), "finit_module");
    expect_fail("delete-module", syscall(SYS_delete_module, "loop", O_NONBLOCK), "delete_module");
    expect_fail("kexec-load", syscall(SYS_kexec_load, 0, 0, NULL, 0), "kexec_load");
    expect_fail("reboot", syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2,
                                  LINUX_REBOOT_CMD_CAD_OFF, NULL),
                "reboot(CAD_OFF)");
    expect_fail("swapon", swapon("/nonexistent-swap", 0), "swapon");
    expect_fail("bpf", syscall(SYS_bpf, 0 /* BPF_MAP_CREATE */, NULL, 0), "bpf");
    expect_fail("keyctl", syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -3, 0), "keyctl");
    expect_fail("open-by-handle-at", syscall(SYS_open_by_handle_at, AT_FDCWD, NULL, O_RDONLY),
                "open_by_handle_at");
#ifdef SYS_iopl
    expect_fail("iopl", syscall(SYS_iopl, 3), "iopl");
#endif
    expect_fail("settimeofday", syscall(SYS_settimeofday, NULL, NULL), "settimeofday");
    expect_fail("sethostname", sethostname("probe-was-here", 14), "sethostname");
}

static void route_devices(void) {
    if (!blk_major && !blk_minor) {
        refused("mknod-host-disk", "no host disk given");
        return;
    }
    const char *dirs[] = {"/tmp", "/dev", "/dev/shm", "/run", "/var", "/root", "/mnt/image"};
    int made = 0;
    char where[600] = "";
    for (unsigned i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        char node[256];
        snprintf(node, sizeof node, "%s/.probe-disk", dirs[i]);
        if (mknod(node, S_IFBLK | 0600, makedev(blk_major, blk_minor)) != 0)
            continue;
        made++;
        int fd = open(node, O_RDONLY);
        if (fd >= 0) {
            char buf[512];
            ssize_t n = read(fd, buf, sizeof buf);
            close(fd);
            unlink(node);
            opened("mknod-host-disk", "%s (%u:%u) opened, read %zd bytes", node, blk_major,
                   blk_minor, n);
            return;
        }
        snprintf(where, sizeof where, "%s: %s", node, strerror(errno));
        unlink(node);
    }
    refused("mknod-host-disk", "made in %d places, opened in none (%s)", made, where);
    /* A host kernel device the host's device policy surely lets through (/dev/full, 1:7): a
     * node of it made in the image must not open either (the image root and /dev are nodev). */
    made = 0;
    for (unsigned i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        char node[256];
        snprintf(node, sizeof node, "%s/.probe-full", dirs[i]);
        if (mknod(node, S_IFCHR | 0666, makedev(1, 7)) != 0)
            continue;
        made++;
        int fd = open(node, O_RDWR);
        if (fd >= 0) {
            close(fd);
            unlink(node);
            opened("mknod-open-device", "%s (1:7) made and opened", node);
            return;
        }
        snprintf(where, sizeof where, "%s: %s", node, strerror(errno));
        unlink(node);
    }
    refused("mknod-open-device", "made in %d places, opened in none (%s)", made, where);
    const char *host_devs[] = {"/dev/mem", "/dev/kmem", "/dev/port", "/dev/sda", "/dev/vda",
                               "/dev/nvme0n1", "/dev/loop0", "/dev/kmsg", "/dev/fuse"};
    for (unsigned i = 0; i < sizeof host_devs / sizeof host_devs[0]; i++) {
        int fd = open(host_devs[i], O_RDONLY);
        if (fd >= 0) {
            close(fd);
            opened("host-devices", "%s opened", host_devs[i]);
            return;
        }
    }
    refused("host-devices", "no host disk, memory or loop device opens in /dev");
}

static void route_network(void) {
    int s = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (s >= 0) {
        close(s);
        opened("raw-packet-socket", "AF_PACKET socket opened");
    } else {
        refused("raw-packet-socket", "AF_PACKET: %s", strerror(errno));
    }
    s = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
    if (s >= 0) {
        close(s);
        opened("raw-ip-socket", "SOCK_RAW socket opened");
    } else {
        refused("raw-ip-socket", "SOCK_RAW: %s", strerror(errno));
    }
}

static void route_kill_host(void) {
    if (!host_pid) {
        refused("kill-host-pid", "no host pid given");
        return;
    }
    expect_fail("kill-host-pid", kill(host_pid, 0), "kill(host pid, 0)");
}

/* Search every /proc/<pid>/{environ,cmdline} we can read, and our own environment. */
static void route_environ(void) {
    int readable = 0, found = 0;
    char where[400] = "";
    DIR *procs = opendir("/proc");
    struct dirent *p;
    while (procs && (p = readdir(procs))) {
        if (!is_pid(p->d_name))
            continue;
        const char *files[] = {"environ", "cmdline"};
        for (int i = 0; i < 2; i++) {
            char path[300];
            snprintf(path, sizeof path, "/proc/%s/%s", p->d_name, files[i]);
            int fd = open(path, O_RDONLY);
            if (fd < 0)
                continue;
            static char buf[1 << 16];
            ssize_t n = read(fd, buf, sizeof buf - 1);
            close(fd);
            if (n < 0)
                continue;
            readable++;
            for (ssize_t j = 0; j < n; j++)
                if (!buf[j])
                    buf[j] = '\n';
            buf[n] = 0;
            if (strstr(buf, secret)) {
                found++;
                snprintf(where, sizeof where, "%s", path);
            }
        }
    }
    if (procs)
        closedir(procs);
    extern char **environ;
    for (char **e = environ; *e; e++)
        if (strstr(*e, secret)) {
            found++;
            snprintf(where, sizeof where, "own environment");
        }
    if (found)
        opened("environ-secret", "the caller's secret is in %s", where);
    else
        refused("environ-secret", "%d environ/cmdline files read, no secret", readable);
}

static void route_host_paths(void) {
    int fd = open(marker, O_RDONLY);
    if (fd >= 0) {
        close(fd);
        opened("host-marker-read", "%s is visible", marker);
    } else {
        refused("host-marker-read", "%s: %s", marker, strerror(errno));
    }
    char dir[512];
    snprintf(dir, sizeof dir, "%s", marker);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = 0;
    char written[600];
    snprintf(written, sizeof written, "%s/written-from-inside", dir);
    fd = open(written, O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd >= 0) {
        close(fd);
        opened("host-marker-write", "%s created", written);
    } else {
        refused("host-marker-write", "%s: %s", written, strerror(errno));
    }
    for (int i = 0; i < n_hidden; i++) {
        char name[64];
        snprintf(name, sizeof name, "hidden-path-%d", i);
        struct stat st;
        if (lstat(hidden[i], &st) == 0)
            opened(name, "%s is visible", hidden[i]);
        else
            refused(name, "%s: %s", hidden[i], strerror(errno));
    }
}

static void route_terminal(void) {
    char c = 'x';
    int tried = 0;
    for (int fd = 0; fd < 3; fd++) {
        if (!isatty(fd))
            continue;
        tried++;
        if (ioctl(fd, TIOCSTI, &c) == 0) {
            opened("tiocsti", "a keystroke was pushed into terminal fd %d", fd);
            return;
        }
    }
    int tty = open("/dev/tty", O_RDWR);
    if (tty >= 0) {
        tried++;
        if (ioctl(tty, TIOCSTI, &c) == 0) {
            close(tty);
            opened("tiocsti", "a keystroke was pushed into /dev/tty");
            return;
        }
        close(tty);
    }
    /* With no terminal at all, check the filter refuses the request on any descriptor. */
    if (ioctl(1, TIOCSTI, &c) == 0) {
        opened("tiocsti", "TIOCSTI accepted on stdout");
        return;
    }
    refused("tiocsti", "%d terminals, TIOCSTI refused: %s", tried, strerror(errno));
}

static void route_kernel_files(void) {
    const char *rw[] = {"/proc/sysrq-trigger", "/proc/sys/kernel/hostname",
                        "/sys/kernel/mm/transparent_hugepage/enabled", "/proc/sys/vm/drop_caches"};
    for (unsigned i = 0; i < sizeof rw / sizeof rw[0]; i++) {
        int fd = open(rw[i], O_WRONLY);
        if (fd >= 0) {
            close(fd);
            opened("kernel-knobs-write", "%s opened for writing", rw[i]);
            return;
        }
    }
    refused("kernel-knobs-write", "/proc/sys, sysrq-trigger and /sys are read-only");
    int fd = open("/proc/kcore", O_RDONLY);
    char buf[64];
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf) : -1;
    if (fd >= 0)
        close(fd);
    if (n > 0)
        opened("proc-kcore", "read %zd bytes of kernel memory", n);
    else
        refused("proc-kcore", "masked or unreadable");
}

static unsigned long long status_hex(const char *text, const char *field) {
    const char *p = strstr(text, field);
    return p ? strtoull(p + strlen(field), NULL, 16) : ~0ULL;
}

static long status_num(const char *text, const char *field) {
    const char *p = strstr(text, field);
    return p ? strtol(p + strlen(field), NULL, 10) : -1;
}

/* Every visible process: bounding set within the allowed one, no_new_privs, seccomp. */
static void route_privileges(void) {
    DIR *procs = opendir("/proc");
    struct dirent *p;
    int checked = 0;
    while (procs && (p = readdir(procs))) {
        if (!is_pid(p->d_name))
            continue;
        char path[300];
        snprintf(path, sizeof path, "/proc/%s/status", p->d_name);
        int fd = open(path, O_RDONLY);
        if (fd < 0)
            continue;
        char buf[8192];
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0)
            continue;
        buf[n] = 0;
        unsigned long long bnd = status_hex(buf, "CapBnd:\t");
        unsigned long long eff = status_hex(buf, "CapEff:\t");
        long nnp = status_num(buf, "NoNewPrivs:\t");
        long seccomp = status_num(buf, "Seccomp:\t");
        checked++;
        if ((bnd & ~allowed_caps) || (eff & ~allowed_caps) || nnp != 1 || seccomp != 2) {
            opened("process-privileges",
                   "pid %s: CapBnd %llx CapEff %llx NoNewPrivs %ld Seccomp %ld (allowed %llx)",
                   p->d_name, bnd, eff, nnp, seccomp, allowed_caps);
            closedir(procs);
            return;
        }
    }
    if (procs)
        closedir(procs);
    refused("process-privileges",
            "%d processes (pid 1 included): bounding set within %llx, no_new_privs, seccomp",
            checked, allowed_caps);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq)
            continue;
        *eq = 0;
        const char *k = argv[i], *v = eq + 1;
        if (!strcmp(k, "marker"))
            marker = v;
        else if (!strcmp(k, "secret-reversed")) {
            size_t len = strlen(v);
            char *s = malloc(len + 1);
            for (size_t j = 0; j < len; j++)
                s[j] = v[len - 1 - j];
            s[len] = 0;
            secret = s;
        }
        else if (!strcmp(k, "hostpid"))
            host_pid = atoi(v);
        else if (!strcmp(k, "blockdev"))
            sscanf(v, "%u:%u", &blk_major, &blk_minor);
        else if (!strcmp(k, "caps"))
            allowed_caps = strtoull(v, NULL, 16);
        else if (!strcmp(k, "hidden") && n_hidden < 16)
            hidden[n_hidden++] = v;
    }
    if (!*marker || !*secret) {
        fprintf(stderr, "probe: marker= and secret-reversed= are needed\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    route_proc_links();
    route_proc1_links();
    route_chroot_escape();
    route_ptrace();
    route_mounts();
    route_namespaces();
    route_kernel();
    route_devices();
    route_network();
    route_kill_host();
    route_environ();
    route_host_paths();
    route_terminal();
    route_kernel_files();
    route_privileges();
    printf("PROBE DONE %d open\n", open_routes);
    return 0;
}
