/* Test-only: struct member offsets as the kernel headers bcc compiles against see them.
 * tests/bpf/test_offsets_vs_headers.py compares them with the BTF-resolved offsets the sensor
 * uses; the check only means something where the headers match the running kernel (the
 * virtme-ng kernel matrix). OFFSET_CHECKS is a list of CHECK(index, type, member) from -D. */
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/cred.h>
#include <linux/tty.h>
#include <linux/mm_types.h>
#include <linux/fs_struct.h>
#include <linux/fs.h>
#include <linux/dcache.h>
#include <linux/mount.h>
#include <linux/binfmts.h>
#include <linux/nsproxy.h>
#include <linux/utsname.h>
#include <linux/ipc_namespace.h>
#include <linux/pid_namespace.h>
#include <linux/user_namespace.h>
#include <linux/cgroup.h>
#include <linux/pid.h>
#include <net/net_namespace.h>
#include <linux/fdtable.h>   /* files_struct, fdtable: stdio at exec */
#include <linux/net.h>       /* struct socket */

BPF_ARRAY(offs, u64, 128);

/* bcc rewrites map calls only outside macros: the macro calls a function that does it. */
static __always_inline void put(u32 k, u64 v)
{
    offs.update(&k, &v);
}

#define CHECK(i, type, member) put(i, offsetof(type, member));

int probe(struct bpf_raw_tracepoint_args *ctx)
{
    OFFSET_CHECKS
    return 0;
}
