// SPDX-License-Identifier: GPL-2.0-only
//
// The pedigree index's walk of one filesystem (walk.c) in steps on the
// thread pool, each resolving with flat typed arrays.
#include <errno.h>

#include <string>

#include "glue.h"
#include "native.h"

namespace vs {

namespace {

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
}  // namespace

void RegisterWalk(Napi::Env env, Napi::Object exports, Napi::Object) {
  exports.Set("TreeWalk", TreeWalk::Define(env));
}

}  // namespace vs
