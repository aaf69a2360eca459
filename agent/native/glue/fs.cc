// SPDX-License-Identifier: GPL-2.0-only
//
// Files: FIEMAP of an open file, and O_DIRECT reads on the thread pool.
#include <errno.h>
#include <stdlib.h>

#include <string>
#include <utility>
#include <vector>

#include <linux/fiemap.h>

#include "glue.h"
#include "native.h"

namespace vs {

namespace {

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
}  // namespace

void RegisterFs(Napi::Env env, Napi::Object exports, Napi::Object constants) {
  exports.Set("fiemap", Napi::Function::New<Fiemap>(env, "fiemap"));
  exports.Set("readDirect", Napi::Function::New<ReadDirect>(env, "readDirect"));
#define VS_FIEMAP_CONST(name) constants.Set(#name, Napi::Number::New(env, name))
  VS_FIEMAP_CONST(FIEMAP_EXTENT_LAST);
  VS_FIEMAP_CONST(FIEMAP_EXTENT_UNKNOWN);
  VS_FIEMAP_CONST(FIEMAP_EXTENT_DELALLOC);
  VS_FIEMAP_CONST(FIEMAP_EXTENT_ENCODED);
  VS_FIEMAP_CONST(FIEMAP_EXTENT_DATA_ENCRYPTED);
  VS_FIEMAP_CONST(FIEMAP_EXTENT_NOT_ALIGNED);
  VS_FIEMAP_CONST(FIEMAP_EXTENT_DATA_INLINE);
  VS_FIEMAP_CONST(FIEMAP_EXTENT_DATA_TAIL);
  VS_FIEMAP_CONST(FIEMAP_EXTENT_UNWRITTEN);
  VS_FIEMAP_CONST(FIEMAP_EXTENT_MERGED);
  VS_FIEMAP_CONST(FIEMAP_EXTENT_SHARED);
#undef VS_FIEMAP_CONST
  constants.Set("DIRECT_IO_ALIGN", Napi::Number::New(env, VS_DIRECT_ALIGN));
}

}  // namespace vs
