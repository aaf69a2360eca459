// SPDX-License-Identifier: GPL-2.0-only
//
// /dev/vmsubst: the kernel module's ioctls on the thread pool, on a device fd
// the facade opened once (KmodDevice).
//
// Each command fills its uapi struct and reads the kernel's answer from that
// same struct into a JavaScript object with the facade's public field names
// (bits decoded by name too): a kernel result is named once here and typed
// once in agent/src/native/kmod.ts.
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <linux/vmsubst.h>

#include "glue.h"
#include "native.h"

namespace vs {

namespace {

// The most entries one report may ask for; the kernel's own caps are lower
// (VMSUBST_*_MAX) and answer E2BIG, this only bounds what the glue allocates.
constexpr double kMaxReportCap = 1 << 20;

struct BitName {
  uint32_t bit;
  const char* name;
};

const BitName kPageStates[] = {
    {VMSUBST_PAGE_DROPPED, "dropped"}, {VMSUBST_PAGE_DIRTY, "dirty"},   {VMSUBST_PAGE_WRITEBACK, "writeback"},
    {VMSUBST_PAGE_LOCKED, "locked"},   {VMSUBST_PAGE_PINNED, "pinned"}, {VMSUBST_PAGE_MAPPED, "mapped"},
    {VMSUBST_PAGE_BUSY, "busy"},
};

const BitName kInodeReasons[] = {
    {VMSUBST_INODE_OPEN, "open"},         {VMSUBST_INODE_MAPPED, "mapped"},
    {VMSUBST_INODE_WRITERS, "writers"},   {VMSUBST_INODE_DIRTY, "dirty"},
    {VMSUBST_INODE_CHILDREN, "children"}, {VMSUBST_INODE_ROOT, "root"},
    {VMSUBST_INODE_CALLER, "caller"},     {VMSUBST_INODE_REFERENCED, "referenced"},
};

template <size_t N>
Napi::Array BitNames(Napi::Env env, uint32_t bits, const BitName (&table)[N]) {
  Napi::Array names = Napi::Array::New(env);
  uint32_t n = 0;
  for (const BitName& b : table) {
    if ((bits & b.bit) != 0) names.Set(n++, Napi::String::New(env, b.name));
  }
  return names;
}

Napi::BigInt U64(Napi::Env env, uint64_t v) { return Napi::BigInt::New(env, v); }
Napi::Boolean Bit(Napi::Env env, uint32_t bits, uint32_t bit) { return Napi::Boolean::New(env, (bits & bit) != 0); }

std::string CommString(const char (&comm)[16]) { return std::string(comm, strnlen(comm, sizeof(comm))); }

Napi::Object PageRangeObject(Napi::Env env, const vmsubst_page_range& p) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("offset", U64(env, p.offset));
  o.Set("length", U64(env, p.length));
  o.Set("state", Napi::Number::New(env, p.state));
  o.Set("states", BitNames(env, p.state, kPageStates));
  return o;
}

Napi::Object MapperObject(Napi::Env env, const vmsubst_mapper& m) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("pid", Napi::Number::New(env, m.pid));
  o.Set("comm", Napi::String::New(env, CommString(m.comm)));
  o.Set("start", U64(env, m.start));
  o.Set("end", U64(env, m.end));
  o.Set("offset", U64(env, m.offset));
  o.Set("flags", Napi::Number::New(env, m.flags));
  o.Set("exec", Bit(env, m.flags, VMSUBST_MAP_EXEC));
  o.Set("shared", Bit(env, m.flags, VMSUBST_MAP_SHARED));
  o.Set("locked", Bit(env, m.flags, VMSUBST_MAP_LOCKED));
  o.Set("write", Bit(env, m.flags, VMSUBST_MAP_WRITE));
  return o;
}

Napi::Object InodeStatusObject(Napi::Env env, const vmsubst_inode_status& st) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("ino", U64(env, st.ino));
  o.Set("reasons", Napi::Number::New(env, st.reasons));
  o.Set("reasonNames", BitNames(env, st.reasons, kInodeReasons));
  o.Set("refs", Napi::Number::New(env, st.refs));
  return o;
}

Napi::Object PinResultObject(Napi::Env env, const vmsubst_pin_result& p) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("pid", Napi::Number::New(env, p.pid));
  o.Set("comm", Napi::String::New(env, CommString(p.comm)));
  o.Set("flags", Napi::Number::New(env, p.flags));
  o.Set("exited", Bit(env, p.flags, VMSUBST_PIN_R_EXITED));
  o.Set("partial", Bit(env, p.flags, VMSUBST_PIN_R_PARTIAL));
  o.Set("bytesCopied", U64(env, p.bytes_copied));
  o.Set("bytesPrivate", U64(env, p.bytes_private));
  o.Set("bytesFailed", U64(env, p.bytes_failed));
  return o;
}

Napi::Object OpenerObject(Napi::Env env, const vmsubst_opener& o) {
  Napi::Object r = Napi::Object::New(env);
  r.Set("pid", Napi::Number::New(env, o.pid));
  r.Set("comm", Napi::String::New(env, CommString(o.comm)));
  r.Set("file", Napi::Number::New(env, o.file));
  r.Set("fd", Napi::Number::New(env, o.fd));
  r.Set("flags", Napi::Number::New(env, o.f_flags));
  r.Set("pos", U64(env, o.pos));
  return r;
}

// Room for `cap` records of the uapi type T that an ioctl's struct
// vmsubst_array points at.
template <typename T>
struct Report {
  explicit Report(uint32_t cap) : items(cap) {}
  void In(vmsubst_array* a) {
    a->addr = items.empty() ? 0 : static_cast<uint64_t>(reinterpret_cast<uintptr_t>(items.data()));
    a->cap = static_cast<uint32_t>(items.size());
  }
  std::vector<T> items;
};

// Sets o[name] to the entries the kernel wrote and o[name + "Total"] to how
// many it had.
template <typename T, typename Make>
void SetReport(Napi::Env env, Napi::Object o, const char* name, const vmsubst_array& a, const Report<T>& rep,
               Make make) {
  const uint32_t n = std::min<uint32_t>(a.count, static_cast<uint32_t>(rep.items.size()));
  Napi::Array list = Napi::Array::New(env, n);
  for (uint32_t i = 0; i < n; i++) list.Set(i, make(env, rep.items[i]));
  o.Set(name, list);
  o.Set(std::string(name) + "Total", U64(env, a.total));
}

uint32_t ArgCap(const Napi::CallbackInfo& info, size_t i, const char* name) {
  return static_cast<uint32_t>(ArgInteger(info, i, name, 0, kMaxReportCap));
}

// The first three arguments of every ioctl: the device's fd and path (for
// messages) and the file the command is about.
struct Target {
  int dev_fd;
  std::string dev_path;
  int fd;
};

Target ArgTarget(const Napi::CallbackInfo& info) {
  Target t{ArgFd(info, 0), ArgString(info, 1, "devPath"), 0};
  t.fd = ArgFd(info, 2);
  return t;
}

// One ioctl of the command struct Arg on the libuv thread pool. The caller
// fills `arg` (its size field included) and hands over `build`, which turns
// the answered struct into the resolved value and owns, through its
// captures, the memory the struct's arrays point into.
template <typename Arg>
class KmodCall : public Napi::AsyncWorker {
 public:
  using Build = std::function<Napi::Value(Napi::Env, const Arg&)>;

  KmodCall(Napi::Env env, const char* ioctl_name, unsigned long cmd, Target target)
      : Napi::AsyncWorker(env, "vmsubst:kmod"),
        deferred_(Napi::Promise::Deferred::New(env)),
        ioctl_(ioctl_name),
        cmd_(cmd),
        target_(std::move(target)) {
    arg.size = sizeof(Arg);
  }

  Napi::Promise Start(Build build) {
    build_ = std::move(build);
    Napi::Promise promise = deferred_.Promise();
    Queue();
    return promise;
  }

  void Execute() override { err_ = vs_kmod_ioctl(target_.dev_fd, cmd_, &arg); }

  void OnOK() override {
    Napi::Env env = Env();
    if (err_ < 0) {
      const std::string detail = std::string(ioctl_) + " " + Quoted(target_.dev_path) + " (fd " +
                                 std::to_string(target_.fd) + ")";
      deferred_.Reject(MakeError(env, err_, "ioctl", detail, target_.dev_path.c_str()).Value());
      return;
    }
    try {
      deferred_.Resolve(build_(env, arg));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }

  Arg arg{};

 private:
  Napi::Promise::Deferred deferred_;
  const char* ioctl_;
  unsigned long cmd_;
  Target target_;
  Build build_;
  int err_ = 0;
};

#define VS_KMOD_CALL(env, name, arg_type, target) \
  (new KmodCall<arg_type>(env, #name, name, std::move(target)))

// kmodOpen(devPath): the device's fd (close it with closeFd).
Napi::Value KmodOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string dev = ArgString(info, 0, "devPath");
  const int fd = vs_kmod_open(dev.c_str());
  if (fd < 0) throw MakeError(env, fd, "open", Quoted(dev), dev.c_str());
  return Napi::Number::New(env, fd);
}

// kmodVersion(devFd, devPath): synchronous, it only reads.
Napi::Value KmodVersion(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int dev_fd = ArgFd(info, 0);
  const std::string dev = ArgString(info, 1, "devPath");
  vmsubst_version v{};
  v.size = sizeof(v);
  const int err = vs_kmod_ioctl(dev_fd, VMSUBST_IOC_VERSION, &v);
  if (err < 0) throw MakeError(env, err, "ioctl", "VMSUBST_IOC_VERSION " + Quoted(dev), dev.c_str());
  Napi::Object o = Napi::Object::New(env);
  o.Set("abiVersion", Napi::Number::New(env, v.abi_version));
  o.Set("features", U64(env, v.features));
  // The kernel promises a NUL; a truncated string must not overrun anyway.
  o.Set("moduleVersion",
        Napi::String::New(env, std::string(v.module_version, strnlen(v.module_version, sizeof(v.module_version)))));
  return o;
}

// Every argument is read before the call is made, so that a bad one throws
// before a worker exists.

// invalidateRange(devFd, devPath, fd, offset, length, flags, outcomesCap, mappersCap)
Napi::Value InvalidateRange(const Napi::CallbackInfo& info) {
  Target target = ArgTarget(info);
  const uint64_t offset = ArgU64(info, 3, "offset");
  const uint64_t length = ArgU64(info, 4, "length");
  const uint32_t flags = ArgU32(info, 5, "flags");
  auto outcomes = std::make_shared<Report<vmsubst_page_range>>(ArgCap(info, 6, "outcomesCap"));
  auto mappers = std::make_shared<Report<vmsubst_mapper>>(ArgCap(info, 7, "mappersCap"));
  const int fd = target.fd;
  auto* call = VS_KMOD_CALL(info.Env(), VMSUBST_IOC_INVALIDATE_RANGE, vmsubst_invalidate_range, target);
  call->arg.fd = fd;
  call->arg.offset = offset;
  call->arg.length = length;
  call->arg.flags = flags;
  outcomes->In(&call->arg.outcomes);
  mappers->In(&call->arg.mappers);
  return call->Start([outcomes, mappers](Napi::Env e, const vmsubst_invalidate_range& r) -> Napi::Value {
    Napi::Object o = Napi::Object::New(e);
    o.Set("pagesCached", U64(e, r.pages_cached));
    o.Set("pagesMapped", U64(e, r.pages_mapped));
    o.Set("pagesDropped", U64(e, r.pages_dropped));
    o.Set("pagesKept", U64(e, r.pages_kept));
    o.Set("pagesRefaulted", U64(e, r.pages_refaulted));
    SetReport(e, o, "outcomes", r.outcomes, *outcomes, PageRangeObject);
    SetReport(e, o, "mappers", r.mappers, *mappers, MapperObject);
    return o;
  });
}

uint64_t MemberU64(Napi::Env env, Napi::Object o, const char* arg, const char* name);

// One file of invalidateFiles: where it is and which inode it must be, its
// ranges, the command's flags, and whether pages kept end the batch.
struct BatchFile {
  std::string path;
  uint64_t dev = 0;
  uint64_t ino = 0;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  uint32_t flags = 0;
  bool stop_if_kept = false;
  // What became of it.
  enum State { kPending, kDone, kOpenFailed, kSwapped, kIoctlFailed } state = kPending;
  int err = 0;
  uint32_t range = 0;  // the range whose ioctl failed, or that kept pages
  uint32_t now_mode = 0;
  uint64_t now_ino = 0;
  uint64_t cached = 0, mapped = 0, dropped = 0, kept = 0;
};

// invalidateFiles(devFd, devPath, files): for each file in order, on one
// thread-pool job, what the agent otherwise does in four round trips per file:
// open it by its path (O_NOFOLLOW | O_NONBLOCK | O_NOCTTY), check with fstat
// that it is the indexed regular file, VMSUBST_IOC_INVALIDATE_RANGE each of its
// ranges (no report arrays: the counts only), close it. The batch ends at the
// first file that cannot be opened, is another inode now, fails an ioctl, or
// (stopIfKept) keeps pages: the files after it stay "pending", untouched.
class InvalidateFilesWorker : public Napi::AsyncWorker {
 public:
  InvalidateFilesWorker(Napi::Env env, int dev_fd, std::vector<BatchFile> files)
      : Napi::AsyncWorker(env, "vmsubst:invalidateFiles"),
        deferred_(Napi::Promise::Deferred::New(env)),
        dev_fd_(dev_fd),
        files_(std::move(files)) {}

  Napi::Promise Promise() const { return deferred_.Promise(); }

  void Execute() override {
    for (BatchFile& f : files_) {
      if (!Run(f)) break;
    }
  }

  void OnOK() override {
    static const char* const kStates[] = {"pending", "done", "open-failed", "swapped", "ioctl-failed"};
    Napi::Env env = Env();
    Napi::Array out = Napi::Array::New(env, files_.size());
    for (size_t i = 0; i < files_.size(); i++) {
      const BatchFile& f = files_[i];
      Napi::Object o = Napi::Object::New(env);
      o.Set("state", Napi::String::New(env, kStates[f.state]));
      if (f.state == BatchFile::kOpenFailed) {
        o.Set("error", MakeError(env, f.err, "open", Quoted(f.path), f.path.c_str()).Value());
      } else if (f.state == BatchFile::kIoctlFailed) {
        o.Set("error",
              MakeError(env, f.err, "ioctl", "VMSUBST_IOC_INVALIDATE_RANGE " + Quoted(f.path), f.path.c_str()).Value());
      } else if (f.state == BatchFile::kSwapped) {
        o.Set("nowMode", Napi::Number::New(env, f.now_mode));
        o.Set("nowIno", Napi::Number::New(env, static_cast<double>(f.now_ino)));
      }
      o.Set("range", Napi::Number::New(env, f.range));
      o.Set("pagesCached", U64(env, f.cached));
      o.Set("pagesMapped", U64(env, f.mapped));
      o.Set("pagesDropped", U64(env, f.dropped));
      o.Set("pagesKept", U64(env, f.kept));
      out.Set(static_cast<uint32_t>(i), o);
    }
    deferred_.Resolve(out);
  }

 private:
  // One file; false ends the batch.
  bool Run(BatchFile& f) {
    const int fd = open(f.path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
      f.state = BatchFile::kOpenFailed;
      f.err = -errno;
      return false;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
      f.state = BatchFile::kOpenFailed;
      f.err = -errno;
      close(fd);
      return false;
    }
    if (!S_ISREG(st.st_mode) || st.st_ino != f.ino || st.st_dev != f.dev) {
      f.state = BatchFile::kSwapped;
      f.now_mode = st.st_mode;
      f.now_ino = st.st_ino;
      close(fd);
      return false;
    }
    for (uint32_t r = 0; r < f.ranges.size(); r++) {
      vmsubst_invalidate_range arg{};
      arg.size = sizeof(arg);
      arg.flags = f.flags;
      arg.fd = fd;
      arg.offset = f.ranges[r].first;
      arg.length = f.ranges[r].second;
      const int err = vs_kmod_ioctl(dev_fd_, VMSUBST_IOC_INVALIDATE_RANGE, &arg);
      if (err < 0) {
        f.state = BatchFile::kIoctlFailed;
        f.err = err;
        f.range = r;
        close(fd);
        return false;
      }
      f.cached += arg.pages_cached;
      f.mapped += arg.pages_mapped;
      f.dropped += arg.pages_dropped;
      f.kept += arg.pages_kept;
      if (f.stop_if_kept && arg.pages_kept > 0) {
        f.range = r;
        break;
      }
    }
    close(fd);
    f.state = BatchFile::kDone;
    return !(f.stop_if_kept && f.kept > 0);
  }

  Napi::Promise::Deferred deferred_;
  int dev_fd_;
  std::vector<BatchFile> files_;
};

// What one invalidateFiles call takes at most: bounds the job and its results.
constexpr uint32_t kMaxBatchFiles = 4096;
constexpr uint32_t kMaxBatchRanges = 1 << 16;

uint64_t MemberInteger(Napi::Env env, Napi::Object o, const char* name, double max) {
  Napi::Value n = o.Get(name);
  const double d = n.IsNumber() ? n.As<Napi::Number>().DoubleValue() : -1;
  if (!(d >= 0 && d <= max) || d != static_cast<double>(static_cast<uint64_t>(d)))
    throw Napi::TypeError::New(env, std::string("files[].") + name + " must be an integer in [0, " +
                                        std::to_string(static_cast<uint64_t>(max)) + "]");
  return static_cast<uint64_t>(d);
}

// invalidateFiles(devFd, devPath, files: {path, dev, ino, ranges: [bigint, bigint][], flags, stopIfKept}[])
Napi::Value InvalidateFiles(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int dev_fd = ArgFd(info, 0);
  ArgString(info, 1, "devPath");
  if (info.Length() <= 2 || !info[2].IsArray()) throw Napi::TypeError::New(env, "files must be an array");
  Napi::Array list = info[2].As<Napi::Array>();
  if (list.Length() > kMaxBatchFiles) throw Napi::RangeError::New(env, "too many files in one batch (4096 at most)");
  std::vector<BatchFile> files(list.Length());
  uint32_t ranges = 0;
  for (uint32_t i = 0; i < list.Length(); i++) {
    Napi::Value v = list.Get(i);
    if (!v.IsObject()) throw Napi::TypeError::New(env, "files[] must be objects");
    Napi::Object o = v.As<Napi::Object>();
    BatchFile& f = files[i];
    Napi::Value path = o.Get("path");
    if (!path.IsString()) throw Napi::TypeError::New(env, "files[].path must be a string");
    f.path = path.As<Napi::String>().Utf8Value();
    if (f.path.empty() || f.path.find('\0') != std::string::npos)
      throw Napi::TypeError::New(env, "files[].path must be a non-empty path without NUL");
    f.dev = MemberInteger(env, o, "dev", 9007199254740991.0);
    f.ino = MemberInteger(env, o, "ino", 9007199254740991.0);
    f.flags = static_cast<uint32_t>(MemberInteger(env, o, "flags", 4294967295.0));
    f.stop_if_kept = o.Get("stopIfKept").ToBoolean().Value();
    Napi::Value rs = o.Get("ranges");
    if (!rs.IsArray()) throw Napi::TypeError::New(env, "files[].ranges must be an array");
    Napi::Array ra = rs.As<Napi::Array>();
    ranges += ra.Length();
    if (ra.Length() == 0 || ranges > kMaxBatchRanges)
      throw Napi::RangeError::New(env, "files[].ranges: at least one per file, 65536 in one batch");
    for (uint32_t j = 0; j < ra.Length(); j++) {
      Napi::Value pair = ra.Get(j);
      if (!pair.IsArray() || pair.As<Napi::Array>().Length() != 2)
        throw Napi::TypeError::New(env, "files[].ranges[] must be [offset, length] bigints");
      f.ranges.emplace_back(MemberU64(env, pair.As<Napi::Object>(), "range", "0"),
                            MemberU64(env, pair.As<Napi::Object>(), "range", "1"));
    }
  }
  auto* worker = new InvalidateFilesWorker(env, dev_fd, std::move(files));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

// invalidateBdev(devFd, devPath, fd, offset, length, flags, keptCap)
Napi::Value InvalidateBdev(const Napi::CallbackInfo& info) {
  Target target = ArgTarget(info);
  const uint64_t offset = ArgU64(info, 3, "offset");
  const uint64_t length = ArgU64(info, 4, "length");
  const uint32_t flags = ArgU32(info, 5, "flags");
  auto kept = std::make_shared<Report<vmsubst_page_range>>(ArgCap(info, 6, "keptCap"));
  const int fd = target.fd;
  auto* call = VS_KMOD_CALL(info.Env(), VMSUBST_IOC_INVALIDATE_BDEV, vmsubst_invalidate_bdev, target);
  call->arg.fd = fd;
  call->arg.offset = offset;
  call->arg.length = length;
  call->arg.flags = flags;
  kept->In(&call->arg.kept);
  return call->Start([kept](Napi::Env e, const vmsubst_invalidate_bdev& r) -> Napi::Value {
    Napi::Object o = Napi::Object::New(e);
    o.Set("pagesCached", U64(e, r.pages_cached));
    o.Set("pagesDropped", U64(e, r.pages_dropped));
    o.Set("pagesKept", U64(e, r.pages_kept));
    SetReport(e, o, "kept", r.kept, *kept, PageRangeObject);
    return o;
  });
}

// revalidateInodes(devFd, devPath, fd, inodes: bigint[], flags): in_use has
// room for every number given.
Napi::Value RevalidateInodes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Target target = ArgTarget(info);
  if (info.Length() <= 3 || !info[3].IsArray()) throw Napi::TypeError::New(env, "inodes must be an array of bigint");
  Napi::Array list = info[3].As<Napi::Array>();
  if (list.Length() > kMaxReportCap) throw Napi::RangeError::New(env, "too many inodes");
  auto inodes = std::make_shared<std::vector<uint64_t>>(list.Length());
  for (uint32_t i = 0; i < list.Length(); i++) {
    Napi::Value v = list.Get(i);
    bool lossless = false;
    if (!v.IsBigInt()) throw Napi::TypeError::New(env, "inodes must be an array of bigint");
    (*inodes)[i] = v.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) throw Napi::RangeError::New(env, "inode numbers must be in [0, 2^64)");
  }
  const uint32_t flags = ArgU32(info, 4, "flags");
  auto in_use = std::make_shared<Report<vmsubst_inode_status>>(static_cast<uint32_t>(inodes->size()));
  const int fd = target.fd;
  auto* call = VS_KMOD_CALL(env, VMSUBST_IOC_REVALIDATE_INODES, vmsubst_revalidate_inodes, target);
  call->arg.fd = fd;
  call->arg.flags = flags;
  call->arg.nr_inodes = static_cast<uint32_t>(inodes->size());
  call->arg.inodes = inodes->empty() ? 0 : static_cast<uint64_t>(reinterpret_cast<uintptr_t>(inodes->data()));
  in_use->In(&call->arg.in_use);
  return call->Start([inodes, in_use](Napi::Env e, const vmsubst_revalidate_inodes& r) -> Napi::Value {
    Napi::Object o = Napi::Object::New(e);
    o.Set("evicted", Napi::Number::New(e, r.evicted));
    o.Set("notCached", Napi::Number::New(e, r.not_cached));
    SetReport(e, o, "inUse", r.in_use, *in_use, InodeStatusObject);
    return o;
  });
}

// revalidateDentries(devFd, devPath, fd, names: string[], flags): the names
// are packed NUL-terminated, in UTF-8, as the kernel takes them.
Napi::Value RevalidateDentries(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Target target = ArgTarget(info);
  if (info.Length() <= 3 || !info[3].IsArray()) throw Napi::TypeError::New(env, "names must be an array of strings");
  Napi::Array list = info[3].As<Napi::Array>();
  if (list.Length() > kMaxReportCap) throw Napi::RangeError::New(env, "too many names");
  auto packed = std::make_shared<std::string>();
  for (uint32_t i = 0; i < list.Length(); i++) {
    Napi::Value v = list.Get(i);
    if (!v.IsString()) throw Napi::TypeError::New(env, "names must be an array of strings");
    const std::string name = v.As<Napi::String>().Utf8Value();
    if (name.find('\0') != std::string::npos) throw Napi::TypeError::New(env, "names must not contain NUL");
    packed->append(name);
    packed->push_back('\0');
  }
  if (packed->size() > 0xffffffffu) throw Napi::RangeError::New(env, "names too long");
  const uint32_t flags = ArgU32(info, 4, "flags");
  const int fd = target.fd;
  auto* call = VS_KMOD_CALL(env, VMSUBST_IOC_REVALIDATE_DENTRIES, vmsubst_revalidate_dentries, target);
  call->arg.fd = fd;
  call->arg.flags = flags;
  call->arg.nr_names = list.Length();
  call->arg.names = list.Length() == 0 ? 0 : static_cast<uint64_t>(reinterpret_cast<uintptr_t>(packed->data()));
  call->arg.names_size = static_cast<uint32_t>(packed->size());
  return call->Start([packed](Napi::Env e, const vmsubst_revalidate_dentries& r) -> Napi::Value {
    Napi::Object o = Napi::Object::New(e);
    o.Set("dropped", Napi::Number::New(e, r.dropped));
    o.Set("notCached", Napi::Number::New(e, r.not_cached));
    o.Set("busy", Napi::Number::New(e, r.busy));
    o.Set("mountpoints", Napi::Number::New(e, r.mountpoints));
    return o;
  });
}

// queryMappers(devFd, devPath, fd, offset, length, mappersCap)
Napi::Value QueryMappers(const Napi::CallbackInfo& info) {
  Target target = ArgTarget(info);
  const uint64_t offset = ArgU64(info, 3, "offset");
  const uint64_t length = ArgU64(info, 4, "length");
  auto mappers = std::make_shared<Report<vmsubst_mapper>>(ArgCap(info, 5, "mappersCap"));
  const int fd = target.fd;
  auto* call = VS_KMOD_CALL(info.Env(), VMSUBST_IOC_QUERY_MAPPERS, vmsubst_query_mappers, target);
  call->arg.fd = fd;
  call->arg.offset = offset;
  call->arg.length = length;
  mappers->In(&call->arg.mappers);
  return call->Start([mappers](Napi::Env e, const vmsubst_query_mappers& r) -> Napi::Value {
    Napi::Object o = Napi::Object::New(e);
    SetReport(e, o, "mappers", r.mappers, *mappers, MapperObject);
    return o;
  });
}

// queryOpeners(devFd, devPath, fds: number[], openersCap): the descriptors of
// other processes that refer to those files (the first fd names them in
// messages).
Napi::Value QueryOpeners(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() <= 2 || !info[2].IsArray()) throw Napi::TypeError::New(env, "fds must be an array of fds");
  Napi::Array list = info[2].As<Napi::Array>();
  if (list.Length() == 0) throw Napi::RangeError::New(env, "fds must not be empty");
  if (list.Length() > kMaxReportCap) throw Napi::RangeError::New(env, "too many fds");
  auto fds = std::make_shared<std::vector<int32_t>>(list.Length());
  for (uint32_t i = 0; i < list.Length(); i++) {
    Napi::Value v = list.Get(i);
    if (!v.IsNumber()) throw Napi::TypeError::New(env, "fds must be an array of fds");
    const double d = v.As<Napi::Number>().DoubleValue();
    if (d != static_cast<int32_t>(d) || d < 0) throw Napi::RangeError::New(env, "fds must be non-negative integers");
    (*fds)[i] = static_cast<int32_t>(d);
  }
  Target target{ArgFd(info, 0), ArgString(info, 1, "devPath"), (*fds)[0]};
  auto openers = std::make_shared<Report<vmsubst_opener>>(ArgCap(info, 3, "openersCap"));
  auto* call = VS_KMOD_CALL(env, VMSUBST_IOC_QUERY_OPENERS, vmsubst_query_openers, target);
  call->arg.fds = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(fds->data()));
  call->arg.nr_fds = static_cast<uint32_t>(fds->size());
  openers->In(&call->arg.openers);
  return call->Start([fds, openers](Napi::Env e, const vmsubst_query_openers& r) -> Napi::Value {
    Napi::Object o = Napi::Object::New(e);
    o.Set("tasks", Napi::Number::New(e, r.tasks));
    SetReport(e, o, "openers", r.openers, *openers, OpenerObject);
    return o;
  });
}

// A u64 member of an object argument, as a bigint.
uint64_t MemberU64(Napi::Env env, Napi::Object o, const char* arg, const char* name) {
  Napi::Value v = o.Get(name);
  bool lossless = false;
  if (!v.IsBigInt()) throw Napi::TypeError::New(env, std::string(arg) + "." + name + " must be a bigint");
  const uint64_t n = v.As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) throw Napi::RangeError::New(env, std::string(arg) + "." + name + " must be in [0, 2^64)");
  return n;
}

// pinMappers(devFd, devPath, fd, offset, length, maxPages, pinnedCap, unpinnedCap[, cursor]):
// with cursor ({ mm, addr } bigints), VMSUBST_PIN_F_RESUME from it, and the
// result's cursor is where the next call resumes; without, from the start.
Napi::Value PinMappers(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Target target = ArgTarget(info);
  const uint64_t offset = ArgU64(info, 3, "offset");
  const uint64_t length = ArgU64(info, 4, "length");
  const uint32_t max_pages = ArgU32(info, 5, "maxPages");
  auto pinned = std::make_shared<Report<vmsubst_pin_result>>(ArgCap(info, 6, "pinnedCap"));
  auto unpinned = std::make_shared<Report<vmsubst_mapper>>(ArgCap(info, 7, "unpinnedCap"));
  const bool resume = info.Length() > 8 && !info[8].IsUndefined() && !info[8].IsNull();
  uint64_t cursor_mm = 0, cursor_addr = 0;
  if (resume) {
    if (!info[8].IsObject()) throw Napi::TypeError::New(env, "cursor must be { mm, addr }");
    Napi::Object c = info[8].As<Napi::Object>();
    cursor_mm = MemberU64(env, c, "cursor", "mm");
    cursor_addr = MemberU64(env, c, "cursor", "addr");
  }
  const int fd = target.fd;
  auto* call = VS_KMOD_CALL(env, VMSUBST_IOC_PIN_MAPPERS, vmsubst_pin_mappers, target);
  call->arg.fd = fd;
  if (resume) {
    call->arg.flags = VMSUBST_PIN_F_RESUME;
    call->arg.cursor_mm = cursor_mm;
    call->arg.cursor_addr = cursor_addr;
  }
  call->arg.max_pages = max_pages;
  call->arg.offset = offset;
  call->arg.length = length;
  pinned->In(&call->arg.pinned);
  unpinned->In(&call->arg.unpinned);
  return call->Start([pinned, unpinned, resume](Napi::Env e, const vmsubst_pin_mappers& r) -> Napi::Value {
    Napi::Object o = Napi::Object::New(e);
    o.Set("bytesCopied", U64(e, r.bytes_copied));
    o.Set("bytesPrivate", U64(e, r.bytes_private));
    o.Set("bytesFailed", U64(e, r.bytes_failed));
    o.Set("status", Napi::Number::New(e, r.status));
    o.Set("budgetExhausted", Bit(e, r.status, VMSUBST_PIN_S_BUDGET));
    o.Set("truncated", Bit(e, r.status, VMSUBST_PIN_S_TRUNCATED));
    o.Set("mappings", Napi::Number::New(e, r.mappings));
    SetReport(e, o, "pinned", r.pinned, *pinned, PinResultObject);
    SetReport(e, o, "unpinned", r.unpinned, *unpinned, MapperObject);
    if (resume) {
      Napi::Object c = Napi::Object::New(e);
      c.Set("mm", U64(e, r.cursor_mm));
      c.Set("addr", U64(e, r.cursor_addr));
      o.Set("cursor", c);
    }
    return o;
  });
}

// queryPages(devFd, devPath, fd, offset, length, rangesCap)
Napi::Value QueryPages(const Napi::CallbackInfo& info) {
  Target target = ArgTarget(info);
  const uint64_t offset = ArgU64(info, 3, "offset");
  const uint64_t length = ArgU64(info, 4, "length");
  auto ranges = std::make_shared<Report<vmsubst_page_range>>(ArgCap(info, 5, "rangesCap"));
  const int fd = target.fd;
  auto* call = VS_KMOD_CALL(info.Env(), VMSUBST_IOC_QUERY_PAGES, vmsubst_query_pages, target);
  call->arg.fd = fd;
  call->arg.offset = offset;
  call->arg.length = length;
  ranges->In(&call->arg.ranges);
  return call->Start([ranges](Napi::Env e, const vmsubst_query_pages& r) -> Napi::Value {
    Napi::Object o = Napi::Object::New(e);
    o.Set("pagesCached", U64(e, r.pages_cached));
    o.Set("pagesMapped", U64(e, r.pages_mapped));
    o.Set("pagesDirty", U64(e, r.pages_dirty));
    o.Set("pagesWriteback", U64(e, r.pages_writeback));
    o.Set("unwritten", Napi::Boolean::New(e, r.pages_dirty + r.pages_writeback > 0));
    SetReport(e, o, "ranges", r.ranges, *ranges, PageRangeObject);
    return o;
  });
}

}  // namespace

void RegisterKmod(Napi::Env env, Napi::Object exports, Napi::Object constants) {
  RegisterUapiConstants(env, constants);
  exports.Set("kmodOpen", Napi::Function::New<KmodOpen>(env, "kmodOpen"));
  exports.Set("kmodVersion", Napi::Function::New<KmodVersion>(env, "kmodVersion"));
  exports.Set("invalidateRange", Napi::Function::New<InvalidateRange>(env, "invalidateRange"));
  exports.Set("invalidateBdev", Napi::Function::New<InvalidateBdev>(env, "invalidateBdev"));
  exports.Set("revalidateInodes", Napi::Function::New<RevalidateInodes>(env, "revalidateInodes"));
  exports.Set("revalidateDentries", Napi::Function::New<RevalidateDentries>(env, "revalidateDentries"));
  exports.Set("queryMappers", Napi::Function::New<QueryMappers>(env, "queryMappers"));
  exports.Set("pinMappers", Napi::Function::New<PinMappers>(env, "pinMappers"));
  exports.Set("queryPages", Napi::Function::New<QueryPages>(env, "queryPages"));
  exports.Set("queryOpeners", Napi::Function::New<QueryOpeners>(env, "queryOpeners"));
  exports.Set("invalidateFiles", Napi::Function::New<InvalidateFiles>(env, "invalidateFiles"));
}

}  // namespace vs
