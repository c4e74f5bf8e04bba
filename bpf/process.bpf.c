/* procsentry kernel sensor: process exec, fork and exit from the scheduler tracepoints.
 *
 * Loaded by monitor/sensors/bpf/loader.py with bcc. Rules this file keeps:
 *  - Capture, do not interpret: raw values and flags go to userspace, which decides.
 *  - Kernel structs are read only as base + OFF_* (byte offsets resolved from the running
 *    kernel's BTF by monitor/sensors/bpf/offsets.py). The headers bcc compiles against may belong to
 *    another kernel, so no header struct layout is ever used.
 *  - Raw tracepoints: their arguments are the kernel's TP_PROTO (task pointers), identical
 *    from 4.17 to today, while the classic tracepoint record layouts change between kernels
 *    (sched_process_fork's comms became __data_loc strings). The handlers are plain functions,
 *    not RAW_TRACEPOINT_PROBE: the loader attaches them only once the perf buffers are open,
 *    so no sample is submitted into a buffer nobody has registered yet.
 *  - Bounded loops and a scratch slot per CPU for the large exec record; only the used
 *    length is submitted.
 */
#include <uapi/linux/ptrace.h>
#include "events.h"

#ifndef NR_CPUS_MAX
#define NR_CPUS_MAX 128
#endif
/* signal_struct.flags bit set by do_group_exit/zap_other_threads (include/linux/sched/signal.h);
 * unchanged since 2.6. */
#define SIGNAL_GROUP_EXIT 0x00000004
/* include/linux/pid_namespace.h: PID namespaces nest at most this deep (struct pid.level). */
#define MAX_PID_NS_LEVEL 32

/* Offsets into the exec scratch data. DATA_MASK bounds every variable offset for the verifier;
 * the buffer has room for the largest single write beyond it. */
#define DATA_MASK 0xFFFF
#define DATA_BYTES (DATA_MASK + 1 + ARGV_MAX_BYTES)

struct exec_buf {
    struct exec_event ev;
    __u8 data[DATA_BYTES];
    /* scratch state, never submitted */
    __u32 off;
    __u32 path_start;
};

BPF_PERF_OUTPUT(events);
/* A plain array indexed by CPU, not a per-CPU array: per-CPU values are capped at 32 KiB. */
BPF_ARRAY(exec_scratch, struct exec_buf, NR_CPUS_MAX);
BPF_PERCPU_ARRAY(counters, __u64, COUNTER_MAX);

static __always_inline void count(int which)
{
    __u64 *c = counters.lookup(&which);
    if (c)
        (*c)++;
}

/* The reader's doorbell. Samples wake the reader only every --wakeup-events per CPU (batched:
 * one wakeup per N samples under a storm), so a quiet CPU's last samples would wait for the
 * reader's next poll, and an idle reader had to poll every 10 ms to bound that wait. Instead,
 * before it sleeps for longer, the reader sets reader_idle[0]; the next sample on any CPU
 * clears it and writes one byte to `doorbell`, whose rings wake on every sample. No atomics:
 * two CPUs that both see the flag set ring twice, which costs one extra wakeup. Neither side
 * fences between its store (the sample; the flag) and its load (the flag; the rings), so in a
 * window of nanoseconds both can miss the other's store: that sample then waits for the
 * reader's next timeout (the pipeline's poll timeout, 100 ms), as it waited up to 10 ms before.
 * A locked instruction per sample on one shared cache line would close it at a cost to every
 * event on every CPU. */
BPF_PERF_OUTPUT(doorbell);
BPF_ARRAY(reader_idle, __u32, 1);

static __always_inline void submit(void *ctx, void *data, __u32 size)
{
    if (events.perf_submit(ctx, data, size) != 0) {
        count(COUNTER_SUBMIT_FAILED);
        return;
    }
    int zero = 0;
    __u32 *idle = reader_idle.lookup(&zero);
    if (idle && *idle) {
        *idle = 0;
        __u8 bell = 0;
        doorbell.perf_submit(ctx, &bell, sizeof(bell));
    }
}

static __always_inline __u64 read_u64(__u64 base, long off)
{
    __u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)(base + off));
    return v;
}

static __always_inline __u32 read_u32(__u64 base, long off)
{
    __u32 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)(base + off));
    return v;
}

static __always_inline __u32 ns_inum(__u64 ns, long off)
{
    return ns ? read_u32(ns, off) : 0;
}

/* Walk a struct path up to the root, writing each component (leaf first, NUL-terminated) at
 * data[buf->off...]. Mirrors prepend_path() in fs/d_path.c: at a mount's root, continue from its
 * mountpoint in the parent mount; stop at the namespace root (a mount that is its own parent),
 * or at a dentry that is its own parent without being a mount root (a pseudo file such as a
 * memfd: its single component is its whole name).
 *
 * The write offset and the flags live in the map value, not in registers: the verifier then
 * sees them as unknown (masked) scalars, so the states of successive iterations are equal and
 * get pruned. Tracked precisely, each iteration's offset range differs and a 64-step walk
 * exceeds the verifier's 1M-instruction budget. */
static __always_inline void write_path(struct exec_buf *buf, __u64 dentry, __u64 vfsmnt,
                                       __u32 detached, __u32 truncated, __u32 error)
{
    __u64 mnt = vfsmnt - OFF_MOUNT_MNT;
    if (!dentry || !vfsmnt) {
        buf->ev.flags |= error;
        return;
    }
    for (int i = 0; i < PATH_MAX_DEPTH; i++) {
        __u64 mnt_root = read_u64(vfsmnt, OFF_VFSMOUNT_ROOT);
        if (dentry == mnt_root) {
            __u64 mnt_parent = read_u64(mnt, OFF_MOUNT_PARENT);
            if (mnt_parent == mnt || !mnt_parent)
                return;
            dentry = read_u64(mnt, OFF_MOUNT_MOUNTPOINT);
            mnt = mnt_parent;
            vfsmnt = mnt + OFF_MOUNT_MNT;
            continue;
        }
        if (buf->off - buf->path_start > PATH_MAX_BYTES) {
            buf->ev.flags |= truncated;
            return;
        }
        __u64 parent = read_u64(dentry, OFF_DENTRY_PARENT);
        __u64 name = read_u64(dentry, OFF_DENTRY_NAME);
        long n = bpf_probe_read_kernel_str(buf->data + (buf->off & DATA_MASK), NAME_MAX_BYTES,
                                           (void *)name);
        if (n <= 0) {
            buf->ev.flags |= error;
            return;
        }
        buf->off += n;
        if (!parent || parent == dentry) {
            buf->ev.flags |= detached;
            return;
        }
        dentry = parent;
    }
    buf->ev.flags |= truncated;
}

/* The tgid of `task` as its own PID namespace numbers it (Falco's vpid), and that namespace's
 * depth. A struct pid is allocated with one struct upid per level, from the task's namespace
 * (numbers[level]) up to the initial one (numbers[0]) (kernel/pid.c alloc_pid), so the
 * in-namespace number is numbers[pid->level].nr: what pid_nr_ns(pid, task_active_pid_ns(task))
 * returns, and what getpid() says inside the namespace. The process's struct pid is its
 * leader's thread_pid (task_tgid() is signal->pids[PIDTYPE_TGID], the same struct): at exec
 * de_thread has made the caller the leader, a forked child is its own leader (copy_process),
 * and at the last thread's exit the leader, if it exited first, is still an unreleased zombie
 * (release_task waits for the group to empty), so its thread_pid is still attached.
 * `numbers` is a flexible array; its element size and member offsets come from BTF. */
static __always_inline void own_ns_tgid(__u64 task, __u32 *vpid, __u32 *level)
{
    __u64 leader = read_u64(task, OFF_TASK_GROUP_LEADER);
    __u64 pid = read_u64(leader ? leader : task, OFF_TASK_THREAD_PID);
    *vpid = 0;
    *level = 0;
    if (!pid)
        return;
    __u32 lvl = read_u32(pid, OFF_PID_LEVEL);
    if (lvl > MAX_PID_NS_LEVEL)
        return;  /* not a level the kernel can create: a torn read; report 0, not a guess */
    *level = lvl;
    *vpid = read_u32(pid, OFF_PID_NUMBERS + lvl * OFF_UPID_SIZE + OFF_UPID_NR);
}

/* The common header: what happened, when, and to which process (`task` is any of its threads;
 * the in-namespace tgid is read through its group leader). */
static __always_inline void fill_header(struct event_header *h, __u8 type, __u32 size,
                                        __u32 tgid, __u32 tid, __u64 start_boottime, __u64 task)
{
    h->type = type;
    h->version = WIRE_VERSION;
    h->reserved = 0;
    h->size = size;
    h->ts_ns = bpf_ktime_get_ns();
    h->tgid = tgid;
    h->tid = tid;
    h->start_boottime = start_boottime;
    own_ns_tgid(task, &h->vpid, &h->pid_level);
}

static __always_inline __u64 leader_start_boottime(__u64 task)
{
    __u64 leader = read_u64(task, OFF_TASK_GROUP_LEADER);
    return read_u64(leader ? leader : task, OFF_TASK_START_BOOTTIME);
}

/* S_IFMT and S_IFSOCK (include/uapi/linux/stat.h), spelled out: no header layout is trusted. */
#define MODE_FMT  0170000
#define MODE_SOCK 0140000

/* What descriptor `fd` (0, 1 or 2) of `files` refers to. Mirrors the lookup of
 * files_lookup_fd_raw() (include/linux/fdtable.h): fdt = files->fdt; fd < fdt->max_fds;
 * file = fdt->fd[fd]. Runs in the task's own exec with rcu_read_lock held by the tracepoint,
 * the same protection fcheck/files_lookup_fd_rcu need. Every failed read marks the slot
 * STDIO_ERROR; nothing is guessed. For a socket, file->private_data is its struct socket
 * (sock_alloc_file), whose sk carries the family (sk_common) and protocol. */
static __always_inline void read_stdio_fd(struct stdio_fd *out, __u64 fdarr, __u32 max_fds, int fd)
{
    __u64 file = 0, inode = 0, sb = 0;
    out->ino = out->sb_magic = 0;
    out->rdev = 0;
    out->mode = 0;
    out->reserved = 0;
    out->sock_family = out->sock_type = out->sock_protocol = out->reserved2 = 0;
    out->state = STDIO_CLOSED;
    if (fd >= max_fds)
        return;
    if (bpf_probe_read_kernel(&file, sizeof(file), (void *)(fdarr + fd * 8)) != 0) {
        out->state = STDIO_ERROR;
        return;
    }
    if (!file)
        return;
    if (bpf_probe_read_kernel(&inode, sizeof(inode), (void *)(file + OFF_FILE_INODE)) != 0 ||
        !inode ||
        bpf_probe_read_kernel(&out->mode, sizeof(out->mode), (void *)(inode + OFF_INODE_MODE)) != 0) {
        out->state = STDIO_ERROR;
        return;
    }
    out->state = STDIO_OPEN;
    out->ino = read_u64(inode, OFF_INODE_INO);
    out->rdev = read_u32(inode, OFF_INODE_RDEV);
    sb = read_u64(inode, OFF_INODE_SB);
    if (sb)
        out->sb_magic = read_u64(sb, OFF_SB_MAGIC);
    if ((out->mode & MODE_FMT) == MODE_SOCK) {
        __u64 sock = read_u64(file, OFF_FILE_PRIVATE_DATA);
        if (sock) {
            bpf_probe_read_kernel(&out->sock_type, sizeof(out->sock_type),
                                  (void *)(sock + OFF_SOCKET_TYPE));
            __u64 sk = read_u64(sock, OFF_SOCKET_SK);
            if (sk) {
                bpf_probe_read_kernel(&out->sock_family, sizeof(out->sock_family),
                                      (void *)(sk + OFF_SOCK_FAMILY));
#if OFF_SOCK_PROTOCOL >= 0
                bpf_probe_read_kernel(&out->sock_protocol, sizeof(out->sock_protocol),
                                      (void *)(sk + OFF_SOCK_PROTOCOL));
#endif
            }
        }
    }
}

/* Why sched_process_exec: it fires in exec_binprm() after the new image is committed
 * (begin_new_exec has run de_thread, so the caller is now the group leader and
 * tid == tgid; comm, mm and credentials are the new program's), but before it returns to
 * user space: the process cannot have exited yet, so even a 1 ms process is complete.
 * TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm). */
int on_sched_process_exec(struct bpf_raw_tracepoint_args *ctx)
{
    __u64 task = (__u64)ctx->args[0];
    __u32 old_tid = (__u32)ctx->args[1];
    __u64 bprm = (__u64)ctx->args[2];
    __u32 cpu = bpf_get_smp_processor_id();
    struct exec_buf *buf = exec_scratch.lookup(&cpu);
    if (!buf) {
        count(COUNTER_SCRATCH_MISSING);
        return 0;
    }
    struct exec_event *ev = &buf->ev;
    __u8 *data = buf->data;
    long n;

    count(COUNTER_EXEC);
    /* size is set once the variable part is known */
    fill_header(&ev->h, EVENT_EXEC, 0, read_u32(task, OFF_TASK_TGID), read_u32(task, OFF_TASK_PID),
                read_u64(task, OFF_TASK_START_BOOTTIME), task);
    ev->old_tid = old_tid;
    ev->flags = 0;

    __u64 parent = read_u64(task, OFF_TASK_REAL_PARENT);
    ev->ppid = parent ? read_u32(parent, OFF_TASK_TGID) : 0;
    ev->parent_start_boottime = parent ? leader_start_boottime(parent) : 0;
    ev->argc = read_u32(bprm, OFF_BINPRM_ARGC);
    ev->cgroup_id = bpf_get_current_cgroup_id();
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));

    __u64 cred = read_u64(task, OFF_TASK_CRED);
    ev->uid = read_u32(cred, OFF_CRED_UID);
    ev->gid = read_u32(cred, OFF_CRED_GID);
    ev->euid = read_u32(cred, OFF_CRED_EUID);
    ev->egid = read_u32(cred, OFF_CRED_EGID);
    /* The new credentials are committed (begin_new_exec -> commit_creds(bprm->cred)), file
     * capabilities and setuid bits applied: what /proc/<pid>/status would show now. */
    ev->suid = read_u32(cred, OFF_CRED_SUID);
    ev->fsuid = read_u32(cred, OFF_CRED_FSUID);
    ev->reserved2 = 0;
    ev->cap_effective = read_u64(cred, OFF_CRED_CAP_EFFECTIVE);
    ev->cap_permitted = read_u64(cred, OFF_CRED_CAP_PERMITTED);

    /* Descriptors 0, 1, 2 as the new program finds them: begin_new_exec has unshared the
     * files table and run do_close_on_exec, so this is exactly what it inherited. Three
     * bounded lookups, no path walk: a shell whose stdin/stdout is a TCP socket (a reverse
     * shell) is told apart here, race-free, even if it exits at once. */
    __u64 files = read_u64(task, OFF_TASK_FILES);
    __u64 fdt = files ? read_u64(files, OFF_FILES_FDT) : 0;
    __u64 fdarr = fdt ? read_u64(fdt, OFF_FDTABLE_FD) : 0;
    if (fdarr) {
        __u32 max_fds = read_u32(fdt, OFF_FDTABLE_MAX_FDS);
        read_stdio_fd(&ev->stdio[0], fdarr, max_fds, 0);
        read_stdio_fd(&ev->stdio[1], fdarr, max_fds, 1);
        read_stdio_fd(&ev->stdio[2], fdarr, max_fds, 2);
    } else {
        ev->flags |= EXEC_NO_FILES;
        for (int i = 0; i < STDIO_FDS; i++) {
            __builtin_memset(&ev->stdio[i], 0, sizeof(ev->stdio[i]));
            ev->stdio[i].state = STDIO_ERROR;
        }
    }
#if OFF_TASK_LOGINUID >= 0
    ev->loginuid = read_u32(task, OFF_TASK_LOGINUID);
    ev->sessionid = read_u32(task, OFF_TASK_SESSIONID);
#else
    ev->loginuid = 0xFFFFFFFF;
    ev->sessionid = 0xFFFFFFFF;
#endif

    /* Namespaces: the same inode numbers /proc/<pid>/ns/<name> links show. The pid namespace
     * is the one the task lives in (task_active_pid_ns: thread_pid->numbers[level].ns), not
     * nsproxy->pid_ns_for_children. */
    __u64 nsproxy = read_u64(task, OFF_TASK_NSPROXY);
    if (nsproxy) {
        ev->ns_uts = ns_inum(read_u64(nsproxy, OFF_NSPROXY_UTS), OFF_UTS_NS_INUM);
        ev->ns_ipc = ns_inum(read_u64(nsproxy, OFF_NSPROXY_IPC), OFF_IPC_NS_INUM);
        ev->ns_mnt = ns_inum(read_u64(nsproxy, OFF_NSPROXY_MNT), OFF_MNT_NS_INUM);
        ev->ns_net = ns_inum(read_u64(nsproxy, OFF_NSPROXY_NET), OFF_NET_NS_INUM);
        ev->ns_cgroup = ns_inum(read_u64(nsproxy, OFF_NSPROXY_CGROUP), OFF_CGROUP_NS_INUM);
    } else {
        ev->ns_uts = ev->ns_ipc = ev->ns_mnt = ev->ns_net = ev->ns_cgroup = 0;
    }
    ev->ns_user = ns_inum(read_u64(cred, OFF_CRED_USER_NS), OFF_USER_NS_INUM);
    __u64 tpid = read_u64(task, OFF_TASK_THREAD_PID);
    ev->ns_pid = 0;
    if (tpid) {
        __u32 level = read_u32(tpid, OFF_PID_LEVEL) & 0x3F; /* MAX_PID_NS_LEVEL is 32 */
        __u64 pidns = read_u64(tpid, OFF_PID_NUMBERS + level * OFF_UPID_SIZE + OFF_UPID_NS);
        ev->ns_pid = ns_inum(pidns, OFF_PID_NS_INUM);
    }

    /* The filename as given to execve (relative, /dev/fd/N for fexecve, the script for #!). */
    __u64 filename = read_u64(bprm, OFF_BINPRM_FILENAME);
    n = bpf_probe_read_kernel_str(data, FILENAME_MAX_BYTES, (void *)filename);
    if (n < 0)
        n = 0;
    if (n >= FILENAME_MAX_BYTES)
        ev->flags |= EXEC_FILENAME_TRUNCATED;
    ev->filename_len = n;
    buf->off = n;

    /* Controlling tty (signal->tty), if any. */
    __u64 signal = read_u64(task, OFF_TASK_SIGNAL);
    __u64 tty = signal ? read_u64(signal, OFF_SIGNAL_TTY) : 0;
    ev->tty_len = 0;
    if (tty) {
        n = bpf_probe_read_kernel_str(data + (buf->off & DATA_MASK), TTY_NAME_BYTES,
                                      (void *)(tty + OFF_TTY_NAME));
        if (n > 0) {
            ev->tty_len = n;
            buf->off += n;
        }
    }

    /* The executable actually mapped (bprm->file): for a #! script, the interpreter. */
    __u64 file = read_u64(bprm, OFF_BINPRM_FILE);
    buf->path_start = buf->off;
    if (file) {
        __u64 inode = read_u64(file, OFF_FILE_INODE);
        if (inode && read_u32(inode, OFF_INODE_NLINK) == 0)
            ev->flags |= EXEC_EXE_UNLINKED;
        write_path(buf, read_u64(file, OFF_FILE_PATH_DENTRY), read_u64(file, OFF_FILE_PATH_MNT),
                   EXEC_EXE_DETACHED, EXEC_EXE_TRUNCATED, EXEC_EXE_ERROR);
    } else {
        ev->flags |= EXEC_EXE_ERROR;
    }
    ev->exe_len = buf->off - buf->path_start;

    buf->path_start = buf->off;
    __u64 fs = read_u64(task, OFF_TASK_FS);
    if (fs) {
        write_path(buf, read_u64(fs, OFF_FS_PWD_DENTRY), read_u64(fs, OFF_FS_PWD_MNT),
                   EXEC_CWD_DETACHED, EXEC_CWD_TRUNCATED, EXEC_CWD_ERROR);
    } else {
        ev->flags |= EXEC_CWD_ERROR;
    }
    ev->cwd_len = buf->off - buf->path_start;

    /* argv from the new mm's argument area, as the program sees it: read in one pass from
     * mm->arg_start (tetragon's approach), not per argument from the execve syscall. */
    __u64 mm = read_u64(task, OFF_TASK_MM);
    ev->argv_size = 0;
    ev->argv_len = 0;
    ev->start_code = ev->end_code = ev->start_stack = ev->arg_start = 0;
    if (mm) {
        __u64 arg_start = read_u64(mm, OFF_MM_ARG_START);
        /* The image's layout, final here: load_elf_binary has set start_code/end_code/
         * start_stack and setup_arg_pages arg_start before exec_binprm fires this tracepoint.
         * Only prctl(PR_SET_MM) (CAP_SYS_RESOURCE; CRIU restores) changes them later. */
        ev->arg_start = arg_start;
        ev->start_code = read_u64(mm, OFF_MM_START_CODE);
        ev->end_code = read_u64(mm, OFF_MM_END_CODE);
        ev->start_stack = read_u64(mm, OFF_MM_START_STACK);
        __u64 arg_end = read_u64(mm, OFF_MM_ARG_END);
        __u64 size = arg_end > arg_start ? arg_end - arg_start : 0;
        ev->argv_size = size > 0xFFFFFFFF ? 0xFFFFFFFF : size;
        if (size > ARGV_MAX_BYTES) {
            size = ARGV_MAX_BYTES;
            ev->flags |= EXEC_ARGV_TRUNCATED;
        }
        size &= (ARGV_MAX_BYTES << 1) - 1;
        if (size > ARGV_MAX_BYTES)
            size = ARGV_MAX_BYTES;
        if (size > 0) {
            if (bpf_probe_read_user(data + (buf->off & DATA_MASK), size, (void *)arg_start) == 0) {
                ev->argv_len = size;
                buf->off += size;
            } else {
                ev->flags |= EXEC_ARGV_READ_ERROR;
            }
        }
    } else {
        ev->flags |= EXEC_NO_MM;
    }

    __u32 total = sizeof(struct exec_event) + (buf->off & DATA_MASK);
    ev->h.size = total;
    if (total > sizeof(struct exec_buf))
        return 0;
    submit(ctx, buf, total);
    return 0;
}

/* Why sched_process_fork: it fires in kernel_clone() once the child is fully set up but
 * before it runs, for processes and threads alike. A thread (child->pid != child->tgid) is
 * not a new process: it is only counted. The parent is the calling thread, whose tgid is the
 * process. TP_PROTO(struct task_struct *parent, struct task_struct *child). */
int on_sched_process_fork(struct bpf_raw_tracepoint_args *ctx)
{
    __u64 parent = (__u64)ctx->args[0];
    __u64 child = (__u64)ctx->args[1];
    __u32 child_pid = read_u32(child, OFF_TASK_PID);
    __u32 child_tgid = read_u32(child, OFF_TASK_TGID);
    if (child_pid != child_tgid) {
        count(COUNTER_THREAD_CREATE);
        return 0;
    }
    count(COUNTER_FORK);
    struct fork_event ev = {};
    fill_header(&ev.h, EVENT_FORK, sizeof(ev), child_tgid, child_pid,
                read_u64(child, OFF_TASK_START_BOOTTIME), child);
    ev.parent_tgid = read_u32(parent, OFF_TASK_TGID);
    ev.parent_tid = read_u32(parent, OFF_TASK_PID);
    ev.parent_start_boottime = leader_start_boottime(parent);
    __u64 mm = read_u64(child, OFF_TASK_MM);  /* copy_mm has run: the parent's layout */
    if (mm) {
        ev.arg_start = read_u64(mm, OFF_MM_ARG_START);
        ev.end_code = read_u64(mm, OFF_MM_END_CODE);
    }
    submit(ctx, &ev, sizeof(ev));
    return 0;
}

/* Why sched_process_exit: do_exit() fires it for every exiting thread, after
 * tsk->exit_code is set and after signal->live was decremented. The thread that brought
 * signal->live to zero is the last of its group (tetragon's bpf_exit.c reasoning), so the
 * process exit is reported exactly once, even when the leader exited first. The status is
 * what wait(2) would return for the group: group_exit_code after exit_group or a fatal
 * signal (SIGNAL_GROUP_EXIT), else this thread's exit_code (wait_task_zombie).
 * TP_PROTO(struct task_struct *p[, bool group_dead]). */
int on_sched_process_exit(struct bpf_raw_tracepoint_args *ctx)
{
    __u64 task = (__u64)ctx->args[0];
    __u64 signal = read_u64(task, OFF_TASK_SIGNAL);
    if (signal && read_u32(signal, OFF_SIGNAL_LIVE) != 0) {
        count(COUNTER_THREAD_EXIT);
        return 0;
    }
    count(COUNTER_EXIT);
    struct exit_event ev = {};
    __u64 leader = read_u64(task, OFF_TASK_GROUP_LEADER);
    if (!leader)
        leader = task;
    fill_header(&ev.h, EVENT_EXIT, sizeof(ev), read_u32(task, OFF_TASK_TGID),
                read_u32(task, OFF_TASK_PID), read_u64(leader, OFF_TASK_START_BOOTTIME), task);
    ev.start_time = read_u64(leader, OFF_TASK_START_TIME);
    __u32 code = read_u32(task, OFF_TASK_EXIT_CODE);
    if (signal && (read_u32(signal, OFF_SIGNAL_FLAGS) & SIGNAL_GROUP_EXIT))
        code = read_u32(signal, OFF_SIGNAL_GROUP_EXIT_CODE);
    ev.exit_code = code;
    /* do_exit runs in the exiting thread's own context. */
    bpf_get_current_comm(&ev.comm, sizeof(ev.comm));
    submit(ctx, &ev, sizeof(ev));
    return 0;
}
