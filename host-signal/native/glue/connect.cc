// SPDX-License-Identifier: GPL-2.0-only
//
// Connecting to a guest's vsock port without blocking the event loop: a
// non-blocking connect, and the Connector wrap (uv_poll_t) that waits for it
// to finish.
#include <errno.h>

#include "host.h"
#include "host_glue.h"

namespace vs {

namespace {

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
    Poll* poll = StartPoll<Poll>(env, fd, UV_WRITABLE, OnPoll, OnClose);
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
}  // namespace

void RegisterConnect(Napi::Env env, Napi::Object exports, Napi::Object) {
  exports.Set("vsockConnectStart", Napi::Function::New<VsockConnectStart>(env, "vsockConnectStart"));
  exports.Set("Connector", Connector::Define(env));
}

}  // namespace vs
