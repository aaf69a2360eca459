// SPDX-License-Identifier: GPL-2.0-only
//
// Streams, shared by both addons: StreamHandle adopts any connected stream fd
// (vsock, virtio-serial character device, socketpair) as a uv_pipe_t, so
// libuv queues writes and handles EAGAIN; the TypeScript facades wrap it in a
// Duplex. Also the fd helpers every socket path needs: the vsock addresses of
// a socket, close and dup.
#include <errno.h>
#include <limits.h>
#include <stdlib.h>

#include <utility>
#include <vector>

#include "glue.h"
#include "native.h"

namespace vs {

namespace {

constexpr size_t kReadBufferSize = 64 * 1024;

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

Napi::Value NotifyAsync(const Napi::CallbackInfo& info) {
  const int fd = ArgFd(info, 0);
  const int err = vs_notify_async(fd);
  if (err < 0) throw MakeError(info.Env(), err, "fcntl", "(O_ASYNC on fd " + std::to_string(fd) + ")");
  return info.Env().Undefined();
}

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
}  // namespace

void RegisterStream(Napi::Env env, Napi::Object exports, Napi::Object) {
  exports.Set("vsockAddresses", Napi::Function::New<VsockAddresses>(env, "vsockAddresses"));
  exports.Set("closeFd", Napi::Function::New<CloseFd>(env, "closeFd"));
  exports.Set("dupFd", Napi::Function::New<DupFd>(env, "dupFd"));
  exports.Set("notifyAsync", Napi::Function::New<NotifyAsync>(env, "notifyAsync"));
  exports.Set("StreamHandle", StreamHandle::Define(env));
}

}  // namespace vs
