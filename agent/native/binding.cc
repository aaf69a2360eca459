// SPDX-License-Identifier: GPL-2.0-only
//
// The N-API glue of vmsubst-agent: the only C++ in the addon.
//
// It validates arguments, calls the syscall layer (native.h), turns -errno
// into an Error shaped like node's fs errors ({code, syscall, errno, path?},
// message "ECODE: description, syscall detail"), runs blocking I/O on the
// libuv thread pool (AsyncWorker), and adopts sockets into node's own event
// loop:
//
//   StreamHandle  uv_pipe_t over any connected stream fd (vsock, virtio-serial
//                 character device, socketpair). libuv queues writes and
//                 handles EAGAIN; the TypeScript facade wraps it in a Duplex.
//   Listener      uv_poll_t on a listening vsock fd; accepts with accept4() so
//                 the peer's CID and port are known (uv_accept() drops them).
//   Connector     uv_poll_t waiting for a non-blocking connect to finish.
//
// Lifetime rule for the three wraps: the uv handle lives in a separate heap
// block whose `owner` points back at the wrap. The wrap holds a strong
// reference to its own JS object (Ref()) from a successful constructor until
// the uv close callback, so the object cannot be collected while libuv may
// still call into it; the close callback frees the block and drops that
// reference. If the wrap is destroyed with its handle still open (only at
// environment teardown) it detaches `owner` and closes the handle without
// calling JavaScript.
#include <napi.h>
#include <uv.h>

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <linux/fiemap.h>
#include <linux/vm_sockets.h>
#include <linux/vmsubst.h>

#include "native.h"

namespace {

constexpr size_t kReadBufferSize = 64 * 1024;
constexpr unsigned kMaxAcceptsPerWakeup = 64;

// ---- errors ------------------------------------------------------------------

std::string ErrnoName(int err) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
  if (const char* name = strerrorname_np(err)) return name;
#endif
  char buf[64];
  uv_err_name_r(-err, buf, sizeof(buf));
  return buf;
}

std::string ErrnoDescription(int err) {
  char buf[256];
  std::string text = strerror_r(err, buf, sizeof(buf));
  // Node's messages are lower case ("no such file or directory"); keep
  // acronyms ("I/O error") intact.
  if (text.size() > 1 && text[0] >= 'A' && text[0] <= 'Z' && text[1] >= 'a' &&
      text[1] <= 'z') {
    text[0] = static_cast<char>(text[0] - 'A' + 'a');
  }
  return text;
}

// neg_errno is a negative errno (libuv status codes are the same on Linux).
Napi::Error MakeError(Napi::Env env, int neg_errno, const char* syscall,
                      const std::string& detail, const char* path = nullptr) {
  const int err = neg_errno < 0 ? -neg_errno : neg_errno;
  const std::string code = ErrnoName(err);
  std::string message = code + ": " + ErrnoDescription(err) + ", " + syscall;
  if (!detail.empty()) message += " " + detail;
  Napi::Error error = Napi::Error::New(env, message);
  Napi::Object obj = error.Value();
  obj.Set("errno", Napi::Number::New(env, -err));
  obj.Set("code", Napi::String::New(env, code));
  obj.Set("syscall", Napi::String::New(env, syscall));
  if (path != nullptr) obj.Set("path", Napi::String::New(env, path));
  return error;
}

std::string Quoted(const std::string& path) { return "'" + path + "'"; }

std::string VsockAddress(uint32_t cid, uint32_t port) {
  return "vsock " + std::to_string(cid) + ":" + std::to_string(port);
}

// An exception thrown by a JavaScript callback that libuv invoked has no JS
// caller to return to: report it like node reports one from a net.Socket
// callback, as an uncaught exception.
template <typename Fn>
void CallIntoJs(Napi::Env env, Fn&& fn) {
  try {
    fn();
  } catch (const Napi::Error& e) {
    napi_fatal_exception(env, e.Value());
  }
}

// ---- argument checks ------------------------------------------------------------

double ArgInteger(const Napi::CallbackInfo& info, size_t i, const char* name,
                  double min, double max) {
  if (info.Length() <= i || !info[i].IsNumber()) {
    throw Napi::TypeError::New(info.Env(),
                               std::string(name) + " must be a number");
  }
  const double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= min && v <= max) || v != static_cast<double>(static_cast<int64_t>(v))) {
    throw Napi::RangeError::New(info.Env(),
                                std::string(name) + " must be an integer in [" +
                                    std::to_string(static_cast<int64_t>(min)) + ", " +
                                    std::to_string(static_cast<int64_t>(max)) + "]");
  }
  return v;
}

uint32_t ArgU32(const Napi::CallbackInfo& info, size_t i, const char* name) {
  return static_cast<uint32_t>(ArgInteger(info, i, name, 0, 4294967295.0));
}

int ArgFd(const Napi::CallbackInfo& info, size_t i) {
  return static_cast<int>(ArgInteger(info, i, "fd", 0, 2147483647.0));
}

uint64_t ArgU64(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsBigInt()) {
    throw Napi::TypeError::New(info.Env(),
                               std::string(name) + " must be a bigint");
  }
  bool lossless = false;
  const uint64_t v = info[i].As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) {
    throw Napi::RangeError::New(info.Env(),
                                std::string(name) + " must be in [0, 2^64)");
  }
  return v;
}

std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsString()) {
    throw Napi::TypeError::New(info.Env(),
                               std::string(name) + " must be a string");
  }
  std::string s = info[i].As<Napi::String>().Utf8Value();
  if (s.find('\0') != std::string::npos) {
    throw Napi::TypeError::New(info.Env(),
                               std::string(name) + " must not contain NUL");
  }
  return s;
}

Napi::Function ArgFunction(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsFunction()) {
    throw Napi::TypeError::New(info.Env(),
                               std::string(name) + " must be a function");
  }
  return info[i].As<Napi::Function>();
}

uv_loop_t* Loop(Napi::Env env) {
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
    throw Napi::Error::New(env, "vmsubst_native: no libuv event loop");
  }
  return loop;
}

// ---- FIEMAP -----------------------------------------------------------------------

int CollectExtent(void* ctx, const struct vs_extent* extent) {
  try {
    static_cast<std::vector<vs_extent>*>(ctx)->push_back(*extent);
    return 0;
  } catch (...) {
    return -ENOMEM;
  }
}

Napi::Value Fiemap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = ArgFd(info, 0);
  std::vector<vs_extent> extents;
  const int err = vs_fiemap(fd, CollectExtent, &extents);
  if (err < 0) {
    throw MakeError(env, err, "ioctl", "FS_IOC_FIEMAP (fd " + std::to_string(fd) + ")");
  }
  Napi::Array result = Napi::Array::New(env, extents.size());
  for (size_t i = 0; i < extents.size(); i++) {
    const vs_extent& e = extents[i];
    Napi::Object o = Napi::Object::New(env);
    o.Set("logical", Napi::BigInt::New(env, e.logical));
    o.Set("physical", Napi::BigInt::New(env, e.physical));
    o.Set("length", Napi::BigInt::New(env, e.length));
    o.Set("flags", Napi::Number::New(env, e.flags));
    result.Set(static_cast<uint32_t>(i), o);
  }
  return result;
}

// ---- SEEK_DATA / SEEK_HOLE ----------------------------------------------------------

int CollectSegment(void* ctx, int64_t offset, int64_t length) {
  try {
    static_cast<std::vector<std::pair<int64_t, int64_t>>*>(ctx)->emplace_back(offset, length);
    return 0;
  } catch (...) {
    return -ENOMEM;
  }
}

// dataSegments(fd, size): [[offset, length], ...]; offsets below 2^53.
Napi::Value DataSegments(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = ArgFd(info, 0);
  if (info.Length() < 2 || !info[1].IsNumber()) {
    throw Napi::TypeError::New(env, "size must be a number");
  }
  const double size = info[1].As<Napi::Number>().DoubleValue();
  if (!(size >= 0) || size > 9007199254740991.0) {
    throw Napi::RangeError::New(env, "size must be in [0, 2^53)");
  }
  std::vector<std::pair<int64_t, int64_t>> segments;
  const int err = vs_data_segments(fd, static_cast<int64_t>(size), CollectSegment, &segments);
  if (err < 0) {
    throw MakeError(env, err, "lseek", "SEEK_DATA (fd " + std::to_string(fd) + ")");
  }
  Napi::Array result = Napi::Array::New(env, segments.size());
  for (size_t i = 0; i < segments.size(); i++) {
    Napi::Array pair = Napi::Array::New(env, 2);
    pair.Set(0u, Napi::Number::New(env, static_cast<double>(segments[i].first)));
    pair.Set(1u, Napi::Number::New(env, static_cast<double>(segments[i].second)));
    result.Set(static_cast<uint32_t>(i), pair);
  }
  return result;
}

// ---- the pedigree walk ---------------------------------------------------------------

// Records of one step, as the facade reads them: five doubles per record.
constexpr size_t kWalkRecordFields = 5;
constexpr size_t kWalkExtentFields = 4;
// Bounds on what one step may be asked for and on a walk's entries.
constexpr double kMaxWalkStep = 1 << 20;
constexpr double kMaxWalkEntries = 1ull << 32;

// TreeWalk(root, dev, maxEntries, threads[, flags VS_WALK_F_*]): one vs_walk. next(maxRecords) runs one
// step on the libuv thread pool and resolves with that step's records as
// typed arrays (see WalkStepWorker::OnOK); one step at a time. close() frees
// the walk, at once or when the running step ends. A step that fails closes
// the walk.
class TreeWalk : public Napi::ObjectWrap<TreeWalk> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "TreeWalk",
                       {InstanceMethod<&TreeWalk::Next>("next"),
                        InstanceMethod<&TreeWalk::Close>("close")});
  }

  explicit TreeWalk(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TreeWalk>(info) {
    Napi::Env env = info.Env();
    root_ = ArgString(info, 0, "root");
    const double dev = ArgInteger(info, 1, "dev", 0, 9007199254740991.0);
    const double max = ArgInteger(info, 2, "maxEntries", 0, kMaxWalkEntries);
    const double threads = ArgInteger(info, 3, "threads", 1, VS_WALK_MAX_THREADS);
    const double flags = info.Length() > 4 ? ArgInteger(info, 4, "flags", 0, VS_WALK_F_ALL) : 0;
    const int err = vs_walk_open(root_.c_str(), static_cast<uint64_t>(dev),
                                 static_cast<uint64_t>(max), static_cast<unsigned>(threads),
                                 static_cast<unsigned>(flags), &walk_);
    if (err < 0) throw MakeError(env, err, "malloc", "walk " + Quoted(root_), root_.c_str());
    max_entries_ = static_cast<uint64_t>(max);
  }

  ~TreeWalk() override { vs_walk_close(walk_); }

  // Called by the step's worker on the JS thread when it ends.
  void StepDone() {
    busy_ = false;
    if (close_pending_) Free();
  }
  void Free() {
    vs_walk_close(walk_);
    walk_ = nullptr;
  }
  vs_walk* walk() const { return walk_; }
  const std::string& root() const { return root_; }
  uint64_t max_entries() const { return max_entries_; }

 private:
  Napi::Value Next(const Napi::CallbackInfo& info);

  void Close(const Napi::CallbackInfo&) {
    if (busy_) {
      close_pending_ = true;
      return;
    }
    Free();
  }

  std::string root_;
  uint64_t max_entries_ = 0;
  vs_walk* walk_ = nullptr;
  bool busy_ = false;
  bool close_pending_ = false;
};

class WalkStepWorker : public Napi::AsyncWorker {
 public:
  // The receiver (the TreeWalk's JS object) is held until the step ends, so
  // the walk cannot be collected while the thread pool uses it.
  WalkStepWorker(Napi::Object receiver, TreeWalk* walk, size_t max_records)
      : Napi::AsyncWorker(receiver.Env(), "vmsubst:walk"),
        deferred_(Napi::Promise::Deferred::New(receiver.Env())),
        self_(Napi::Persistent(receiver)),
        walk_(walk),
        state_(walk->walk()),
        max_records_(max_records) {}

  ~WalkStepWorker() override { vs_walk_chunk_free(&chunk_); }

  Napi::Promise Promise() const { return deferred_.Promise(); }

  void Execute() override {
    ret_ = vs_walk_next(state_, &chunk_, max_records_);
    seen_ = vs_walk_seen(state_);
  }

  // {records: Float64Array [kind, parent (-1: none), ino, size, extents] per
  //  record, ctimeNs: BigInt64Array, extents: Float64Array [physical,
  //  logical, length, flags (VS_WALK_EXTENT_*)] per extent, names: string (each name and a NUL),
  //  seen: entries so far, done: nothing left}
  void OnOK() override {
    Napi::Env env = Env();
    walk_->StepDone();
    if (ret_ < 0) {
      walk_->Free();
      Napi::Error error = MakeError(env, ret_, "walk", Quoted(walk_->root()), walk_->root().c_str());
      if (ret_ == -E2BIG) {
        error.Value().Set("message", "E2BIG: more than " + std::to_string(walk_->max_entries()) +
                                         " entries under " + Quoted(walk_->root()) +
                                         " (the walk's budget), walk");
      }
      deferred_.Reject(error.Value());
      return;
    }
    try {
      const size_t n = chunk_.count;
      Napi::Float64Array records = Napi::Float64Array::New(env, n * kWalkRecordFields);
      Napi::TypedArrayOf<int64_t> ctimes = Napi::TypedArrayOf<int64_t>::New(env, n);
      double* rec = records.Data();
      int64_t* ct = ctimes.Data();
      for (size_t i = 0; i < n; i++) {
        const vs_walk_record& r = chunk_.records[i];
        double* f = rec + i * kWalkRecordFields;
        f[0] = r.kind;
        f[1] = r.parent == VS_WALK_NO_PARENT ? -1.0 : static_cast<double>(r.parent);
        f[2] = static_cast<double>(r.ino);
        f[3] = static_cast<double>(r.size);
        f[4] = r.extents;
        ct[i] = r.ctime_ns;
      }
      Napi::Float64Array extents = Napi::Float64Array::New(env, chunk_.nr_extents * kWalkExtentFields);
      double* ext = extents.Data();
      for (size_t i = 0; i < chunk_.nr_extents; i++) {
        const vs_walk_extent& e = chunk_.extents[i];
        ext[i * kWalkExtentFields] = static_cast<double>(e.physical);
        ext[i * kWalkExtentFields + 1] = static_cast<double>(e.logical);
        ext[i * kWalkExtentFields + 2] = static_cast<double>(e.length);
        ext[i * kWalkExtentFields + 3] = static_cast<double>(e.flags);
      }
      Napi::Object o = Napi::Object::New(env);
      o.Set("records", records);
      o.Set("ctimeNs", ctimes);
      o.Set("extents", extents);
      o.Set("names", Napi::String::New(env, chunk_.names_len ? chunk_.names : "", chunk_.names_len));
      o.Set("seen", Napi::Number::New(env, static_cast<double>(seen_)));
      o.Set("done", Napi::Boolean::New(env, ret_ == 0));
      deferred_.Resolve(o);
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }

  void OnError(const Napi::Error& e) override {
    walk_->StepDone();
    deferred_.Reject(e.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  Napi::ObjectReference self_;
  TreeWalk* walk_;
  vs_walk* state_;
  size_t max_records_;
  vs_walk_chunk chunk_{};
  int ret_ = 0;
  uint64_t seen_ = 0;
};

Napi::Value TreeWalk::Next(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const size_t max = static_cast<size_t>(ArgInteger(info, 0, "maxRecords", 1, kMaxWalkStep));
  if (walk_ == nullptr || close_pending_) {
    throw Napi::Error::New(env, "walk of " + Quoted(root_) + " is closed");
  }
  if (busy_) {
    throw Napi::Error::New(env, "walk of " + Quoted(root_) + ": a step is already running");
  }
  auto* worker = new WalkStepWorker(info.This().As<Napi::Object>(), this, max);
  busy_ = true;
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

// ---- block comparison (the host's differ) -----------------------------------------

// A span may not ask for more than this many runs' worth of memory: 1 GiB of
// 4 KiB blocks, all alternating.
constexpr double kMaxCompareSpan = 1024.0 * 1024.0 * 1024.0;

class CompareSpanWorker : public Napi::AsyncWorker {
 public:
  CompareSpanWorker(Napi::Env env, int fd_a, int fd_b, uint64_t offset, uint64_t length,
                    uint32_t block_size)
      : Napi::AsyncWorker(env, "vmsubst:compareSpan"),
        deferred_(Napi::Promise::Deferred::New(env)),
        fd_a_(fd_a),
        fd_b_(fd_b),
        offset_(offset),
        length_(length),
        block_size_(block_size) {}

  Napi::Promise Promise() const { return deferred_.Promise(); }

  void Execute() override {
    const size_t blocks = static_cast<size_t>(length_ / block_size_);
    try {
      runs_.resize((blocks + 1) / 2);
    } catch (...) {
      err_ = -ENOMEM;
      return;
    }
    size_t n = 0;
    err_ = vs_compare_span(fd_a_, fd_b_, offset_, length_, block_size_, runs_.data(), runs_.size(), &n);
    runs_.resize(n);
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (err_ == -ENODATA) {
      Napi::Error error = MakeError(env, -EIO, "pread", "fd " + std::to_string(fd_a_) + "/" + std::to_string(fd_b_));
      error.Value().Set("message", "EIO: short read: a file ends inside [" + std::to_string(offset_) + ", " +
                                       std::to_string(offset_ + length_) + ")");
      deferred_.Reject(error.Value());
      return;
    }
    if (err_ < 0) {
      deferred_.Reject(MakeError(env, err_, "pread", "fd " + std::to_string(fd_a_) + "/" + std::to_string(fd_b_)).Value());
      return;
    }
    // [offset, length] pairs; offsets below 2^53 (checked on the way in).
    Napi::Float64Array out = Napi::Float64Array::New(env, runs_.size() * 2);
    for (size_t i = 0; i < runs_.size(); i++) {
      out[i * 2] = static_cast<double>(runs_[i].offset);
      out[i * 2 + 1] = static_cast<double>(runs_[i].length);
    }
    deferred_.Resolve(out);
  }

 private:
  Napi::Promise::Deferred deferred_;
  int fd_a_;
  int fd_b_;
  uint64_t offset_;
  uint64_t length_;
  uint32_t block_size_;
  int err_ = 0;
  std::vector<vs_run> runs_;
};

// compareSpan(fdA, fdB, offset, length, blockSize): Promise<Float64Array> of the
// runs of differing blocks as [offset, length] pairs.
Napi::Value CompareSpan(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd_a = ArgFd(info, 0);
  const int fd_b = ArgFd(info, 1);
  const double offset = ArgInteger(info, 2, "offset", 0, 9007199254740991.0);
  const double length = ArgInteger(info, 3, "length", 0, kMaxCompareSpan);
  const double block_size = ArgInteger(info, 4, "blockSize", 512, VS_COMPARE_BUF);
  const uint32_t bs = static_cast<uint32_t>(block_size);
  if ((bs & (bs - 1)) != 0) throw Napi::RangeError::New(env, "blockSize must be a power of two");
  if (std::fmod(length, block_size) != 0) throw Napi::RangeError::New(env, "length must be a multiple of blockSize");
  if (offset + length > 9007199254740991.0) throw Napi::RangeError::New(env, "offset + length must be below 2^53");
  auto* worker = new CompareSpanWorker(env, fd_a, fd_b, static_cast<uint64_t>(offset),
                                       static_cast<uint64_t>(length), bs);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

// ---- O_DIRECT read ------------------------------------------------------------------

class ReadDirectWorker : public Napi::AsyncWorker {
 public:
  ReadDirectWorker(Napi::Env env, std::string path, uint64_t offset, size_t length)
      : Napi::AsyncWorker(env, "vmsubst:readDirect"),
        deferred_(Napi::Promise::Deferred::New(env)),
        path_(std::move(path)),
        offset_(offset),
        length_(length) {}

  ~ReadDirectWorker() override { free(out_.base); }

  Napi::Promise Promise() const { return deferred_.Promise(); }

  void Execute() override {
    err_ = vs_read_direct(path_.c_str(), offset_, length_, &out_, &syscall_);
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (err_ < 0) {
      deferred_.Reject(MakeError(env, err_, syscall_, Quoted(path_), path_.c_str()).Value());
      return;
    }
    if (out_.got < length_) {
      Napi::Error error = MakeError(env, -EIO, "read", Quoted(path_), path_.c_str());
      error.Value().Set(
          "message",
          "EIO: short read, got " + std::to_string(out_.got) + " of " +
              std::to_string(length_) + " bytes at offset " + std::to_string(offset_) +
              " (the file or device ends there), read " + Quoted(path_));
      deferred_.Reject(error.Value());
      return;
    }
    if (length_ == 0) {
      deferred_.Resolve(Napi::Buffer<uint8_t>::New(env, 0));
      return;
    }
    void* base = out_.base;
    uint8_t* data = static_cast<uint8_t*>(base) + out_.skip;
    // Zero-copy: the Buffer frees the aligned block when collected.
    Napi::Buffer<uint8_t> buffer = Napi::Buffer<uint8_t>::NewOrCopy(
        env, data, length_, [](Napi::Env, uint8_t*, void* hint) { free(hint); }, base);
    out_.base = nullptr;
    deferred_.Resolve(buffer);
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::string path_;
  uint64_t offset_;
  size_t length_;
  int err_ = 0;
  const char* syscall_ = "read";
  vs_direct_read out_{};
};

Napi::Value ReadDirect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = ArgString(info, 0, "path");
  const double offset = ArgInteger(info, 1, "offset", 0, 9007199254740991.0);
  const double length = ArgInteger(info, 2, "length", 0, 9007199254740991.0);
  auto* worker = new ReadDirectWorker(env, std::move(path), static_cast<uint64_t>(offset),
                                      static_cast<size_t>(length));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

// ---- /dev/vmsubst ----------------------------------------------------------------------

Napi::Value KmodVersion(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string dev = ArgString(info, 0, "devPath");
  vs_kmod_version_info v{};
  const char* syscall = "ioctl";
  const int err = vs_kmod_version(dev.c_str(), &v, &syscall);
  if (err < 0) {
    const std::string detail =
        strcmp(syscall, "ioctl") == 0 ? "VMSUBST_IOC_VERSION " + Quoted(dev) : Quoted(dev);
    throw MakeError(env, err, syscall, detail, dev.c_str());
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("abiVersion", Napi::Number::New(env, v.abi_version));
  o.Set("features", Napi::BigInt::New(env, v.features));
  o.Set("moduleVersion", Napi::String::New(env, v.module_version));
  return o;
}

// The most entries one report may ask for; the kernel's own caps are lower
// (VMSUBST_*_MAX) and answer E2BIG, this only bounds what the glue allocates.
constexpr double kMaxReportCap = 1 << 20;

// A report buffer of the uapi record type T and its vs_report view.
template <typename T>
struct Report {
  explicit Report(uint32_t cap) : items(cap) {
    r.items = items.empty() ? nullptr : items.data();
    r.cap = cap;
  }
  std::vector<T> items;
  vs_report r{};
};

uint32_t ArgCap(const Napi::CallbackInfo& info, size_t i, const char* name) {
  return static_cast<uint32_t>(ArgInteger(info, i, name, 0, kMaxReportCap));
}

std::string CommString(const char (&comm)[16]) { return std::string(comm, strnlen(comm, sizeof(comm))); }

Napi::Object PageRangeObject(Napi::Env env, const vmsubst_page_range& p) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("offset", Napi::BigInt::New(env, static_cast<uint64_t>(p.offset)));
  o.Set("length", Napi::BigInt::New(env, static_cast<uint64_t>(p.length)));
  o.Set("state", Napi::Number::New(env, p.state));
  return o;
}

Napi::Object MapperObject(Napi::Env env, const vmsubst_mapper& m) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("pid", Napi::Number::New(env, m.pid));
  o.Set("comm", Napi::String::New(env, CommString(m.comm)));
  o.Set("start", Napi::BigInt::New(env, static_cast<uint64_t>(m.start)));
  o.Set("end", Napi::BigInt::New(env, static_cast<uint64_t>(m.end)));
  o.Set("offset", Napi::BigInt::New(env, static_cast<uint64_t>(m.offset)));
  o.Set("flags", Napi::Number::New(env, m.flags));
  return o;
}

Napi::Object InodeStatusObject(Napi::Env env, const vmsubst_inode_status& st) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("ino", Napi::BigInt::New(env, static_cast<uint64_t>(st.ino)));
  o.Set("reasons", Napi::Number::New(env, st.reasons));
  o.Set("refs", Napi::Number::New(env, st.refs));
  return o;
}

Napi::Object PinResultObject(Napi::Env env, const vmsubst_pin_result& p) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("pid", Napi::Number::New(env, p.pid));
  o.Set("comm", Napi::String::New(env, CommString(p.comm)));
  o.Set("flags", Napi::Number::New(env, p.flags));
  o.Set("bytesCopied", Napi::BigInt::New(env, static_cast<uint64_t>(p.bytes_copied)));
  o.Set("bytesPrivate", Napi::BigInt::New(env, static_cast<uint64_t>(p.bytes_private)));
  o.Set("bytesFailed", Napi::BigInt::New(env, static_cast<uint64_t>(p.bytes_failed)));
  return o;
}

// Sets o[name] to the entries the kernel wrote and o[name + "Total"] to how
// many it had.
template <typename T, typename Make>
void SetReport(Napi::Env env, Napi::Object o, const char* name, const Report<T>& rep, Make make) {
  const uint32_t n = std::min<uint32_t>(rep.r.count, static_cast<uint32_t>(rep.items.size()));
  Napi::Array a = Napi::Array::New(env, n);
  for (uint32_t i = 0; i < n; i++) a.Set(i, make(env, rep.items[i]));
  o.Set(name, a);
  o.Set(std::string(name) + "Total", Napi::BigInt::New(env, rep.r.total));
}

// One /dev/vmsubst ioctl on the libuv thread pool. `run` makes the call
// through native.h and `build` turns what it filled into the resolved value;
// both share that state through the lambdas' captures, which the worker owns.
class KmodWorker : public Napi::AsyncWorker {
 public:
  using Run = std::function<int(const char** syscall)>;
  using Build = std::function<Napi::Value(Napi::Env)>;

  static Napi::Promise Start(Napi::Env env, const char* ioctl_name, std::string dev, int fd,
                             Run run, Build build) {
    auto* worker = new KmodWorker(env, ioctl_name, std::move(dev), fd, std::move(run),
                                  std::move(build));
    Napi::Promise promise = worker->deferred_.Promise();
    worker->Queue();
    return promise;
  }

  void Execute() override { err_ = run_(&syscall_); }

  void OnOK() override {
    Napi::Env env = Env();
    if (err_ < 0) {
      const std::string detail = strcmp(syscall_, "ioctl") == 0
                                     ? std::string(ioctl_) + " " + Quoted(dev_) + " (fd " +
                                           std::to_string(fd_) + ")"
                                     : Quoted(dev_);
      deferred_.Reject(MakeError(env, err_, syscall_, detail, dev_.c_str()).Value());
      return;
    }
    try {
      deferred_.Resolve(build_(env));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }

 private:
  KmodWorker(Napi::Env env, const char* ioctl_name, std::string dev, int fd, Run run, Build build)
      : Napi::AsyncWorker(env, "vmsubst:kmod"),
        deferred_(Napi::Promise::Deferred::New(env)),
        ioctl_(ioctl_name),
        dev_(std::move(dev)),
        fd_(fd),
        run_(std::move(run)),
        build_(std::move(build)) {}

  Napi::Promise::Deferred deferred_;
  const char* ioctl_;
  std::string dev_;
  int fd_;
  Run run_;
  Build build_;
  int err_ = 0;
  const char* syscall_ = "ioctl";
};

// invalidateRange(devPath, fd, offset, length, flags, outcomesCap, mappersCap)
Napi::Value InvalidateRange(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string dev = ArgString(info, 0, "devPath");
  const int fd = ArgFd(info, 1);
  const uint64_t offset = ArgU64(info, 2, "offset");
  const uint64_t length = ArgU64(info, 3, "length");
  const uint32_t flags = ArgU32(info, 4, "flags");
  auto outcomes = std::make_shared<Report<vmsubst_page_range>>(ArgCap(info, 5, "outcomesCap"));
  auto mappers = std::make_shared<Report<vmsubst_mapper>>(ArgCap(info, 6, "mappersCap"));
  auto out = std::make_shared<vs_invalidate_result>();
  const std::string path = dev;
  return KmodWorker::Start(
      env, "VMSUBST_IOC_INVALIDATE_RANGE", std::move(dev), fd,
      [=](const char** syscall) {
        return vs_invalidate_range(path.c_str(), fd, offset, length, flags, &outcomes->r,
                                   &mappers->r, out.get(), syscall);
      },
      [=](Napi::Env e) -> Napi::Value {
        Napi::Object o = Napi::Object::New(e);
        o.Set("pagesCached", Napi::BigInt::New(e, out->pages_cached));
        o.Set("pagesMapped", Napi::BigInt::New(e, out->pages_mapped));
        o.Set("pagesDropped", Napi::BigInt::New(e, out->pages_dropped));
        o.Set("pagesKept", Napi::BigInt::New(e, out->pages_kept));
        o.Set("pagesRefaulted", Napi::BigInt::New(e, out->pages_refaulted));
        SetReport(e, o, "outcomes", *outcomes, PageRangeObject);
        SetReport(e, o, "mappers", *mappers, MapperObject);
        return o;
      });
}

// invalidateBdev(devPath, fd, offset, length, flags, keptCap)
Napi::Value InvalidateBdev(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string dev = ArgString(info, 0, "devPath");
  const int fd = ArgFd(info, 1);
  const uint64_t offset = ArgU64(info, 2, "offset");
  const uint64_t length = ArgU64(info, 3, "length");
  const uint32_t flags = ArgU32(info, 4, "flags");
  auto kept = std::make_shared<Report<vmsubst_page_range>>(ArgCap(info, 5, "keptCap"));
  auto out = std::make_shared<vs_bdev_result>();
  const std::string path = dev;
  return KmodWorker::Start(
      env, "VMSUBST_IOC_INVALIDATE_BDEV", std::move(dev), fd,
      [=](const char** syscall) {
        return vs_invalidate_bdev(path.c_str(), fd, offset, length, flags, &kept->r, out.get(),
                                  syscall);
      },
      [=](Napi::Env e) -> Napi::Value {
        Napi::Object o = Napi::Object::New(e);
        o.Set("pagesCached", Napi::BigInt::New(e, out->pages_cached));
        o.Set("pagesDropped", Napi::BigInt::New(e, out->pages_dropped));
        o.Set("pagesKept", Napi::BigInt::New(e, out->pages_kept));
        SetReport(e, o, "kept", *kept, PageRangeObject);
        return o;
      });
}

// revalidateInodes(devPath, fd, inodes: bigint[], flags): in_use has room
// for every number given.
Napi::Value RevalidateInodes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string dev = ArgString(info, 0, "devPath");
  const int fd = ArgFd(info, 1);
  if (info.Length() <= 2 || !info[2].IsArray()) {
    throw Napi::TypeError::New(env, "inodes must be an array of bigint");
  }
  Napi::Array list = info[2].As<Napi::Array>();
  if (list.Length() > kMaxReportCap) throw Napi::RangeError::New(env, "too many inodes");
  auto inodes = std::make_shared<std::vector<uint64_t>>(list.Length());
  for (uint32_t i = 0; i < list.Length(); i++) {
    Napi::Value v = list.Get(i);
    bool lossless = false;
    if (!v.IsBigInt()) throw Napi::TypeError::New(env, "inodes must be an array of bigint");
    (*inodes)[i] = v.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) throw Napi::RangeError::New(env, "inode numbers must be in [0, 2^64)");
  }
  const uint32_t flags = ArgU32(info, 3, "flags");
  const uint32_t n = static_cast<uint32_t>(inodes->size());
  auto in_use = std::make_shared<Report<vmsubst_inode_status>>(n);
  auto out = std::make_shared<vs_inodes_result>();
  const std::string path = dev;
  return KmodWorker::Start(
      env, "VMSUBST_IOC_REVALIDATE_INODES", std::move(dev), fd,
      [=](const char** syscall) {
        return vs_revalidate_inodes(path.c_str(), fd, inodes->empty() ? nullptr : inodes->data(),
                                    n, flags, &in_use->r, out.get(), syscall);
      },
      [=](Napi::Env e) -> Napi::Value {
        Napi::Object o = Napi::Object::New(e);
        o.Set("evicted", Napi::Number::New(e, out->evicted));
        o.Set("notCached", Napi::Number::New(e, out->not_cached));
        SetReport(e, o, "inUse", *in_use, InodeStatusObject);
        return o;
      });
}

// revalidateDentries(devPath, fd, names: string[], flags): the names are
// packed NUL-terminated, in UTF-8, as the kernel takes them.
Napi::Value RevalidateDentries(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string dev = ArgString(info, 0, "devPath");
  const int fd = ArgFd(info, 1);
  if (info.Length() <= 2 || !info[2].IsArray()) {
    throw Napi::TypeError::New(env, "names must be an array of strings");
  }
  Napi::Array list = info[2].As<Napi::Array>();
  if (list.Length() > kMaxReportCap) throw Napi::RangeError::New(env, "too many names");
  auto packed = std::make_shared<std::string>();
  for (uint32_t i = 0; i < list.Length(); i++) {
    Napi::Value v = list.Get(i);
    if (!v.IsString()) throw Napi::TypeError::New(env, "names must be an array of strings");
    const std::string name = v.As<Napi::String>().Utf8Value();
    if (name.find('\0') != std::string::npos) {
      throw Napi::TypeError::New(env, "names must not contain NUL");
    }
    packed->append(name);
    packed->push_back('\0');
  }
  if (packed->size() > 0xffffffffu) throw Napi::RangeError::New(env, "names too long");
  const uint32_t flags = ArgU32(info, 3, "flags");
  const uint32_t nr = list.Length();
  auto out = std::make_shared<vs_dentries_result>();
  const std::string path = dev;
  return KmodWorker::Start(
      env, "VMSUBST_IOC_REVALIDATE_DENTRIES", std::move(dev), fd,
      [=](const char** syscall) {
        return vs_revalidate_dentries(path.c_str(), fd, nr ? packed->data() : nullptr, nr,
                                      static_cast<uint32_t>(packed->size()), flags, out.get(),
                                      syscall);
      },
      [=](Napi::Env e) -> Napi::Value {
        Napi::Object o = Napi::Object::New(e);
        o.Set("dropped", Napi::Number::New(e, out->dropped));
        o.Set("notCached", Napi::Number::New(e, out->not_cached));
        o.Set("busy", Napi::Number::New(e, out->busy));
        o.Set("mountpoints", Napi::Number::New(e, out->mountpoints));
        return o;
      });
}

// queryMappers(devPath, fd, offset, length, mappersCap)
Napi::Value QueryMappers(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string dev = ArgString(info, 0, "devPath");
  const int fd = ArgFd(info, 1);
  const uint64_t offset = ArgU64(info, 2, "offset");
  const uint64_t length = ArgU64(info, 3, "length");
  auto mappers = std::make_shared<Report<vmsubst_mapper>>(ArgCap(info, 4, "mappersCap"));
  const std::string path = dev;
  return KmodWorker::Start(
      env, "VMSUBST_IOC_QUERY_MAPPERS", std::move(dev), fd,
      [=](const char** syscall) {
        return vs_query_mappers(path.c_str(), fd, offset, length, &mappers->r, syscall);
      },
      [=](Napi::Env e) -> Napi::Value {
        Napi::Object o = Napi::Object::New(e);
        SetReport(e, o, "mappers", *mappers, MapperObject);
        return o;
      });
}

// A u64 member of an object argument, as a bigint.
uint64_t MemberU64(Napi::Env env, Napi::Object o, const char* arg, const char* name) {
  Napi::Value v = o.Get(name);
  bool lossless = false;
  if (!v.IsBigInt()) {
    throw Napi::TypeError::New(env, std::string(arg) + "." + name + " must be a bigint");
  }
  const uint64_t n = v.As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) {
    throw Napi::RangeError::New(env, std::string(arg) + "." + name + " must be in [0, 2^64)");
  }
  return n;
}

// pinMappers(devPath, fd, offset, length, maxPages, pinnedCap, unpinnedCap[, cursor]):
// with cursor ({ mm, addr } bigints), VMSUBST_PIN_F_RESUME from it, and the
// result's cursor is where the next call resumes; without, from the start.
Napi::Value PinMappers(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string dev = ArgString(info, 0, "devPath");
  const int fd = ArgFd(info, 1);
  const uint64_t offset = ArgU64(info, 2, "offset");
  const uint64_t length = ArgU64(info, 3, "length");
  const uint32_t max_pages = ArgU32(info, 4, "maxPages");
  auto pinned = std::make_shared<Report<vmsubst_pin_result>>(ArgCap(info, 5, "pinnedCap"));
  auto unpinned = std::make_shared<Report<vmsubst_mapper>>(ArgCap(info, 6, "unpinnedCap"));
  auto out = std::make_shared<vs_pin_totals>();
  std::shared_ptr<vs_pin_cursor> cursor;
  if (info.Length() > 7 && !info[7].IsUndefined() && !info[7].IsNull()) {
    if (!info[7].IsObject()) throw Napi::TypeError::New(env, "cursor must be { mm, addr }");
    Napi::Object c = info[7].As<Napi::Object>();
    cursor = std::make_shared<vs_pin_cursor>();
    cursor->mm = MemberU64(env, c, "cursor", "mm");
    cursor->addr = MemberU64(env, c, "cursor", "addr");
  }
  const std::string path = dev;
  return KmodWorker::Start(
      env, "VMSUBST_IOC_PIN_MAPPERS", std::move(dev), fd,
      [=](const char** syscall) {
        return vs_pin_mappers(path.c_str(), fd, offset, length, max_pages, cursor.get(),
                              &pinned->r, &unpinned->r, out.get(), syscall);
      },
      [=](Napi::Env e) -> Napi::Value {
        Napi::Object o = Napi::Object::New(e);
        o.Set("bytesCopied", Napi::BigInt::New(e, out->bytes_copied));
        o.Set("bytesPrivate", Napi::BigInt::New(e, out->bytes_private));
        o.Set("bytesFailed", Napi::BigInt::New(e, out->bytes_failed));
        o.Set("status", Napi::Number::New(e, out->status));
        o.Set("mappings", Napi::Number::New(e, out->mappings));
        SetReport(e, o, "pinned", *pinned, PinResultObject);
        SetReport(e, o, "unpinned", *unpinned, MapperObject);
        if (cursor) {
          Napi::Object c = Napi::Object::New(e);
          c.Set("mm", Napi::BigInt::New(e, cursor->mm));
          c.Set("addr", Napi::BigInt::New(e, cursor->addr));
          o.Set("cursor", c);
        }
        return o;
      });
}

// queryPages(devPath, fd, offset, length, rangesCap)
Napi::Value QueryPages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string dev = ArgString(info, 0, "devPath");
  const int fd = ArgFd(info, 1);
  const uint64_t offset = ArgU64(info, 2, "offset");
  const uint64_t length = ArgU64(info, 3, "length");
  auto ranges = std::make_shared<Report<vmsubst_page_range>>(ArgCap(info, 4, "rangesCap"));
  auto out = std::make_shared<vs_pages_result>();
  const std::string path = dev;
  return KmodWorker::Start(
      env, "VMSUBST_IOC_QUERY_PAGES", std::move(dev), fd,
      [=](const char** syscall) {
        return vs_query_pages(path.c_str(), fd, offset, length, &ranges->r, out.get(), syscall);
      },
      [=](Napi::Env e) -> Napi::Value {
        Napi::Object o = Napi::Object::New(e);
        o.Set("pagesCached", Napi::BigInt::New(e, out->pages_cached));
        o.Set("pagesMapped", Napi::BigInt::New(e, out->pages_mapped));
        o.Set("pagesDirty", Napi::BigInt::New(e, out->pages_dirty));
        o.Set("pagesWriteback", Napi::BigInt::New(e, out->pages_writeback));
        SetReport(e, o, "ranges", *ranges, PageRangeObject);
        return o;
      });
}

// ---- vsock syscalls ----------------------------------------------------------------------

Napi::Value VsockListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint32_t cid = ArgU32(info, 0, "cid");
  const uint32_t port = ArgU32(info, 1, "port");
  const int backlog = static_cast<int>(ArgInteger(info, 2, "backlog", 0, 65535));
  vs_vsock_addr bound{};
  const char* syscall = "socket";
  const int fd = vs_vsock_listen(cid, port, backlog, &bound, &syscall);
  if (fd < 0) throw MakeError(env, fd, syscall, VsockAddress(cid, port));
  Napi::Object o = Napi::Object::New(env);
  o.Set("fd", Napi::Number::New(env, fd));
  o.Set("cid", Napi::Number::New(env, bound.cid));
  o.Set("port", Napi::Number::New(env, bound.port));
  return o;
}

Napi::Value VsockConnectStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint32_t cid = ArgU32(info, 0, "cid");
  const uint32_t port = ArgU32(info, 1, "port");
  const uint32_t timeout_ms = ArgU32(info, 2, "timeoutMs");
  const uint32_t local_port = ArgU32(info, 3, "localPort");
  const char* syscall = "socket";
  const int fd = vs_vsock_connect(cid, port, timeout_ms, local_port, &syscall);
  if (fd < 0) throw MakeError(env, fd, syscall, VsockAddress(cid, port));
  return Napi::Number::New(env, fd);
}

Napi::Value VsockAddresses(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = ArgFd(info, 0);
  vs_vsock_addr local{}, peer{};
  int err = vs_vsock_local_addr(fd, &local);
  if (err < 0) throw MakeError(env, err, "getsockname", "(fd " + std::to_string(fd) + ")");
  err = vs_vsock_peer_addr(fd, &peer);
  if (err < 0) throw MakeError(env, err, "getpeername", "(fd " + std::to_string(fd) + ")");
  Napi::Object o = Napi::Object::New(env);
  o.Set("localCid", Napi::Number::New(env, local.cid));
  o.Set("localPort", Napi::Number::New(env, local.port));
  o.Set("remoteCid", Napi::Number::New(env, peer.cid));
  o.Set("remotePort", Napi::Number::New(env, peer.port));
  return o;
}

Napi::Value LocalCid(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string dev = ArgString(info, 0, "devPath");
  uint32_t cid = 0;
  const char* syscall = "ioctl";
  const int err = vs_vsock_local_cid(dev.c_str(), &cid, &syscall);
  if (err < 0) {
    const std::string detail = strcmp(syscall, "ioctl") == 0
                                   ? "IOCTL_VM_SOCKETS_GET_LOCAL_CID " + Quoted(dev)
                                   : Quoted(dev);
    throw MakeError(env, err, syscall, detail, dev.c_str());
  }
  return Napi::Number::New(env, cid);
}

Napi::Value SdNotify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string path = ArgString(info, 0, "socketPath");
  const std::string message = ArgString(info, 1, "message");
  const int err = vs_sd_notify(path.c_str(), message.data(), message.size());
  if (err < 0) throw MakeError(env, err, "sendto", Quoted(path), path.c_str());
  return env.Undefined();
}

Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  const int fd = ArgFd(info, 0);
  const int err = vs_close(fd);
  if (err < 0) throw MakeError(info.Env(), err, "close", "(fd " + std::to_string(fd) + ")");
  return info.Env().Undefined();
}

Napi::Value DupFd(const Napi::CallbackInfo& info) {
  const int fd = ArgFd(info, 0);
  const int nfd = vs_dup(fd);
  if (nfd < 0) throw MakeError(info.Env(), nfd, "dup", "(fd " + std::to_string(fd) + ")");
  return Napi::Number::New(info.Env(), nfd);
}

// ---- StreamHandle ------------------------------------------------------------------------

class StreamHandle : public Napi::ObjectWrap<StreamHandle> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "StreamHandle",
                       {
                           InstanceMethod<&StreamHandle::ReadStart>("readStart"),
                           InstanceMethod<&StreamHandle::ReadStop>("readStop"),
                           InstanceMethod<&StreamHandle::Write>("write"),
                           InstanceMethod<&StreamHandle::Shutdown>("shutdown"),
                           InstanceMethod<&StreamHandle::Close>("close"),
                           InstanceMethod<&StreamHandle::RefHandle>("ref"),
                           InstanceMethod<&StreamHandle::UnrefHandle>("unref"),
                       });
  }

  // new StreamHandle(fd, onread(err, chunk)): adopts fd on success (closing
  // the handle closes it); on failure the caller still owns fd.
  explicit StreamHandle(const Napi::CallbackInfo& info)
      : Napi::ObjectWrap<StreamHandle>(info), async_(info.Env(), "vmsubst:StreamHandle") {
    Napi::Env env = info.Env();
    const int fd = ArgFd(info, 0);
    onread_ = Napi::Persistent(ArgFunction(info, 1, "onread"));
    uv_loop_t* loop = Loop(env);

    auto* pipe = new Pipe{};
    int err = uv_pipe_init(loop, &pipe->handle, 0);
    if (err < 0) {
      delete pipe;
      throw MakeError(env, err, "uv_pipe_init", "(fd " + std::to_string(fd) + ")");
    }
    pipe->handle.data = pipe;
    err = uv_pipe_open(&pipe->handle, fd);
    if (err < 0) {
      // Initialised handles must be closed; fd was not taken.
      uv_close(reinterpret_cast<uv_handle_t*>(&pipe->handle), OnClose);
      throw MakeError(env, err, "uv_pipe_open", "(fd " + std::to_string(fd) + ")");
    }
    pipe->owner = this;
    pipe_ = pipe;
    Ref();
  }

  ~StreamHandle() override {
    if (pipe_ != nullptr) {
      pipe_->owner = nullptr;
      uv_close(Handle(), OnClose);
      pipe_ = nullptr;
    }
  }

 private:
  struct Pipe {
    uv_pipe_t handle;
    StreamHandle* owner = nullptr;
    char* read_buffer = nullptr;
  };

  struct WriteReq {
    uv_write_t req;
    Pipe* pipe;
    Napi::Reference<Napi::Value> chunks;  // keeps the Buffers' memory alive
    Napi::FunctionReference cb;
  };

  struct ShutdownReq {
    uv_shutdown_t req;
    Pipe* pipe;
    Napi::FunctionReference cb;
  };

  uv_handle_t* Handle() const { return reinterpret_cast<uv_handle_t*>(&pipe_->handle); }
  uv_stream_t* Stream() const { return reinterpret_cast<uv_stream_t*>(&pipe_->handle); }

  bool Open() const { return pipe_ != nullptr && !closing_; }

  void RequireOpen(Napi::Env env, const char* syscall) const {
    if (!Open()) throw MakeError(env, -EBADF, syscall, "(handle is closed)");
  }

  Napi::Value ReadStart(const Napi::CallbackInfo& info) {
    RequireOpen(info.Env(), "read");
    const int err = uv_read_start(Stream(), OnAlloc, OnRead);
    if (err < 0 && err != UV_EALREADY) throw MakeError(info.Env(), err, "read", "");
    return info.Env().Undefined();
  }

  Napi::Value ReadStop(const Napi::CallbackInfo& info) {
    if (Open()) uv_read_stop(Stream());
    return info.Env().Undefined();
  }

  // write(chunks: Buffer[], cb(err)): cb runs once libuv has written every
  // byte or failed; Buffers stay referenced until then.
  Napi::Value Write(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsArray()) {
      throw Napi::TypeError::New(env, "chunks must be an array of Buffers");
    }
    Napi::Array chunks = info[0].As<Napi::Array>();
    Napi::Function cb = ArgFunction(info, 1, "cb");
    RequireOpen(env, "write");

    std::vector<uv_buf_t> bufs;
    bufs.reserve(chunks.Length());
    for (uint32_t i = 0; i < chunks.Length(); i++) {
      Napi::Value chunk = chunks.Get(i);
      if (!chunk.IsBuffer()) throw Napi::TypeError::New(env, "chunks must be an array of Buffers");
      Napi::Buffer<char> b = chunk.As<Napi::Buffer<char>>();
      if (b.Length() > UINT_MAX) throw Napi::RangeError::New(env, "a chunk must be < 4 GiB");
      bufs.push_back(uv_buf_init(b.Data(), static_cast<unsigned int>(b.Length())));
    }
    if (bufs.empty()) bufs.push_back(uv_buf_init(nullptr, 0));

    auto* req = new WriteReq{};
    req->req.data = req;
    req->pipe = pipe_;
    req->chunks = Napi::Reference<Napi::Value>::New(chunks, 1);
    req->cb = Napi::Persistent(cb);
    const int err = uv_write(&req->req, Stream(), bufs.data(),
                             static_cast<unsigned int>(bufs.size()), OnWrite);
    if (err < 0) {
      delete req;
      throw MakeError(env, err, "write", "");
    }
    return env.Undefined();
  }

  // shutdown(cb(err)): half-close (SHUT_WR) after queued writes drain.
  Napi::Value Shutdown(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Function cb = ArgFunction(info, 0, "cb");
    RequireOpen(env, "shutdown");
    auto* req = new ShutdownReq{};
    req->req.data = req;
    req->pipe = pipe_;
    req->cb = Napi::Persistent(cb);
    const int err = uv_shutdown(&req->req, Stream(), OnShutdown);
    if (err < 0) {
      delete req;
      throw MakeError(env, err, "shutdown", "");
    }
    return env.Undefined();
  }

  // close(cb?): pending writes and shutdowns complete with ECANCELED first;
  // cb runs once the fd is closed. Idempotent.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() > 0 && info[0].IsFunction()) {
      if (Open()) {
        onclose_ = Napi::Persistent(info[0].As<Napi::Function>());
      }
    }
    if (Open()) {
      closing_ = true;
      uv_close(Handle(), OnClose);
    }
    return env.Undefined();
  }

  Napi::Value RefHandle(const Napi::CallbackInfo& info) {
    if (Open()) uv_ref(Handle());
    return info.Env().Undefined();
  }

  Napi::Value UnrefHandle(const Napi::CallbackInfo& info) {
    if (Open()) uv_unref(Handle());
    return info.Env().Undefined();
  }

  static void OnAlloc(uv_handle_t* handle, size_t, uv_buf_t* buf) {
    auto* pipe = static_cast<Pipe*>(handle->data);
    if (pipe->read_buffer == nullptr) {
      pipe->read_buffer = static_cast<char*>(malloc(kReadBufferSize));
    }
    // A NULL base makes libuv report UV_ENOBUFS to OnRead.
    *buf = uv_buf_init(pipe->read_buffer, pipe->read_buffer ? kReadBufferSize : 0);
  }

  static void OnRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t*) {
    auto* pipe = static_cast<Pipe*>(stream->data);
    StreamHandle* self = pipe->owner;
    if (nread == 0 || self == nullptr || self->closing_) return;
    Napi::Env env = self->Env();
    Napi::HandleScope scope(env);
    CallIntoJs(env, [&] {
      napi_value err = env.Null();
      napi_value chunk = env.Null();
      if (nread > 0) {
        // A right-sized copy: the 64 KiB read buffer is reused.
        chunk = Napi::Buffer<char>::Copy(env, pipe->read_buffer, static_cast<size_t>(nread));
      } else if (nread != UV_EOF) {
        err = MakeError(env, static_cast<int>(nread), "read", "").Value();
      }
      self->onread_.MakeCallback(self->Value(), {err, chunk}, self->async_);
    });
  }

  static void OnWrite(uv_write_t* uvreq, int status) {
    auto* req = static_cast<WriteReq*>(uvreq->data);
    StreamHandle* self = req->pipe->owner;
    if (self == nullptr) return;  // environment teardown: leave the JS refs alone
    Napi::Env env = self->Env();
    Napi::HandleScope scope(env);
    CallIntoJs(env, [&] {
      napi_value err = status < 0 ? MakeError(env, status, "write", "").Value() : env.Null();
      Napi::FunctionReference cb = std::move(req->cb);
      delete req;
      cb.MakeCallback(self->Value(), {err}, self->async_);
    });
  }

  static void OnShutdown(uv_shutdown_t* uvreq, int status) {
    auto* req = static_cast<ShutdownReq*>(uvreq->data);
    StreamHandle* self = req->pipe->owner;
    if (self == nullptr) return;
    // Character devices and pipes cannot half-close; for them "end" only
    // means every queued byte was written.
    if (status == UV_ENOTSOCK) status = 0;
    Napi::Env env = self->Env();
    Napi::HandleScope scope(env);
    CallIntoJs(env, [&] {
      napi_value err = status < 0 ? MakeError(env, status, "shutdown", "").Value() : env.Null();
      Napi::FunctionReference cb = std::move(req->cb);
      delete req;
      cb.MakeCallback(self->Value(), {err}, self->async_);
    });
  }

  static void OnClose(uv_handle_t* handle) {
    auto* pipe = static_cast<Pipe*>(handle->data);
    StreamHandle* self = pipe->owner;
    free(pipe->read_buffer);
    delete pipe;
    if (self == nullptr) return;
    self->pipe_ = nullptr;
    Napi::Env env = self->Env();
    Napi::HandleScope scope(env);
    self->onread_.Reset();
    if (!self->onclose_.IsEmpty()) {
      Napi::FunctionReference cb = std::move(self->onclose_);
      CallIntoJs(env, [&] { cb.MakeCallback(self->Value(), {}, self->async_); });
    }
    self->Unref();
  }

  Pipe* pipe_ = nullptr;
  bool closing_ = false;
  Napi::FunctionReference onread_;
  Napi::FunctionReference onclose_;
  Napi::AsyncContext async_;
};

// ---- Listener ------------------------------------------------------------------------------

class Listener : public Napi::ObjectWrap<Listener> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Listener",
                       {
                           InstanceMethod<&Listener::Start>("start"),
                           InstanceMethod<&Listener::Stop>("stop"),
                           InstanceMethod<&Listener::Close>("close"),
                           InstanceMethod<&Listener::RefHandle>("ref"),
                           InstanceMethod<&Listener::UnrefHandle>("unref"),
                       });
  }

  // new Listener(fd, onconnection(err, fd, cid, port)): takes fd (a
  // listening vsock socket) on success and starts accepting.
  explicit Listener(const Napi::CallbackInfo& info)
      : Napi::ObjectWrap<Listener>(info), async_(info.Env(), "vmsubst:Listener") {
    Napi::Env env = info.Env();
    const int fd = ArgFd(info, 0);
    onconnection_ = Napi::Persistent(ArgFunction(info, 1, "onconnection"));
    uv_loop_t* loop = Loop(env);

    auto* poll = new Poll{};
    poll->fd = fd;
    int err = uv_poll_init(loop, &poll->handle, fd);
    if (err < 0) {
      delete poll;  // libuv registers the handle only on success
      throw MakeError(env, err, "uv_poll_init", "(fd " + std::to_string(fd) + ")");
    }
    poll->handle.data = poll;
    err = uv_poll_start(&poll->handle, UV_READABLE, OnPoll);
    if (err < 0) {
      poll->fd = -1;  // not ours yet
      uv_close(reinterpret_cast<uv_handle_t*>(&poll->handle), OnClose);
      throw MakeError(env, err, "uv_poll_start", "(fd " + std::to_string(fd) + ")");
    }
    poll->owner = this;
    poll_ = poll;
    Ref();
  }

  ~Listener() override {
    if (poll_ != nullptr) {
      poll_->owner = nullptr;
      uv_close(reinterpret_cast<uv_handle_t*>(&poll_->handle), OnClose);
      poll_ = nullptr;
    }
  }

 private:
  struct Poll {
    uv_poll_t handle;
    Listener* owner = nullptr;
    int fd = -1;
  };

  bool Open() const { return poll_ != nullptr && !closing_; }

  Napi::Value Start(const Napi::CallbackInfo& info) {
    if (Open()) {
      const int err = uv_poll_start(&poll_->handle, UV_READABLE, OnPoll);
      if (err < 0) throw MakeError(info.Env(), err, "uv_poll_start", "");
    }
    return info.Env().Undefined();
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    if (Open()) uv_poll_stop(&poll_->handle);
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (info.Length() > 0 && info[0].IsFunction() && Open()) {
      onclose_ = Napi::Persistent(info[0].As<Napi::Function>());
    }
    if (Open()) {
      closing_ = true;
      uv_close(reinterpret_cast<uv_handle_t*>(&poll_->handle), OnClose);
    }
    return info.Env().Undefined();
  }

  Napi::Value RefHandle(const Napi::CallbackInfo& info) {
    if (Open()) uv_ref(reinterpret_cast<uv_handle_t*>(&poll_->handle));
    return info.Env().Undefined();
  }

  Napi::Value UnrefHandle(const Napi::CallbackInfo& info) {
    if (Open()) uv_unref(reinterpret_cast<uv_handle_t*>(&poll_->handle));
    return info.Env().Undefined();
  }

  static void OnPoll(uv_poll_t* handle, int status, int) {
    auto* poll = static_cast<Poll*>(handle->data);
    Listener* self = poll->owner;
    if (self == nullptr || self->closing_) return;
    Napi::Env env = self->Env();
    Napi::HandleScope scope(env);

    if (status < 0) {
      CallIntoJs(env, [&] {
        napi_value err = MakeError(env, status, "accept", "").Value();
        self->onconnection_.MakeCallback(self->Value(), {err}, self->async_);
      });
      return;
    }
    for (unsigned i = 0; i < kMaxAcceptsPerWakeup && !self->closing_; i++) {
      vs_vsock_addr peer{};
      const int fd = vs_vsock_accept(poll->fd, &peer);
      if (fd == -EAGAIN || fd == -EWOULDBLOCK) break;
      if (fd == -EINTR || fd == -ECONNABORTED) continue;
      CallIntoJs(env, [&] {
        if (fd < 0) {
          napi_value err = MakeError(env, fd, "accept", "").Value();
          self->onconnection_.MakeCallback(self->Value(), {err}, self->async_);
        } else {
          self->onconnection_.MakeCallback(
              self->Value(),
              {env.Null(), Napi::Number::New(env, fd), Napi::Number::New(env, peer.cid),
               Napi::Number::New(env, peer.port)},
              self->async_);
        }
      });
      if (fd < 0) break;
    }
  }

  static void OnClose(uv_handle_t* handle) {
    auto* poll = static_cast<Poll*>(handle->data);
    Listener* self = poll->owner;
    if (poll->fd >= 0) vs_close(poll->fd);
    delete poll;
    if (self == nullptr) return;
    self->poll_ = nullptr;
    Napi::Env env = self->Env();
    Napi::HandleScope scope(env);
    self->onconnection_.Reset();
    if (!self->onclose_.IsEmpty()) {
      Napi::FunctionReference cb = std::move(self->onclose_);
      CallIntoJs(env, [&] { cb.MakeCallback(self->Value(), {}, self->async_); });
    }
    self->Unref();
  }

  Poll* poll_ = nullptr;
  bool closing_ = false;
  Napi::FunctionReference onconnection_;
  Napi::FunctionReference onclose_;
  Napi::AsyncContext async_;
};

// ---- Connector --------------------------------------------------------------------------------

class Connector : public Napi::ObjectWrap<Connector> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Connector", {InstanceMethod<&Connector::Cancel>("cancel")});
  }

  // new Connector(fd, cid, port, oncomplete(err, fd)): takes fd, a socket
  // with a connect in progress. On success oncomplete receives fd back (the
  // caller owns it again); on failure or cancel() the connector closes it.
  explicit Connector(const Napi::CallbackInfo& info)
      : Napi::ObjectWrap<Connector>(info), async_(info.Env(), "vmsubst:Connector") {
    Napi::Env env = info.Env();
    const int fd = ArgFd(info, 0);
    cid_ = ArgU32(info, 1, "cid");
    port_ = ArgU32(info, 2, "port");
    oncomplete_ = Napi::Persistent(ArgFunction(info, 3, "oncomplete"));
    uv_loop_t* loop = Loop(env);

    auto* poll = new Poll{};
    poll->fd = fd;
    int err = uv_poll_init(loop, &poll->handle, fd);
    if (err < 0) {
      delete poll;  // libuv registers the handle only on success
      throw MakeError(env, err, "uv_poll_init", "(fd " + std::to_string(fd) + ")");
    }
    poll->handle.data = poll;
    err = uv_poll_start(&poll->handle, UV_WRITABLE, OnPoll);
    if (err < 0) {
      poll->fd = -1;
      uv_close(reinterpret_cast<uv_handle_t*>(&poll->handle), OnClose);
      throw MakeError(env, err, "uv_poll_start", "(fd " + std::to_string(fd) + ")");
    }
    poll->owner = this;
    poll_ = poll;
    Ref();
  }

  ~Connector() override {
    if (poll_ != nullptr) {
      poll_->owner = nullptr;
      poll_->result = -ECANCELED;
      uv_close(reinterpret_cast<uv_handle_t*>(&poll_->handle), OnClose);
      poll_ = nullptr;
    }
  }

 private:
  struct Poll {
    uv_poll_t handle;
    Connector* owner = nullptr;
    int fd = -1;
    int result = 0;
  };

  Napi::Value Cancel(const Napi::CallbackInfo& info) {
    if (poll_ != nullptr) {
      cancelled_ = true;
      if (!closing_) {
        closing_ = true;
        uv_close(reinterpret_cast<uv_handle_t*>(&poll_->handle), OnClose);
      }
    }
    return info.Env().Undefined();
  }

  static void OnPoll(uv_poll_t* handle, int status, int) {
    auto* poll = static_cast<Poll*>(handle->data);
    Connector* self = poll->owner;
    if (self == nullptr || self->closing_) return;
    // On POLLERR libuv reports UV_EBADF; the socket's own error is better.
    int result = vs_sock_connect_result(poll->fd);
    if (result == 0 && status < 0) result = status;
    poll->result = result;
    self->closing_ = true;
    uv_close(reinterpret_cast<uv_handle_t*>(handle), OnClose);
  }

  static void OnClose(uv_handle_t* handle) {
    auto* poll = static_cast<Poll*>(handle->data);
    Connector* self = poll->owner;
    const int fd = poll->fd;
    const int result = poll->result;
    const bool deliver = self != nullptr && !self->cancelled_ && fd >= 0;
    if (fd >= 0 && (!deliver || result < 0)) vs_close(fd);
    delete poll;
    if (self == nullptr) return;
    self->poll_ = nullptr;
    Napi::Env env = self->Env();
    Napi::HandleScope scope(env);
    Napi::FunctionReference cb = std::move(self->oncomplete_);
    if (deliver) {
      CallIntoJs(env, [&] {
        if (result < 0) {
          napi_value err =
              MakeError(env, result, "connect", VsockAddress(self->cid_, self->port_)).Value();
          cb.MakeCallback(self->Value(), {err}, self->async_);
        } else {
          cb.MakeCallback(self->Value(), {env.Null(), Napi::Number::New(env, fd)},
                          self->async_);
        }
      });
    }
    self->Unref();
  }

  Poll* poll_ = nullptr;
  bool closing_ = false;
  bool cancelled_ = false;
  uint32_t cid_ = 0;
  uint32_t port_ = 0;
  Napi::FunctionReference oncomplete_;
  Napi::AsyncContext async_;
};

// ---- module ------------------------------------------------------------------------------------

Napi::Object Constants(Napi::Env env) {
  Napi::Object c = Napi::Object::New(env);
  c.Set("VMSUBST_ABI_VERSION", Napi::Number::New(env, VMSUBST_ABI_VERSION));
#define VS_FEATURE(name) c.Set(#name, Napi::BigInt::New(env, static_cast<uint64_t>(name)))
  VS_FEATURE(VMSUBST_FEATURE_INVALIDATE_RANGE);
  VS_FEATURE(VMSUBST_FEATURE_INVALIDATE_RANGE_V1);
  VS_FEATURE(VMSUBST_FEATURE_INVALIDATE_BDEV);
  VS_FEATURE(VMSUBST_FEATURE_REVALIDATE_INODES);
  VS_FEATURE(VMSUBST_FEATURE_REVALIDATE_DENTRIES);
  VS_FEATURE(VMSUBST_FEATURE_QUERY_MAPPERS);
  VS_FEATURE(VMSUBST_FEATURE_PIN_MAPPERS);
  VS_FEATURE(VMSUBST_FEATURE_QUERY_PAGES);
  VS_FEATURE(VMSUBST_FEATURE_INVALIDATE_UNLESS_DIRTY);
  VS_FEATURE(VMSUBST_FEATURE_PIN_CURSOR);
  VS_FEATURE(VMSUBST_FEATURE_REVALIDATE_REPLACED);
#undef VS_FEATURE
#define VS_CONST(name) c.Set(#name, Napi::Number::New(env, name))
  VS_CONST(VMSUBST_INVALIDATE_F_FORCE);
  VS_CONST(VMSUBST_INVALIDATE_F_ZAP);
  VS_CONST(VMSUBST_INVALIDATE_F_DROP);
  VS_CONST(VMSUBST_INVALIDATE_F_REFAULT_ASYNC);
  VS_CONST(VMSUBST_INVALIDATE_F_REFAULT_SYNC);
  VS_CONST(VMSUBST_INVALIDATE_F_REPORT_MAPPERS);
  VS_CONST(VMSUBST_INVALIDATE_F_UNLESS_DIRTY);
  VS_CONST(VMSUBST_INVALIDATE_F_ALL);
  VS_CONST(VMSUBST_BDEV_F_FORCE);
  VS_CONST(VMSUBST_INODES_F_FORCE);
  VS_CONST(VMSUBST_INODES_F_UNHASH_BUSY);
  VS_CONST(VMSUBST_DENTRIES_F_FORCE);
  VS_CONST(VMSUBST_DENTRIES_F_UNHASH_BUSY);
  VS_CONST(VMSUBST_PAGE_DROPPED);
  VS_CONST(VMSUBST_PAGE_DIRTY);
  VS_CONST(VMSUBST_PAGE_WRITEBACK);
  VS_CONST(VMSUBST_PAGE_LOCKED);
  VS_CONST(VMSUBST_PAGE_PINNED);
  VS_CONST(VMSUBST_PAGE_MAPPED);
  VS_CONST(VMSUBST_PAGE_BUSY);
  VS_CONST(VMSUBST_MAP_EXEC);
  VS_CONST(VMSUBST_MAP_SHARED);
  VS_CONST(VMSUBST_MAP_LOCKED);
  VS_CONST(VMSUBST_MAP_WRITE);
  VS_CONST(VMSUBST_INODE_OPEN);
  VS_CONST(VMSUBST_INODE_MAPPED);
  VS_CONST(VMSUBST_INODE_WRITERS);
  VS_CONST(VMSUBST_INODE_DIRTY);
  VS_CONST(VMSUBST_INODE_CHILDREN);
  VS_CONST(VMSUBST_INODE_ROOT);
  VS_CONST(VMSUBST_INODE_CALLER);
  VS_CONST(VMSUBST_INODE_REFERENCED);
  VS_CONST(VMSUBST_PIN_R_EXITED);
  VS_CONST(VMSUBST_PIN_R_PARTIAL);
  VS_CONST(VMSUBST_PIN_S_BUDGET);
  VS_CONST(VMSUBST_PIN_S_TRUNCATED);
  VS_CONST(VMSUBST_PIN_F_RESUME);
  VS_CONST(VMSUBST_RANGES_MAX);
  VS_CONST(VMSUBST_MAPPERS_MAX);
  VS_CONST(VMSUBST_INODES_MAX);
  VS_CONST(VMSUBST_NAMES_MAX);
  VS_CONST(VMSUBST_NAMES_SIZE_MAX);
  VS_CONST(VMSUBST_PIN_PAGES_MAX);
  VS_CONST(VMSUBST_PIN_RESULTS_MAX);
  VS_CONST(VMSUBST_PIN_VMAS_MAX);
#undef VS_CONST
  c.Set("VMADDR_CID_ANY", Napi::Number::New(env, VMADDR_CID_ANY));
  c.Set("VMADDR_CID_HYPERVISOR", Napi::Number::New(env, VMADDR_CID_HYPERVISOR));
  c.Set("VMADDR_CID_LOCAL", Napi::Number::New(env, VMADDR_CID_LOCAL));
  c.Set("VMADDR_CID_HOST", Napi::Number::New(env, VMADDR_CID_HOST));
  c.Set("VMADDR_PORT_ANY", Napi::Number::New(env, VMADDR_PORT_ANY));
  c.Set("FIEMAP_EXTENT_LAST", Napi::Number::New(env, FIEMAP_EXTENT_LAST));
  c.Set("FIEMAP_EXTENT_UNKNOWN", Napi::Number::New(env, FIEMAP_EXTENT_UNKNOWN));
  c.Set("FIEMAP_EXTENT_DELALLOC", Napi::Number::New(env, FIEMAP_EXTENT_DELALLOC));
  c.Set("FIEMAP_EXTENT_ENCODED", Napi::Number::New(env, FIEMAP_EXTENT_ENCODED));
  c.Set("FIEMAP_EXTENT_DATA_ENCRYPTED", Napi::Number::New(env, FIEMAP_EXTENT_DATA_ENCRYPTED));
  c.Set("FIEMAP_EXTENT_NOT_ALIGNED", Napi::Number::New(env, FIEMAP_EXTENT_NOT_ALIGNED));
  c.Set("FIEMAP_EXTENT_DATA_INLINE", Napi::Number::New(env, FIEMAP_EXTENT_DATA_INLINE));
  c.Set("FIEMAP_EXTENT_DATA_TAIL", Napi::Number::New(env, FIEMAP_EXTENT_DATA_TAIL));
  c.Set("FIEMAP_EXTENT_UNWRITTEN", Napi::Number::New(env, FIEMAP_EXTENT_UNWRITTEN));
  c.Set("FIEMAP_EXTENT_MERGED", Napi::Number::New(env, FIEMAP_EXTENT_MERGED));
  c.Set("FIEMAP_EXTENT_SHARED", Napi::Number::New(env, FIEMAP_EXTENT_SHARED));
  c.Set("DIRECT_IO_ALIGN", Napi::Number::New(env, VS_DIRECT_ALIGN));
  return c;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("fiemap", Napi::Function::New<Fiemap>(env, "fiemap"));
  exports.Set("dataSegments", Napi::Function::New<DataSegments>(env, "dataSegments"));
  exports.Set("readDirect", Napi::Function::New<ReadDirect>(env, "readDirect"));
  exports.Set("compareSpan", Napi::Function::New<CompareSpan>(env, "compareSpan"));
  exports.Set("TreeWalk", TreeWalk::Define(env));
  exports.Set("kmodVersion", Napi::Function::New<KmodVersion>(env, "kmodVersion"));
  exports.Set("invalidateRange", Napi::Function::New<InvalidateRange>(env, "invalidateRange"));
  exports.Set("invalidateBdev", Napi::Function::New<InvalidateBdev>(env, "invalidateBdev"));
  exports.Set("revalidateInodes", Napi::Function::New<RevalidateInodes>(env, "revalidateInodes"));
  exports.Set("revalidateDentries",
              Napi::Function::New<RevalidateDentries>(env, "revalidateDentries"));
  exports.Set("queryMappers", Napi::Function::New<QueryMappers>(env, "queryMappers"));
  exports.Set("pinMappers", Napi::Function::New<PinMappers>(env, "pinMappers"));
  exports.Set("queryPages", Napi::Function::New<QueryPages>(env, "queryPages"));
  exports.Set("vsockListen", Napi::Function::New<VsockListen>(env, "vsockListen"));
  exports.Set("vsockConnectStart",
              Napi::Function::New<VsockConnectStart>(env, "vsockConnectStart"));
  exports.Set("vsockAddresses", Napi::Function::New<VsockAddresses>(env, "vsockAddresses"));
  exports.Set("localCid", Napi::Function::New<LocalCid>(env, "localCid"));
  exports.Set("closeFd", Napi::Function::New<CloseFd>(env, "closeFd"));
  exports.Set("dupFd", Napi::Function::New<DupFd>(env, "dupFd"));
  exports.Set("sdNotify", Napi::Function::New<SdNotify>(env, "sdNotify"));
  exports.Set("StreamHandle", StreamHandle::Define(env));
  exports.Set("Listener", Listener::Define(env));
  exports.Set("Connector", Connector::Define(env));
  exports.Set("constants", Constants(env));
  return exports;
}

}  // namespace

NODE_API_MODULE(vmsubst_native, Init)
