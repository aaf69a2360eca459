// SPDX-License-Identifier: GPL-2.0-only
//
// The agent's listening side: a vsock listener whose Listener wrap (uv_poll_t
// on the listening fd) accepts with accept4(), so the peer's CID and port are
// known (uv_accept() drops them); this machine's CID; sd_notify(3).
#include <errno.h>
#include <string.h>

#include <linux/vm_sockets.h>

#include "glue.h"
#include "native.h"

namespace vs {

namespace {

constexpr unsigned kMaxAcceptsPerWakeup = 64;

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
    Poll* poll = StartPoll<Poll>(env, fd, UV_READABLE, OnPoll, OnClose);
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
}  // namespace

void RegisterVsock(Napi::Env env, Napi::Object exports, Napi::Object constants) {
  exports.Set("vsockListen", Napi::Function::New<VsockListen>(env, "vsockListen"));
  exports.Set("localCid", Napi::Function::New<LocalCid>(env, "localCid"));
  exports.Set("sdNotify", Napi::Function::New<SdNotify>(env, "sdNotify"));
  exports.Set("Listener", Listener::Define(env));
  constants.Set("VMADDR_CID_ANY", Napi::Number::New(env, VMADDR_CID_ANY));
  constants.Set("VMADDR_CID_HYPERVISOR", Napi::Number::New(env, VMADDR_CID_HYPERVISOR));
  constants.Set("VMADDR_CID_LOCAL", Napi::Number::New(env, VMADDR_CID_LOCAL));
  constants.Set("VMADDR_CID_HOST", Napi::Number::New(env, VMADDR_CID_HOST));
  constants.Set("VMADDR_PORT_ANY", Napi::Number::New(env, VMADDR_PORT_ANY));
}

}  // namespace vs
