// SPDX-License-Identifier: GPL-2.0-only
//
// The N-API glue shared by both addons: the agent's (agent/native, built by
// agent/binding.gyp) and the host's (host-signal/native, which compiles the
// shared files named in its binding.gyp).
//
// The glue validates arguments, calls the syscall layer (native.h), turns
// -errno into an Error shaped like node's fs errors ({code, syscall, errno,
// path?}, message "ECODE: description, syscall detail"), runs blocking I/O on
// the libuv thread pool (AsyncWorker) and adopts sockets into node's own
// event loop. One file per concern; each registers its exports and its
// constants with a Register* function called by the addon's init.
//
// Lifetime rule for the uv handle wraps (StreamHandle, Listener, Connector):
// the uv handle lives in a separate heap block whose `owner` points back at
// the wrap. The wrap holds a strong reference to its own JS object (Ref())
// from a successful constructor until the uv close callback, so the object
// cannot be collected while libuv may still call into it; the close callback
// frees the block and drops that reference. If the wrap is destroyed with its
// handle still open (only at environment teardown) it detaches `owner` and
// closes the handle without calling JavaScript.
#ifndef VMSUBST_NATIVE_GLUE_H
#define VMSUBST_NATIVE_GLUE_H

#include <napi.h>
#include <uv.h>

#include <stdint.h>

#include <string>

namespace vs {

// ---- errors.cc -----------------------------------------------------------------

// neg_errno is a negative errno (libuv status codes are the same on Linux).
Napi::Error MakeError(Napi::Env env, int neg_errno, const char* syscall, const std::string& detail,
                      const char* path = nullptr);
std::string Quoted(const std::string& path);
std::string VsockAddress(uint32_t cid, uint32_t port);

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

// ---- args.cc -------------------------------------------------------------------

double ArgInteger(const Napi::CallbackInfo& info, size_t i, const char* name, double min, double max);
uint32_t ArgU32(const Napi::CallbackInfo& info, size_t i, const char* name);
int ArgFd(const Napi::CallbackInfo& info, size_t i);
uint64_t ArgU64(const Napi::CallbackInfo& info, size_t i, const char* name);
std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* name);
Napi::Function ArgFunction(const Napi::CallbackInfo& info, size_t i, const char* name);
uv_loop_t* Loop(Napi::Env env);

// A uv_poll_t on fd, watching `events`, in a heap block P { uv_poll_t handle;
// int fd; ... } (a wrap's Poll). On failure the block is freed or closed with
// on_close, fd is left to the caller (P::fd = -1), and a NativeError thrown.
template <typename P>
P* StartPoll(Napi::Env env, int fd, int events, uv_poll_cb on_poll, uv_close_cb on_close) {
  auto* poll = new P{};
  poll->fd = fd;
  int err = uv_poll_init(Loop(env), &poll->handle, fd);
  if (err < 0) {
    delete poll;  // libuv registers the handle only on success
    throw MakeError(env, err, "uv_poll_init", "(fd " + std::to_string(fd) + ")");
  }
  poll->handle.data = poll;
  err = uv_poll_start(&poll->handle, events, on_poll);
  if (err < 0) {
    poll->fd = -1;  // not ours yet
    uv_close(reinterpret_cast<uv_handle_t*>(&poll->handle), on_close);
    throw MakeError(env, err, "uv_poll_start", "(fd " + std::to_string(fd) + ")");
  }
  return poll;
}

// ---- registration: (exports, constants) of each concern ---------------------------

// errors.cc (shared): setErrorClass.
void RegisterErrors(Napi::Env env, Napi::Object exports, Napi::Object constants);
// stream.cc (shared): StreamHandle, vsockAddresses, closeFd, dupFd.
void RegisterStream(Napi::Env env, Napi::Object exports, Napi::Object constants);

// The agent's addon only (binding.cc calls them).
void RegisterFs(Napi::Env env, Napi::Object exports, Napi::Object constants);     // fs.cc
void RegisterWalk(Napi::Env env, Napi::Object exports, Napi::Object constants);   // walk.cc
void RegisterKmod(Napi::Env env, Napi::Object exports, Napi::Object constants);   // kmod.cc
void RegisterUapiConstants(Napi::Env env, Napi::Object constants);                // uapi.cc
void RegisterVsock(Napi::Env env, Napi::Object exports, Napi::Object constants);  // vsock.cc

}  // namespace vs

#endif  // VMSUBST_NATIVE_GLUE_H
