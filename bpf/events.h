/* The wire contract between bpf/process.bpf.c and monitor/sensors/bpf/wire.py.
 *
 * monitor/sensors/bpf/wire.py mirrors these layouts with struct.Struct; a root-only test
 * (tests/bpf/test_sensor.py::test_wire_sizes) checks the sizes the kernel submits
 * against it. Change both together and bump WIRE_VERSION.
 *
 * Limits arrive as -D flags from monitor/sensors/bpf/limits.py (one Python constants block);
 * the defaults below only keep the header self-contained.
 */
#ifndef PROCSENTRY_EVENTS_H
#define PROCSENTRY_EVENTS_H

#define WIRE_VERSION 3

#ifndef ARGV_MAX_BYTES
#define ARGV_MAX_BYTES 32768      /* argv bytes captured per exec (power of two) */
#endif
#ifndef FILENAME_MAX_BYTES
#define FILENAME_MAX_BYTES 4096   /* the filename given to execve, NUL included */
#endif
#ifndef PATH_MAX_BYTES
#define PATH_MAX_BYTES 4096       /* bytes of components per resolved path */
#endif
#ifndef PATH_MAX_DEPTH
#define PATH_MAX_DEPTH 64         /* components walked per resolved path */
#endif
#define NAME_MAX_BYTES 256        /* one path component, NUL included (NAME_MAX + 1) */
#define TTY_NAME_BYTES 64         /* tty_struct.name */
#define COMM_BYTES 16             /* TASK_COMM_LEN */

enum event_type {
    EVENT_EXEC = 1,
    EVENT_FORK = 2,
    EVENT_EXIT = 3,
};

/* Exec flags: every truncation or failed read is a bit, never a silent gap. */
#define EXEC_ARGV_TRUNCATED      (1u << 0)  /* argv longer than ARGV_MAX_BYTES */
#define EXEC_ARGV_READ_ERROR     (1u << 1)  /* bpf_probe_read_user of the arg area failed */
#define EXEC_FILENAME_TRUNCATED  (1u << 2)
#define EXEC_EXE_UNLINKED        (1u << 3)  /* the executable's inode has no links: deleted, memfd, O_TMPFILE */
#define EXEC_EXE_DETACHED        (1u << 4)  /* the path walk ended at a pseudo root (memfd, anon file) */
#define EXEC_EXE_TRUNCATED       (1u << 5)  /* exe path deeper/longer than the limits */
#define EXEC_EXE_ERROR           (1u << 6)
#define EXEC_CWD_DETACHED        (1u << 7)
#define EXEC_CWD_TRUNCATED       (1u << 8)
#define EXEC_CWD_ERROR           (1u << 9)
#define EXEC_NO_MM               (1u << 10)
#define EXEC_NO_FILES            (1u << 11)  /* task->files or its fdtable unreadable: stdio[] all STDIO_ERROR */

/* The state of one of the descriptors 0, 1, 2 at exec (struct stdio_fd.state). */
#define STDIO_CLOSED 0   /* not open (fd >= max_fds, or an empty slot) */
#define STDIO_OPEN   1
#define STDIO_ERROR  2   /* a read along task->files->fdt->fd[i]->f_inode failed */
#define STDIO_FDS    3

/* Counters kept in a per-CPU array, read by userspace for `stats`. */
enum counter {
    COUNTER_EXEC = 0,
    COUNTER_FORK,
    COUNTER_EXIT,
    COUNTER_THREAD_CREATE,    /* sched_process_fork for a new thread: not a process */
    COUNTER_THREAD_EXIT,      /* sched_process_exit of a thread while others live */
    COUNTER_SUBMIT_FAILED,    /* bpf_perf_event_output returned an error */
    COUNTER_SCRATCH_MISSING,  /* no scratch slot for this CPU */
    COUNTER_MAX,
};

/* Every record starts with this header. pid means the userspace term: task->tgid. */
struct event_header {
    __u8  type;           /* enum event_type */
    __u8  version;        /* WIRE_VERSION */
    __u16 reserved;
    __u32 size;           /* bytes submitted, header included */
    __u64 ts_ns;          /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    __u32 tgid;
    __u32 tid;            /* the thread that triggered the event */
    __u64 start_boottime; /* group leader's task->start_boottime, ns: /proc stat field 22 x 10^7 */
    /* The tgid as the process itself sees it (getpid() inside a container; Falco's vpid):
     * pid_nr_ns(tgid's struct pid, its own namespace) = pid->numbers[pid->level].nr
     * (kernel/pid.c). /proc/<pid>/status NStgid/NSpid: the last value. */
    __u32 vpid;
    __u32 pid_level;      /* struct pid.level: PID namespace depth, 0 = the host's (initial) one */
};

struct fork_event {
    struct event_header h;   /* tgid/tid/start: the new child */
    __u32 parent_tgid;
    __u32 parent_tid;        /* the thread that called fork/clone */
    __u64 parent_start_boottime;
    /* The image the child runs, which is the parent's at the fork: copy_mm/dup_mm copy the
     * mm_struct, layout included. Says which of the parent's images forked it, whatever
     * order the per-CPU buffers deliver the parent's exec records in. 0: no mm. */
    __u64 arg_start, end_code;
};

struct exit_event {
    struct event_header h;   /* tid: the last thread of the group to exit */
    __u32 exit_code;         /* wait(2) status: code << 8 | core 0x80 | signal */
    __u32 reserved;
    __u64 start_time;        /* leader's task->start_time (CLOCK_MONOTONIC) for the duration */
    char  comm[COMM_BYTES];
};

/* What descriptor 0, 1 or 2 refers to at exec (after do_close_on_exec): the file's inode, the
 * way `stat /proc/<pid>/fd/N` sees it. Raw values; userspace names the kind (file, pipe,
 * socket, tty, ...) from mode, sb_magic and rdev. */
struct stdio_fd {
    __u64 ino;            /* inode->i_ino: the N of "socket:[N]" / "pipe:[N]" in /proc/<pid>/fd */
    __u64 sb_magic;       /* inode->i_sb->s_magic: PIPEFS_MAGIC, SOCKFS_MAGIC, ANON_INODE_FS_MAGIC... */
    __u32 rdev;           /* inode->i_rdev (kernel dev_t: major << 20 | minor) for devices */
    __u16 mode;           /* inode->i_mode (S_IFMT | permissions) */
    __u8  state;          /* STDIO_* */
    __u8  reserved;
    __u16 sock_family;    /* sockets: sock->sk->__sk_common.skc_family (AF_*) */
    __u16 sock_type;      /* sockets: socket->type (SOCK_STREAM, ...) */
    __u16 sock_protocol;  /* sockets: sk->sk_protocol (IPPROTO_*); 0 where unreadable */
    __u16 reserved2;
};

/* An exec record is this fixed part followed by `data`, in this order:
 *   filename (filename_len bytes, NUL included)
 *   tty name (tty_len bytes, NUL included; 0 when there is no controlling tty)
 *   exe path components, leaf first, each NUL-terminated (exe_len bytes)
 *   cwd path components, leaf first, each NUL-terminated (cwd_len bytes)
 *   argv bytes as the program sees them, NUL-separated (argv_len bytes)
 * Only the used length is submitted. */
struct exec_event {
    struct event_header h;   /* tid == tgid after exec (de_thread) */
    __u32 old_tid;           /* the thread that called execve */
    __u32 flags;             /* EXEC_* */
    __u32 ppid;              /* real_parent->tgid */
    __u32 argc;              /* linux_binprm.argc: the original count */
    __u64 parent_start_boottime;
    __u64 cgroup_id;
    /* The new image's memory layout, from its mm_struct as load_elf_binary/setup_arg_pages
     * left it. The same four values /proc/<pid>/stat prints as fields 26, 27, 28 and 48
     * (fs/proc/array.c do_task_stat), so the sensor and a procfs sweep agree on them; with
     * ASLR they change on every exec (the image identity; README "Identity"). */
    __u64 start_code, end_code, start_stack, arg_start;
    __u32 uid, gid, euid, egid;
    __u32 loginuid, sessionid;
    __u32 ns_pid, ns_mnt, ns_net, ns_user, ns_uts, ns_ipc, ns_cgroup;
    __u32 argv_size;         /* mm->arg_end - mm->arg_start: the full original length */
    __u16 filename_len, tty_len, exe_len, cwd_len;
    __u32 argv_len;          /* captured bytes */
    char  comm[COMM_BYTES];
    /* Wire version 3: the rest of the new credentials and the standard descriptors. */
    __u32 suid;
    __u32 fsuid;
    __u32 reserved2;
    __u64 cap_effective;     /* cred->cap_effective: kernel_cap_t, /proc/<pid>/status CapEff */
    __u64 cap_permitted;     /* cred->cap_permitted: CapPrm */
    struct stdio_fd stdio[STDIO_FDS];
};

#endif
