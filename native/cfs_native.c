/*
 * cfs native addon: thin N-API wrappers around Linux calls Node does not expose.
 * Each export is one system call; policy lives in TypeScript (src/native.ts).
 *
 * Errors: a JS Error with .code = errno name ('ENOENT', 'EOPNOTSUPP', …), .errno = negative
 * errno (as Node does), .syscall = the call name, message "<syscall>[ <what>]: <strerror>".
 * Every fd the addon creates is close-on-exec.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <linux/fs.h>
#include <linux/fsverity.h>
#include <linux/openat2.h>

#include <node_api.h>
/* OpenSSL comes from the node binary itself (it exports the libcrypto symbols); nothing extra is linked. */
#include <openssl/evp.h>

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif

#define MAX_ARGS 8
#define MAX_STRS 4
#define MAX_DIGEST 64
#define MAX_FDS 253 /* SCM_MAX_FD */

/* ---- errors ---------------------------------------------------------------------------- */

static void set_prop_str(napi_env env, napi_value obj, const char *key, const char *val) {
  napi_value v;
  if (napi_create_string_utf8(env, val, NAPI_AUTO_LENGTH, &v) == napi_ok) napi_set_named_property(env, obj, key, v);
}

/* A Node-style errno error (not thrown); NULL if it cannot be created. */
static napi_value errno_error(napi_env env, int err, const char *syscall, const char *what) {
  const char *name = strerrorname_np(err);
  char code_buf[16];
  if (!name) {
    snprintf(code_buf, sizeof code_buf, "E%d", err);
    name = code_buf;
  }
  char msg[4608]; /* a path of up to PATH_MAX and the strerror text */
  if (what && *what)
    snprintf(msg, sizeof msg, "%s %s: %s", syscall, what, strerror(err));
  else
    snprintf(msg, sizeof msg, "%s: %s", syscall, strerror(err));
  napi_value jmsg, jerr, jerrno;
  if (napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &jmsg) != napi_ok) return NULL;
  if (napi_create_error(env, NULL, jmsg, &jerr) != napi_ok) return NULL;
  set_prop_str(env, jerr, "code", name);
  set_prop_str(env, jerr, "syscall", syscall);
  if (napi_create_int32(env, -err, &jerrno) == napi_ok) napi_set_named_property(env, jerr, "errno", jerrno);
  return jerr;
}

/* Throws an errno error; returns NULL so callers can `return throw_errno(...)`. */
static napi_value throw_errno(napi_env env, int err, const char *syscall, const char *what) {
  napi_value jerr = errno_error(env, err, syscall, what);
  if (jerr) napi_throw(env, jerr);
  return NULL;
}

static napi_value throw_type(napi_env env, const char *fn, size_t idx, const char *expected) {
  char msg[128];
  snprintf(msg, sizeof msg, "%s: argument %zu must be %s", fn, idx + 1, expected);
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
  return NULL;
}

/* ---- argument helpers ------------------------------------------------------------------ */

typedef struct {
  napi_env env;
  const char *fn;
  size_t argc;
  napi_value argv[MAX_ARGS];
  char *strs[MAX_STRS];
  int nstrs;
  int failed; /* an exception is pending */
} call_t;

static void call_init(call_t *c, napi_env env, napi_callback_info info, const char *fn) {
  memset(c, 0, sizeof *c);
  c->env = env;
  c->fn = fn;
  c->argc = MAX_ARGS;
  if (napi_get_cb_info(env, info, &c->argc, c->argv, NULL, NULL) != napi_ok) c->failed = 1;
}

static void call_free(call_t *c) {
  for (int i = 0; i < c->nstrs; i++) free(c->strs[i]);
}

static int64_t arg_int(call_t *c, size_t i) {
  int64_t v = 0;
  if (c->failed) return 0;
  if (i >= c->argc || napi_get_value_int64(c->env, c->argv[i], &v) != napi_ok) {
    throw_type(c->env, c->fn, i, "a number");
    c->failed = 1;
  }
  return v;
}

static int arg_is_nullish(call_t *c, size_t i) {
  napi_valuetype t;
  if (i >= c->argc) return 1;
  if (napi_typeof(c->env, c->argv[i], &t) != napi_ok) return 0;
  return t == napi_null || t == napi_undefined;
}

/* UTF-8 string argument; NULL for null/undefined when nullable. */
static const char *arg_str(call_t *c, size_t i, int nullable) {
  size_t len = 0;
  if (c->failed) return NULL;
  if (nullable && arg_is_nullish(c, i)) return NULL;
  if (i >= c->argc || c->nstrs >= MAX_STRS ||
      napi_get_value_string_utf8(c->env, c->argv[i], NULL, 0, &len) != napi_ok) {
    throw_type(c->env, c->fn, i, nullable ? "a string or null" : "a string");
    c->failed = 1;
    return NULL;
  }
  char *s = malloc(len + 1);
  if (!s) {
    throw_errno(c->env, ENOMEM, c->fn, NULL);
    c->failed = 1;
    return NULL;
  }
  napi_get_value_string_utf8(c->env, c->argv[i], s, len + 1, &len);
  c->strs[c->nstrs++] = s;
  if (strlen(s) != len) { /* a NUL inside would silently cut the string short */
    throw_type(c->env, c->fn, i, "a string without NUL characters");
    c->failed = 1;
    return NULL;
  }
  return s;
}

static void *arg_buf(call_t *c, size_t i, size_t *len) {
  void *data = NULL;
  bool ok = false;
  *len = 0;
  if (c->failed) return NULL;
  if (i >= c->argc || napi_is_buffer(c->env, c->argv[i], &ok) != napi_ok || !ok ||
      napi_get_buffer_info(c->env, c->argv[i], &data, len) != napi_ok) {
    throw_type(c->env, c->fn, i, "a Buffer");
    c->failed = 1;
    return NULL;
  }
  return data;
}

/* A path: a string, or a Buffer of bytes without NUL (for names that are not UTF-8). */
static const char *arg_path(call_t *c, size_t i) {
  bool is_buf = false;
  if (c->failed) return NULL;
  if (i >= c->argc || napi_is_buffer(c->env, c->argv[i], &is_buf) != napi_ok || !is_buf) return arg_str(c, i, 0);
  size_t len = 0;
  const char *data = arg_buf(c, i, &len);
  char *s = NULL;
  if (!c->failed && (len > 0 && memchr(data, 0, len))) {
    throw_type(c->env, c->fn, i, "a string or a Buffer without NUL bytes");
    c->failed = 1;
  } else if (!c->failed && (c->nstrs >= MAX_STRS || !(s = malloc(len + 1)))) {
    throw_errno(c->env, ENOMEM, c->fn, NULL);
    c->failed = 1;
  }
  if (c->failed) return NULL;
  if (len > 0) memcpy(s, data, len);
  s[len] = 0;
  c->strs[c->nstrs++] = s;
  return s;
}

static napi_value undefined(napi_env env) {
  napi_value v;
  napi_get_undefined(env, &v);
  return v;
}

static napi_value null_value(napi_env env) {
  napi_value v;
  napi_get_null(env, &v);
  return v;
}

static napi_value int_value(napi_env env, int64_t n) {
  napi_value v;
  napi_create_int64(env, n, &v);
  return v;
}

static napi_value buffer_copy(napi_env env, const void *data, size_t len) {
  napi_value v;
  void *out;
  if (napi_create_buffer_copy(env, len, len ? data : "", &out, &v) != napi_ok) return NULL;
  return v;
}

/* Result helpers: on rc < 0 throw errno, else return undefined / the number. */
#define RETURN_VOID(c, rc, sys, what)                                  \
  do {                                                                 \
    int e_ = errno;                                                    \
    napi_value r_ = (rc) < 0 ? throw_errno((c)->env, e_, sys, what) : undefined((c)->env); \
    call_free(c);                                                      \
    return r_;                                                         \
  } while (0)

#define RETURN_INT(c, rc, sys, what)                                   \
  do {                                                                 \
    int e_ = errno;                                                    \
    napi_value r_ = (rc) < 0 ? throw_errno((c)->env, e_, sys, what) : int_value((c)->env, rc); \
    call_free(c);                                                      \
    return r_;                                                         \
  } while (0)

#define BAIL_IF_FAILED(c) \
  do {                    \
    if ((c)->failed) {    \
      call_free(c);       \
      return NULL;        \
    }                     \
  } while (0)

/* ---- xattrs ---------------------------------------------------------------------------- */

/* get: (path or fd) -> Buffer, null on ENODATA. Retries when the value grows between calls. */
static napi_value xattr_get(call_t *c, const char *path, int fd, const char *name) {
  const char *sys = path ? "lgetxattr" : "fgetxattr";
  for (;;) {
    ssize_t n = path ? lgetxattr(path, name, NULL, 0) : fgetxattr(fd, name, NULL, 0);
    if (n < 0) break;
    char *buf = malloc(n ? (size_t)n : 1);
    if (!buf) {
      errno = ENOMEM;
      break;
    }
    ssize_t m = path ? lgetxattr(path, name, buf, n) : fgetxattr(fd, name, buf, n);
    if (m < 0) {
      int e = errno;
      free(buf);
      errno = e;
      if (e == ERANGE) continue;
      break;
    }
    napi_value r = buffer_copy(c->env, buf, (size_t)m);
    free(buf);
    call_free(c);
    return r;
  }
  int e = errno;
  napi_value r = e == ENODATA ? null_value(c->env) : throw_errno(c->env, e, sys, path ? path : name);
  call_free(c);
  return r;
}

static napi_value xattr_list(call_t *c, const char *path, int fd) {
  const char *sys = path ? "llistxattr" : "flistxattr";
  for (;;) {
    ssize_t n = path ? llistxattr(path, NULL, 0) : flistxattr(fd, NULL, 0);
    if (n < 0) break;
    char *buf = malloc(n ? (size_t)n : 1);
    if (!buf) {
      errno = ENOMEM;
      break;
    }
    ssize_t m = path ? llistxattr(path, buf, n) : flistxattr(fd, buf, n);
    if (m < 0) {
      int e = errno;
      free(buf);
      errno = e;
      if (e == ERANGE) continue;
      break;
    }
    napi_value arr;
    napi_create_array(c->env, &arr);
    uint32_t idx = 0;
    for (ssize_t off = 0; off < m;) {
      size_t len = strnlen(buf + off, (size_t)(m - off));
      napi_value s;
      napi_create_string_latin1(c->env, buf + off, len, &s);
      napi_set_element(c->env, arr, idx++, s);
      off += (ssize_t)len + 1;
    }
    free(buf);
    call_free(c);
    return arr;
  }
  int e = errno;
  napi_value r = throw_errno(c->env, e, sys, path);
  call_free(c);
  return r;
}

static napi_value js_lgetxattr(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "lgetxattr");
  const char *path = arg_path(&c, 0);
  const char *name = arg_str(&c, 1, 0);
  BAIL_IF_FAILED(&c);
  return xattr_get(&c, path, -1, name);
}

static napi_value js_fgetxattr(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "fgetxattr");
  int fd = (int)arg_int(&c, 0);
  const char *name = arg_str(&c, 1, 0);
  BAIL_IF_FAILED(&c);
  return xattr_get(&c, NULL, fd, name);
}

static napi_value js_llistxattr(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "llistxattr");
  const char *path = arg_path(&c, 0);
  BAIL_IF_FAILED(&c);
  return xattr_list(&c, path, -1);
}

static napi_value js_flistxattr(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "flistxattr");
  int fd = (int)arg_int(&c, 0);
  BAIL_IF_FAILED(&c);
  return xattr_list(&c, NULL, fd);
}

/* lsetxattr(path, name, value, flags = 0) */
static napi_value js_lsetxattr(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "lsetxattr");
  const char *path = arg_str(&c, 0, 0);
  const char *name = arg_str(&c, 1, 0);
  size_t len;
  void *val = arg_buf(&c, 2, &len);
  int flags = arg_is_nullish(&c, 3) ? 0 : (int)arg_int(&c, 3);
  BAIL_IF_FAILED(&c);
  int rc = lsetxattr(path, name, len ? val : "", len, flags);
  RETURN_VOID(&c, rc, "lsetxattr", path);
}

/* ---- fs-verity ------------------------------------------------------------------------- */

static napi_value js_fsverity_enable(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "fsverityEnable");
  int fd = (int)arg_int(&c, 0);
  uint32_t alg = (uint32_t)arg_int(&c, 1);
  uint32_t block = (uint32_t)arg_int(&c, 2);
  BAIL_IF_FAILED(&c);
  struct fsverity_enable_arg arg;
  memset(&arg, 0, sizeof arg);
  arg.version = 1;
  arg.hash_algorithm = alg;
  arg.block_size = block;
  int rc = ioctl(fd, FS_IOC_ENABLE_VERITY, &arg);
  RETURN_VOID(&c, rc, "ioctl FS_IOC_ENABLE_VERITY", NULL);
}

static napi_value js_fsverity_measure(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "fsverityMeasure");
  int fd = (int)arg_int(&c, 0);
  BAIL_IF_FAILED(&c);
  struct {
    struct fsverity_digest d;
    uint8_t buf[MAX_DIGEST];
  } m;
  memset(&m, 0, sizeof m);
  m.d.digest_size = MAX_DIGEST;
  if (ioctl(fd, FS_IOC_MEASURE_VERITY, &m) < 0) {
    int e = errno;
    call_free(&c);
    return throw_errno(env, e, "ioctl FS_IOC_MEASURE_VERITY", NULL);
  }
  napi_value obj;
  napi_create_object(env, &obj);
  napi_set_named_property(env, obj, "hashAlg", int_value(env, m.d.digest_algorithm));
  napi_set_named_property(env, obj, "digest", buffer_copy(env, m.d.digest, m.d.digest_size));
  call_free(&c);
  return obj;
}

/* ---- files ----------------------------------------------------------------------------- */

static napi_value js_open_tmpfile(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "openTmpfile");
  const char *dir = arg_str(&c, 0, 0);
  int flags = (int)arg_int(&c, 1);
  int mode = (int)arg_int(&c, 2);
  BAIL_IF_FAILED(&c);
  int fd = open(dir, flags | O_TMPFILE | O_CLOEXEC, (mode_t)mode);
  RETURN_INT(&c, fd, "open O_TMPFILE", dir);
}

static napi_value js_link_fd(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "linkFd");
  int fd = (int)arg_int(&c, 0);
  const char *newpath = arg_str(&c, 1, 0);
  BAIL_IF_FAILED(&c);
  char proc[64];
  snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
  int rc = linkat(AT_FDCWD, proc, AT_FDCWD, newpath, AT_SYMLINK_FOLLOW);
  RETURN_VOID(&c, rc, "linkat", newpath);
}

static napi_value js_ficlone(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "ficlone");
  int dst = (int)arg_int(&c, 0);
  int src = (int)arg_int(&c, 1);
  BAIL_IF_FAILED(&c);
  int rc = ioctl(dst, FICLONE, src);
  RETURN_VOID(&c, rc, "ioctl FICLONE", NULL);
}

static napi_value js_rename_noreplace(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "renameNoReplace");
  const char *oldp = arg_str(&c, 0, 0);
  const char *newp = arg_str(&c, 1, 0);
  BAIL_IF_FAILED(&c);
  int rc = (int)syscall(SYS_renameat2, AT_FDCWD, oldp, AT_FDCWD, newp, RENAME_NOREPLACE);
  RETURN_VOID(&c, rc, "renameat2", newp);
}

static napi_value js_flock(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "flock");
  int fd = (int)arg_int(&c, 0);
  int op = (int)arg_int(&c, 1);
  BAIL_IF_FAILED(&c);
  int rc = flock(fd, op);
  RETURN_VOID(&c, rc, "flock", NULL);
}

/* POSIX whole-file record lock (what containers/storage uses); op takes flock's LOCK_* bits. */
static napi_value js_fcntl_lock(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "fcntlLock");
  int fd = (int)arg_int(&c, 0);
  int op = (int)arg_int(&c, 1);
  BAIL_IF_FAILED(&c);
  struct flock fl;
  memset(&fl, 0, sizeof fl);
  fl.l_whence = SEEK_SET;
  fl.l_type = (op & LOCK_UN) ? F_UNLCK : (op & LOCK_EX) ? F_WRLCK : F_RDLCK;
  int rc = fcntl(fd, (op & LOCK_NB) ? F_SETLK : F_SETLKW, &fl);
  RETURN_VOID(&c, rc, "fcntl F_SETLK", NULL);
}

static napi_value js_syncfs(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "syncfs");
  int fd = (int)arg_int(&c, 0);
  BAIL_IF_FAILED(&c);
  int rc = syncfs(fd);
  RETURN_VOID(&c, rc, "syncfs", NULL);
}

/* openat2(2) with O_CLOEXEC always added; -1 and errno on failure. */
static int open_beneath(int dirfd, const char *path, int64_t flags, int64_t mode, int64_t resolve) {
  struct open_how how;
  memset(&how, 0, sizeof how);
  how.flags = (uint64_t)flags | O_CLOEXEC;
  how.mode = (uint64_t)mode;
  how.resolve = (uint64_t)resolve;
  return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
}

/* Argument i as a Float64Array whose length `fits`; else a TypeError saying `expected`. */
static double *arg_float64s(call_t *c, size_t i, size_t *len, bool (*fits)(size_t len, size_t arg), size_t arg, const char *expected) {
  napi_typedarray_type type;
  void *data = NULL;
  bool is_ta = false;
  *len = 0;
  if (c->failed) return NULL;
  if (i >= c->argc || napi_is_typedarray(c->env, c->argv[i], &is_ta) != napi_ok || !is_ta ||
      napi_get_typedarray_info(c->env, c->argv[i], &type, len, &data, NULL, NULL) != napi_ok ||
      type != napi_float64_array || !fits(*len, arg)) {
    throw_type(c->env, c->fn, i, expected);
    c->failed = 1;
    return NULL;
  }
  return data;
}

static bool at_least(size_t len, size_t min) { return len >= min; }
static bool multiple_of(size_t len, size_t width) { return len % width == 0; }

/* A Float64Array of at least STAT_FIELDS elements (the caller's, reused across calls). */
#define STAT_FIELDS 7
static double *arg_stat_out(call_t *c, size_t i) {
  size_t len;
  return arg_float64s(c, i, &len, at_least, STAT_FIELDS, "a Float64Array of 7 elements");
}

/* out = [st_dev, st_mode, st_uid, st_gid, st_size, mtime seconds, mtime nanoseconds]. */
static void stat_fields(const struct stat *st, double *out) {
  out[0] = (double)st->st_dev;
  out[1] = (double)st->st_mode;
  out[2] = (double)st->st_uid;
  out[3] = (double)st->st_gid;
  out[4] = (double)st->st_size;
  out[5] = (double)st->st_mtim.tv_sec;
  out[6] = (double)st->st_mtim.tv_nsec;
}

/* fstatFields(fd, out): fstat(2) into `out` (see stat_fields), no Stats object per call. */
static napi_value js_fstat_fields(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "fstatFields");
  int fd = (int)arg_int(&c, 0);
  double *out = arg_stat_out(&c, 1);
  BAIL_IF_FAILED(&c);
  struct stat st;
  int rc = fstat(fd, &st);
  if (rc == 0) stat_fields(&st, out);
  RETURN_VOID(&c, rc, "fstat", NULL);
}

/* openat2(dirfd, path, flags, mode, resolve[, out]); O_CLOEXEC is always added. With `out`, the
 * new fd is also fstat'ed into it (see stat_fields): one call for what every opened file needs
 * next; the fd is closed again if that fails. */
static napi_value js_openat2(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "openat2");
  int dirfd = (int)arg_int(&c, 0);
  const char *path = arg_path(&c, 1);
  int64_t flags = arg_int(&c, 2);
  int64_t mode = arg_int(&c, 3);
  int64_t resolve = arg_int(&c, 4);
  double *out = c.argc > 5 ? arg_stat_out(&c, 5) : NULL;
  BAIL_IF_FAILED(&c);
  int fd = open_beneath(dirfd, path, flags, mode, resolve);
  struct stat st;
  if (fd >= 0 && out != NULL) {
    if (fstat(fd, &st) < 0) {
      int e = errno;
      close(fd);
      errno = e;
      RETURN_INT(&c, -1, "fstat", path);
    }
    stat_fields(&st, out);
  }
  RETURN_INT(&c, fd, "openat2", path);
}

/* ---- mounts ---------------------------------------------------------------------------- */

static napi_value js_fsopen(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "fsopen");
  const char *type = arg_str(&c, 0, 0);
  unsigned flags = (unsigned)arg_int(&c, 1);
  BAIL_IF_FAILED(&c);
  int fd = (int)syscall(SYS_fsopen, type, flags | FSOPEN_CLOEXEC);
  RETURN_INT(&c, fd, "fsopen", type);
}

static int do_fsconfig(int fd, unsigned cmd, const char *key, const void *value, int aux) {
  return (int)syscall(SYS_fsconfig, fd, cmd, key, value, aux);
}

static napi_value js_fsconfig_set_string(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "fsconfigSetString");
  int fd = (int)arg_int(&c, 0);
  const char *key = arg_str(&c, 1, 0);
  const char *val = arg_str(&c, 2, 0);
  BAIL_IF_FAILED(&c);
  int rc = do_fsconfig(fd, FSCONFIG_SET_STRING, key, val, 0);
  RETURN_VOID(&c, rc, "fsconfig", key);
}

static napi_value js_fsconfig_set_flag(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "fsconfigSetFlag");
  int fd = (int)arg_int(&c, 0);
  const char *key = arg_str(&c, 1, 0);
  BAIL_IF_FAILED(&c);
  int rc = do_fsconfig(fd, FSCONFIG_SET_FLAG, key, NULL, 0);
  RETURN_VOID(&c, rc, "fsconfig", key);
}

static napi_value js_fsconfig_set_fd(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "fsconfigSetFd");
  int fd = (int)arg_int(&c, 0);
  const char *key = arg_str(&c, 1, 0);
  int vfd = (int)arg_int(&c, 2);
  BAIL_IF_FAILED(&c);
  int rc = do_fsconfig(fd, FSCONFIG_SET_FD, key, NULL, vfd);
  RETURN_VOID(&c, rc, "fsconfig", key);
}

static napi_value js_fsconfig_create(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "fsconfigCreate");
  int fd = (int)arg_int(&c, 0);
  BAIL_IF_FAILED(&c);
  int rc = do_fsconfig(fd, FSCONFIG_CMD_CREATE, NULL, NULL, 0);
  RETURN_VOID(&c, rc, "fsconfig", "create");
}

static napi_value js_fsmount(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "fsmount");
  int fd = (int)arg_int(&c, 0);
  unsigned flags = (unsigned)arg_int(&c, 1);
  unsigned attrs = (unsigned)arg_int(&c, 2);
  BAIL_IF_FAILED(&c);
  int mfd = (int)syscall(SYS_fsmount, fd, flags | FSMOUNT_CLOEXEC, attrs);
  RETURN_INT(&c, mfd, "fsmount", NULL);
}

static napi_value js_move_mount(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "moveMount");
  int from_fd = (int)arg_int(&c, 0);
  const char *from = arg_str(&c, 1, 0);
  int to_fd = (int)arg_int(&c, 2);
  const char *to = arg_str(&c, 3, 0);
  unsigned flags = (unsigned)arg_int(&c, 4);
  BAIL_IF_FAILED(&c);
  int rc = (int)syscall(SYS_move_mount, from_fd, from, to_fd, to, flags);
  RETURN_VOID(&c, rc, "move_mount", to);
}

static napi_value js_open_tree(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "openTree");
  int dirfd = (int)arg_int(&c, 0);
  const char *path = arg_str(&c, 1, 0);
  unsigned flags = (unsigned)arg_int(&c, 2);
  BAIL_IF_FAILED(&c);
  int fd = (int)syscall(SYS_open_tree, dirfd, path, flags | OPEN_TREE_CLOEXEC);
  RETURN_INT(&c, fd, "open_tree", path);
}

static napi_value js_mount(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "mount");
  const char *src = arg_str(&c, 0, 1);
  const char *target = arg_str(&c, 1, 0);
  const char *type = arg_str(&c, 2, 1);
  unsigned long flags = (unsigned long)arg_int(&c, 3);
  const char *data = arg_str(&c, 4, 1);
  BAIL_IF_FAILED(&c);
  int rc = mount(src, target, type, flags, data);
  RETURN_VOID(&c, rc, "mount", target);
}

static napi_value js_umount2(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "umount2");
  const char *target = arg_str(&c, 0, 0);
  int flags = (int)arg_int(&c, 1);
  BAIL_IF_FAILED(&c);
  int rc = umount2(target, flags);
  RETURN_VOID(&c, rc, "umount2", target);
}

/* ---- unix sockets and fd passing ------------------------------------------------------- */

static napi_value js_socketpair(napi_env env, napi_callback_info info) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) return throw_errno(env, errno, "socketpair", NULL);
  napi_value arr;
  napi_create_array_with_length(env, 2, &arr);
  napi_set_element(env, arr, 0, int_value(env, sv[0]));
  napi_set_element(env, arr, 1, int_value(env, sv[1]));
  return arr;
}

static napi_value js_send_fds(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "sendFds");
  int sock = (int)arg_int(&c, 0);
  size_t len;
  void *data = arg_buf(&c, 1, &len);
  bool is_arr = false;
  uint32_t nfds = 0;
  if (!c.failed && (c.argc < 3 || napi_is_array(env, c.argv[2], &is_arr) != napi_ok || !is_arr ||
                    napi_get_array_length(env, c.argv[2], &nfds) != napi_ok || nfds > MAX_FDS)) {
    throw_type(env, c.fn, 2, "an array of at most 253 fds");
    c.failed = 1;
  }
  BAIL_IF_FAILED(&c);
  int fds[MAX_FDS];
  for (uint32_t i = 0; i < nfds; i++) {
    napi_value v;
    napi_get_element(env, c.argv[2], i, &v);
    if (napi_get_value_int32(env, v, &fds[i]) != napi_ok) {
      call_free(&c);
      return throw_type(env, c.fn, 2, "an array of fd numbers");
    }
  }
  /* A zero-length stream message would carry no fds: always send at least one byte. */
  char zero = 0;
  struct iovec iov = {.iov_base = len ? data : &zero, .iov_len = len ? len : 1};
  union {
    struct cmsghdr h;
    char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
  } ctl;
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (nfds) {
    memset(&ctl, 0, sizeof ctl);
    msg.msg_control = ctl.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
  }
  ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
  RETURN_INT(&c, n, "sendmsg", NULL);
}

/* recvFds(sock, maxData, maxFds) -> {data, fds} | null when nothing is ready (EAGAIN). */
static napi_value js_recv_fds(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "recvFds");
  int sock = (int)arg_int(&c, 0);
  int64_t max_data = arg_int(&c, 1);
  int64_t max_fds = arg_int(&c, 2);
  BAIL_IF_FAILED(&c);
  call_free(&c);
  if (max_data < 1 || max_data > (1 << 24) || max_fds < 0 || max_fds > MAX_FDS)
    return throw_errno(env, EINVAL, "recvmsg", "maxData/maxFds out of range");
  char *data = malloc((size_t)max_data);
  if (!data) return throw_errno(env, ENOMEM, "recvmsg", NULL);
  union {
    struct cmsghdr h;
    char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
  } ctl;
  struct iovec iov = {.iov_base = data, .iov_len = (size_t)max_data};
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctl.buf;
  msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)(max_fds ? max_fds : 1));
  ssize_t n = recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  if (n < 0) {
    int e = errno;
    free(data);
    if (e == EAGAIN) return null_value(env);
    return throw_errno(env, e, "recvmsg", NULL);
  }
  napi_value fds;
  napi_create_array(env, &fds);
  uint32_t k = 0;
  for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
    size_t cnt = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    int got[MAX_FDS];
    memcpy(got, CMSG_DATA(cm), cnt * sizeof(int));
    for (size_t i = 0; i < cnt; i++) napi_set_element(env, fds, k++, int_value(env, got[i]));
  }
  napi_value obj;
  napi_create_object(env, &obj);
  napi_set_named_property(env, obj, "data", buffer_copy(env, data, (size_t)n));
  napi_set_named_property(env, obj, "fds", fds);
  napi_value trunc;
  napi_get_boolean(env, (msg.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) != 0, &trunc);
  napi_set_named_property(env, obj, "truncated", trunc);
  free(data);
  return obj;
}

/* ---- unix sockets and fd readiness (varlink) ------------------------------------------- */

#include <sys/un.h>
#include <uv.h>

/* A path, or "@name" for the abstract namespace (whose name is exactly its bytes: the address
 * length counts no trailing NULs). Returns the address length, -1 (errno) when too long. */
static socklen_t fill_sockaddr_un(struct sockaddr_un *sa, const char *path) {
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  size_t len = strlen(path);
  if (len >= sizeof sa->sun_path) {
    errno = ENAMETOOLONG;
    return (socklen_t)-1;
  }
  memcpy(sa->sun_path, path, len);
  if (path[0] != '@') return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
  sa->sun_path[0] = '\0';
  return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
}

/* listenUnix(path, backlog) -> listening fd (non-blocking). */
static napi_value js_listen_unix(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "listenUnix");
  const char *path = arg_str(&c, 0, 0);
  int backlog = (int)arg_int(&c, 1);
  BAIL_IF_FAILED(&c);
  struct sockaddr_un sa;
  int fd = -1;
  socklen_t len = fill_sockaddr_un(&sa, path);
  if (len != (socklen_t)-1) fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd >= 0 && (bind(fd, (struct sockaddr *)&sa, len) < 0 || listen(fd, backlog) < 0)) {
    int e = errno;
    close(fd);
    errno = e;
    fd = -1;
  }
  RETURN_INT(&c, fd, "listen", path);
}

/* connectUnix(path) -> connected fd (blocking connect, then non-blocking). */
static napi_value js_connect_unix(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "connectUnix");
  const char *path = arg_str(&c, 0, 0);
  BAIL_IF_FAILED(&c);
  struct sockaddr_un sa;
  int fd = -1;
  socklen_t len = fill_sockaddr_un(&sa, path);
  if (len != (socklen_t)-1) fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd >= 0 && (connect(fd, (struct sockaddr *)&sa, len) < 0 || fcntl(fd, F_SETFL, O_NONBLOCK) < 0)) {
    int e = errno;
    close(fd);
    errno = e;
    fd = -1;
  }
  RETURN_INT(&c, fd, "connect", path);
}

/* accept(fd) -> non-blocking connection fd, or null when none is pending (EAGAIN). */
static napi_value js_accept(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "accept");
  int fd = (int)arg_int(&c, 0);
  BAIL_IF_FAILED(&c);
  int conn = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (conn < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return null_value(env);
  RETURN_INT(&c, conn, "accept4", NULL);
}

/* peerHungUp(fd) -> boolean: the socket's peer closed it entirely (POLLHUP), not just its write
 * side (which only makes the socket readable at EOF); poll(2) with no wait. */
static napi_value js_peer_hung_up(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "peerHungUp");
  int fd = (int)arg_int(&c, 0);
  BAIL_IF_FAILED(&c);
  call_free(&c);
  struct pollfd p = {.fd = fd, .events = 0};
  int rc;
  do rc = poll(&p, 1, 0); while (rc < 0 && errno == EINTR);
  if (rc < 0) return throw_errno(env, errno, "poll", NULL);
  napi_value v;
  napi_get_boolean(env, rc > 0 && (p.revents & (POLLHUP | POLLERR | POLLNVAL)) != 0, &v);
  return v;
}

/* peerCredentials(fd) -> { pid, uid, gid }: who connected a unix socket (SO_PEERCRED). */
static napi_value js_peer_credentials(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "peerCredentials");
  int fd = (int)arg_int(&c, 0);
  BAIL_IF_FAILED(&c);
  call_free(&c);
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) return throw_errno(env, errno, "getsockopt SO_PEERCRED", NULL);
  napi_value obj;
  napi_create_object(env, &obj);
  napi_set_named_property(env, obj, "pid", int_value(env, cred.pid));
  napi_set_named_property(env, obj, "uid", int_value(env, cred.uid));
  napi_set_named_property(env, obj, "gid", int_value(env, cred.gid));
  return obj;
}

/* setNonBlocking(fd): O_NONBLOCK on (socket-activated fds and socketpairs arrive blocking). */
static napi_value js_set_nonblocking(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "setNonBlocking");
  int fd = (int)arg_int(&c, 0);
  BAIL_IF_FAILED(&c);
  int fl = fcntl(fd, F_GETFL);
  int rc = fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
  RETURN_VOID(&c, rc, "fcntl F_SETFL", NULL);
}

/*
 * Readiness of a raw fd on Node's own event loop (uv_poll): pollStart(fd, events, cb(status,
 * events)) -> handle; pollUpdate(handle, events); pollStop(handle). The fd stays owned by the
 * caller, who must stop the poll before closing it.
 */
typedef struct {
  uv_poll_t handle;
  napi_env env;
  napi_ref cb;
  napi_async_context ctx;
  int stopped;   /* uv_close requested */
  int closed;    /* uv_close completed */
  int finalized; /* the JS handle was garbage-collected (or the environment torn down) */
  int released;  /* cb and ctx given back to N-API */
} fd_poll_t;

/* While the environment is alive: from pollStop's close callback, or from the finalizer (which
 * also runs when the environment is torn down, before libuv's last close callbacks, which then
 * must not touch it). */
static void poll_release(fd_poll_t *p) {
  if (p->released) return;
  p->released = 1;
  napi_delete_reference(p->env, p->cb);
  napi_async_destroy(p->env, p->ctx);
}

static void poll_closed(uv_handle_t *h) {
  fd_poll_t *p = h->data;
  if (!p->finalized) poll_release(p);
  p->closed = 1;
  if (p->finalized) free(p);
}

static void poll_fired(uv_poll_t *h, int status, int events) {
  fd_poll_t *p = h->data;
  if (p->released) return;
  napi_env env = p->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value cb, recv, argv[2], result;
  napi_get_reference_value(env, p->cb, &cb);
  napi_get_global(env, &recv);
  argv[0] = int_value(env, status);
  argv[1] = int_value(env, events);
  if (napi_make_callback(env, p->ctx, recv, cb, 2, argv, &result) == napi_pending_exception) {
    napi_value err;
    napi_get_and_clear_last_exception(env, &err);
    napi_fatal_exception(env, err);
  }
  napi_close_handle_scope(env, scope);
}

static void poll_finalize(napi_env env, void *data, void *hint) {
  fd_poll_t *p = data;
  poll_release(p);
  p->finalized = 1;
  if (p->closed) {
    free(p);
  } else if (!p->stopped) {
    p->stopped = 1;
    uv_close((uv_handle_t *)&p->handle, poll_closed);
  }
}

static fd_poll_t *arg_poll(call_t *c, size_t i) {
  void *p = NULL;
  if (c->failed) return NULL;
  if (i >= c->argc || napi_get_value_external(c->env, c->argv[i], &p) != napi_ok || !p) {
    throw_type(c->env, c->fn, i, "a poll handle");
    c->failed = 1;
  }
  return p;
}

static napi_value js_poll_start(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "pollStart");
  int fd = (int)arg_int(&c, 0);
  int events = (int)arg_int(&c, 1);
  napi_valuetype t = napi_undefined;
  if (!c.failed && (c.argc < 3 || napi_typeof(env, c.argv[2], &t) != napi_ok || t != napi_function)) {
    throw_type(env, c.fn, 2, "a function");
    c.failed = 1;
  }
  BAIL_IF_FAILED(&c);
  call_free(&c);
  uv_loop_t *loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) return throw_errno(env, EINVAL, "uv_poll_init", "no event loop");
  fd_poll_t *p = calloc(1, sizeof *p);
  if (!p) return throw_errno(env, ENOMEM, "uv_poll_init", NULL);
  int rc = uv_poll_init(loop, &p->handle, fd);
  if (rc < 0) {
    free(p);
    return throw_errno(env, -rc, "uv_poll_init", NULL);
  }
  p->handle.data = p;
  p->env = env;
  napi_value name;
  napi_value resource;
  napi_create_string_utf8(env, "cfs:fdpoll", NAPI_AUTO_LENGTH, &name);
  napi_create_object(env, &resource);
  napi_async_init(env, resource, name, &p->ctx);
  napi_create_reference(env, c.argv[2], 1, &p->cb);
  rc = uv_poll_start(&p->handle, events, poll_fired);
  if (rc < 0) {
    p->stopped = 1;
    poll_release(p);
    p->finalized = 1; /* no JS handle will exist */
    uv_close((uv_handle_t *)&p->handle, poll_closed);
    return throw_errno(env, -rc, "uv_poll_start", NULL);
  }
  napi_value ext;
  napi_create_external(env, p, poll_finalize, NULL, &ext);
  return ext;
}

static napi_value js_poll_update(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "pollUpdate");
  fd_poll_t *p = arg_poll(&c, 0);
  int events = (int)arg_int(&c, 1);
  BAIL_IF_FAILED(&c);
  call_free(&c);
  if (p->stopped) return throw_errno(env, EBADF, "uv_poll_start", "poll already stopped");
  int rc = events ? uv_poll_start(&p->handle, events, poll_fired) : uv_poll_stop(&p->handle);
  if (rc < 0) return throw_errno(env, -rc, "uv_poll_start", NULL);
  return undefined(env);
}

static napi_value js_poll_stop(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "pollStop");
  fd_poll_t *p = arg_poll(&c, 0);
  BAIL_IF_FAILED(&c);
  call_free(&c);
  if (!p->stopped) {
    p->stopped = 1;
    uv_poll_stop(&p->handle);
    uv_close((uv_handle_t *)&p->handle, poll_closed);
  }
  return undefined(env);
}

/* ---- FUSE passthrough (kernel 6.9+): backing files registered on a /dev/fuse fd ----------- */

/* Defined here: the build host's <linux/fuse.h> may predate protocol 7.40. */
struct cfs_fuse_backing_map {
  int32_t fd;
  uint32_t flags;
  uint64_t padding;
};
#define CFS_FUSE_DEV_IOC_BACKING_OPEN _IOW(229, 1, struct cfs_fuse_backing_map)
#define CFS_FUSE_DEV_IOC_BACKING_CLOSE _IOW(229, 2, uint32_t)

/* fuseBackingOpen(devFd, fd) -> backing id (FUSE_DEV_IOC_BACKING_OPEN; needs CAP_SYS_ADMIN). */
static napi_value js_fuse_backing_open(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "fuseBackingOpen");
  int dev = (int)arg_int(&c, 0);
  struct cfs_fuse_backing_map map = {.fd = (int32_t)arg_int(&c, 1), .flags = 0, .padding = 0};
  BAIL_IF_FAILED(&c);
  int id = ioctl(dev, CFS_FUSE_DEV_IOC_BACKING_OPEN, &map);
  RETURN_INT(&c, id, "FUSE_DEV_IOC_BACKING_OPEN", NULL);
}

/* fuseBackingClose(devFd, id) (FUSE_DEV_IOC_BACKING_CLOSE). */
static napi_value js_fuse_backing_close(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "fuseBackingClose");
  int dev = (int)arg_int(&c, 0);
  uint32_t id = (uint32_t)arg_int(&c, 1);
  BAIL_IF_FAILED(&c);
  int rc = ioctl(dev, CFS_FUSE_DEV_IOC_BACKING_CLOSE, &id);
  RETURN_VOID(&c, rc, "FUSE_DEV_IOC_BACKING_CLOSE", NULL);
}

/* ---- module ---------------------------------------------------------------------------- */

#define FN(name, cb) {name, NULL, cb, NULL, NULL, NULL, napi_enumerable, NULL}

static void add_const(napi_env env, napi_value obj, const char *name, int64_t v) {
  napi_set_named_property(env, obj, name, int_value(env, v));
}

static napi_value make_constants(napi_env env) {
  napi_value k;
  napi_create_object(env, &k);
#define C(n) add_const(env, k, #n, (int64_t)(n))
  C(O_TMPFILE); C(O_PATH); C(O_DIRECTORY); C(O_RDONLY); C(O_WRONLY); C(O_RDWR);
  C(AT_FDCWD); C(AT_EMPTY_PATH);
  C(MOVE_MOUNT_F_EMPTY_PATH);
  C(MOUNT_ATTR_RDONLY); C(MOUNT_ATTR_NOSUID); C(MOUNT_ATTR_NODEV); C(MOUNT_ATTR_NOEXEC);
  C(MOUNT_ATTR_NOATIME); C(MOUNT_ATTR_STRICTATIME); C(MOUNT_ATTR_NODIRATIME);
  C(OPEN_TREE_CLONE);
  C(MNT_DETACH); C(UMOUNT_NOFOLLOW);
  C(MS_RDONLY); C(MS_NOSUID); C(MS_NODEV);
  C(RESOLVE_NO_XDEV); C(RESOLVE_NO_MAGICLINKS); C(RESOLVE_BENEATH);
  C(LOCK_SH); C(LOCK_EX); C(LOCK_NB); C(LOCK_UN);
  C(XATTR_CREATE);
  add_const(env, k, "POLL_READABLE", UV_READABLE);
  add_const(env, k, "POLL_WRITABLE", UV_WRITABLE);
  add_const(env, k, "POLL_DISCONNECT", UV_DISCONNECT);
#undef C
  return k;
}

/* ---- storeObjects: write whole objects off the JS thread ---------------------------------
 * For each (name, bytes), in order: open(O_TMPFILE) in the objects dir, write the bytes, then
 * linkat() the file to its name (relative to the objects dir, fan-out directory created on
 * demand). One threadpool job writes a batch, so thousands of small objects cost a few queue
 * round trips, not one each, while JS keeps parsing. An existing name wins (content
 * addressing). For insecure repositories: secure ones compare the kernel's fs-verity
 * measurement before naming an object, which the caller does synchronously.
 * The first failure stops the job and rejects with an error naming the object. */
typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref datas_ref;
  char *dir;
  char *names; /* '\n'-separated, split in place into name[] */
  size_t n;
  const char **name;
  const char **data;
  size_t *len;
  size_t failed_index;
  int err;
  const char *failed_call;
  size_t present; /* objects that were there already */
} store_job_t;

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* One object: 0 (*present set when it was there already), or an errno with *failed_call set. */
static int store_one(int dirfd, const char *name, const char *data, size_t len, const char **failed_call, int *present) {
  *present = 0;
  if (faccessat(dirfd, name, F_OK, AT_SYMLINK_NOFOLLOW) == 0) {
    *present = 1;
    return 0;
  }
  int fd = openat(dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0644);
  if (fd < 0) { *failed_call = "open O_TMPFILE"; return errno; }
  char proc[64];
  snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
  int err = 0;
  if (write_all(fd, data, len) < 0) {
    err = errno; *failed_call = "write";
  } else if (linkat(AT_FDCWD, proc, dirfd, name, AT_SYMLINK_FOLLOW) < 0 && !(*present = errno == EEXIST)) {
    err = errno; *failed_call = "linkat";
    const char *slash = strrchr(name, '/');
    if (err == ENOENT && slash && (size_t)(slash - name) < 256) {
      /* The fan-out directory does not exist yet. */
      char parent[256];
      memcpy(parent, name, (size_t)(slash - name));
      parent[slash - name] = 0;
      err = 0;
      if (mkdirat(dirfd, parent, 0755) < 0 && errno != EEXIST) { err = errno; *failed_call = "mkdir"; }
      else if (linkat(AT_FDCWD, proc, dirfd, name, AT_SYMLINK_FOLLOW) < 0 && !(*present = errno == EEXIST)) { err = errno; *failed_call = "linkat"; }
    }
  }
  close(fd);
  return err;
}

static void store_execute(napi_env env, void *arg) {
  (void)env;
  store_job_t *j = arg;
  int dirfd = open(j->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dirfd < 0) { j->err = errno; j->failed_call = "open"; j->failed_index = SIZE_MAX; return; }
  for (size_t i = 0; i < j->n; i++) {
    int present = 0;
    j->err = store_one(dirfd, j->name[i], j->data[i], j->len[i], &j->failed_call, &present);
    if (j->err) { j->failed_index = i; break; }
    j->present += (size_t)present;
  }
  close(dirfd);
}

static void store_job_free(napi_env env, store_job_t *j) {
  if (j->datas_ref) napi_delete_reference(env, j->datas_ref);
  free(j->dir);
  free(j->names);
  free(j->name);
  free(j->data);
  free(j->len);
  free(j);
}

static void store_complete(napi_env env, napi_status status, void *arg) {
  store_job_t *j = arg;
  if (status != napi_ok && !j->err) { j->err = ECANCELED; j->failed_call = "storeObjects"; j->failed_index = SIZE_MAX; }
  if (j->err) {
    char what[4096 + 256];
    if (j->failed_index < j->n) snprintf(what, sizeof what, "%s/%s", j->dir, j->name[j->failed_index]);
    else snprintf(what, sizeof what, "%s", j->dir);
    napi_reject_deferred(env, j->deferred, errno_error(env, j->err, j->failed_call, what));
  } else {
    napi_resolve_deferred(env, j->deferred, int_value(env, (int64_t)j->present));
  }
  napi_delete_async_work(env, j->work);
  store_job_free(env, j);
}

/* `count` names "xx/yyyy…" in lowercase hex joined by '\n', and no NUL inside the string (`len` its length). */
static int object_names_ok(const char *names, size_t len, uint32_t count) {
  static const char hex[] = "0123456789abcdef";
  if (len != strlen(names) || count == 0) return 0;
  uint32_t k = 1;
  for (const char *p = names;; k++) {
    size_t l = strcspn(p, "\n");
    if (l <= 3 || p[2] != '/' || strspn(p, hex) != 2 || strspn(p + 3, hex) != l - 3) return 0;
    if (!p[l]) break;
    p += l + 1;
  }
  return k == count;
}

/* storeObjects(dir, names joined by '\n', Array<Buffer> (one per name)) -> Promise<number> (how many were there already). */
static napi_value js_store_objects(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "storeObjects");
  const char *dir = arg_str(&c, 0, 0);
  const char *names = arg_str(&c, 1, 0);
  bool is_array = false;
  uint32_t count = 0;
  if (!c.failed && (c.argc < 3 || napi_is_array(env, c.argv[2], &is_array) != napi_ok || !is_array ||
                    napi_get_array_length(env, c.argv[2], &count) != napi_ok)) {
    throw_type(env, c.fn, 2, "an Array of Buffers");
    c.failed = 1;
  }
  BAIL_IF_FAILED(&c);
  size_t names_len = 0;
  napi_get_value_string_utf8(env, c.argv[1], NULL, 0, &names_len);
  if (!object_names_ok(names, names_len, count)) {
    call_free(&c);
    return throw_errno(env, EINVAL, "storeObjects", "one object name (xx/yyyy… in hex) per Buffer");
  }
  size_t n = count;
  store_job_t *j = calloc(1, sizeof *j);
  if (j) {
    j->dir = strdup(dir);
    j->names = strdup(names);
    j->name = calloc(count ? count : 1, sizeof *j->name);
    j->data = calloc(count ? count : 1, sizeof *j->data);
    j->len = calloc(count ? count : 1, sizeof *j->len);
  }
  call_free(&c);
  if (!j || !j->dir || !j->names || !j->name || !j->data || !j->len) {
    if (j) store_job_free(env, j);
    return throw_errno(env, ENOMEM, "storeObjects", NULL);
  }
  const char *bad = NULL;
  char *p = j->names;
  for (size_t i = 0; i < n; i++) {
    j->name[i] = p;
    p += strcspn(p, "\n");
    if (*p) *p++ = 0;
  }
  j->n = n;
  for (uint32_t i = 0; !bad && i < count; i++) {
    napi_value el;
    bool is_buf = false;
    void *data = NULL;
    if (napi_get_element(env, c.argv[2], i, &el) != napi_ok || napi_is_buffer(env, el, &is_buf) != napi_ok || !is_buf ||
        napi_get_buffer_info(env, el, &data, &j->len[i]) != napi_ok) {
      bad = "an Array of Buffers";
      break;
    }
    j->data[i] = data;
  }
  if (bad) {
    store_job_free(env, j);
    return throw_errno(env, EINVAL, "storeObjects", bad);
  }
  napi_value promise, name;
  /* The Buffers stay alive (and unmoved) while the array is referenced; callers never change it. */
  napi_create_reference(env, c.argv[2], 1, &j->datas_ref);
  napi_create_promise(env, &j->deferred, &promise);
  napi_create_string_utf8(env, "cfs.storeObjects", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, store_execute, store_complete, j, &j->work);
  napi_queue_async_work(env, j->work);
  return promise;
}

/* ---- hashing: fs-verity digests and plain stream digests ----------------------------------
 * verityNew/verityUpdate/verityDigest: the fs-verity file digest (Merkle tree over 4096-byte
 * blocks, no salt, then the hash of the 256-byte fsverity_descriptor) in constant memory: one
 * pending block per tree level, each kept open until another hash must be added, because only at
 * the end is it known whether a level's single hash is the root. Empty input: the descriptor's
 * root hash is all zeros.
 * hashNew/hashUpdate/hashDigest: a plain streaming digest (layer diff_ids and the like).
 * verityHashFds/hashFeed: both over ranges of fds, on the threadpool.
 * Algorithms are fetched from OpenSSL once and shared by all threads: passing EVP_sha256() to
 * every per-block EVP_DigestInit_ex2 makes OpenSSL 3 do an implicit fetch each time (~10% at
 * 4 KiB blocks). */

#define VERITY_BLOCK 4096
#define VERITY_LOG_BLOCK 12
#define VERITY_MAX_LEVELS 10 /* 2^64 bytes with 64 hashes per block need 9 */
#define IO_CHUNK (1 << 20)
#define STREAM_HASH_MAGIC 0x68736663u /* "cfsh" */
#define VERITY_MAGIC 0x76736663u      /* "cfsv" */

typedef struct {
  const char *name; /* as JS spells it */
  const char *ossl; /* OpenSSL algorithm name */
  int verity_id;    /* FS_VERITY_HASH_ALG_*; 0 when fs-verity does not use it */
  EVP_MD *md;       /* fetched once */
} hash_alg_t;

static hash_alg_t hash_algs[] = {
    {"sha256", "SHA2-256", FS_VERITY_HASH_ALG_SHA256, NULL},
    {"sha384", "SHA2-384", 0, NULL},
    {"sha512", "SHA2-512", FS_VERITY_HASH_ALG_SHA512, NULL},
};
#define N_HASH_ALGS (sizeof hash_algs / sizeof hash_algs[0])
static pthread_once_t hash_algs_once = PTHREAD_ONCE_INIT;

static void hash_algs_fetch(void) {
  for (size_t i = 0; i < N_HASH_ALGS; i++) hash_algs[i].md = EVP_MD_fetch(NULL, hash_algs[i].ossl, NULL);
}

/* By JS name, or (name NULL) by fs-verity id; NULL when unknown. */
static const hash_alg_t *hash_alg_find(const char *name, int verity_id) {
  pthread_once(&hash_algs_once, hash_algs_fetch);
  for (size_t i = 0; i < N_HASH_ALGS; i++) {
    const hash_alg_t *a = &hash_algs[i];
    int match = name ? strcmp(a->name, name) == 0 : verity_id != 0 && a->verity_id == verity_id;
    if (match) return a->md ? a : NULL;
  }
  return NULL;
}

static int digest_once(EVP_MD_CTX *ctx, const EVP_MD *md, const void *p, size_t n, uint8_t *out) {
  unsigned len;
  if (EVP_DigestInit_ex2(ctx, md, NULL) != 1 || EVP_DigestUpdate(ctx, p, n) != 1 ||
      EVP_DigestFinal_ex(ctx, out, &len) != 1) {
    errno = EIO;
    return -1;
  }
  return 0;
}

typedef struct {
  uint32_t magic;
  int busy;     /* a hashFeed job is updating ctx: JS must not touch it */
  int finished; /* digested */
  const hash_alg_t *alg;
  EVP_MD_CTX *ctx;
} stream_hash_t;

typedef struct {
  uint8_t *block; /* pending hash block, allocated when the level first gets a hash */
  size_t fill;
  uint64_t emitted; /* blocks of this level hashed into the next one */
} verity_level_t;

typedef struct {
  uint32_t magic;
  int finished; /* digested, or an update failed half-way */
  const hash_alg_t *alg;
  size_t hash_size;
  EVP_MD_CTX *ctx;
  uint64_t size;
  size_t data_fill;
  int nlevels;
  verity_level_t levels[VERITY_MAX_LEVELS];
  uint8_t data[VERITY_BLOCK]; /* pending data block */
} verity_t;

static verity_t *verity_new(const hash_alg_t *alg) {
  verity_t *v = calloc(1, sizeof *v);
  if (v && !(v->ctx = EVP_MD_CTX_new())) {
    free(v);
    v = NULL;
  }
  if (!v) {
    errno = ENOMEM;
    return NULL;
  }
  v->magic = VERITY_MAGIC;
  v->alg = alg;
  v->hash_size = (size_t)EVP_MD_get_size(alg->md);
  return v;
}

static void verity_free(verity_t *v) {
  if (!v) return;
  for (int i = 0; i < v->nlevels; i++) free(v->levels[i].block);
  EVP_MD_CTX_free(v->ctx);
  free(v);
}

static int verity_push(verity_t *v, int level, const uint8_t *hash);

/* Hashes the zero-padded pending block of `level` into level + 1. */
static int verity_flush_level(verity_t *v, int level) {
  verity_level_t *lv = &v->levels[level];
  uint8_t h[EVP_MAX_MD_SIZE];
  memset(lv->block + lv->fill, 0, VERITY_BLOCK - lv->fill);
  if (digest_once(v->ctx, v->alg->md, lv->block, VERITY_BLOCK, h) < 0) return -1;
  lv->fill = 0;
  lv->emitted++;
  return verity_push(v, level + 1, h);
}

static int verity_push(verity_t *v, int level, const uint8_t *hash) {
  if (level >= VERITY_MAX_LEVELS) {
    errno = EFBIG;
    return -1;
  }
  verity_level_t *lv = &v->levels[level];
  if (level == v->nlevels) {
    if (!(lv->block = malloc(VERITY_BLOCK))) {
      errno = ENOMEM;
      return -1;
    }
    v->nlevels++;
  }
  if (lv->fill + v->hash_size > VERITY_BLOCK && verity_flush_level(v, level) < 0) return -1;
  memcpy(lv->block + lv->fill, hash, v->hash_size);
  lv->fill += v->hash_size;
  return 0;
}

static int verity_data_block(verity_t *v, const uint8_t *block) {
  uint8_t h[EVP_MAX_MD_SIZE];
  return digest_once(v->ctx, v->alg->md, block, VERITY_BLOCK, h) < 0 ? -1 : verity_push(v, 0, h);
}

static int verity_update(verity_t *v, const uint8_t *p, size_t n) {
  v->size += n;
  while (n > 0) {
    if (v->data_fill == 0 && n >= VERITY_BLOCK) { /* whole blocks straight from the input */
      if (verity_data_block(v, p) < 0) return -1;
      p += VERITY_BLOCK;
      n -= VERITY_BLOCK;
      continue;
    }
    size_t k = VERITY_BLOCK - v->data_fill < n ? VERITY_BLOCK - v->data_fill : n;
    memcpy(v->data + v->data_fill, p, k);
    v->data_fill += k;
    p += k;
    n -= k;
    if (v->data_fill == VERITY_BLOCK) {
      if (verity_data_block(v, v->data) < 0) return -1;
      v->data_fill = 0;
    }
  }
  return 0;
}

/* Finishes the tree and writes the fs-verity digest (hash_size bytes) to out. */
static int verity_final(verity_t *v, uint8_t *out) {
  struct fsverity_descriptor d;
  memset(&d, 0, sizeof d);
  d.version = 1;
  d.hash_algorithm = (uint8_t)v->alg->verity_id;
  d.log_blocksize = VERITY_LOG_BLOCK;
  d.data_size = htole64(v->size);
  v->finished = 1;
  if (v->size > 0) {
    if (v->data_fill > 0) {
      memset(v->data + v->data_fill, 0, VERITY_BLOCK - v->data_fill);
      if (verity_data_block(v, v->data) < 0) return -1;
      v->data_fill = 0;
    }
    for (int level = 0;; level++) {
      if (level >= v->nlevels) {
        errno = EIO; /* unreachable: a level below the root always has one above it */
        return -1;
      }
      verity_level_t *lv = &v->levels[level];
      if (lv->emitted == 0 && lv->fill == v->hash_size && level + 1 == v->nlevels) {
        memcpy(d.root_hash, lv->block, v->hash_size);
        break;
      }
      if (lv->fill > 0 && verity_flush_level(v, level) < 0) return -1;
    }
  }
  return digest_once(v->ctx, v->alg->md, &d, sizeof d, out);
}

static void *arg_ext(call_t *c, size_t i, uint32_t magic, const char *expected) {
  void *p = NULL;
  if (c->failed) return NULL;
  if (i >= c->argc || napi_get_value_external(c->env, c->argv[i], &p) != napi_ok || !p || *(uint32_t *)p != magic) {
    throw_type(c->env, c->fn, i, expected);
    c->failed = 1;
    return NULL;
  }
  return p;
}

static void verity_finalize(napi_env env, void *data, void *hint) {
  verity_free(data);
}

/* verityNew(algId) -> fs-verity hasher (algId: FS_VERITY_HASH_ALG_*). */
static napi_value js_verity_new(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "verityNew");
  int id = (int)arg_int(&c, 0);
  BAIL_IF_FAILED(&c);
  call_free(&c);
  const hash_alg_t *a = hash_alg_find(NULL, id);
  if (!a) return throw_errno(env, EINVAL, "verityNew", "unknown fs-verity hash algorithm");
  verity_t *v = verity_new(a);
  napi_value ext;
  if (!v) return throw_errno(env, errno, "verityNew", NULL);
  if (napi_create_external(env, v, verity_finalize, NULL, &ext) != napi_ok) {
    verity_free(v);
    return NULL;
  }
  return ext;
}

/* verityDigestBuffer(data, algId) -> Buffer: the fs-verity digest of one buffer, without a
 * hasher object (small files: a JS-visible hasher per file costs more than the hashing). */
static napi_value js_verity_digest_buffer(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "verityDigestBuffer");
  size_t len = 0;
  void *data = arg_buf(&c, 0, &len);
  int id = (int)arg_int(&c, 1);
  BAIL_IF_FAILED(&c);
  call_free(&c);
  const hash_alg_t *a = hash_alg_find(NULL, id);
  if (!a) return throw_errno(env, EINVAL, "verityDigestBuffer", "unknown fs-verity hash algorithm");
  verity_t *v = verity_new(a);
  if (!v) return throw_errno(env, errno, "verityDigestBuffer", NULL);
  uint8_t out[EVP_MAX_MD_SIZE];
  int ok = verity_update(v, data, len) == 0 && verity_final(v, out) == 0;
  int err = errno;
  size_t size = v->hash_size;
  verity_free(v);
  if (!ok) return throw_errno(env, err, "verityDigestBuffer", NULL);
  return buffer_copy(env, out, size);
}

static napi_value js_verity_update(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "verityUpdate");
  verity_t *v = arg_ext(&c, 0, VERITY_MAGIC, "an fs-verity hasher");
  size_t len = 0;
  void *data = arg_buf(&c, 1, &len);
  BAIL_IF_FAILED(&c);
  call_free(&c);
  if (v->finished) return throw_errno(env, EINVAL, "verityUpdate", "hasher already finished");
  if (verity_update(v, data, len) < 0) {
    v->finished = 1;
    return throw_errno(env, errno, "verityUpdate", NULL);
  }
  return undefined(env);
}

static napi_value js_verity_digest(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "verityDigest");
  verity_t *v = arg_ext(&c, 0, VERITY_MAGIC, "an fs-verity hasher");
  BAIL_IF_FAILED(&c);
  call_free(&c);
  uint8_t out[EVP_MAX_MD_SIZE];
  if (v->finished) return throw_errno(env, EINVAL, "verityDigest", "hasher already finished");
  if (verity_final(v, out) < 0) return throw_errno(env, errno, "verityDigest", NULL);
  return buffer_copy(env, out, v->hash_size);
}

static void stream_hash_finalize(napi_env env, void *data, void *hint) {
  stream_hash_t *h = data;
  EVP_MD_CTX_free(h->ctx);
  free(h);
}

/* Throws unless JS may use h now. */
static int stream_hash_usable(napi_env env, stream_hash_t *h, const char *fn) {
  if (h->busy) throw_errno(env, EBUSY, fn, "stream hash is in use by hashFeed");
  else if (h->finished) throw_errno(env, EINVAL, fn, "stream hash already digested");
  return !h->busy && !h->finished;
}

/* hashNew(name) -> stream hash (name: 'sha256' | 'sha384' | 'sha512'). */
static napi_value js_hash_new(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "hashNew");
  const char *name = arg_str(&c, 0, 0);
  BAIL_IF_FAILED(&c);
  const hash_alg_t *a = hash_alg_find(name, 0);
  if (!a) {
    napi_value r = throw_errno(env, EINVAL, "hashNew", name);
    call_free(&c);
    return r;
  }
  call_free(&c);
  stream_hash_t *h = calloc(1, sizeof *h);
  if (h) h->ctx = EVP_MD_CTX_new();
  if (!h || !h->ctx || EVP_DigestInit_ex2(h->ctx, a->md, NULL) != 1) {
    if (h) EVP_MD_CTX_free(h->ctx);
    free(h);
    return throw_errno(env, ENOMEM, "hashNew", NULL);
  }
  h->magic = STREAM_HASH_MAGIC;
  h->alg = a;
  napi_value ext;
  if (napi_create_external(env, h, stream_hash_finalize, NULL, &ext) != napi_ok) {
    stream_hash_finalize(env, h, NULL);
    return NULL;
  }
  return ext;
}

static napi_value js_hash_update(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "hashUpdate");
  stream_hash_t *h = arg_ext(&c, 0, STREAM_HASH_MAGIC, "a stream hash");
  size_t len = 0;
  void *data = arg_buf(&c, 1, &len);
  BAIL_IF_FAILED(&c);
  call_free(&c);
  if (!stream_hash_usable(env, h, "hashUpdate")) return NULL;
  if (EVP_DigestUpdate(h->ctx, data, len) != 1) return throw_errno(env, EIO, "EVP_DigestUpdate", NULL);
  return undefined(env);
}

static napi_value js_hash_digest(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "hashDigest");
  stream_hash_t *h = arg_ext(&c, 0, STREAM_HASH_MAGIC, "a stream hash");
  BAIL_IF_FAILED(&c);
  call_free(&c);
  if (!stream_hash_usable(env, h, "hashDigest")) return NULL;
  uint8_t out[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  h->finished = 1;
  if (EVP_DigestFinal_ex(h->ctx, out, &len) != 1) return throw_errno(env, EIO, "EVP_DigestFinal_ex", NULL);
  return buffer_copy(env, out, len);
}

/* ---- file hashing on the threadpool ------------------------------------------------------
 * verityHashFds: the fs-verity digests of [0, length) of several fds, in one job.
 * hashFeed: appends segments (ranges of one Buffer or of fds) to a stream hash, in order, in one
 * job; the stream hash is busy until it settles.
 * Jobs run on different pool threads, so the Merkle trees of many files and the digest of the
 * stream they belong to are computed in parallel. A file shorter than asked rejects with code
 * 'ESHORT', .index (the segment) and .offset (where it ended); the stream hash has then seen the
 * bytes up to there. fds must stay open until the promise settles. */
typedef struct {
  int fd; /* -1: the job's Buffer */
  uint64_t off, len;
} hash_seg_t;

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref hash_ref, data_ref; /* keep the stream hash and the Buffer alive */
  stream_hash_t *hash;         /* hashFeed */
  const hash_alg_t *alg;       /* verityHashFds */
  const uint8_t *data;
  size_t data_len;
  hash_seg_t *segs;
  size_t nsegs;
  uint8_t *digests; /* verityHashFds: nsegs digests of dsize bytes; hashFeed: nverity */
  size_t dsize;
  size_t *verity_segs; /* hashFeed: segments (ascending) whose fs-verity digest is computed too */
  size_t nverity;
  size_t failed_index;
  uint64_t failed_at;
  int short_read;
  int err;
  const char *failed_call;
  const char *fn;
} hash_job_t;

static __thread uint8_t *io_buf; /* one per threadpool thread, reused by every job */

typedef int (*hash_update_fn)(void *ctx, const uint8_t *p, size_t n);

static int update_verity(void *ctx, const uint8_t *p, size_t n) { return verity_update(ctx, p, n); }
static int update_stream(void *ctx, const uint8_t *p, size_t n) { return EVP_DigestUpdate(ctx, p, n) == 1 ? 0 : -1; }

/* Feeds segment idx of the job (a range of an fd) to update; -1 with the failure noted in j. */
static int hash_fd_range(hash_job_t *j, size_t idx, hash_update_fn update, void *ctx) {
  const hash_seg_t *s = &j->segs[idx];
  if (!io_buf && !(io_buf = malloc(IO_CHUNK))) { j->err = ENOMEM; j->failed_call = "malloc"; return -1; }
  for (uint64_t done = 0; done < s->len;) {
    uint64_t left = s->len - done;
    ssize_t n = pread(s->fd, io_buf, left < IO_CHUNK ? (size_t)left : IO_CHUNK, (off_t)(s->off + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) { j->err = errno; j->failed_call = "pread"; j->failed_index = idx; return -1; }
    if (n == 0) { j->short_read = 1; j->failed_index = idx; j->failed_at = s->off + done; return -1; }
    if (update(ctx, io_buf, (size_t)n) < 0) { j->err = EIO; j->failed_call = "hash update"; return -1; }
    done += (uint64_t)n;
  }
  return 0;
}

static void verity_fds_execute(napi_env env, void *arg) {
  (void)env;
  hash_job_t *j = arg;
  for (size_t i = 0; i < j->nsegs; i++) {
    verity_t *v = verity_new(j->alg);
    if (!v) { j->err = ENOMEM; j->failed_call = "verityNew"; return; }
    int rc = hash_fd_range(j, i, update_verity, v);
    if (rc == 0 && verity_final(v, j->digests + i * j->dsize) < 0) { j->err = errno; j->failed_call = "verityDigest"; rc = -1; }
    verity_free(v);
    if (rc < 0) return;
  }
}

/* A stream hash and an fs-verity digest fed from one read. */
typedef struct {
  EVP_MD_CTX *stream;
  verity_t *verity;
} stream_and_verity_t;

static int update_both(void *ctx, const uint8_t *p, size_t n) {
  stream_and_verity_t *b = ctx;
  return update_stream(b->stream, p, n) < 0 ? -1 : verity_update(b->verity, p, n);
}

/* Segment idx appended to the stream and, from the same reads, its fs-verity digest into `out`. */
static int hash_fd_range_with_verity(hash_job_t *j, size_t idx, uint8_t *out) {
  stream_and_verity_t b = { j->hash->ctx, verity_new(j->alg) };
  if (!b.verity) { j->err = ENOMEM; j->failed_call = "verityNew"; return -1; }
  int rc = hash_fd_range(j, idx, update_both, &b);
  if (rc == 0 && verity_final(b.verity, out) < 0) { j->err = errno; j->failed_call = "verityDigest"; rc = -1; }
  verity_free(b.verity);
  return rc;
}

static void hash_feed_execute(napi_env env, void *arg) {
  (void)env;
  hash_job_t *j = arg;
  size_t k = 0; /* next entry of verity_segs */
  for (size_t i = 0; i < j->nsegs; i++) {
    const hash_seg_t *s = &j->segs[i];
    if (k < j->nverity && j->verity_segs[k] == i) {
      if (hash_fd_range_with_verity(j, i, j->digests + k * j->dsize) < 0) return;
      k++;
    } else if (s->fd >= 0) {
      if (hash_fd_range(j, i, update_stream, j->hash->ctx) < 0) return;
    } else if (update_stream(j->hash->ctx, j->data + s->off, (size_t)s->len) < 0) {
      j->err = EIO; j->failed_call = "hash update"; return;
    }
  }
}

static napi_value short_error(napi_env env, const hash_job_t *j) {
  char msg[160];
  snprintf(msg, sizeof msg, "%s: segment %zu: file ended at offset %llu of %llu", j->fn, j->failed_index,
           (unsigned long long)j->failed_at, (unsigned long long)(j->segs[j->failed_index].off + j->segs[j->failed_index].len));
  napi_value jmsg, jerr;
  if (napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &jmsg) != napi_ok) return NULL;
  if (napi_create_error(env, NULL, jmsg, &jerr) != napi_ok) return NULL;
  set_prop_str(env, jerr, "code", "ESHORT");
  napi_set_named_property(env, jerr, "index", int_value(env, (int64_t)j->failed_index));
  napi_set_named_property(env, jerr, "offset", int_value(env, (int64_t)j->failed_at));
  return jerr;
}

static void hash_job_free(napi_env env, hash_job_t *j) {
  if (j->hash_ref) napi_delete_reference(env, j->hash_ref);
  if (j->data_ref) napi_delete_reference(env, j->data_ref);
  free(j->segs);
  free(j->digests);
  free(j->verity_segs);
  free(j);
}

static void hash_job_complete(napi_env env, napi_status status, void *arg) {
  hash_job_t *j = arg;
  if (j->hash) j->hash->busy = 0;
  if (status != napi_ok && !j->err && !j->short_read) { j->err = ECANCELED; j->failed_call = j->fn; }
  napi_value r;
  if (j->err) {
    r = errno_error(env, j->err, j->failed_call, NULL);
    if (r && j->failed_call && strcmp(j->failed_call, "pread") == 0) napi_set_named_property(env, r, "index", int_value(env, (int64_t)j->failed_index));
    napi_reject_deferred(env, j->deferred, r);
  } else if (j->short_read) {
    napi_reject_deferred(env, j->deferred, short_error(env, j));
  } else {
    r = j->digests ? buffer_copy(env, j->digests, (j->verity_segs ? j->nverity : j->nsegs) * j->dsize) : undefined(env);
    napi_resolve_deferred(env, j->deferred, r);
  }
  napi_delete_async_work(env, j->work);
  hash_job_free(env, j);
}

/* A Float64Array of `width`-tuples as segments: (fd, length) at width 2, (fd, offset, length) at 3. */
static hash_seg_t *arg_segments(call_t *c, size_t i, size_t width, size_t *nsegs) {
  size_t len;
  *nsegs = 0;
  const double *v = arg_float64s(c, i, &len, multiple_of, width, width == 2 ? "a Float64Array of (fd, length) pairs" : "a Float64Array of (fd, offset, length) triples");
  if (v == NULL) return NULL;
  size_t n = len / width;
  hash_seg_t *segs = calloc(n ? n : 1, sizeof *segs);
  if (!segs) { throw_errno(c->env, ENOMEM, c->fn, NULL); c->failed = 1; return NULL; }
  for (size_t k = 0; k < n; k++) {
    const double *t = v + k * width;
    double off = width == 3 ? t[1] : 0, length = t[width - 1];
    /* Written so that NaN fails every test, and nothing out of range is converted: whole numbers,
     * fd >= -1, 0 <= off, length and their sum <= 2^53 - 1. */
    if (!(t[0] >= -1 && t[0] <= INT32_MAX && t[0] == (double)(int64_t)t[0]) || !(off >= 0 && off <= 9007199254740991.0 && off == (double)(int64_t)off) ||
        !(length >= 0 && length <= 9007199254740991.0 && length == (double)(int64_t)length) || !(off + length <= 9007199254740991.0)) {
      free(segs);
      throw_errno(c->env, EINVAL, c->fn, "bad segment");
      c->failed = 1;
      return NULL;
    }
    segs[k] = (hash_seg_t){ .fd = (int)t[0], .off = (uint64_t)off, .len = (uint64_t)length };
  }
  *nsegs = n;
  return segs;
}

/* A Uint32Array's elements (valid until the call returns). */
static const uint32_t *arg_u32s(call_t *c, size_t i, size_t *n) {
  napi_typedarray_type type;
  void *data = NULL;
  bool is_ta = false;
  *n = 0;
  if (c->failed) return NULL;
  if (i >= c->argc || napi_is_typedarray(c->env, c->argv[i], &is_ta) != napi_ok || !is_ta ||
      napi_get_typedarray_info(c->env, c->argv[i], &type, n, &data, NULL, NULL) != napi_ok || type != napi_uint32_array) {
    throw_type(c->env, c->fn, i, "a Uint32Array");
    c->failed = 1;
    *n = 0;
    return NULL;
  }
  return data;
}

/* A job over segs (which it owns from here on, also when this fails: NULL). */
static hash_job_t *hash_job_new(const char *fn, hash_seg_t *segs, size_t n) {
  hash_job_t *j = calloc(1, sizeof *j);
  if (!j) {
    free(segs);
    return NULL;
  }
  j->fn = fn;
  j->segs = segs;
  j->nsegs = n;
  return j;
}

static napi_value queue_hash_job(napi_env env, hash_job_t *j, napi_async_execute_callback execute) {
  napi_value promise, name;
  napi_create_promise(env, &j->deferred, &promise);
  napi_create_string_utf8(env, j->fn, NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, execute, hash_job_complete, j, &j->work);
  napi_queue_async_work(env, j->work);
  return promise;
}

/* verityHashFds(Float64Array [fd, length, ...], algId) -> Promise<Buffer> (the digests, in order). */
static napi_value js_verity_hash_fds(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "verityHashFds");
  size_t n = 0;
  hash_seg_t *segs = arg_segments(&c, 0, 2, &n);
  int id = (int)arg_int(&c, 1);
  if (c.failed) free(segs);
  BAIL_IF_FAILED(&c);
  call_free(&c);
  const hash_alg_t *a = hash_alg_find(NULL, id);
  for (size_t k = 0; a && k < n; k++) if (segs[k].fd < 0) a = NULL;
  if (!a) {
    free(segs);
    return throw_errno(env, EINVAL, "verityHashFds", "unknown fs-verity hash algorithm or negative fd");
  }
  size_t dsize = (size_t)EVP_MD_get_size(a->md);
  hash_job_t *j = hash_job_new("verityHashFds", segs, n);
  if (j && !(j->digests = malloc(n ? n * dsize : 1))) {
    hash_job_free(env, j);
    j = NULL;
  }
  if (!j) return throw_errno(env, ENOMEM, "verityHashFds", NULL);
  j->alg = a;
  j->dsize = dsize;
  return queue_hash_job(env, j, verity_fds_execute);
}

/* hashFeed(streamHash, Buffer | null, Float64Array [fd or -1, offset, length, ...][, algId, Float64Array
 * of segment indexes]) -> Promise<void | Buffer>: with the last two, the fs-verity digests of those
 * (fd) segments too, from the same reads, concatenated in order. */
static napi_value js_hash_feed(napi_env env, napi_callback_info info) {
  call_t c;
  call_init(&c, env, info, "hashFeed");
  stream_hash_t *h = arg_ext(&c, 0, STREAM_HASH_MAGIC, "a stream hash");
  size_t data_len = 0;
  void *data = arg_is_nullish(&c, 1) ? NULL : arg_buf(&c, 1, &data_len);
  size_t n = 0;
  hash_seg_t *segs = arg_segments(&c, 2, 3, &n);
  int with_verity = c.argc > 3 && !arg_is_nullish(&c, 3);
  int alg_id = with_verity ? (int)arg_int(&c, 3) : 0;
  size_t nv = 0;
  const uint32_t *vsegs = with_verity ? arg_u32s(&c, 4, &nv) : NULL;
  if (c.failed) free(segs);
  BAIL_IF_FAILED(&c);
  call_free(&c);
  for (size_t k = 0; k < n; k++) {
    if (segs[k].fd < 0 && (segs[k].len > data_len || segs[k].off > data_len - segs[k].len)) {
      free(segs);
      return throw_errno(env, ERANGE, "hashFeed", "segment beyond the Buffer");
    }
  }
  const hash_alg_t *a = with_verity ? hash_alg_find(NULL, alg_id) : NULL;
  size_t *vidx = with_verity ? malloc((nv ? nv : 1) * sizeof *vidx) : NULL;
  int bad = with_verity && (!a || !vidx);
  /* Indexes ascending, each of an fd segment. */
  for (size_t k = 0; !bad && k < nv; k++) {
    size_t i = vsegs[k];
    if (i >= n || segs[i].fd < 0 || (k > 0 && i <= vidx[k - 1])) bad = 1;
    else vidx[k] = i;
  }
  if (bad) {
    free(segs);
    free(vidx);
    return throw_errno(env, EINVAL, "hashFeed", "unknown fs-verity hash algorithm or bad segment index");
  }
  if (!stream_hash_usable(env, h, "hashFeed")) {
    free(segs);
    free(vidx);
    return NULL;
  }
  hash_job_t *j = hash_job_new("hashFeed", segs, n);
  if (j && with_verity) {
    j->alg = a;
    j->dsize = (size_t)EVP_MD_get_size(a->md);
    j->verity_segs = vidx;
    j->nverity = nv;
    vidx = NULL;
    if (!(j->digests = malloc(nv ? nv * j->dsize : 1))) {
      hash_job_free(env, j);
      j = NULL;
    }
  }
  free(vidx);
  if (!j) return throw_errno(env, ENOMEM, "hashFeed", NULL);
  j->hash = h;
  j->data = data;
  j->data_len = data_len;
  napi_create_reference(env, c.argv[0], 1, &j->hash_ref);
  if (data) napi_create_reference(env, c.argv[1], 1, &j->data_ref);
  h->busy = 1;
  return queue_hash_job(env, j, hash_feed_execute);
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      FN("lgetxattr", js_lgetxattr),
      FN("llistxattr", js_llistxattr),
      FN("lsetxattr", js_lsetxattr),
      FN("fgetxattr", js_fgetxattr),
      FN("flistxattr", js_flistxattr),
      FN("fsverityEnable", js_fsverity_enable),
      FN("fsverityMeasure", js_fsverity_measure),
      FN("openTmpfile", js_open_tmpfile),
      FN("linkFd", js_link_fd),
      FN("ficlone", js_ficlone),
      FN("renameNoReplace", js_rename_noreplace),
      FN("flock", js_flock),
      FN("fcntlLock", js_fcntl_lock),
      FN("syncfs", js_syncfs),
      FN("storeObjects", js_store_objects),
      FN("verityNew", js_verity_new),
      FN("verityDigestBuffer", js_verity_digest_buffer),
      FN("verityUpdate", js_verity_update),
      FN("verityDigest", js_verity_digest),
      FN("hashNew", js_hash_new),
      FN("hashUpdate", js_hash_update),
      FN("hashDigest", js_hash_digest),
      FN("verityHashFds", js_verity_hash_fds),
      FN("hashFeed", js_hash_feed),
      FN("fsopen", js_fsopen),
      FN("fsconfigSetString", js_fsconfig_set_string),
      FN("fsconfigSetFlag", js_fsconfig_set_flag),
      FN("fsconfigSetFd", js_fsconfig_set_fd),
      FN("fsconfigCreate", js_fsconfig_create),
      FN("fsmount", js_fsmount),
      FN("moveMount", js_move_mount),
      FN("openTree", js_open_tree),
      FN("mount", js_mount),
      FN("umount2", js_umount2),
      FN("openat2", js_openat2),
      FN("fstatFields", js_fstat_fields),
      FN("socketpair", js_socketpair),
      FN("sendFds", js_send_fds),
      FN("recvFds", js_recv_fds),
      FN("listenUnix", js_listen_unix),
      FN("connectUnix", js_connect_unix),
      FN("accept", js_accept),
      FN("peerHungUp", js_peer_hung_up),
      FN("peerCredentials", js_peer_credentials),
      FN("setNonBlocking", js_set_nonblocking),
      FN("pollStart", js_poll_start),
      FN("pollUpdate", js_poll_update),
      FN("pollStop", js_poll_stop),
      FN("fuseBackingOpen", js_fuse_backing_open),
      FN("fuseBackingClose", js_fuse_backing_close),
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  napi_set_named_property(env, exports, "constants", make_constants(env));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
