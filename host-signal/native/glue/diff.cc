// SPDX-License-Identifier: GPL-2.0-only
//
// The differ's native help: the data segments of a sparse image
// (SEEK_DATA/SEEK_HOLE), the block comparison of two images on the thread
// pool, and faulting in the buffers that keep the changed blocks.
#include <errno.h>

#include <cmath>
#include <utility>
#include <vector>

#include "host.h"
#include "host_glue.h"

namespace vs {

namespace {

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
    // A finished job may wait for the main thread a while (the differ queues many): keep only its runs.
    runs_.shrink_to_fit();
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
// prefault(buffer): faults in the buffer's whole pages (vs_prefault); throws
// a NativeError (madvise) when the kernel cannot.
Napi::Value Prefault(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsBuffer()) throw Napi::TypeError::New(env, "buffer must be a Buffer");
  Napi::Buffer<uint8_t> buffer = info[0].As<Napi::Buffer<uint8_t>>();
  const int err = vs_prefault(buffer.Data(), buffer.Length());
  if (err < 0) throw MakeError(env, err, "madvise", "MADV_POPULATE_WRITE");
  return env.Undefined();
}
}  // namespace

void RegisterDiff(Napi::Env env, Napi::Object exports, Napi::Object constants) {
  exports.Set("dataSegments", Napi::Function::New<DataSegments>(env, "dataSegments"));
  exports.Set("compareSpan", Napi::Function::New<CompareSpan>(env, "compareSpan"));
  exports.Set("prefault", Napi::Function::New<Prefault>(env, "prefault"));
  constants.Set("COMPARE_BLOCK_MAX", Napi::Number::New(env, VS_COMPARE_BUF));
}

}  // namespace vs
