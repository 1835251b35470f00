/* The floor under any FUSE server on this machine, for scripts/bench/fuse_floor.py: the
 * same tree as its pyfuse3 modes (DIRS directories of FILES files of SIZE bytes each, from
 * constant attributes) served by libfuse's own single-threaded loop in C, getxattr
 * answering ENODATA (as a server that serves xattrs and ACLs must for a file without
 * them), POSIX ACLs enforced by the kernel, READDIRPLUS, files kept in the page cache.
 *
 * fuse_floor.py compiles it with: gcc -O2 fuse_floor.c $(pkg-config --cflags --libs fuse3)
 * usage: fuse_floor MOUNTPOINT DIRS FILES SIZE   (in the foreground until unmounted)
 */
#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define FIRST_DIR 10
#define FIRST_FILE 1000000

static long ndirs, nfiles, fsize;
static char *content;

static int is_dir(fuse_ino_t ino) { return ino == 1 || (ino >= FIRST_DIR && ino < (fuse_ino_t)(FIRST_DIR + ndirs)); }

static void fill(fuse_ino_t ino, struct stat *st)
{
    memset(st, 0, sizeof *st);
    st->st_ino = ino;
    if (is_dir(ino)) {
        st->st_mode = S_IFDIR | 0755; st->st_nlink = 2; st->st_size = 4096;
    } else {
        st->st_mode = S_IFREG | 0644; st->st_nlink = 1; st->st_size = fsize;
    }
    st->st_blksize = 4096; st->st_blocks = (fsize + 511) / 512;
    st->st_mtim.tv_sec = st->st_ctim.tv_sec = st->st_atim.tv_sec = 1700000000;
}

static void entry(fuse_ino_t ino, struct fuse_entry_param *e)
{
    memset(e, 0, sizeof *e);
    e->ino = ino; e->attr_timeout = e->entry_timeout = 86400.0;
    fill(ino, &e->attr);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct fuse_entry_param e;
    long k;
    if (parent == 1 && sscanf(name, "d%05ld", &k) == 1 && k < ndirs) {
        entry(FIRST_DIR + k, &e); fuse_reply_entry(req, &e); return;
    }
    if (is_dir(parent) && parent != 1 && sscanf(name, "f%05ld", &k) == 1 && k < nfiles) {
        entry(FIRST_FILE + (parent - FIRST_DIR) * nfiles + k, &e); fuse_reply_entry(req, &e); return;
    }
    fuse_reply_err(req, ENOENT);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct stat st;
    (void)fi;
    fill(ino, &st);
    fuse_reply_attr(req, &st, 86400.0);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                           struct fuse_file_info *fi)
{
    char *buf = malloc(size), name[16];
    size_t used = 0;
    long count = ino == 1 ? ndirs : nfiles;
    (void)fi;
    for (long k = off; k < count; k++) {
        struct fuse_entry_param e;
        fuse_ino_t child = ino == 1 ? (fuse_ino_t)(FIRST_DIR + k)
                                    : (fuse_ino_t)(FIRST_FILE + (ino - FIRST_DIR) * nfiles + k);
        snprintf(name, sizeof name, ino == 1 ? "d%05ld" : "f%05ld", k);
        entry(child, &e);
        size_t n = fuse_add_direntry_plus(req, buf + used, size - used, name, &e, k + 1);
        if (n > size - used) break;
        used += n;
    }
    fuse_reply_buf(req, buf, used);
    free(buf);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    fi->keep_cache = 1;
    fuse_reply_open(req, fi);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    (void)ino; (void)fi;
    if (off >= fsize) { fuse_reply_buf(req, NULL, 0); return; }
    if ((off_t)size > fsize - off) size = fsize - off;
    fuse_reply_buf(req, content + off, size);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino; (void)fi;
    fuse_reply_err(req, 0);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
    (void)ino; (void)name; (void)size;
    fuse_reply_err(req, ENODATA);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
    (void)ino;
    if (size == 0) fuse_reply_xattr(req, 0); else fuse_reply_buf(req, NULL, 0);
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
    (void)userdata;
    if (conn->capable & FUSE_CAP_POSIX_ACL) conn->want |= FUSE_CAP_POSIX_ACL;
    conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
}

static const struct fuse_lowlevel_ops ops = {
    .init = op_init, .lookup = op_lookup, .getattr = op_getattr,
    .readdirplus = op_readdirplus, .open = op_open, .read = op_read,
    .release = op_release, .getxattr = op_getxattr, .listxattr = op_listxattr,
};

int main(int argc, char **argv)
{
    if (argc != 5) { fprintf(stderr, "usage: fuse_floor MOUNTPOINT DIRS FILES SIZE\n"); return 2; }
    ndirs = atol(argv[2]); nfiles = atol(argv[3]); fsize = atol(argv[4]);
    content = calloc(1, fsize + 1);
    for (long i = 0; i < fsize; i++) content[i] = 'a' + i % 26;
    char *fargv[] = {argv[0], "-o", "ro,default_permissions,fsname=fuse-floor-c", NULL};
    struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
    struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
    if (!se || fuse_session_mount(se, argv[1]) != 0) return 1;
    int rc = fuse_session_loop(se);
    fuse_session_unmount(se);
    fuse_session_destroy(se);
    return rc;
}
